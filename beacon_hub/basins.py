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

A pallet that stands still gets more: its windows' whole likelihood surfaces, summed over a disc
around where it stood still (ParkedEvidence), so that evidence never fades while it stands, and
no single window's mode has to be found first (Engine._parked_moves).
"""

from __future__ import annotations

import numpy as np
from numpy.typing import NDArray

from beacon_hub.multilateration import grid_offsets

__all__ = [
    "PARKED_BEGIN_S",
    "PARKED_END_NATS",
    "PARKED_END_STILL",
    "PARKED_END_TICKS",
    "PARKED_EVERY_TICKS",
    "PARKED_MIN_WINDOWS",
    "PARKED_NATS",
    "PARKED_RECENT_DECAY",
    "PARKED_STEP_M",
    "RIVAL_DECAY",
    "RIVAL_LOCAL_M",
    "RIVAL_MIN_M",
    "RIVAL_NATS",
    "RIVAL_NATS_PER_GATEWAY",
    "RIVAL_SAME_M",
    "ParkedEvidence",
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

    def compact(self, keep: I64) -> None:
        """Keep only the beacons `keep` (ascending), renumbered 0, 1, ... in that order
        (Engine.compact), then ensure() the capacity."""
        self.xy, self.nats = self.xy[keep], self.nats[keep]

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

    def due(self, turns: I64) -> NDArray[np.bool_]:
        """Which of this tick's tracked beacons get searched: each in turn, checks_per_tick of
        them a tick (round robin on `turns`, a number per beacon that no compaction changes:
        Engine._serial)."""
        self.ticks += 1
        if self.checks_per_tick == 0 or turns.shape[0] == 0:
            return np.zeros(turns.shape[0], dtype=bool)
        period = -(-turns.shape[0] // self.checks_per_tick)
        due: NDArray[np.bool_] = turns % period == self.ticks % period
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


PARKED_STEP_M = 0.5
"""Candidate spacing of a still pallet's summed likelihood: a bay is 1.2 m deep; the local grid
(0.25 m) refines the spot once the track is there. 1 m lattices, not aligned with the bays,
put the sum's best in the right or a neighbouring bay 1.2 points less often on (F)."""
PARKED_EVERY_TICKS = 2
"""A still pallet's window is added every second tick: consecutive 2 s windows share half their
samples, so each sample counts about once, at half the cost."""
PARKED_BEGIN_S = 20.0
"""A pallet's spell begins once its track has been still this long, centred where the track is
then. Offline on (F), centred on the track's first fix instead, 4 % of parked-pallet fixes had
their spot more than 14 m from the centre (the median 3.2 m), and the sum's best was right or
a neighbouring bay for 92 % of them against 96 % with the spot in the disc."""
PARKED_MIN_WINDOWS = 5
"""Windows summed before the sum may move a track."""
PARKED_NATS = 10.0
"""Summed lead of the best candidate over the best near the track at which the track moves."""
PARKED_END_STILL = 0.1
PARKED_END_TICKS = 4
"""The spell ends after this many ticks in a row with the track's still-mode probability below
PARKED_END_STILL: the IMM is sure the pallet is being carried. One such tick is common for a
standing pallet whose fix jumps: in 180 s of (F), 222 of 622 still spells had one, 44 three in
a row, 15 four (offline); ending at the first cost 1 point of right or neighbouring bay."""
PARKED_END_NATS = 10.0
"""The spell ends when the recent windows (PARKED_RECENT_DECAY) fit some candidate better than
the summed best by this much: the pallet has been carried off. On the simulated warehouse (F),
pallets standing still all along never came closer than 8 nats of it (99.9th percentile,
offline, every second tick after 10). Together with PARKED_END_STILL: a pallet carried a few
metres within the disc and set down fits its new place only a few nats a window better, and a
slower recent sum that let it cross 15 nats also let the old spot pull its track back.
"""
PARKED_RECENT_DECAY = 0.7
"""Per added window: the recent sum remembers about the last three. A track moves to the
summed best only where the recent windows fit it at least as well as the track's own place,
and the spell ends when they fit elsewhere much better (PARKED_END_NATS)."""


class ParkedEvidence:
    """Per still pallet: the map log-likelihood of its windows summed over a fixed disc of
    candidates around where its still spell began.

    A window's likelihood has rival modes a few bays apart, and a track that starts in the wrong
    one stays there; the rival basins (above) weigh a single far mode against the track, with
    evidence that fades over ~10 ticks. A pallet that stands does not move between windows, so
    the windows' log-likelihoods add up at every candidate, and their sum picks the spot that
    fits all of them (most often its own bay even where most single windows prefer another).
    The track moves to the sum's best when that leads the best near the track by PARKED_NATS
    and the recent windows do not say otherwise.

    Simulated warehouse (F), 180 s (2026-12-06): parked pallets in the right or a neighbouring
    bay 92.1 -> 95.3 % (right bay 74.4 -> 76.7 %), parked p90 2.87 -> 1.99 m; calibrated on
    two days 93.5 -> 96.8 %; 480 s at 240 moves an hour (G): pallet_moved finds the same 21
    departures with fewer false events (7 -> 5). Measured offline first, the argmax of the sum
    over each whole still spell with the disc around the true spot: 96 %, against 76 % for one
    window's argmax. Cost: the replay of (F) 62 -> 75 s; 10,000 standing pallets with a map
    (bench/engine_tick.py --map) 4.7 -> 7.6 s a tick; memory 6 bytes a candidate, 11 KB a
    still pallet at the default 12 m.
    """

    def __init__(self, radius_m: float) -> None:
        self.offsets = grid_offsets(PARKED_STEP_M, radius_m)
        self._offsets_sq = (self.offsets**2).sum(axis=1)
        self.centre = np.zeros((0, 2))
        self.level = np.zeros(0, dtype=np.int64)
        self.windows = np.zeros(0, dtype=np.int64)
        self.moving_ticks = np.zeros(0, dtype=np.int64)
        self.best = np.zeros(0, dtype=np.int64)
        """Each spell's best candidate, argmax of its sums: changes only when a window is added."""
        self.row = np.zeros(0, dtype=np.int64)
        """Each beacon's row of `total` and `recent` while its spell lasts, -1 otherwise. The sums
        (6 bytes a candidate, 11 KB a spell at the default 12 m) are held per spell, not per
        beacon: every beacon heard has an engine slot, and a site hearing tags that rotate their
        ids holds tens of thousands of slots within forget_after_s, few of them still pallets."""
        self.total = np.zeros((0, self.offsets.shape[0]), dtype=np.float32)
        self.recent = np.zeros((0, self.offsets.shape[0]), dtype=np.float16)
        self._free = np.zeros(0, dtype=np.int64)
        """Rows of `total` and `recent` that no spell holds."""
        self.ticks = 0
        self.moves = 0
        """Tracks moved to their summed best so far (a health figure, as RivalBasins.moves)."""
        self.ended = 0
        """Spells ended by their recent windows (carried off, as far as the data tell)."""

    def ensure(self, capacity: int) -> None:
        grow = capacity - self.windows.shape[0]
        if grow > 0:
            self.centre = np.r_[self.centre, np.full((grow, 2), np.nan)]
            self.level = np.r_[self.level, np.zeros(grow, dtype=np.int64)]
            self.windows = np.r_[self.windows, np.zeros(grow, dtype=np.int64)]
            self.moving_ticks = np.r_[self.moving_ticks, np.zeros(grow, dtype=np.int64)]
            self.best = np.r_[self.best, np.zeros(grow, dtype=np.int64)]
            self.row = np.r_[self.row, np.full(grow, -1, dtype=np.int64)]

    def compact(self, keep: I64) -> None:
        """Keep only the beacons `keep` (ascending), renumbered 0, 1, ... in that order
        (Engine.compact), then ensure() the capacity. The sums shrink to the spells kept."""
        self.centre, self.level = self.centre[keep], self.level[keep]
        self.windows, self.moving_ticks = self.windows[keep], self.moving_ticks[keep]
        self.best, self.row = self.best[keep], self.row[keep]
        held = np.flatnonzero(self.row >= 0)
        self.total, self.recent = self.total[self.row[held]], self.recent[self.row[held]]
        self.row[held] = np.arange(held.shape[0])
        self._free = np.zeros(0, dtype=np.int64)

    @property
    def spells(self) -> int:
        """Spells holding sums now."""
        return int(self.total.shape[0] - self._free.shape[0])

    def sums(self, beacons: I64) -> NDArray[np.float32]:
        """The summed log-likelihoods of these beacons' spells (each must hold one)."""
        summed: NDArray[np.float32] = self.total[self.row[beacons]]
        return summed

    def holds(self, beacons: I64) -> NDArray[np.bool_]:
        held: NDArray[np.bool_] = np.isfinite(self.centre[beacons, 0])
        return held

    def end(self, beacons: I64) -> None:
        beacons = np.unique(beacons)
        rows = self.row[beacons]
        self._free = np.r_[self._free, rows[rows >= 0]]
        self.row[beacons] = -1
        self.centre[beacons] = np.nan

    def carried(self, beacons: I64, still: F64) -> None:
        """The tracks' still-mode probabilities this tick: spells end after PARKED_END_TICKS
        in a row below PARKED_END_STILL."""
        low = still < PARKED_END_STILL
        self.moving_ticks[beacons] = np.where(low, self.moving_ticks[beacons] + 1, 0)
        self.end(beacons[self.moving_ticks[beacons] >= PARKED_END_TICKS])

    def begin(self, beacons: I64, xy: F64, level: I64) -> None:
        new = np.unique(beacons[self.row[beacons] < 0])
        short = new.shape[0] - self._free.shape[0]
        if short > 0:
            # grown by at least its size, so a site filling up copies the sums O(log n) times
            size = self.total.shape[0]
            grow = max(short, size)
            shape = (grow, self.offsets.shape[0])
            self.total = np.r_[self.total, np.zeros(shape, np.float32)]
            self.recent = np.r_[self.recent, np.zeros(shape, np.float16)]
            self._free = np.r_[self._free, np.arange(size, size + grow)]
        self.row[new], self._free = self._free[: new.shape[0]], self._free[new.shape[0] :]
        self.centre[beacons] = xy
        self.level[beacons] = level
        self.windows[beacons] = self.best[beacons] = 0
        rows = self.row[beacons]
        self.total[rows] = 0.0
        self.recent[rows] = 0.0

    def due(self, turns: I64) -> NDArray[np.bool_]:
        """Which of these beacons add this tick's window (every PARKED_EVERY_TICKS, in turn, by
        `turns`: as RivalBasins.due's)."""
        self.ticks += 1
        due: NDArray[np.bool_] = (turns + self.ticks) % PARKED_EVERY_TICKS == 0
        return due

    def add(self, beacons: I64, loglik: NDArray[np.float32]) -> None:
        """Each beacon's window log-likelihood at its candidates (centre + offsets); a spell
        whose recent windows fit another candidate PARKED_END_NATS better than its best ends."""
        rows = self.row[beacons]
        total = self.total[rows] + loglik
        recent = self.recent[rows].astype(np.float32) * PARKED_RECENT_DECAY + loglik
        # kept relative to its best, where float16 is exact enough (0.01 nats within 16 nats
        # of it): only differences near the top are ever compared
        recent -= recent.max(axis=1, keepdims=True)
        self.total[rows], self.recent[rows] = total, recent
        self.windows[beacons] += 1
        best = np.argmax(total, axis=1)
        self.best[beacons] = best
        # recent's maximum is 0 now: the gap to it is minus recent at the best
        ended = -recent[np.arange(beacons.shape[0]), best] >= PARKED_END_NATS
        self.end(beacons[ended])
        self.ended += int(ended.sum())

    def winners(self, beacons: I64, track_xy: F64) -> tuple[NDArray[np.bool_], F64]:
        """Which beacons' summed best leads the best near their track (RIVAL_LOCAL_M) by
        PARKED_NATS, RIVAL_MIN_M or more away, after PARKED_MIN_WINDOWS, where the recent
        windows agree; and those points."""
        ready = self.holds(beacons) & (self.windows[beacons] >= PARKED_MIN_WINDOWS)
        win = np.zeros(beacons.shape[0], dtype=bool)
        points = np.zeros((0, 2))
        rows = np.flatnonzero(ready)
        if rows.shape[0] == 0:
            return win, points
        b = beacons[rows]
        k = self.best[b]
        best_xy = self.centre[b] + self.offsets[k]
        # most tracks sit at their sum's best: only the others are weighed (a 10,000-pallet
        # tick spent seconds on the whole (beacons, candidates) arrays otherwise)
        far = np.hypot(*(best_xy - track_xy[rows]).T) >= RIVAL_MIN_M
        rows, b, k, best_xy = rows[far], b[far], k[far], best_xy[far]
        total, recent = self.total[self.row[b]], self.recent[self.row[b]]
        # squared distance from each candidate to the track, through one matrix product
        d = track_xy[rows] - self.centre[b]
        dist2 = self._offsets_sq[None, :] - 2.0 * (d @ self.offsets.T) + (d**2).sum(axis=1)[:, None]
        near = dist2 <= RIVAL_LOCAL_M**2
        r = np.arange(rows.shape[0])
        at_track = np.where(near, total, -np.inf).max(axis=1, initial=-np.inf)
        recent_track = np.where(near, recent, -np.inf).max(axis=1, initial=-np.inf)
        # a track off the disc or off the storage it covers has nothing to be weighed against
        known = np.isfinite(total[r, k]) & np.isfinite(at_track)
        lead = np.where(known, total[r, k] - at_track, -np.inf)
        agree = recent[r, k] >= recent_track
        won = agree & (lead >= PARKED_NATS)
        win[rows] = won
        self.moves += int(won.sum())
        return win, best_xy[won]
