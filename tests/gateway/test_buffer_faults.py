"""The disk buffer when the disk misbehaves (full, read-only, torn files) and across a restart.

Disk faults are injected at the narrowest seam, the os/pathlib call that fails, restricted to the
buffer's folder: we run as root here, where chmod cannot make a folder read-only, and mounting a
small tmpfs needs privileges a test does not have. The broker is a real Mosquitto throughout.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import os
import signal
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from beacon_hub.wire import (
    ReadingBatch,
    decode_batch,
    decode_status,
    encode_batch,
    readings_topic,
)
from gateway.buffer import Buffered, DiskBuffer, MemoryBuffer
from gateway.config import GatewayConfig
from gateway.daemon import Gateway
from gateway.publisher import Publisher
from tests.gateway.mqtt_client import TIMEOUT_S, Received, Subscriber
from tests.servers import Mosquitto


def _batch(seq: int, samples: int = 1) -> ReadingBatch:
    beacon = f"ibeacon:e2c56db5-dffb-48d2-b060-d0f5a71096e0:0:{seq}"
    return ReadingBatch(
        "gw-test",
        "00c0ffee",
        seq,
        1.7e9,
        (beacon,),
        (0,) * samples,
        (0.0,) * samples,
        (-60.0,) * samples,
        (None,) * samples,
    )


def _seqs(messages: list[Received], topic: str) -> list[int]:
    return [decode_batch(m.payload).seq for m in messages if m.topic == topic]


class DiskFault:
    """Makes calls on files in one folder fail with `error` while `on` is set."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, folder: Path, error: int) -> None:
        self.on = False
        self.folder = folder
        self.error = error
        # A full disk still lets a file be deleted; a read-only one does not.
        for name in ("open", "replace") if error == errno.ENOSPC else ("open", "replace", "unlink"):
            self._wrap(monkeypatch, name)
        real_fsync = os.fsync

        def fsync(fd: int) -> None:
            if self.on:
                raise OSError(self.error, os.strerror(self.error))
            real_fsync(fd)

        monkeypatch.setattr(os, "fsync", fsync)

    def _wrap(self, monkeypatch: pytest.MonkeyPatch, name: str) -> None:
        real: Callable[..., Any] = getattr(Path, name)
        fault = self

        def call(path: Path, *args: Any, **kwargs: Any) -> Any:
            writes = name != "open" or any("w" in str(a) for a in args)
            if fault.on and writes and path.parent == fault.folder:
                raise OSError(fault.error, os.strerror(fault.error), str(path))
            return real(path, *args, **kwargs)

        monkeypatch.setattr(Path, name, call)


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    return tmp_path / "buffer"


def _items(n: int, start: int = 0) -> list[Buffered]:
    return [Buffered(f"batch-{i}".encode(), samples=10 + i) for i in range(start, start + n)]


def _drain(buffer: DiskBuffer) -> list[bytes]:
    out = []
    while len(buffer):
        item = buffer.popleft()
        if item.payload:
            out.append(item.payload)
        buffer.release(item)
    return out


def test_a_full_disk_keeps_batches_in_memory_counts_the_overflow_and_leaves_no_tmp(
    monkeypatch: pytest.MonkeyPatch, folder: Path, caplog: pytest.LogCaptureFixture
) -> None:
    buffer = DiskBuffer(folder, max_batches=3)
    fault = DiskFault(monkeypatch, folder, errno.ENOSPC)
    buffer.append(_items(1)[0])  # on disk
    fault.on = True
    with caplog.at_level(logging.WARNING, logger="gateway.buffer"):
        for item in _items(4, start=1):  # the disk refuses each one
            buffer.append(item)
        fault.on = False
        buffer.append(_items(1, start=5)[0])  # the disk is back, but older batches wait in memory
    assert [p.name for p in folder.iterdir()] == []  # the oldest (on disk) went over the bound
    assert (buffer.dropped_batches, buffer.dropped_samples) == (3, 10 + 11 + 12)
    assert [r.levelname for r in caplog.records] == ["ERROR"]  # once per episode
    assert _drain(buffer) == [b"batch-3", b"batch-4", b"batch-5"]
    buffer.append(_items(1, start=6)[0])
    assert len(list(folder.glob("*.batch"))) == 1  # back on disk once the memory drained


def test_batches_the_disk_refused_count_in_the_heartbeat(
    monkeypatch: pytest.MonkeyPatch, folder: Path
) -> None:
    config = GatewayConfig.model_validate(
        {
            "gateway_id": "gw-test",
            "site": "s1",
            "broker": {"url": "mqtt://127.0.0.1:9"},  # never started: the broker is away
            "buffer": {"dir": str(folder), "max_batches": 2},
        }
    )
    gateway = Gateway(config, power_cycle_adapter=None)
    DiskFault(monkeypatch, folder, errno.EROFS).on = True
    for seq in range(5):
        gateway.publisher.submit(_batch(seq, samples=3))
    assert gateway.heartbeat()["adverts_dropped"] == 3 * 3
    assert gateway.heartbeat()["queue_depth"] == 2


def test_a_read_only_buffer_folder_at_start_runs_with_memory(
    monkeypatch: pytest.MonkeyPatch, folder: Path, caplog: pytest.LogCaptureFixture
) -> None:
    folder.mkdir()
    (folder / "00000000000000000007.tmp").write_bytes(b"1 2 0")  # left by a power cut
    DiskFault(monkeypatch, folder, errno.EROFS).on = True
    config = GatewayConfig.model_validate(
        {"gateway_id": "gw-test", "site": "s1", "buffer": {"dir": str(folder)}}
    )
    with caplog.at_level(logging.ERROR, logger="gateway.daemon"):
        gateway = Gateway(config, power_cycle_adapter=None)
    assert isinstance(gateway.buffer, MemoryBuffer)
    assert str(folder) in caplog.text


def test_damaged_files_are_deleted_counted_and_not_published(
    folder: Path, caplog: pytest.LogCaptureFixture
) -> None:
    buffer = DiskBuffer(folder, max_batches=10)
    for item in _items(4):
        buffer.append(item)
    files = sorted(folder.glob("*.batch"))
    files[1].write_bytes(files[1].read_bytes()[:-2])  # truncated
    files[2].write_bytes(b"")  # empty
    reopened = DiskBuffer(folder, max_batches=10)
    with caplog.at_level(logging.ERROR, logger="gateway.buffer"):
        assert _drain(reopened) == [b"batch-0", b"batch-3"]
    assert (reopened.dropped_batches, reopened.dropped_samples) == (2, 11)
    assert files[1].name in caplog.text
    assert files[2].name in caplog.text
    assert not list(folder.iterdir())


def test_append_fsyncs_the_file_and_the_folder(
    monkeypatch: pytest.MonkeyPatch, folder: Path
) -> None:
    buffer = DiskBuffer(folder, max_batches=10)
    synced: list[str] = []
    real_fsync = os.fsync

    def fsync(fd: int) -> None:
        synced.append(str(Path(f"/proc/self/fd/{fd}").readlink()))
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    buffer.append(_items(1)[0])
    assert synced == [str(folder / "00000000000000000000.tmp"), str(folder)]


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[Mosquitto]:
    server = Mosquitto(tmp_path / "mosquitto")
    server.start()
    try:
        yield server
    finally:
        server.stop()


def _publisher(broker: Mosquitto, site: str, buffer: DiskBuffer, inflight: int) -> Publisher:
    config = GatewayConfig.model_validate(
        {"gateway_id": "gw-test", "site": site, "broker": {"url": broker.url}}
    )
    return Publisher(
        config.broker,
        site=site,
        gateway_id="gw-test",
        boot="00c0ffee",
        version="test",
        buffer=buffer,
        inflight=inflight,
    )


@pytest.mark.integration
def test_a_read_only_folder_still_publishes_everything(
    monkeypatch: pytest.MonkeyPatch,
    folder: Path,
    broker: Mosquitto,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Files written before the folder went read-only are sent (and stay: they cannot be
    deleted); newer batches go through memory; nothing raises inside the publisher."""
    site = f"site-{uuid.uuid4().hex[:8]}"
    topic = readings_topic(site, "gw-test")
    sub = Subscriber(broker, topic)
    buffer = DiskBuffer(folder, max_batches=100)

    async def scenario() -> Publisher:
        publisher = _publisher(broker, site, buffer, inflight=2)
        for seq in range(3):  # while the broker is not yet connected: on disk
            publisher.submit(_batch(seq))
        DiskFault(monkeypatch, folder, errno.EROFS).on = True
        await publisher.start()
        await asyncio.wait_for(publisher.connected.wait(), TIMEOUT_S)
        for seq in range(3, 6):
            publisher.submit(_batch(seq))
        await asyncio.to_thread(sub.wait_for, lambda ms: 5 in _seqs(ms, topic), "batch 5")
        await publisher.stop(drain_timeout_s=TIMEOUT_S)
        return publisher

    try:
        with caplog.at_level(logging.ERROR, logger="gateway.buffer"):
            publisher = asyncio.run(scenario())
        messages = list(sub.messages)
    finally:
        sub.close()
    assert _seqs(messages, topic) == [0, 1, 2, 3, 4, 5]
    assert publisher.counters.batches_published == 6
    assert buffer.dropped_batches == 0
    assert len(list(folder.glob("*.batch"))) == 3  # undeletable: replayed once after a restart
    assert not list(folder.glob("*.tmp"))
    assert len([r for r in caplog.records if r.name == "gateway.buffer"]) == 1


@pytest.mark.integration
def test_batches_in_flight_stay_on_disk_and_a_restart_replays_them(
    folder: Path, broker: Mosquitto
) -> None:
    """A stop while the broker is unreachable (or a kill -9) must not lose what paho held."""
    site = f"site-{uuid.uuid4().hex[:8]}"
    topic = readings_topic(site, "gw-test")

    async def first_run() -> Publisher:
        publisher = _publisher(broker, site, DiskBuffer(folder, max_batches=100), inflight=2)
        await publisher.start()
        await asyncio.wait_for(publisher.connected.wait(), TIMEOUT_S)
        publisher.submit(_batch(0))
        await asyncio.wait_for(publisher._drained.wait(), TIMEOUT_S)  # batch 0 acknowledged
        assert broker.pid is not None
        os.kill(broker.pid, signal.SIGSTOP)  # takes bytes, acknowledges nothing
        for seq in range(1, 6):
            publisher.submit(_batch(seq))
        assert len(publisher._inflight) == 2
        await asyncio.to_thread(broker.kill)
        await asyncio.wait_for(publisher.disconnected.wait(), TIMEOUT_S)
        await publisher.stop(drain_timeout_s=TIMEOUT_S)
        return publisher

    first = asyncio.run(first_run())
    assert first.counters.batches_published == 1
    assert len(list(folder.glob("*.batch"))) == 5  # the 2 in flight and the 3 queued
    broker.start()
    sub = Subscriber(broker, topic)
    restarted = DiskBuffer(folder, max_batches=100)

    async def second_run() -> Publisher:
        publisher = _publisher(broker, site, restarted, inflight=2)
        await publisher.start()
        await asyncio.wait_for(publisher.connected.wait(), TIMEOUT_S)
        await asyncio.to_thread(sub.wait_for, lambda ms: 5 in _seqs(ms, topic), "batch 5")
        await publisher.stop(drain_timeout_s=TIMEOUT_S)
        return publisher

    try:
        second = asyncio.run(second_run())
        messages = list(sub.messages)
    finally:
        sub.close()
    assert _seqs(messages, topic) == [1, 2, 3, 4, 5]
    assert second.counters.batches_published == 5
    assert not list(folder.iterdir())  # deleted on PUBACK


@pytest.mark.integration
def test_a_stop_soon_after_a_restart_waits_for_the_backlog_on_disk(
    folder: Path, broker: Mosquitto
) -> None:
    """The drain at a stop waited only for batches submitted in this run: files found at start
    were left behind, the offline status sent ahead of them."""
    site = f"site-{uuid.uuid4().hex[:8]}"
    topic = readings_topic(site, "gw-test")
    earlier = DiskBuffer(folder, max_batches=100)
    for seq in range(5):
        earlier.append(Buffered(encode_batch(_batch(seq)), samples=1))
    sub = Subscriber(broker, topic)

    async def scenario() -> Publisher:
        publisher = _publisher(broker, site, DiskBuffer(folder, max_batches=100), inflight=2)
        await publisher.start()
        await asyncio.wait_for(publisher.connected.wait(), TIMEOUT_S)
        await publisher.stop(drain_timeout_s=TIMEOUT_S)
        return publisher

    try:
        publisher = asyncio.run(scenario())
        assert publisher.counters.batches_published == 5
        messages = sub.wait_for(lambda ms: 4 in _seqs(ms, topic), "batch 4")
    finally:
        sub.close()
    assert _seqs(messages, topic) == [0, 1, 2, 3, 4]
    assert not list(folder.iterdir())


@pytest.mark.integration
def test_a_failing_last_flush_still_stops_the_publisher_cleanly(broker: Mosquitto) -> None:
    site = f"site-{uuid.uuid4().hex[:8]}"
    sub = Subscriber(broker, f"beacons/{site}/#")
    config = GatewayConfig.model_validate(
        {"gateway_id": "gw-test", "site": site, "broker": {"url": broker.url}}
    )

    class NoRadio:
        async def start(self) -> None:
            pass

        async def stop(self) -> None:
            pass

    async def scenario() -> None:
        gateway = Gateway(config, scanner_factory=lambda _cb: NoRadio(), power_cycle_adapter=None)
        stop = asyncio.Event()
        run = asyncio.create_task(gateway.run(stop))
        await asyncio.wait_for(gateway.publisher.connected.wait(), TIMEOUT_S)

        def broken_flush() -> None:
            raise OSError(errno.EROFS, "Read-only file system")

        gateway.flush = broken_flush  # type: ignore[method-assign]
        stop.set()
        await asyncio.wait_for(run, TIMEOUT_S)  # raises if _shutdown let the error out

    try:
        asyncio.run(scenario())
        messages = sub.wait_for(
            lambda ms: any(b"offline" in m.payload for m in ms), "offline status"
        )
    finally:
        sub.close()
    states = [decode_status(m.payload).state for m in messages if m.topic.endswith("/status")]
    assert states == ["online", "offline"]
