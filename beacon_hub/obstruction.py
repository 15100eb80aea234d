"""Obstruction loss: what the site's walls and obstacles take from a radio path, in dB.

The simulator draws its radio with it and the engine expects it, so both see the same
building. A wall costs its loss at each crossing; an obstacle (shelf, rack) costs its loss once
if the straight path crosses its outline below its top, the path's height at the crossing
being interpolated between the two ends. A person pushing a cart shadows the paths that leave the
cart's tag backwards, through their body (body_shadowed). Hub-side module (numpy): the gateway
never imports it.

Testing every link against every edge is what costs (a racked warehouse's plan losses took
seconds), so pairs are first culled per gateway: a link can only cross an edge (a wall, or a side
of an obstacle's outline) if its bearing from the gateway lies in the cone the edge's bounding
box subtends there, and if it reaches at least as far as that box. Points sorted by bearing make
each cone a range of them. The culling is exact: the crossing test runs, with the same floats, on
every pair kept, and a pair is only dropped if its link misses the edge's box by more than
CULL_MARGIN_M, which the crossing test (rounding about 1e-13 m at site scale) rejects too.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

from beacon_hub.site import Level

__all__ = ["BODY_HEIGHT_M", "BODY_OFFSET_M", "LevelObstructions", "body_shadowed"]

F64 = NDArray[np.float64]
I64 = NDArray[np.int64]
Bool = NDArray[np.bool_]
XY = tuple[F64, F64]

BODY_OFFSET_M = 0.5
"""A shopper stands about half a metre behind the cart handle that carries the tag."""
BODY_HEIGHT_M = 1.7
"""A path that passes the shopper above head height is not shadowed (an adult's height)."""
BODY_CONE_COS = 0.5
"""A path within 60 degrees of straight back passes through the body: a torso about 0.5 m
wide, 0.5 m away, subtends about 53 degrees, and a path grazing it still loses a few dB."""

LINK_CHUNK = 2_000_000
"""Links x edges evaluated per block: bounds the temporaries to some tens of MB."""

CULL_MARGIN_M = 1e-6
"""Bounding boxes are widened by this before culling: millions of times the rounding of the
crossing test at site scale (coordinates of at most some km), far below what a plan draws."""

CULL_MARGIN_RAD = 1e-9
"""Cones are widened by this too: covers the rounding of arctan2 (about 1e-16 rad)."""

CULL_MIN_POINTS = 128
"""Below this many points per gateway the plain all-pairs test is quicker than sorting them by
bearing (the result is the same either way)."""


def body_shadowed(delta_xy: F64, dz_m: F64, tag_z_m: F64 | float, heading_rad: F64 | float) -> Bool:
    """Whether a person BODY_OFFSET_M behind a tag (against its heading, radians from +x)
    stands in its path to a gateway `delta_xy` (..., 2) away horizontally and `dz_m` higher:
    within 60 degrees of straight back, and the path still below head height where it passes
    the body. The other arguments broadcast against delta_xy's leading axes."""
    dx, dy = delta_xy[..., 0], delta_xy[..., 1]
    horizontal = np.sqrt(dx * dx + dy * dy)
    along = dx * -np.cos(heading_rad) + dy * -np.sin(heading_rad)  # metres backwards
    rise = dz_m * BODY_OFFSET_M
    below_head = tag_z_m + rise / np.maximum(horizontal, BODY_OFFSET_M) < BODY_HEIGHT_M
    return np.asarray((along > BODY_CONE_COS * horizontal) & below_head, dtype=np.bool_)


@dataclass(frozen=True, slots=True)
class _Segments:
    """Walls, or obstacle outlines, as edges with their groups and widened bounding boxes."""

    a: F64  # (E, 2) edges, grouped (a wall is a group of one)
    b: F64
    top_m: F64  # (E,) top of the edge's group, inf for full height
    starts: I64  # (K,) first edge of each group
    group: I64  # (E,) group of each edge
    lo: F64  # (E, 2) bounding box of each edge, widened by CULL_MARGIN_M
    hi: F64

    @classmethod
    def build(
        cls, groups: list[list[tuple[float, float]]], tops: list[float], *, closed: bool
    ) -> _Segments:
        ea: list[tuple[float, float]] = []
        eb: list[tuple[float, float]] = []
        top: list[float] = []
        starts: list[int] = []
        group: list[int] = []
        for k, (pts, height) in enumerate(zip(groups, tops, strict=True)):
            starts.append(len(ea))
            ends = pts[1:] + pts[:1] if closed else pts[1:]
            ea.extend(pts[: len(ends)])
            eb.extend(ends)
            top.extend([height] * len(ends))
            group.extend([k] * len(ends))
        a = np.array(ea, dtype=np.float64).reshape(-1, 2)
        b = np.array(eb, dtype=np.float64).reshape(-1, 2)
        return cls(
            a=a,
            b=b,
            top_m=np.array(top, dtype=np.float64),
            starts=np.array(starts, dtype=np.int64),
            group=np.array(group, dtype=np.int64),
            lo=np.minimum(a, b) - CULL_MARGIN_M,
            hi=np.maximum(a, b) + CULL_MARGIN_M,
        )


@dataclass(frozen=True, slots=True)
class LevelObstructions:
    walls_a: F64  # (W, 2)
    walls_b: F64
    walls_loss_db: F64  # (W,)
    edges_a: F64  # (E, 2) obstacle edges, grouped by obstacle
    edges_b: F64
    edges_top_m: F64  # (E,) top of the edge's obstacle, inf for full height
    obstacle_starts: NDArray[np.int64]  # (O,) first edge of each obstacle
    obstacle_loss_db: F64  # (O,)
    walls: _Segments  # the same walls (an edge each) and obstacle edges, with bounding boxes
    obstacles: _Segments

    @classmethod
    def of(cls, level: Level) -> LevelObstructions:
        walls = _Segments.build(
            [[w.start, w.end] for w in level.walls], [math.inf] * len(level.walls), closed=False
        )
        obstacles = _Segments.build(
            [list(o.polygon) for o in level.obstacles],
            [math.inf if o.height_m is None else o.height_m for o in level.obstacles],
            closed=True,
        )
        return cls(
            walls_a=walls.a,
            walls_b=walls.b,
            walls_loss_db=np.array([w.loss_db for w in level.walls], dtype=np.float64),
            edges_a=obstacles.a,
            edges_b=obstacles.b,
            edges_top_m=obstacles.top_m,
            obstacle_starts=obstacles.starts,
            obstacle_loss_db=np.array([o.loss_db for o in level.obstacles], dtype=np.float64),
            walls=walls,
            obstacles=obstacles,
        )

    @property
    def empty(self) -> bool:
        return bool(self.walls_a.shape[0] == 0 and self.edges_a.shape[0] == 0)

    def loss_db(self, points: F64, gateways: F64) -> F64:
        """(n, g) loss between points (n, 3) and gateways (g, 3), both on this level."""
        return self._loss(points, gateways, culled=True)

    def _loss(self, points: F64, gateways: F64, *, culled: bool) -> F64:
        """loss_db, finding the crossings by culling or (culled=False) testing all pairs."""
        n, g = points.shape[0], gateways.shape[0]
        out = np.zeros((n, g))
        if self.empty or n == 0 or g == 0:
            return out
        edges = max(1, self.walls_a.shape[0] + self.edges_a.shape[0])
        step = max(1, LINK_CHUNK // (g * edges))
        culled = culled and n >= CULL_MIN_POINTS
        # culling goes a gateway at a time, so it can take g times the points at once
        block = step * max(1, LINK_CHUNK // (edges * step)) if culled else step
        for first in range(0, n, block):
            pts = points[first : first + block]
            if culled:
                walls, obstacles = self._hits_culled(pts, gateways)
            else:
                walls, obstacles = self._hits_all_pairs(pts, gateways)
            # the same sums over the same (step, g, K) shapes however the hits were found
            for start in range(0, pts.shape[0], step):
                loss = out[first + start : first + start + step]
                if self.walls_a.shape[0]:
                    loss += walls[start : start + step].astype(np.float64) @ self.walls_loss_db
                if self.edges_a.shape[0]:
                    hit = obstacles[start : start + step]
                    loss += hit.astype(np.float64) @ self.obstacle_loss_db
        return out

    def _hits_all_pairs(self, pts: F64, gw: F64) -> tuple[Bool, Bool]:
        """(n, g, W) wall crossings and (n, g, O) obstacles crossed below their top, testing
        every link against every edge: the reference the culled path equals."""
        p = pts[:, None, None, 0], pts[:, None, None, 1]  # (n, 1, 1)
        r = gw[None, :, None, 0] - p[0], gw[None, :, None, 1] - p[1]  # (n, g, 1) link vector
        walls = np.zeros((pts.shape[0], gw.shape[0], 0), dtype=np.bool_)
        obstacles = walls
        if self.walls_a.shape[0]:
            t = _crossings(p, r, _xy(self.walls_a), _xy(self.walls_b))
            walls = ~np.isnan(t)
        if self.edges_a.shape[0]:
            t = _crossings(p, r, _xy(self.edges_a), _xy(self.edges_b))
            hit = _below_top(pts[:, None, None, 2], gw[None, :, None, 2], t, self.edges_top_m)
            obstacles = np.logical_or.reduceat(hit, self.obstacle_starts, axis=2)
        return walls, obstacles

    def _hits_culled(self, pts: F64, gw: F64) -> tuple[Bool, Bool]:
        """The same as _hits_all_pairs, testing only the (link, edge) pairs that cones keep."""
        n, g = pts.shape[0], gw.shape[0]
        walls = np.zeros((n, g, self.walls.starts.shape[0]), dtype=np.bool_)
        obstacles = np.zeros((n, g, self.obstacles.starts.shape[0]), dtype=np.bool_)
        for j in range(g):
            seen = _Bearings.of(pts, gw[j])
            if walls.shape[2]:
                _hits_from(seen, self.walls, walls[:, j, :], height=False)
            if obstacles.shape[2]:
                _hits_from(seen, self.obstacles, obstacles[:, j, :], height=True)
        return walls, obstacles


@dataclass(frozen=True, slots=True)
class _Bearings:
    """Points seen from one gateway, in order of bearing (-pi to pi), as flat columns."""

    gw: F64  # (3,)
    order: I64  # (n,) index of the point at each place
    bearing: F64  # (n,) sorted
    reach2: F64  # (n,) squared distance from the gateway
    px: F64  # (n,) the point
    py: F64
    pz: F64
    rx: F64  # (n,) the link vector, point to gateway, as the crossing test computes it
    ry: F64

    @classmethod
    def of(cls, pts: F64, gw: F64) -> _Bearings:
        bearing = np.arctan2(pts[:, 1] - gw[1], pts[:, 0] - gw[0])
        order = np.argsort(bearing, kind="stable")  # NaN points sort last, in no cone
        px, py = pts[order, 0], pts[order, 1]
        dx, dy = px - gw[0], py - gw[1]
        return cls(
            gw,
            order,
            bearing[order],
            dx * dx + dy * dy,
            px,
            py,
            pts[order, 2],
            gw[0] - px,
            gw[1] - py,
        )


def _hits_from(seen: _Bearings, seg: _Segments, out: Bool, *, height: bool) -> None:
    """Set out[i, k] (n, K) where point i's link crosses an edge of group k (below its top if
    `height`), running the exact crossing test only on pairs in the edge's cone and reach."""
    gx, gy = float(seen.gw[0]), float(seen.gw[1])
    lo, hi = seg.lo, seg.hi
    inside = (lo[:, 0] <= gx) & (gx <= hi[:, 0]) & (lo[:, 1] <= gy) & (gy <= hi[:, 1])
    # seen from outside, a box spans less than pi around its centre's bearing
    cx = np.stack([lo[:, 0], hi[:, 0], hi[:, 0], lo[:, 0]], axis=1) - gx
    cy = np.stack([lo[:, 1], lo[:, 1], hi[:, 1], hi[:, 1]], axis=1) - gy
    centre = np.arctan2((lo[:, 1] + hi[:, 1]) / 2 - gy, (lo[:, 0] + hi[:, 0]) / 2 - gx)
    rel = np.remainder(np.arctan2(cy, cx) - centre[:, None] + np.pi, 2 * np.pi) - np.pi
    low = np.where(inside, -np.pi, centre + rel.min(axis=1) - CULL_MARGIN_RAD)
    high = np.where(inside, np.pi, centre + rel.max(axis=1) + CULL_MARGIN_RAD)
    near_x = gx - np.clip(gx, lo[:, 0], hi[:, 0])
    near_y = gy - np.clip(gy, lo[:, 1], hi[:, 1])
    reach2 = near_x * near_x + near_y * near_y  # 0 from inside
    # each cone is one range of bearings, or two where it wraps past +-pi
    n, e_count = seen.bearing.shape[0], lo.shape[0]
    first = np.searchsorted(seen.bearing, np.maximum(low, -np.pi), side="left")
    last = np.searchsorted(seen.bearing, np.minimum(high, np.pi), side="right")
    wrap_lo = np.where(low < -np.pi, np.searchsorted(seen.bearing, low + 2 * np.pi, "left"), n)
    wrap_hi = np.where(high > np.pi, np.searchsorted(seen.bearing, high - 2 * np.pi, "right"), 0)
    begin = np.concatenate([first, wrap_lo, np.zeros(e_count, dtype=np.int64)])
    end = np.concatenate([last, np.full(e_count, n, dtype=np.int64), wrap_hi])
    length = np.maximum(end - begin, 0)
    total = int(length.sum())
    if total == 0:
        return
    edge = np.repeat(np.tile(np.arange(e_count), 3), length)
    place = np.arange(total) + np.repeat(begin - (np.cumsum(length) - length), length)
    near = seen.reach2[place] >= reach2[edge]
    place, edge = place[near], edge[near]
    t = _crossings(
        (seen.px[place], seen.py[place]),
        (seen.rx[place], seen.ry[place]),
        (seg.a[edge, 0], seg.a[edge, 1]),
        (seg.b[edge, 0], seg.b[edge, 1]),
    )
    hit = _below_top(seen.pz[place], seen.gw[2], t, seg.top_m[edge]) if height else ~np.isnan(t)
    out[seen.order[place[hit]], seg.group[edge[hit]]] = True


def _below_top(z_point: F64, z_gateway: F64, t: F64, top_m: F64) -> Bool:
    """Where the link's height at crossing t (NaN: none) is below the obstacle's top."""
    z = z_point + t * (z_gateway - z_point)
    return np.asarray(z < top_m)  # NaN (no crossing) compares False


def _crossings(p: XY, r: XY, a: XY, b: XY) -> F64:
    """Where links p + t r (0 < t < 1) cross segments a + u (b - a) (0 <= u <= 1): t,
    broadcast over the coordinate arrays, NaN where there is no crossing; parallel segments
    never cross. Each argument is its (x, y) coordinate arrays."""
    (px, py), (rx, ry), (ax, ay), (bx, by) = p, r, a, b
    sx, sy = bx - ax, by - ay
    qx, qy = ax - px, ay - py
    denom = rx * sy - ry * sx
    with np.errstate(divide="ignore", invalid="ignore"):
        t = (qx * sy - qy * sx) / denom
        u = (qx * ry - qy * rx) / denom
    ok = (denom != 0) & (t > 0) & (t < 1) & (u >= 0) & (u <= 1)
    return np.asarray(np.where(ok, t, np.nan), dtype=np.float64)


def _xy(points: F64) -> XY:
    return points[:, 0], points[:, 1]
