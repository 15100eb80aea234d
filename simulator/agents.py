"""Who carries the beacons and where they go: shoppers with carts, forklifts with pallets,
walkers on a measured route, and reference beacons that never move.

Every mobile beacon has a `Track`: time-stamped waypoints, straight lines between them, planned
ahead in whole trips. Walking happens on a `Floor`, a grid of the level's walkable cells (inside
the outline, clear of walls and obstacles by a margin); routes are shortest paths on that grid
(scipy's Dijkstra), straightened where the straight line stays on walkable cells, so nobody walks
through a shelf or a wall. Pallets sit in rack bays (inside the rack's footprint) and leave them
only on a forklift's forks, to the aisle in front of the bay.

All randomness comes from the generator passed in: the same seed gives the same people.
"""

from __future__ import annotations

import fnmatch
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import numpy as np
from numpy.typing import NDArray
from scipy.sparse import csr_matrix
from scipy.sparse.csgraph import dijkstra

from beacon_hub.ids import is_beacon_id
from beacon_hub.site import BeaconKindName, Level, Site, Zone

__all__ = [
    "ADVERT_INTERVAL_S",
    "Beacon",
    "Floor",
    "PopulationConfig",
    "Track",
    "Walk",
    "build_population",
    "points_in_polygon",
]

FloatArray = NDArray[np.float64]
BoolArray = NDArray[np.bool_]

ADVERT_INTERVAL_S: dict[BeaconKindName, float] = {
    "cart": 0.2,
    "pallet": 1.0,
    "reference": 1.0,
    "asset": 0.5,
}
"""Advertising interval per beacon kind. Tags ship at 100 ms-1 s; carts move, so 5 Hz; pallet and
reference tags trade rate for a multi-year battery at 1 Hz (the issue's warehouse load)."""

CELL_M = 0.25
"""Walkable grid step on small floors; large floors get a coarser grid (at most GRID_CELLS)."""
GRID_CELLS = 60_000
CLEARANCE_M = 0.35
"""A cart's or forklift's centre keeps this far from shelves, racks and walls (half a cart)."""

SHOPPER_SPEED_M_S = (0.5, 1.5)
"""Walking speed with a cart, drawn per shopper (the issue; typical store walking 0.8-1.2)."""
FORKLIFT_SPEED_M_S = (2.0, 3.0)
"""Forklift travel speed in aisles, drawn per trip (the issue; most sites cap at 10 km/h)."""
DWELL_MEDIAN_S: dict[str, float] = {
    "aisle": 25.0,
    "endcap": 12.0,
    "department": 45.0,
    "corridor": 5.0,
    "checkout": 90.0,
}
"""Median dwell per zone kind (log-normal, sigma 0.6): a few tens of seconds in an aisle, a
minute and a half to queue and pay. Illustrative retail figures, not measured here."""
DWELL_SIGMA = 0.6
ZONES_PER_TRIP = (3, 9)
"""A shopper visits 3-8 zones before the checkout."""
PICK_S = 12.0
"""Forklift time to pick or set down a pallet (approach, lift, reverse)."""
BEAM_PITCH_M = 1.5
"""Vertical distance between rack beam levels for 1.2-1.4 m high pallet loads."""
BEAM_LEVELS = 4
"""Beam levels used per bay (floor plus three beams in 8 m racking)."""
SLOT_PITCH_M = 0.9
"""Width a Euro pallet (0.8 m) takes in a bay or a staging lane, with the gap to the next."""
COMPANION_SAMPLE_S = 1.0
"""The room harness's one-sample-at-a-time mode: one advert per sample point, one a second."""
TRACKED_INTERVAL_S = 0.2
"""The room's tracked mode: 5 adverts/s (issue 3)."""
CARRY_HEIGHT_M = 1.0
"""Tag height of a pallet on the forks while driving (lowered for travel)."""


@dataclass
class Track:
    """Piecewise-linear path: position at t interpolates the waypoints; before the first and
    after the last it stays put. `heading` and `body` belong to the segment starting at each
    waypoint (body: a person stands behind the tag)."""

    t: list[float] = field(default_factory=list)
    x: list[float] = field(default_factory=list)
    y: list[float] = field(default_factory=list)
    z: list[float] = field(default_factory=list)
    heading: list[float] = field(default_factory=list)
    body: list[bool] = field(default_factory=list)

    def add(self, t: float, x: float, y: float, z: float, body: bool) -> None:
        if self.t and t < self.t[-1]:
            raise ValueError(f"waypoint at {t} before the last one at {self.t[-1]}")
        heading = self.heading[-1] if self.heading else 0.0
        if self.t and (x != self.x[-1] or y != self.y[-1]):
            heading = math.atan2(y - self.y[-1], x - self.x[-1])
            self.heading[-1] = heading
        self.t.append(t)
        self.x.append(x)
        self.y.append(y)
        self.z.append(z)
        self.heading.append(heading)
        self.body.append(body)

    @property
    def end_s(self) -> float:
        return self.t[-1]

    def last(self) -> tuple[float, float, float]:
        return self.x[-1], self.y[-1], self.z[-1]

    def moves_between(self, t0: float, t1: float) -> bool:
        """True if the position may change during [t0, t1]."""
        i = int(np.searchsorted(self.t, t0, side="right"))
        j = int(np.searchsorted(self.t, t1, side="right"))
        lo, hi = max(i - 1, 0), min(j + 1, len(self.t))
        return not (
            len(set(self.x[lo:hi])) == 1
            and len(set(self.y[lo:hi])) == 1
            and len(set(self.z[lo:hi])) == 1
        )

    def at(self, times: FloatArray) -> tuple[FloatArray, FloatArray, BoolArray]:
        """(n, 3) positions, headings and body flags at the given times."""
        ts = np.asarray(self.t)
        xyz = np.column_stack(
            [
                np.interp(times, ts, self.x),
                np.interp(times, ts, self.y),
                np.interp(times, ts, self.z),
            ]
        )
        seg = np.clip(np.searchsorted(ts, times, side="right") - 1, 0, len(ts) - 1)
        return xyz, np.asarray(self.heading)[seg], np.asarray(self.body)[seg]

    def prune(self, before_s: float) -> None:
        """Forget waypoints that can no longer matter for times >= before_s."""
        i = int(np.searchsorted(self.t, before_s, side="right")) - 1
        if i > 0:
            for column in (self.t, self.x, self.y, self.z, self.heading, self.body):
                del column[:i]


@dataclass
class Beacon:
    id: str
    kind: BeaconKindName
    level: int
    track: Track
    interval_s: float
    label: str = ""
    adv_delay_max_s: float = 0.010
    """advDelay: 0-10 ms random delay added to each advertising event (Bluetooth Core spec,
    Vol 6 Part B 4.4.2.2.1); 0 for the companion harness, which samples on the second."""


@dataclass(frozen=True)
class Walk:
    """A measured route: waypoints walked at a speed, or sampled point by point."""

    name: str
    points: tuple[tuple[float, float], ...]
    samples_per_segment: int


@dataclass(frozen=True)
class PopulationConfig:
    carts: int = 0
    shoppers_per_hour: float = 0.0
    pallets: int = 0
    forklifts: int = 0
    moves_per_hour: float = 0.0
    walks: tuple[Walk, ...] = ()
    walk_mode: str = "tracked"
    """`tracked`: walk at walk_speed_m_s, adverts at the kind's interval; `companion`: one
    sample point per second, the tag standing still at each (the ESPresense harness);
    `survey`: walk at walk_speed_m_s to each point and stand there dwell_s (what `beacon-hub
    survey` asks of a surveyor, its points from `beacon-hub site points`)."""
    dwell_s: float = 10.0
    """`survey`: seconds the tag stands at each point (beacon-hub survey's dwell_s default,
    survey.SurveyConfig)."""
    walk_speed_m_s: float = 0.6
    walk_height_m: float = 1.0
    advert_interval_s: dict[str, float] = field(default_factory=dict)
    """Overrides of ADVERT_INTERVAL_S by kind."""


def points_in_polygon(
    x: FloatArray, y: FloatArray, poly: Sequence[tuple[float, float]]
) -> BoolArray:
    """Even-odd test of many points against one polygon, vectorised over the points."""
    inside = np.zeros(np.shape(x), dtype=bool)
    n = len(poly)
    for i in range(n):
        x1, y1 = poly[i]
        x2, y2 = poly[(i + 1) % n]
        if y1 == y2:
            continue
        crosses = (y1 > y) != (y2 > y)
        x_cross = x1 + (y - y1) * (x2 - x1) / (y2 - y1)
        inside ^= crosses & (x < x_cross)
    return inside


def _segment_distance(
    px: FloatArray, py: FloatArray, a: Sequence[float], b: Sequence[float]
) -> FloatArray:
    dx, dy = b[0] - a[0], b[1] - a[1]
    length2 = dx * dx + dy * dy
    s = (
        np.zeros_like(px)
        if length2 == 0
        else np.clip(((px - a[0]) * dx + (py - a[1]) * dy) / length2, 0, 1)
    )
    return np.asarray(np.hypot(px - (a[0] + s * dx), py - (a[1] + s * dy)))


class Floor:
    """The walkable cells of one level and shortest paths between them."""

    def __init__(self, level: Level) -> None:
        self.level = level
        outline = np.array(level.outline)
        self.origin = outline.min(axis=0)
        extent = outline.max(axis=0) - self.origin
        self.cell = max(CELL_M, math.sqrt(float(np.prod(extent)) / GRID_CELLS))
        self.nx, self.ny = (max(1, math.ceil(v / self.cell)) for v in extent)
        cx = self.origin[0] + (np.arange(self.nx) + 0.5) * self.cell
        cy = self.origin[1] + (np.arange(self.ny) + 0.5) * self.cell
        gx, gy = np.meshgrid(cx, cy)  # (ny, nx)
        self.cx, self.cy = gx.ravel(), gy.ravel()
        clearance = max(CLEARANCE_M, 0.75 * self.cell)
        ok = points_in_polygon(self.cx, self.cy, level.outline)
        segments = [
            (level.outline[i], level.outline[(i + 1) % len(level.outline)])
            for i in range(len(level.outline))
        ]
        segments += [(w.start, w.end) for w in level.walls]
        for obstacle in level.obstacles:
            ok &= ~points_in_polygon(self.cx, self.cy, obstacle.polygon)
            poly = obstacle.polygon
            segments += [(poly[i], poly[(i + 1) % len(poly)]) for i in range(len(poly))]
        for a, b in segments:
            ok &= _segment_distance(self.cx, self.cy, a, b) >= clearance
        self.walkable = ok
        self._graph = self._build_graph()
        self._cache: dict[int, NDArray[np.int32]] = {}

    def _build_graph(self) -> csr_matrix:
        idx = np.arange(self.nx * self.ny).reshape(self.ny, self.nx)
        ok = self.walkable.reshape(self.ny, self.nx)
        rows, cols, weights = [], [], []
        for dy, dx in ((0, 1), (1, 0), (1, 1), (1, -1)):
            y0, y1 = 0, self.ny - dy
            x0, x1 = max(0, -dx), self.nx - max(0, dx)
            a = idx[y0:y1, x0:x1]
            b = idx[y0 + dy : y1 + dy, x0 + dx : x1 + dx]
            link = ok[y0:y1, x0:x1] & ok[y0 + dy : y1 + dy, x0 + dx : x1 + dx]
            if dx and dy:  # no corner cutting: both orthogonal neighbours walkable
                link &= ok[y0 + dy : y1 + dy, x0:x1] & ok[y0:y1, x0 + dx : x1 + dx]
            rows.append(a[link])
            cols.append(b[link])
            weights.append(np.full(int(link.sum()), math.hypot(dx, dy) * self.cell))
        r, c, w = np.concatenate(rows), np.concatenate(cols), np.concatenate(weights)
        n = self.nx * self.ny
        return csr_matrix(
            (np.concatenate([w, w]), (np.concatenate([r, c]), np.concatenate([c, r]))), shape=(n, n)
        )

    def cell_of(self, x: FloatArray, y: FloatArray) -> NDArray[np.int64]:
        ix = np.clip(
            ((np.asarray(x) - self.origin[0]) / self.cell).astype(np.int64), 0, self.nx - 1
        )
        iy = np.clip(
            ((np.asarray(y) - self.origin[1]) / self.cell).astype(np.int64), 0, self.ny - 1
        )
        return np.asarray(iy * self.nx + ix)

    def is_walkable(self, x: FloatArray, y: FloatArray) -> BoolArray:
        """True where the point lies in a walkable cell (and hence clear of every obstacle)."""
        inside = (
            (np.asarray(x) >= self.origin[0])
            & (np.asarray(y) >= self.origin[1])
            & (np.asarray(x) < self.origin[0] + self.nx * self.cell)
            & (np.asarray(y) < self.origin[1] + self.ny * self.cell)
        )
        return np.asarray(inside & self.walkable[self.cell_of(x, y)])

    def cells_in(self, polygon: Sequence[tuple[float, float]]) -> NDArray[np.int64]:
        inside = points_in_polygon(self.cx, self.cy, polygon) & self.walkable
        return np.flatnonzero(inside)

    def nearest_walkable(self, x: float, y: float) -> int:
        cells = np.flatnonzero(self.walkable)
        d = np.hypot(self.cx[cells] - x, self.cy[cells] - y)
        return int(cells[int(np.argmin(d))])

    def route(self, start: int, goal: int) -> list[tuple[float, float]]:
        """Waypoints (cell centres) of a shortest walkable route, straightened."""
        if start == goal:
            return [(float(self.cx[start]), float(self.cy[start]))]
        pred = self._cache.get(start)
        if pred is None:
            if len(self._cache) > 256:
                self._cache.pop(next(iter(self._cache)))
            _, found = dijkstra(
                self._graph, directed=True, indices=np.array([start]), return_predecessors=True
            )
            pred = np.asarray(found[0], dtype=np.int32)
            self._cache[start] = pred
        path = [goal]
        while path[-1] != start:
            p = int(pred[path[-1]])
            if p < 0:
                raise ValueError(f"no walkable route between cells {start} and {goal}")
            path.append(p)
        path.reverse()
        return self._straighten(path)

    def clear_line(self, a: tuple[float, float], b: tuple[float, float]) -> bool:
        steps = max(2, math.ceil(math.dist(a, b) / (self.cell / 4)) + 1)
        s = np.linspace(0.0, 1.0, steps)
        return bool(np.all(self.is_walkable(a[0] + s * (b[0] - a[0]), a[1] + s * (b[1] - a[1]))))

    def _straighten(self, path: list[int]) -> list[tuple[float, float]]:
        pts = [(float(self.cx[i]), float(self.cy[i])) for i in path]
        out = [pts[0]]
        i = 0
        while i < len(pts) - 1:
            lo, hi = i + 1, len(pts) - 1  # lo is always reachable (grid neighbour)
            if self.clear_line(pts[i], pts[hi]):
                lo = hi
            while hi - lo > 1:
                mid = (lo + hi) // 2
                if self.clear_line(pts[i], pts[mid]):
                    lo = mid
                else:
                    hi = mid
            out.append(pts[lo])
            i = lo
        return out


def _beacon_ids(site: Site, kind: BeaconKindName, count: int, taken: set[str]) -> list[str]:
    """`count` ids the site maps to `kind`, made from its patterns, avoiding `taken`."""
    patterns = [p for k in site.beacon_kinds if k.kind == kind for p in k.match]
    fallback = {
        "cart": "ibeacon:00000000-0000-4000-8000-00000000ca27:*",
        "pallet": "ibeacon:00000000-0000-4000-8000-0000000ba11e:*",
        "reference": "ibeacon:00000000-0000-4000-8000-0000000000fe:*",
        "asset": "ibeacon:00000000-0000-4000-8000-00000000a55e:*",
    }
    out: list[str] = []
    for pattern in [*patterns, fallback[kind]]:
        head = pattern.rstrip("*")
        if "*" in head or "?" in head or "[" in head:
            continue
        n = 0
        while len(out) < count and n < 200_000:
            n += 1
            for candidate in (
                f"{head}{n // 65536 + 1}:{n % 65536}",
                f"{head}{n}",
                f"{head}{n:012x}",
                f"{head}{n // 256 % 256:02x}:{n % 256:02x}",
            ):
                if (
                    is_beacon_id(candidate)
                    and candidate not in taken
                    and fnmatch.fnmatchcase(candidate, pattern)
                    and _kind_name(site, candidate) in (kind, None if not patterns else kind)
                ):
                    out.append(candidate)
                    taken.add(candidate)
                    break
        if len(out) == count:
            return out
    raise ValueError(f"cannot make {count} beacon ids of kind {kind} from the site's patterns")


def _kind_name(site: Site, beacon: str) -> str | None:
    kind = site.kind_of(beacon)
    return None if kind is None else kind.kind


def _interval(config: PopulationConfig, kind: BeaconKindName) -> float:
    return float(config.advert_interval_s.get(kind, ADVERT_INTERVAL_S[kind]))


def _height(site: Site, kind: BeaconKindName, zone: Zone | None = None) -> float:
    if zone is not None and kind in zone.heights_m:
        return zone.heights_m[kind]
    for k in site.beacon_kinds:
        if k.kind == kind:
            return k.height_m
    return 1.0


class Population:
    """Every beacon of a run and the planners that extend their tracks as time goes on."""

    def __init__(
        self, site: Site, config: PopulationConfig, rng: np.random.Generator, start_s: float
    ) -> None:
        self.site = site
        self.config = config
        self.rng = rng
        self.start_s = start_s
        self.level = site.levels[0]
        self.floor = Floor(self.level)
        self.beacons: list[Beacon] = []
        self._horizon_s = start_s
        taken = {r.beacon for r in site.reference_beacons}
        for ref in site.reference_beacons:
            track = Track()
            track.add(start_s, ref.x, ref.y, ref.z, False)
            self.beacons.append(
                Beacon(
                    ref.beacon,
                    "reference",
                    ref.level,
                    track,
                    _interval(config, "reference"),
                    ref.label,
                )
            )
        self._stores = _Store(self, config, taken) if config.carts else None
        self._warehouse = (
            _Warehouse(self, config, taken) if config.pallets or config.forklifts else None
        )
        self._walks = _Walker(self, config, taken) if config.walks else None

    def advance(self, until_s: float) -> None:
        """Plan every track at least up to until_s."""
        for planner in (self._stores, self._warehouse, self._walks):
            if planner is not None:
                planner.advance(until_s)
        self._horizon_s = max(self._horizon_s, until_s)

    def zone_cells(self, kinds: Iterable[str]) -> list[tuple[Zone, NDArray[np.int64]]]:
        wanted = set(kinds)
        out = []
        for zone in self.site.zones:
            if zone.kind in wanted and zone.level == self.level.level:
                cells = self.floor.cells_in(zone.polygon)
                if cells.size:
                    out.append((zone, cells))
        return out

    def poisson_gap_s(self, rate_per_s: float) -> float:
        """Time to the next event of a Poisson process (arrivals, forklift jobs); never for 0."""
        return float(self.rng.exponential(1.0 / rate_per_s)) if rate_per_s > 0 else math.inf

    def random_point(self, cells: NDArray[np.int64]) -> tuple[int, float, float]:
        c = int(cells[self.rng.integers(cells.size)])
        return c, float(self.floor.cx[c]), float(self.floor.cy[c])

    def walk(self, track: Track, goal: int, speed_m_s: float, z: float, body: bool) -> None:
        """Extend `track` from where it ends to cell `goal` along a walkable route."""
        x, y, _ = track.last()
        start = int(self.floor.cell_of(np.array(x), np.array(y)))
        if not self.floor.walkable[start]:
            start = self.floor.nearest_walkable(x, y)
        t = track.end_s
        for px, py in self.floor.route(start, goal):
            t += math.dist((x, y), (px, py)) / speed_m_s
            track.add(t, px, py, z, body)
            x, y = px, py


class _Store:
    """A pool of cart tags parked in the corral; shoppers arrive, take one, shop, pay, return it."""

    def __init__(self, pop: Population, config: PopulationConfig, taken: set[str]) -> None:
        self.pop = pop
        self.rate_per_s = config.shoppers_per_hour / 3600.0
        entrance = pop.zone_cells(["entrance"])
        self.checkouts = pop.zone_cells(["checkout"])
        self.shopping = pop.zone_cells(["aisle", "endcap", "department"])
        if not entrance or not self.checkouts or not self.shopping:
            raise ValueError(
                "a store scenario needs entrance, checkout and aisle/endcap/department zones "
                "with walkable floor"
            )
        self.corral = entrance[0][1]
        self.height = _height(pop.site, "cart")
        self.carts: list[Beacon] = []
        ids = _beacon_ids(pop.site, "cart", config.carts, taken)
        t0 = pop.start_s
        for i, beacon_id in enumerate(ids):
            track = Track()
            _, x, y = pop.random_point(self.corral)
            track.add(t0, x, y, self.height, False)
            beacon = Beacon(
                beacon_id,
                "cart",
                pop.level.level,
                track,
                _interval(config, "cart"),
                f"cart {i + 1}",
            )
            self.carts.append(beacon)
            pop.beacons.append(beacon)
        # shoppers already inside when the run starts: about half the pool, mid-trip
        for beacon in self.carts:
            if pop.rng.random() < 0.5:
                _zone, cells = self.shopping[pop.rng.integers(len(self.shopping))]
                _, x, y = pop.random_point(cells)
                beacon.track = Track()
                beacon.track.add(t0, x, y, self.height, True)
                self._trip(beacon, first_zones=int(pop.rng.integers(0, 4)))
        self.next_arrival_s = t0 + self._gap()

    def _gap(self) -> float:
        return self.pop.poisson_gap_s(self.rate_per_s)

    def advance(self, until_s: float) -> None:
        while self.next_arrival_s < until_s:
            t = self.next_arrival_s
            free = [b for b in self.carts if b.track.end_s <= t and not b.track.body[-1]]
            if free:
                beacon = free[int(self.pop.rng.integers(len(free)))]
                x, y, z = beacon.track.last()
                beacon.track.add(t, x, y, z, True)
                self._trip(beacon, first_zones=int(self.pop.rng.integers(*ZONES_PER_TRIP)))
            self.next_arrival_s = t + self._gap()

    def _dwell(self, kind: str) -> float:
        return float(
            DWELL_MEDIAN_S.get(kind, 20.0) * math.exp(self.pop.rng.normal(0.0, DWELL_SIGMA))
        )

    def _trip(self, beacon: Beacon, first_zones: int) -> None:
        pop, track = self.pop, beacon.track
        speed = float(pop.rng.uniform(*SHOPPER_SPEED_M_S))
        for _ in range(first_zones):
            zone, cells = self.shopping[pop.rng.integers(len(self.shopping))]
            goal, _, _ = pop.random_point(cells)
            pop.walk(track, goal, speed, self.height, True)
            x, y, z = track.last()
            track.add(track.end_s + self._dwell(zone.kind), x, y, z, True)
        zone, cells = self.checkouts[pop.rng.integers(len(self.checkouts))]
        goal, _, _ = pop.random_point(cells)
        pop.walk(track, goal, speed, self.height, True)
        x, y, z = track.last()
        track.add(track.end_s + self._dwell("checkout"), x, y, z, True)
        goal, _, _ = pop.random_point(self.corral)
        pop.walk(track, goal, speed, self.height, True)
        x, y, z = track.last()
        track.add(track.end_s, x, y, z, False)  # parked: nobody behind it any more


@dataclass
class _Slot:
    x: float
    y: float
    z: float
    zone: Zone
    access: int  # walkable cell a forklift stands on to reach it
    pallet: int | None = None


class _Warehouse:
    """Pallets in rack bays, staging lanes and docks; forklifts move them on random jobs."""

    def __init__(self, pop: Population, config: PopulationConfig, taken: set[str]) -> None:
        self.pop = pop
        self.rate_per_s = config.moves_per_hour / 3600.0
        floor = pop.floor
        self.bay_slots: list[_Slot] = []
        self.floor_slots: list[_Slot] = []
        for zone in pop.site.zones:
            if zone.level != pop.level.level or zone.kind not in ("bay", "staging", "dock"):
                continue
            poly = np.array(zone.polygon)
            lo, hi = poly.min(axis=0), poly.max(axis=0)
            along_x = hi[0] - lo[0] >= hi[1] - lo[1]
            length = (hi - lo)[0 if along_x else 1]
            across = 1 if along_x else 0
            n = max(1, int(length // SLOT_PITCH_M))
            rows = 1 if zone.kind == "bay" else max(1, int((hi - lo)[across] // 1.4))
            base = _height(pop.site, "pallet", zone)
            # A zone that declares its pallets' height (reserve storage on an upper beam) holds
            # them at that height only; stacking beam levels above it put tags over the racks
            # and the gateways (4.6 m + 3 x 1.5 m = 9.1 m under 8 m racks).
            levels = BEAM_LEVELS if zone.kind == "bay" and "pallet" not in zone.heights_m else 1
            for r in range(rows):
                for k in range(n):
                    u = lo.copy()
                    u[0 if along_x else 1] += (k + 0.5) * length / n
                    u[across] += (r + 0.5) * (hi - lo)[across] / rows
                    access = floor.nearest_walkable(float(u[0]), float(u[1]))
                    for lv in range(levels):
                        slot = _Slot(
                            float(u[0]), float(u[1]), base + lv * BEAM_PITCH_M, zone, access
                        )
                        (self.bay_slots if zone.kind == "bay" else self.floor_slots).append(slot)
        slots = self.bay_slots + self.floor_slots
        if config.pallets > len(slots):
            raise ValueError(
                f"{config.pallets} pallets but the site has {len(slots)} pallet places"
            )
        chosen = pop.rng.permutation(len(self.bay_slots))[: config.pallets]
        if config.pallets > len(self.bay_slots):
            chosen = np.arange(config.pallets)
        self.pallets: list[Beacon] = []
        self.where: list[_Slot] = []
        for i, beacon_id in enumerate(_beacon_ids(pop.site, "pallet", config.pallets, taken)):
            slot = slots[int(chosen[i])]
            slot.pallet = i
            track = Track()
            track.add(pop.start_s, slot.x, slot.y, slot.z, False)
            beacon = Beacon(
                beacon_id,
                "pallet",
                pop.level.level,
                track,
                _interval(config, "pallet"),
                f"P-{1001 + i}",
            )
            self.pallets.append(beacon)
            self.where.append(slot)
            pop.beacons.append(beacon)
        parking = pop.zone_cells(["other"]) or pop.zone_cells(["staging", "corridor"])
        park_cells = parking[-1][1] if parking else np.flatnonzero(floor.walkable)
        self.forklift_z = _height(pop.site, "asset")
        self.forklifts: list[Beacon] = []
        for i, beacon_id in enumerate(_beacon_ids(pop.site, "asset", config.forklifts, taken)):
            _, x, y = pop.random_point(park_cells)
            track = Track()
            track.add(pop.start_s, x, y, self.forklift_z, False)
            beacon = Beacon(
                beacon_id,
                "asset",
                pop.level.level,
                track,
                _interval(config, "asset"),
                f"forklift {i + 1}",
            )
            self.forklifts.append(beacon)
            pop.beacons.append(beacon)
        self.busy_until = [pop.start_s] * len(self.pallets)
        self.next_job_s = pop.start_s + self._gap()

    def _gap(self) -> float:
        return self.pop.poisson_gap_s(self.rate_per_s)

    def advance(self, until_s: float) -> None:
        rng = self.pop.rng
        while self.next_job_s < until_s:
            t = self.next_job_s
            self.next_job_s = t + self._gap()
            if not self.forklifts or not self.pallets:
                continue
            p = int(rng.integers(len(self.pallets)))
            if self.busy_until[p] > t:
                continue
            source = self.where[p]
            pool = self.floor_slots if source.zone.kind == "bay" else self.bay_slots
            free = [s for s in pool if s.pallet is None]
            if not free:
                continue
            dest = free[int(rng.integers(len(free)))]
            fork = min(self.forklifts, key=lambda f: f.track.end_s)
            self._move(fork, p, source, dest, max(t, fork.track.end_s))

    def _move(self, fork: Beacon, p: int, source: _Slot, dest: _Slot, t: float) -> None:
        pop, ft, pt = self.pop, fork.track, self.pallets[p].track
        speed = float(pop.rng.uniform(*FORKLIFT_SPEED_M_S))
        x, y, z = ft.last()
        ft.add(t, x, y, z, False)
        pop.walk(ft, source.access, speed, self.forklift_z, False)
        ax, ay, _ = ft.last()
        # pick: the pallet slides out of its place onto the forks in front of it
        pt.add(ft.end_s, source.x, source.y, source.z, False)
        ft.add(ft.end_s + PICK_S, ax, ay, self.forklift_z, False)
        pt.add(ft.end_s, ax, ay, CARRY_HEIGHT_M, False)
        source.pallet = None
        dest.pallet = p
        n0 = len(ft.t)
        pop.walk(ft, dest.access, speed, self.forklift_z, False)
        for i in range(n0, len(ft.t)):
            pt.add(ft.t[i], ft.x[i], ft.y[i], CARRY_HEIGHT_M, False)
        # set down
        ft.add(ft.end_s + PICK_S, ft.x[-1], ft.y[-1], self.forklift_z, False)
        pt.add(ft.end_s, dest.x, dest.y, dest.z, False)
        self.where[p] = dest
        self.busy_until[p] = ft.end_s


class _Walker:
    """One tag walking measured routes over and over (the room harness)."""

    def __init__(self, pop: Population, config: PopulationConfig, taken: set[str]) -> None:
        self.pop = pop
        self.config = config
        kind: BeaconKindName = "asset"
        interval = COMPANION_SAMPLE_S if config.walk_mode == "companion" else TRACKED_INTERVAL_S
        interval = float(config.advert_interval_s.get(kind, interval))
        (beacon_id,) = _beacon_ids(pop.site, kind, 1, taken)
        x0, y0 = config.walks[0].points[0]
        track = Track()
        track.add(pop.start_s, x0, y0, config.walk_height_m, False)
        self.beacon = Beacon(beacon_id, kind, pop.level.level, track, interval, "walker")
        if config.walk_mode == "companion":
            self.beacon.adv_delay_max_s = 0.0
        pop.beacons.append(self.beacon)
        self._next = 0

    def advance(self, until_s: float) -> None:
        track, c = self.beacon.track, self.config
        while track.end_s < until_s:
            walk = c.walks[self._next % len(c.walks)]
            self._next += 1
            pts = np.array(walk.points)
            z = c.walk_height_m
            if c.walk_mode == "companion":
                # one sample per second: the tag stands at each sample point for one advert
                for i in range(len(pts) - 1):
                    for s in range(walk.samples_per_segment):
                        p = pts[i] + (pts[i + 1] - pts[i]) * s / walk.samples_per_segment
                        self._hold(float(p[0]), float(p[1]), z)
                self._hold(float(pts[-1][0]), float(pts[-1][1]), z)
            else:
                x, y, _ = track.last()
                for px, py in pts:
                    t = track.end_s + math.dist((x, y), (px, py)) / c.walk_speed_m_s
                    if c.walk_mode == "survey":
                        # (a point where the tag already is: a leg of no length, no time)
                        track.add(max(t, track.end_s + 1e-6), float(px), float(py), z, False)
                        track.add(track.end_s + c.dwell_s, float(px), float(py), z, False)
                    else:
                        track.add(t, float(px), float(py), z, False)
                    x, y = px, py

    def _hold(self, x: float, y: float, z: float) -> None:
        track = self.beacon.track
        t = track.end_s
        track.add(t + 1e-6, x, y, z, False)
        track.add(t + 1.0, x, y, z, False)


def build_population(
    site: Site, config: PopulationConfig, rng: np.random.Generator, start_s: float
) -> Population:
    return Population(site, config, rng, start_s)
