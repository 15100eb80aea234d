"""Multilateration: every beacon of a tick located at once by robust weighted least squares.

Each beacon b has up to K gateway estimates (RSSI r_bk, its standard deviation s_bk). We
look for the position p that best explains them in the RSSI domain, where the noise is
(log-)normal, with the beacon's known mounting height:

    mu_k(p) = ref_k + offset_b - 10 n_k log10(|p - g_k|_3d) + map_k(p)
    cost(p) = sum_k huber((r_k - mu_k(p)) / s_k) + |p - m_b|^2 / prior_sd^2

Gauss-Newton with Huber weights (IRLS) and a Levenberg damping, vectorised over beacons: no
Python loop per beacon. The weak prior (the track's prediction, or the weighted centroid of the
gateways) keeps two-gateway cases determined and picks the right side of a mirror ambiguity;
its spread is wide enough not to dominate three or more gateways. One gateway gives a honest
proximity fix: the gateway's position with the range as uncertainty.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, TypeVar

import numpy as np
from numpy.typing import NDArray

from beacon_hub.gaussian2d import inv2x2
from beacon_hub.pathloss import LN10_OVER_10, MIN_DISTANCE_M, distance_m, mean_rssi_dbm

__all__ = [
    "HUBER_K",
    "MAP_SLOPE_CAP_DB_M",
    "Geometry",
    "MapFn",
    "MapTable",
    "Solution",
    "grid_loglik",
    "grid_mode",
    "grid_offsets",
    "mean_residual_db",
    "reduced_chi2",
    "select_rows",
    "solve",
    "solve_grid",
    "weighted_centroid",
]

F64 = NDArray[np.float64]
_RowsT = TypeVar("_RowsT", "Geometry", "_Terms")
_T = TypeVar("_T")
MapFn = Callable[[NDArray[np.intp], F64], tuple[F64, F64, F64]]
"""(gateway index (...), points (..., 2) broadcasting against it) -> dB, dB/m in x, y."""

HUBER_K = 1.5
"""Residuals beyond 1.5 sigma count linearly: a -10 dB multipath dip must not drag a fix."""
ITERATIONS = 8
"""Levenberg-Marquardt iterations at most: 8 against 12 saves a fifth of a 10,000-beacon tick;
tracked accuracy is the same (store 3.71 vs 3.75 m), one fix per sample a little worse
(flat-calib2021 path loss only: 1.53 vs 1.50 m)."""
MAX_STEP_M = 3.0
"""Largest move per iteration: keeps Gauss-Newton from jumping across the site on a bad start."""
SAME_BASIN_M = 1.0
"""A least-squares solution this close to the track's prediction needs no second start."""
CONVERGED_M = 0.01
"""A beacon whose next step is below a centimetre has converged: a tenth of the grid of the
floor plan and far below any fix's accuracy."""
PRIOR_SD_M = 6.0
"""Spread of the weak prior for one or two gateways: about one gateway spacing."""
RESLICE_SHARE = 0.7
"""The iteration's terms are re-sliced to the moving beacons only once these are fewer than
70 % of the rows at hand: copying ten (beacons, gateways) arrays costs more than evaluating
the few beacons that have converged meanwhile."""
PRIOR_SD_WELL_POSED_M = 100.0
"""With three or more gateways the data decide; the prior only keeps the algebra regular."""
MAP_SLOPE_CAP_DB_M = math.sqrt(2.0) * 5.9 / 1.5
"""Steepest slope (dB/m) of the radio map that a fix's covariance counts as information: the
rms slope of the unknown static field, sqrt(2) sd / L for a Gaussian correlation of length L
(5.9 dB over 1.5 m before any fit, simulator/radio.py's fit to flat-calib2021), 5.6 dB/m. The
floor plan's losses step by a rack's or a wall's 10 dB within one map cell (40 dB/m): that
tells which side of the face a beacon is on, not where, and counted as a slope it pinned a fix
to the face (to 2 cm, test_multilateration) and the Kalman filter followed such fixes. Capped
(2026-12-07), replays without a calibration, nothing else changed: the simulated warehouse (D)
3.41 / 9.49 -> 3.14 / 8.70 m, 55 -> 68 % within accuracy_m, parked pallets in the right or a
neighbouring bay 51 -> 58 %, standing flaps 1.0 -> 0.8 per beacon-hour; the store (C) 3.51 /
7.97 -> 3.26 / 7.57 m, 69 -> 76 % (600 s: 4.24 / 10.01 -> 4.05 / 9.91 m, 63 -> 67 %);
flat-calib2021 tracked, robot 2.38 / 3.19 -> 2.38 / 3.10 m, 63 -> 69 %, walk 0.66 / 1.53 ->
0.53 / 1.42 m. Calibrated maps go through the map likelihood, whose covariance is the
posterior's: unchanged."""


@dataclass(frozen=True)
class Geometry:
    """Per-slot gateway data of the beacons to solve, padded to K slots (mask False = empty)."""

    gw: NDArray[np.intp]
    """(B, K) gateway index (for the radio map); anything where mask is False."""
    gw_xy: F64
    """(B, K, 2)"""
    dz_m: F64
    """(B, K) gateway height minus beacon height."""
    ref_dbm: F64
    """(B, K) RSSI at 1 m for this gateway and beacon (tx power and per-gateway offsets applied)."""
    exponent: F64
    rssi_dbm: F64
    sd_db: F64
    mask: NDArray[np.bool_]
    unheard: NDArray[np.bool_] | None = None
    """(B, K) slots of gateways that are up but did *not* hear the beacon, with rssi_dbm their
    floor (about the quietest they report): only a prediction above it is evidence, so such a slot's
    z is capped at 0. Only the map likelihood reads them (_neg_cost: solve_grid, grid_mode);
    least squares is never given them."""


@dataclass(frozen=True)
class Solution:
    xy: F64
    """(B, 2)"""
    cov: F64
    """(B, 2, 2) from the curvature of the cost: the measurement covariance for tracking."""
    used: NDArray[np.int64]
    """(B,) gateways that contributed."""


def _ranges(geo: Geometry, xy: F64) -> tuple[F64, F64]:
    """Offsets from each gateway to the position (B, K, 2) and 3-D distances (B, K), at least
    MIN_DISTANCE_M."""
    delta = xy[:, None, :] - geo.gw_xy
    d2 = (delta**2).sum(axis=2) + geo.dz_m**2
    return delta, np.sqrt(np.maximum(d2, MIN_DISTANCE_M**2))


def _model(geo: Geometry, xy: F64, radio_map: MapFn | None) -> tuple[F64, F64]:
    """Predicted RSSI (B, K) and its gradient with respect to position (B, K, 2) as the
    covariance counts it: the map's part no steeper than MAP_SLOPE_CAP_DB_M in each slot (the
    descent, _normal_equations, follows the map's own slope)."""
    delta, d = _ranges(geo, xy)
    mu = mean_rssi_dbm(d, geo.ref_dbm, geo.exponent)
    # d mu / d p = -10 n / ln(10) * (p - g) / d^2
    grad = (-geo.exponent / LN10_OVER_10 / (d * d))[..., None] * delta
    if radio_map is not None:
        correction, d_dx, d_dy = radio_map(geo.gw, xy[:, None, :])
        mu = mu + correction
        slope = np.hypot(d_dx, d_dy)
        keep = np.minimum(1.0, MAP_SLOPE_CAP_DB_M / np.maximum(slope, 1e-12))
        grad = grad + np.stack([d_dx * keep, d_dy * keep], axis=-1)
    return mu, grad


def _predicted_rssi(geo: Geometry, xy: F64, radio_map: MapFn | None) -> F64:
    """Predicted RSSI (B, K) as _model has it, without the gradient the cost and the residuals
    do not need."""
    _, d = _ranges(geo, xy)
    mu = mean_rssi_dbm(d, geo.ref_dbm, geo.exponent)
    if radio_map is not None:
        mu = mu + radio_map(geo.gw, xy[:, None, :])[0]
    return np.asarray(mu, dtype=np.float64)


def _standardized(geo: Geometry, xy: F64, radio_map: MapFn | None) -> F64:
    """(reading - predicted) / sd_db per slot (B, K), 0 on empty slots."""
    mu = _predicted_rssi(geo, xy, radio_map)
    return np.where(geo.mask, (geo.rssi_dbm - mu) / geo.sd_db, 0.0)


def reduced_chi2(geo: Geometry, xy: F64, radio_map: MapFn | None) -> F64:
    """Per beacon heard by 3 gateways or more, how well the position explains its readings: the
    sum of squared standardized residuals over the degrees of freedom left (gateways - 2)."""
    heard = geo.mask.sum(axis=1)
    rows = heard >= 3
    if not rows.any():
        return np.zeros(0)
    z2 = _standardized(geo, xy, radio_map) ** 2
    return np.asarray(z2.sum(axis=1)[rows] / (heard[rows] - 2))


def mean_residual_db(
    geo: Geometry,
    xy: F64,
    radio_map: MapFn | None,
    min_gateways: int,
    above_dbm: F64 | None = None,
) -> tuple[F64, F64]:
    """Per beacon: the mean of its residuals (reading - predicted, dB) at `xy`, weighed as the
    fit weighs them (inverse variance times Huber's weight), and that mean's variance; NaN for
    beacons with fewer than `min_gateways` such readings. An offset common to all of a
    beacon's gateways (its tx power) shows here and nowhere else (txoffset.py).

    With `above_dbm` (B, K), only slots predicted above it count: near a gateway's floor only
    the readings that fading lifted over it are heard, and their residuals lean positive. The
    cut is on the prediction, not the reading (which leans the same way), moved by the mean
    residual of all slots: a beacon whose power is still far off would otherwise have none
    predicted above it (a generic -59 dBm predicts flat-calib2021's tag 12 dB low)."""
    mu = _predicted_rssi(geo, xy, radio_map)
    res = geo.rssi_dbm - mu
    mean, var = _weighted_mean_residual(geo, geo.mask, res, min_gateways)
    if above_dbm is None:
        return mean, var
    shifted = mu + np.nan_to_num(mean)[:, None]
    return _weighted_mean_residual(geo, geo.mask & (shifted >= above_dbm), res, min_gateways)


def _weighted_mean_residual(
    geo: Geometry, use: NDArray[np.bool_], residual_db: F64, min_gateways: int
) -> tuple[F64, F64]:
    """mean_residual_db over the slots `use`."""
    res = np.where(use, residual_db, 0.0)
    w = np.where(use, _huber_weight(np.abs(res) / geo.sd_db) / geo.sd_db**2, 0.0)
    total = w.sum(axis=1)
    enough = (use.sum(axis=1) >= min_gateways) & (total > 0.0)
    safe = np.where(enough, total, 1.0)
    mean = np.where(enough, (w * res).sum(axis=1) / safe, np.nan)
    return mean, np.where(enough, 1.0 / safe, np.nan)


def _sum_slots(a: F64) -> F64:
    """Sum over each beacon's gateway slots (axis 1 of (B, K)) as a matrix-vector product.

    numpy reduces a short last axis slowly: for (10,000, 8), 165 us with `sum(axis=1)`
    against 17 us here (measured 2026-12-05); the normal equations take six such sums per
    iteration, which was 16 ms of a 10,000-beacon tick. Only the order of the additions
    differs (last-bit rounding).
    """
    return np.asarray(a @ np.ones(a.shape[1]), dtype=np.float64)


def _huber(abs_z: F64) -> F64:
    """Huber's loss of residuals |z|, as m (|z| - m / 2) with m = min(|z|, k): bit for bit
    0.5 z^2 inside and k (|z| - k / 2) beyond, in two passes instead of a where over both."""
    m = np.minimum(abs_z, HUBER_K)
    return np.asarray(m * (abs_z - 0.5 * m), dtype=np.float64)


def _huber_weight(abs_z: F64) -> F64:
    """Huber's IRLS weight k / max(|z|, k): 1 inside, k / |z| beyond."""
    return np.asarray(HUBER_K / np.maximum(abs_z, HUBER_K), dtype=np.float64)


def _prior_var(geo: Geometry) -> F64:
    """Per beacon: variance of the prior, small only where the gateways leave it undetermined."""
    few = geo.mask.sum(axis=1) <= 2
    return np.where(few, PRIOR_SD_M**2, PRIOR_SD_WELL_POSED_M**2)


def _cost(geo: Geometry, xy: F64, prior: F64, radio_map: MapFn | None) -> F64:
    huber = _huber(np.abs(_standardized(geo, xy, radio_map)))
    d = xy - prior
    total = _sum_slots(huber) + 0.5 * (d[:, 0] ** 2 + d[:, 1] ** 2) / _prior_var(geo)
    return np.asarray(total, dtype=np.float64)


def weighted_centroid(geo: Geometry) -> F64:
    """Start point: gateways weighted by the inverse square of their estimated range."""
    rng = distance_m(geo.rssi_dbm, geo.ref_dbm, geo.exponent)
    w = np.where(geo.mask, 1.0 / np.maximum(rng, 0.5) ** 2, 0.0)
    total = np.maximum(w.sum(axis=1, keepdims=True), 1e-12)
    return np.asarray((w[..., None] * geo.gw_xy).sum(axis=1) / total)


def solve(
    geo: Geometry,
    prior: F64 | None = None,
    radio_map: MapFn | None = None,
) -> Solution:
    """Locate every beacon; `prior` (B, 2) is the track prediction where there is one.

    Every beacon descends from the weighted centroid of its gateways, so its measurement does
    not lean on its own track (starting from the prediction let a parked cart in the simulated
    store walk 18 m along a wall, one tick at a time, and cost 10 % in median error). Where
    that solution lies away from the prediction, a second descent from the prediction is kept
    if it ends lower (simulated store: median 4.1 m without it, 3.8 m with it).
    """

    centroid = weighted_centroid(geo)
    anchor = centroid if prior is None else np.where(np.isnan(prior), centroid, prior)
    xy = _gauss_newton(geo, centroid.copy(), anchor, radio_map)
    if prior is not None:
        # Only where the two starts could end in different basins: the centroid's solution
        # lies away from the prediction.
        apart = ((xy - anchor) ** 2).sum(axis=1) > SAME_BASIN_M**2
        rows = np.flatnonzero(apart & np.isfinite(prior[:, 0]))
        if rows.shape[0]:
            sub = select_rows(geo, rows)
            alt = _gauss_newton(sub, anchor[rows].copy(), anchor[rows], radio_map)
            better = _cost(sub, alt, anchor[rows], radio_map) < _cost(
                sub, xy[rows], anchor[rows], radio_map
            )
            xy[rows[better]] = alt[better]
    cov = _covariance(geo, xy, radio_map)
    used = geo.mask.sum(axis=1).astype(np.int64)
    two = np.flatnonzero(used == 2)
    if two.shape[0]:
        cov[two] += _mirror_spread(select_rows(geo, two), xy[two], anchor[two], radio_map)
    single = used == 1
    if single.any():
        xy, cov = _proximity(geo, xy, cov, single)
    return Solution(xy=xy, cov=cov, used=used)


@dataclass(frozen=True)
class _Terms:
    """The per-slot constants of the normal equations, computed once per descent; each
    iteration takes the rows of the beacons still moving. Same arithmetic as _model and _cost,
    hoisted out of the loop (the hot loop of a tick)."""

    gw: NDArray[np.intp]
    gx: F64
    """(B, K) gateway x, contiguous."""
    gy: F64
    dz2: F64
    """(B, K) squared height difference."""
    ref_dbm: F64
    ten_n: F64
    """(B, K) 10 x exponent."""
    slope_n: F64
    """(B, K) -exponent / (ln 10 / 10): d mu / d p = slope_n (p - g) / d^2."""
    rssi_dbm: F64
    inv_sd: F64
    """(B, K) 1 / sd, zero for empty slots."""
    sd_or_1: F64
    """(B, K) sd where the slot is used, else 1 (turns z back into dB without dividing by 0)."""

    @classmethod
    def of(cls, geo: Geometry) -> _Terms:
        inv_sd = np.where(geo.mask, 1.0 / geo.sd_db, 0.0)
        return cls(
            gw=geo.gw,
            gx=np.ascontiguousarray(geo.gw_xy[..., 0]),
            gy=np.ascontiguousarray(geo.gw_xy[..., 1]),
            dz2=geo.dz_m * geo.dz_m,
            ref_dbm=geo.ref_dbm,
            ten_n=10.0 * geo.exponent,
            slope_n=-geo.exponent / LN10_OVER_10,
            rssi_dbm=geo.rssi_dbm,
            inv_sd=inv_sd,
            sd_or_1=np.where(inv_sd > 0, inv_sd, 1.0),
        )

    def rows(self, idx: NDArray[np.intp]) -> _Terms:
        return _take_rows(self, idx)


def _normal_equations(
    terms: _Terms, xy: F64, prior: F64, inv_var: F64, radio_map: MapFn | None
) -> tuple[F64, F64, F64, F64, F64, F64]:
    """Cost and the 2x2 Gauss-Newton system (a b; b c)(dx dy) = (gx gy) at xy, per beacon.

    The hot loop of a tick: written per coordinate, without (B, K, 2) temporaries.
    """
    dx = xy[:, 0:1] - terms.gx
    dy = xy[:, 1:2] - terms.gy
    d2 = np.maximum(dx * dx + dy * dy + terms.dz2, MIN_DISTANCE_M**2)
    # mean_rssi_dbm inlined: d >= MIN_DISTANCE_M already
    mu = terms.ref_dbm - terms.ten_n * np.log10(np.sqrt(d2))
    slope = terms.slope_n / d2
    gxk, gyk = slope * dx, slope * dy
    if radio_map is not None:
        correction, d_dx, d_dy = radio_map(terms.gw, xy[:, None, :])
        mu = mu + correction
        gxk, gyk = gxk + d_dx, gyk + d_dy
    inv_sd = terms.inv_sd
    z = (terms.rssi_dbm - mu) * inv_sd
    az = np.abs(z)
    huber = _huber(az)
    w = _huber_weight(az) * inv_sd * inv_sd  # zero for empty slots (inv_sd = 0)
    dprior = xy - prior
    px, py = dprior[:, 0], dprior[:, 1]
    cost = _sum_slots(huber) + 0.5 * (px * px + py * py) * inv_var
    wgx, wgy = w * gxk, w * gyk
    a = _sum_slots(wgx * gxk) + inv_var
    b = _sum_slots(wgx * gyk)
    c = _sum_slots(wgy * gyk) + inv_var
    r = z / terms.sd_or_1  # residual in dB
    gx = _sum_slots(wgx * r) - px * inv_var
    gy = _sum_slots(wgy * r) - py * inv_var
    return cost, a, b, c, gx, gy


def _gauss_newton(geo: Geometry, xy: F64, prior: F64, radio_map: MapFn | None) -> F64:
    """Levenberg-Marquardt with Huber IRLS; one model evaluation per iteration, 2x2 solved in
    closed form, and only the beacons still moving more than a centimetre are iterated.

    The state is kept for the rows at hand (`rows`), updated with masks rather than gathered
    and scattered by index each iteration; the rows are re-sliced to the moving beacons once
    these are few enough to pay for the copy. A beacon that stopped keeps its state, so its
    step stays below CONVERGED_M: masking it is the same as dropping it.
    """
    inv_var = 1.0 / _prior_var(geo)
    terms = _Terms.of(geo)
    best_xy = xy.copy()
    cost, a, b, c, gx, gy = _normal_equations(terms, xy, prior, inv_var, radio_map)
    lam = np.full(xy.shape[0], 1e-3)
    rows = np.arange(xy.shape[0])
    sub, here_xy, here_prior, here_inv_var = terms, xy, prior, inv_var
    for _ in range(ITERATIONS):
        damp = 1.0 + lam
        da, dc = a * damp, c * damp
        det = np.maximum(da * dc - b * b, 1e-18)
        sx, sy = (dc * gx - b * gy) / det, (da * gy - b * gx) / det
        length = np.hypot(sx, sy)
        moving = length >= CONVERGED_M
        n_moving = int(np.count_nonzero(moving))
        if n_moving == 0:
            break
        scale = np.where(moving, np.minimum(1.0, MAX_STEP_M / np.maximum(length, 1e-12)), 0.0)
        sx, sy = sx * scale, sy * scale
        if n_moving < RESLICE_SHARE * rows.shape[0]:
            best_xy[rows] = here_xy
            keep = np.flatnonzero(moving)
            rows, sub = rows[keep], sub.rows(keep)
            here_xy, here_prior, here_inv_var = here_xy[keep], here_prior[keep], here_inv_var[keep]
            cost, a, b, c, gx, gy = cost[keep], a[keep], b[keep], c[keep], gx[keep], gy[keep]
            lam, moving, sx, sy = lam[keep], moving[keep], sx[keep], sy[keep]
        trial = here_xy + np.stack([sx, sy], axis=1)
        t_cost, ta, tb, tc, tgx, tgy = _normal_equations(
            sub, trial, here_prior, here_inv_var, radio_map
        )
        # Rows that stopped took a zero step: evaluated, never kept.
        better = (t_cost < cost) & moving
        here_xy = np.where(better[:, None], trial, here_xy)
        cost, a, b, c = (
            np.where(better, t_cost, cost),
            np.where(better, ta, a),
            np.where(better, tb, b),
            np.where(better, tc, c),
        )
        gx, gy = np.where(better, tgx, gx), np.where(better, tgy, gy)
        lam = np.where(moving, np.where(better, lam * 0.3, lam * 10.0), lam)
    best_xy[rows] = here_xy
    return best_xy


def select_rows(geo: Geometry, rows: NDArray[np.intp]) -> Geometry:
    return _take_rows(geo, rows)


def _take_rows(obj: _RowsT, rows: NDArray[np.intp]) -> _RowsT:
    """The same per-beacon arrays (every field has beacons first), for these beacons only."""
    taken: dict[str, Any] = {}
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        taken[f.name] = None if value is None else value[rows]
    return dataclasses.replace(obj, **taken)


def _covariance(geo: Geometry, xy: F64, radio_map: MapFn | None) -> F64:
    """Inverse curvature of the cost at the solution, prior included (bounded for 2 gateways),
    times the variance factor of the residuals where they say the noise model is too kind.

    The factor is the robust unit-weight variance of least squares, 2 sum huber(z) / (n - 2):
    about 1 where the gateways agree as well as `sd_db` says, larger where they disagree
    (a shopper's body between tag and gateway, a wall the plan does not know). It only ever
    widens the covariance: with a few degrees of freedom it is too noisy to claim better than
    the noise model, and two gateways leave none. Simulated store (C, docs/accuracy.md): 32 ->
    45 % of carts' true positions within accuracy_m; warehouse (D) 46 -> 50 %, its tracked pallets'
    median 5.23 -> 5.06 m as the Kalman filter trusts such fixes less; where the noise model
    holds (the simulated room, B) nothing changes. The map's slopes count up to
    MAP_SLOPE_CAP_DB_M."""
    mu, grad = _model(geo, xy, radio_map)
    z = np.where(geo.mask, (geo.rssi_dbm - mu) / geo.sd_db, 0.0)
    a = np.abs(z)
    w = np.where(geo.mask, _huber_weight(a), 0.0)
    j = grad / geo.sd_db[..., None]
    info = np.einsum("bk,bki,bkj->bij", w, j, j) + np.eye(2) / _prior_var(geo)[:, None, None]
    huber = _huber(a)
    dof = geo.mask.sum(axis=1) - 2
    factor = np.where(dof > 0, 2.0 * _sum_slots(huber) / np.maximum(dof, 1), 1.0)
    return inv2x2(info)[0] * np.maximum(factor, 1.0)[:, None, None]


def _mirror_spread(geo: Geometry, xy: F64, anchor: F64, radio_map: MapFn | None) -> F64:
    """Two gateways: the spread (n, 2, 2) to add for the mirror image of each solution.

    Two ranges fit as well on either side of the line through the gateways; only the prior
    (the track's prediction, or the gateways' centroid, which lies on that line) and the
    floor-plan losses choose. The mirror point m carries the weight w = 1 / (1 + e^(cost(m) -
    cost(x))), and the spread about x is the curvature's plus w (m - x)(m - x)'. Without a
    track both sides weigh alike. Simulated warehouse (D, its 35-gateway layout of the time),
    parked pallets: within accuracy_m 48 -> 50 %, median 5.00 -> 4.97 m, right or neighbouring
    bay 14 -> 15 %.
    """
    order = np.argsort(~geo.mask, axis=1, kind="stable")[:, :2]
    g = np.take_along_axis(geo.gw_xy, order[..., None], axis=1)
    along = g[:, 1] - g[:, 0]
    along /= np.maximum(np.hypot(along[:, 0], along[:, 1]), 1e-9)[:, None]
    normal = np.c_[-along[:, 1], along[:, 0]]
    side = ((xy - g[:, 0]) * normal).sum(axis=1)
    mirror = xy - 2.0 * side[:, None] * normal
    gain = _cost(geo, mirror, anchor, radio_map) - _cost(geo, xy, anchor, radio_map)
    # clipped: e^50 is beyond any weight that matters, and exp must not overflow
    w = 1.0 / (1.0 + np.exp(np.clip(gain, -50.0, 50.0)))
    d = mirror - xy
    return np.asarray(w[:, None, None] * d[:, :, None] * d[:, None, :], dtype=np.float64)


def _proximity(geo: Geometry, xy: F64, cov: F64, single: NDArray[np.bool_]) -> tuple[F64, F64]:
    """One gateway: at the gateway, spread as a ring at the estimated horizontal range h.

    The ring's variance is h^2 / 2 per axis, and the range's own spread, h ln(10) sd / (10 n)
    at 1 sigma (log-distance path loss), widens it radially. Until 2026-12 the spread was
    sqrt(h^2 + (h ln(10) sd / 10)^2) per axis, without the 1 / n nor the half: 2.2 times as
    wide, which a track fed by one gateway in the simulated warehouse (D, 35 gateways) heeded
    too little (its pallets' p90 15.37 -> 14.56 m with the ring; calibrated (F), median 2.76 ->
    2.66 m)."""
    xy, cov = xy.copy(), cov.copy()
    k = np.argmax(geo.mask[single], axis=1)
    rows = np.flatnonzero(single)
    gw_xy = geo.gw_xy[rows, k]
    slant = distance_m(geo.rssi_dbm[rows, k], geo.ref_dbm[rows, k], geo.exponent[rows, k])
    horizontal = np.sqrt(np.maximum(slant**2 - geo.dz_m[rows, k] ** 2, 0.0))
    relative = LN10_OVER_10 * geo.sd_db[rows, k] / geo.exponent[rows, k]
    spread = np.sqrt(0.5 * horizontal**2 * (1.0 + relative**2)) + 0.5
    xy[rows] = gw_xy
    cov[rows] = np.eye(2)[None] * (spread**2)[:, None, None]
    return xy, cov


GRID_STEP_M = 0.25
"""Candidate spacing of the map likelihood: a sixth of the 1.5 m shadowing correlation length."""
GRID_RADIUS_M = 6.0
"""Candidates within this distance of the start point: about one gateway spacing."""
GRID_CHUNK = 512
"""Beacons per block at the default grid, bounding memory to about chunk x candidates x 8 bytes
x a few dense arrays; a larger grid takes proportionally fewer beacons per block."""
MAX_MEASUREMENT_SD_M = 15.0
"""An equivalent measurement never claims less information than this spread: where the grid
posterior is no sharper than the prediction, the measurement says (almost) nothing."""
REFINE_NATS = 12.0
"""Coarse-to-fine: the likelihood is evaluated on every other lattice point first (a quarter of
the candidates), then on the fine points next to the coarse ones within 12 nats of the best.
The others weigh below e^-12 of the peak, as far as a shadowing correlation of 1.5 m and a map
at 0.25 to 0.5 m let the likelihood vary over half a coarse step. The warehouse's likelihood is
broad: ~1,600 of 1,799 candidates per beacon are still evaluated; sharp ones gain more."""
EVAL_BLOCK = 65_536
"""Points per pass of _neg_cost: its float32 temporaries stay in the cache (a warehouse tick's
grid: 130 ms in one pass over ~800,000 points, 99 ms in blocks of 65,536, 104 ms of 32,768)."""


@dataclass(frozen=True)
class MapTable:
    """A radio map as solve_grid reads it: per gateway and map cell, the four coefficients of the
    bilinear patch (v00, v01 - v00, v10 - v00, v11 - v10 - v01 + v00), float32, so that one
    gather of 16 contiguous bytes per candidate and gateway gives the correction."""

    coef: NDArray[np.float32]
    """(gateways * (ny - 1) * (nx - 1), 4)"""
    origin: tuple[float, float]
    resolution_m: float
    shape: tuple[int, int]
    """(ny, nx) of the map's values."""

    @classmethod
    def of(cls, values: F64, origin: tuple[float, float], resolution_m: float) -> MapTable:
        v = values.astype(np.float32)
        v00, v01 = v[:, :-1, :-1], v[:, :-1, 1:]
        v10, v11 = v[:, 1:, :-1], v[:, 1:, 1:]
        coef = np.stack([v00, v01 - v00, v10 - v00, v11 - v10 - v01 + v00], axis=-1)
        ny, nx = values.shape[1:]
        return cls(coef.reshape(-1, 4), origin, resolution_m, (int(ny), int(nx)))


def grid_offsets(step_m: float = GRID_STEP_M, radius_m: float = GRID_RADIUS_M) -> F64:
    n = int(radius_m / step_m)
    axis = np.arange(-n, n + 1) * step_m
    gx, gy = np.meshgrid(axis, axis)
    keep = gx**2 + gy**2 <= radius_m**2
    return np.asarray(np.c_[gx[keep], gy[keep]], dtype=np.float64)


_DEFAULT_CANDIDATES = grid_offsets().shape[0]


@dataclass(frozen=True)
class _Lattice:
    """Where each candidate offset sits on its square lattice, for the coarse-to-fine search."""

    ij: NDArray[np.intp]
    """(C, 2) lattice column and row, from 0."""
    size: int
    """Side of the lattice's bounding square."""
    coarse: NDArray[np.bool_]
    """(C,) both indices even relative to the centre: the coarse pass."""


@dataclass(frozen=True)
class _Candidates:
    """A grid's offsets and what every block of beacons reads from them, derived once."""

    offsets: F64
    """(c, 2)"""
    lattice: _Lattice | None
    moments: F64
    """(c, 5): x, y, x^2, x y, y^2 of each offset (see _posterior)."""
    step2: float
    """Squared lattice step: its uniform spread (step^2 / 12) is added to the posterior."""

    @classmethod
    def of(cls, offsets: F64) -> _Candidates:
        ox, oy = offsets[:, 0], offsets[:, 1]
        step = np.abs(offsets[offsets[:, 0] != 0, 0])
        step2 = float(step.min()) ** 2 if offsets.shape[0] > 1 else 0.0
        return cls(offsets, _lattice(offsets), np.c_[ox, oy, ox * ox, ox * oy, oy * oy], step2)


def _lattice(offsets: F64) -> _Lattice | None:
    """None where the offsets are not a square lattice with the origin on it (then every
    candidate is evaluated)."""
    if offsets.shape[0] < 2:
        return None
    nonzero = np.abs(offsets[offsets != 0])
    if nonzero.shape[0] == 0:
        return None
    step = float(nonzero.min())
    k = np.rint(offsets / step)
    if not np.allclose(k * step, offsets, rtol=0, atol=1e-6 * step):
        return None
    ki = k.astype(np.intp)
    lo = ki.min(axis=0)
    coarse = (ki[:, 0] % 2 == 0) & (ki[:, 1] % 2 == 0)
    return _Lattice(ki - lo, int((ki - lo).max()) + 1, coarse)


def _dilate(keep: NDArray[np.bool_], lat: _Lattice) -> NDArray[np.bool_]:
    """(b, C) -> candidates within one lattice step (8-neighbourhood) of a kept one."""
    m = lat.size + 2
    img = np.zeros((keep.shape[0], m, m), dtype=bool)
    iy, ix = lat.ij[:, 1] + 1, lat.ij[:, 0] + 1
    img[:, iy, ix] = keep
    out = img.copy()
    for sy, sx in ((0, 1), (1, 0), (1, 1), (1, -1)):
        a = img[:, max(sy, 0) : m + min(sy, 0), max(sx, 0) : m + min(sx, 0)]
        b = img[:, max(-sy, 0) : m + min(-sy, 0), max(-sx, 0) : m + min(-sx, 0)]
        out[:, max(-sy, 0) : m + min(-sy, 0), max(-sx, 0) : m + min(-sx, 0)] |= a
        out[:, max(sy, 0) : m + min(sy, 0), max(sx, 0) : m + min(sx, 0)] |= b
    return out[:, iy, ix]


@dataclass(frozen=True)
class _Cells:
    """Where points fall on a MapTable: the flat index of their cell and the fractions within."""

    cell: NDArray[np.intp]
    ax: NDArray[np.float32]
    ay: NDArray[np.float32]

    @classmethod
    def of(cls, table: MapTable, points: F64) -> _Cells:
        ny, nx = table.shape
        fx = np.clip((points[:, 0] - table.origin[0]) / table.resolution_m, 0.0, nx - 1.000001)
        fy = np.clip((points[:, 1] - table.origin[1]) / table.resolution_m, 0.0, ny - 1.000001)
        ix, iy = fx.astype(np.intp), fy.astype(np.intp)
        f32 = np.float32
        return cls(iy * (nx - 1) + ix, (fx - ix).astype(f32), (fy - iy).astype(f32))

    def correction(
        self, table: MapTable, base: NDArray[np.intp], m: int, out: NDArray[np.float32]
    ) -> None:
        """The first m points' correction into `out`, `base` their gateway's first cell."""
        c = np.take(table.coef, base + self.cell[:m], axis=0)
        ax = self.ax[:m]
        # v00 + ax (v01 - v00) + ay ((v10 - v00) + ax (v11 - v10 - v01 + v00))
        np.multiply(c[:, 3], ax, out=out)
        out += c[:, 2]
        out *= self.ay[:m]
        out += c[:, 0]
        out += ax * c[:, 1]


def _slot_constants(sub: Geometry, s_all: F64) -> tuple[NDArray[np.float32], ...]:
    """Per slot, contiguous (K, b) float32: gateway x, y, dz^2, and a, b, s of
    z = (rssi - mu) / sd = a + b log10(d^2) - s map, where mu = ref - 5 n log10(d^2) + map and
    s = 1 / sd (`s_all`), zero for empty slots so that they add nothing."""
    f32 = np.float32
    return (
        np.ascontiguousarray(sub.gw_xy[..., 0].T, dtype=f32),
        np.ascontiguousarray(sub.gw_xy[..., 1].T, dtype=f32),
        (sub.dz_m.T * sub.dz_m.T).astype(f32),
        ((sub.rssi_dbm.T - sub.ref_dbm.T) * s_all).astype(f32),
        (5.0 * sub.exponent.T * s_all).astype(f32),
        s_all.astype(f32),
    )


def _neg_cost(
    sub: Geometry, rows: NDArray[np.intp], cand: F64, radio_map: MapTable | None
) -> NDArray[np.float32]:
    """Log-likelihood -sum_k huber(z_k) of beacon `rows` (N,) of `sub` at points `cand` (N, 2).

    `rows` ascending, and `sub`'s beacons ordered by their last used gateway slot, most first:
    slot k is then used by a prefix of the points only (a warehouse beacon hears 3.4 of its 10
    slots on average). One pass per slot over that prefix, float32 and in place: the (beacons,
    candidates, gateways) float64 temporaries of a block were ~75 MB each, and their page
    faults took a third of the time. The bilinear cell of a point serves all its gateways.
    """
    f32 = np.float32
    n = rows.shape[0]
    total = np.zeros(n, dtype=f32)
    if n == 0:
        return total
    cx, cy = cand[:, 0].astype(f32), cand[:, 1].astype(f32)
    s_all = np.where(sub.mask, 1.0 / sub.sd_db, 0.0).T
    gx_all, gy_all, dz2_all, a_all, b_all, s32 = _slot_constants(sub, s_all)
    # +inf for a gateway that heard, 0 for one that did not: z = min(z, cap)
    cap_all = (
        None
        if sub.unheard is None
        else np.ascontiguousarray(np.where(sub.unheard.T, 0.0, np.inf), dtype=f32)
    )
    table = radio_map
    cells = gw_base = None
    if table is not None:
        cells = _Cells.of(table, cand)
        per_gw = (table.shape[0] - 1) * (table.shape[1] - 1)
        gw_base = np.clip(sub.gw.T, 0, table.coef.shape[0] // per_gw - 1) * per_gw
    # slot k is used by the beacons before by_slot[k], i.e. by the points before ends[k]
    last = np.where(sub.mask, np.arange(1, sub.mask.shape[1] + 1), 0).max(axis=1)
    by_slot = (last[:, None] > np.arange(sub.mask.shape[1])[None, :]).sum(axis=0)
    ends = np.searchsorted(rows, by_slot)
    # rows ascending: per-beacon constants spread over their points by np.repeat (4x a take)
    first = int(rows[0])
    counts = np.bincount(rows - first)
    d2_buf, t_buf, z_buf = (np.empty(n, dtype=f32) for _ in range(3))
    for k in range(sub.mask.shape[1]):
        m = int(ends[k])
        if m == 0:
            break
        per = counts[: int(by_slot[k]) - first]
        d2, t, z = d2_buf[:m], t_buf[:m], z_buf[:m]

        def spread(column: NDArray[Any], per: NDArray[np.intp] = per) -> NDArray[Any]:
            return np.repeat(column[first : first + per.shape[0]], per)

        np.subtract(cx[:m], spread(gx_all[k]), out=d2)
        np.multiply(d2, d2, out=d2)
        np.subtract(cy[:m], spread(gy_all[k]), out=t)
        np.multiply(t, t, out=t)
        d2 += t
        d2 += spread(dz2_all[k])
        np.maximum(d2, f32(MIN_DISTANCE_M**2), out=d2)
        np.log10(d2, out=d2)
        np.multiply(d2, spread(b_all[k]), out=z)
        z += spread(a_all[k])
        if table is not None and cells is not None and gw_base is not None:
            cells.correction(table, spread(gw_base[k]), m, t)
            t *= spread(s32[k])
            z -= t
        if cap_all is not None:
            np.minimum(z, spread(cap_all[k]), out=z)
        # Huber as m (|z| - m / 2), m = min(|z|, k): 0.5 z^2 inside, k (|z| - k / 2) beyond
        np.abs(z, out=z)
        np.minimum(z, f32(HUBER_K), out=t)
        z -= f32(0.5) * t
        z *= t
        total[:m] -= z
    return total


def _evaluate(
    sub: Geometry,
    which: NDArray[np.bool_],
    start: F64,
    offsets: F64,
    radio_map: MapTable | None,
) -> NDArray[np.float32]:
    """_neg_cost at the candidates `which` (b, c) marks, in their row-major order."""
    rows, cols = np.nonzero(which)
    cand = start.take(rows, axis=0) + offsets.take(cols, axis=0)
    out = np.empty(rows.shape[0], dtype=np.float32)
    for lo in range(0, rows.shape[0], EVAL_BLOCK):
        hi = lo + EVAL_BLOCK
        out[lo:hi] = _neg_cost(sub, rows[lo:hi], cand[lo:hi], radio_map)
    return out


def _posterior(loglik: F64, moments: F64) -> tuple[F64, F64]:
    """Mean offset (b, 2) and covariance (b, 2, 2) of the weights exp(loglik) over candidates
    whose offsets have `moments` (c, 5) = (x, y, x^2, x y, y^2): one matrix product instead of
    einsums over (b, c, 2) (2.8 s of the 40-s warehouse slice)."""
    w = np.exp(loglik - loglik.max(axis=1, keepdims=True))
    m = (w @ moments) / w.sum(axis=1)[:, None]
    shift = m[:, :2]
    cov = np.empty((loglik.shape[0], 2, 2))
    cov[:, 0, 0] = m[:, 2] - shift[:, 0] ** 2
    cov[:, 0, 1] = cov[:, 1, 0] = m[:, 3] - shift[:, 0] * shift[:, 1]
    cov[:, 1, 1] = m[:, 4] - shift[:, 1] ** 2
    return shift, cov


def solve_grid(
    geo: Geometry,
    start: F64,
    radio_map: MapTable | None,
    allowed: Callable[[F64], NDArray[np.bool_]] | None = None,
    *,
    offsets: F64 | None = None,
    prior: tuple[F64, F64] | None = None,
    workers: int = 1,
) -> Solution:
    """The likelihood over the map: posterior mean and covariance over candidates near `start`.

    Where the map makes the cost multimodal (two rooms that look alike to most gateways), the
    mean and the covariance keep both modes' weight instead of committing to the wrong one.
    `allowed` marks candidates the beacon can occupy (the walkable floor).

    With `prior` (mean (n, 2), covariance (n, 2, 2); NaN rows for none), the likelihood is
    weighed by the track's prediction on the grid, where both are exact, and the result is
    returned as the equivalent Gaussian measurement: the one that, fused with the prior by a
    Kalman update, gives the grid posterior. Modes the prediction rules out no longer drag
    the fix towards the middle between them.

    Coarse to fine (REFINE_NATS): every other lattice point first, then the fine points next to
    coarse ones within reach of the best; the others, and candidates off the floor, are never
    evaluated and weigh zero. With the rest of this pass (float32 per-slot evaluation, single-
    gateway beacons skipped, moments by matrix products), 180 s of the calibrated simulated
    warehouse (691 beacons, 35 gateways) replay in 28 s instead of 233 s; the grid posterior,
    fused with the track's prediction, moves by at most 1 cm on the simulated store, and the
    coarse-to-fine alone by at most 0.04 of the measurement's sd on the warehouse.

    `workers` threads share the blocks of GRID_CHUNK beacons: a tick of 10,000 calibrated
    beacons (bench/engine_tick.py --map) 3.12 -> 2.40 s on 2 cores. A site of a few hundred
    beacons is one block and gains nothing.
    """
    offsets = grid_offsets() if offsets is None else offsets
    grid = _Candidates.of(offsets)
    xy = np.zeros((start.shape[0], 2))
    cov = np.zeros((start.shape[0], 2, 2))
    # beacons by their last used gateway slot, most first (see _neg_cost); each beacon's result
    # is its own whatever its neighbours, so the order changes nothing else
    last = np.where(geo.mask, np.arange(1, geo.mask.shape[1] + 1), 0).max(axis=1)
    used = geo.mask.sum(axis=1).astype(np.int64)
    single = used == 1
    # one gateway gives a proximity fix whatever the grid says: not solved (warehouse: 20 %)
    order = np.flatnonzero(~single)[np.argsort(-last[~single], kind="stable")]
    n = order.shape[0]
    # the same memory bound for any candidate count: GRID_CHUNK beacons x the default grid
    chunk = max(1, GRID_CHUNK * _DEFAULT_CANDIDATES // max(1, offsets.shape[0]))

    def block(lo: int) -> tuple[NDArray[np.intp], tuple[F64, F64]]:
        these = order[lo : lo + chunk]
        part = None if prior is None else (prior[0][these], prior[1][these])
        return these, _grid_block(
            select_rows(geo, these),
            start[these],
            grid,
            radio_map=radio_map,
            allowed=allowed,
            prior=part,
        )

    for these, (block_xy, block_cov) in _on_threads(block, range(0, n, chunk), workers):
        xy[these], cov[these] = block_xy, block_cov
    if single.any():
        xy, cov = _proximity(geo, xy, cov, single)
    return Solution(xy=xy, cov=cov, used=used)


def _on_threads(work: Callable[[int], _T], starts: range, workers: int) -> list[_T]:
    """`work` of each block start, on up to `workers` threads: numpy leaves the GIL inside its
    loops, and a block reads only what it is given and returns or writes only its own rows.
    The blocks do not depend on `workers`, so results are the same bit for bit with any
    number of threads."""
    if workers > 1 and len(starts) > 1:
        with ThreadPoolExecutor(min(workers, len(starts))) as pool:
            return list(pool.map(work, starts))
    return [work(lo) for lo in starts]


def _log_prior(
    start: F64, prior: tuple[F64, F64], moments: F64
) -> tuple[F64, F64, NDArray[np.bool_]]:
    """-1/2 the prediction's Mahalanobis distance at every candidate (b, c), zero for beacons
    without one; also the prediction's information (b, 2, 2) and which beacons have one."""
    p_mean, p_cov = prior
    has_prior = np.isfinite(p_mean[:, 0])
    safe_cov = np.where(has_prior[:, None, None], p_cov, np.eye(2)[None])
    p_info = inv2x2(safe_cov)[0]
    # (s + o)' P (s + o) with s = start - prior mean, through the offsets' moments: a matrix
    # product instead of an einsum over (b, c, 2)
    s = np.where(has_prior[:, None], start - p_mean, 0.0)
    ps = np.einsum("bij,bj->bi", p_info, s)
    coef = np.c_[2.0 * ps, p_info[:, 0, 0], 2.0 * p_info[:, 0, 1], p_info[:, 1, 1]]
    quad = coef @ moments.T + (ps * s).sum(axis=1)[:, None]
    return -0.5 * np.where(has_prior[:, None], quad, 0.0), p_info, has_prior


def _grid_block(
    sub: Geometry,
    start: F64,
    grid: _Candidates,
    *,
    radio_map: MapTable | None,
    allowed: Callable[[F64], NDArray[np.bool_]] | None,
    prior: tuple[F64, F64] | None,
) -> tuple[F64, F64]:
    """solve_grid for one block of beacons: mean (b, 2) and covariance (b, 2, 2)."""
    offsets, lat, moments = grid.offsets, grid.lattice, grid.moments
    shape = (start.shape[0], offsets.shape[0])
    ok: NDArray[np.bool_] = np.ones(shape, dtype=bool)
    if allowed is not None:
        cand = start[:, None, :] + offsets[None, :, :]  # (b, c, 2)
        ok = allowed(cand.reshape(-1, 2)).reshape(shape)
        # A beacon whose candidates all fall off the floor keeps them all rather than none.
        ok |= ~ok.any(axis=1, keepdims=True)
    log_prior = np.zeros(shape)
    if prior is not None:
        log_prior, p_info, has_prior = _log_prior(start, prior, moments)
    loglik = np.full(shape, -np.inf)
    first = ok if lat is None else ok & lat.coarse[None, :]
    if lat is not None:
        # a beacon confined to a strip narrower than the coarse step: all its candidates
        strip = ~first.any(axis=1)
        first[strip] = ok[strip]
    loglik[first] = _evaluate(sub, first, start, offsets, radio_map) + log_prior[first]
    if lat is not None:
        best = loglik.max(axis=1, keepdims=True)
        # next to a coarse point within reach of the best, or to none at all: a fine point on
        # the floor whose coarse neighbours are all off it (a wall, a rack) is not known to be
        # unlikely (simulated store: a tracked beacon at a wall, 0.11 m)
        near = _dilate(loglik >= best - REFINE_NATS, lat) | ~_dilate(first, lat)
        # the likelihood is at most 1: a prior this far below the best rules a point out
        todo = near & ok & ~first & (log_prior >= best - REFINE_NATS)
        loglik[todo] = _evaluate(sub, todo, start, offsets, radio_map) + log_prior[todo]
    shift, post = _posterior(loglik, moments)
    post[:, 0, 0] += grid.step2 / 12.0
    post[:, 1, 1] += grid.step2 / 12.0
    mean = start + shift
    if prior is not None and has_prior.any():
        mean, post = _equivalent_measurement(mean, post, prior[0], p_info, has_prior)
    return mean, post


def _equivalent_measurement(
    post_mean: F64, post_cov: F64, prior_mean: F64, prior_info: F64, has_prior: NDArray[np.bool_]
) -> tuple[F64, F64]:
    """(z, R) with R^-1 = C_post^-1 - P^-1 and z = R (C_post^-1 m_post - P^-1 m_prior)."""
    post_info = inv2x2(post_cov)[0]
    meas_info = post_info - prior_info
    vals, vecs = np.linalg.eigh(meas_info)
    vals = np.maximum(vals, 1.0 / MAX_MEASUREMENT_SD_M**2)
    meas_cov = np.einsum("bij,bj,bkj->bik", vecs, 1.0 / vals, vecs)
    rhs = np.einsum("bij,bj->bi", post_info, post_mean) - np.einsum(
        "bij,bj->bi", prior_info, np.where(has_prior[:, None], prior_mean, 0.0)
    )
    z = np.einsum("bij,bj->bi", meas_cov, rhs)
    out_mean = np.where(has_prior[:, None], z, post_mean)
    out_cov = np.where(has_prior[:, None, None], meas_cov, post_cov)
    return out_mean, out_cov


def _by_last_slot(geo: Geometry) -> NDArray[np.intp]:
    """Beacons ordered by their last used gateway slot, most first, as _neg_cost wants them."""
    last = np.where(geo.mask, np.arange(1, geo.mask.shape[1] + 1), 0).max(axis=1)
    return np.argsort(-last, kind="stable")


def grid_loglik(
    geo: Geometry,
    start: F64,
    radio_map: MapTable | None,
    allowed: Callable[[F64], NDArray[np.bool_]] | None,
    offsets: F64,
    *,
    workers: int = 1,
) -> NDArray[np.float32]:
    """The log-likelihood of each beacon at every candidate among `offsets` around `start`,
    (n, c); -inf off the allowed floor (a beacon whose candidates are all off it keeps them
    all). Every candidate is evaluated (no coarse-to-fine: a far mode may sit between coarse
    points). `workers` threads share the chunks as solve_grid's blocks do (the same result
    bit for bit with any number)."""
    n = start.shape[0]
    out = np.full((n, offsets.shape[0]), -np.inf, dtype=np.float32)
    order = _by_last_slot(geo)
    chunk = max(1, EVAL_BLOCK // max(1, offsets.shape[0]))

    def part(lo: int) -> None:
        these = order[lo : lo + chunk]
        sub = select_rows(geo, these)
        ok = np.ones((these.shape[0], offsets.shape[0]), dtype=bool)
        if allowed is not None:
            cand = start[these][:, None, :] + offsets[None, :, :]
            ok = allowed(cand.reshape(-1, 2)).reshape(ok.shape)
            ok |= ~ok.any(axis=1, keepdims=True)
        ll = np.full(ok.shape, -np.inf, dtype=np.float32)
        ll[ok] = _evaluate(sub, ok, start[these], offsets, radio_map)
        out[these] = ll  # rows of its own: the chunks never share one

    _on_threads(part, range(0, n, chunk), workers)
    return out


def grid_mode(
    geo: Geometry,
    start: F64,
    radio_map: MapTable | None,
    allowed: Callable[[F64], NDArray[np.bool_]] | None,
    offsets: F64,
    *,
    workers: int = 1,
) -> tuple[F64, F64]:
    """The most likely candidate of each beacon among `offsets` around `start` on the allowed
    floor, and its log-likelihood: (n, 2), (n,). Unlike solve_grid's mean, which keeps the weight
    of every mode, this commits to one: the engine asks it where else a beacon could be."""
    ll = grid_loglik(geo, start, radio_map, allowed, offsets, workers=workers)
    k = np.argmax(ll, axis=1)
    best = ll[np.arange(start.shape[0]), k].astype(np.float64)
    return start + offsets[k], best
