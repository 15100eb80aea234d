"""Samples -> columnar readings batches (DESIGN.md), one per window, with boot id and sequence.

The batcher is pure: the caller passes monotonic times and the wall-clock send time, so tests
and the benchmark drive it without a clock. Each sample keeps its own offset before the batch's
send time (`dt_ms`), so batching never blurs when a reading was heard.
"""

from __future__ import annotations

import json
import secrets
import sys
from typing import Any, Final

from beacon_hub.wire import (
    MAX_BATCH_BEACONS,
    MAX_BATCH_BYTES,
    MAX_BATCH_SAMPLES,
    MAX_DT_MS,
    WIRE_VERSION,
    ReadingBatch,
    Telemetry,
)

__all__ = ["BATCH_BYTES_MARGIN", "BOOT_ID_BYTES", "Batcher", "new_boot_id"]

BOOT_ID_BYTES: Final = 8
"""16 hex digits: wire.py accepts 4-32; 64 random bits make a collision between two boots of
one gateway negligible."""

BATCH_BYTES_MARGIN: Final = 16_384
"""Bytes kept free under wire.MAX_BATCH_BYTES: `full` turns true once the size bound reaches
MAX_BATCH_BYTES minus this. One `add` or `add_telemetry` raises the bound by a few hundred bytes
at most (a new id of at most 56 characters with its sample, or a TLM entry), so a caller that
takes the batch as soon as `full` is true (Pipeline checks after every sample) stays under the
hub's limit with room to spare."""

_DT_MS_CHARS: Final = len(f"{MAX_DT_MS:.1f}")
"""`dt_ms` is rounded to 0.1 ms and at most MAX_DT_MS (the hub refuses a batch with more), so
it is at most `3600000.0`: 9 characters."""
_NULL_CHARS: Final = len("null")
_COLUMN_COMMAS: Final = 4
"""A sample adds one value, and at most one comma, to each of b, dt_ms, rssi and tx."""


def new_boot_id() -> str:
    return secrets.token_hex(BOOT_ID_BYTES)


def _tlm_chars(telemetry: Telemetry, index: int) -> int:
    """The JSON length of one `tlm` entry, as wire.encode_batch writes it."""
    entry: dict[str, Any] = {"b": index}
    for key in ("battery_mv", "temperature_c", "adv_count", "uptime_s"):
        value = getattr(telemetry, key)
        if value is not None:
            entry[key] = value
    return len(json.dumps(entry, separators=(",", ":")))


class Batcher:
    """Collects samples of the current window; `take` closes it into a `ReadingBatch`.

    `full` turns true before a batch would exceed the wire limits (samples, beacons, and the
    encoded size, kept as a running upper bound `size_bound`); the caller then takes the batch
    early, so no sample is ever dropped here.
    """

    __slots__ = (
        "_b",
        "_beacons",
        "_empty_bytes",
        "_index",
        "_rssi",
        "_t",
        "_tlm",
        "_tx",
        "boot",
        "gw",
        "max_bytes",
        "max_samples",
        "seq",
        "size_bound",
    )

    def __init__(
        self, gw: str, boot: str, *, max_samples: int = MAX_BATCH_SAMPLES, first_seq: int = 0
    ) -> None:
        self.gw = gw
        self.boot = boot
        self.seq = first_seq
        self.max_samples = min(max_samples, MAX_BATCH_SAMPLES)
        self.max_bytes = MAX_BATCH_BYTES - BATCH_BYTES_MARGIN
        empty = {
            "v": WIRE_VERSION,
            "gw": gw,
            "boot": boot,
            "seq": 2**63 - 1,
            "sent": -sys.float_info.max,
            **{key: [] for key in ("beacons", "b", "dt_ms", "rssi", "tx", "tlm")},
        }
        # A batch with empty columns, its seq and sent as long as they can be written.
        self._empty_bytes = len(json.dumps(empty, separators=(",", ":")))
        # At least the length of this batch as wire.encode_batch writes it, kept as samples,
        # beacons and telemetry are added (every column counted, tx even when it is all null).
        self.size_bound = self._empty_bytes
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
        return (
            len(self._b) >= self.max_samples
            or len(self._beacons) >= MAX_BATCH_BEACONS
            or self.size_bound >= self.max_bytes
        )

    def _beacon_index(self, beacon: str) -> int:
        index = self._index.get(beacon)
        if index is None:
            index = self._index[beacon] = len(self._beacons)
            self._beacons.append(beacon)
            self.size_bound += len(json.dumps(beacon)) + 1  # and its comma
        return index

    def add(self, beacon: str, t_mono: float, rssi_dbm: float, tx_1m_dbm: float | None) -> None:
        """One sample heard at monotonic time `t_mono`."""
        index = self._beacon_index(beacon)
        self._b.append(index)
        self._t.append(t_mono)
        self._rssi.append(rssi_dbm)
        self._tx.append(tx_1m_dbm)
        self.size_bound += (
            len(str(index))
            + _DT_MS_CHARS
            + len(repr(rssi_dbm))
            + (_NULL_CHARS if tx_1m_dbm is None else len(repr(tx_1m_dbm)))
            + _COLUMN_COMMAS
        )

    def add_telemetry(self, telemetry: Telemetry) -> None:
        """The latest telemetry of a beacon in this window (older ones of the window are moot)."""
        index = self._beacon_index(telemetry.beacon)
        older = self._tlm.get(telemetry.beacon)
        if older is not None:
            self.size_bound -= _tlm_chars(older, index) + 1
        self._tlm[telemetry.beacon] = telemetry
        self.size_bound += _tlm_chars(telemetry, index) + 1  # and its comma

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
        self.size_bound = self._empty_bytes
        return batch
