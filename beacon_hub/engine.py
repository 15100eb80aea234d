"""The positioning engine: a pure, deterministic core driven by data time.

    engine.ingest(readings)   # any order, any gateway; counted, late ones dropped
    engine.tick(t)            # -> TickResult: fixes and events for data time t

It does no I/O and reads no clock: the live service, `replay` and evaluation run the same code,
so a bug seen live can be replayed exactly. Each tick runs the stages of the flow over every
beacon at once: RSSI conditioning (conditioning.py) -> ranging model and radio map
(pathloss.py, radiomap.py) -> multilateration (multilateration.py) -> tracking (tracking.py)
-> zones and events (zones.py).
"""

from __future__ import annotations

import dataclasses
import functools
import itertools
import math
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Annotated, Any, Literal

import numpy as np
from numpy.typing import NDArray
from pydantic import BaseModel, ConfigDict, Field

from beacon_hub.basins import (
    PARKED_BEGIN_S,
    RIVAL_DECAY,
    RIVAL_LOCAL_M,
    ParkedEvidence,
    RivalBasins,
)
from beacon_hub.calibration import Calibration, path_loss_mode, typical_height_m
from beacon_hub.conditioning import PairEstimates, ReadingWindow, ReceiverFloors
from beacon_hub.floorplan import FLOOR, STORAGE, TRAFFIC_ZONE_KINDS, WALKWAY, FloorPlan
from beacon_hub.gaussian2d import radius_68_m
from beacon_hub.multilateration import (
    Geometry,
    MapFn,
    MapTable,
    Solution,
    grid_loglik,
    grid_mode,
    grid_offsets,
    mean_residual_db,
    reduced_chi2,
    select_rows,
    solve,
    solve_grid,
    weighted_centroid,
)
from beacon_hub.obstruction import body_shadowed
from beacon_hub.pathloss import mean_rssi_dbm
from beacon_hub.radiomap import RadioMap
from beacon_hub.residuals import ResidualSpread
from beacon_hub.site import BEACON_KINDS, Site, ZoneKindName
from beacon_hub.tracking import GATE_CHI2_2DOF, MotionParams, Tracks, mode_transition
from beacon_hub.txoffset import (
    TX_OFFSET_FLOOR_MAX_DBM,
    TX_OFFSET_FLOOR_SD,
    TX_OFFSET_MIN_GATEWAYS,
    TxOffsets,
)
from beacon_hub.wire import RSSI_MAX_DBM, RSSI_MIN_DBM, Event, Fix, ReadingBatch
from beacon_hub.zones import ZoneParams, ZoneTracker

__all__ = [
    "RESIDUAL_FIT_BEACONS",
    "RESIDUAL_FIT_MIN_WINDOW_S",
    "RESIDUAL_FIT_SAMPLES",
    "RESIDUAL_FIT_WINDOW_S",
    "Engine",
    "EngineConfig",
    "FixTable",
    "IngestCounts",
    "Readings",
    "TickResult",
]

F64 = NDArray[np.float64]
I64 = NDArray[np.int64]
PALLET = BEACON_KINDS.index("pallet")

STATIC_SHARE_OF_SHADOWING = 4.5 / 6.6
"""Of the 6.6 dB residual spread on flat-calib2021, about 4.5 dB is static (a revisit a
minute later keeps a correlation of 0.46): it does not shrink by averaging samples."""
STATIC_SHARE_UNFITTED = 5.9 / 6.6
"""The same for a gateway that no calibration has fitted: a per-gateway fit over the flat
absorbs part of a static field correlated over 1.5 m, so what measures 4.5 dB after the fit is
5.9 dB before it (simulator/radio.py, STATIC_SD_RATIO). The excess is a bias fixed in space, so
it widens accuracy_m and leaves the weights and the tracker alone (weighing fixes less only
lags a walker: in the weights too, the room harness's tracked walker went 0.50 / 0.89 -> 0.54 /
1.00 m, median / p95). True position within accuracy_m, flat-calib2021's robot with no
calibration at all: tracked 47 -> 67 %, one fix per sample 68 -> 75 %; with MAP_STATIC_FACTOR's
rule, simulated store (C) 45 -> 61 %, warehouse (D) 40 -> 54 %; the room harness, which has no
static field, 68 -> 80 % (A) and 89 -> 97 % (B) (2026-12-05)."""
RESIDUAL_FIT_WINDOW_S = 2.0
"""The window (EngineConfig.window_s's default) on which the residual factor's chi-square is
taken whatever the tick's own window (Engine._residual_chi2): RESIDUAL_TO_ERROR was measured
on such windows."""
RESIDUAL_FIT_SAMPLES = 5
"""... its samples per busiest pair (EngineConfig.window_samples's default) ..."""
RESIDUAL_FIT_MIN_WINDOW_S = 1.0
"""... and its shortest window (EngineConfig.tick_interval_s's default)."""
RESIDUAL_FIT_BEACONS = 500
"""At most about this many beacons a tick take that fit, a share that turns with the ticks:
the factor is a running median over minutes of fixes, and a fit of every beacon doubled a
tick of 10,000 (bench/engine_tick.py, whose window is 1 s: 141 -> 90 ms a tick in the same
hour, 2026-12-07). A site of up to this many beacons fits them all, every tick."""
MAP_STATIC_FACTOR = 0.6
"""Share of the static spread left once a calibrated radio map is applied (flat-calib2021: the
map cuts the in-sample residual from 6.6 to 4.6 dB; out of sample it does less). A map learnt
from reference beacons alone does not earn it: it corrects the field within a correlation
length of a dozen points and leaves the rest of the floor as it was (simulated store (C):
true position within accuracy_m 45 -> 51 %, standing zone flaps 2.1 -> 0 per beacon-hour;
warehouse (D) 40 -> 48 %, 1.9 -> 1.3, 2026-12-05)."""
PRIOR_INFLATION = 8.0
"""The prediction's covariance is inflated eightfold before it weighs the grid, so a track that
went the wrong way is not held there by its own confidence (flat-calib2021: 1, 2 and 4 lock
onto wrong rooms, p90 2.0-3.7 m; 8-32 do not, p90 1.85-1.89 m; 8 has the lowest median)."""
MAX_GATEWAYS_PER_FIX = 10
"""The strongest gateways used per beacon without a calibrated radio map: the path-loss model
alone mispredicts far gateways most (an exponent off by 0.5 is 6 dB at 16 m; every shelf on the
way adds its own). Simulated store (C), 600 s recording, 20 instead of 10: median 4.17 -> 3.86 m
but standing carts' zone flaps 1.4 -> 2.8 per beacon-hour and the true position within
accuracy_m 44 -> 37 % (2026-12-05)."""
MAX_GATEWAYS_PER_FIX_CALIBRATED = 32
"""The same with a calibrated map, which predicts far gateways as well as near ones: their weak
readings then say where the beacon is not, and rule out a rival basin near the strong ones (a
cart standing by the gateway at the store's front: a 2 s window's best grid point over the map
was 9-20 m off in 7 windows of 15 with its 10 strongest; with all 20, never). Simulated store
calibrated (E), 600 s, p90 by the cap: 10: 5.87 m, 14: 3.38, 16: 2.68, 18: 2.30, 20 (all):
2.27. The racked warehouse (F), whose pallets few gateways hear well, is much the same with 10,
20 or 32 (right or neighbouring bay 82.8, 82.7, 82.3 %). 32 bounds the tick's cost."""


FLOOR_MEAN_STEP_SD = 0.75
"""Spacing, in standard deviations, of the points that weigh a Gaussian over the floor: 49
points out to 3 sd. 0.5 (113 points) and 0.25 (452) give the same fixes on flat-calib2021 and
the simulated room within 0.01 m, at two and nine times the cost."""
FLOOR_MEAN_RADIUS_SD = 3.0
"""How far out the points go: beyond 3 sd a Gaussian holds 1 % of its weight."""


def _unit_disc(step: float, radius: float) -> F64:
    """Points of a square grid of spacing `step` within `radius`, in standard deviations."""
    n = int(radius / step)
    axis = np.arange(-n, n + 1) * step
    gx, gy = np.meshgrid(axis, axis)
    keep = gx**2 + gy**2 <= radius**2
    return np.asarray(np.c_[gx[keep], gy[keep]], dtype=np.float64)


_FLOOR_MEAN_UNIT = _unit_disc(FLOOR_MEAN_STEP_SD, FLOOR_MEAN_RADIUS_SD)
_FLOOR_MEAN_WEIGHT = np.exp(-0.5 * (_FLOOR_MEAN_UNIT**2).sum(axis=1))

COMPACT_SHARE = 0.5
"""Forgotten beacons' slots are reclaimed once they are this share of the slots in use (and at
least COMPACT_MIN_SLOTS): each compaction copies the live beacons' state once, so its cost
per forgotten beacon is constant (as a list's doubling), and memory stays within twice what
the live beacons need."""
MIN_CAPACITY = 256
"""Per-beacon arrays start with room for this many beacons and double when full."""
COMPACT_MIN_SLOTS = MIN_CAPACITY
"""... and never fewer than the smallest capacity: they are not worth a copy."""
_PER_BEACON_FILL: dict[str, object] = {
    "_id_arr": None,
    "_kind_arr": None,
    "_kind_code": -1,
    "_height": 1.0,
    "_body_db": 0.0,
    "_heading": np.nan,
    "_body_nats": 0.0,
    "_area": 0,
    "_offset_db": 0.0,
    "_announced_t": -np.inf,
    "_announces": False,
    "_last_heard": -np.inf,
    "_active": False,
    "_parked_xy": np.nan,
    "_still_since": np.nan,
    "_move_nats": 0.0,
    "_serial": 0,
    "_forgotten": False,
    "_track_level": -1,
}
"""The engine's own arrays indexed by beacon, and what a beacon never heard has there
(Engine._grow, Engine.compact); its parts hold theirs (tracks, zones, rivals, parked,
tx_offsets, and the window's samples)."""

FIRST_FIX_STEP_M = 0.5
"""Candidate spacing of a new track's wide search: coarser than the local grid (0.25 m) to keep
its ~5,000 candidates affordable; the next tick's local grid refines it."""


_RIVAL_LOCAL = grid_offsets(FIRST_FIX_STEP_M, RIVAL_LOCAL_M)
"""Where a rival and a track look for their best point (basins.RIVAL_LOCAL_M)."""


HEADING_MIN_SPEED_M_S = 0.4
"""A track faster than this has a heading: a shopper walks at 0.8-1.4 m/s (the simulator's
0.5-1.5), and a standing cart's track drifts at some 0.1-0.2 m/s in no direction."""
BODY_MOVING_NATS = 10.0
"""A cart that moves has someone behind it: the evidence for the body is set to this while it
moves, so a shopper who stops keeps the body until a few windows say otherwise."""
MOVED_NATS = 40.0
"""Lead of the fix over the parked spot at which a parked pallet has moved (see
Engine._pallet_moves). Simulated warehouse calibrated (building seed 1), 480 s at 240 moves an
hour, 26 departures of pallets that had stood 60 s: 20 nats gave 58 events (21 right, 37 false,
5 missed), 40 nats 25 events (19 right, 6 false; 4 of the 7 missed left within the run's first
66 s or last 14 s), 12-25 s after the forklift began the pick. Weighed only while the fix is
moved_m away: the same 25 events calibrated, 58 instead of 60 (18 right) not calibrated."""


def _search_offsets(radius_m: float) -> F64 | None:
    """Candidates of a wide search out to radius_m (None for 0: no search)."""
    return grid_offsets(FIRST_FIX_STEP_M, radius_m) if radius_m > 0 else None


class EngineConfig(BaseModel):
    """Engine settings; part of the hub's config (one schema, loaded by config_loader)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    tick_interval_s: Annotated[float, Field(gt=0, le=60)] = 1.0
    max_lateness_s: Annotated[float, Field(ge=0, le=600)] = 2.0
    """Readings later than this behind the last tick are counted and dropped (DESIGN.md)."""
    window_s: Annotated[float, Field(gt=0, le=60)] = 2.0
    """RSSI conditioning window: two seconds hold a few adverts even at 1 Hz advertising."""
    window_samples: Annotated[int, Field(ge=0, le=1000)] = 5
    """A beacon that advertises often gets a shorter window, about this many samples of its
    busiest pair (not under tick_interval_s; conditioning.ReadingWindow.estimate): the
    tracker then gets measurements that share no samples and trail a walker less. A cart at
    5 Hz: 1 s; a pallet at 1 Hz: window_s. Calibrated store (E) p90 2.80 -> 2.48 m (3 samples:
    2.60); flat-calib2021 walk 0.32 / 0.71 -> 0.34 / 0.69 m (3: 0.38 / 0.60, robot 1.06 m).
    0: always window_s."""
    tracking: bool = True
    """False: one fix per tick straight from multilateration (for like-for-like comparisons)."""
    use_map: bool = True
    plan_losses: bool = True
    """Expect the site file's walls and obstacles to attenuate (obstruction.py). Simulated
    warehouse (10 dB racks): median 15.6 -> 5.2 m; simulated store: 4.7 -> 3.8 m. A
    calibration decides for itself (calibrate --plan-losses): on flat-calib2021, whose wall
    losses are only assumed, fitting without them is better."""
    grid_prior: bool = True
    """Weigh the map likelihood by the track's prediction on the grid (see solve_grid).
    flat-calib2021 robot route: median 1.03 m with, 1.12 m without; 68 % vs 46 % of true
    positions within accuracy_m."""
    first_fix_search_m: Annotated[float, Field(ge=0, le=100)] = 20.0
    """With a calibrated map and tracking, a beacon without a track searches the likelihood this
    far around its least-squares start, not only the local 6 m: a first fix in the wrong basin
    held a cart 13 m off for a minute. Simulated store calibrated on another day's carts
    (building seed 1): carts' median of per-cart p90 5.0 -> 3.6 m, median 0.80 -> 0.68 m;
    flat-calib2021 unchanged (1.05 / 1.88 m). 0 turns it off."""
    basin_search_m: Annotated[float, Field(ge=0, le=100)] = 30.0
    """With a calibrated map and tracking, tracks are checked in turn against the most likely
    point this far around them, and move there when it keeps explaining the data better
    (Engine._rivals, basins.py). Simulated warehouse (F), parked pallets: right or neighbouring
    bay 73 -> 79 %, p90 9.4 -> 6.1 m; simulated store (E): p90 8.1 -> 5.8 m, zone accuracy
    outside the band 89 -> 91 %. A 20 m search found fewer (79.4 against 80.3 % at 30 m, before
    the scoring of basins.RIVAL_LOCAL_M; 45 m: 80.6 %). 0 turns it off."""
    basin_checks_per_tick: Annotated[int, Field(ge=0, le=100_000)] = 60
    """Tracks searched for a rival per tick, in turn (each of 600 pallets every 10 s): the search
    over basin_search_m costs about two first fixes each. 150 did no better on (F)."""
    parked_search_m: Annotated[float, Field(ge=0, le=50)] = 12.0
    """With a grid solver and tracking, a still pallet's windows are summed over candidates this
    far around where it stood still, and its track moves to their best when that leads
    (basins.ParkedEvidence). Simulated warehouse (F): parked pallets in the right or a
    neighbouring bay 92.1 -> 95.3 % (15 m: 95.5 %) on 2026-12-06 (95.1 % since the residual
    factor's constant of 2026-12-07); replay 62 -> 75 s; 11 KB a still pallet. 0 turns it off."""
    solver: Literal["auto", "nlls", "grid"] = "auto"
    """nlls: robust least squares (fast); grid: likelihood over the map near the least-squares
    start; auto: grid when a calibrated map is in use. A map learnt only from reference beacons
    is known at those few spots, so it corrects the least squares instead. Grid without a
    calibration, measured 2026-12-05 (median / p90): flat-calib2021's robot 2.38 / 3.21 ->
    1.96 / 2.59 m, the store (C) 3.79 / 8.50 -> 3.50 / 7.35 m, the warehouse (D) 3.41 / 9.49 ->
    2.88 / 10.27 m, right or neighbouring bay 51 -> 56 % but standing flaps 1.0 -> 3.0 per
    beacon-hour; with unheard_gateways (8c70f4d) the store 3.40 / 7.29 m, zone accuracy
    outside the band 59 -> 70 % but standing flaps 0 -> 2.9, the warehouse 1.81 / 6.78 m,
    bay 51 -> 71 %, flaps 1.0 -> 2.1; at the grid's cost (bench/engine_tick.py: 72 ms -> 2 s
    a tick for 10,000 beacons), so auto keeps least squares there and a small site may choose
    grid."""
    grid_threads: Annotated[int, Field(ge=0, le=64)] = 0
    """Threads for the map likelihood of a tick's beacons (solve_grid); 0: one per CPU core.
    The fixes are the same with any number."""
    tx_offset: Literal["auto", "unannounced", "all", "none"] = "auto"
    """Learn each beacon's transmit power with its position (txoffset.py): for beacons that
    announce none (unannounced), for every beacon on top of what it announces (all), or not
    (none); auto: unannounced without a calibration, none with one (its walk measured the
    tag's power with the gateways'). Reference beacons never: their spot teaches the map.
    flat-calib2021, tracked, median (robot / walk): with a generic -59 dBm for its tag
    (-47.4 fitted) 3.54 / 0.99 -> 1.94 / 0.71 m, without walls 3.60 / 0.67 -> 1.26 / 0.59 m
    (the fitted reference: 1.23 / 0.59 -> 1.23 / 0.58 m); with the fitted reference 2.38 /
    0.53 -> 1.87 / 0.64 m (the site's 4 dB walls are more than the flat's, and a beacon's one offset
    absorbs them where it stands); calibrated with the map 1.04 / 0.34 -> 1.06 / 0.56 m.
    Simulated store (C), carts silent about their power, all at the site's reference: 3.26 ->
    3.36 m; 8 dB apart: 3.79 -> 3.49 m (docs/accuracy.md)."""
    lost_after_s: Annotated[float, Field(gt=0)] = 30.0
    """Silence after which beacon_lost fires and the track is dropped."""
    forget_after_s: Annotated[float, Field(ge=0)] = 3600.0
    """Silence after beacon_lost after which the beacon is forgotten: its slot in every
    per-beacon array is freed (Engine.compact), and heard again it starts as a new beacon.
    Lost already dropped its track, zone and parked spot; what forgetting loses is the
    learnt tx power (txoffset.py), the body evidence and the announced power, and in an hour
    the offset's own random walk (TX_OFFSET_DRIFT_DB2_S) has widened it by 36 dB^2, a third
    of the prior's 100: worth little. Without it every id ever heard (pallets that left, a
    dongle broadcasting random ids) kept its slot for ever: 0.6 KB of arrays each (11.4 KB
    with a calibrated map until the still pallets' sums were held per spell,
    basins.ParkedEvidence), and its id."""
    hysteresis_m: Annotated[float, Field(ge=0)] = 0.6
    min_dwell_s: Annotated[float, Field(ge=0)] = 2.0
    min_dwell_accuracy_m: Annotated[float, Field(ge=0)] = 1.5
    """min_dwell_s holds for a fix with accuracy_m up to this; a less certain one must stay in
    the new zone proportionally longer (accuracy_m 4.5 m: 3 x min_dwell_s); 0 turns it off.
    Measured on 600 s of the simulated store (8 beacon-hours of standing carts): zone flaps
    while standing, with zone_settle_s, 7.0 -> 3.4 per beacon-hour calibrated and 10.3 -> 1.4
    not; zone accuracy outside the band 85.9 -> 85.7 % and 60.2 -> 58.3 %; flat-calib2021's
    robot's zone accuracy 87.1 -> 86.8 %. 1.0 m flapped a little less and cost the robot 3.6
    points; an exit margin of one accuracy_m instead cost it 6.6. With tracking only: without,
    it took the robot's one-fix-per-sample zone accuracy from 84 to 79 % (path loss 75 -> 66)."""
    zone_settle_s: Annotated[float, Field(ge=0)] = 5.0
    """After a track restarts elsewhere (lost lock, or a rival basin won), its zone is held
    this long: a standing cart's fix jumps metres and back within a few seconds. Same
    recording: standing flaps 10.2 -> 7.0 per beacon-hour calibrated, 11.1 -> 10.3 not."""
    parked_after_s: Annotated[float, Field(ge=0)] = 60.0
    """A pallet still for this long is parked; leaving its spot then fires pallet_moved."""
    traffic_zones: tuple[ZoneKindName, ...] = TRAFFIC_ZONE_KINDS
    """A still pallet is stored, not left where forklifts drive: it is shown off zones of these
    kinds (the storage area, floorplan.py). Parked pallets in the right or a neighbouring bay,
    simulated warehouse (README, D and F): 17 -> 41 %, calibrated 60 -> 75 %; () turns it off."""
    moved_m: Annotated[float, Field(gt=0)] = 2.5
    """Distance from the parked spot that counts as a move: about two bay widths."""
    accuracy_scale: Annotated[float, Field(gt=0)] = 1.0
    """Multiplies accuracy_m (on top of a calibration's path_loss_accuracy_scale): the engine's
    spreads aim at a 68 % radius; a site that measured otherwise can say so here."""
    reference_update_s: Annotated[float, Field(gt=0)] = 10.0
    """How often reference beacons feed the live radio map."""
    unheard_gateways: Annotated[int, Field(ge=0, le=64)] = 8
    """With the map likelihood (solver grid), this many gateways that did *not* hear a beacon
    weigh in too: the nearest to its track (or to the gateways that heard it) among those on its
    level that heard some beacon in the window. A place where the map predicts such a gateway
    above its floor (the 0.1 % quantile of what it has reported, ReceiverFloors) is unlikely;
    below, it says nothing (Geometry.unheard). It rules out a rival basin by a gateway that
    stays silent.
    Simulated warehouse calibrated (F), all pallets, 0 -> 4 -> 8: median / p90 0.68 / 7.12 ->
    0.48 / 4.01 -> 0.46 / 3.50 m, parked pallets in the right or a neighbouring bay 82.3 -> 90.7
    -> 92.4 % (right bay 65.7 -> 73.3 -> 74.7 %), within accuracy_m 69 -> 72 -> 71 %; with 8,
    the floor 3 dB higher (weaker evidence) 88.8 %, 3 dB lower 91.9 % at a median 0.53 m, the
    spread halved 90.0 %. Store calibrated (E), 120 s: 0.52 / 3.27 -> 0.50 / 2.95 m; 600 s:
    0.45 / 2.29 -> 0.42 / 2.12 m, zone accuracy outside the band 90.6 -> 91.2 %, standing flaps
    0.38 -> 0.75 per beacon-hour (3 -> 6): all its 20 gateways hear a cart, and one that misses
    a window at its edge reads as silence. flat-calib2021 (six anchors that hear everything):
    the same. Cost: (F)'s replay 41 -> 50 s (2026-12-05). 0 turns it off."""


@dataclass(frozen=True)
class Readings:
    """Samples from one gateway, columnar, times already corrected to hub time."""

    gateway: str
    beacons: Sequence[str]
    b: I64
    t: F64
    rssi: F64
    tx: F64
    """Announced RSSI at 1 m, NaN when the beacon announces none."""

    @classmethod
    def from_batch(cls, batch: ReadingBatch, clock_offset_s: float = 0.0) -> Readings:
        """A decoded batch in hub time: sample i at sent + offset - dt_ms[i] / 1000."""
        dt = np.asarray(batch.dt_ms, dtype=np.float64) / 1000.0
        tx = np.array([np.nan if v is None else v for v in batch.tx], dtype=np.float64)
        return cls(
            gateway=batch.gw,
            beacons=batch.beacons,
            b=np.asarray(batch.b, dtype=np.int64),
            t=batch.sent + clock_offset_s - dt,
            rssi=np.asarray(batch.rssi, dtype=np.float64),
            tx=tx,
        )


@dataclass
class IngestCounts:
    accepted: int = 0
    late: int = 0
    unknown_gateway: int = 0
    impossible_rssi: int = 0


@dataclass(frozen=True)
class FixTable:
    """Every fix of one tick, columnar."""

    t: float
    beacons: list[str]
    x: F64
    y: F64
    accuracy_m: F64
    level: I64
    zones: list[str | None]
    kinds: list[str | None]
    speed_m_s: F64
    gateway_slots: NDArray[np.intp]
    """(n, K) gateway indices used per fix, valid where gateway_mask; kept as arrays because
    10,000 tuples of names cost more than the whole multilateration."""
    gateway_mask: NDArray[np.bool_]
    gateway_ids: tuple[str, ...]

    def __len__(self) -> int:
        return len(self.beacons)

    def gateways(self, i: int) -> tuple[str, ...]:
        ids = self.gateway_ids
        return tuple(ids[g] for g in self.gateway_slots[i][self.gateway_mask[i]])

    def select(self, rows: NDArray[np.intp], beacons: list[str] | None = None) -> FixTable:
        """The fixes `rows`, in that order (with new ids if `beacons` is given): every per-row
        column, array or list, whatever columns the table has grown."""
        n = len(self.beacons)
        changes: dict[str, Any] = {
            "beacons": [self.beacons[i] for i in rows.tolist()] if beacons is None else beacons
        }
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if f.name == "beacons":
                continue
            if isinstance(value, np.ndarray) and value.ndim >= 1 and value.shape[0] == n:
                changes[f.name] = value[rows]
            elif isinstance(value, list) and len(value) == n:
                changes[f.name] = [value[i] for i in rows.tolist()]
        return dataclasses.replace(self, **changes)

    def fixes(self) -> list[Fix]:
        return [
            Fix(
                t=self.t,
                beacon=self.beacons[i],
                x=float(self.x[i]),
                y=float(self.y[i]),
                accuracy_m=float(self.accuracy_m[i]),
                zone=self.zones[i],
                gateways=self.gateways(i),
                level=int(self.level[i]),
                kind=self.kinds[i],
            )
            for i in range(len(self.beacons))
        ]


@dataclass(frozen=True)
class TickResult:
    fixes: FixTable
    events: list[Event] = field(default_factory=list)


def zone_heights(site: Site) -> F64 | None:
    """(zones + 1, kinds): a kind's height inside each zone that overrides it (zones[].
    heights_m); NaN where none does, and in the last row, for no zone. None: no zone does."""
    if not any(zone.heights_m for zone in site.zones):
        return None
    out = np.full((len(site.zones) + 1, len(BEACON_KINDS)), np.nan)
    for z, zone in enumerate(site.zones):
        for kind_name, height_m in zone.heights_m.items():
            out[z, BEACON_KINDS.index(kind_name)] = height_m
    return out


def _split_shadowing(shadowing_db: F64, fitted: NDArray[np.bool_]) -> tuple[F64, F64, F64]:
    """Each gateway's static, varying and unfitted-excess spreads (dB) of its `shadowing_db`."""
    static = shadowing_db * STATIC_SHARE_OF_SHADOWING
    varying = np.sqrt(np.maximum(shadowing_db**2 - static**2, 0.25))
    excess = math.sqrt(STATIC_SHARE_UNFITTED**2 - STATIC_SHARE_OF_SHADOWING**2)
    return static, varying, np.where(fitted, 0.0, shadowing_db * excess)


def _variance_share(geo: Geometry, spread_db: F64) -> F64:
    """Each beacon's mean over its gateways of spread^2 / sd_db^2: the part of its fix's
    variance that a spread (dB, per slot) accounts for."""
    heard = np.maximum(geo.mask.sum(axis=1), 1)
    share: F64 = np.where(geo.mask, spread_db**2 / geo.sd_db**2, 0.0).sum(axis=1) / heard
    return share


def _accuracy_scale(
    config: EngineConfig, calibration: Calibration | None, *, map_in_use: bool
) -> float:
    """What multiplies accuracy_m besides the residuals' factor: the config's, and the
    calibration's for its path loss alone in this tracking mode when no map is in use (with a
    map the model's own spreads hold: flat-calib2021's robot has 70 % of true positions within
    accuracy_m, map and tracking)."""
    scale = config.accuracy_scale
    if calibration is not None and not map_in_use:
        scale *= calibration.path_loss_accuracy_scale.get(path_loss_mode(config.tracking), 1.0)
    return scale


def _tx_learning(
    config: EngineConfig, calibration: Calibration | None
) -> Literal["unannounced", "all", "none"]:
    """Which beacons' tx power the engine learns (EngineConfig.tx_offset, auto resolved)."""
    if config.tx_offset == "auto":
        return "unannounced" if calibration is None else "none"
    return config.tx_offset


def _zone_params(config: EngineConfig) -> ZoneParams:
    # One sample's fix is wide everywhere: without tracking, the dwell by accuracy would only
    # slow every change.
    return ZoneParams(
        config.hysteresis_m,
        config.min_dwell_s,
        min_dwell_accuracy_m=config.min_dwell_accuracy_m if config.tracking else 0.0,
        settle_s=config.zone_settle_s,
    )


class Engine:
    def __init__(
        self, site: Site, config: EngineConfig | None = None, calibration: Calibration | None = None
    ) -> None:
        self.site = site
        self.config = config or EngineConfig()
        self.plan = FloorPlan(site, traffic_zone_kinds=self.config.traffic_zones)
        self._plan_step_m = min((g.resolution_m for g in self.plan.levels.values()), default=0.1)
        gws = site.gateways
        self.gateway_ids = tuple(g.id for g in gws)
        self._gw_index = {g: i for i, g in enumerate(self.gateway_ids)}
        self.gw_xy = np.array([[g.x, g.y] for g in gws], dtype=np.float64)
        # gw_floors: where each gateway's hearing ends (for unheard_gateways)
        self.gw_z, self.gw_floors = np.array([g.z for g in gws]), ReceiverFloors(len(gws))
        self.gw_level = np.array([g.level for g in gws], dtype=np.int64)
        radio = [site.gateway_radio(g) for g in gws]
        self.gw_ref = np.array([r.ref_rssi_1m_dbm for r in radio])
        self.gw_exp = np.array([r.path_loss_exponent for r in radio])
        self.gw_shadowing_db = np.array([r.shadowing_db for r in radio])
        self.radio_map: RadioMap | None = None
        # Floor-plan losses only where the plan has something that attenuates.
        has_obstructions = any(lv.walls or lv.obstacles for lv in site.levels)
        self.plan_losses = self.config.plan_losses and has_obstructions
        if calibration is not None:
            calibration.apply(self)
            self.plan_losses = calibration.plan_losses and has_obstructions
        fitted = [calibration is not None and g in calibration.gateways for g in self.gateway_ids]
        self.gw_static_db, self.gw_fast_db, self.gw_unfitted_db = _split_shadowing(
            self.gw_shadowing_db, np.array(fitted, dtype=bool)
        )
        self._map_calibrated = self.radio_map is not None
        self._map_learned = self._map_calibrated or bool(site.reference_beacons)
        self.accuracy_scale = _accuracy_scale(
            self.config, calibration, map_in_use=self.config.use_map and self._map_learned
        )
        if self.radio_map is None and (self._map_learned or self.plan_losses):
            self.radio_map = RadioMap.for_site(site, self.gateway_ids)
        if self.radio_map is not None and self.plan_losses:
            self.radio_map.with_plan_losses(site, typical_height_m(site))
        # tracked with a short window, RESIDUAL_FIT_WINDOW_S of samples for _residual_chi2
        self.window = ReadingWindow(
            max(self.config.window_s, RESIDUAL_FIT_WINDOW_S if self.config.tracking else 0.0)
        )
        self.tracks = Tracks(MotionParams())
        self.zones = ZoneTracker(self.plan, _zone_params(self.config))
        # each slot's id (a forgotten beacon's until compact() reclaims it), and each heard
        # id's slot
        self.beacon_ids: list[str] = []
        self._beacon_index: dict[str, int] = {}
        # Ids (beacon_ids mirrored) and kinds as object arrays, kinds as codes too (an index
        # into BEACON_KINDS, -1 for none): a tick takes them for 10,000 beacons at once
        # instead of a Python loop each.
        self._id_arr = np.empty(0, dtype=object)
        self._kind_arr = np.empty(0, dtype=object)
        self._kind_code = np.zeros(0, dtype=np.int8)
        # mounting height; a person behind the tag (its kind's body_loss_db), its track's
        # heading (the body is on the side it came from) and the evidence, in nats, that
        # someone still is there (_with_body)
        self._height, self._body_db, self._heading, self._body_nats = (
            np.zeros(0) for _ in range(4)
        )
        # a kind's height in a zone that overrides it; a beacon's floorplan area when moving
        self._zone_height, self._area = zone_heights(site), np.zeros(0, dtype=np.int8)
        # the announced power and when it was sent (_announce); when each beacon was heard last
        self._offset_db, self._announced_t, self._last_heard = (np.zeros(0) for _ in range(3))
        # learnt tx offsets (txoffset.py, tx_offset), and which beacons announce their power
        self.tx_offsets, self._announces = TxOffsets(), np.zeros(0, dtype=bool)
        # a pallet's parked spot, when its still spell began, and the evidence that it left
        self._active, self._parked_xy = np.zeros(0, dtype=bool), np.zeros((0, 2))
        self._still_since, self._move_nats = np.zeros(0), np.zeros(0)
        # the order the beacons were first heard in, which compact() leaves alone: whose turn
        # it is (rival searches, parked sums, the residual fit's share) is the same whatever
        # was forgotten (_opened: the next one); the slots of forgotten beacons (_forget); and
        # the level each beacon's track is on (one that changes level starts a new track)
        self._serial, self._forgotten, self._track_level = (
            np.zeros(0, dtype=np.int64),
            np.zeros(0, dtype=bool),
            np.zeros(0, dtype=np.int64),
        )
        self._reference_xy: dict[int, tuple[float, float, float, int]] = {}
        # _floors_t: the tick whose estimates gw_floors has counted (_receiver_floors)
        self.watermark = self._last_reference_update = self._floors_t = -math.inf
        # the wide searches' candidates: a new track's first fix, and the rival basins'
        self._wide_offsets, self._rival_offsets = (
            _search_offsets(self.config.first_fix_search_m),
            _search_offsets(self.config.basin_search_m),
        )
        # _residual_turn: which share of the beacons the next residual fit takes
        self.rivals, self.residuals, self.parked, self._residual_turn, self._opened = (
            RivalBasins(self.config.basin_checks_per_tick),
            ResidualSpread(),
            ParkedEvidence(self.config.parked_search_m) if self._sums_parked else None,
            0,
            0,
        )
        self._grid_workers = self.config.grid_threads or os.cpu_count() or 1
        self.counts, self._learn_tx = IngestCounts(), _tx_learning(self.config, calibration)

    # ------------------------------------------------------------------ ingest

    def beacon_index(self, beacon: str) -> int:
        i = self._beacon_index.get(beacon)
        if i is not None:
            return i
        i = len(self.beacon_ids)
        self.beacon_ids.append(beacon)
        self._beacon_index[beacon] = i
        kind = self.site.kind_of(beacon)
        if i >= self._height.shape[0]:
            self._grow(max(MIN_CAPACITY, 2 * self._height.shape[0]))
        self._serial[i], self._opened = self._opened, self._opened + 1
        self._id_arr[i] = beacon
        self._kind_arr[i] = None if kind is None else kind.kind
        self._height[i] = 1.0 if kind is None else kind.height_m
        self._body_db[i] = 0.0 if kind is None else kind.body_loss_db
        if kind is not None:
            self.zones.set_rules(i, kind.zone_hysteresis_m, kind.zone_min_dwell_s)
        self._kind_code[i] = -1 if kind is None else BEACON_KINDS.index(kind.kind)
        self._area[i] = WALKWAY if kind is not None and kind.kind == "cart" else FLOOR
        for ref in self.site.reference_beacons:
            if ref.beacon == beacon:
                self._reference_xy[i] = (ref.x, ref.y, ref.z, ref.level)
                self._height[i] = ref.z
                self._kind_code[i] = -1  # not a pallet; its height is exact wherever it is
        return i

    def _grow(self, capacity: int) -> None:
        """Every per-beacon array to `capacity` rows, new ones as a beacon never heard."""
        for name, fill in _PER_BEACON_FILL.items():
            old: NDArray[Any] = getattr(self, name)
            more = np.full((capacity - old.shape[0], *old.shape[1:]), fill, dtype=old.dtype)
            setattr(self, name, np.concatenate([old, more]))
        self.tx_offsets.ensure(capacity)
        self.rivals.ensure(capacity)
        if self.parked is not None:
            self.parked.ensure(capacity)
        self.tracks.ensure(capacity)
        self.zones.ensure(capacity)

    def compact(self) -> None:
        """Reclaim the slots of forgotten beacons (_forget) now: every per-beacon structure is
        rebuilt without them, the others renumbered in the same order, with room for as many
        again (COMPACT_MIN_SLOTS at least). Nothing a tick computes changes: rows keep their
        order, and turns go by _serial. A tick calls it once forgotten slots are COMPACT_SHARE
        of those in use (_forget)."""
        n = len(self.beacon_ids)
        keep = np.flatnonzero(~self._forgotten[:n])
        if keep.shape[0] == n:
            return
        new_index = np.full(n, -1, dtype=np.int64)
        new_index[keep] = np.arange(keep.shape[0])
        self.beacon_ids = [self.beacon_ids[i] for i in keep.tolist()]
        self._beacon_index = {b: i for i, b in enumerate(self.beacon_ids)}
        self._reference_xy = {
            int(new_index[i]): spot for i, spot in self._reference_xy.items() if new_index[i] >= 0
        }
        for name in _PER_BEACON_FILL:
            setattr(self, name, getattr(self, name)[keep])
        self.tx_offsets.compact(keep)
        self.rivals.compact(keep)
        if self.parked is not None:
            self.parked.compact(keep)
        self.tracks.compact(keep)
        self.zones.compact(keep)
        self.window.renumber(new_index)
        # room for as many again, or for the forgotten slots that make the next compaction:
        # a steady churn then runs at one capacity, without a growth between compactions
        self._grow(keep.shape[0] + max(keep.shape[0], COMPACT_MIN_SLOTS))

    def ingest(self, readings: Readings) -> IngestCounts:
        """Accept samples of one gateway; returns what happened to them (also summed in counts)."""
        n = int(readings.b.shape[0])
        counts = IngestCounts()
        g = self._gw_index.get(readings.gateway)
        if g is None:
            counts.unknown_gateway = n
        else:
            # A dict lookup mapped in C for the known beacons, the Python path only for new ones:
            # per-beacon calls were half of a 10,000-beacon tick's cost at the hub.
            found = list(map(self._beacon_index.get, readings.beacons))
            if None in found:
                found = [
                    self.beacon_index(b) if i is None else i
                    for b, i in zip(readings.beacons, found, strict=True)
                ]
            local = np.array(found, dtype=np.int64)
            ok_rssi = (readings.rssi >= RSSI_MIN_DBM) & (readings.rssi <= RSSI_MAX_DBM)
            on_time = readings.t >= self.watermark - self.config.max_lateness_s
            keep = ok_rssi & on_time
            counts.impossible_rssi = int((~ok_rssi).sum())
            counts.late = int((ok_rssi & ~on_time).sum())
            counts.accepted = int(keep.sum())
            b = local[readings.b[keep]]
            t = readings.t[keep]
            has_tx = np.isfinite(readings.tx[keep])
            if has_tx.any():
                self._announce(b[has_tx], t[has_tx], readings.tx[keep][has_tx])
            self.window.add(t, b, np.full(b.shape[0], g, dtype=np.int64), readings.rssi[keep])
            np.maximum.at(self._last_heard, b, t)
        self.counts.accepted += counts.accepted
        self.counts.late += counts.late
        self.counts.unknown_gateway += counts.unknown_gateway
        self.counts.impossible_rssi += counts.impossible_rssi
        return counts

    def _announce(self, b: I64, t: F64, tx_dbm: F64) -> None:
        """Each beacon's announced power, relative to the site's default reference: the newest
        sample's by time, the highest of a time's, whatever order the gateways' batches come
        in (the last ingested won: a tag announcing -59 and -75 dBm in one tick was placed
        0.4 m apart and its accuracy 33 or 27 m by the order of five gateways)."""
        order = np.lexsort((tx_dbm, t, b))
        b, t, tx_dbm = b[order], t[order], tx_dbm[order]
        last = np.r_[b[1:] != b[:-1], True]
        b, t, tx_dbm = b[last], t[last], tx_dbm[last]
        offset = tx_dbm - self.site.radio.ref_rssi_1m_dbm
        held_t = self._announced_t[b]
        newer = (t > held_t) | ((t == held_t) & (offset > self._offset_db[b]))
        self._offset_db[b[newer]] = offset[newer]
        self._announced_t[b[newer]] = t[newer]
        self._announces[b] = True

    def resume(self, t: float) -> None:
        """Ticks of this site up to `t` were made before this engine (an earlier run of the
        hub stored them), so readings older than `t - max_lateness_s` are late, as they were
        for the engine that made those ticks. Without it a restarted engine took them in and
        no tick's window ever held them: counted as accepted, used by nothing."""
        self.watermark = max(self.watermark, t)

    # -------------------------------------------------------------------- tick

    def tick(self, t: float) -> TickResult:
        cfg = self.config
        self.watermark = max(self.watermark, t)
        self._forget(t)  # first: it may renumber the beacons
        est = self.window.estimate(
            t,
            target_samples=cfg.window_samples,
            min_window_s=cfg.tick_interval_s,
            window_s=cfg.window_s,
        )
        self.window.expire(t - self.window.window_s)
        if est.beacon.shape[0] == 0:
            return TickResult(self._empty(t), self._lost(t))
        idx, level, geo, static, t_meas = self._geometry(est)
        area = self._area[idx]
        # a track is followed on its own level only: on another, its prediction (projected onto
        # the new floor) and its zone are of the old one, so it starts afresh there
        tracked = cfg.tracking & np.isfinite(self.tracks.t[idx]) & (self._track_level[idx] == level)
        prior = np.full((idx.shape[0], 2), np.nan)
        predicted = None
        if tracked.any():
            t_idx = idx[tracked]
            # A window's estimate is true at its samples' mean time, about half a window ago:
            # the track is updated there and extrapolated to t, so a walker is not followed late.
            to = np.maximum(t_meas[tracked], self.tracks.t[t_idx])
            self.tracks.predict(t_idx, np.maximum(to - self.tracks.t[t_idx], 1e-3))
            self.tracks.t[t_idx] = to
            predicted = self.tracks.estimate(t_idx)
            prior[tracked] = predicted[0][:, [0, 2]]
        grid_prior = None
        if predicted is not None and cfg.grid_prior:
            grid_prior = (np.full((idx.shape[0], 2), np.nan), np.zeros((idx.shape[0], 2, 2)))
            grid_prior[0][tracked] = predicted[0][:, [0, 2]]
            grid_prior[1][tracked] = predicted[1][:, [0, 2]][:, :, [0, 2]] * PRIOR_INFLATION
        geo, geo_grid = self._with_body(
            geo, self._with_unheard(t, geo, level, prior, est), idx, prior
        )
        # with tracking, a beacon without a track yet searches wide (first_fix_search_m)
        fresh = ~tracked if cfg.tracking else np.zeros_like(tracked)
        if cfg.tracking:
            tracked, predicted = self._move_to_rivals(
                idx,
                tracked,
                geo_grid,
                level=level,
                area=area,
                prior=prior,
                grid_prior=grid_prior,
                predicted=predicted,
            )
        xy, cov = self._locate(geo, prior, level, area, grid_prior, fresh=fresh, geo_grid=geo_grid)
        self._learn_from_fixes(t, idx, geo, xy, est)
        speed, unfitted_share = (
            np.zeros(idx.shape[0]),
            _variance_share(geo, self.gw_unfitted_db[geo.gw]),
        )
        if not cfg.tracking:
            cov = cov * (1.0 + unfitted_share)[:, None, None]
        else:
            # Tracking averages the fast fading away, not the static part: keep that in accuracy.
            static_cov = cov * (_variance_share(geo, static) + unfitted_share)[:, None, None]

            def relocate(rows: NDArray[np.intp]) -> tuple[F64, F64]:
                # A track that lost lock restarts from the data alone, searched as a new
                # track's first fix is: this tick's grid posterior was weighed by the very
                # prediction that went wrong, and its equivalent measurement extrapolates far
                # beyond it (flat-calib2021 walk: a restart at x = -22 m, published at the
                # floor's corner 1.4 m off the path; now at 3.2, 5.0).
                return self._locate(
                    select_rows(geo, rows),
                    np.full((rows.shape[0], 2), np.nan),
                    level[rows],
                    area[rows],
                    None,
                    fresh=np.ones(rows.shape[0], dtype=bool),
                    geo_grid=select_rows(geo_grid, rows),
                )

            xy, cov, speed, vel, vel_cov = self._track(
                idx, tracked, t_meas, xy, cov, predicted=predicted, relocate=relocate, level=level
            )
            ahead = np.maximum(t - self.tracks.t[idx], 0.0)
            xy = xy + vel * ahead[:, None]
            # The extrapolation knows no walls: it overshoots at turns, and the nearest floor
            # to an overshoot is the wall. The fix is the mean of where the extrapolated
            # displacement (spread ahead^2 x the velocity covariance) can end on the floor.
            # Only that spread: the position at the measurement time is on the floor already,
            # through the grid likelihood, and truncating the whole track covariance weighs the
            # floor twice, pulling a beacon at a wall towards the room's middle (with the static
            # share too: robot 1.05 -> 1.14 m; the track's alone moves test_web's pallet at a
            # dock door out of its dock zone). Measured with the
            # restart above: flat-calib2021 walk 0.35 / 0.84 -> 0.33 / 0.71 m, robot unchanged
            # 1.046 / 1.88 m, path loss + tracking walk 0.84 / 1.65 -> 0.58 / 1.37 m; simulated
            # room walker (README, B) 0.54 / 0.90 -> 0.49 / 0.80 m (median / p90) at the same
            # 0.6 s latency.
            # A still pallet is shown in storage, not fed back to its track: searched there
            # too, a first fix in the wrong place locked in (simulated warehouse (F), 35 gateways: a
            # pallet 17 m off for 150 s at accuracy_m 0.5 m; parked p90 11.2 -> 12.5 m).
            area = self._areas(idx)
            xy = self._floor_mean(level, xy, vel_cov * (ahead**2)[:, None, None], area)
            cov = cov + static_cov
        # Onto the floor, one fix per sample too: the grid's fix is its likelihood's mean, which
        # a concave floor can hold outside (flat-calib2021 calibrated, one fix per sample: 6 of
        # 719 robot fixes up to 0.06 m off the floor, random readings up to 0.8 m).
        xy = self._project(level, xy, area)
        self._active[idx] = True
        accuracy = radius_68_m(cov) * self.residuals.factor()
        events = [
            Event(e.type, t, self.site.id, self.beacon_ids[e.beacon], e.zone, e.data)
            for e in self.zones.update(idx, t, level, xy, accuracy * self.accuracy_scale)
        ]
        if cfg.tracking:
            events.extend(self._pallet_moves(idx, t, xy, geo, level=level, area=area))
        events.extend(self._lost(t))
        self._update_references(t, idx, geo)
        table = FixTable(
            t=t,
            beacons=self._id_arr[idx].tolist(),
            x=xy[:, 0].copy(),
            y=xy[:, 1].copy(),
            accuracy_m=accuracy * self.accuracy_scale,
            level=level.astype(np.int64),
            zones=self.zones.zone_of(idx),
            kinds=self._kind_arr[idx].tolist(),
            speed_m_s=speed,
            gateway_slots=geo.gw,
            gateway_mask=geo.mask,
            gateway_ids=self.gateway_ids,
        )
        return TickResult(table, events)

    def _residual_chi2(self, t: float, geo: Geometry, xy: F64) -> F64:
        """The fixes' reduced chi-square for the site's residual factor (residuals.py).

        Tracked, `accuracy_m` is mostly the static share of the spread (tracking averages the
        rest), and only residuals averaged over a few samples a gateway tell a static field
        from fading: with one sample each, the room harness (no static field) at a tick and
        window of 0.2 s had a factor of 0.96 and 98.5 % of true positions within accuracy_m.
        So a tracked engine with a window shorter than RESIDUAL_FIT_WINDOW_S takes it on a
        least-squares fix to a window of that length, as the default engine does on its own.
        One fix per sample keeps its own: its accuracy_m is that one window's spread, which
        its own residuals measure. (B) at 0.2 s: 98.5 -> 73.6 % within, positions the same,
        replay 3.9 -> 4.5 s for the extra solve (2026-12-07)."""
        cfg = self.config
        map_fn = self._map_fn()
        if cfg.window_s >= RESIDUAL_FIT_WINDOW_S or not cfg.tracking:
            return reduced_chi2(geo, xy, map_fn)
        stride = -(-geo.gw.shape[0] // RESIDUAL_FIT_BEACONS)
        self._residual_turn += 1
        est = self.window.estimate(
            t,
            target_samples=RESIDUAL_FIT_SAMPLES,
            min_window_s=RESIDUAL_FIT_MIN_WINDOW_S,
            window_s=RESIDUAL_FIT_WINDOW_S,
            share=(stride, self._residual_turn % stride),
            turns=self._serial,
        )
        if est.beacon.shape[0] == 0:
            return np.zeros(0)
        _, _, geo_fit, _, _ = self._geometry(est)
        return reduced_chi2(geo_fit, solve(geo_fit, None, map_fn).xy, map_fn)

    def _learn_from_fixes(
        self, t: float, idx: I64, geo: Geometry, xy: F64, est: PairEstimates
    ) -> None:
        """What the tick's fixes leave unexplained: the spread of their residuals (the residual
        factor, residuals.py) and, where tx_offset says, their mean (txoffset.py), from the
        gateways predicted clear of their floor (TX_OFFSET_FLOOR_SD of the spreads the residuals
        show)."""
        self.residuals.observe(t, self._residual_chi2(t, geo, xy))
        mode = self._learn_tx
        if mode == "none":
            return
        learn = np.ones(idx.shape[0], dtype=bool) if mode == "all" else ~self._announces[idx]
        if self._reference_xy:
            learn &= ~np.isin(idx, np.fromiter(self._reference_xy, dtype=np.int64))
        rows = np.flatnonzero(learn)
        if rows.shape[0] == 0:
            return
        sub = select_rows(geo, rows)
        floor = np.minimum(self._receiver_floors(t, est)[sub.gw], TX_OFFSET_FLOOR_MAX_DBM)
        # A site quieter than the model says (its residuals' spread) leans less near the floor.
        # Never a higher cut than the model's: on the simulated store (spread ratio 1.12-1.2)
        # it left fewer gateways and placed worse (median / p90 3.36 / 7.63 -> 3.41 / 8.39 m).
        spread = min(self.residuals.spread_ratio(), 1.0)
        mean, var = mean_residual_db(
            sub,
            xy[rows],
            self._map_fn(),
            TX_OFFSET_MIN_GATEWAYS,
            above_dbm=floor + TX_OFFSET_FLOOR_SD * spread * sub.sd_db,
        )
        self.tx_offsets.update(t, idx[rows], mean, var)

    def _receiver_floors(self, t: float, est: PairEstimates) -> F64:
        """Each gateway's floor with tick `t`'s pair estimates `est` counted once, whoever
        asks first (the map likelihood's unheard gateways, the learnt tx power's cut)."""
        if self._floors_t != t:
            self._floors_t = t
            self.gw_floors.add(est.gateway, est.rssi_dbm)
        return self.gw_floors.dbm

    def _beacon_offset_db(self, idx: I64) -> F64:
        """What beacons `idx` add to their gateways' reference: announced and learnt power."""
        return np.asarray(self._offset_db[idx] + self.tx_offsets.offset_db[idx])

    def _geometry(self, est: PairEstimates) -> tuple[I64, I64, Geometry, F64, F64]:
        """Pad each beacon's gateways into (beacons, K) slots, strongest first in slot 0."""
        beacon, gw = est.beacon, est.gateway  # sorted by beacon already
        first = np.r_[True, beacon[1:] != beacon[:-1]]
        starts = np.flatnonzero(first)
        group = np.cumsum(first) - 1
        counts = np.diff(np.r_[starts, beacon.shape[0]])
        rank = np.arange(beacon.shape[0]) - starts[group]
        cap = MAX_GATEWAYS_PER_FIX_CALIBRATED if self._survey_map else MAX_GATEWAYS_PER_FIX
        if counts.max() > cap:
            # More gateways than slots: rank by RSSI so the strongest are kept.
            order = np.lexsort((-est.rssi_dbm, beacon))
            rank = np.empty_like(rank)
            rank[order] = np.arange(beacon.shape[0]) - starts[group[order]]
        keep = rank < cap
        idx = beacon[starts]
        shape = (idx.shape[0], int(min(cap, counts.max())))
        slot_g = np.zeros(shape, dtype=np.intp)
        slot_r = np.full(shape, -np.inf)
        slot_n = np.ones(shape)
        mask = np.zeros(shape, dtype=bool)
        rows, cols = group[keep], rank[keep]
        slot_g[rows, cols] = gw[keep]
        slot_r[rows, cols] = est.rssi_dbm[keep]
        slot_n[rows, cols] = est.samples[keep]
        mask[rows, cols] = True
        strongest = slot_g[np.arange(shape[0]), np.argmax(slot_r, axis=1)]
        slot_r[~mask] = 0.0
        # A beacon is on the level of its strongest gateway; other levels' gateways are ignored.
        level = self.gw_level[strongest]
        mask &= self.gw_level[slot_g] == level[:, None]
        static = self.gw_static_db[slot_g]
        if self._survey_map:
            static = static * MAP_STATIC_FACTOR
        geo = Geometry(
            gw=slot_g,
            gw_xy=self.gw_xy[slot_g],
            dz_m=self.gw_z[slot_g] - self._heights(idx)[:, None],
            ref_dbm=self.gw_ref[slot_g] + self._beacon_offset_db(idx)[:, None],
            exponent=self.gw_exp[slot_g],
            rssi_dbm=slot_r,
            sd_db=np.sqrt(static**2 + self.gw_fast_db[slot_g] ** 2 / slot_n),
            mask=mask,
        )
        # When the beacon's estimate is true: the mean of its pairs' sample times.
        t_meas = np.bincount(group, weights=est.mean_t, minlength=idx.shape[0]) / np.bincount(
            group, minlength=idx.shape[0]
        ).astype(np.float64)
        return idx, level, geo, static, t_meas

    def _locate(
        self,
        geo: Geometry,
        prior: F64,
        level: I64,
        area: NDArray[np.int8],
        grid_prior: tuple[F64, F64] | None,
        *,
        fresh: NDArray[np.bool_],
        geo_grid: Geometry,
    ) -> tuple[F64, F64]:
        """Multilateration on `geo`, then the map likelihood around it when a map is in use,
        on `geo_grid` (geo with its unheard gateways, _with_unheard)."""
        use_map = self.radio_map is not None and self.config.use_map and self._map_learned
        radio_map = self._map_fn()
        # The grid searches near this start, so it needs the plan's losses as much as least
        # squares does: `solver=grid` once started from path loss alone and, with the
        # warehouse's 10 dB racks, searched the wrong aisle (D: 8.23 m median, now 2.88).
        sol = solve(geo, prior, radio_map)
        xy = self._project(level, sol.xy, area)
        if self._grid_solver:
            table = None
            if radio_map is not None and self.radio_map is not None:
                table = self.radio_map.table(learned=use_map)
            sol = self._solve_grid(
                geo_grid, xy, level, area, table, grid_prior=grid_prior, fresh=fresh
            )
            xy = sol.xy
        return xy, sol.cov

    def _map_fn(self) -> MapFn | None:
        """What least squares adds to path loss: the learned map when in use, else the floor
        plan's losses alone, else nothing."""
        if self.radio_map is None:
            return None
        if self.config.use_map and self._map_learned:
            return self.radio_map.correction
        if self.plan_losses:
            return functools.partial(self.radio_map.correction, learned=False)
        return None

    def _move_to_rivals(
        self,
        idx: I64,
        tracked: NDArray[np.bool_],
        geo: Geometry,
        *,
        level: I64,
        area: NDArray[np.int8],
        prior: F64,
        grid_prior: tuple[F64, F64] | None,
        predicted: tuple[F64, F64] | None,
    ) -> tuple[NDArray[np.bool_], tuple[F64, F64] | None]:
        """Tracks whose rival basin won restart there (_rivals): from this tick's data alone,
        the local grid around the rival (`prior` and `grid_prior` are changed in place) instead
        of the wide search; their zone settles (ZoneTracker.hold). Returns which rows still
        have a track, and their predictions."""
        self.rivals.forget(idx[~tracked])
        if self.parked is not None:
            self.parked.end(idx[~tracked])
        jump, rival = self._rivals(idx, tracked, geo, level=level, area=area, prior=prior)
        if jump.shape[0] == 0:
            return tracked, predicted
        if predicted is not None:
            keep = ~np.isin(np.flatnonzero(tracked), jump)
            predicted = (predicted[0][keep], predicted[1][keep])
        tracked = tracked.copy()
        tracked[jump] = False
        self.zones.hold(idx[jump], self.watermark)
        prior[jump] = rival
        if grid_prior is not None:
            grid_prior[0][jump], grid_prior[1][jump] = np.nan, 0.0
        return tracked, predicted

    def _rivals(
        self,
        idx: I64,
        tracked: NDArray[np.bool_],
        geo: Geometry,
        *,
        level: I64,
        area: NDArray[np.int8],
        prior: F64,
    ) -> tuple[NDArray[np.intp], F64]:
        """Rows whose track moves to its rival basin this tick, and the rivals' points
        (basins.py): the held rivals are weighed against the tracks' predictions `prior`, and
        this tick's share of the tracks is searched within basin_search_m for new ones; and
        still pallets whose summed windows put them elsewhere (_parked_moves)."""
        jump, rival = np.zeros(0, dtype=np.intp), np.zeros((0, 2))
        if not self._grid_solver:
            return jump, rival
        table = self._likelihood_table()
        if self._rival_offsets is not None:
            heard = geo.mask.sum(axis=1)
            rows = np.flatnonzero(tracked & (heard >= 2))
            held = rows[self.rivals.held(idx[rows])]
            if held.shape[0]:
                # each scored by the best point near it (RIVAL_LOCAL_M), not the point itself
                near = (geo, level, area, table, _RIVAL_LOCAL)
                _, rival_ll = self._best_near(held, self.rivals.xy[idx[held]], *near)
                _, track_ll = self._best_near(held, prior[held], *near)
                self.rivals.weigh(idx[held], rival_ll - track_ll)
            due = rows[self.rivals.due(self._serial[idx[rows]])]
            offsets = self._rival_offsets
            mode, _ = self._best_near(due, prior[due], geo, level, area, table, offsets)
            self.rivals.offer(idx[due], mode, prior[due])
            win, points = self.rivals.winners(idx[rows], heard[rows])
            jump, rival = rows[win], points
        parked, spots = self._parked_moves(idx, tracked, geo, level=level, prior=prior, table=table)
        if parked.shape[0]:
            # the summed windows outweigh one rival's decayed lead
            keep = ~np.isin(jump, parked)
            jump, rival = np.r_[jump[keep], parked], np.r_[rival[keep], spots]
        return jump, rival

    def _parked_moves(
        self,
        idx: I64,
        tracked: NDArray[np.bool_],
        geo: Geometry,
        *,
        level: I64,
        prior: F64,
        table: MapTable | None,
    ) -> tuple[NDArray[np.intp], F64]:
        """Rows of still pallets whose summed windows put them elsewhere (basins.ParkedEvidence),
        and where; their parked spot, if any, moves along (the pallet did not: our idea of its
        spot did, and pallet_moved must not take the jump for a departure)."""
        none = (np.zeros(0, dtype=np.intp), np.zeros((0, 2)))
        ev = self.parked
        if ev is None:
            return none
        rows = np.flatnonzero(tracked & (self._kind_code[idx] == PALLET))
        b = idx[rows]
        still = self.tracks.mu[b, 0]
        # the spell is the pallet's, not the track's: it outlasts the track's jumps and
        # restarts; it ends when the track is sure, tick after tick, that the pallet is being
        # carried (ParkedEvidence.carried), or when its recent windows contradict it (add)
        ev.carried(b, still)
        ev.end(b[ev.holds(b) & (ev.level[b] != level[rows])])
        # the spell begins where the track is once it has been still PARKED_BEGIN_S: a first
        # fix is often metres off (the disc would miss the spot), a settled track less so
        settled = self.watermark - self._still_since[b] >= PARKED_BEGIN_S
        start = ~ev.holds(b) & (still > 0.5) & settled
        ev.begin(b[start], prior[rows[start]], level[rows[start]])
        due = rows[ev.holds(b) & ev.due(self._serial[b])]
        area = STORAGE if self.config.traffic_zones else FLOOR
        for lv in np.unique(level[due]):
            part = due[level[due] == lv]
            allowed = None
            if int(lv) in self.plan.levels:
                allowed = functools.partial(self.plan.allowed, int(lv), area=area)
            sub = select_rows(geo, part)
            ev.add(
                idx[part],
                grid_loglik(
                    sub,
                    ev.centre[idx[part]],
                    table,
                    allowed,
                    ev.offsets,
                    workers=self._grid_workers,
                ),
            )
        # only a track that is more likely still than moving is moved: one being carried is
        # where its data say
        calm = np.flatnonzero(still > 0.5)
        win, spots = ev.winners(b[calm], prior[rows[calm]])
        moved = b[calm[win]]
        has_spot = np.isfinite(self._parked_xy[moved, 0])
        self._parked_xy[moved[has_spot]] = spots[has_spot]
        return rows[calm[win]], spots

    @property
    def _survey_map(self) -> bool:
        """A calibration's map is in use: the grid likelihood (solver auto), every gateway heard."""
        return self._map_calibrated and self.config.use_map

    @property
    def _sums_parked(self) -> bool:
        """Still pallets' windows are summed (ParkedEvidence): only where _parked_moves reads
        them, with tracks and the grid solver's likelihood. It held 6 bytes a candidate for
        every beacon, 108 MB at 10,000, which the hub's benchmark (uncalibrated, least squares)
        carried unread, 248 -> 420 MB resident (2026-12-07); the sums are held per still
        pallet's spell since, but no work is done for what nothing reads."""
        return self.config.parked_search_m > 0 and self.config.tracking and self._grid_solver

    @property
    def _grid_solver(self) -> bool:
        """Fixes come from the likelihood over the map grid (and rival basins are searched)."""
        return self.config.solver == "grid" or (self.config.solver == "auto" and self._survey_map)

    def _likelihood_table(self) -> MapTable | None:
        """The map the grid's likelihood reads: the learned one when in use, else the
        floor-plan losses alone, else none (path loss only)."""
        if self.radio_map is None:
            return None
        return self.radio_map.table(
            learned=self.config.use_map and self._map_learned,
        )

    def _best_near(  # noqa: PLR0917  # the grid's inputs, passed through
        self,
        rows: NDArray[np.intp],
        points: F64,
        geo: Geometry,
        level: I64,
        area: NDArray[np.int8],
        table: MapTable | None,
        offsets: F64,
    ) -> tuple[F64, F64]:
        """The most likely candidate among `offsets` around each point (beacon `rows` of
        `geo`) on the beacon's area of its level, and its log-likelihood (grid_mode)."""
        mode, loglik = points.copy(), np.empty(rows.shape[0])
        for lv, a in itertools.product(np.unique(level[rows]), np.unique(area[rows])):
            part = np.flatnonzero((level[rows] == lv) & (area[rows] == a))
            allowed = None
            if int(lv) in self.plan.levels:
                allowed = functools.partial(self.plan.allowed, int(lv), area=int(a))
            sub = select_rows(geo, rows[part])
            mode[part], loglik[part] = grid_mode(
                sub, points[part], table, allowed, offsets, workers=self._grid_workers
            )
        return mode, loglik

    def _heights(self, idx: I64) -> F64:
        """Each beacon's mounting height: its kind's, or the override of the zone it was last
        placed in (a pallet on an upper beam of reserve racking)."""
        height = self._height[idx]
        if self._zone_height is None:
            return height
        zone = self.zones.current[idx]
        zone = np.where(zone >= 0, zone, self._zone_height.shape[0] - 1)
        kind = self._kind_code[idx]
        over = self._zone_height[zone, np.maximum(kind, 0)]
        return np.where((kind >= 0) & np.isfinite(over), over, height)

    def _areas(self, idx: I64) -> NDArray[np.int8]:
        """Each beacon's area once this tick's tracks are updated: a pallet whose track is more
        likely still than moving is kept in STORAGE (set down in an aisle, it is shown at the
        nearest storage place)."""
        area = self._area[idx].copy()
        if self.config.traffic_zones:
            still = self.tracks.mu[idx, 0] > 0.5
            area[(self._kind_code[idx] == PALLET) & still] = STORAGE
        return area

    def _project(self, level: I64, xy: F64, area: NDArray[np.int8]) -> F64:
        out = xy.copy()
        for lv in np.unique(level):
            on = level == lv
            if int(lv) in self.plan.levels:
                out[on] = self.plan.project(int(lv), xy[on], area[on])
        return out

    def _floor_mean(self, level: I64, xy: F64, cov: F64, area: NDArray[np.int8]) -> F64:
        """Mean of each Gaussian N(xy, cov) restricted to the beacon's area, from a fixed set
        of points out to 3 sd; unchanged where none of them is in the area or the level has no
        plan, where 3 sd stay within one cell of the floor plan (a still beacon's
        extrapolation: most of a warehouse's pallets), and where the whole 3-sd disc is clear
        of the area's edges (FloorPlan.clearance_m)."""
        spread = np.sqrt(np.maximum(cov[:, 0, 0], 0.0) + np.maximum(cov[:, 1, 1], 0.0))
        out = xy.copy()
        wide = FLOOR_MEAN_RADIUS_SD * spread
        # Where the whole 3-sd disc lies on the floor the mean is the point itself: only the
        # few beacons near a wall or shelf need the points (10,000 in an open hall: 12 -> 1 ms).
        near_edge = wide > self._plan_step_m
        for lv, a in itertools.product(np.unique(level), np.unique(area)):
            rows = np.flatnonzero(near_edge & (level == lv) & (area == a))
            if rows.shape[0] and int(lv) in self.plan.levels:
                clear = self.plan.clearance_m(int(lv), xy[rows], int(a))
                near_edge[rows] = clear <= wide[rows] + 1.5 * self._plan_step_m
        some = np.flatnonzero(near_edge)
        if some.shape[0] == 0:
            return out
        xy, cov, level, area = xy[some], cov[some], level[some], area[some]
        # Cholesky factor of each 2x2 covariance, written out
        l00 = np.sqrt(np.maximum(cov[:, 0, 0], 1e-12))
        l10 = cov[:, 1, 0] / l00
        l11 = np.sqrt(np.maximum(cov[:, 1, 1] - l10 * l10, 1e-12))
        u = _FLOOR_MEAN_UNIT
        pts = np.empty((xy.shape[0], u.shape[0], 2))
        pts[..., 0] = xy[:, 0:1] + l00[:, None] * u[None, :, 0]
        pts[..., 1] = xy[:, 1:2] + l10[:, None] * u[None, :, 0] + l11[:, None] * u[None, :, 1]
        on = np.ones(pts.shape[:2], dtype=bool)
        for lv, a in itertools.product(np.unique(level), np.unique(area)):
            rows = np.flatnonzero((level == lv) & (area == a))
            if rows.shape[0] and int(lv) in self.plan.levels:
                inside = self.plan.allowed(int(lv), pts[rows].reshape(-1, 2), int(a))
                on[rows] = inside.reshape(rows.shape[0], -1)
        w = on * _FLOOR_MEAN_WEIGHT[None, :]
        total = w.sum(axis=1)
        mean = np.einsum("bc,bci->bi", w, pts) / np.maximum(total, 1e-300)[:, None]
        out[some] = np.where((total > 0)[:, None], mean, xy)
        return out

    def _with_unheard(
        self, t: float, geo: Geometry, level: I64, prior: F64, est: PairEstimates
    ) -> Geometry:
        """`geo` with unheard_gateways more slots per beacon for the map likelihood: the
        gateways nearest to its track's prediction `prior` (n, 2; NaN rows: to the weighted
        centroid of those that heard it) on its level among those up (that heard some beacon
        in the window `est`) that did not hear it, at their floor (Geometry.unheard). Fewer
        where fewer qualify; `geo` itself without the grid solver or with unheard_gateways 0."""
        if not self._grid_solver or self.config.unheard_gateways == 0:
            return geo
        floor = self._receiver_floors(t, est)
        up = np.unique(est.gateway)
        near = np.where(np.isnan(prior), weighted_centroid(geo), prior)
        n, n_gw = geo.gw.shape[0], self.gw_xy.shape[0]
        ok = np.zeros((n, n_gw), dtype=bool)
        ok[:, up] = True
        ok &= (self.gw_level[None, :] == level[:, None]) & np.isfinite(floor)
        rows = np.broadcast_to(np.arange(n)[:, None], geo.gw.shape)
        ok[rows[geo.mask], geo.gw[geo.mask]] = False  # it heard these
        d2 = ((near[:, None, :] - self.gw_xy[None, :, :]) ** 2).sum(axis=2)
        d2[~ok] = np.inf
        k = min(self.config.unheard_gateways, n_gw)
        slot_g = np.argpartition(d2, k - 1, axis=1)[:, :k] if k < n_gw else np.argsort(d2, axis=1)
        use = np.isfinite(np.take_along_axis(d2, slot_g, axis=1))
        static = self.gw_static_db[slot_g] * (MAP_STATIC_FACTOR if self._survey_map else 1.0)
        # a beacon's own height and tx offset, from its first slot (always a heard gateway)
        height = self.gw_z[geo.gw[:, 0]] - geo.dz_m[:, 0]
        offset = geo.ref_dbm[:, 0] - self.gw_ref[geo.gw[:, 0]]
        # Right after each beacon's last heard slot, not after every beacon's K: the likelihood
        # skips a beacon's slots past its last used one (_neg_cost), and a warehouse pallet
        # heard by 3 of 32 would otherwise evaluate all 40 ((F)'s replay 75 -> 50 s).
        last = np.where(geo.mask, np.arange(geo.mask.shape[1]), -1).max(axis=1)
        pos = last[:, None] + 1 + np.arange(k)[None, :]
        width = int(pos.max()) + 1 if n else geo.mask.shape[1]

        def placed(heard: NDArray[Any], extra: NDArray[Any], fill: object) -> NDArray[Any]:
            out = np.full((n, width, *heard.shape[2:]), fill, dtype=heard.dtype)
            cols = min(width, heard.shape[1])
            out[:, :cols] = heard[:, :cols]
            out[np.arange(n)[:, None], pos] = extra
            return out

        return Geometry(
            gw=placed(geo.gw, slot_g, 0),
            gw_xy=placed(geo.gw_xy, self.gw_xy[slot_g], 0.0),
            dz_m=placed(geo.dz_m, self.gw_z[slot_g] - height[:, None], 0.0),
            ref_dbm=placed(geo.ref_dbm, self.gw_ref[slot_g] + offset[:, None], 0.0),
            exponent=placed(geo.exponent, self.gw_exp[slot_g], 1.0),
            rssi_dbm=placed(geo.rssi_dbm, np.where(use, floor[slot_g], 0.0), 0.0),
            # one sample's spread: nothing was averaged
            sd_db=placed(geo.sd_db, np.sqrt(static**2 + self.gw_fast_db[slot_g] ** 2), 1.0),
            mask=placed(geo.mask, use, False),
            unheard=placed(np.zeros(geo.mask.shape, dtype=bool), use, False),
        )

    def _with_body(
        self, geo: Geometry, geo_grid: Geometry, idx: I64, prior: F64
    ) -> tuple[Geometry, Geometry]:
        """`geo` and `geo_grid` expecting a kind's body_loss_db on the paths from the track's
        prediction `prior` that a person behind the tag shadows (obstruction.body_shadowed),
        where its track has a heading and someone is still there: a cart moved by hand has
        someone; one that stands may have been left (returned to the corral), so each tick
        weighs the window's log-likelihood at the prediction with the body against without,
        decayed as the rival basins' evidence is, and the body is expected while the sum is
        positive. Without such beacons, the geometries themselves."""
        loss = self._body_db[idx]
        rows = np.flatnonzero((loss > 0) & np.isfinite(self._heading[idx]) & ~np.isnan(prior[:, 0]))
        if rows.shape[0] == 0:
            return geo, geo_grid

        def shadowing(g: Geometry) -> F64:
            shadowed = body_shadowed(
                g.gw_xy[rows] - prior[rows][:, None, :],
                g.dz_m[rows],
                self._height[idx[rows]][:, None],
                self._heading[idx[rows]][:, None],
            )
            return np.where(shadowed, loss[rows][:, None], 0.0)

        def with_loss(g: Geometry, at: NDArray[np.intp], db: F64) -> Geometry:
            ref = g.ref_dbm.copy()
            ref[rows[at]] -= db[at]
            return dataclasses.replace(g, ref_dbm=ref)

        grid_db = shadowing(geo_grid)
        table, here = self._likelihood_table(), np.zeros((1, 2))
        sub = select_rows(geo_grid, rows)
        _, ll_none = grid_mode(sub, prior[rows], table, None, here)
        body = dataclasses.replace(sub, ref_dbm=sub.ref_dbm - grid_db)
        _, ll_body = grid_mode(body, prior[rows], table, None, here)
        b = idx[rows]
        self._body_nats[b] = RIVAL_DECAY * self._body_nats[b] + (ll_body - ll_none)
        there = np.flatnonzero(self._body_nats[b] > 0)
        geo_grid = with_loss(geo_grid, there, grid_db)
        geo = with_loss(geo, there, shadowing(geo))
        return geo, geo_grid

    def _update_headings(self, idx: I64, tracked: NDArray[np.bool_], vel: F64) -> None:
        """A body-shadowed beacon's heading: its track's direction while it moves faster than
        HEADING_MIN_SPEED_M_S, kept while it stands (a shopper stops behind the cart); a new
        track has none until it moves."""
        rows = np.flatnonzero(self._body_db[idx] > 0)
        if rows.shape[0] == 0:
            return
        self._heading[idx[rows[~tracked[rows]]]] = np.nan
        v = vel[rows]
        moving = rows[np.hypot(v[:, 0], v[:, 1]) > HEADING_MIN_SPEED_M_S]
        self._heading[idx[moving]] = np.arctan2(vel[moving, 1], vel[moving, 0])
        self._body_nats[idx[moving]] = BODY_MOVING_NATS

    def _solve_grid(
        self,
        geo: Geometry,
        start: F64,
        level: I64,
        area: NDArray[np.int8],
        radio_map: MapTable | None,
        *,
        grid_prior: tuple[F64, F64] | None,
        fresh: NDArray[np.bool_],
    ) -> Solution:
        """The map likelihood per (level, area) group, so each group gets its mask."""
        n = start.shape[0]
        xy = np.empty((n, 2))
        cov = np.empty((n, 2, 2))
        # beacons without a track search wide (first_fix_search_m), the others locally
        wide = fresh if self._wide_offsets is not None else np.zeros(n, dtype=bool)
        for lv, a, searching in itertools.product(np.unique(level), np.unique(area), (False, True)):
            rows = np.flatnonzero((level == lv) & (area == a) & (wide == searching))
            if rows.shape[0] == 0:
                continue
            allowed = None
            if int(lv) in self.plan.levels:
                allowed = functools.partial(self.plan.allowed, int(lv), area=int(a))
            part_prior = None
            if grid_prior is not None and not searching:
                part_prior = (grid_prior[0][rows], grid_prior[1][rows])
            part = solve_grid(
                select_rows(geo, rows),
                start[rows],
                radio_map,
                allowed,
                offsets=self._wide_offsets if searching else None,
                prior=part_prior,
                workers=self._grid_workers,
            )
            xy[rows], cov[rows] = part.xy, part.cov
        return Solution(xy=xy, cov=cov, used=geo.mask.sum(axis=1).astype(np.int64))

    def _track(
        self,
        idx: I64,
        tracked: NDArray[np.bool_],
        t: F64,
        z: F64,
        r: F64,
        *,
        predicted: tuple[F64, F64] | None,
        level: I64,
        relocate: Callable[[NDArray[np.intp]], tuple[F64, F64]] | None = None,
    ) -> tuple[F64, F64, F64, F64, F64]:
        """IMM update at each beacon's measurement time (and the headings it gives,
        _update_headings); returns position, its covariance, speed, velocity and its
        covariance. `relocate(rows)` measures the rows whose track restarts afresh, without the
        prediction that weighed z and r; their zone settles (ZoneTracker.hold). `level`: each
        beacon's level this tick, which its track is on from now."""
        tracks = self.tracks
        self._track_level[idx] = level
        m = mode_transition(self.config.tick_interval_s, tracks.params)
        t_idx = idx[tracked]
        restart = np.zeros(idx.shape[0], dtype=bool)
        if t_idx.shape[0]:
            d2 = tracks.innovation(t_idx, z[tracked], r[tracked], predicted)
            accept = d2 <= GATE_CHI2_2DOF
            tracks.rejected[t_idx[accept]] = 0
            tracks.rejected[t_idx[~accept]] += 1
            # Three refusals in a row: the beacon really went elsewhere (or the track was wrong).
            lost_lock = tracks.rejected[t_idx] >= 3
            rows = np.flatnonzero(tracked)
            upd = accept
            if upd.any():
                tracks.update(t_idx[upd], z[rows[upd]], r[rows[upd]], m)
            restart[rows[lost_lock]] = True
        new = ~tracked | restart
        self.zones.hold(idx[restart], self.watermark)
        if relocate is not None and restart.any():
            rows = np.flatnonzero(restart)
            z, r = z.copy(), r.copy()
            z[rows], r[rows] = relocate(rows)
        if new.any():
            kinds = self._kind_arr[idx[new]].tolist()
            still = np.array([0.8 if k in ("pallet", "reference") else 0.3 for k in kinds])
            mu = np.c_[still, 1.0 - still]
            tracks.start(idx[new], t[new], z[new], r[new], mu=mu, m=m)
        x, p = tracks.estimate(idx)
        xy = x[:, [0, 2]]
        cov = p[:, [0, 2]][:, :, [0, 2]]
        vel = x[:, [1, 3]]
        self._update_headings(idx, tracked, vel)
        vel_cov = p[:, [1, 3]][:, :, [1, 3]]
        return xy, cov, np.hypot(vel[:, 0], vel[:, 1]), vel, vel_cov

    def _pallet_moves(
        self, idx: I64, t: float, xy: F64, geo: Geometry, *, level: I64, area: NDArray[np.int8]
    ) -> list[Event]:
        """A pallet parked for parked_after_s whose fix is moved_m from its spot, and whose
        readings have stopped fitting the spot: pallet_moved.

        The fix alone says little: a parked pallet's fix strays metres from its spot (a p90 of
        6 m calibrated), and the distance rule fired 1,039 pallet_moved in 480 s of the
        simulated warehouse with 26 real departures (11 found). So the window's best
        log-likelihood near the fix minus the best near the parked spot (RIVAL_LOCAL_M) adds up,
        decayed as the rival basins' is, and the pallet has moved once it leads by MOVED_NATS.
        """
        cfg = self.config
        events: list[Event] = []
        is_pallet = self._kind_code[idx] == PALLET
        if not is_pallet.any():
            return events
        p_rows = np.flatnonzero(is_pallet)
        p_idx = idx[is_pallet]
        p_xy = xy[is_pallet]
        still = self.tracks.mu[p_idx, 0] > 0.5
        parked = self._parked_xy[p_idx]
        has_spot = np.isfinite(parked[:, 0])
        since = self._still_since[p_idx]
        # Start or continue a still period; park after parked_after_s.
        start = still & np.isnan(since)
        self._still_since[p_idx[start]] = t
        self._still_since[p_idx[~still & ~has_spot]] = np.nan
        settle = still & ~has_spot & (t - self._still_since[p_idx] >= cfg.parked_after_s)
        self._parked_xy[p_idx[settle]] = p_xy[settle]
        self._move_nats[p_idx[settle]] = 0.0
        far = has_spot & (np.linalg.norm(p_xy - parked, axis=1) > cfg.moved_m)
        # evidence is weighed only while the fix is far (the cheap test first: 9,000 parked
        # pallets weighed every tick cost 49 ms a tick); near, what was gathered fades
        self._move_nats[p_idx[has_spot]] *= RIVAL_DECAY
        if far.any():
            near = (geo, level, area, self._likelihood_table(), _RIVAL_LOCAL)
            _, at_fix = self._best_near(p_rows[far], p_xy[far], *near)
            _, at_spot = self._best_near(p_rows[far], parked[far], *near)
            self._move_nats[p_idx[far]] += at_fix - at_spot
        moved = far & (self._move_nats[p_idx] >= MOVED_NATS)
        for row in np.flatnonzero(moved):
            b = int(p_idx[row])
            events.append(
                Event(
                    "pallet_moved",
                    t,
                    self.site.id,
                    self.beacon_ids[b],
                    None,
                    {
                        "from_x": float(parked[row, 0]),
                        "from_y": float(parked[row, 1]),
                        "x": float(p_xy[row, 0]),
                        "y": float(p_xy[row, 1]),
                    },
                )
            )
            self._parked_xy[b] = np.nan
            self._still_since[b] = np.nan
            if self.parked is not None:
                self.parked.end(np.array([b]))
        return events

    def _lost(self, t: float) -> list[Event]:
        n = len(self.beacon_ids)
        silent = self._active[:n] & (self._last_heard[:n] < t - self.config.lost_after_s)
        lost = np.flatnonzero(silent)
        if lost.shape[0] == 0:
            return []
        self._active[lost] = False
        self.tracks.drop(lost)
        self.zones.forget(lost)
        self._parked_xy[lost] = np.nan
        self._still_since[lost] = np.nan
        if self.parked is not None:
            self.parked.end(lost)
        return [
            Event(
                "beacon_lost",
                t,
                self.site.id,
                self.beacon_ids[i],
                None,
                {"last_heard": float(self._last_heard[i])},
            )
            for i in lost
        ]

    def _forget(self, t: float) -> None:
        """Before tick t: beacons lost (beacon_lost fired) and silent for forget_after_s more
        are forgotten. Their ids are free (heard again, a forgotten beacon is a new one) and
        their slots idle until compact(), which runs once they are COMPACT_SHARE of the slots
        in use. Never a beacon with a sample the window could still hold (a window longer than
        the silence: the samples go first)."""
        n = len(self.beacon_ids)
        cfg = self.config
        since = min(t - cfg.lost_after_s - cfg.forget_after_s, t - self.window.window_s)
        gone = np.flatnonzero(
            ~self._active[:n] & ~self._forgotten[:n] & (self._last_heard[:n] < since)
        )
        self._forgotten[gone] = True
        for i in gone.tolist():
            del self._beacon_index[self.beacon_ids[i]]
        if int(self._forgotten[:n].sum()) >= max(COMPACT_MIN_SLOTS, COMPACT_SHARE * n):
            self.compact()

    def _update_references(self, t: float, idx: I64, geo: Geometry) -> None:
        """Reference beacons at known positions teach the live radio map what the model misses."""
        if self.radio_map is None or not self._reference_xy:
            return
        if t - self._last_reference_update < self.config.reference_update_s:
            return
        self._last_reference_update = t
        gws: list[NDArray[np.intp]] = []
        xys: list[F64] = []
        res: list[F64] = []
        for row, b in enumerate(idx):
            ref = self._reference_xy.get(int(b))
            if ref is None:
                continue
            on = geo.mask[row]
            g = geo.gw[row][on]
            d = np.sqrt(
                (self.gw_xy[g, 0] - ref[0]) ** 2
                + (self.gw_xy[g, 1] - ref[1]) ** 2
                + (self.gw_z[g] - ref[2]) ** 2
            )
            mu = mean_rssi_dbm(d, geo.ref_dbm[row][on], geo.exponent[row][on])
            gws.append(g)
            xys.append(np.tile([ref[0], ref[1]], (g.shape[0], 1)))
            res.append(geo.rssi_dbm[row][on] - mu)
        if gws:
            # A calibrated map keeps its evidence; a map learnt live forgets over about an hour.
            keep = (
                1.0 if self._map_calibrated else math.exp(-self.config.reference_update_s / 3600.0)
            )
            self.radio_map.observe(
                np.concatenate(gws), np.concatenate(xys), np.concatenate(res), keep
            )

    def _empty(self, t: float) -> FixTable:
        empty_f = np.zeros(0)
        return FixTable(
            t=t,
            beacons=[],
            x=empty_f,
            y=empty_f,
            accuracy_m=empty_f,
            level=np.zeros(0, dtype=np.int64),
            zones=[],
            kinds=[],
            speed_m_s=empty_f,
            gateway_slots=np.zeros((0, 1), dtype=np.intp),
            gateway_mask=np.zeros((0, 1), dtype=bool),
            gateway_ids=self.gateway_ids,
        )
