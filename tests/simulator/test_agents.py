"""Agents stay where people and forklifts can be: on the floor, never in a shelf or a wall."""

from __future__ import annotations

import itertools
from functools import cache
from pathlib import Path

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from beacon_hub.geometry import segments_cross
from beacon_hub.site import Site, load_site
from simulator.agents import PopulationConfig, build_population, points_in_polygon

CONFIG = Path(__file__).resolve().parents[2] / "config"
START_S = 1_000.0
HORIZON_S = 900.0
"""Fifteen minutes: whole shopper trips and several forklift jobs."""


@cache
def _site(name: str) -> Site:
    return load_site(CONFIG / f"{name}.yaml")


def _check_on_floor(site: Site, xs: np.ndarray, ys: np.ndarray, walker: np.ndarray) -> None:
    level = site.levels[0]
    assert np.all(points_in_polygon(xs, ys, level.outline)), "off the floor"
    for obstacle in level.obstacles:
        inside = points_in_polygon(xs, ys, obstacle.polygon)
        assert not np.any(inside & walker), f"a walker inside {obstacle.id}"
        if np.any(inside):  # only pallets, and only in a rack bay
            bays = [z.polygon for z in site.zones if z.kind == "bay"]
            in_bay = np.zeros(inside.sum(), dtype=bool)
            for poly in bays:
                in_bay |= points_in_polygon(xs[inside], ys[inside], poly)
            assert np.all(in_bay), f"a pallet inside {obstacle.id} outside any bay"


def _sampled(site: Site, config: PopulationConfig, seed: int) -> None:
    pop = build_population(site, config, np.random.default_rng(seed), START_S)
    pop.advance(START_S + HORIZON_S)
    times = np.arange(START_S, START_S + HORIZON_S, 0.5)
    walls = site.levels[0].walls
    xs, ys, walkers = [], [], []
    moved = 0
    for beacon in pop.beacons:
        if beacon.kind == "reference":  # fixed by the site file, checked by site check
            continue
        track = beacon.track
        xyz, _, _ = track.at(times)
        xs.append(xyz[:, 0])
        ys.append(xyz[:, 1])
        walkers.append(np.full(times.size, beacon.kind in ("cart", "asset")))
        # every straight leg of a walker stays clear of every wall
        if beacon.kind in ("cart", "asset") and len(track.t) > 1:
            moved += 1
            pts = list(zip(track.x, track.y, strict=True))
            for a, b in itertools.pairwise(pts):
                for wall in walls:
                    assert not segments_cross(a, b, wall.start, wall.end), (beacon.id, a, b)
    assert moved > 0
    _check_on_floor(site, np.concatenate(xs), np.concatenate(ys), np.concatenate(walkers))


@settings(max_examples=4, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(seed=st.integers(0, 2**32 - 1))
def test_shoppers_never_walk_through_shelves_walls_or_off_the_floor(seed: int) -> None:
    _sampled(_site("store"), PopulationConfig(carts=30, shoppers_per_hour=600.0), seed)


@settings(max_examples=2, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(seed=st.integers(0, 2**32 - 1))
def test_forklifts_keep_to_aisles_and_pallets_to_bays(seed: int) -> None:
    config = PopulationConfig(pallets=300, forklifts=3, moves_per_hour=240.0)
    _sampled(_site("warehouse"), config, seed)


def test_shoppers_walk_at_their_speed_and_come_back_to_the_corral() -> None:
    site = _site("store")
    pop = build_population(
        site, PopulationConfig(carts=20, shoppers_per_hour=400.0), np.random.default_rng(5), 0.0
    )
    pop.advance(3600.0)
    speeds = []
    for beacon in pop.beacons:
        if beacon.kind != "cart":
            continue
        t, x, y = (np.array(v) for v in (beacon.track.t, beacon.track.x, beacon.track.y))
        dt, d = np.diff(t), np.hypot(np.diff(x), np.diff(y))
        moving = d > 0
        speeds.extend((d[moving] / dt[moving]).tolist())
    speeds_a = np.array(speeds)
    assert speeds_a.size > 200
    assert speeds_a.min() >= 0.5 - 1e-9
    assert speeds_a.max() <= 1.5 + 1e-9
    entrance = next(z for z in site.zones if z.kind == "entrance")
    parked = [b for b in pop.beacons if b.kind == "cart" and not b.track.body[-1]]
    assert parked
    for beacon in parked:
        last_x, last_y, _ = beacon.track.last()
        assert points_in_polygon(np.array([last_x]), np.array([last_y]), entrance.polygon)[0]


def test_pallets_sit_below_the_rack_top_and_at_a_bay_s_declared_height() -> None:
    site = _site("warehouse")
    # more pallets than rack places: every bay place is taken, reserve bays included
    pop = build_population(
        site, PopulationConfig(pallets=2_100, forklifts=0), np.random.default_rng(3), 0.0
    )
    racks = [o for o in site.levels[0].obstacles if o.kind == "rack"]
    declared = [z for z in site.zones if "pallet" in z.heights_m]
    assert declared, "the example warehouse declares reserve bays"
    seen_declared = 0
    for beacon in pop.beacons:
        if beacon.kind != "pallet":
            continue
        x, y, z = beacon.track.last()
        for rack in racks:
            if points_in_polygon(np.array([x]), np.array([y]), rack.polygon)[0]:
                assert rack.height_m is not None
                assert z < rack.height_m, (beacon.id, z, rack.id)
        for zone in declared:
            if points_in_polygon(np.array([x]), np.array([y]), zone.polygon)[0]:
                assert z == zone.heights_m["pallet"], (beacon.id, z, zone.id)
                seen_declared += 1
    assert seen_declared > 0


def test_forklifts_move_pallets_at_2_to_3_m_s_between_bays_and_staging() -> None:
    site = _site("warehouse")
    config = PopulationConfig(pallets=200, forklifts=2, moves_per_hour=600.0)
    pop = build_population(site, config, np.random.default_rng(2), 0.0)
    first = {b.id: b.track.last() for b in pop.beacons if b.kind == "pallet"}
    pop.advance(1800.0)
    moved = [b for b in pop.beacons if b.kind == "pallet" and b.track.last() != first[b.id]]
    assert len(moved) >= 5
    for beacon in pop.beacons:
        if beacon.kind != "asset":
            continue
        t, x, y = (np.array(v) for v in (beacon.track.t, beacon.track.x, beacon.track.y))
        d, dt = np.hypot(np.diff(x), np.diff(y)), np.diff(t)
        speed = d[d > 0] / dt[d > 0]
        assert speed.size
        assert speed.min() >= 2.0 - 1e-9
        assert speed.max() <= 3.0 + 1e-9
