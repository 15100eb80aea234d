"""Zones: which zone each beacon is in, with hysteresis and a minimum dwell, and the events.

A fix near a zone edge wobbles across it every few seconds; reporting each crossing is what
users of room-presence tools complain about most ("flapping"). Three rules stop it:
- hysteresis: a beacon leaves its zone only once its fix is more than `hysteresis_m` outside;
- minimum dwell: a new zone must hold for `min_dwell_s` before the change is reported, and
  longer where the fix is less certain than `min_dwell_accuracy_m` (an excursion of a standing
  cart's fix comes with a wider accuracy_m than a walker's fix in the next aisle);
- settling: after the engine restarts a track elsewhere (it lost lock, or a rival basin won),
  no change is reported for `settle_s`: a jump that comes back within it was no visit.
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
FIRST_FIX_VAGUE_M = 20.0
"""A beacon's first fix with a wider accuracy_m (metres) enters no zone at once (`update`):
a circle longer than the example store's aisles says nothing of the zone, such as the
proximity fix at the one gateway a hub's first tick after a start heard (28-83 m wide: it
entered that gateway's zone, and a promotion rule there fired). Narrower first fixes enter at
once, as they always did: even vague ones are mostly in the right zone, and waiting for the
fixes after them cost the simulated store (C) 56 -> 52 % zone accuracy at 5 m, 53 % at 10 m;
at 20 m no scenario of the README changes (2026-12-08)."""


@dataclass(frozen=True)
class ZoneParams:
    hysteresis_m: float = 0.6
    """About half the typical fix accuracy of a tracked beacon: wobble within it is not a move."""
    min_dwell_s: float = 2.0
    """Two ticks: a single stray fix never changes the zone."""
    min_dwell_accuracy_m: float = 0.0
    """min_dwell_s holds for fixes this accurate (`accuracy_m`); a less certain fix must stay
    in the new zone proportionally longer. 0 turns it off."""
    settle_s: float = 0.0
    """No zone change for this long after a track jumped (`hold`); 0 turns it off."""
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
        self._levels = np.array([z.level for z in plan.site.zones], dtype=np.int64)
        """Zone level by index."""
        self.current = np.full(capacity, UNKNOWN, dtype=np.int64)
        self.since = np.zeros(capacity)
        self.candidate = np.full(capacity, UNKNOWN, dtype=np.int64)
        self.candidate_since = np.zeros(capacity)
        self.dwell_fired = np.zeros(capacity, dtype=np.int64)
        self.held_until = np.full(capacity, -np.inf)
        """No zone change is reported before this time (`hold`)."""
        self.hysteresis_m = np.full(capacity, self.params.hysteresis_m)
        self.min_dwell_s = np.full(capacity, self.params.min_dwell_s)
        """Each beacon's rules: the params', unless its kind sets its own (`set_rules`)."""

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
        self.held_until = np.r_[self.held_until, np.full(grow, -np.inf)]
        self.hysteresis_m = np.r_[self.hysteresis_m, np.full(grow, self.params.hysteresis_m)]
        self.min_dwell_s = np.r_[self.min_dwell_s, np.full(grow, self.params.min_dwell_s)]

    def compact(self, keep: NDArray[np.intp]) -> None:
        """Keep only the beacons `keep` (ascending), renumbered 0, 1, ... in that order
        (Engine.compact), then ensure() the capacity."""
        self.current, self.since = self.current[keep], self.since[keep]
        self.candidate, self.candidate_since = self.candidate[keep], self.candidate_since[keep]
        self.dwell_fired, self.held_until = self.dwell_fired[keep], self.held_until[keep]
        self.hysteresis_m, self.min_dwell_s = self.hysteresis_m[keep], self.min_dwell_s[keep]

    def set_rules(
        self, b: int, hysteresis_m: float | None = None, min_dwell_s: float | None = None
    ) -> None:
        """Beacon `b`'s own hysteresis and minimum dwell (None keeps the params')."""
        if hysteresis_m is not None:
            self.hysteresis_m[b] = hysteresis_m
        if min_dwell_s is not None:
            self.min_dwell_s[b] = min_dwell_s

    def zone_of(self, idx: NDArray[np.intp]) -> list[str | None]:
        cur = self.current[idx]
        none = self._names.shape[0] - 1
        names: list[str | None] = self._names[np.where(cur >= 0, cur, none)].tolist()
        return names

    def forget(self, idx: NDArray[np.intp]) -> None:
        self.current[idx] = UNKNOWN
        self.candidate[idx] = UNKNOWN
        self.dwell_fired[idx] = 0
        self.held_until[idx] = -np.inf

    def hold(self, idx: NDArray[np.intp], t: float) -> None:
        """The tracks of `idx` jumped at t: report no zone change of theirs for settle_s."""
        self.held_until[idx] = t + self.params.settle_s

    def update(
        self,
        idx: NDArray[np.intp],
        t: float,
        level: NDArray[np.int64],
        xy: F64,
        accuracy_m: F64 | None = None,
    ) -> list[ZoneEvent]:
        """Advance the zone state of beacons `idx` with their fixes (and their accuracy_m, for
        min_dwell_accuracy_m); return the events."""
        raw = np.full(idx.shape[0], -1, dtype=np.int64)
        for lv in np.unique(level):
            on = level == lv
            if int(lv) in self.plan.levels:
                raw[on] = self.plan.zone_index(int(lv), xy[on])
        cur = self.current[idx]
        # Hysteresis: still within hysteresis_m of the current zone counts as inside it, on its
        # level (a fix on a mezzanine can pass near a ground-floor zone's edge in the plan).
        leaving = (raw != cur) & (cur >= 0)
        leaving[leaving] = self._levels[cur[leaving]] == level[leaving]
        for z in np.unique(cur[leaving]):
            rows = np.flatnonzero(leaving & (cur == z))
            polygon = self.plan.site.zones[int(z)].polygon
            near = distance_to_polygon_m(xy[rows], polygon) <= self.hysteresis_m[idx[rows]]
            raw[rows[near]] = z
        events: list[ZoneEvent] = []
        ids = self.plan.zone_ids
        fresh = cur == UNKNOWN
        vague = np.zeros(idx.shape[0], dtype=bool)
        if accuracy_m is not None and self.params.min_dwell_accuracy_m > 0:
            vague = fresh & (accuracy_m > max(FIRST_FIX_VAGUE_M, self.params.min_dwell_accuracy_m))
        for row in np.flatnonzero(fresh):
            b = int(idx[row])
            if vague[row]:
                # A vague first fix (FIRST_FIX_VAGUE_M) is a candidate like any change, held for
                # the dwell its accuracy asks: it entered the gateway's zone at once, and a
                # promotion rule there fired.
                self._enter(b, -1, t)
                self.candidate[b] = raw[row]
                continue
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
            dwell = float(self.min_dwell_s[b])
            if accuracy_m is not None and self.params.min_dwell_accuracy_m > 0:
                dwell *= max(1.0, float(accuracy_m[row]) / self.params.min_dwell_accuracy_m)
            if t - self.candidate_since[b] >= dwell and t >= self.held_until[b]:
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
