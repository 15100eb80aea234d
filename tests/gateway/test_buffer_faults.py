"""The disk buffer: which batches reach the disk, what a restart sends and in which order, and
what happens when the disk misbehaves (full, read-only, torn files).

Disk faults are injected at the narrowest seam, the os/pathlib call that fails, restricted to the
buffer's folder: we run as root here, where chmod cannot make a folder read-only, and mounting a
small tmpfs needs privileges a test does not have. Files created are counted by the kernel
(inotify), whatever call made them. The broker is a real Mosquitto throughout.
"""

from __future__ import annotations

import asyncio
import ctypes
import errno
import logging
import os
import signal
import struct
import uuid
import zlib
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


class FileCreations:
    """The names of files created in, or renamed into, one folder, as the kernel saw them
    (inotify, read through libc: the standard library has no binding)."""

    _IN_MOVED_TO = 0x80
    _IN_CREATE = 0x100
    _EVENT = struct.Struct("iIII")  # struct inotify_event without its name

    def __init__(self, folder: Path) -> None:
        libc = ctypes.CDLL(None, use_errno=True)
        self._fd = libc.inotify_init1(os.O_NONBLOCK | os.O_CLOEXEC)
        if self._fd < 0:
            raise OSError(ctypes.get_errno(), "inotify_init1")
        mask = self._IN_CREATE | self._IN_MOVED_TO
        if libc.inotify_add_watch(self._fd, os.fsencode(folder), mask) < 0:
            os.close(self._fd)
            raise OSError(ctypes.get_errno(), "inotify_add_watch", str(folder))

    def names(self) -> list[str]:
        """Everything created since the last call (the kernel queued it as it happened)."""
        out: list[str] = []
        while True:
            try:
                data = os.read(self._fd, 65536)
            except BlockingIOError:
                return out
            at = 0
            while at < len(data):
                _wd, _mask, _cookie, length = self._EVENT.unpack_from(data, at)
                at += self._EVENT.size
                out.append(data[at : at + length].rstrip(b"\0").decode())
                at += length

    def close(self) -> None:
        os.close(self._fd)


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    return tmp_path / "buffer"


@pytest.fixture
def created(folder: Path) -> Iterator[FileCreations]:
    folder.mkdir()
    watch = FileCreations(folder)
    try:
        yield watch
    finally:
        watch.close()


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


def _publisher(
    broker: Mosquitto, site: str, buffer: DiskBuffer, inflight: int, **options: Any
) -> Publisher:
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
        **options,
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
@pytest.mark.parametrize("persist", ["outage", "every_batch"])
def test_batches_acknowledged_at_once_write_no_file(
    folder: Path, created: FileCreations, mosquitto: Mosquitto, persist: str
) -> None:
    """A gateway whose broker answers at once wrote, fsync'd and deleted a file per batch: about
    60 KiB of SD card writes a second (docs/gateway.md). `every_batch` still does, on purpose."""
    site = f"site-{uuid.uuid4().hex[:8]}"
    topic = readings_topic(site, "gw-test")
    sub = Subscriber(mosquitto, topic)
    buffer: dict[str, object] = {"dir": str(folder)}
    if persist != "outage":
        buffer["persist"] = persist
    config = GatewayConfig.model_validate(
        {"gateway_id": "gw-test", "site": site, "broker": {"url": mosquitto.url}, "buffer": buffer}
    )
    batches = 20

    async def scenario() -> None:
        publisher = Gateway(config, power_cycle_adapter=None).publisher
        await publisher.start()
        await asyncio.wait_for(publisher.connected.wait(), TIMEOUT_S)
        for seq in range(batches):  # one at a time, each acknowledged, as a window a second is
            publisher.submit(_batch(seq))
            await asyncio.wait_for(publisher._drained.wait(), TIMEOUT_S)
        await publisher.stop(drain_timeout_s=TIMEOUT_S)

    try:
        asyncio.run(scenario())
        last = batches - 1
        messages = sub.wait_for(lambda ms: last in _seqs(ms, topic), f"batch {last}")
    finally:
        sub.close()
    assert _seqs(messages, topic) == list(range(batches))
    names = created.names()
    if persist == "outage":
        assert names == []
    else:
        assert len([name for name in names if name.endswith(".batch")]) == batches
    assert not list(folder.iterdir())


@pytest.mark.integration
def test_batches_buffered_in_an_outage_are_sent_once_in_order_after_a_restart(
    folder: Path, created: FileCreations, broker: Mosquitto
) -> None:
    """One subscriber per broker run: a persistent session across the broker's restart would
    add the broker's own re-deliveries to what the gateway sent."""
    site = f"site-{uuid.uuid4().hex[:8]}"
    topic = readings_topic(site, "gw-test")
    sub = Subscriber(broker, topic)

    async def first_run() -> Publisher:
        publisher = _publisher(broker, site, DiskBuffer(folder, max_batches=100), inflight=2)
        await publisher.start()
        await asyncio.wait_for(publisher.connected.wait(), TIMEOUT_S)
        for seq in range(5):
            publisher.submit(_batch(seq))
            await asyncio.wait_for(publisher._drained.wait(), TIMEOUT_S)
        assert created.names() == []  # acknowledged at once: memory only
        await asyncio.to_thread(sub.wait_for, lambda ms: 4 in _seqs(ms, topic), "batch 4")
        await asyncio.to_thread(broker.stop)
        await asyncio.wait_for(publisher.disconnected.wait(), TIMEOUT_S)
        for seq in range(5, 10):
            publisher.submit(_batch(seq))
        await publisher.stop(drain_timeout_s=TIMEOUT_S)
        return publisher

    try:
        first = asyncio.run(first_run())
    finally:
        sub.close()
    before = _seqs(list(sub.messages), topic)
    assert (first.counters.batches_published, first.buffer.dropped_batches) == (5, 0)
    assert len([name for name in created.names() if name.endswith(".batch")]) == 5
    broker.start()
    sub = Subscriber(broker, topic)
    restarted = DiskBuffer(folder, max_batches=100)

    async def second_run() -> Publisher:
        publisher = _publisher(broker, site, restarted, inflight=2)
        await publisher.start()
        await asyncio.wait_for(publisher.connected.wait(), TIMEOUT_S)
        await publisher.stop(drain_timeout_s=TIMEOUT_S)  # waits for the backlog
        return publisher

    try:
        second = asyncio.run(second_run())
        after = _seqs(sub.wait_for(lambda ms: 9 in _seqs(ms, topic), "batch 9"), topic)
    finally:
        sub.close()
    assert before + after == list(range(10))  # each once, in order
    assert (second.counters.batches_published, restarted.dropped_batches) == (5, 0)
    assert not list(folder.iterdir())  # deleted on PUBACK


@pytest.mark.integration
@pytest.mark.parametrize("persist", ["outage", "every_batch"])
@pytest.mark.parametrize("ending", ["connection_lost", "stop_while_frozen"])
def test_batches_in_flight_go_to_disk_and_a_restart_sends_them_before_the_queued_ones(
    folder: Path, broker: Mosquitto, persist: str, ending: str
) -> None:
    """Batches handed to paho from memory are older than those queued on disk behind them: when
    the connection drops (or, still up, at a stop) they are written where a restart reads them
    first. A kill -9 of the broker is the drop; a frozen broker keeps the connection up."""
    site = f"site-{uuid.uuid4().hex[:8]}"
    topic = readings_topic(site, "gw-test")
    every_batch = persist == "every_batch"

    async def first_run() -> Publisher:
        buffer = DiskBuffer(folder, max_batches=100)
        publisher = _publisher(broker, site, buffer, inflight=2, persist_every_batch=every_batch)
        await publisher.start()
        await asyncio.wait_for(publisher.connected.wait(), TIMEOUT_S)
        publisher.submit(_batch(0))
        await asyncio.wait_for(publisher._drained.wait(), TIMEOUT_S)  # batch 0 acknowledged
        assert broker.pid is not None
        os.kill(broker.pid, signal.SIGSTOP)  # takes bytes, acknowledges nothing
        for seq in range(1, 6):
            publisher.submit(_batch(seq))
        assert (len(publisher._inflight), len(buffer)) == (2, 3)
        if ending == "connection_lost":
            await asyncio.to_thread(broker.kill)
            await asyncio.wait_for(publisher.disconnected.wait(), TIMEOUT_S)
            await publisher.stop(drain_timeout_s=TIMEOUT_S)
        else:
            # The drain cannot succeed: how long it is given changes nothing here.
            await publisher.stop(drain_timeout_s=0.1)
            await asyncio.to_thread(broker.kill)
        return publisher

    first = asyncio.run(first_run())
    assert (first.counters.batches_published, first.buffer.dropped_batches) == (1, 0)
    in_flight = 0 if every_batch else 2  # every_batch: their queued files are still there
    assert len(list(folder.glob("*.inflight"))) == in_flight
    assert len(list(folder.glob("*.batch"))) == 5 - in_flight
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
def test_a_stop_counts_batches_in_flight_the_disk_refused(
    monkeypatch: pytest.MonkeyPatch,
    folder: Path,
    broker: Mosquitto,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Only memory held them and the disk would not take them at the stop: said and counted as
    dropped; the queued files stay for the next start."""
    site = f"site-{uuid.uuid4().hex[:8]}"
    buffer = DiskBuffer(folder, max_batches=100)

    async def scenario() -> None:
        publisher = _publisher(broker, site, buffer, inflight=2)
        await publisher.start()
        await asyncio.wait_for(publisher.connected.wait(), TIMEOUT_S)
        assert broker.pid is not None
        os.kill(broker.pid, signal.SIGSTOP)
        for seq in range(5):
            publisher.submit(_batch(seq, samples=3))
        DiskFault(monkeypatch, folder, errno.EROFS).on = True
        await publisher.stop(drain_timeout_s=0.1)  # cannot drain: the broker is frozen

    try:
        with caplog.at_level(logging.WARNING, logger="gateway.publisher"):
            asyncio.run(scenario())
    finally:
        broker.kill()
    assert (buffer.dropped_batches, buffer.dropped_samples) == (2, 2 * 3)
    assert "2 batches (6 samples) the broker has not acknowledged are lost" in caplog.text
    assert len(list(folder.glob("*.batch"))) == 3


def test_a_batch_paho_took_from_disk_before_one_from_memory_stays_before_it(
    folder: Path,
) -> None:
    """At the end of an outage's backlog paho may hold a batch from its file and, behind it, a
    newer one from memory: both move to in-flight files, in the order they were sent."""
    buffer = DiskBuffer(folder, max_batches=10)
    old, fresh, queued = _items(3)
    buffer.append(old)
    from_disk = buffer.popleft()  # in paho's hands, its file kept until the PUBACK
    buffer.append(queued)  # made after `fresh` was sent
    saved = buffer.save_in_flight([from_disk, fresh])
    assert all(item.ticket is not None for item in saved)
    assert len(list(folder.glob("*.inflight"))) == 2
    assert _drain(DiskBuffer(folder, max_batches=10)) == [b"batch-0", b"batch-1", b"batch-2"]


@pytest.mark.integration
def test_a_folder_written_before_in_flight_files_existed_is_sent_in_order(
    folder: Path, broker: Mosquitto
) -> None:
    """An upgraded gateway finds files in the earlier format (`NNN.batch`, numbered by a
    counter, first line `samples length crc32`, or one release older just `samples`)."""
    site = f"site-{uuid.uuid4().hex[:8]}"
    topic = readings_topic(site, "gw-test")
    folder.mkdir()
    for seq, number in enumerate((41, 42, 107)):
        payload = encode_batch(_batch(seq))
        crc = b" %d %08x" % (len(payload), zlib.crc32(payload)) if seq else b""
        (folder / f"{number:020d}.batch").write_bytes(b"1%s\n%s" % (crc, payload))
    sub = Subscriber(broker, topic)
    buffer = DiskBuffer(folder, max_batches=100)

    async def scenario() -> None:
        publisher = _publisher(broker, site, buffer, inflight=2)
        await publisher.start()
        for seq in range(3, 6):
            publisher.submit(_batch(seq))
        await asyncio.wait_for(publisher.connected.wait(), TIMEOUT_S)
        await asyncio.to_thread(sub.wait_for, lambda ms: 5 in _seqs(ms, topic), "batch 5")
        await publisher.stop(drain_timeout_s=TIMEOUT_S)

    try:
        asyncio.run(scenario())
        messages = list(sub.messages)
    finally:
        sub.close()
    assert _seqs(messages, topic) == [0, 1, 2, 3, 4, 5]
    assert buffer.dropped_batches == 0
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
