"""Plane geometry on site-local metres, in pure Python for validating site files.

Small polygons, exact enough: validation tolerances are centimetres, not ulps. The engine's
vectorised point-in-polygon for thousands of fixes per tick lives with the engine.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

__all__ = [
    "Point",
    "distance_to_polygon_edge_m",
    "point_in_polygon",
    "point_segment_distance_m",
    "polygon_area_m2",
    "polygon_inside_polygon",
    "segments_cross",
    "self_intersection",
]

Point = tuple[float, float]

EPS_M = 1e-9
PAIR_BOX_SLACK_M = 0.01
"""self_intersection tests only edges whose bounding boxes come this close: its tests need the
edges within 1e-9 m (a vertex on an edge) or, for collinear overlap, 1.5 mm; the rest is room
for rounding."""
MAX_SAMPLE_TESTS = 2_000_000
"""Point-to-edge tests polygon_inside_polygon spends on one polygon, about a second: beyond it
the edges are sampled more coarsely than `step_m`. Only a polygon with 2 km of edges in an
outline of 100 corners (or 200 m in one of 1,000) gets there; a zone of a site file has tens of
metres of edges in an outline of a few corners."""


def polygon_area_m2(poly: Sequence[Point]) -> float:
    """Unsigned area by the shoelace formula."""
    n = len(poly)
    twice = 0.0
    for i in range(n):
        x1, y1 = poly[i]
        x2, y2 = poly[(i + 1) % n]
        twice += x1 * y2 - x2 * y1
    return abs(twice) / 2.0


def point_in_polygon(p: Point, poly: Sequence[Point]) -> bool:
    """Even-odd ray casting; points exactly on an edge may fall either way."""
    x, y = p
    inside = False
    n = len(poly)
    for i in range(n):
        x1, y1 = poly[i]
        x2, y2 = poly[(i + 1) % n]
        if (y1 > y) != (y2 > y):
            x_cross = x1 + (y - y1) * (x2 - x1) / (y2 - y1)
            if x < x_cross:
                inside = not inside
    return inside


def point_segment_distance_m(p: Point, a: Point, b: Point) -> float:
    ax, ay = a
    dx, dy = b[0] - ax, b[1] - ay
    length2 = dx * dx + dy * dy
    if length2 <= EPS_M:
        return math.dist(p, a)
    s = max(0.0, min(1.0, ((p[0] - ax) * dx + (p[1] - ay) * dy) / length2))
    return math.dist(p, (ax + s * dx, ay + s * dy))


def distance_to_polygon_edge_m(p: Point, poly: Sequence[Point]) -> float:
    n = len(poly)
    return min(point_segment_distance_m(p, poly[i], poly[(i + 1) % n]) for i in range(n))


def _orient(a: Point, b: Point, c: Point) -> float:
    return (b[0] - a[0]) * (c[1] - a[1]) - (b[1] - a[1]) * (c[0] - a[0])


def segments_cross(a: Point, b: Point, c: Point, d: Point) -> bool:
    """True when segments ab and cd cross at a point interior to both (touching does not count)."""
    o1, o2 = _orient(a, b, c), _orient(a, b, d)
    o3, o4 = _orient(c, d, a), _orient(c, d, b)
    tol = 1e-12 * max(1.0, abs(o1), abs(o2), abs(o3), abs(o4))
    return ((o1 > tol and o2 < -tol) or (o1 < -tol and o2 > tol)) and (
        (o3 > tol and o4 < -tol) or (o3 < -tol and o4 > tol)
    )


def _segments_overlap(a: Point, b: Point, c: Point, d: Point) -> bool:
    """Collinear segments sharing more than a point (a polygon folding back on itself)."""
    if abs(_orient(a, b, c)) > 1e-12 or abs(_orient(a, b, d)) > 1e-12:
        return False
    axis = 0 if abs(b[0] - a[0]) >= abs(b[1] - a[1]) else 1
    lo1, hi1 = sorted((a[axis], b[axis]))
    lo2, hi2 = sorted((c[axis], d[axis]))
    return min(hi1, hi2) - max(lo1, lo2) > 1e-9


def _near_edge_pairs(poly: Sequence[Point], slack_m: float) -> list[tuple[int, int]]:
    """Pairs (i, j), i < j, in order, of edges whose bounding boxes come within 2 * slack_m:
    a sweep along x, so a polygon of n edges costs n log n plus its close pairs, not n^2."""
    n = len(poly)
    boxes = []
    for i in range(n):
        (ax, ay), (bx, by) = poly[i], poly[(i + 1) % n]
        boxes.append(
            (
                min(ax, bx) - slack_m,
                max(ax, bx) + slack_m,
                min(ay, by) - slack_m,
                max(ay, by) + slack_m,
            )
        )
    pairs: list[tuple[int, int]] = []
    active: list[int] = []
    for i in sorted(range(n), key=lambda k: boxes[k][0]):
        x0, _, y0, y1 = boxes[i]
        active = [j for j in active if boxes[j][1] >= x0]
        pairs.extend(
            (min(i, j), max(i, j)) for j in active if boxes[j][2] <= y1 and y0 <= boxes[j][3]
        )
        active.append(i)
    pairs.sort()
    return pairs


def self_intersection(poly: Sequence[Point]) -> tuple[int, int] | None:
    """The first pair of edges (i, j) that cross or overlap, or None for a simple polygon.

    Edge i runs from vertex i to vertex i+1. Only edges whose boxes come close are tested, in the
    order of every pair, so the pair reported is the first of all pairs that fails.
    """
    n = len(poly)
    for i, j in _near_edge_pairs(poly, PAIR_BOX_SLACK_M):
        a, b = poly[i], poly[(i + 1) % n]
        c, d = poly[j], poly[(j + 1) % n]
        if j == i + 1 or (i == 0 and j == n - 1):
            # Neighbours share a vertex; they only fail by folding back along each other.
            if _segments_overlap(a, b, c, d):
                return (i, j)
            continue
        if segments_cross(a, b, c, d) or _segments_overlap(a, b, c, d):
            return (i, j)
        # An edge passing exactly through a non-adjacent vertex also makes it non-simple.
        if point_segment_distance_m(c, a, b) < 1e-9 or point_segment_distance_m(a, c, d) < 1e-9:
            return (i, j)
    return None


def polygon_inside_polygon(
    inner: Sequence[Point], outer: Sequence[Point], tol_m: float, step_m: float = 0.1
) -> bool:
    """True when every point of `inner`'s edges lies in `outer` or within tol_m of its edge.

    Edges are sampled every `step_m`, so an edge between two inside vertices that cuts across a
    notch of a concave outline is caught, while a zone drawn on the outline itself is accepted.
    The step grows where that would take more than MAX_SAMPLE_TESTS point-to-edge tests.
    """
    n = len(inner)
    perimeter = sum(math.dist(inner[i], inner[(i + 1) % n]) for i in range(n))
    step_m = max(step_m, perimeter * len(outer) / MAX_SAMPLE_TESTS)
    for i in range(n):
        a, b = inner[i], inner[(i + 1) % n]
        steps = max(1, math.ceil(math.dist(a, b) / step_m))
        for k in range(steps):
            s = k / steps
            p = (a[0] + s * (b[0] - a[0]), a[1] + s * (b[1] - a[1]))
            if not point_in_polygon(p, outer) and distance_to_polygon_edge_m(p, outer) > tol_m:
                return False
    return True
