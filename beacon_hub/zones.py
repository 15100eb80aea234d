"""Zones: which zone each beacon is in, with hysteresis and a minimum dwell, and the events.

A fix near a zone edge wobbles across it every few seconds; reporting each crossing is what
users of room-presence tools complain about most ("flapping"). Two rules stop it:
- hysteresis: a beacon leaves its zone only once its fix is more than `hysteresis_m` outside;
- minimum dwell: a new zone must hold for `min_dwell_s` before the change is reported.
Events: zone_enter, zone_exit (with the time spent), dwell (once per threshold crossed).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from numpy.typing import NDArray

from beacon_hub.floorplan import FloorPlan, distance_to_polygon_m

__all__ = ["ZoneEvent", "ZoneParams", "ZoneTracker"]

F64 = NDArray[np.float64]
UNKNOWN = -2
"""Zone state of a beacon not seen yet; -1 is 'in no zone'."""


@dataclass(frozen=True)
class ZoneParams:
    hysteresis_m: float = 0.6
    """About half the typical fix accuracy of a tracked beacon: wobble within it is not a move."""
    min_dwell_s: float = 2.0
    """Two ticks: a single stray fix never changes the zone."""
    dwell_events_s: tuple[float, ...] = (10.0, 60.0, 300.0)
    """Times in a zone at which a dwell event fires (a promotion rule picks its own minimum)."""


@dataclass(frozen=True)
class ZoneEvent:
    beacon: int
    type: str
    zone: str
    t: float
    data: dict[str, float] = field(default_factory=dict)


class ZoneTracker:
    def __init__(
        self, plan: FloorPlan, params: ZoneParams | None = None, capacity: int = 256
    ) -> None:
        self.plan = plan
        self.params = params or ZoneParams()
        self._names = np.array([*plan.zone_ids, None], dtype=object)
        """Zone id by index; the last entry, None, for no zone."""
        self.current = np.full(capacity, UNKNOWN, dtype=np.int64)
        self.since = np.zeros(capacity)
        self.candidate = np.full(capacity, UNKNOWN, dtype=np.int64)
        self.candidate_since = np.zeros(capacity)
        self.dwell_fired = np.zeros(capacity, dtype=np.int64)

    def ensure(self, capacity: int) -> None:
        old = self.current.shape[0]
        if capacity <= old:
            return
        grow = max(capacity, 2 * old) - old
        self.current = np.r_[self.current, np.full(grow, UNKNOWN, dtype=np.int64)]
        self.since = np.r_[self.since, np.zeros(grow)]
        self.candidate = np.r_[self.candidate, np.full(grow, UNKNOWN, dtype=np.int64)]
        self.candidate_since = np.r_[self.candidate_since, np.zeros(grow)]
        self.dwell_fired = np.r_[self.dwell_fired, np.zeros(grow, dtype=np.int64)]

    def zone_of(self, idx: NDArray[np.intp]) -> list[str | None]:
        cur = self.current[idx]
        none = self._names.shape[0] - 1
        names: list[str | None] = self._names[np.where(cur >= 0, cur, none)].tolist()
        return names

    def forget(self, idx: NDArray[np.intp]) -> None:
        self.current[idx] = UNKNOWN
        self.candidate[idx] = UNKNOWN
        self.dwell_fired[idx] = 0

    def update(
        self, idx: NDArray[np.intp], t: float, level: NDArray[np.int64], xy: F64
    ) -> list[ZoneEvent]:
        """Advance the zone state of beacons `idx` with their fixes; return the events."""
        raw = np.full(idx.shape[0], -1, dtype=np.int64)
        for lv in np.unique(level):
            on = level == lv
            if int(lv) in self.plan.levels:
                raw[on] = self.plan.zone_index(int(lv), xy[on])
        cur = self.current[idx]
        # Hysteresis: still within hysteresis_m of the current zone counts as inside it.
        leaving = (raw != cur) & (cur >= 0)
        for z in np.unique(cur[leaving]):
            rows = np.flatnonzero(leaving & (cur == z))
            polygon = self.plan.site.zones[int(z)].polygon
            near = distance_to_polygon_m(xy[rows], polygon) <= self.params.hysteresis_m
            raw[rows[near]] = z
        events: list[ZoneEvent] = []
        ids = self.plan.zone_ids
        fresh = cur == UNKNOWN
        for row in np.flatnonzero(fresh):
            b = int(idx[row])
            self._enter(b, int(raw[row]), t)
            if raw[row] >= 0:
                events.append(ZoneEvent(b, "zone_enter", ids[raw[row]], t))
        changed = ~fresh & (raw != cur)
        staying = ~fresh & ~changed
        self.candidate[idx[staying]] = cur[staying]
        for row in np.flatnonzero(changed):
            b = int(idx[row])
            if self.candidate[b] != raw[row]:
                self.candidate[b] = raw[row]
                self.candidate_since[b] = t
            if t - self.candidate_since[b] >= self.params.min_dwell_s:
                old = int(self.current[b])
                if old >= 0:
                    events.append(
                        ZoneEvent(b, "zone_exit", ids[old], t, {"dwell_s": t - self.since[b]})
                    )
                self._enter(b, int(raw[row]), t)
                if raw[row] >= 0:
                    events.append(ZoneEvent(b, "zone_enter", ids[raw[row]], t))
        thresholds = np.asarray((*self.params.dwell_events_s, np.inf))
        inside = idx[self.current[idx] >= 0]
        stay = t - self.since[inside]
        fire = stay >= thresholds[self.dwell_fired[inside]]
        for b, s in zip(inside[fire], stay[fire], strict=True):
            self.dwell_fired[b] += 1
            events.append(
                ZoneEvent(int(b), "dwell", ids[self.current[b]], t, {"dwell_s": float(s)})
            )
        return events

    def _enter(self, b: int, zone: int, t: float) -> None:
        self.current[b] = zone
        self.candidate[b] = zone
        self.since[b] = t
        self.candidate_since[b] = t
        self.dwell_fired[b] = 0
