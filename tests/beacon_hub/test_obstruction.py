"""Obstruction loss: the culled crossing search gives what testing every link against every edge
gives, float for float, on the shipped sites and on random small plans; and which paths a
shopper behind a cart shadows."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from numpy.typing import NDArray

from beacon_hub import obstruction
from beacon_hub.obstruction import LevelObstructions, body_shadowed
from beacon_hub.site import Level, Obstacle, Wall, load_site

F64 = NDArray[np.float64]
CONFIG = Path(__file__).resolve().parents[2] / "config"
HEIGHTS_M = (0.0, 1.0, 2.5, 8.0, 12.0)
"""Beacon heights: floor, cart, shelf top, exactly a rack's top, above every rack."""
REFERENCE_CHUNK = 256


def _reference_crossings(p: F64, r: F64, a: F64, b: F64) -> F64:
    """The all-pairs crossing test as it was before culling (t, NaN where none)."""
    s = (b - a)[None, None, :, :]
    q = a[None, None, :, :] - p
    denom = r[..., 0] * s[..., 1] - r[..., 1] * s[..., 0]
    with np.errstate(divide="ignore", invalid="ignore"):
        t = (q[..., 0] * s[..., 1] - q[..., 1] * s[..., 0]) / denom
        u = (q[..., 0] * r[..., 1] - q[..., 1] * r[..., 0]) / denom
    ok = (denom != 0) & (t > 0) & (t < 1) & (u >= 0) & (u <= 1)
    return np.asarray(np.where(ok, t, np.nan), dtype=np.float64)


def _reference_hits(
    obs: LevelObstructions, pts: F64, gw: F64
) -> tuple[NDArray[np.bool_], NDArray[np.bool_]]:
    """(n, g, W) walls crossed and (n, g, O) obstacles crossed below their top, all pairs."""
    if pts.shape[0] > REFERENCE_CHUNK:  # bounded temporaries
        blocks = [
            _reference_hits(obs, pts[i : i + REFERENCE_CHUNK], gw)
            for i in range(0, pts.shape[0], REFERENCE_CHUNK)
        ]
        return np.concatenate([w for w, _ in blocks]), np.concatenate([o for _, o in blocks])
    p = pts[:, None, None, :2]
    r = gw[None, :, None, :2] - p
    walls = np.zeros((pts.shape[0], gw.shape[0], obs.walls_a.shape[0]), dtype=np.bool_)
    obstacles = np.zeros((pts.shape[0], gw.shape[0], obs.obstacle_starts.shape[0]), np.bool_)
    if obs.walls_a.shape[0]:
        walls = ~np.isnan(_reference_crossings(p, r, obs.walls_a, obs.walls_b))
    if obs.edges_a.shape[0]:
        t = _reference_crossings(p, r, obs.edges_a, obs.edges_b)
        z = pts[:, None, None, 2] + t * (gw[None, :, None, 2] - pts[:, None, None, 2])
        hit = z < obs.edges_top_m
        obstacles = np.logical_or.reduceat(hit, obs.obstacle_starts, axis=2)
    return walls, obstacles


def _reference_loss(obs: LevelObstructions, pts: F64, gw: F64) -> F64:
    walls, obstacles = _reference_hits(obs, pts, gw)
    loss = np.zeros((pts.shape[0], gw.shape[0]))
    if obs.walls_a.shape[0]:
        loss += walls.astype(np.float64) @ obs.walls_loss_db
    if obs.edges_a.shape[0]:
        loss += obstacles.astype(np.float64) @ obs.obstacle_loss_db
    return loss


def _assert_same(obs: LevelObstructions, pts: F64, gw: F64) -> None:
    """Culled hits equal the reference's exactly, and so do the losses (to 1e-12 dB)."""
    fast_walls, fast_obstacles = obs._hits_culled(pts, gw)
    ref_walls, ref_obstacles = _reference_hits(obs, pts, gw)
    assert np.array_equal(fast_walls, ref_walls)
    assert np.array_equal(fast_obstacles, ref_obstacles)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(obstruction, "CULL_MIN_POINTS", 1)  # cull however few the points
        fast = obs.loss_db(pts, gw)
    np.testing.assert_allclose(fast, _reference_loss(obs, pts, gw), rtol=0, atol=1e-12)


def _awkward_points(level: Level, gw: F64, rng: np.random.Generator, count: int) -> F64:
    """Random points over (and just beyond) the floor, inside obstacles, on their vertices and
    edges, on the lines of edges, level with or plumb below gateways, at several heights."""
    outline = np.asarray(level.outline)
    lo, hi = outline.min(axis=0) - 2.0, outline.max(axis=0) + 2.0
    xy = [rng.uniform(lo, hi, size=(count, 2))]
    corners = np.concatenate([np.asarray(o.polygon) for o in level.obstacles] or [outline])
    ends = np.concatenate([np.roll(np.asarray(o.polygon), -1, axis=0) for o in level.obstacles])
    u = rng.uniform(size=(corners.shape[0], 1))
    xy += [corners, (corners + ends) / 2, corners + u * (ends - corners)]
    # inside obstacles (their boxes) and on the lines of edges beyond their ends
    pick = rng.integers(0, corners.shape[0], size=count)
    xy.append(corners[pick] + rng.uniform(-1.0, 1.0, size=(count, 2)) * 0.6)
    xy.append(corners[pick] + (ends[pick] - corners[pick]) * rng.uniform(-3, 4, size=(count, 1)))
    # links parallel to the axes (and so to every rack edge), ending on the gateway's bearing cut
    g = gw[rng.integers(0, gw.shape[0], size=count), :2]
    along = rng.uniform(lo, hi, size=(count, 2))
    xy += [np.c_[along[:, 0], g[:, 1]], np.c_[g[:, 0], along[:, 1]], gw[:, :2]]
    points = np.concatenate(xy)
    z = rng.choice(HEIGHTS_M, size=points.shape[0])
    return np.asarray(np.c_[points, z], dtype=np.float64)


@pytest.mark.parametrize("name", ["warehouse.yaml", "store.yaml"])
def test_culled_crossings_equal_all_pairs_on_shipped_sites(name: str) -> None:
    site = load_site(CONFIG / name)
    rng = np.random.default_rng(7)
    for level in site.levels:
        obs = LevelObstructions.of(level)
        gw = np.array([[g.x, g.y, g.z] for g in site.gateways if g.level == level.level])
        # and gateways where no site puts one: on a vertex, on an edge, inside an obstacle
        rack = np.asarray(level.obstacles[0].polygon)
        odd = np.array([[*rack[0], 3.0], [*(rack[0] + rack[1]) / 2, 1.0], [*rack.mean(0), 2.0]])
        gw = np.concatenate([gw, odd])
        pts = _awkward_points(level, gw, rng, 500)
        _assert_same(obs, pts, gw)
        walls, obstacles = obs._hits_culled(pts, gw)
        assert walls.any()  # the comparison saw walls and racks crossed, and not crossed
        assert obstacles.any()
        assert not obstacles.all()


@pytest.mark.parametrize("link_chunk", [obstruction.LINK_CHUNK, 20_000])
def test_shipped_warehouse_loss_is_what_all_pairs_gives(link_chunk: int) -> None:
    """Through the public call, in its blocks and chunks (many with a small LINK_CHUNK), over a
    grid like the radio map's."""
    site = load_site(CONFIG / "warehouse.yaml")
    level = site.levels[0]
    obs = LevelObstructions.of(level)
    gw = np.array([[g.x, g.y, g.z] for g in site.gateways])
    ix, iy = np.meshgrid(np.arange(-1.0, 81.0, 1.5), np.arange(-1.0, 51.0, 1.5))
    pts = np.c_[ix.ravel(), iy.ravel(), np.full(ix.size, 1.0)]
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(obstruction, "LINK_CHUNK", link_chunk)
        loss = obs.loss_db(pts, gw)
    np.testing.assert_allclose(loss, _reference_loss(obs, pts, gw), rtol=0, atol=1e-12)
    assert loss.max() >= 30.0  # several racks on the longest paths


def test_points_without_coordinates_cross_nothing() -> None:
    level = load_site(CONFIG / "store.yaml").levels[0]
    obs = LevelObstructions.of(level)
    pts = np.c_[np.full((60, 2), np.nan), np.ones(60)]
    pts[::2] = [10.0, 10.0, 1.0]
    gw = np.array([[0.5, 0.5, 3.0], [30.0, 20.0, 3.0]])
    _assert_same(obs, pts, gw)
    assert np.all(obs.loss_db(pts, gw)[1::2] == 0.0)


GRID = st.integers(-8, 8).map(lambda v: v / 2)
"""Half-metre coordinates: vertices, edges and links line up (shared lines, parallel links)."""


@st.composite
def _plans(draw: st.DrawFn) -> tuple[Level, F64, F64]:
    obstacles = []
    for i in range(draw(st.integers(0, 4))):
        x0, y0 = draw(GRID), draw(GRID)
        w, h = draw(st.integers(1, 6)) / 2, draw(st.integers(1, 6)) / 2
        polygon = [(x0, y0), (x0 + w, y0), (x0 + w, y0 + h), (x0, y0 + h)]
        if draw(st.booleans()):  # a triangle: edges at all angles
            polygon = [(x0, y0), (x0 + w, y0 + draw(GRID)), (x0 + draw(GRID), y0 + h)]
        height = draw(st.one_of(st.none(), st.sampled_from([0.5, 1.0, 2.0])))
        obstacles.append(
            Obstacle(id=f"o{i}", kind="rack", polygon=polygon, loss_db=7.5, height_m=height)
        )
    walls = [
        Wall(start=(draw(GRID), draw(GRID)), end=(draw(GRID), draw(GRID)), loss_db=3.25)
        for _ in range(draw(st.integers(0, 3)))
    ]
    level = Level(outline=[(-5, -5), (5, -5), (5, 5), (-5, 5)], walls=walls, obstacles=obstacles)
    xyz = st.tuples(GRID, GRID, st.sampled_from([0.0, 1.0, 2.0, 3.0]))
    gw = np.array(draw(st.lists(xyz, min_size=1, max_size=3)), dtype=np.float64)
    pts = np.array(draw(st.lists(xyz, min_size=1, max_size=40)), dtype=np.float64)
    return level, pts, gw


@settings(max_examples=300, deadline=None)
@given(_plans(), st.integers(0, 2**32 - 1))
def test_culled_crossings_equal_all_pairs_on_random_plans(
    plan: tuple[Level, F64, F64], seed: int
) -> None:
    level, pts, gw = plan
    obs = LevelObstructions.of(level)
    if obs.empty:
        return
    # grid points hit vertices, edges and shared lines; random ones the spaces between
    rng = np.random.default_rng(seed)
    extra = np.c_[rng.uniform(-6, 6, size=(20, 2)), rng.choice([0.0, 1.5], size=20)]
    _assert_same(obs, np.concatenate([pts, extra]), gw)


def test_body_shadows_the_paths_behind_the_tag_below_head_height() -> None:
    """A tag 1 m up heading east (+x), its shopper half a metre behind: gateways 3 m up and
    10 m away to the west, and up to 60 degrees off straight back, are behind the body; east,
    past 60 degrees, or 1 m away (the path passes the body above head height) are not."""

    def at(degrees: float, distance_m: float) -> NDArray[np.float64]:
        a = np.radians(180.0 + degrees)
        return np.array([distance_m * np.cos(a), distance_m * np.sin(a)])

    delta = np.array([at(0, 10), at(59, 10), at(-59, 10), at(61, 10), at(180, 10), at(0, 1.0)])
    shadowed = body_shadowed(delta, np.full(6, 2.0), np.float64(1.0), np.float64(0.0))
    assert shadowed.tolist() == [True, True, True, False, False, False]
    # turned round (heading west), the east gateway is the one behind
    turned = body_shadowed(delta, np.full(6, 2.0), np.float64(1.0), np.float64(np.pi))
    assert turned.tolist() == [False, False, False, False, True, False]
    # broadcasting: two tags' headings against the same gateways
    both = body_shadowed(
        delta[None, :, :], np.full((1, 6), 2.0), np.float64(1.0), np.array([[0.0], [np.pi]])
    )
    assert both.tolist() == [shadowed.tolist(), turned.tolist()]
