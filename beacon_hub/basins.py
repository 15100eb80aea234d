"""Rival basins: evidence, over ticks, that a track sits in the wrong mode of the map likelihood.

A window's map likelihood is often multimodal, and the track's prediction weighs the local grid
(solve_grid's prior): a track that starts in the wrong basin stays there, because no single
window is clear enough to break it out. Simulated warehouse (F), calibrated: 16 % of parked
pallets a median 5 m or more off for the whole run, most of them from their first fix.

So a few tracks a tick, in turn, are searched wide; the most likely point, when it is
RIVAL_MIN_M or more from the track, becomes the track's rival. Every tick after, the rival gains
the window's best log-likelihood near it minus the best near the track's prediction
(RIVAL_LOCAL_M), the sum decayed by RIVAL_DECAY; when the rival leads by RIVAL_NATS the track
moves there. Evidence adds up over
windows where none decides alone. The engine does the searching and the moving (Engine._rivals);
this holds the per-beacon state and the rules.
"""

from __future__ import annotations

import numpy as np
from numpy.typing import NDArray

__all__ = [
    "RIVAL_DECAY",
    "RIVAL_LOCAL_M",
    "RIVAL_MIN_M",
    "RIVAL_NATS",
    "RIVAL_NATS_PER_GATEWAY",
    "RIVAL_SAME_M",
    "RivalBasins",
]

F64 = NDArray[np.float64]
I64 = NDArray[np.int64]

RIVAL_MIN_M = 3.0
"""A mode nearer than this to the track is the track's own basin: its local grid (6 m) covers it,
and a pallet bay is 2.7 m wide."""
RIVAL_SAME_M = 2.0
"""A new mode this close to the held rival is the same basin: its evidence carries on."""
RIVAL_DECAY = 0.9
"""Per tick: evidence fades over ~10 ticks, so a rival has to keep winning, not win once."""
RIVAL_NATS = 10.0
"""Log-likelihood lead at which the track moves to its rival. Consecutive 2 s windows share half
their samples, so the lead counts evidence about twice. Simulated warehouse (F), 180 s of 690
beacons: 6 / 10 / 15 nats, 701 / 368 / 202 moves, parked pallets in the right or a neighbouring
bay 79.7 / 79.0 / 77.6 %: more moves find more pallets and also jump more of them off a right
place (measured with the truth at the old 15 nats: of 772 moves, 393 ended over a metre nearer,
302 over a metre farther)."""
RIVAL_NATS_PER_GATEWAY = 1.0
"""The threshold grows with the gateways in the likelihood, past RIVAL_NATS: the lead sums a term
per gateway, and where the map mispredicts each adds its own error, so with twice the gateways
a wrong basin gains about twice as much by chance. Tuned where pallets are heard by 4-6
gateways, 10 nats moved standing carts in the simulated store, with a calibrated map and all 20
gateways, to a rival and back (600 s recording, 2026-12-05): flaps per beacon-hour standing at a
flat 10 / 15 / 20 nats 1.38 / 0.88 / 0.63, p90 2.27 / 2.30 / 2.30 m; without the search 0.13 but
p90 2.59 m. A flat 20 cost the warehouse (F) half a point of right or neighbouring bay."""
RIVAL_LOCAL_M = 1.5
"""The rival and the track are each scored by the best point this near them (candidates 0.5 m
apart). Scoring the points themselves favoured the rival, picked at a window's peak, against the
track's estimate, a mean off its basin's peak: (F) moved 777 times in 180 s (22 moves per
pallet-hour, up to 12 for one pallet), against 368 (up to 6) this way at 10 nats."""


class RivalBasins:
    """Per beacon: its rival point (NaN: none) and the rival's lead in nats."""

    def __init__(self, checks_per_tick: int) -> None:
        self.checks_per_tick = checks_per_tick
        self.xy = np.zeros((0, 2))
        self.nats = np.zeros(0)
        self.ticks = 0
        self.moves = 0
        """Tracks moved to their rival so far (a health figure; replay prints it)."""

    def ensure(self, capacity: int) -> None:
        grow = capacity - self.nats.shape[0]
        if grow > 0:
            self.xy = np.r_[self.xy, np.full((grow, 2), np.nan)]
            self.nats = np.r_[self.nats, np.zeros(grow)]

    def forget(self, beacons: I64) -> None:
        """These beacons' tracks start afresh: what was said against the old ones is moot."""
        self.xy[beacons] = np.nan

    def held(self, beacons: I64) -> NDArray[np.bool_]:
        held: NDArray[np.bool_] = np.isfinite(self.xy[beacons, 0])
        return held

    def weigh(self, beacons: I64, gain_nats: F64) -> None:
        """This tick's log-likelihood at the rival minus that at the track, for beacons that
        hold a rival."""
        self.nats[beacons] = self.nats[beacons] * RIVAL_DECAY + gain_nats

    def due(self, beacons: I64) -> NDArray[np.bool_]:
        """Which of this tick's tracked beacons get searched: each in turn, checks_per_tick of
        them a tick (round robin on the beacon index)."""
        self.ticks += 1
        if self.checks_per_tick == 0 or beacons.shape[0] == 0:
            return np.zeros(beacons.shape[0], dtype=bool)
        period = -(-beacons.shape[0] // self.checks_per_tick)
        due: NDArray[np.bool_] = beacons % period == self.ticks % period
        return due

    def offer(self, beacons: I64, mode: F64, track_xy: F64) -> None:
        """The wide search's best point for each beacon: a rival when far from the track (the
        same one, keeping its lead, when near the rival held), none when the track's own basin
        is the best."""
        far = np.hypot(*(mode - track_xy).T) >= RIVAL_MIN_M
        old = self.xy[beacons]
        same = np.isfinite(old[:, 0]) & (np.hypot(*(mode - old).T) <= RIVAL_SAME_M)
        new = far & ~same
        self.xy[beacons[new]] = mode[new]
        self.nats[beacons[new]] = 0.0
        self.xy[beacons[~far]] = np.nan

    def winners(self, beacons: I64, gateways: I64) -> tuple[NDArray[np.bool_], F64]:
        """Which beacons' rivals lead by RIVAL_NATS, or RIVAL_NATS_PER_GATEWAY times the
        `gateways` their likelihood counts where that is more, and their points; taken
        (cleared)."""
        threshold = np.maximum(RIVAL_NATS, RIVAL_NATS_PER_GATEWAY * gateways)
        win = self.held(beacons) & (self.nats[beacons] >= threshold)
        points = self.xy[beacons[win]].copy()
        self.xy[beacons[win]] = np.nan
        self.moves += int(win.sum())
        return win, points
