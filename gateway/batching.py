"""Samples -> columnar readings batches (DESIGN.md), one per window, with boot id and sequence.

The batcher is pure: the caller passes monotonic times and the wall-clock send time, so tests
and the benchmark drive it without a clock. Each sample keeps its own offset before the batch's
send time (`dt_ms`), so batching never blurs when a reading was heard.
"""

from __future__ import annotations

import secrets
from typing import Final

from beacon_hub.wire import MAX_BATCH_BEACONS, MAX_BATCH_SAMPLES, ReadingBatch, Telemetry

__all__ = ["BOOT_ID_BYTES", "Batcher", "new_boot_id"]

BOOT_ID_BYTES: Final = 8
"""16 hex digits: wire.py accepts 4-32; 64 random bits make a collision between two boots of
one gateway negligible."""


def new_boot_id() -> str:
    return secrets.token_hex(BOOT_ID_BYTES)


class Batcher:
    """Collects samples of the current window; `take` closes it into a `ReadingBatch`.

    `full` turns true before a batch would exceed the wire limits; the caller then takes the
    batch early, so no sample is ever dropped here.
    """

    __slots__ = (
        "_b",
        "_beacons",
        "_index",
        "_rssi",
        "_t",
        "_tlm",
        "_tx",
        "boot",
        "gw",
        "max_samples",
        "seq",
    )

    def __init__(
        self, gw: str, boot: str, *, max_samples: int = MAX_BATCH_SAMPLES, first_seq: int = 0
    ) -> None:
        self.gw = gw
        self.boot = boot
        self.seq = first_seq
        self.max_samples = min(max_samples, MAX_BATCH_SAMPLES)
        self._index: dict[str, int] = {}
        self._beacons: list[str] = []
        self._b: list[int] = []
        self._t: list[float] = []
        self._rssi: list[float] = []
        self._tx: list[float | None] = []
        self._tlm: dict[str, Telemetry] = {}

    def __len__(self) -> int:
        return len(self._b)

    @property
    def full(self) -> bool:
        return len(self._b) >= self.max_samples or len(self._beacons) >= MAX_BATCH_BEACONS

    def add(self, beacon: str, t_mono: float, rssi_dbm: float, tx_1m_dbm: float | None) -> None:
        """One sample heard at monotonic time `t_mono`."""
        index = self._index.get(beacon)
        if index is None:
            index = self._index[beacon] = len(self._beacons)
            self._beacons.append(beacon)
        self._b.append(index)
        self._t.append(t_mono)
        self._rssi.append(rssi_dbm)
        self._tx.append(tx_1m_dbm)

    def add_telemetry(self, telemetry: Telemetry) -> None:
        """The latest telemetry of a beacon in this window (older ones of the window are moot)."""
        if telemetry.beacon not in self._index:
            self._index[telemetry.beacon] = len(self._beacons)
            self._beacons.append(telemetry.beacon)
        self._tlm[telemetry.beacon] = telemetry

    def take(self, sent: float, now_mono: float) -> ReadingBatch | None:
        """Close the window: a batch sent at wall time `sent` (= monotonic `now_mono`), or None
        when nothing was heard."""
        if not self._beacons:
            return None
        dt_ms = tuple(max(0.0, round((now_mono - t) * 1000.0, 1)) for t in self._t)
        batch = ReadingBatch(
            gw=self.gw,
            boot=self.boot,
            seq=self.seq,
            sent=sent,
            beacons=tuple(self._beacons),
            b=tuple(self._b),
            dt_ms=dt_ms,
            rssi=tuple(self._rssi),
            tx=tuple(self._tx),
            tlm=tuple(self._tlm.values()),
        )
        self.seq += 1
        self._index = {}
        self._beacons = []
        self._b = []
        self._t = []
        self._rssi = []
        self._tx = []
        self._tlm = {}
        return batch
