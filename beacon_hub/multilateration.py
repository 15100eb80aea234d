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
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

import numpy as np
from numpy.typing import NDArray

from beacon_hub.gaussian2d import inv2x2
from beacon_hub.pathloss import LN10_OVER_10, MIN_DISTANCE_M, distance_m, mean_rssi_dbm

__all__ = [
    "HUBER_K",
    "Geometry",
    "Solution",
    "grid_offsets",
    "select_rows",
    "solve",
    "solve_grid",
    "weighted_centroid",
]

F64 = NDArray[np.float64]
_RowsT = TypeVar("_RowsT", "Geometry", "_Terms")
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


@dataclass(frozen=True)
class Solution:
    xy: F64
    """(B, 2)"""
    cov: F64
    """(B, 2, 2) from the curvature of the cost: the measurement covariance for tracking."""
    used: NDArray[np.int64]
    """(B,) gateways that contributed."""


def _model(geo: Geometry, xy: F64, radio_map: MapFn | None) -> tuple[F64, F64]:
    """Predicted RSSI (B, K) and its gradient with respect to position (B, K, 2)."""
    delta = xy[:, None, :] - geo.gw_xy
    d2 = (delta**2).sum(axis=2) + geo.dz_m**2
    d = np.sqrt(np.maximum(d2, MIN_DISTANCE_M**2))
    mu = mean_rssi_dbm(d, geo.ref_dbm, geo.exponent)
    # d mu / d p = -10 n / ln(10) * (p - g) / d^2
    grad = (-geo.exponent / LN10_OVER_10 / (d * d))[..., None] * delta
    if radio_map is not None:
        correction, d_dx, d_dy = radio_map(geo.gw, xy[:, None, :])
        mu = mu + correction
        grad = grad + np.stack([d_dx, d_dy], axis=-1)
    return mu, grad


def _prior_var(geo: Geometry) -> F64:
    """Per beacon: variance of the prior, small only where the gateways leave it undetermined."""
    few = geo.mask.sum(axis=1) <= 2
    return np.where(few, PRIOR_SD_M**2, PRIOR_SD_WELL_POSED_M**2)


def _cost(geo: Geometry, xy: F64, prior: F64, radio_map: MapFn | None) -> F64:
    mu, _ = _model(geo, xy, radio_map)
    z = np.where(geo.mask, (geo.rssi_dbm - mu) / geo.sd_db, 0.0)
    a = np.abs(z)
    huber = np.where(a <= HUBER_K, 0.5 * z * z, HUBER_K * (a - 0.5 * HUBER_K))
    total = huber.sum(axis=1) + 0.5 * ((xy - prior) ** 2).sum(axis=1) / _prior_var(geo)
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
    inside = az <= HUBER_K
    huber = np.where(inside, 0.5 * z * z, HUBER_K * (az - 0.5 * HUBER_K))
    # Huber's IRLS weight 1 inside, k/|z| outside; zero for empty slots (inv_sd = 0)
    w = np.where(inside, 1.0, HUBER_K / np.maximum(az, 1e-12)) * inv_sd * inv_sd
    dprior = xy - prior
    cost = huber.sum(axis=1) + 0.5 * (dprior**2).sum(axis=1) * inv_var
    wgx, wgy = w * gxk, w * gyk
    a = (wgx * gxk).sum(axis=1) + inv_var
    b = (wgx * gyk).sum(axis=1)
    c = (wgy * gyk).sum(axis=1) + inv_var
    r = z / terms.sd_or_1  # residual in dB
    gx = (wgx * r).sum(axis=1) - dprior[:, 0] * inv_var
    gy = (wgy * r).sum(axis=1) - dprior[:, 1] * inv_var
    return cost, a, b, c, gx, gy


def _gauss_newton(geo: Geometry, xy: F64, prior: F64, radio_map: MapFn | None) -> F64:
    """Levenberg-Marquardt with Huber IRLS; one model evaluation per iteration, 2x2 solved in
    closed form, and only the beacons still moving more than a millimetre are iterated."""
    inv_var = 1.0 / _prior_var(geo)
    terms = _Terms.of(geo)
    best_xy = xy.copy()
    cost, a, b, c, gx, gy = _normal_equations(terms, xy, prior, inv_var, radio_map)
    lam = np.full(xy.shape[0], 1e-3)
    active = rows = np.arange(xy.shape[0])
    sub = terms
    for _ in range(ITERATIONS):
        damp = 1.0 + lam[active]
        da, dc, bb = a[active] * damp, c[active] * damp, b[active]
        ga, gb = gx[active], gy[active]
        det = np.maximum(da * dc - bb * bb, 1e-18)
        step = np.c_[(dc * ga - bb * gb) / det, (da * gb - bb * ga) / det]
        length = np.sqrt((step**2).sum(axis=1))
        step *= np.minimum(1.0, MAX_STEP_M / np.maximum(length, 1e-12))[:, None]
        moving = length >= CONVERGED_M
        active, step = active[moving], step[moving]
        if active.shape[0] == 0:
            break
        if active.shape[0] < RESLICE_SHARE * rows.shape[0]:
            rows, sub = active, terms.rows(active)
        # Rows of `sub` that converged already take a zero step: evaluated, never kept.
        # `active` is an ordered subset of `rows`; the same length means the same rows.
        here = None if active.shape[0] == rows.shape[0] else np.searchsorted(rows, active)
        full_step = step
        if here is not None:
            full_step = np.zeros((rows.shape[0], 2))
            full_step[here] = step
        trial = best_xy[rows] + full_step
        t_cost, ta, tb, tc, tgx, tgy = _normal_equations(
            sub, trial, prior[rows], inv_var[rows], radio_map
        )
        if here is not None:
            trial, t_cost, ta, tb, tc = trial[here], t_cost[here], ta[here], tb[here], tc[here]
            tgx, tgy = tgx[here], tgy[here]
        better = t_cost < cost[active]
        won = active[better]
        best_xy[won] = trial[better]
        cost[won], a[won], b[won], c[won] = t_cost[better], ta[better], tb[better], tc[better]
        gx[won], gy[won] = tgx[better], tgy[better]
        lam[active] = np.where(better, lam[active] * 0.3, lam[active] * 10.0)
    return best_xy


def select_rows(geo: Geometry, rows: NDArray[np.intp]) -> Geometry:
    return _take_rows(geo, rows)


def _take_rows(obj: _RowsT, rows: NDArray[np.intp]) -> _RowsT:
    """The same per-beacon arrays (every field has beacons first), for these beacons only."""
    return dataclasses.replace(
        obj, **{f.name: getattr(obj, f.name)[rows] for f in dataclasses.fields(obj)}
    )


def _covariance(geo: Geometry, xy: F64, radio_map: MapFn | None) -> F64:
    """Inverse curvature of the cost at the solution, prior included (bounded for 2 gateways)."""
    mu, grad = _model(geo, xy, radio_map)
    z = np.where(geo.mask, (geo.rssi_dbm - mu) / geo.sd_db, 0.0)
    w = np.where(geo.mask, np.minimum(1.0, HUBER_K / np.maximum(np.abs(z), 1e-12)), 0.0)
    j = grad / geo.sd_db[..., None]
    info = np.einsum("bk,bki,bkj->bij", w, j, j) + np.eye(2) / _prior_var(geo)[:, None, None]
    return inv2x2(info)[0]


def _proximity(geo: Geometry, xy: F64, cov: F64, single: NDArray[np.bool_]) -> tuple[F64, F64]:
    """One gateway: at the gateway, with the estimated horizontal range as spread."""
    xy, cov = xy.copy(), cov.copy()
    k = np.argmax(geo.mask[single], axis=1)
    rows = np.flatnonzero(single)
    gw_xy = geo.gw_xy[rows, k]
    slant = distance_m(geo.rssi_dbm[rows, k], geo.ref_dbm[rows, k], geo.exponent[rows, k])
    horizontal = np.sqrt(np.maximum(slant**2 - geo.dz_m[rows, k] ** 2, 0.0))
    spread = np.sqrt(horizontal**2 + (horizontal * LN10_OVER_10 * geo.sd_db[rows, k]) ** 2) + 0.5
    xy[rows] = gw_xy
    cov[rows] = np.eye(2)[None] * (spread**2)[:, None, None]
    return xy, cov


GRID_STEP_M = 0.25
"""Candidate spacing of the map likelihood: a sixth of the 1.5 m shadowing correlation length."""
GRID_RADIUS_M = 6.0
"""Candidates within this distance of the start point: about one gateway spacing."""
GRID_CHUNK = 512
"""Beacons per block at the default grid, bounding memory to about chunk x candidates x
gateways x 8 bytes x 4; a larger grid takes proportionally fewer beacons per block."""
MAX_MEASUREMENT_SD_M = 15.0
"""An equivalent measurement never claims less information than this spread: where the grid
posterior is no sharper than the prediction, the measurement says (almost) nothing."""


def grid_offsets(step_m: float = GRID_STEP_M, radius_m: float = GRID_RADIUS_M) -> F64:
    n = int(radius_m / step_m)
    axis = np.arange(-n, n + 1) * step_m
    gx, gy = np.meshgrid(axis, axis)
    keep = gx**2 + gy**2 <= radius_m**2
    return np.asarray(np.c_[gx[keep], gy[keep]], dtype=np.float64)


_DEFAULT_CANDIDATES = grid_offsets().shape[0]


def solve_grid(
    geo: Geometry,
    start: F64,
    radio_map: MapFn | None,
    allowed: Callable[[F64], NDArray[np.bool_]] | None = None,
    *,
    offsets: F64 | None = None,
    prior: tuple[F64, F64] | None = None,
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
    """
    offsets = grid_offsets() if offsets is None else offsets
    n = start.shape[0]
    xy = np.empty((n, 2))
    cov = np.empty((n, 2, 2))
    step2 = (
        float(np.min(np.abs(offsets[offsets[:, 0] != 0, 0]))) ** 2 if offsets.shape[0] > 1 else 0.0
    )
    # the same memory bound for any candidate count: GRID_CHUNK beacons x the default grid
    chunk = max(1, GRID_CHUNK * _DEFAULT_CANDIDATES // max(1, offsets.shape[0]))
    for lo in range(0, n, chunk):
        hi = min(n, lo + chunk)
        sub = select_rows(geo, np.arange(lo, hi))
        cand = start[lo:hi, None, :] + offsets[None, :, :]  # (b, c, 2)
        delta = cand[:, :, None, :] - sub.gw_xy[:, None, :, :]  # (b, c, k, 2)
        d = np.sqrt(
            np.maximum((delta**2).sum(axis=3) + sub.dz_m[:, None, :] ** 2, MIN_DISTANCE_M**2)
        )
        mu = mean_rssi_dbm(d, sub.ref_dbm[:, None, :], sub.exponent[:, None, :])
        if radio_map is not None:
            mu = mu + radio_map(sub.gw[:, None, :], cand[:, :, None, :])[0]
        z = np.where(
            sub.mask[:, None, :], (sub.rssi_dbm[:, None, :] - mu) / sub.sd_db[:, None, :], 0.0
        )
        a = np.abs(z)
        loglik = -np.where(a <= HUBER_K, 0.5 * z * z, HUBER_K * (a - 0.5 * HUBER_K)).sum(axis=2)
        if allowed is not None:
            ok = allowed(cand.reshape(-1, 2)).reshape(cand.shape[:2])
            # A beacon whose candidates all fall off the floor keeps them all rather than none.
            ok |= ~ok.any(axis=1, keepdims=True)
            loglik = np.where(ok, loglik, -np.inf)
        has_prior = None
        if prior is not None:
            p_mean, p_cov = prior[0][lo:hi], prior[1][lo:hi]
            has_prior = np.isfinite(p_mean[:, 0])
            safe_cov = np.where(has_prior[:, None, None], p_cov, np.eye(2)[None])
            p_info = inv2x2(safe_cov)[0]
            dev_p = cand - np.where(has_prior[:, None], p_mean, 0.0)[:, None, :]
            quad = np.einsum("bci,bij,bcj->bc", dev_p, p_info, dev_p)
            loglik = loglik - 0.5 * np.where(has_prior[:, None], quad, 0.0)
        loglik -= loglik.max(axis=1, keepdims=True)
        w = np.exp(loglik)
        w /= w.sum(axis=1, keepdims=True)
        mean = np.einsum("bc,bci->bi", w, cand)
        dev = cand - mean[:, None, :]
        post = np.einsum("bc,bci,bcj->bij", w, dev, dev) + np.eye(2) * step2 / 12.0
        if prior is not None and has_prior is not None and has_prior.any():
            mean, post = _equivalent_measurement(mean, post, p_mean, p_info, has_prior)
        cov[lo:hi] = post
        xy[lo:hi] = mean
    used = geo.mask.sum(axis=1).astype(np.int64)
    single = used == 1
    if single.any():
        xy, cov = _proximity(geo, xy, cov, single)
    return Solution(xy=xy, cov=cov, used=used)


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
