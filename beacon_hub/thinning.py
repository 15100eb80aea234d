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


class LastFixes:
    """The last fix emitted per beacon (stored here, published for outputs.py), in arrays
    indexed by a slot per beacon: a tick tests 10,000 beacons against them at once."""

    def __init__(self) -> None:
        self._slot: dict[str, int] = {}
        self.t = np.full(INITIAL_SLOTS, np.nan)
        """When the beacon's fix was last emitted; NaN: never, or forgotten since."""
        self.x = np.zeros(INITIAL_SLOTS)
        self.y = np.zeros(INITIAL_SLOTS)
        self.level = np.zeros(INITIAL_SLOTS, dtype=np.int64)
        self.zone = np.full(INITIAL_SLOTS, None, dtype=object)

    def slots(self, beacons: Sequence[str]) -> NDArray[np.intp]:
        """Each beacon's slot; a new beacon gets the next one."""
        slot = self._slot
        slots = np.fromiter(
            (slot.setdefault(b, len(slot)) for b in beacons), dtype=np.intp, count=len(beacons)
        )
        size = self.t.shape[0]
        if len(slot) > size:
            grow = max(len(slot), 2 * size) - size
            self.t = np.r_[self.t, np.full(grow, np.nan)]
            self.x = np.r_[self.x, np.zeros(grow)]
            self.y = np.r_[self.y, np.zeros(grow)]
            self.level = np.r_[self.level, np.zeros(grow, dtype=np.int64)]
            self.zone = np.r_[self.zone, np.full(grow, None, dtype=object)]
        return slots

    def forget(self, beacon: str) -> None:
        """The beacon's next fix counts as its first."""
        k = self._slot.get(beacon)
        if k is not None:
            self.t[k] = np.nan


class FixThinner:
    """Remembers each beacon's last stored fix and picks a tick's fixes worth storing."""

    def __init__(self, deadband_m: float, heartbeat_s: float) -> None:
        self.deadband_m = deadband_m
        self.heartbeat_s = heartbeat_s
        self.last = LastFixes()

    def keep(self, table: FixTable) -> NDArray[np.intp]:
        """Indices of the fixes of `table` to store (all of them when disabled), remembered
        as each beacon's last stored fix."""
        n = len(table)
        if self.deadband_m <= 0 or n == 0:
            return np.arange(n, dtype=np.intp)
        last = self.last
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
        return rows
