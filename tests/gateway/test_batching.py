"""The batcher's size bound: every batch it closes fits the hub's wire.MAX_BATCH_BYTES, and a
window too big for one batch is split without losing a sample."""

from __future__ import annotations

from bleak.backends.device import BLEDevice
from bleak.backends.scanner import AdvertisementData
from hypothesis import given, settings
from hypothesis import strategies as st

from beacon_hub.wire import (
    MAX_BATCH_BYTES,
    MAX_BATCH_SAMPLES,
    ReadingBatch,
    Telemetry,
    decode_batch,
    encode_batch,
)
from gateway.batching import Batcher
from gateway.filters import BeaconFilter
from gateway.frames import EDDYSTONE_SERVICE_UUID
from gateway.pipeline import Pipeline

SENT = 1_700_000_000.0
TLM_EXTREMES = bytes.fromhex("2000 ffff 8001 ffffffff ffffffff")
"""Eddystone-TLM with every field at its longest in JSON: 65535 mV, -127.996 degC, 2^32-1
adverts, 429496729.5 s."""


class Run:
    """A pipeline at the largest sample limit whose early batches are collected like the daemon
    does (`on_full` takes the batch), on a clock advanced by hand."""

    def __init__(self) -> None:
        self.t = 100.0
        self.batches: list[ReadingBatch] = []
        self.pipe = Pipeline(
            Batcher("gw-1", "00c0ffee", max_samples=MAX_BATCH_SAMPLES),
            BeaconFilter(),
            monotonic=lambda: self.t,
            on_full=self.take,
        )

    def take(self) -> None:
        batch = self.pipe.take(SENT)
        assert batch is not None
        self.batches.append(batch)

    def advert(self, address: str, rssi: int, mfg: dict[int, bytes], svc: dict[str, bytes]) -> None:
        adv = AdvertisementData(None, mfg, svc, list(svc), None, rssi, ())
        self.pipe.on_advertisement(BLEDevice(address, None, None), adv)

    def finish(self) -> list[ReadingBatch]:
        """Every batch of the run, the last one closed by the window; each decoded by the hub."""
        self.take()
        decoded = []
        for batch in self.batches:
            raw = encode_batch(batch)
            assert len(raw) <= MAX_BATCH_BYTES
            decoded.append(decode_batch(raw))
        assert decoded == self.batches
        assert [b.seq for b in decoded] == list(range(len(decoded)))
        return decoded


def samples_of(batches: list[ReadingBatch]) -> list[tuple[str, float]]:
    return [(b.beacons[i], b.rssi[k]) for b in batches for k, i in enumerate(b.b)]


def test_ten_thousand_eddystone_uid_and_tlm_are_split_and_all_arrive() -> None:
    """1.7 MB in one batch before the size bound (the fuzzing audit's worst_batch.py)."""
    run = Run()
    heard = []
    for i in range(10_000):
        address = f"C3:00:00:{i >> 16 & 255:02X}:{i >> 8 & 255:02X}:{i & 255:02X}"
        uid = bytes([0, 0x80]) + i.to_bytes(10, "big") + i.to_bytes(6, "big")
        rssi = -30 - i % 90
        run.advert(address, rssi, {}, {EDDYSTONE_SERVICE_UUID: uid})
        run.advert(address, rssi, {}, {EDDYSTONE_SERVICE_UUID: TLM_EXTREMES})
        heard.append((f"eddystone:{i:020x}:{i:012x}", float(rssi)))
    batches = run.finish()
    assert len(batches) >= 2
    assert samples_of(batches) == heard
    tlm = [t for b in batches for t in b.tlm]
    assert sorted(t.beacon for t in tlm) == sorted(beacon for beacon, _ in heard)
    assert {t.adv_count for t in tlm} == {2**32 - 1}


def test_many_altbeacons_per_advert_are_split_and_all_arrive() -> None:
    """Seven AltBeacon entries per advertisement, 9,990 distinct long ids, one window: 1.07 MB
    at 20,000 samples and 3.1 MB at 100,000 before the size bound (worst_batch2.py)."""
    run = Run()
    heard = []
    n = 0
    for _advert in range(5_000):
        mfg = {}
        for k in range(7):
            i = n % 9990
            n += 1
            mfg[0x0100 + k] = b"\xbe\xac" + i.to_bytes(16, "big") + b"\xff\xff\xff\xff\x80\x00"
            heard.append((f"altbeacon:{i:032x}:65535:65535", -100.0))
        run.t += 0.0002
        run.advert("C3:00:00:00:00:01", -100, mfg, {})
    batches = run.finish()
    assert len(batches) >= 2
    assert samples_of(batches) == heard
    assert run.pipe.counters.samples == len(heard)


tlms = st.builds(
    Telemetry,
    beacon=st.just(""),
    battery_mv=st.none() | st.integers(0, 100_000),
    temperature_c=st.none() | st.floats(-128.0, 128.0),
    adv_count=st.none() | st.integers(0, 2**32 - 1),
    uptime_s=st.none() | st.floats(0.0, 2**32),
)


@settings(max_examples=200, deadline=None)
@given(
    ops=st.lists(
        st.tuples(
            st.integers(0, 300),  # which beacon
            st.floats(0.0, 3_500.0),  # seconds before the send time
            st.floats(-127.0, 20.0),
            st.none() | st.floats(-1000.0, 1000.0),
            st.none() | tlms,
        ),
        max_size=60,
    ),
    seq=st.integers(0, 2**63 - 1),
    sent=st.floats(0.0, 1e11),
)
def test_the_size_bound_is_never_below_the_encoded_size(
    ops: list[tuple[int, float, float, float | None, Telemetry | None]], seq: int, sent: float
) -> None:
    batcher = Batcher("gw-1", "00c0ffee", first_seq=seq)
    now = 10_000.0
    for which, before_s, rssi, tx, tlm in ops:
        beacon = f"ibeacon:e2c56db5-dffb-48d2-b060-d0f5a71096e0:{which}:{65535 - which}"
        if tlm is None:
            batcher.add(beacon, now - before_s, rssi, tx)
        else:
            batcher.add_telemetry(
                Telemetry(beacon, tlm.battery_mv, tlm.temperature_c, tlm.adv_count, tlm.uptime_s)
            )
    bound = batcher.size_bound
    batch = batcher.take(sent, now)
    if batch is None:
        assert not ops
        return
    assert len(encode_batch(batch)) <= bound
    assert batcher.size_bound == Batcher("gw-1", "00c0ffee").size_bound  # empty again
