"""MQTT out: readings (QoS 1) through a bounded offline buffer, retained status, last will,
heartbeat. paho-mqtt v2 with its own network thread (`loop_start`), which reconnects by itself.

Threads. paho calls our callbacks on its network thread. Each callback only packs its arguments
and hands them to the event loop in ONE place, `_from_paho`, with `call_soon_threadsafe`; all
state (buffer, in-flight map, counters) is touched on the event loop's thread only. Calls the
other way (`publish`, `disconnect`) are thread-safe by paho's design (its own mutexes).

Flow control. At most `inflight` readings batches are handed to paho at a time, and only while
connected; everything else waits in our buffer, which drops the oldest when full and counts it.
paho keeps what it was handed across a reconnect and re-sends it (DUP set); nothing newer is
handed over until those are acknowledged, so order holds. A batch is either acknowledged, in
paho's hands, in our buffer, or counted as dropped: never silently lost while the process runs.

Disk writes. A batch that can be handed to paho at once (connected, the window has room,
nothing older waiting in the buffer) goes straight from memory and never touches a `DiskBuffer`:
on an SD card every small file costs about 60 KiB of writes, 5 GB a day at one batch a second
(docs/gateway.md). Only a batch that must wait goes through the buffer (to disk), and the buffer
is told (`release`) when its PUBACK arrives. Batches paho holds from memory are written to disk
when the connection drops and at a stop (`_save_in_flight`), in the order they were sent, where
a restart reads them before the queued ones. What this gives up: a kill -9 or power cut while
connected loses what paho holds from memory, at most `inflight` batches, normally none or the
one awaiting its PUBACK (docs/gateway.md says when the hub sees them as a gap in `seq`).
`persist_every_batch` (config `buffer.persist: every_batch`) keeps the old way: every batch
through the buffer, on disk until its PUBACK.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Final, Literal

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode

from beacon_hub.broker_settings import RefusalLog, connect_failure, paho_logger
from beacon_hub.wire import (
    GatewayStatus,
    ReadingBatch,
    encode_batch,
    encode_status,
    heartbeat_topic,
    readings_topic,
    status_topic,
)
from gateway.buffer import Buffered, OfflineBuffer
from gateway.config import BrokerConfig

__all__ = ["Publisher", "PublisherCounters"]

log = logging.getLogger(__name__)
_PAHO_LOG: Final = paho_logger("gateway.paho")

_PAHO_SPARE_MESSAGES: Final = 4
"""Room in paho's queue beyond our in-flight window: the retained status messages."""


@dataclass(slots=True)
class PublisherCounters:
    batches_published: int = 0
    samples_published: int = 0
    """Samples in batches the broker acknowledged (PUBACK)."""
    connects: int = 0
    disconnects: int = 0


class Publisher:
    """Publishes one gateway's batches; see the module docstring for threads and flow."""

    def __init__(
        self,
        broker: BrokerConfig,
        *,
        site: str,
        gateway_id: str,
        boot: str,
        version: str,
        buffer: OfflineBuffer,
        inflight: int,
        persist_every_batch: bool = False,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        self.broker = broker
        self.site = site
        self.gateway_id = gateway_id
        self.boot = boot
        self.version = version
        self.buffer = buffer
        self.window = inflight
        self.persist_every_batch = persist_every_batch
        self.wall_clock = wall_clock
        self.counters = PublisherCounters()
        self.connected = asyncio.Event()
        self.disconnected = asyncio.Event()
        self.disconnected.set()
        self.readings_topic = readings_topic(site, gateway_id)
        self.status_topic = status_topic(site, gateway_id)
        self.heartbeat_topic = heartbeat_topic(site, gateway_id)
        self._inflight: dict[int, Buffered] = {}
        self._status_acks: dict[int, asyncio.Future[None]] = {}
        self._drained = asyncio.Event()
        self._drained.set()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._client: mqtt.Client | None = None
        self._refusals = RefusalLog(log)
        self._stopping = False
        self._resending = False

    # -- lifecycle (event loop thread)

    async def start(self) -> None:
        """Connect in the background; returns at once (the broker may be down at boot)."""
        self._loop = asyncio.get_running_loop()
        client = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=self.broker.client_id or f"beacon-gateway-{self.gateway_id}",
            protocol=mqtt.MQTTv311,
            clean_session=True,
        )
        client.enable_logger(_PAHO_LOG)
        self.broker.secure(client)
        # The will has the form of the status message (DESIGN.md); `t` is when it was set.
        client.will_set(self.status_topic, self._status("offline"), qos=1, retain=True)
        client.max_inflight_messages_set(self.window + _PAHO_SPARE_MESSAGES)
        # A safety net only: our window keeps paho far below this.
        client.max_queued_messages_set(self.window + _PAHO_SPARE_MESSAGES)
        client.reconnect_delay_set(1, self.broker.reconnect_max_s)
        client.on_connect = self._paho_on_connect
        client.on_connect_fail = self._paho_on_connect_fail
        client.on_disconnect = self._paho_on_disconnect
        client.on_publish = self._paho_on_publish
        self._client = client
        log.info(
            "connecting to %s://%s:%d as %s",
            "mqtts" if self.broker.use_tls else "mqtt",
            self.broker.host,
            self.broker.port,
            client._client_id.decode(),  # paho exposes no getter for the id
        )
        client.connect_async(self.broker.host, self.broker.port, keepalive=self.broker.keepalive_s)
        client.loop_start()

    async def stop(self, drain_timeout_s: float) -> None:
        """Clean stop: send what we can within the timeout, publish `offline`, disconnect."""
        client = self._client
        if client is None:
            return
        if self.connected.is_set():
            self._pump()
            try:
                await asyncio.wait_for(self._drained.wait(), drain_timeout_s)
            except TimeoutError:
                log.warning("stopping with %d batches not yet acknowledged", self.queue_depth)
            if self.connected.is_set():
                ack = self._publish_status("offline")
                if ack is not None:
                    try:
                        await asyncio.wait_for(ack, drain_timeout_s)
                    except TimeoutError:
                        log.warning("the broker did not acknowledge the offline status")
        self._stopping = True  # the disconnect below is ours: no "lost the broker" warning
        if self.connected.is_set():
            client.disconnect()  # a clean DISCONNECT: the broker discards the will
        await asyncio.to_thread(client.loop_stop)
        self._client = None
        self.connected.clear()
        self.disconnected.set()
        self._save_in_flight()  # paho's copies die with it
        self._count_lost_at_stop()

    def _save_in_flight(self) -> None:
        """Batches paho holds that only memory has are handed to the buffer to keep (with a
        `DiskBuffer`, files a restart reads before the queued ones), with every other batch paho
        holds, in the order they were sent; a `MemoryBuffer` keeps nothing."""
        if all(item.ticket is not None for item in self._inflight.values()):
            return  # on disk already, in order: in-flight files were queued before the rest
        mids = list(self._inflight)  # insertion order: the order they were sent
        saved = self.buffer.save_in_flight([self._inflight[mid] for mid in mids])
        self._inflight = dict(zip(mids, saved, strict=True))

    def _count_lost_at_stop(self) -> None:
        """Batches not acknowledged that no file holds die with the process: counted as dropped
        and said once (they went unnoticed: a stop with the broker away, or a memory buffer)."""
        batches, samples = self.buffer.in_memory()
        volatile = [item for item in self._inflight.values() if item.ticket is None]
        batches += len(volatile)
        samples += sum(item.samples for item in volatile)
        if batches:
            self.buffer.dropped_batches += batches
            self.buffer.dropped_samples += samples
            log.warning(
                "stopping: %d batches (%d samples) the broker has not acknowledged are lost",
                batches,
                samples,
            )

    # -- the one place paho's thread hands over to the event loop

    def _from_paho(self, handler: Callable[..., None], *args: Any) -> None:
        """Called on paho's network thread: schedule `handler(*args)` on the event loop."""
        loop = self._loop
        if loop is None or loop.is_closed():
            return
        try:
            loop.call_soon_threadsafe(handler, *args)
        except RuntimeError:  # the loop closed between the check and the call (shutdown)
            return

    def _paho_on_connect(
        self, _c: mqtt.Client, _u: Any, _flags: Any, reason: Any, _props: Any
    ) -> None:
        self._from_paho(self._on_connect, bool(reason.is_failure), str(reason))

    def _paho_on_connect_fail(self, _c: mqtt.Client, _u: Any) -> None:
        # the reason is only known here, inside paho's `except`
        self._from_paho(self._on_connect_fail, connect_failure())

    def _paho_on_disconnect(
        self, _c: mqtt.Client, _u: Any, _flags: Any, reason: Any, _props: Any
    ) -> None:
        self._from_paho(self._on_disconnect, str(reason))

    def _paho_on_publish(
        self, _c: mqtt.Client, _u: Any, mid: int, _reason: Any, _props: Any
    ) -> None:
        self._from_paho(self._on_publish, mid)

    # -- handlers (event loop thread)

    def _on_connect_fail(self, reason: str) -> None:
        host, port = self.broker.host, self.broker.port
        self._refusals.error(reason, "cannot connect to %s:%d: %s", host, port)

    def _on_connect(self, failed: bool, reason: str) -> None:
        if failed:
            self._refusals.error(reason, "broker %s refused the connection: %s", self.broker.host)
            return
        self._refusals.clear()
        self.counters.connects += 1
        log.info("connected to the broker; %d batches waiting", self.queue_depth)
        self.disconnected.clear()
        self.connected.set()
        # paho re-sends what it held from before the loss on its own thread right after this
        # CONNACK; publishing newer batches now could overtake them. Wait for their PUBACKs.
        self._resending = bool(self._inflight)
        self._publish_status("online")
        self._pump()

    def _on_disconnect(self, reason: str) -> None:
        if self.connected.is_set() and not self._stopping:
            self.counters.disconnects += 1
            log.warning("lost the broker (%s); buffering up to %d batches", reason, self._bound)
        self.connected.clear()
        self.disconnected.set()
        # paho re-sends them after reconnecting, but a power cut during the outage would take
        # them: written once per outage, they cost at most `inflight` files.
        self._save_in_flight()

    def _on_publish(self, mid: int) -> None:
        item = self._inflight.pop(mid, None)
        if item is not None:
            self.buffer.release(item)
            self.counters.batches_published += 1
            self.counters.samples_published += item.samples
            if not self._inflight:
                self._resending = False
            self._pump()
            return
        ack = self._status_acks.pop(mid, None)
        if ack is not None and not ack.done():
            ack.set_result(None)

    # -- publishing (event loop thread)

    @property
    def _bound(self) -> int:
        return self.buffer.max_batches

    @property
    def queue_depth(self) -> int:
        """Batches not yet acknowledged: in our buffer plus in paho's hands."""
        return len(self.buffer) + len(self._inflight)

    def submit(self, batch: ReadingBatch) -> None:
        """Queue one batch for publishing; never blocks, never raises for a full buffer."""
        item = Buffered(encode_batch(batch), len(batch))
        self._drained.clear()
        if not self.persist_every_batch and not len(self.buffer) and self._can_send():
            # Nothing older waits, so order holds; not writing it is the point (module docstring).
            self._send(item)
        else:
            self.buffer.append(item)
        self._pump()

    def publish_heartbeat(self, payload: bytes) -> None:
        """QoS 0, not buffered: a stale heartbeat is worthless."""
        if self._client is not None and self.connected.is_set():
            self._client.publish(self.heartbeat_topic, payload, qos=0)

    def _can_send(self) -> bool:
        return (
            self._client is not None
            and self.connected.is_set()
            and not self._resending
            and len(self._inflight) < self.window
        )

    def _pump(self) -> None:
        while len(self.buffer) and self._can_send():
            item = self.buffer.popleft()
            if item.payload:
                self._send(item)
        if not len(self.buffer) and not self._inflight:
            self._drained.set()
        else:  # also for a backlog found on disk at start, which no `submit` announced
            self._drained.clear()

    def _send(self, item: Buffered) -> None:
        assert self._client is not None  # noqa: S101  # _can_send checked it
        info = self._client.publish(self.readings_topic, item.payload, qos=1)
        if info.rc == MQTTErrorCode.MQTT_ERR_QUEUE_SIZE:  # cannot happen with our window
            log.error("paho refused a batch (queue full); it is counted as dropped")
            self.buffer.dropped_batches += 1
            self.buffer.dropped_samples += item.samples
            self.buffer.release(item)
            return
        # NO_CONN also lands here: paho keeps a QoS 1 message and sends it after reconnecting.
        self._inflight[info.mid] = item

    def _status(self, state: Literal["online", "offline"]) -> bytes:
        return encode_status(
            GatewayStatus(
                gw=self.gateway_id,
                state=state,
                t=self.wall_clock(),
                boot=self.boot,
                version=self.version,
            )
        )

    def _publish_status(self, state: Literal["online", "offline"]) -> asyncio.Future[None] | None:
        if self._client is None or self._loop is None:
            return None
        info = self._client.publish(self.status_topic, self._status(state), qos=1, retain=True)
        if info.rc not in (MQTTErrorCode.MQTT_ERR_SUCCESS, MQTTErrorCode.MQTT_ERR_NO_CONN):
            log.error("could not publish status %s: %s", state, mqtt.error_string(info.rc))
            return None
        ack: asyncio.Future[None] = self._loop.create_future()
        self._status_acks[info.mid] = ack
        return ack
