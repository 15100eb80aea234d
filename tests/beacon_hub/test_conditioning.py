"""RSSI conditioning: the interquartile mean per (beacon, gateway) over the window, and each
gateway's floor."""

from __future__ import annotations

import numpy as np
import pytest

from beacon_hub.conditioning import ReadingWindow, ReceiverFloors


def _window(t: list[float], b: list[int], g: list[int], r: list[float]) -> ReadingWindow:
    w = ReadingWindow(2.0, capacity=2)  # grows as it is fed
    w.add(
        np.asarray(t, dtype=np.float64),
        np.asarray(b, dtype=np.int64),
        np.asarray(g, dtype=np.int64),
        np.asarray(r, dtype=np.float64),
    )
    return w


def test_interquartile_mean_ignores_a_dip_and_a_reflection() -> None:
    # 8 samples of one pair: the middle half is ranks 2..5 of the sorted values.
    r = [-70.0, -71.0, -69.0, -90.0, -70.0, -62.0, -72.0, -68.0]
    w = _window([0.1 * k for k in range(8)], [0] * 8, [3] * 8, r)
    est = w.estimate(1.0)
    assert est.beacon.tolist() == [0]
    assert est.gateway.tolist() == [3]
    assert est.rssi_dbm[0] == np.mean(sorted(r)[2:6])
    assert est.samples.tolist() == [8]
    assert est.last_t[0] == 0.1 * 7
    assert abs(est.mean_t[0] - 0.35) < 1e-12


def test_pairs_are_kept_apart_and_small_groups_keep_every_sample() -> None:
    w = _window(
        [0.1, 0.2, 0.3, 0.4, 0.5],
        [1, 0, 1, 0, 0],
        [0, 0, 0, 1, 1],
        [-60.0, -80.0, -64.0, -75.0, -77.0],
    )
    est = w.estimate(1.0)
    assert list(zip(est.beacon.tolist(), est.gateway.tolist(), strict=True)) == [
        (0, 0),
        (0, 1),
        (1, 0),
    ]
    assert est.rssi_dbm.tolist() == [-80.0, -76.0, -62.0]
    assert est.samples.tolist() == [1, 2, 2]


def test_later_samples_wait_and_old_ones_expire() -> None:
    w = _window([0.5, 1.5, 2.6, 3.5], [0, 0, 0, 0], [0, 0, 0, 0], [-70.0, -72.0, -74.0, -76.0])
    est = w.estimate(2.0)  # (0, 2]: 0.5 and 1.5; 2.6 and 3.5 are still to come
    assert est.samples.tolist() == [2]
    w.expire(1.0)
    assert len(w) == 3
    assert w.estimate(4.0).rssi_dbm.tolist() == [-75.0]  # (2, 4]: 2.6 and 3.5
    assert w.estimate(10.0).beacon.shape == (0,)  # every pair expired


def test_the_order_samples_arrive_in_changes_nothing() -> None:
    # Many ties on pair and RSSI (integer dBm, as radios report them), so a sort that moves
    # tied samples about would show in the estimate if anything depended on their order.
    rng = np.random.default_rng(4)
    n = 5000
    t = rng.uniform(0.0, 2.0, n)
    b = rng.integers(0, 40, n)
    g = rng.integers(0, 4, n)
    r = rng.integers(-90, -60, n).astype(np.float64)
    ref = _window(t.tolist(), b.tolist(), g.tolist(), r.tolist()).estimate(2.0)
    for seed in range(3):
        p = np.random.default_rng(seed).permutation(n)
        est = _window(t[p].tolist(), b[p].tolist(), g[p].tolist(), r[p].tolist()).estimate(2.0)
        assert np.array_equal(est.beacon, ref.beacon)
        assert np.array_equal(est.gateway, ref.gateway)
        assert np.array_equal(est.rssi_dbm, ref.rssi_dbm)  # exact: the kept values are equal
        assert np.array_equal(est.samples, ref.samples)
        assert np.array_equal(est.last_t, ref.last_t)
        assert np.allclose(est.mean_t, ref.mean_t, rtol=0, atol=1e-12)


def test_a_receivers_floor_is_where_its_hearing_ends_and_junk_cannot_lower_it() -> None:
    """+inf before a gateway reports anything; with few estimates, the quietest; with many, a
    handful of junk readings far below the rest leave the floor where the rest end."""
    floors = ReceiverFloors(3)
    assert np.isinf(floors.dbm).all()
    floors.add(np.array([0, 0, 1]), np.array([-70.0, -91.2, -60.0]))
    assert floors.dbm[0] == pytest.approx(-91.5, abs=0.5)
    assert floors.dbm[1] == pytest.approx(-60.0, abs=0.5)
    assert np.isinf(floors.dbm[2])
    rng = np.random.default_rng(1)
    floors.add(np.full(20_000, 2), rng.uniform(-95.0, -40.0, 20_000))
    floors.add(np.full(5, 2), np.full(5, -126.0))  # junk: 0.025 % of what it reported
    assert -96.0 <= floors.dbm[2] <= -94.5


def test_a_beacon_that_advertises_often_gets_a_shorter_window() -> None:
    """Over the 2 s window beacon 0 advertises at 5 Hz (10 samples, its RSSI falling 1 dB a
    sample as it walks away), beacon 1 at 1 Hz (2 samples). With 5 samples targeted, beacon 0
    is estimated over its last 1 s (5 samples), beacon 1 over the whole window; with 2 samples
    targeted and at least 1.5 s, beacon 0 over 1.5 s; with nothing shortened, bit for bit the
    full window's estimate."""
    fast_t = [0.1 + 0.2 * k for k in range(10)]
    w = _window(
        [*fast_t, 0.5, 1.5],
        [0] * 10 + [1, 1],
        [0] * 12,
        [-60.0 - k for k in range(10)] + [-80.0, -82.0],
    )
    full = w.estimate(2.0)
    short = w.estimate(2.0, target_samples=5, min_window_s=1.0)
    assert full.samples.tolist() == [10, 2]
    assert short.samples.tolist() == [5, 2]
    assert short.rssi_dbm[0] == np.mean([-66.0, -67.0, -68.0])  # middle half of -65..-69
    assert short.mean_t[0] == pytest.approx(1.5)
    assert short.rssi_dbm[1] == full.rssi_dbm[1]
    floor = w.estimate(2.0, target_samples=2, min_window_s=1.5)
    assert floor.samples.tolist() == [7, 2]  # 0.5 < t <= 2.0
    slow = w.estimate(2.0, target_samples=20, min_window_s=1.0)
    for name in ("beacon", "gateway", "rssi_dbm", "samples", "last_t", "mean_t"):
        np.testing.assert_array_equal(getattr(slow, name), getattr(full, name))


def test_shares_of_the_beacons_partition_the_estimate() -> None:
    """`share` (stride, phase) keeps the beacons whose index is phase modulo stride: the shares
    of one window together are its estimate, pair for pair and bit for bit."""
    rng = np.random.default_rng(4)
    n = 400
    b = rng.integers(0, 37, n)
    w = _window(
        rng.uniform(0.0, 2.0, n).tolist(),
        b.tolist(),
        rng.integers(0, 5, n).tolist(),
        rng.normal(-70.0, 6.0, n).tolist(),
    )
    full = w.estimate(2.0, target_samples=3, min_window_s=1.0)
    parts = [w.estimate(2.0, target_samples=3, min_window_s=1.0, share=(3, k)) for k in range(3)]
    for k, part in enumerate(parts):
        assert part.beacon.shape[0] > 0
        assert (part.beacon % 3 == k).all()
    merged = np.argsort(np.concatenate([p.beacon * 8 + p.gateway for p in parts]))
    for name in ("beacon", "gateway", "rssi_dbm", "samples", "last_t", "mean_t"):
        joined = np.concatenate([getattr(p, name) for p in parts])[merged]
        np.testing.assert_array_equal(joined, getattr(full, name))


def test_renumbered_beacons_keep_their_samples_and_their_turns() -> None:
    """Engine.compact renumbers the beacons and drops the forgotten ones' samples: the estimate
    is the same, pair for pair, under the new numbers; a share taken by turns (each beacon's
    number before) picks the same beacons as before; and the buffers shrink after a burst."""
    rng = np.random.default_rng(6)
    n = 6000
    w = _window(
        rng.uniform(0.0, 2.0, n).tolist(),
        rng.integers(0, 40, n).tolist(),
        rng.integers(0, 5, n).tolist(),
        np.round(rng.normal(-70.0, 6.0, n)).tolist(),
    )
    w.expire(1.5)  # the burst has passed
    left = w._b[: len(w)].copy()
    before = w.estimate(2.0, share=(3, 1))
    kept = np.flatnonzero(np.arange(40) % 4 != 2)  # every fourth beacon forgotten
    new_index = np.full(40, -1)
    new_index[kept] = np.arange(kept.shape[0])
    w.renumber(new_index)
    assert len(w) == int(np.isin(left, kept).sum())
    assert w._t.shape[0] < n / 2  # the buffer let go of the burst's room
    after = w.estimate(2.0, share=(3, 1), turns=kept)
    stays = np.isin(before.beacon, kept)
    np.testing.assert_array_equal(kept[after.beacon], before.beacon[stays])
    for name in ("gateway", "rssi_dbm", "samples", "last_t", "mean_t"):
        np.testing.assert_array_equal(getattr(after, name), getattr(before, name)[stays])
