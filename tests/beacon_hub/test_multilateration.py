"""Least squares (`solve`): its covariance widens where the gateways disagree beyond their
noise model and, for two gateways, over the mirror image; one gateway gives a proximity fix
whose spread holds 68 %; a radio map's slope counts in the covariance up to
MAP_SLOPE_CAP_DB_M. The map likelihood (`solve_grid`): a wide search reaches a beacon its
local grid cannot, blocks of beacons give what each beacon alone gives, threads what one thread
gives, and the coarse-to-fine search gives what evaluating every candidate gives."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from scipy import ndimage

from beacon_hub.gaussian2d import radius_68_m
from beacon_hub.multilateration import (
    MAP_SLOPE_CAP_DB_M,
    Geometry,
    MapFn,
    MapTable,
    grid_loglik,
    grid_mode,
    grid_offsets,
    select_rows,
    solve,
    solve_grid,
)
from beacon_hub.pathloss import mean_rssi_dbm

REF_DBM, EXPONENT, SD_DB, DZ_M = -59.0, 2.0, 1.0, 2.0
"""A sharp likelihood (1 dB) so that the posterior mean sits on the true position."""


SIX_GATEWAYS = np.array(
    [[0.0, 0.0], [30.0, 0.0], [0.0, 30.0], [30.0, 30.0], [15.0, 0.0], [15.0, 30.0]]
)
"""Around a 30 x 30 m floor."""


def geometry(
    truth: np.ndarray,
    gw_xy: np.ndarray = SIX_GATEWAYS,
    *,
    exponent: float = EXPONENT,
    sd_db: float = SD_DB,
) -> Geometry:
    """Noise-free readings of beacons at `truth` by the gateways at `gw_xy`."""
    n, k = truth.shape[0], gw_xy.shape[0]
    d = np.sqrt(((truth[:, None, :] - gw_xy[None]) ** 2).sum(axis=2) + DZ_M**2)
    return Geometry(
        gw=np.broadcast_to(np.arange(k), (n, k)).copy(),
        gw_xy=np.broadcast_to(gw_xy, (n, k, 2)).copy(),
        dz_m=np.full((n, k), DZ_M),
        ref_dbm=np.full((n, k), REF_DBM),
        exponent=np.full((n, k), exponent),
        rssi_dbm=mean_rssi_dbm(d, REF_DBM, exponent),
        sd_db=np.full((n, k), sd_db),
        mask=np.ones((n, k), dtype=bool),
    )


def noisy(geo: Geometry, noise_db: float, rng: np.random.Generator) -> Geometry:
    return dataclasses.replace(geo, rssi_dbm=geo.rssi_dbm + rng.normal(0, noise_db, geo.mask.shape))


@pytest.mark.parametrize(
    ("noise_db", "lowest", "highest"), [(SD_DB, 0.6, 0.8), (3 * SD_DB, 0.4, 0.8)]
)
def test_the_covariance_widens_when_the_readings_are_noisier_than_the_noise_model(
    noise_db: float, lowest: float, highest: float
) -> None:
    """Readings three times noisier than `sd_db` says: the residuals show it and the covariance
    widens (without the variance factor 8 % of true positions fell within radius_68_m; with
    it 47 %: four degrees of freedom and the Huber loss see only part of the excess). Readings
    as noisy as it says: about 68 %, as before (66 %; now 69 %, as the factor never narrows)."""
    rng = np.random.default_rng(7)
    truth = rng.uniform(5.0, 25.0, (400, 2))
    sol = solve(noisy(geometry(truth), noise_db, rng))
    error = np.hypot(*(sol.xy - truth).T)
    within = float((error <= radius_68_m(sol.cov)).mean())
    assert lowest <= within <= highest


@pytest.mark.parametrize(("sd_db", "exponent"), [(6.0, 2.2), (3.0, 3.0)])
def test_one_gateway_gives_a_proximity_fix_that_holds_68_percent(
    sd_db: float, exponent: float
) -> None:
    """Beacons 3-15 m from their only gateway, heard with the noise the model expects: the fix
    is the gateway and its spread a ring at the estimated range (68 % and 77 % within
    radius_68_m; 90 % and 99.5 % with the spread used before, twice as wide)."""
    rng = np.random.default_rng(5)
    n = 2_000
    r, angle = rng.uniform(3.0, 15.0, n), rng.uniform(0.0, 2 * np.pi, n)
    truth = np.c_[r * np.cos(angle), r * np.sin(angle)]
    one = noisy(geometry(truth, np.zeros((1, 2)), exponent=exponent, sd_db=sd_db), sd_db, rng)
    sol = solve(one)
    np.testing.assert_array_equal(sol.xy, 0.0)
    within = float((np.hypot(*(sol.xy - truth).T) <= radius_68_m(sol.cov)).mean())
    assert 0.6 <= within <= 0.82


def two_gateways(truth: np.ndarray) -> Geometry:
    """Noise-free readings of beacons at `truth` by two gateways 10 m apart on the x axis."""
    return geometry(truth, np.array([[0.0, 0.0], [10.0, 0.0]]))


def test_two_gateways_spread_a_fix_over_its_mirror_image_unless_the_prior_rules_it_out() -> None:
    """A prediction on the true side, 3 m from the line through the gateways: the mirror 6 m
    away is not ruled out by a 6 m prior, and the spread across the line covers it; 12 m from
    the line, the mirror 24 m away is, and the spread stays the curvature's."""
    truth = np.array([[5.0, 3.0], [5.0, 12.0]])
    sol = solve(two_gateways(truth), prior=truth.copy())
    np.testing.assert_allclose(sol.xy, truth, atol=0.05)
    assert sol.cov[0, 1, 1] > 0.3 * 6.0**2
    assert sol.cov[0, 0, 0] < 0.1 * sol.cov[0, 1, 1]
    assert sol.cov[1, 1, 1] < 2.0


def wall_map(slope_db_m: float, loss_db: float = 10.0) -> MapFn:
    """A wall at x = 15 m across the floor of SIX_GATEWAYS, as the radio map has the floor
    plan's losses: the gateways west of it lose `loss_db` east of it, ramped in over
    loss_db / slope_db_m metres (a map cell)."""

    def correction(gw: np.ndarray, xy: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        width = loss_db / slope_db_m
        west = np.broadcast_to(
            SIX_GATEWAYS[:, 0][gw] < 15.0, np.broadcast_shapes(gw.shape, xy.shape[:-1])
        )
        u = (xy[..., 0] - 15.0) / width + 0.5
        on_ramp = west & (u > 0.0) & (u < 1.0)
        value = np.where(west, -loss_db * np.clip(u, 0.0, 1.0), 0.0)
        d_dx = np.where(on_ramp, -slope_db_m, 0.0)
        return value, d_dx, np.zeros_like(d_dx)

    return correction


def through(geo: Geometry, radio_map: MapFn, truth: np.ndarray) -> Geometry:
    """`geo`'s noise-free readings with the map's losses on their paths."""
    return dataclasses.replace(geo, rssi_dbm=geo.rssi_dbm + radio_map(geo.gw, truth[:, None, :])[0])


def test_a_map_slope_counts_up_to_the_cap_and_no_steeper() -> None:
    """Beacons at a wall's face, where the floor plan's 10 dB fall within a map cell (40 dB/m):
    the fix is where it was, and its covariance is what a slope at MAP_SLOPE_CAP_DB_M gives, no
    narrower (the step says which side of the wall, not where); a gentler slope counts in full."""
    truth = np.c_[np.full(3, 15.0), np.linspace(8.0, 22.0, 3)]
    geo = geometry(truth)
    step, at_cap = wall_map(40.0), wall_map(MAP_SLOPE_CAP_DB_M)
    gentle, none = wall_map(MAP_SLOPE_CAP_DB_M / 2.0), solve(geo)
    sol_step = solve(through(geo, step, truth), radio_map=step)
    sol_cap = solve(through(geo, at_cap, truth), radio_map=at_cap)
    sol_gentle = solve(through(geo, gentle, truth), radio_map=gentle)
    np.testing.assert_allclose(sol_step.xy, truth, atol=0.02)
    np.testing.assert_allclose(sol_step.cov, sol_cap.cov, rtol=1e-6)
    # along x the gentle ramp tells less than the capped one, both more than no wall
    assert sol_cap.cov[:, 0, 0].max() < sol_gentle.cov[:, 0, 0].min()
    assert sol_gentle.cov[:, 0, 0].max() < none.cov[:, 0, 0].min()


def test_a_wide_search_reaches_a_beacon_the_local_grid_cannot() -> None:
    rng = np.random.default_rng(4)
    truth = rng.uniform(5, 25, (40, 2))
    angle = rng.uniform(0, 2 * np.pi, 40)
    start = truth + 14.0 * np.c_[np.cos(angle), np.sin(angle)]  # a first fix in the wrong place
    geo = geometry(truth)
    local = solve_grid(geo, start, None)
    wide = solve_grid(geo, start, None, offsets=grid_offsets(0.5, 20.0))
    local_err = np.linalg.norm(local.xy - truth, axis=1)
    wide_err = np.linalg.norm(wide.xy - truth, axis=1)
    assert np.median(local_err) > 5.0
    assert np.max(wide_err) < 0.5


def test_grid_mode_commits_to_the_most_likely_candidate() -> None:
    """Two gateways: the beacon and its mirror across their line fit equally well, and the
    posterior mean lands between them; the mode is one of the two, on a candidate of the lattice
    within half a step of it, and is the best of all the candidates (checked one by one); with
    an `allowed` floor that leaves out the true side, the mirror."""
    truth = np.array([[5.0, 4.0]])
    geo = two_gateways(truth)
    start = np.array([[5.0, 0.0]])
    offsets = grid_offsets(0.5, 8.0)
    mean = solve_grid(geo, start, None, offsets=offsets).xy
    assert abs(mean[0, 1]) < 1.0
    mode, loglik = grid_mode(geo, start, None, None, offsets)
    assert np.min(np.abs(mode[0] - [[5.0, 4.0], [5.0, -4.0]]).max(axis=1)) <= 0.25
    one_by_one = [grid_mode(geo, start + o, None, None, np.zeros((1, 2)))[1][0] for o in offsets]
    assert loglik[0] == pytest.approx(max(one_by_one), abs=1e-4)
    below = grid_mode(geo, start, None, lambda p: p[:, 1] < 0, offsets)[0]
    assert np.abs(below[0] - [5.0, -4.0]).max() <= 0.25


def test_grid_loglik_is_every_candidate_and_nothing_off_the_floor() -> None:
    """The whole log-likelihood surface grid_mode commits from: its maximum is grid_mode's, the
    mirror scores like the truth (two gateways), and candidates off the allowed floor are -inf
    unless none is on it."""
    truth = np.array([[5.0, 4.0]])
    geo = two_gateways(truth)
    start = np.array([[5.0, 0.0]])
    offsets = grid_offsets(0.5, 8.0)
    ll = grid_loglik(geo, start, None, None, offsets)
    assert ll.shape == (1, offsets.shape[0])
    assert float(ll.max()) == pytest.approx(grid_mode(geo, start, None, None, offsets)[1][0])
    at = [int(np.argmin(np.hypot(*(start + offsets - p).T))) for p in ([5.0, 4.0], [5.0, -4.0])]
    assert ll[0, at[0]] == pytest.approx(ll[0, at[1]], abs=1e-3)
    upper = grid_loglik(geo, start, None, lambda p: p[:, 1] > 0, offsets)
    assert np.isneginf(upper[0, (start + offsets)[:, 1] <= 0]).all()
    assert np.isfinite(upper[0, (start + offsets)[:, 1] > 0]).all()
    nowhere = grid_loglik(geo, start, None, lambda p: p[:, 1] > 100, offsets)
    np.testing.assert_array_equal(nowhere, ll)


def with_silent_gateway(geo: Geometry, xy: tuple[float, float], floor_dbm: float) -> Geometry:
    """`geo` and one more gateway at `xy` that did not hear the beacons, whose floor is
    `floor_dbm` (Geometry.unheard)."""
    n, k = geo.mask.shape
    return Geometry(
        gw=np.c_[geo.gw, np.full(n, k)],
        gw_xy=np.concatenate([geo.gw_xy, np.broadcast_to(xy, (n, 1, 2))], axis=1),
        dz_m=np.c_[geo.dz_m, np.full(n, DZ_M)],
        ref_dbm=np.c_[geo.ref_dbm, np.full(n, REF_DBM)],
        exponent=np.c_[geo.exponent, np.full(n, EXPONENT)],
        rssi_dbm=np.c_[geo.rssi_dbm, np.full(n, floor_dbm)],
        sd_db=np.c_[geo.sd_db, np.full(n, SD_DB)],
        mask=np.c_[geo.mask, np.ones(n, dtype=bool)],
        unheard=np.c_[np.zeros((n, k), dtype=bool), np.ones(n, dtype=bool)],
    )


def test_a_silent_gateway_rules_out_the_mirror_beside_it() -> None:
    """Two gateways cannot tell (5, 4) from its mirror (5, -4); a third gateway 1 m from the
    mirror that heard nothing, with a floor of -70 dBm, can: there it would have read about
    -63 dBm, by the truth -79 dBm (below its floor: no evidence against the truth). The same
    gateway treated as having *heard* -70 dBm would pull the fix towards it instead."""
    truth = np.array([[5.0, 4.0]])
    geo = two_gateways(truth)
    start = np.array([[5.0, 0.0]])
    offsets = grid_offsets(0.25, 8.0)
    assert abs(solve_grid(geo, start, None, offsets=offsets).xy[0, 1]) < 1.0  # both mirrors
    silent = with_silent_gateway(geo, (5.0, -5.0), -70.0)
    # two gateways leave the basin long across their line: the mean is on the true side, the
    # mode on the truth
    assert solve_grid(silent, start, None, offsets=offsets).xy[0, 1] > 2.5
    mode, _ = grid_mode(silent, start, None, None, offsets)
    np.testing.assert_allclose(mode, truth, atol=0.25)
    heard = dataclasses.replace(silent, unheard=None)
    assert solve_grid(heard, start, None, offsets=offsets).xy[0, 1] < 0.0


def test_blocks_of_beacons_give_what_each_beacon_alone_gives() -> None:
    rng = np.random.default_rng(5)
    truth = rng.uniform(2, 28, (400, 2))  # more than one block of the wide grid
    start = truth + rng.normal(0, 3.0, truth.shape)
    geo = geometry(truth)
    offsets = grid_offsets(0.5, 20.0)
    together = solve_grid(geo, start, None, offsets=offsets)
    for i in (0, 199, 399):
        alone = solve_grid(select_rows(geo, np.array([i])), start[[i]], None, offsets=offsets)
        np.testing.assert_allclose(together.xy[i], alone.xy[0], rtol=0, atol=1e-9)
        np.testing.assert_allclose(together.cov[i], alone.cov[0], rtol=0, atol=1e-9)


def test_threads_give_the_same_fixes_bit_for_bit() -> None:
    rng = np.random.default_rng(6)
    truth = rng.uniform(2, 28, (1_200, 2))  # three blocks of the default grid
    start = truth + rng.normal(0, 2.0, truth.shape)
    geo = noisy(geometry(truth), 3.0, rng)
    one = solve_grid(geo, start, None)
    three = solve_grid(geo, start, None, workers=3)
    np.testing.assert_array_equal(one.xy, three.xy)
    np.testing.assert_array_equal(one.cov, three.cov)
    # the whole grid's likelihood (parked pallets' evidence, rival spots): chunks on threads
    one_ll = grid_loglik(geo, start, None, None, grid_offsets())
    three_ll = grid_loglik(geo, start, None, None, grid_offsets(), workers=3)
    assert one_ll.shape == (1_200, grid_offsets().shape[0])
    np.testing.assert_array_equal(one_ll, three_ll)


def test_coarse_to_fine_gives_what_every_candidate_gives() -> None:
    """With noisy readings (3 dB) and a map, the coarse-to-fine search matches evaluating every
    candidate: one extra candidate off the lattice (40 m away, weightless) makes solve_grid
    evaluate them all."""
    rng = np.random.default_rng(6)
    truth = rng.uniform(3, 27, (200, 2))
    geo = geometry(truth)
    noisy = dataclasses.replace(
        geo,
        rssi_dbm=geo.rssi_dbm + rng.normal(0.0, 3.0, geo.rssi_dbm.shape),
        sd_db=np.full(geo.sd_db.shape, 3.0),
    )
    field = ndimage.gaussian_filter(rng.normal(0.0, 12.0, (6, 125, 125)), (0, 4, 4))
    table = MapTable.of(field, (-1.0, -1.0), 0.25)
    start = truth + rng.normal(0.0, 1.5, truth.shape)
    offsets = grid_offsets()
    everything = np.r_[offsets, [[40.0, 40.0 + 1e-3]]]
    fast = solve_grid(noisy, start, table, offsets=offsets)
    full = solve_grid(noisy, start, table, offsets=everything)
    np.testing.assert_allclose(fast.xy, full.xy, rtol=0, atol=1e-3)
    np.testing.assert_allclose(fast.cov, full.cov, rtol=0, atol=1e-3)
    assert np.median(np.linalg.norm(fast.xy - truth, axis=1)) < 3.0
