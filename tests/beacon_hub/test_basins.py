"""Rival basins: a far mode becomes a rival, its lead decays and adds up, and it wins only when
it keeps explaining the data better than the track. A still pallet's windows, summed, move its
track to the spot that fits them all."""

import numpy as np
import pytest

from beacon_hub.basins import (
    PARKED_BEGIN_S,
    PARKED_EVERY_TICKS,
    PARKED_MIN_WINDOWS,
    PARKED_NATS,
    RIVAL_DECAY,
    RIVAL_MIN_M,
    RIVAL_NATS,
    RIVAL_NATS_PER_GATEWAY,
    ParkedEvidence,
    RivalBasins,
)
from beacon_hub.engine import Engine, EngineConfig

from .test_engine import PALLET, exact_readings, room_site

FEW = np.array([4])
"""Gateways in a track's likelihood: a pallet among racks."""


def _basins(n: int = 4, checks: int = 2) -> RivalBasins:
    rivals = RivalBasins(checks)
    rivals.ensure(n)
    return rivals


def test_a_far_mode_becomes_the_rival_and_a_near_one_clears_it() -> None:
    rivals = _basins()
    b = np.array([0, 1])
    track = np.array([[0.0, 0.0], [0.0, 0.0]])
    rivals.offer(b, np.array([[10.0, 0.0], [RIVAL_MIN_M - 0.5, 0.0]]), track)
    assert rivals.held(b).tolist() == [True, False]
    rivals.weigh(np.array([0]), np.array([5.0]))
    # the same basin again keeps its lead; the track's own basin as the best clears it
    rivals.offer(np.array([0]), np.array([[11.0, 0.5]]), track[:1])
    assert rivals.nats[0] == pytest.approx(5.0)
    rivals.offer(np.array([0]), np.array([[1.0, 0.0]]), track[:1])
    assert not rivals.held(np.array([0]))[0]


def test_another_far_mode_starts_over() -> None:
    rivals = _basins()
    b = np.array([0])
    rivals.offer(b, np.array([[10.0, 0.0]]), np.zeros((1, 2)))
    rivals.weigh(b, np.array([9.0]))
    rivals.offer(b, np.array([[-10.0, 0.0]]), np.zeros((1, 2)))
    assert rivals.xy[0].tolist() == [-10.0, 0.0]
    assert rivals.nats[0] == 0.0


def test_the_lead_decays_and_wins_only_when_kept() -> None:
    rivals = _basins()
    b = np.array([0])
    rivals.offer(b, np.array([[10.0, 0.0]]), np.zeros((1, 2)))
    # one large gain, then even: it fades below the threshold
    rivals.weigh(b, np.array([RIVAL_NATS - 1.0]))
    for _ in range(5):
        rivals.weigh(b, np.array([0.0]))
    assert rivals.nats[0] == pytest.approx((RIVAL_NATS - 1.0) * RIVAL_DECAY**5)
    assert not rivals.winners(b, FEW)[0].any()
    # a steady lead of 2 nats a tick adds up past it (the sum tends to 2 / (1 - decay) = 20)
    for _ in range(30):
        rivals.weigh(b, np.array([2.0]))
    win, points = rivals.winners(b, FEW)
    assert win.tolist() == [True]
    assert points.tolist() == [[10.0, 0.0]]
    assert not rivals.held(b)[0]
    assert rivals.moves == 1


def test_each_beacon_is_searched_in_turn() -> None:
    rivals = _basins(n=10, checks=3)
    beacons = np.arange(10)
    seen = np.zeros(10, dtype=int)
    for _ in range(4):  # 10 beacons, 3 a tick: a period of 4 ticks
        due = rivals.due(beacons)
        assert due.sum() <= 3
        seen += due
    assert seen.tolist() == [1] * 10
    assert not _basins(checks=0).due(beacons[:4]).any()


@pytest.mark.parametrize("checks", [60, 0])
def test_a_rival_the_data_do_not_support_never_wins(checks: int) -> None:
    """A rival planted 8 m from a pallet heard without noise (the grid solver, no map): searched
    each tick, the pallet's own spot is the best and clears it; not searched, it is weighed
    and falls ever further behind. The track stays at the true spot."""
    site = room_site()
    spot = (14.0, 8.0)
    engine = Engine(site, EngineConfig(solver="grid", basin_checks_per_tick=checks))
    for step in range(3):
        for r in exact_readings(site, PALLET, spot, step - 0.5):
            engine.ingest(r)
        engine.tick(float(step))
    i = engine.beacon_ids.index(PALLET)
    engine.rivals.xy[i] = (6.0, 8.0)
    for step in range(3, 30):
        for r in exact_readings(site, PALLET, spot, step - 0.5):
            engine.ingest(r)
        fixes = engine.tick(float(step)).fixes
    held = bool(engine.rivals.held(np.array([i]))[0])
    if checks:
        assert not held
    else:
        assert held
        assert engine.rivals.nats[i] < -RIVAL_NATS
    assert engine.rivals.moves == 0
    assert np.hypot(fixes.x[0] - spot[0], fixes.y[0] - spot[1]) < 0.5


def test_a_lead_summed_over_more_gateways_must_be_larger() -> None:
    """The same lead moves a track heard by a few gateways, not one heard by many, whose
    likelihood sums a term (and a map error) per gateway."""
    many = np.array([int(2 * RIVAL_NATS / RIVAL_NATS_PER_GATEWAY)])
    results = []
    for gateways in (FEW, many):
        rivals = _basins()
        b = np.array([0])
        rivals.offer(b, np.array([[10.0, 0.0]]), np.zeros((1, 2)))
        rivals.weigh(b, np.array([1.5 * RIVAL_NATS]))
        results.append(bool(rivals.winners(b, gateways)[0][0]))
    assert results == [True, False]


def _window(ev: ParkedEvidence, peak: tuple[float, float], nats: float) -> np.ndarray:
    """A window's log-likelihood over ev's candidates around the origin: `nats` higher within
    a metre of `peak` than anywhere else."""
    near = np.hypot(*(ev.offsets - np.array(peak)).T) <= 1.0
    return np.where(near, nats, 0.0).astype(np.float32)[None, :]


def test_windows_that_agree_move_a_still_track_once_enough_add_up() -> None:
    ev = ParkedEvidence(radius_m=10.0)
    ev.ensure(3)
    b = np.array([1])
    track = np.zeros((1, 2))
    ev.begin(b, track, np.array([0]))
    per_window = PARKED_NATS / (PARKED_MIN_WINDOWS - 2)
    for k in range(PARKED_MIN_WINDOWS):
        # a lead that no single window gives (per_window < PARKED_NATS), past it by the 4th
        assert not ev.winners(b, track)[0].any(), k
        ev.add(b, _window(ev, (6.0, 0.0), per_window))
    win, points = ev.winners(b, track)
    assert win.tolist() == [True]
    assert np.hypot(*(points[0] - (6.0, 0.0))) <= 1.0
    assert ev.moves == 1
    # a track already there stays: its own basin is the best
    assert not ev.winners(b, points)[0].any()


def test_a_close_best_or_an_even_sum_does_not_move_it() -> None:
    ev = ParkedEvidence(radius_m=10.0)
    ev.ensure(2)
    b = np.array([0, 1])
    track = np.zeros((2, 2))
    ev.begin(b, track, np.array([0, 0]))
    for _ in range(2 * PARKED_MIN_WINDOWS):
        ev.add(b[:1], _window(ev, (RIVAL_MIN_M - 1.0, 0.0), 5.0))  # within the track's basin
        ev.add(b[1:], _window(ev, (0.0, 0.0), 5.0))  # the track's own spot
    assert not ev.winners(b, track)[0].any()


def test_an_ended_spell_holds_nothing_and_begins_afresh() -> None:
    ev = ParkedEvidence(radius_m=5.0)
    ev.ensure(2)
    b = np.array([0])
    ev.begin(b, np.array([[3.0, 4.0]]), np.array([1]))
    for _ in range(PARKED_MIN_WINDOWS):
        ev.add(b, _window(ev, (4.0, 0.0), 10.0))
    ev.end(b)
    assert not ev.holds(b)[0]
    assert not ev.winners(b, np.zeros((1, 2)))[0].any()
    ev.begin(b, np.array([[0.0, 0.0]]), np.array([0]))
    assert ev.windows[0] == 0
    assert float(ev.sums(b).max()) == 0.0


def test_a_standing_pallet_sums_its_windows_until_it_is_carried_off() -> None:
    """With the grid solver, a pallet standing still gathers windows (every second tick, once
    still for PARKED_BEGIN_S); carried off at a forklift's pace, its spell ends, and its old
    spot does not pull the track back once it is set down elsewhere."""
    site = room_site()
    # least squares never reads the sums, so it holds none (108 MB at 10,000 beacons)
    assert Engine(site, EngineConfig(solver="nlls")).parked is None
    engine = Engine(site, EngineConfig(solver="grid"))
    ev = engine.parked
    assert ev is not None
    spot = (14.0, 8.0)
    for step in range(40):
        for r in exact_readings(site, PALLET, spot, step - 0.5):
            engine.ingest(r)
        engine.tick(float(step))
    i = np.array([engine.beacon_ids.index(PALLET)])
    assert ev.holds(i)[0]
    assert 5 <= ev.windows[i[0]] <= (40 - PARKED_BEGIN_S) / PARKED_EVERY_TICKS + 1
    # the sum's best candidate (0.5 m apart) is the spot
    best = ev.centre[i[0]] + ev.offsets[np.argmax(ev.sums(i)[0])]
    assert ev.spells == 1
    assert np.hypot(*(best - spot)) <= 0.5
    held = []
    for step in range(40, 70):  # carried 13 m at 1.5 m/s, then set down
        xy = (max(1.0, spot[0] - 1.5 * (step - 39)), spot[1])
        for r in exact_readings(site, PALLET, xy, step - 0.5):
            engine.ingest(r)
        fixes = engine.tick(float(step)).fixes
        held.append(bool(ev.holds(i)[0]))
    # its recent windows contradict the sum within a few seconds of being set down (the IMM
    # alone is never sure here: its still-mode probability bottoms out at 0.05 for 2 ticks)
    assert held[0]
    assert not any(held[-15:])
    assert ev.ended == 1
    assert ev.spells == 0
    assert ev.moves == 0
    assert np.hypot(fixes.x[0] - 1.0, fixes.y[0] - 8.0) < 1.5


def test_sums_are_held_per_spell_and_given_back() -> None:
    """Every beacon heard has a slot, few are still pallets: the 11 KB of sums a spell holds
    are taken when it begins, reused when it ends, and given back when the engine compacts."""
    ev = ParkedEvidence(radius_m=5.0)
    ev.ensure(10_000)
    assert ev.total.shape[0] == ev.recent.shape[0] == 0
    b = np.array([3, 7, 9])
    ev.begin(b, np.zeros((3, 2)), np.zeros(3, dtype=np.int64))
    assert ev.spells == 3
    ev.add(b, _window(ev, (2.0, 0.0), 4.0).repeat(3, axis=0) * np.array([[1.0], [2.0], [3.0]]))
    pool = ev.total.shape[0]
    ev.end(np.array([7]))
    ev.begin(np.array([5]), np.zeros((1, 2)), np.zeros(1, dtype=np.int64))
    # the ended spell's row is reused, cleared
    assert (ev.total.shape[0], ev.spells) == (pool, 3)
    assert float(np.abs(ev.sums(np.array([5]))).max()) == 0.0
    before = ev.sums(np.array([3, 9])).copy()
    ev.compact(np.array([3, 5, 9]))
    assert ev.total.shape[0] == ev.spells == 3
    assert ev.holds(np.arange(3)).all()
    np.testing.assert_array_equal(ev.sums(np.array([0, 2])), before)
    # a spell begun again over a held one starts afresh without a second row
    ev.begin(np.array([0, 0]), np.ones((2, 2)), np.zeros(2, dtype=np.int64))
    assert ev.spells == 3
    assert float(np.abs(ev.sums(np.array([0]))).max()) == 0.0
