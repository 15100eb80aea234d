"""`beacon-hub eval`: how far fixes are from the truth, and how honest and steady they are.

Two references:

- a truth CSV (`t,beacon,x,y[,z,level,zone]`, DESIGN.md): each beacon's true position is
  interpolated linearly in time to each of its fixes' times. A fix is *scored* only when its time
  lies within its beacon's truth span and the two truth samples around it are at most
  `TRUTH_MAX_GAP_S` apart; other fixes are counted (`unscored_*`), never guessed at.
- a path CSV: the route a person walked, as straight segments, one per row, header
  `x0,y0,x1,y1` (metres, site frame; the segments need not join, the route may branch):

      x0,y0,x1,y1
      1.46,6.24,0.28,6.24
      0.28,6.24,0.28,3.6

  Every fix is scored by its distance to the nearest segment. That distance is a lower bound of
  the true error (the walker was somewhere on the path, not necessarily at the nearest point), so
  path statistics are optimistic and `within_accuracy` is an upper bound; time-based figures
  (latency, coverage, truth zones) are null.

Errors are planar (x, y) in metres; `z` and `level` are not compared. Percentiles interpolate
linearly between order statistics (numpy's default, Hyndman-Fan type 7): errors 0..9 m give a
median of 4.5 m and a p90 of 8.1 m.

The summary (JSON on stdout, `summary.json` under `--report`; docs/evaluation.md has the
full table) holds `mode`; counts `fixes`, `scored`, `unscored_no_truth`,
`unscored_outside_span`, `unscored_truth_gap`, `beacons`, `beacons_scored`; the error
statistics `median_m`, `p90_m`, `p95_m`, `mean_m`, `max_m` of the scored fixes;
`within_accuracy`, the share of scored fixes whose error is at most their `accuracy_m` (an
honest 68 % radius gives about 0.68); `zone_accuracy`, the share of scored fixes whose zone
equals the true zone (no zone equals no zone), with `zone_source` `truth` (the truth CSV's
zone column, from the truth sample nearest in time) or `site` (the site's zone polygons at the
interpolated true position) or null; `zone_accuracy_outside_band` over the fixes whose true
position is more than `band_m` from every zone edge (needs a site); `zone_flaps` and
`zone_flaps_per_beacon_hour`; scores of beacons standing still (`still_*`: errors once still
for `STILL_AFTER_S`, zone flaps while still; `bay_accuracy` and `bay_or_neighbour_accuracy` of
settled fixes in bays); with `--events`, `moves_*`, pallet_moved events scored against the
truth's departures (pallet_moves); `latency_s` and `latency_beacons`; and `coverage`, the share
of truth samples with a fix of the same beacon within `COVERAGE_WINDOW_S`. Undefined figures
(no site, path mode, no moving truth) are null.

Zone flap: per beacon in time order, consecutive fixes with the same zone (None is a zone too:
"outside every zone") form a run. A run is a flap when the runs before and after it have the
same zone and it lasted at most `FLAP_WINDOW_S`, measured from its first fix to the first fix
of the next run: A A B A counts one flap if B lasted <= 10 s, A B C none, A B A B A three.
Beacon-hours are the sum over beacons of (last fix time - first fix time).

Latency: for each beacon with at least `LATENCY_MIN_FIXES` scored fixes taken while the truth
moved at `MOVING_SPEED_M_S` or faster, the shift tau in `LATENCY_SHIFTS_S` minimising the mean
distance between fix(t) and truth(t - tau); `latency_s` is the median of these taus over beacons
(positive: fixes trail the truth). Null when no beacon qualifies (a parked or slow robot).
"""

from __future__ import annotations

import csv
import functools
import io
import json
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
from numpy.typing import NDArray

from beacon_hub.csvfiles import (
    EventRow,
    OutputFile,
    TruthPoint,
    read_events,
    read_fixes,
    read_truth,
)
from beacon_hub.errors import BeaconHubError
from beacon_hub.site import Site, Zone, load_site
from beacon_hub.wire import Fix

__all__ = [
    "BAND_M",
    "COVERAGE_WINDOW_S",
    "FLAP_WINDOW_S",
    "GATEWAY_GROUPS",
    "LATENCY_MIN_FIXES",
    "LATENCY_SHIFTS_S",
    "MOVING_SPEED_M_S",
    "NEIGHBOUR_GAP_M",
    "PATH_COLUMNS",
    "STILL_AFTER_S",
    "STILL_SPEED_M_S",
    "TRUTH_MAX_GAP_S",
    "Evaluation",
    "EvaluationError",
    "by_gateways",
    "error_statistics",
    "evaluate_path",
    "evaluate_truth",
    "neighbour_zones",
    "path_distance_m",
    "points_in_polygon",
    "read_path",
    "run_eval",
    "write_path",
    "write_report",
    "zone_edge_distance_m",
    "zone_flaps",
    "zones_at",
]

FloatArray = NDArray[np.float64]

PATH_COLUMNS = ("x0", "y0", "x1", "y1")
"""Header of a path CSV: one straight segment per row (flat-calib2021's path_reference.csv)."""

BAND_M = 1.0
"""Default band around zone edges left out of `zone_accuracy_outside_band`: about the 1-2 m
error of BLE positioning, inside which a zone call is a coin toss for any engine."""

TRUTH_MAX_GAP_S = 5.0
"""Truth samples further apart than this are not interpolated between: at walking speed
(about 1.3 m/s) 5 s is 6 m, beyond which a straight line between samples is a guess. Truth files
here are sampled every 1/3 s (flat-calib2021) or every tick (the simulator)."""

FLAP_WINDOW_S = 10.0
"""A zone visit this short that returns to where it came from is a flap: nobody goes into a
zone and back within 10 s often, while position noise at a zone edge does it every few ticks."""

COVERAGE_WINDOW_S = 1.0
"""A truth sample is covered when its beacon has a fix within this long of it: one engine tick
(DESIGN.md: `tick_interval_s` defaults to 1)."""

MOVING_SPEED_M_S = 0.3
"""True speed from which a fix counts as taken while moving, for latency: a slow walk is about
0.5 m/s; below 0.3 m/s a lag of seconds moves the truth less than the fix noise."""

LATENCY_SHIFTS_S = np.round(np.arange(-5.0, 10.0 + 1e-9, 0.1), 1)
"""Candidate lags, 0.1 s apart: -5 s (fixes ahead of the truth, a clock offset) to 10 s."""

LATENCY_MIN_FIXES = 10
"""Fewer moving fixes than this give no latency for a beacon: the minimum would be noise."""

STILL_SPEED_M_S = 0.05
"""Truth slower than this is standing still: a parked pallet's truth does not move at all and
a standing shopper's sways by centimetres, while the slowest walk is about 0.3 m/s."""

STILL_AFTER_S = 60.0
"""Issue #4's warehouse goal scores parked pallets once they have been still this long: time
for tracking to average the fast fading away, so what is left is the engine's static error."""

DEPART_M = 0.5
"""A beacon that was still departs when its truth leaves the spot by this much: a pallet on a
fork moves metres, a parked one's truth not at all."""
MOVE_MATCH_S = (-5.0, 60.0)
"""A pallet_moved event finds a departure of its beacon from 5 s before it to 60 s after: the
engine needs some seconds of readings from elsewhere, a forklift some to pick."""

NEIGHBOUR_GAP_M = 0.05
"""Two bays are neighbours when their polygons come this close (they share an edge or a
corner): the next bay along the rack, or the one behind it in a back-to-back pair."""

_DECIMALS = 4


class EvaluationError(BeaconHubError, ValueError):
    """Inputs that cannot be scored (no overlap, empty files, bad path CSV), naming the file."""


@dataclass(frozen=True)
class Evaluation:
    """The result of scoring one fixes file: the summary and the per-fix errors (for the CDF)."""

    summary: dict[str, Any]
    errors_m: FloatArray = field(repr=False)
    accuracy_m: FloatArray = field(repr=False)
    """The scored fixes' own accuracy_m, in the order of errors_m."""


# ---------------------------------------------------------------------------------------------
# Geometry, vectorised over points


def path_distance_m(xy: FloatArray, segments: FloatArray) -> FloatArray:
    """Distance from each point (n, 2) to the nearest of the segments (m, 4: x0, y0, x1, y1)."""
    p = np.asarray(xy, dtype=np.float64).reshape(-1, 1, 2)
    seg = np.asarray(segments, dtype=np.float64).reshape(1, -1, 4)
    a, b = seg[..., 0:2], seg[..., 2:4]
    ab = b - a
    length2 = np.sum(ab * ab, axis=-1)
    safe = np.where(length2 > 0.0, length2, 1.0)
    s = np.clip(np.sum((p - a) * ab, axis=-1) / safe, 0.0, 1.0)
    s = np.where(length2 > 0.0, s, 0.0)
    nearest = a + s[..., None] * ab
    return np.asarray(np.min(np.hypot(*np.moveaxis(p - nearest, -1, 0)), axis=1))


def _edges(polygon: Sequence[tuple[float, float]]) -> FloatArray:
    pts = np.asarray(polygon, dtype=np.float64)
    return np.concatenate([pts, np.roll(pts, -1, axis=0)], axis=1)


def points_in_polygon(xy: FloatArray, polygon: Sequence[tuple[float, float]]) -> NDArray[np.bool_]:
    """Even-odd ray casting for many points; as geometry.point_in_polygon, edges go either way."""
    x = np.asarray(xy, dtype=np.float64)[:, 0:1]
    y = np.asarray(xy, dtype=np.float64)[:, 1:2]
    e = _edges(polygon)
    x1, y1, x2, y2 = e[:, 0], e[:, 1], e[:, 2], e[:, 3]
    straddles = (y1 > y) != (y2 > y)
    dy = np.where(y2 != y1, y2 - y1, 1.0)
    x_cross = x1 + (y - y1) * (x2 - x1) / dy
    hits = straddles & (x < x_cross)
    return np.asarray(np.count_nonzero(hits, axis=1) % 2 == 1)


def zones_at(xy: FloatArray, levels: NDArray[np.int64], zones: Sequence[Zone]) -> list[str | None]:
    """The zone of each point on its level; the first zone in site-file order wins an overlap."""
    out: list[str | None] = [None] * len(xy)
    free = np.ones(len(xy), dtype=bool)
    for zone in zones:
        if not free.any():
            break
        hit = free & (levels == zone.level)
        if hit.any():
            hit[hit] = points_in_polygon(xy[hit], zone.polygon)
            for i in np.flatnonzero(hit):
                out[int(i)] = zone.id
            free &= ~hit
    return out


def zone_edge_distance_m(
    xy: FloatArray, levels: NDArray[np.int64], zones: Sequence[Zone]
) -> FloatArray:
    """Distance from each point to the nearest edge of any zone on its level (inf: no zone)."""
    out = np.full(len(xy), np.inf)
    for zone in zones:
        on_level = levels == zone.level
        if on_level.any():
            d = path_distance_m(xy[on_level], _edges(zone.polygon))
            out[on_level] = np.minimum(out[on_level], d)
    return out


# ---------------------------------------------------------------------------------------------
# Statistics


def error_statistics(errors_m: FloatArray) -> dict[str, float | None]:
    """median, p90, p95, mean and max of the errors (metres); None for no errors."""
    e = np.asarray(errors_m, dtype=np.float64)
    if e.size == 0:
        return dict.fromkeys(("median_m", "p90_m", "p95_m", "mean_m", "max_m"))
    median, p90, p95 = np.percentile(e, [50.0, 90.0, 95.0])
    return {
        "median_m": float(median),
        "p90_m": float(p90),
        "p95_m": float(p95),
        "mean_m": float(np.mean(e)),
        "max_m": float(np.max(e)),
    }


def zone_flaps(
    t: FloatArray,
    beacons: Sequence[str],
    zones: Sequence[str | None],
    window_s: float = FLAP_WINDOW_S,
) -> tuple[int, float]:
    """(flaps, beacon-hours) of a fix stream; see the module docstring for the definition."""
    t = np.asarray(t, dtype=np.float64)
    flaps = 0
    seconds = 0.0
    by_beacon: dict[str, list[int]] = {}
    for i, beacon in enumerate(beacons):
        by_beacon.setdefault(beacon, []).append(i)
    for idx in by_beacon.values():
        order = np.asarray(idx)[np.argsort(t[idx], kind="stable")]
        times = t[order]
        seconds += float(times[-1] - times[0])
        codes = _codes([zones[int(i)] for i in order])
        starts = np.flatnonzero(np.r_[True, codes[1:] != codes[:-1]])
        if starts.size < 3:
            continue
        run_zone = codes[starts]
        # Run k (1 <= k <= last-1) lasts from its first fix to the first fix of run k+1.
        inner = np.arange(1, starts.size - 1)
        lasted = times[starts[inner + 1]] - times[starts[inner]]
        back = run_zone[inner - 1] == run_zone[inner + 1]
        flaps += int(np.count_nonzero(back & (lasted <= window_s)))
    return flaps, seconds / 3600.0


def _codes(values: Sequence[str | None]) -> NDArray[np.int64]:
    table: dict[str | None, int] = {}
    return np.asarray([table.setdefault(v, len(table)) for v in values], dtype=np.int64)


# ---------------------------------------------------------------------------------------------
# Scoring


@dataclass(frozen=True)
class _Fixes:
    t: FloatArray
    xy: FloatArray
    accuracy_m: FloatArray
    beacon: list[str]
    zone: list[str | None]
    heard: NDArray[np.int64]
    """Gateways that heard the beacon for the fix (0 where the fixes file does not say)."""

    @classmethod
    def of(cls, fixes: Sequence[Fix]) -> _Fixes:
        return cls(
            t=np.asarray([f.t for f in fixes], dtype=np.float64),
            xy=np.asarray([(f.x, f.y) for f in fixes], dtype=np.float64).reshape(-1, 2),
            accuracy_m=np.asarray([f.accuracy_m for f in fixes], dtype=np.float64),
            beacon=[f.beacon for f in fixes],
            zone=[f.zone for f in fixes],
            heard=np.asarray([len(f.gateways) for f in fixes], dtype=np.int64),
        )


GATEWAY_GROUPS: tuple[tuple[str, int, int], ...] = (
    ("1", 1, 1),
    ("2", 2, 2),
    ("3", 3, 3),
    ("4-6", 4, 6),
    ("7+", 7, 1_000_000),
)
"""How `by_gateways` groups fixes by the gateways that heard the beacon: one gives a proximity
fix, two a mirror ambiguity, three the least that determines a position."""


def by_gateways(
    heard: NDArray[np.int64], errors_m: FloatArray, accuracy_m: FloatArray
) -> dict[str, dict[str, float | int | None]] | None:
    """Error statistics per group of GATEWAY_GROUPS (empty groups left out): where an installer
    gains from another gateway. None where the fixes file names no gateways."""
    if heard.size == 0 or not (heard > 0).any():
        return None
    out: dict[str, dict[str, float | int | None]] = {}
    for name, lo, hi in GATEWAY_GROUPS:
        on = (heard >= lo) & (heard <= hi)
        if not on.any():
            continue
        e = errors_m[on]
        stats = error_statistics(e)
        within = float(np.mean(e <= accuracy_m[on]))
        out[name] = {
            "fixes": int(on.sum()),
            "median_m": _round(stats["median_m"]),
            "p90_m": _round(stats["p90_m"]),
            "within_accuracy": _round(within),
        }
    return out


def _round(value: float | None) -> float | None:
    return round(value, _DECIMALS) if value is not None and math.isfinite(value) else value


def _base_summary(fx: _Fixes, mode: Literal["truth", "path"], band_m: float) -> dict[str, Any]:
    flaps, hours = zone_flaps(fx.t, fx.beacon, fx.zone)
    return {
        "mode": mode,
        "fixes": len(fx.beacon),
        "beacons": len(set(fx.beacon)),
        "band_m": band_m,
        "zone_flaps": flaps,
        "zone_flaps_per_beacon_hour": flaps / hours if hours > 0.0 else None,
    }


def _zone_scores(
    fix_zones: Sequence[str | None],
    true_zones: Sequence[str | None] | None,
    edge_m: FloatArray | None,
    band_m: float,
) -> dict[str, Any]:
    if true_zones is None or len(true_zones) == 0:
        return {
            "zone_accuracy": None,
            "zone_scored_outside_band": None,
            "zone_accuracy_outside_band": None,
        }
    same = np.asarray([a == b for a, b in zip(fix_zones, true_zones, strict=True)], dtype=bool)
    out: dict[str, Any] = {"zone_accuracy": float(np.mean(same))}
    if edge_m is None:
        out["zone_scored_outside_band"] = None
        out["zone_accuracy_outside_band"] = None
    else:
        away = edge_m > band_m
        out["zone_scored_outside_band"] = int(np.count_nonzero(away))
        out["zone_accuracy_outside_band"] = float(np.mean(same[away])) if away.any() else None
    return out


def _site_zones(site: Site | None) -> list[Zone]:
    return list(site.zones) if site is not None else []


def evaluate_path(
    fixes: Sequence[Fix],
    segments: FloatArray,
    band_m: float = BAND_M,
) -> Evaluation:
    """Score every fix by its distance to the nearest path segment (a lower bound of its error)."""
    fx = _Fixes.of(fixes)
    errors = path_distance_m(fx.xy, segments) if len(fixes) else np.zeros(0)
    summary = _base_summary(fx, "path", band_m)
    summary.update(
        scored=int(errors.size),
        unscored_no_truth=0,
        unscored_outside_span=0,
        unscored_truth_gap=0,
        beacons_scored=len(set(fx.beacon)),
        **error_statistics(errors),
        within_accuracy=float(np.mean(errors <= fx.accuracy_m)) if errors.size else None,
        by_gateways=by_gateways(fx.heard, errors, fx.accuracy_m),
        zone_source=None,
        zone_accuracy=None,
        zone_scored_outside_band=None,
        zone_accuracy_outside_band=None,
        latency_s=None,
        latency_beacons=0,
        coverage=None,
        still_after_s=STILL_AFTER_S,
        still_scored=None,
        still_median_m=None,
        still_p90_m=None,
        still_within_accuracy=None,
        still_zone_flaps=None,
        still_zone_flaps_per_beacon_hour=None,
        bay_scored=None,
        bay_accuracy=None,
        bay_or_neighbour_accuracy=None,
    )
    return Evaluation(summary=summary, errors_m=errors, accuracy_m=fx.accuracy_m)


@dataclass(frozen=True)
class _Track:
    """One beacon's truth, sorted by time."""

    t: FloatArray
    xy: FloatArray
    level: NDArray[np.int64]
    zone: list[str | None]

    @functools.cached_property
    def speed(self) -> FloatArray:
        """(n - 1,) speed over each truth interval, m/s (0 where two samples share a time)."""
        dt = np.diff(self.t)
        return np.asarray(np.hypot(*np.diff(self.xy, axis=0).T) / np.where(dt > 0, dt, np.inf))

    def segment(self, t: FloatArray) -> NDArray[np.intp]:
        """The truth interval holding each t (the first or last one outside the span); a t on a
        sample is in the interval ending there: latency compares a fix with the truth before
        it, so a fix at the instant the truth stops still counts as moving (still_since takes
        the interval starting there instead). flat-calib2021's robot fixes mostly fall on a
        truth sample: with the interval after, its latencies move by up to 1.8 s."""
        return np.clip(np.searchsorted(self.t, t) - 1, 0, len(self.t) - 2)

    def at(self, t: FloatArray) -> FloatArray:
        return np.column_stack(
            [np.interp(t, self.t, self.xy[:, 0]), np.interp(t, self.t, self.xy[:, 1])]
        )

    def nearest(self, t: FloatArray) -> NDArray[np.int64]:
        """Index of the truth sample nearest in time to each t."""
        right = np.clip(np.searchsorted(self.t, t), 1, len(self.t) - 1)
        left = right - 1
        if len(self.t) == 1:
            return np.zeros(len(t), dtype=np.int64)
        pick_left = (t - self.t[left]) <= (self.t[right] - t)
        return np.asarray(np.where(pick_left, left, right))

    def still_since(self, t: FloatArray) -> FloatArray:
        """When the truth last stopped moving before each t (slower than STILL_SPEED_M_S over
        the truth interval holding t, the one starting at t for a t on a sample: standing
        still is the state from t on, so the instant it sets off is not still), its first
        sample if it never moved; NaN while moving."""
        if len(self.t) < 2:
            return np.full(len(t), self.t[0])
        moving = self.speed >= STILL_SPEED_M_S
        n = moving.shape[0]
        segment = np.clip(np.searchsorted(self.t, t, side="right") - 1, 0, n - 1)
        last_move = np.maximum.accumulate(np.where(moving, np.arange(n), -1))[segment]
        since = np.where(last_move >= 0, self.t[np.minimum(last_move + 1, n)], self.t[0])
        return np.where(moving[segment], np.nan, since)

    def gap_around(self, t: FloatArray) -> FloatArray:
        """Time between the truth samples that bracket each t (0 on an exact sample)."""
        right = np.searchsorted(self.t, t, side="left")
        exact = (right < len(self.t)) & (self.t[np.minimum(right, len(self.t) - 1)] == t)
        left = np.clip(right - 1, 0, len(self.t) - 1)
        right = np.clip(right, 0, len(self.t) - 1)
        return np.where(exact, 0.0, self.t[right] - self.t[left])


def _tracks(truth: Sequence[TruthPoint], site: Site | None = None) -> dict[str, _Track]:
    """Each beacon's truth in time order; a row without a level on the site's own level
    (Site.level_number; level 0 without a site)."""
    grouped: dict[str, list[TruthPoint]] = {}
    for p in truth:
        grouped.setdefault(p.beacon, []).append(p)
    out = {}
    for beacon, points in grouped.items():
        points.sort(key=lambda p: p.t)
        out[beacon] = _Track(
            t=np.asarray([p.t for p in points], dtype=np.float64),
            xy=np.asarray([(p.x, p.y) for p in points], dtype=np.float64),
            level=np.asarray(
                [(p.level or 0) if site is None else site.level_number(p.level) for p in points],
                dtype=np.int64,
            ),
            zone=[p.zone for p in points],
        )
    return out


@dataclass
class _Matched:
    """Fixes paired with their interpolated truth; arrays hold the scored fixes only."""

    index: NDArray[np.int64]
    xy: FloatArray
    level: NDArray[np.int64]
    zone: list[str | None]
    still_since: FloatArray = field(default_factory=lambda: np.zeros(0))
    """When the truth stopped moving, per scored fix (NaN: moving)."""
    no_truth: int = 0
    outside: int = 0
    gap: int = 0
    latencies_s: list[float] = field(default_factory=list)


def _match(fx: _Fixes, tracks: dict[str, _Track]) -> _Matched:
    index_of: dict[str, list[int]] = {}
    for i, beacon in enumerate(fx.beacon):
        index_of.setdefault(beacon, []).append(i)
    parts: list[
        tuple[NDArray[np.int64], FloatArray, NDArray[np.int64], list[str | None], FloatArray]
    ] = []
    m = _Matched(np.zeros(0, dtype=np.int64), np.zeros((0, 2)), np.zeros(0, dtype=np.int64), [])
    for beacon, idx_list in index_of.items():
        idx = np.asarray(idx_list, dtype=np.int64)
        track = tracks.get(beacon)
        if track is None:
            m.no_truth += idx.size
            continue
        t = fx.t[idx]
        inside = (t >= track.t[0]) & (t <= track.t[-1])
        bridged = inside & (track.gap_around(t) <= TRUTH_MAX_GAP_S)
        m.outside += int(np.count_nonzero(~inside))
        m.gap += int(np.count_nonzero(inside & ~bridged))
        keep = idx[bridged]
        if keep.size == 0:
            continue
        nearest = track.nearest(fx.t[keep])
        zones = [track.zone[int(j)] for j in nearest]
        parts.append(
            (keep, track.at(fx.t[keep]), track.level[nearest], zones, track.still_since(fx.t[keep]))
        )
        lag = _latency_s(track, fx.t[keep], fx.xy[keep])
        if lag is not None:
            m.latencies_s.append(lag)
    if parts:
        m.index = np.concatenate([p[0] for p in parts])
        m.xy = np.concatenate([p[1] for p in parts])
        m.level = np.concatenate([p[2] for p in parts])
        m.zone = [z for p in parts for z in p[3]]
        m.still_since = np.concatenate([p[4] for p in parts])
    return m


def evaluate_truth(
    fixes: Sequence[Fix],
    truth: Sequence[TruthPoint],
    site: Site | None = None,
    band_m: float = BAND_M,
    *,
    covered: Sequence[TruthPoint] | None = None,
) -> Evaluation:
    """Score fixes against truth interpolated in time per beacon (see the module docstring).
    `coverage` counts the truth samples `covered` (default: all of `truth`): the samples the
    fixes were chosen for, where only some were (`--kind`, `--window-s`); the whole truth still
    places the fixes, so those near a window's edge interpolate across it."""
    fx = _Fixes.of(fixes)
    tracks = _tracks(truth, site)
    m = _match(fx, tracks)
    if fixes and m.index.size == 0:
        raise EvaluationError(
            f"no fix overlaps the truth: {m.no_truth} fixes of beacons without truth, "
            f"{m.outside} outside their beacon's truth time span, {m.gap} in truth gaps"
        )
    errors = np.hypot(*(fx.xy[m.index] - m.xy).T)
    summary = _base_summary(fx, "truth", band_m)
    summary.update(
        scored=int(m.index.size),
        unscored_no_truth=m.no_truth,
        unscored_outside_span=m.outside,
        unscored_truth_gap=m.gap,
        beacons_scored=len({fx.beacon[int(i)] for i in m.index}),
        **error_statistics(errors),
        within_accuracy=(float(np.mean(errors <= fx.accuracy_m[m.index])) if errors.size else None),
        by_gateways=by_gateways(fx.heard[m.index], errors, fx.accuracy_m[m.index]),
    )
    zones = _site_zones(site)
    zone_truth: list[str | None] | None = None
    if any(p.zone is not None for p in truth):
        summary["zone_source"] = "truth"
        zone_truth = m.zone
    elif zones:
        summary["zone_source"] = "site"
        zone_truth = zones_at(m.xy, m.level, zones)
    else:
        summary["zone_source"] = None
    edge = zone_edge_distance_m(m.xy, m.level, zones) if zones else None
    fix_zones = [fx.zone[int(i)] for i in m.index]
    summary.update(_zone_scores(fix_zones, zone_truth, edge, band_m))
    summary.update(_still_scores(fx, m, errors, zone_truth, zones))
    summary["latency_s"] = float(np.median(m.latencies_s)) if m.latencies_s else None
    summary["latency_beacons"] = len(m.latencies_s)
    summary["coverage"] = _coverage(tracks if covered is None else _tracks(covered, site), fx)
    return Evaluation(summary=summary, errors_m=errors, accuracy_m=fx.accuracy_m[m.index])


def neighbour_zones(zones: Sequence[Zone], gap_m: float = NEIGHBOUR_GAP_M) -> dict[str, set[str]]:
    """For each zone, the zones of the same kind on its level within `gap_m` of it (itself
    included): for bays, the next bay along the rack and the one behind it."""
    out: dict[str, set[str]] = {z.id: {z.id} for z in zones}
    for i, a in enumerate(zones):
        corners_a = np.asarray(a.polygon, dtype=np.float64)
        for b in zones[i + 1 :]:
            if b.kind != a.kind or b.level != a.level:
                continue
            corners_b = np.asarray(b.polygon, dtype=np.float64)
            # Polygons that do not overlap come closest at a corner of one of them.
            gap = min(
                float(path_distance_m(corners_a, _edges(b.polygon)).min()),
                float(path_distance_m(corners_b, _edges(a.polygon)).min()),
            )
            if gap <= gap_m:
                out[a.id].add(b.id)
                out[b.id].add(a.id)
    return out


def pallet_moves(
    truth: Sequence[TruthPoint], events: Iterable[EventRow], beacons: set[str] | None = None
) -> dict[str, Any]:
    """Score pallet_moved events against the truth's departures: a beacon leaving (DEPART_M) a
    spot where it stood STILL_AFTER_S or longer. Each departure is found by at most one event of
    its beacon within MOVE_MATCH_S of it; the other events are false. `beacons` limits both
    to those beacons (eval --kind)."""
    departures: list[tuple[str, float]] = []
    for beacon, track in _tracks(truth).items():
        if beacons is not None and beacon not in beacons:
            continue
        anchor = 0
        for i in range(1, track.t.shape[0]):
            if math.dist(track.xy[i], track.xy[anchor]) > DEPART_M:
                if track.t[i] - track.t[anchor] >= STILL_AFTER_S:
                    departures.append((beacon, float(track.t[i])))
                anchor = i
    reported = [
        e for e in events if e.type == "pallet_moved" and (beacons is None or e.beacon in beacons)
    ]
    open_departures = sorted(departures, key=lambda d: d[1])
    delays: list[float] = []
    for e in sorted(reported, key=lambda e: e.t):
        for k, (beacon, t) in enumerate(open_departures):
            if beacon == e.beacon and MOVE_MATCH_S[0] <= e.t - t <= MOVE_MATCH_S[1]:
                delays.append(e.t - t)
                del open_departures[k]
                break
    return {
        "moves_departed": len(departures),
        "moves_reported": len(reported),
        "moves_found": len(delays),
        "moves_false": len(reported) - len(delays),
        "moves_delay_median_s": float(np.median(delays)) if delays else None,
    }


def _still_scores(
    fx: _Fixes,
    m: _Matched,
    errors: FloatArray,
    zone_truth: Sequence[str | None] | None,
    zones: Sequence[Zone],
) -> dict[str, Any]:
    """Scores of beacons standing still: errors once still for STILL_AFTER_S, bay calls of
    parked pallets, and zone flaps while still (issue #4's warehouse and store goals)."""
    still_for = fx.t[m.index] - m.still_since  # NaN while moving
    settled = still_for >= STILL_AFTER_S
    stats = error_statistics(errors[settled])
    out: dict[str, Any] = {
        "still_after_s": STILL_AFTER_S,
        "still_scored": int(np.count_nonzero(settled)),
        "still_median_m": stats["median_m"],
        "still_p90_m": stats["p90_m"],
        "still_within_accuracy": (
            float(np.mean(errors[settled] <= fx.accuracy_m[m.index][settled]))
            if settled.any()
            else None
        ),
    }
    # Flaps while still: each still spell of a beacon is a stream of its own.
    still = np.isfinite(m.still_since)
    rows = np.flatnonzero(still)
    spell = [f"{fx.beacon[int(m.index[r])]}@{m.still_since[r]!r}" for r in rows]
    flaps, hours = zone_flaps(fx.t[m.index[rows]], spell, [fx.zone[int(m.index[r])] for r in rows])
    out["still_zone_flaps"] = flaps
    out["still_zone_flaps_per_beacon_hour"] = flaps / hours if hours > 0.0 else None
    bays = [z for z in zones if z.kind == "bay"]
    bay_ids = {z.id for z in bays}
    picked = [
        int(r)
        for r in np.flatnonzero(settled)
        if zone_truth is not None and zone_truth[int(r)] in bay_ids
    ]
    out["bay_scored"] = len(picked)
    if picked and zone_truth is not None:
        near = neighbour_zones(bays)
        calls = [(fx.zone[int(m.index[r])], zone_truth[r]) for r in picked]
        out["bay_accuracy"] = sum(f == t for f, t in calls) / len(calls)
        out["bay_or_neighbour_accuracy"] = sum(
            f is not None and t is not None and f in near[t] for f, t in calls
        ) / len(calls)
    else:
        out["bay_accuracy"] = out["bay_or_neighbour_accuracy"] = None
    return out


def _latency_s(track: _Track, t: FloatArray, xy: FloatArray) -> float | None:
    """The lag tau minimising mean |fix(t) - truth(t - tau)| over moving fixes, or None."""
    if len(track.t) < 2:
        return None
    shifts = LATENCY_SHIFTS_S
    usable = (
        (track.speed[track.segment(t)] >= MOVING_SPEED_M_S)
        & (t - shifts.max() >= track.t[0])
        & (t - shifts.min() <= track.t[-1])
    )
    if np.count_nonzero(usable) < LATENCY_MIN_FIXES:
        return None
    shifted = t[usable][None, :] - shifts[:, None]
    tx = np.interp(shifted, track.t, track.xy[:, 0])
    ty = np.interp(shifted, track.t, track.xy[:, 1])
    mean_error = np.mean(np.hypot(xy[usable, 0] - tx, xy[usable, 1] - ty), axis=1)
    return float(shifts[int(np.argmin(mean_error))])


def _coverage(tracks: dict[str, _Track], fx: _Fixes) -> float | None:
    covered = total = 0
    fix_times: dict[str, list[float]] = {}
    for beacon, t in zip(fx.beacon, fx.t.tolist(), strict=True):
        fix_times.setdefault(beacon, []).append(t)
    for beacon, track in tracks.items():
        total += len(track.t)
        times = np.sort(np.asarray(fix_times.get(beacon, []), dtype=np.float64))
        if times.size == 0:
            continue
        right = np.clip(np.searchsorted(times, track.t), 0, times.size - 1)
        left = np.clip(right - 1, 0, times.size - 1)
        nearest = np.minimum(np.abs(times[right] - track.t), np.abs(times[left] - track.t))
        covered += int(np.count_nonzero(nearest <= COVERAGE_WINDOW_S))
    return covered / total if total else None


# ---------------------------------------------------------------------------------------------
# Files


def read_path(path: Path | str) -> FloatArray:
    """Read a path CSV (`x0,y0,x1,y1`, one segment per row) into an (m, 4) array."""
    where = str(path)
    rows: list[list[float]] = []
    try:
        with Path(path).open(newline="", encoding="utf-8-sig") as handle:
            reader = csv.reader(handle)
            header = [h.strip() for h in next(reader, [])]
            if header != list(PATH_COLUMNS):
                raise EvaluationError(
                    f"{where}:1: not a path file: header {','.join(header) or '(empty)'}; "
                    f"expected {','.join(PATH_COLUMNS)}"
                )
            for row in reader:
                if not row or all(not c.strip() for c in row):
                    continue
                rows.append(_segment(row, where, reader.line_num))
    except OSError as e:
        raise EvaluationError(f"{where}: cannot open: {e.strerror or e}") from e
    except UnicodeDecodeError as e:
        raise EvaluationError(f"{where}: not UTF-8 text ({e.reason} at byte {e.start})") from e
    except csv.Error as e:
        raise EvaluationError(f"{where}: not valid CSV: {e}") from e
    if not rows:
        raise EvaluationError(f"{where}: no segments; expected rows of {','.join(PATH_COLUMNS)}")
    segments = np.asarray(rows, dtype=np.float64)
    if not np.any(segments[:, 0:2] != segments[:, 2:4]):
        raise EvaluationError(
            f"{where}: the path has no length: each of its {len(rows)} segments ends where it "
            "starts; expected a route of segments x0,y0 -> x1,y1"
        )
    return segments


def _segment(row: Sequence[str], where: str, line: int) -> list[float]:
    if len(row) != len(PATH_COLUMNS):
        raise EvaluationError(f"{where}:{line}: {len(row)} cells; the header has 4")
    values = []
    for column, cell in zip(PATH_COLUMNS, row, strict=True):
        try:
            value = float(cell.strip())
        except ValueError:
            value = math.nan
        if not math.isfinite(value):
            raise EvaluationError(
                f"{where}:{line}: column {column}: expected a finite number, got {cell!r:.40}"
            )
        values.append(value)
    return values


def write_path(path: Path | str, segments: Iterable[Sequence[float]]) -> int:
    """Write segments (x0, y0, x1, y1) as a path CSV; returns the number of rows."""
    rows = 0
    with OutputFile(path, newline="") as handle:
        writer = csv.writer(handle, lineterminator="\n")
        writer.writerow(PATH_COLUMNS)
        for segment in segments:
            writer.writerow([f"{float(v):g}" for v in segment])
            rows += 1
    return rows


def _rounded(summary: dict[str, Any]) -> dict[str, Any]:
    return {k: _round(v) if isinstance(v, float) else v for k, v in summary.items()}


def write_report(
    directory: Path, runs: Sequence[tuple[str, Evaluation]], title: str, summary: dict[str, Any]
) -> tuple[Path, Path]:
    """Write `cdf.png` (one error CDF per run, median and p90 marked) and `summary.json`."""
    # Imported here: matplotlib is a [hub] extra and costs about a second to import.
    from matplotlib.backends.backend_agg import FigureCanvasAgg  # noqa: PLC0415
    from matplotlib.figure import Figure  # noqa: PLC0415

    directory.mkdir(parents=True, exist_ok=True)
    figure = Figure(figsize=(7.0, 4.5), dpi=100)
    FigureCanvasAgg(figure)
    ax = figure.add_subplot()
    for i, (label, run) in enumerate(runs):
        e = np.sort(run.errors_m)
        if e.size == 0:
            continue
        color = f"C{i % 10}"
        share = np.arange(1, e.size + 1) / e.size
        median, p90 = run.summary["median_m"], run.summary["p90_m"]
        ax.step(
            e,
            share,
            where="post",
            color=color,
            label=f"{label}: median {median:.2f} m, p90 {p90:.2f} m (n={e.size})",
        )
        ax.axvline(median, color=color, linestyle="--", linewidth=0.8)
        ax.axvline(p90, color=color, linestyle=":", linewidth=0.8)
    ax.axhline(0.5, color="0.7", linewidth=0.5)
    ax.axhline(0.9, color="0.7", linewidth=0.5)
    ax.set_xlim(left=0.0)
    ax.set_ylim(0.0, 1.0)
    ax.set_xlabel("error (m)" + (", distance to path" if runs and _is_path(runs) else ""))
    ax.set_ylabel("share of fixes")
    ax.set_title(title)
    ax.grid(True, alpha=0.3)
    ax.legend(loc="lower right", fontsize="small", title="dashed: median, dotted: p90")
    png = directory / "cdf.png"
    image = io.BytesIO()
    figure.savefig(image, format="png")
    out = directory / "summary.json"
    # Each file whole or not at all: an interrupted report leaves the last one as it was.
    with OutputFile(png, binary=True) as handle:
        handle.write(image.getvalue())
    with OutputFile(out) as handle:
        handle.write(json.dumps(summary, indent=2) + "\n")
    return png, out


def _is_path(runs: Sequence[tuple[str, Evaluation]]) -> bool:
    return all(run.summary.get("mode") == "path" for _, run in runs)


def _kind_name(site: Site, beacon: str) -> str | None:
    kind = site.kind_of(beacon)
    return kind.kind if kind is not None else None


def _eval_inputs(
    fixes_paths: Sequence[Path],
    *,
    truth_path: Path | None,
    path_path: Path | None,
    site_path: Path | None,
    band_m: float,
    labels: Sequence[str],
    kind: str | None,
    events_path: Path | None,
    window_s: tuple[float, float] | None,
) -> tuple[Path, Site | None]:
    """run_eval's options checked together: the reference file and the site, or a clear error."""
    if truth_path is not None and path_path is None:
        reference = truth_path
    elif path_path is not None and truth_path is None:
        reference = path_path
    else:
        raise EvaluationError("give exactly one of --truth or --path")
    if labels and len(labels) != len(fixes_paths):
        raise EvaluationError(
            f"{len(labels)} --label for {len(fixes_paths)} --fixes; give one label per file"
        )
    if events_path is not None and (truth_path is None or len(fixes_paths) != 1):
        raise EvaluationError("--events: give it with --truth and one --fixes (its replay's)")
    if not math.isfinite(band_m) or band_m < 0.0:
        raise EvaluationError(f"--band-m {band_m}: expected a non-negative number of metres")
    site = load_site(site_path) if site_path is not None else None
    if kind is not None and site is None:
        raise EvaluationError(f"--kind {kind}: needs --site, whose beacon_kinds name the kinds")
    if kind is not None and site is not None:
        known = sorted({k.kind for k in site.beacon_kinds})
        if kind not in known:
            raise EvaluationError(
                f"--kind {kind}: {site_path} has no beacons of that kind "
                f"({', '.join(known) or 'none'})"
            )
    if window_s is not None:
        start_s, end_s = window_s
        if truth_path is None:
            raise EvaluationError("--window-s: give it with --truth, whose first row is its 0 s")
        if not (math.isfinite(start_s) and math.isfinite(end_s) and 0.0 <= start_s < end_s):
            raise EvaluationError(
                f"--window-s {start_s:g} {end_s:g}: expected 0 <= START < END seconds"
            )
    return reference, site


def run_eval(
    fixes_paths: Sequence[Path],
    *,
    truth_path: Path | None = None,
    path_path: Path | None = None,
    site_path: Path | None = None,
    report_dir: Path | None = None,
    band_m: float = BAND_M,
    labels: Sequence[str] = (),
    kind: str | None = None,
    events_path: Path | None = None,
    window_s: tuple[float, float] | None = None,
) -> dict[str, Any]:
    """What `beacon-hub eval` does: score each fixes file; write the report when asked.
    `kind` scores only the fixes of beacons of that kind in the site's beacon_kinds (the
    store's carts without its reference beacons, the warehouse's pallets). `window_s`
    (start, end) scores only the fixes from start to before end seconds after the truth's
    first row (one walk of a recording that holds several).

    Returns the summary of the only fixes file, or `{"runs": [summary, ...]}` for several.
    """
    reference, site = _eval_inputs(
        fixes_paths,
        truth_path=truth_path,
        path_path=path_path,
        site_path=site_path,
        band_m=band_m,
        labels=labels,
        kind=kind,
        events_path=events_path,
        window_s=window_s,
    )
    truth = list(read_truth(truth_path)) if truth_path is not None else None
    if truth is not None and not truth:
        raise EvaluationError(f"{truth_path}: no truth rows")
    segments = read_path(path_path) if path_path is not None else None
    truth_t0 = min((p.t for p in truth or []), default=0.0)  # --window-s counts from it

    def chosen(beacon: str, t: float) -> bool:
        """Of `kind` (with a site) and within `window_s`: the fixes scored, and the truth that
        coverage counts (a cart's coverage is not diluted by the reference beacons' truth)."""
        if kind is not None and site is not None and _kind_name(site, beacon) != kind:
            return False
        return window_s is None or window_s[0] <= t - truth_t0 < window_s[1]

    names = list(labels) or [p.stem for p in fixes_paths]
    runs: list[tuple[str, Evaluation]] = []
    for name, fixes_path in zip(names, fixes_paths, strict=True):
        fixes = list(read_fixes(fixes_path))
        if not fixes:
            raise EvaluationError(f"{fixes_path}: no fixes; the file has a header and no rows")
        in_file = len(fixes)
        fixes = [f for f in fixes if chosen(f.beacon, f.t)]
        if not fixes:
            which = [
                f"of kind {kind}" if kind else "",
                f"in --window-s {window_s[0]:g} {window_s[1]:g}" if window_s else "",
            ]
            raise EvaluationError(
                f"{fixes_path}: no fixes {' and '.join(w for w in which if w)} "
                f"(of {in_file} in the file)"
            )
        try:
            if segments is not None:
                run = evaluate_path(fixes, segments, band_m)
            else:
                covered = [p for p in truth or [] if chosen(p.beacon, p.t)]
                run = evaluate_truth(fixes, truth or [], site, band_m, covered=covered)
        except EvaluationError as e:
            raise EvaluationError(f"{fixes_path} against {reference}: {e}") from e
        summary = {
            "label": name,
            "fixes_file": str(fixes_path),
            "kind": kind,
            **_rounded(run.summary),
        }
        if events_path is not None:
            of_kind = None
            if kind is not None and site is not None:
                of_kind = {p.beacon for p in truth or [] if _kind_name(site, p.beacon) == kind}
            moves = pallet_moves(truth or [], read_events(events_path), of_kind)
            summary.update(_rounded(moves))
        runs.append(
            (name, Evaluation(summary=summary, errors_m=run.errors_m, accuracy_m=run.accuracy_m))
        )
    result: dict[str, Any] = (
        runs[0][1].summary if len(runs) == 1 else {"runs": [r.summary for _, r in runs]}
    )
    if report_dir is not None:
        title = f"Error CDF against {reference.name}"
        write_report(report_dir, runs, title, result)
    return result
