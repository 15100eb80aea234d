"""The gateway assembled: scanner supervisor -> pipeline -> batches -> publisher, on one loop.

`Gateway.run` is the whole daemon inside one asyncio loop (the CLI calls `asyncio.run` once).
Background tasks are kept in `self._tasks` (strong references: the loop holds only weak ones).
It stops on `stop` (SIGTERM/SIGINT in the CLI): flushes the current batch, gives the broker a
few seconds to take the buffer, publishes `offline`, and disconnects.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import time
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, Final

from beacon_hub import __version__
from beacon_hub.wire import Heartbeat, encode_heartbeat
from gateway.adapter import power_cycle
from gateway.batching import Batcher, new_boot_id
from gateway.buffer import DiskBuffer, MemoryBuffer, OfflineBuffer
from gateway.config import GatewayConfig
from gateway.filters import BeaconFilter
from gateway.host import SystemdNotifier, cpu_temp_c
from gateway.pipeline import Pipeline
from gateway.publisher import Publisher
from gateway.scanner import ScannerFactory, make_scanner_factory
from gateway.watchdog import ScanSupervisor

__all__ = ["DRAIN_TIMEOUT_S", "Gateway"]

log = logging.getLogger(__name__)

DRAIN_TIMEOUT_S: Final = 5.0
"""On a clean stop, how long the broker gets to acknowledge what is buffered; systemd's default
stop timeout is 90 s, so this leaves plenty of room."""


def _call_logged(action: Callable[[], None]) -> None:
    """One call of a periodic task: a failure is logged, it must not end the daemon's clock."""
    try:
        action()
    except Exception:
        log.exception("periodic task failed")


def _open_buffer(config: GatewayConfig) -> OfflineBuffer:
    """The configured buffer; a folder we cannot use (read-only, say) must not stop the daemon
    (systemd would restart it into the same failure), so it then runs with one in memory."""
    if config.buffer.dir is None:
        return MemoryBuffer(config.buffer.max_batches)
    try:
        return DiskBuffer(config.buffer.dir, config.buffer.max_batches)
    except OSError as e:
        problem = e
    log.error(  # one line, no traceback: the reason is all an operator can act on
        "cannot use the buffer folder %s (%s); buffering in memory, lost on restart",
        config.buffer.dir,
        problem,
    )
    return MemoryBuffer(config.buffer.max_batches)


class Gateway:
    """One gateway process. Parts are attributes so tests can watch their counters."""

    def __init__(
        self,
        config: GatewayConfig,
        *,
        scanner_factory: ScannerFactory | None = None,
        power_cycle_adapter: Callable[[str | None], Awaitable[None]] | None = power_cycle,
        notifier: SystemdNotifier | None = None,
    ) -> None:
        self.config = config
        self.boot = new_boot_id()
        self.started_mono = time.monotonic()
        self.notifier = notifier or SystemdNotifier()
        buffer = _open_buffer(config)
        self.buffer = buffer
        self.publisher = Publisher(
            config.broker,
            site=config.site,
            gateway_id=config.gateway_id,
            boot=self.boot,
            version=__version__,
            buffer=buffer,
            inflight=config.buffer.inflight,
            persist_every_batch=config.buffer.persist == "every_batch",
        )
        filters = config.filters
        self.pipeline = Pipeline(
            Batcher(config.gateway_id, self.boot, max_samples=config.batching.max_samples),
            BeaconFilter(
                uuids=filters.ibeacon_uuids,
                namespaces=filters.eddystone_namespaces,
                id_patterns=filters.id_patterns,
                min_rssi_dbm=filters.min_rssi_dbm,
                track_macs=filters.track_macs,
            ),
            on_full=self.flush,
        )
        self.supervisor = ScanSupervisor(
            scanner_factory or make_scanner_factory(config.scanner),
            self.pipeline.on_advertisement,
            config.scanner,
            power_cycle=power_cycle_adapter,
        )
        self._tasks: set[asyncio.Task[None]] = set()
        self._beacons_heard: set[str] = set()
        self._last_hb = (time.monotonic(), 0, 0)

    def flush(self) -> None:
        """Close the current window and hand its batch to the publisher."""
        batch = self.pipeline.take(time.time())
        if batch is not None:
            self._beacons_heard.update(batch.beacons)
            self.publisher.submit(batch)

    async def run(self, stop: asyncio.Event) -> None:
        """Run until `stop` is set; raises NoRadioError (after a clean MQTT stop) if there is no
        radio to scan with."""
        await self.publisher.start()
        scan = self._spawn(self.supervisor.run(), "scanner")
        self._spawn(self._on_clock_grid(self.config.batching.window_s, self.flush), "batching")
        self._spawn(self._every(self.config.heartbeat_interval_s, self.send_heartbeat), "heartbeat")
        if self.notifier.watchdog_interval_s is not None:
            ping = self.notifier.watchdog_interval_s
            self._spawn(self._every(ping, lambda: self.notifier.notify("WATCHDOG=1")), "sd-ping")
        self.notifier.notify("READY=1")
        stopping = asyncio.create_task(stop.wait(), name="stop")
        try:
            await asyncio.wait({scan, stopping}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            stopping.cancel()
            self.notifier.notify("STOPPING=1")
            error = scan.exception() if scan.done() and not scan.cancelled() else None
            await self._shutdown()
        if error is not None:
            raise error

    def _spawn(self, coro: Coroutine[Any, Any, None], name: str) -> asyncio.Task[None]:
        task = asyncio.create_task(coro, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    async def _shutdown(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        for task in list(self._tasks):
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        try:
            self.flush()
        except Exception:  # the publisher must stop (offline status, clean DISCONNECT) anyway
            log.exception("the last batch could not be queued")
        # it says and counts what only memory held (a memory buffer, a full disk's overflow)
        await self.publisher.stop(DRAIN_TIMEOUT_S)

    @staticmethod
    async def _every(interval_s: float, action: Callable[[], None]) -> None:
        """Call `action` every `interval_s`, on a fixed grid so windows do not drift."""
        loop = asyncio.get_running_loop()
        due = loop.time()
        while True:
            due += interval_s
            await asyncio.sleep(max(0.0, due - loop.time()))
            _call_logged(action)

    @staticmethod
    async def _on_clock_grid(interval_s: float, action: Callable[[], None]) -> None:
        """Call `action` at whole multiples of `interval_s` of the wall clock.

        Why the wall clock: the hub ticks on whole seconds of hub time and runs a tick as soon
        as every gateway's batch for it is in (service.py). Gateways whose clocks NTP keeps
        together then send each window within milliseconds of each other, just after the
        second, and a fix follows its readings by the hub's tick work alone; windows on each
        gateway's own phase would wait up to a whole tick for it. The next multiple is worked
        out afresh each time, so a clock step moves the grid instead of drifting from it. A step
        backwards after `due` was set (NTP, while `action` ran) would leave `due` far ahead: more
        than the 1.5 intervals the rounding allows means the clock moved, and the next multiple
        of the clock as it is now is due instead, so batching pauses for one window at most."""
        due = (math.floor(time.time() / interval_s) + 1.0) * interval_s
        while True:
            now = time.time()
            if due - now > 1.5 * interval_s:
                due = (math.floor(now / interval_s) + 1.0) * interval_s
            await asyncio.sleep(max(0.0, due - now))
            # Rounded, not floored: waking a hair before the multiple must not call twice.
            due = (round(time.time() / interval_s) + 1.0) * interval_s
            _call_logged(action)

    def heartbeat(self) -> dict[str, Any]:
        """The heartbeat payload (wire.Heartbeat), with `samples_per_s` and `beacons_heard`
        that give the sampling rate per beacon, and `malformed_frames`: beacon fields since the
        start that did not fit their frame's layout (wire.py's Heartbeat has no field for it;
        its decoder ignores unknown keys, as every v1 reader must)."""
        now = time.monotonic()
        seen = self.pipeline.counters.adverts_seen
        samples = self.pipeline.counters.samples
        then, seen_then, samples_then = self._last_hb
        elapsed = max(now - then, 1e-9)
        self._last_hb = (now, seen, samples)
        hb = Heartbeat(
            gw=self.config.gateway_id,
            boot=self.boot,
            t=time.time(),
            uptime_s=round(now - self.started_mono, 3),
            adverts_seen=seen,
            adverts_published=self.publisher.counters.samples_published,
            adverts_dropped=self.buffer.dropped_samples,
            queue_depth=self.publisher.queue_depth,
            scanner_restarts=self.supervisor.restarts,
            adverts_per_s=round((seen - seen_then) / elapsed, 2),
            version=__version__,
            cpu_temp_c=cpu_temp_c(),
            samples_per_s=round((samples - samples_then) / elapsed, 2),
            beacons_heard=len(self._beacons_heard),
            malformed_frames=self.pipeline.counters.malformed,
        )
        payload: dict[str, Any] = json.loads(encode_heartbeat(hb))
        self._beacons_heard = set()
        return payload

    def send_heartbeat(self) -> None:
        payload = self.heartbeat()
        self.publisher.publish_heartbeat(json.dumps(payload, separators=(",", ":")).encode())
