"""Which fixes the stores keep: a historian's deadband between the engine and SQLite/InfluxDB.

    rows = thinner.keep(table)          # the fixes worth storing this tick
    record_table = table.select(rows)

A parked pallet gets a fix every tick, 86,400 a day, nearly all the same place: at 10,000 beacons
SQLite grows by about 1 GB an hour and the writer thread spends more of the hub's time than the
engine (docs/hub.md, Performance). A process historian (OSIsoft PI's exception deviation,
Home Assistant's recorder) stores a value when it changed by more than a deadband or when a
heartbeat is due. Here a beacon's fix is stored when it is its first, when it moved
`deadband_m` or more from the beacon's last *stored* fix, when its zone or level changed, or
when `heartbeat_s` passed since the last stored one. The history then holds every move beyond
the deadband and every zone change, exactly as the engine saw them; between two stored fixes
the beacon stood within `deadband_m` of the first. `accuracy_m` is not a criterion: it changes
with the set of gateways heard from tick to tick, and storing on each change kept twice the rows
of a parked warehouse (measured on 180 s of the simulated warehouse, docs/hub.md).

A `deadband_m` of 0 keeps every fix (the default). MQTT outputs, the dashboard and occupancy
always see every fix; only the stores are thinned, and what was left out is counted
(`beacon_hub_store_thinned_fixes_total`).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from numpy.typing import NDArray

from beacon_hub.engine import FixTable

__all__ = ["FixThinner", "LastFixes"]

INITIAL_SLOTS = 256
"""Beacons remembered before the arrays first grow (they double as needed)."""
COMPACT_SHARE = 0.5
"""Forgotten beacons' slots are reclaimed once they are this share of the slots in use (and at
least COMPACT_MIN_SLOTS), as the engine does (engine.COMPACT_SHARE): each compaction copies the
remembered beacons once, so its cost per forgotten beacon is constant, and the arrays stay
within about twice what the remembered beacons need."""
COMPACT_MIN_SLOTS = INITIAL_SLOTS
"""... and never fewer than the smallest capacity: they are not worth a copy."""


class LastFixes:
    """The last fix emitted per beacon (stored here, published for outputs.py), in arrays
    indexed by a slot per beacon: a tick tests 10,000 beacons against them at once.

    A slot whose `t` is NaN holds nothing: every user treats the beacon's next fix as its first
    (NaN compares False), exactly as for a beacon never seen. `forget` and `expire` set it; the
    next `slots` call reclaims such slots once they are COMPACT_SHARE of those in use (the
    others keep their order and state), so beacons that come and go (pallets that left,
    shoppers' tags, a dongle broadcasting random ids) do not grow it for ever. Slots returned
    by `slots` are valid until its next call.
    """

    def __init__(self) -> None:
        self._slot: dict[str, int] = {}
        """beacon -> slot; slots are numbered in the order of this dict (first seen first)."""
        self.t = np.full(INITIAL_SLOTS, np.nan)
        """When the beacon's fix was last emitted; NaN: never, or forgotten since."""
        self.x = np.zeros(INITIAL_SLOTS)
        self.y = np.zeros(INITIAL_SLOTS)
        self.level = np.zeros(INITIAL_SLOTS, dtype=np.int64)
        self.zone = np.full(INITIAL_SLOTS, None, dtype=object)

    def __len__(self) -> int:
        """Slots in use (remembered beacons, and forgotten ones not yet reclaimed)."""
        return len(self._slot)

    def slots(self, beacons: Sequence[str]) -> NDArray[np.intp]:
        """Each beacon's slot; a new beacon gets the next one."""
        self._reclaim()
        slot = self._slot
        slots = np.fromiter(
            (slot.setdefault(b, len(slot)) for b in beacons), dtype=np.intp, count=len(beacons)
        )
        if len(slot) > self.t.shape[0]:
            self._resize(np.arange(self.t.shape[0]), max(len(slot), 2 * self.t.shape[0]))
        return slots

    def forget(self, beacon: str) -> None:
        """The beacon's next fix counts as its first."""
        k = self._slot.get(beacon)
        if k is not None:
            self.t[k] = np.nan

    def expire(self, t: float, after_s: float) -> None:
        """Forget every beacon whose fix was last emitted `after_s` or more before `t`. For a
        user whose next fix at `t` or later is emitted anyway once `t - last.t < after_s` fails
        (a heartbeat, a refresh), this changes nothing it emits: forgotten, the fix is a
        first one and emitted all the same."""
        n = len(self._slot)
        last = self.t[:n]
        last[t - last >= after_s] = np.nan  # NaN compares False: already forgotten

    def _reclaim(self) -> None:
        """Drop the forgotten slots once they are COMPACT_SHARE of those in use."""
        n = len(self._slot)
        held = np.flatnonzero(~np.isnan(self.t[:n]))
        kept = held.shape[0]
        if n - kept < max(COMPACT_MIN_SLOTS, COMPACT_SHARE * n):
            return
        ids = list(self._slot)
        self._slot = {ids[k]: i for i, k in enumerate(held.tolist())}
        # room for as many again: a steady churn runs at one capacity
        self._resize(held, kept + max(kept, COMPACT_MIN_SLOTS))

    def _resize(self, rows: NDArray[np.intp], capacity: int) -> None:
        """Arrays of `capacity` slots holding `rows` of the old ones first, then empty slots."""
        m = rows.shape[0]
        t, x, y = np.full(capacity, np.nan), np.zeros(capacity), np.zeros(capacity)
        level, zone = np.zeros(capacity, dtype=np.int64), np.full(capacity, None, dtype=object)
        t[:m], x[:m], y[:m] = self.t[rows], self.x[rows], self.y[rows]
        level[:m], zone[:m] = self.level[rows], self.zone[rows]
        self.t, self.x, self.y, self.level, self.zone = t, x, y, level, zone


class FixThinner:
    """Remembers each beacon's last stored fix and picks a tick's fixes worth storing.

    It remembers only the beacons stored within the last `heartbeat_s` (at most a day,
    hubconfig): an older one's next fix is due for the heartbeat anyway, so forgetting it
    (LastFixes.expire) stores exactly what remembering it would. The engine's ticks come in
    time order, which this relies on."""

    def __init__(self, deadband_m: float, heartbeat_s: float) -> None:
        self.deadband_m = deadband_m
        self.heartbeat_s = heartbeat_s
        self.last = LastFixes()

    def keep(self, table: FixTable) -> NDArray[np.intp]:
        """Indices of the fixes of `table` to store (all of them when disabled), remembered
        as each beacon's last stored fix."""
        n = len(table)
        if self.deadband_m <= 0:
            return np.arange(n, dtype=np.intp)
        last = self.last
        if n == 0:
            last.expire(table.t, self.heartbeat_s)
            return np.arange(0, dtype=np.intp)
        slots = last.slots(table.beacons)
        zones = np.empty(n, dtype=object)
        zones[:] = table.zones
        # NaN last.t (never stored) compares False, so the first fix is always kept
        quiet = (
            (table.t - last.t[slots] < self.heartbeat_s)
            & (last.zone[slots] == zones)
            & (last.level[slots] == table.level)
            & (np.hypot(table.x - last.x[slots], table.y - last.y[slots]) < self.deadband_m)
        )
        rows = np.flatnonzero(~quiet)
        k = slots[rows]
        last.t[k] = table.t
        last.x[k] = table.x[rows]
        last.y[k] = table.y[rows]
        last.level[k] = table.level[rows]
        last.zone[k] = zones[rows]
        last.expire(table.t, self.heartbeat_s)
        return rows
