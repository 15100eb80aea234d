"""The whole gateway in-process against a real Mosquitto: batches arrive decoded, and a broker
stopped for 10 s loses only what the buffer bound says, counted, with the rest in order."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import signal
import uuid
from pathlib import Path
from typing import Any

import pytest
from bleak.backends.device import BLEDevice
from bleak.backends.scanner import AdvertisementData

from beacon_hub.wire import ReadingBatch, decode_batch, decode_status, readings_topic
from gateway.buffer import Buffered, DiskBuffer, MemoryBuffer, OfflineBuffer
from gateway.config import BrokerConfig, GatewayConfig
from gateway.daemon import Gateway
from gateway.frames import APPLE_COMPANY_ID
from gateway.publisher import Publisher
from gateway.scanner import DetectionCallback
from tests.gateway.mqtt_client import TIMEOUT_S, Received, Subscriber
from tests.servers import Mosquitto, free_port

pytestmark = pytest.mark.integration

OUTAGE_S = 10.0
"""The issue's scenario: the broker is away for 10 s."""
EMIT_INTERVAL_S = 0.01
"""The fake radio's advertising rate: 100 adverts/s, i.e. 20 per 0.2 s window."""

UUID = "e2c56db5dffb48d2b060d0f5a71096e0"


def numbered_advert(i: int) -> AdvertisementData:
    """Advert number i carries i in its iBeacon major/minor, so order is checkable end to end."""
    payload = bytes.fromhex(f"0215{UUID}") + (i // 65536).to_bytes(2) + (i % 65536).to_bytes(2)
    return AdvertisementData(
        local_name=None,
        manufacturer_data={APPLE_COMPANY_ID: payload + b"\xc5"},
        service_data={},
        service_uuids=[],
        tx_power=None,
        rssi=-60,
        platform_data=(),
    )


class NumberedRadio:
    """A fake scanner at the seam: emits advert 0, 1, 2, ... until paused."""

    def __init__(self) -> None:
        self.count = 0
        self.paused = False
        self._tasks: set[asyncio.Task[None]] = set()

    def factory(self, callback: DetectionCallback) -> Any:
        radio = self

        class Scanner:
            async def start(self) -> None:
                task = asyncio.create_task(radio._emit(callback))
                radio._tasks.add(task)
                task.add_done_callback(radio._tasks.discard)

            async def stop(self) -> None:
                for task in list(radio._tasks):
                    task.cancel()

        return Scanner()

    async def _emit(self, callback: DetectionCallback) -> None:
        device = BLEDevice("C3:00:00:00:00:01", None, None)
        while True:
            if not self.paused:
                callback(device, numbered_advert(self.count))
                self.count += 1
            await asyncio.sleep(EMIT_INTERVAL_S)


def _number(beacon: str) -> int:
    _, _, major, minor = beacon.split(":")
    return int(major) * 65536 + int(minor)


def batches(messages: list[Received], topic: str) -> list[ReadingBatch]:
    """Readings in arrival order, duplicates (QoS 1 re-sends) removed by (boot, seq)."""
    seen: set[tuple[str, int]] = set()
    out = []
    for m in messages:
        if m.topic == topic:
            batch = decode_batch(m.payload)
            if (batch.boot, batch.seq) not in seen:
                seen.add((batch.boot, batch.seq))
                out.append(batch)
    return out


def numbers(batch: ReadingBatch) -> list[int]:
    return [_number(batch.beacons[i]) for i in batch.b]


def _config(broker: Mosquitto, site: str, **sections: Any) -> GatewayConfig:
    return GatewayConfig.model_validate(
        {
            "gateway_id": "gw-test",
            "site": site,
            "broker": {"url": broker.url, "reconnect_max_s": 1},
            "heartbeat_interval_s": 3600,
            **sections,
        }
    )


def test_batches_arrive_decoded_with_status_and_heartbeat(mosquitto: Mosquitto) -> None:
    site = f"site-{uuid.uuid4().hex[:8]}"
    config = _config(mosquitto, site, batching={"window_s": 0.1})
    radio = NumberedRadio()
    sub = Subscriber(mosquitto, f"beacons/{site}/#")
    topic = readings_topic(site, "gw-test")

    async def scenario() -> Gateway:
        gateway = Gateway(config, scanner_factory=radio.factory, power_cycle_adapter=None)
        stop = asyncio.Event()
        run = asyncio.create_task(gateway.run(stop))
        await asyncio.to_thread(
            sub.wait_for, lambda ms: len(batches(ms, topic)) >= 3, "three batches"
        )
        gateway.send_heartbeat()
        await asyncio.to_thread(
            sub.wait_for, lambda ms: any(m.topic.endswith("/heartbeat") for m in ms), "heartbeat"
        )
        stop.set()
        await asyncio.wait_for(run, TIMEOUT_S)
        return gateway

    try:
        gateway = asyncio.run(scenario())
        messages = sub.wait_for(
            lambda ms: any(b"offline" in m.payload for m in ms), "offline status"
        )
    finally:
        sub.close()
    received = batches(messages, topic)
    assert [b.seq for b in received] == list(range(len(received)))
    assert all(b.boot == gateway.boot and b.gw == "gw-test" for b in received)
    flat = [n for b in received for n in numbers(b)]
    assert flat == list(range(len(flat)))  # every advert, in order
    assert len(flat) == gateway.publisher.counters.samples_published
    states = [decode_status(m.payload) for m in messages if m.topic.endswith("/status")]
    assert [s.state for s in states] == ["online", "offline"]
    assert states[0].boot == gateway.boot
    at = next(i for i, m in enumerate(messages) if m.topic.endswith("/heartbeat"))
    heartbeat = json.loads(messages[at].payload)
    # The radio keeps advertising after the heartbeat, so only the batches that reached the broker
    # before it are bounded by its counter; the final count bounds it from above.
    before = [n for b in batches(messages[:at], topic) for n in numbers(b)]
    assert len(before) <= heartbeat["adverts_seen"] <= gateway.pipeline.counters.adverts_seen
    assert heartbeat["scanner_restarts"] == 0
    assert heartbeat["beacons_heard"] >= 1


def test_broker_outage_loses_only_the_oldest_beyond_the_bound_and_counts_them(
    tmp_path: Path,
) -> None:
    site = f"site-{uuid.uuid4().hex[:8]}"
    broker = Mosquitto(tmp_path / "mosquitto")
    broker.start()
    topic = readings_topic(site, "gw-test")
    config = _config(
        broker,
        site,
        batching={"window_s": 0.2},
        buffer={"max_batches": 8, "inflight": 2},
    )
    radio = NumberedRadio()
    sub = Subscriber(broker, topic, persistent=True)

    async def scenario() -> Gateway:
        gateway = Gateway(config, scanner_factory=radio.factory, power_cycle_adapter=None)
        stop = asyncio.Event()
        run = asyncio.create_task(gateway.run(stop))
        await asyncio.to_thread(sub.wait_for, lambda ms: len(ms) >= 3, "batches before")
        await asyncio.to_thread(broker.stop)
        await asyncio.wait_for(gateway.publisher.disconnected.wait(), TIMEOUT_S)
        await asyncio.sleep(OUTAGE_S)  # the outage itself, not a synchronisation
        await asyncio.to_thread(broker.start)
        await asyncio.wait_for(gateway.publisher.connected.wait(), TIMEOUT_S)
        radio.paused = True
        gateway.flush()
        last_seq = gateway.pipeline.batcher.seq - 1
        await asyncio.to_thread(
            sub.wait_for,
            lambda ms: any(b.seq == last_seq for b in batches(ms, topic)),
            f"batch {last_seq}",
        )
        stop.set()
        await asyncio.wait_for(run, TIMEOUT_S)
        return gateway

    try:
        gateway = asyncio.run(scenario())
        messages = list(sub.messages)
    finally:
        sub.close()
        broker.stop()

    received = batches(messages, topic)
    seqs = [b.seq for b in received]
    assert seqs == sorted(seqs), "batches arrived out of order"
    missing = sorted(set(range(seqs[-1] + 1)) - set(seqs))
    # The outage (10 s of 0.2 s windows) overflowed the 8-batch buffer ...
    assert gateway.buffer.dropped_batches > 0
    # ... and exactly the dropped batches are missing, as one block of the oldest.
    assert len(missing) == gateway.buffer.dropped_batches
    assert missing == list(range(missing[0], missing[0] + len(missing)))
    after_gap = [s for s in seqs if s > missing[-1]]
    assert len(after_gap) >= config.buffer.max_batches  # the whole bound was replayed
    # Reading by reading: everything emitted arrived in order, except the counted drops.
    flat = [n for b in received for n in numbers(b)]
    assert flat == sorted(flat)
    assert len(set(flat)) == len(flat)
    assert len(flat) + gateway.buffer.dropped_samples == radio.count
    assert gateway.publisher.counters.samples_published == len(flat)


def test_disk_buffer_keeps_order_bound_and_survives_reopening(tmp_path: Path) -> None:
    folder = tmp_path / "buffer"
    buffer = DiskBuffer(folder, max_batches=3)
    for i in range(5):
        buffer.append(Buffered(f"batch-{i}".encode(), samples=i))
    assert (buffer.dropped_batches, buffer.dropped_samples) == (2, 0 + 1)
    reopened = DiskBuffer(folder, max_batches=2)  # a smaller bound after an upgrade
    assert reopened.dropped_batches == 1
    taken = [reopened.popleft() for _ in range(len(reopened))]
    assert [item.payload for item in taken] == [b"batch-3", b"batch-4"]
    with contextlib.suppress(IndexError):
        reopened.popleft()
    assert len(list(folder.iterdir())) == 2  # kept until the broker acknowledges them
    for item in taken:
        reopened.release(item)
    assert not list(folder.iterdir())


def _publisher(broker: BrokerConfig, buffer: OfflineBuffer, site: str = "site") -> Publisher:
    return Publisher(
        broker,
        site=site,
        gateway_id="gw-test",
        boot="00c0ffee",
        version="test",
        buffer=buffer,
        inflight=2,
    )


def _batch(seq: int) -> ReadingBatch:
    beacon = f"ibeacon:e2c56db5-dffb-48d2-b060-d0f5a71096e0:0:{seq}"
    return ReadingBatch(
        "gw-test", "00c0ffee", seq, 1.7e9, (beacon,), (0,), (0.0,), (-60.0,), (None,)
    )


def test_batches_in_flight_when_the_broker_dies_are_resent_first(tmp_path: Path) -> None:
    """Batches paho holds unacknowledged across a broker crash arrive, before anything newer."""
    site = f"site-{uuid.uuid4().hex[:8]}"
    # Save the subscriber's session at once, so a SIGKILL'd broker still knows it on restart.
    broker = Mosquitto(tmp_path / "mosquitto", extra_config="autosave_on_changes true")
    broker.start()
    topic = readings_topic(site, "gw-test")
    sub = Subscriber(broker, topic, persistent=True)
    config = _config(broker, site)
    buffer = MemoryBuffer(100)

    async def scenario() -> Publisher:
        publisher = _publisher(config.broker, buffer, site)
        await publisher.start()
        await asyncio.wait_for(publisher.connected.wait(), TIMEOUT_S)
        publisher.submit(_batch(0))
        await asyncio.to_thread(sub.wait_for, lambda ms: len(ms) >= 1, "batch 0")
        assert broker.pid is not None
        os.kill(broker.pid, signal.SIGSTOP)  # frozen: takes bytes, acknowledges nothing
        for seq in range(1, 6):
            publisher.submit(_batch(seq))
        assert publisher.queue_depth == 5  # 2 in paho's hands, 3 in our buffer
        await asyncio.to_thread(broker.kill)
        await asyncio.wait_for(publisher.disconnected.wait(), TIMEOUT_S)
        await asyncio.to_thread(broker.start)
        await asyncio.to_thread(
            sub.wait_for, lambda ms: any(b.seq == 5 for b in batches(ms, topic)), "batch 5"
        )
        await publisher.stop(drain_timeout_s=TIMEOUT_S)
        return publisher

    try:
        publisher = asyncio.run(scenario())
        messages = list(sub.messages)
    finally:
        sub.close()
        broker.stop()
    assert [b.seq for b in batches(messages, topic)] == [0, 1, 2, 3, 4, 5]
    assert publisher.counters.batches_published == 6
    assert buffer.dropped_batches == 0


@pytest.mark.parametrize("on_disk", [False, True])
def test_a_stop_with_the_broker_away_counts_what_only_memory_held(
    tmp_path: Path, on_disk: bool, caplog: pytest.LogCaptureFixture
) -> None:
    """Stopped with nothing acknowledged: a memory buffer's batches die with the process, said
    and counted as dropped (they went unnoticed); a disk buffer's wait in their files."""
    broker = BrokerConfig.model_validate({"url": f"mqtt://127.0.0.1:{free_port()}"})
    buffer = DiskBuffer(tmp_path / "buffer", 100) if on_disk else MemoryBuffer(100)

    async def scenario() -> None:
        publisher = _publisher(broker, buffer)
        await publisher.start()
        for seq in range(3):
            publisher.submit(_batch(seq))
        await publisher.stop(drain_timeout_s=0.1)

    with caplog.at_level("WARNING", logger="gateway.publisher"):
        asyncio.run(scenario())
    lost = "3 batches (3 samples) the broker has not acknowledged are lost"
    if on_disk:
        assert (buffer.dropped_batches, len(DiskBuffer(tmp_path / "buffer", 100))) == (0, 3)
        assert lost not in caplog.text
    else:
        assert (buffer.dropped_batches, buffer.dropped_samples) == (3, 3)
        assert lost in caplog.text


def test_a_clean_stop_logs_no_error(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """paho reads once more after our DISCONNECT and logged "Client is not connected" at ERROR
    on every clean stop."""
    broker = Mosquitto(tmp_path / "mosquitto")
    broker.start()

    async def scenario() -> None:
        publisher = _publisher(BrokerConfig.model_validate({"url": broker.url}), MemoryBuffer(10))
        await publisher.start()
        await asyncio.wait_for(publisher.connected.wait(), TIMEOUT_S)
        publisher.submit(_batch(0))
        await publisher.stop(drain_timeout_s=TIMEOUT_S)

    try:
        with caplog.at_level("DEBUG", logger="gateway.paho"):
            asyncio.run(scenario())
    finally:
        broker.stop()
    assert "Sending DISCONNECT" in caplog.text  # paho's log is captured
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR] == []
