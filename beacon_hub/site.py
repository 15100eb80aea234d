"""The site model: one pydantic schema for a site file (YAML), its cross-checks and summary.

A site is a store, a warehouse or a lab space: levels with a floor outline, walls and obstacles,
radio defaults with per-gateway overrides, gateways, beacon kinds, reference beacons and zones.
Coordinates are site-local metres (x right, y up the plan), z above the floor of the level.
The reference of every key is docs/site-file.md.
"""

from __future__ import annotations

import fnmatch
import math
import re
import statistics
import zoneinfo
from collections import Counter
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    StrictFloat,
    StrictInt,
    StrictStr,
    StringConstraints,
)

from beacon_hub.config_loader import Loc, Located, problems_to_error, read_yaml, validate_located
from beacon_hub.errors import IdError
from beacon_hub.geometry import (
    Point,
    distance_to_polygon_edge_m,
    point_in_polygon,
    polygon_area_m2,
    polygon_inside_polygon,
    self_intersection,
)
from beacon_hub.ids import NAME_ID_PATTERN, canonical_beacon_id

__all__ = [
    "BEACON_KINDS",
    "BeaconKind",
    "BeaconKindName",
    "Gateway",
    "GeoAnchor",
    "Level",
    "Obstacle",
    "RadioOverride",
    "RadioParams",
    "ReferenceBeacon",
    "Site",
    "Wall",
    "Zone",
    "ZoneKindName",
    "load_site",
    "site_summary",
    "validate_site_data",
]

OUTSIDE_TOLERANCE_M = 0.3
"""How far outside the floor outline a gateway, reference beacon or zone edge may sit: gateways
are screwed to outer walls and plans are drawn to about a hand's width."""

MIN_ZONE_AREA_M2 = 0.05
"""Smaller zones are degenerate: no fix is precise enough to land in them."""

MAX_COORDINATE_M = 10_000.0
"""Farthest a point of a site file may lie from the site's origin, in x and in y. The origin is
a corner of the building or a survey point on its plot, and the largest single buildings are
about 1 km across; 10 km is room for any of them placed anywhere on a campus plan."""

MAX_POLYGON_CORNERS = 1_000
"""Corners of one outline, obstacle or zone. A drawn or CAD-exported floor polygon has tens (the
example sites at most 37, a round hall traced at 1-degree steps 360); the self-intersection
check compares pairs of edges, so 10,000 corners took longer than 20 s to validate."""

FLOOR_GRID_M = 0.1
"""Cell of the engine's floor grids (floorplan.GRID_RESOLUTION_M): a tenth of the best
achievable BLE accuracy, and 400k cells for an 80 x 50 m hall."""
FLOOR_GRID_MARGIN_M = 1.0
"""The floor grid reaches this far beyond the outline's bounding box on every side."""
FLOOR_GRID_BYTES_PER_CELL = 138
"""What the engine allocates per floor-grid cell while building a level: 67 bytes are kept
(area masks, zone index, nearest cell and clearance of each area) and the rest is scratch
(measured at 1 and 9 million cells, floorplan.FloorPlan)."""
MAX_FLOOR_GRID_CELLS = 15_000_000
"""Floor-grid cells of all levels of a site together: about 2 GB while the engine starts and
1 GB kept. That is 150,000 m2 of the outlines' bounding boxes, margin included: a 385 x 385 m
hall, or 1,000 x 147 m, where a large hypermarket is 10,000-20,000 m2 and the example warehouse
4,000 m2. A larger building is split into several sites, each with its own floor grid."""

BEACON_KINDS = ("cart", "pallet", "reference", "asset")
BeaconKindName = Literal["cart", "pallet", "reference", "asset"]

ZoneKindName = Literal[
    "entrance",
    "aisle",
    "endcap",
    "checkout",
    "department",
    "bay",
    "dock",
    "staging",
    "room",
    "corridor",
    "other",
]

NameId = Annotated[StrictStr, StringConstraints(pattern=NAME_ID_PATTERN)]
Metres = Annotated[StrictFloat, Field(allow_inf_nan=False)]
Coordinate = Annotated[Metres, Field(ge=-MAX_COORDINATE_M, le=MAX_COORDINATE_M)]
"""x or y in site metres."""
PointM = tuple[Coordinate, Coordinate]
"""[x, y] in site metres."""
Polygon = Annotated[list[PointM], Field(min_length=3, max_length=MAX_POLYGON_CORNERS)]


def _floor_grid_cells(outline: Sequence[Point]) -> int:
    """Cells of the engine's floor grid for a level with this outline, sized as
    floorplan.FloorPlan sizes it."""
    cells = 1
    for axis in (0, 1):
        lo = min(p[axis] for p in outline) - FLOOR_GRID_MARGIN_M
        hi = max(p[axis] for p in outline) + FLOOR_GRID_MARGIN_M
        cells *= math.ceil((hi - lo) / FLOOR_GRID_M)
    return cells


def _too_many_cells(what: str, cells: int) -> str:
    return (
        f"{what} would have {cells:,} cells of the engine's {FLOOR_GRID_M:g} m floor grid "
        f"(an outline's bounding box and {FLOOR_GRID_MARGIN_M:g} m around it), more than the "
        f"{MAX_FLOOR_GRID_CELLS:,} a site may have (about "
        f"{MAX_FLOOR_GRID_CELLS * FLOOR_GRID_BYTES_PER_CELL / 1e9:.0f} GB as the engine starts); "
        "split a larger building into several sites"
    )


def _fits_floor_grid(outline: list[tuple[float, float]]) -> list[tuple[float, float]]:
    cells = _floor_grid_cells(outline)
    if cells > MAX_FLOOR_GRID_CELLS:
        xs, ys = [p[0] for p in outline], [p[1] for p in outline]
        span = f"{max(xs) - min(xs):g} x {max(ys) - min(ys):g} m"
        raise ValueError(_too_many_cells(f"an outline spanning {span}", cells))
    return outline


def _beacon_id(value: str) -> str:
    try:
        return canonical_beacon_id(value)
    except IdError as e:
        raise ValueError(str(e)) from e


BeaconIdStr = Annotated[StrictStr, AfterValidator(_beacon_id)]

_PATTERN_CHARS = re.compile(r"^(ibeacon|eddystone|altbeacon|mac|\*)[0-9a-f:*?\[\]!-]*$")


def _id_pattern(value: str) -> str:
    if _PATTERN_CHARS.fullmatch(value) is None:
        raise ValueError(
            f"{value!r} is not an id pattern: a canonical beacon id (lowercase hex) with * and ? "
            "wildcards, e.g. 'ibeacon:e2c56db5-dffb-48d2-b060-d0f5a71096e0:1:*'"
        )
    return value


def _timezone(value: str) -> str:
    try:
        zoneinfo.ZoneInfo(value)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError, OSError) as e:
        # OSError: a directory of the zone database ('America') or a name too long for a path.
        # The message leaves the value to config_loader, which shortens a long one.
        raise ValueError("not an IANA time zone such as 'Europe/Berlin'") from e
    return value


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class RadioParams(_Model):
    """Log-distance path loss: RSSI(d) = ref_rssi_1m_dbm - 10 * exponent * log10(d / 1 m)."""

    ref_rssi_1m_dbm: Annotated[StrictFloat, Field(ge=-110, le=10)] = -59.0
    """RSSI expected at 1 m. -59 dBm is the iBeacon default measured power (Apple)."""
    path_loss_exponent: Annotated[StrictFloat, Field(ge=1.0, le=6.0)] = 2.2
    """2 in free space; 1.5-3.1 fitted per receiver on the flat-calib2021 dataset."""
    shadowing_db: Annotated[StrictFloat, Field(ge=0.0, le=20.0)] = 6.6
    """Residual spread after the fit: 6.6 dB on flat-calib2021 (5.1-7.7 by anchor)."""


class RadioOverride(_Model):
    """Per-gateway override of any of the site's radio defaults."""

    ref_rssi_1m_dbm: Annotated[StrictFloat, Field(ge=-110, le=10)] | None = None
    path_loss_exponent: Annotated[StrictFloat, Field(ge=1.0, le=6.0)] | None = None
    shadowing_db: Annotated[StrictFloat, Field(ge=0.0, le=20.0)] | None = None


class GeoAnchor(_Model):
    """Ties site metres to the globe: site point `origin` is at (lat_deg, lon_deg)."""

    lat_deg: Annotated[StrictFloat, Field(ge=-90, le=90)]
    lon_deg: Annotated[StrictFloat, Field(ge=-180, le=180)]
    bearing_deg: Annotated[StrictFloat, Field(ge=0, lt=360)] = 0.0
    """Clockwise angle from true north to the site's +y axis."""
    origin: PointM = (0.0, 0.0)


class Wall(_Model):
    """A wall as its centre-line, with the loss of one crossing."""

    id: NameId | None = None
    start: PointM
    end: PointM
    loss_db: Annotated[StrictFloat, Field(ge=0, le=60)]
    """Drywall about 3 dB, brick about 6-8 dB, concrete 10-15 dB at 2.4 GHz (ITU-R P.2040)."""


class Obstacle(_Model):
    """A shelf, rack or counter: people cannot walk through it and it attenuates radio."""

    id: NameId
    kind: Literal["shelf", "rack", "counter", "fixture", "other"]
    polygon: Polygon
    loss_db: Annotated[StrictFloat, Field(ge=0, le=60)]
    """Loss of a path through it below `height_m`; stocked shelving is about 5-10 dB."""
    height_m: Annotated[Metres, Field(gt=0, le=30)] | None = None
    """Top of the obstacle; a path passing above it is not attenuated. None: full height."""


class Level(_Model):
    level: Annotated[StrictInt, Field(ge=-10, le=200)] = 0
    name: StrictStr = ""
    elevation_m: Annotated[Metres, Field(ge=-100, le=1000)] = 0.0
    """Height of this level's floor above the site's ground floor."""
    outline: Annotated[Polygon, AfterValidator(_fits_floor_grid)]
    walls: list[Wall] = []
    obstacles: list[Obstacle] = []


class Gateway(_Model):
    id: NameId
    x: Coordinate
    y: Coordinate
    z: Annotated[Metres, Field(ge=0, le=30)]
    """Mounting height above the level's floor."""
    level: StrictInt = 0
    name: StrictStr = ""
    radio: RadioOverride = RadioOverride()


class BeaconKind(_Model):
    """Which beacon ids are of a kind (first matching entry wins) and how high they are worn."""

    kind: BeaconKindName
    match: Annotated[list[Annotated[StrictStr, AfterValidator(_id_pattern)]], Field(min_length=1)]
    height_m: Annotated[Metres, Field(ge=0, le=30)]
    """Typical mounting height above the floor: a cart handle is about 1.0 m."""
    body_loss_db: Annotated[float, Field(ge=0, le=30)] = 0.0
    """Loss through a person behind the tag, against its direction of travel (a shopper
    pushing a cart: 2.4 GHz body shadowing is 5-15 dB in wearable measurements, a path that
    grazes the body loses less; the example store says 6). The engine expects it on the paths
    obstruction.body_shadowed gives, once a track has a heading; 0: nobody is behind it."""
    zone_hysteresis_m: Annotated[float, Field(ge=0, le=10)] | None = None
    zone_min_dwell_s: Annotated[float, Field(ge=0, le=600)] | None = None
    """This kind's zone rules instead of the engine's `hysteresis_m` and `min_dwell_s` (0.6 m,
    2 s: set for carts standing at a shelf edge, where a flap is the complaint). A tag carried
    from room to room wants quicker ones: the room harness and flat-calib2021 say 0.3 m and
    0.6 s (README, Accuracy)."""


class ReferenceBeacon(_Model):
    """A beacon fixed at a known position: live calibration of the radio map."""

    beacon: BeaconIdStr
    x: Coordinate
    y: Coordinate
    z: Annotated[Metres, Field(ge=0, le=30)]
    level: StrictInt = 0
    label: StrictStr = ""


class Zone(_Model):
    id: NameId
    name: StrictStr = ""
    kind: ZoneKindName
    level: StrictInt = 0
    polygon: Polygon
    heights_m: dict[BeaconKindName, Annotated[Metres, Field(ge=0, le=30)]] = {}
    """Overrides a kind's mounting height inside this zone (pallets on an upper rack beam)."""


class Site(_Model):
    id: NameId
    name: StrictStr = ""
    kind: Literal["store", "warehouse", "lab"]
    """`lab`: a measurement space such as the room harness or the flat-calib2021 dataset."""
    timezone: Annotated[StrictStr, AfterValidator(_timezone)] = "UTC"
    anchor: GeoAnchor | None = None
    radio: RadioParams = RadioParams()
    levels: Annotated[list[Level], Field(min_length=1)]
    gateways: Annotated[list[Gateway], Field(min_length=1)]
    beacon_kinds: list[BeaconKind] = []
    reference_beacons: list[ReferenceBeacon] = []
    zones: list[Zone] = []

    def level(self, number: int) -> Level:
        for level in self.levels:
            if level.level == number:
                return level
        raise KeyError(number)

    def level_number(self, given: int | None) -> int:
        """The level a CSV row means by its `level` cell (None: left empty): the site's only
        level, whatever its number, or level 0 of a site of several."""
        if given is not None:
            return given
        return self.levels[0].level if len(self.levels) == 1 else 0

    def gateway_radio(self, gateway: Gateway) -> RadioParams:
        """The site's radio defaults with this gateway's overrides applied."""
        overrides = gateway.radio.model_dump(exclude_none=True)
        return self.radio.model_copy(update=overrides) if overrides else self.radio

    def kind_of(self, beacon: str) -> BeaconKind | None:
        """The first beacon kind whose patterns match this canonical id."""
        for kind in self.beacon_kinds:
            if any(fnmatch.fnmatchcase(beacon, pattern) for pattern in kind.match):
                return kind
        return None

    def floor_area_m2(self) -> float:
        return sum(polygon_area_m2(level.outline) for level in self.levels)


def load_site(path: Path) -> Site:
    """Read and validate a site file; ConfigError lists every problem with file:line and path."""
    doc = read_yaml(path)
    site = validate_located(Site, doc)
    problems = list(_cross_checks(site))
    if problems:
        raise problems_to_error(doc, problems)
    return site


def validate_site_data(data: Any, source: str) -> Site:
    """Validate an in-memory site document (tests, generators) with the same checks."""
    doc = Located(data=data, origins={}, source=source)
    site = validate_located(Site, doc)
    problems = list(_cross_checks(site))
    if problems:
        raise problems_to_error(doc, problems)
    return site


def _duplicates(items: Sequence[Any], key: str, loc: str, what: str) -> Iterator[tuple[Loc, str]]:
    first: dict[Any, int] = {}
    for i, item in enumerate(items):
        value = getattr(item, key)
        if value is None:
            continue
        if value in first:
            yield (loc, i, key), f"duplicate {what} {value!r}; first used at {loc}[{first[value]}]"
        else:
            first[value] = i


def _polygon_problem(poly: Sequence[Point]) -> str | None:
    distinct = list(dict.fromkeys(poly))
    if len(distinct) < 3 or all(
        abs(_cross(distinct[0], distinct[1], c)) < 1e-9 for c in distinct[2:]
    ):
        return "degenerate polygon: fewer than 3 distinct corners, or all on one line"
    crossing = self_intersection(poly)
    if crossing is not None:
        i, j = crossing
        n = len(poly)
        return (
            f"self-intersecting polygon: edge {i} ({_pt(poly[i])}->{_pt(poly[(i + 1) % n])})"
            f" meets edge {j} ({_pt(poly[j])}->{_pt(poly[(j + 1) % n])})"
        )
    area = polygon_area_m2(poly)
    if area < MIN_ZONE_AREA_M2:
        return f"degenerate polygon: area {area:.3f} m2 < {MIN_ZONE_AREA_M2} m2"
    return None


def _cross(a: Point, b: Point, c: Point) -> float:
    return (b[0] - a[0]) * (c[1] - a[1]) - (b[1] - a[1]) * (c[0] - a[0])


def _pt(p: Point) -> str:
    return f"[{p[0]:g}, {p[1]:g}]"


def _on_floor(p: Point, outline: Sequence[Point]) -> bool:
    return (
        point_in_polygon(p, outline)
        or distance_to_polygon_edge_m(p, outline) <= OUTSIDE_TOLERANCE_M
    )


def _cross_checks(site: Site) -> Iterator[tuple[Loc, str]]:
    """Checks across fields that a schema cannot express, each with the path it concerns."""
    yield from _duplicates(site.levels, "level", "levels", "level")
    yield from _duplicates(site.gateways, "id", "gateways", "gateway id")
    yield from _duplicates(site.zones, "id", "zones", "zone id")
    yield from _duplicates(site.reference_beacons, "beacon", "reference_beacons", "beacon")
    outlines = {level.level: level.outline for level in site.levels}
    cells = 0
    for li, level in enumerate(site.levels):
        cells += _floor_grid_cells(level.outline)
        if cells > MAX_FLOOR_GRID_CELLS:
            yield (
                ("levels", li, "outline"),
                _too_many_cells(f"levels[0..{li}] together", cells),
            )
            break
    obstacle_ids: dict[str, Loc] = {}
    for li, level in enumerate(site.levels):
        problem = _polygon_problem(level.outline)
        if problem:
            yield ("levels", li, "outline"), problem
            continue
        for wi, wall in enumerate(level.walls):
            if math.dist(wall.start, wall.end) < 0.01:
                yield ("levels", li, "walls", wi), "wall of zero length"
            for end in ("start", "end"):
                if not _on_floor(getattr(wall, end), level.outline):
                    yield ("levels", li, "walls", wi, end), "outside the level's outline"
        for oi, obstacle in enumerate(level.obstacles):
            loc: Loc = ("levels", li, "obstacles", oi)
            if obstacle.id in obstacle_ids:
                yield (*loc, "id"), f"duplicate obstacle id {obstacle.id!r}"
            obstacle_ids[obstacle.id] = loc
            problem = _polygon_problem(obstacle.polygon)
            if problem:
                yield (*loc, "polygon"), problem
            elif not polygon_inside_polygon(obstacle.polygon, level.outline, OUTSIDE_TOLERANCE_M):
                yield (*loc, "polygon"), "reaches outside the level's outline"
    known_levels = ", ".join(str(n) for n in outlines)
    for gi, gw in enumerate(site.gateways):
        if gw.level not in outlines:
            yield ("gateways", gi, "level"), f"no level {gw.level}; levels are {known_levels}"
        elif not _on_floor((gw.x, gw.y), outlines[gw.level]):
            yield (
                ("gateways", gi),
                (
                    f"gateway {gw.id} at ({gw.x:g}, {gw.y:g}) is outside the outline of level "
                    f"{gw.level} (by more than {OUTSIDE_TOLERANCE_M} m)"
                ),
            )
    for ri, ref in enumerate(site.reference_beacons):
        if ref.level not in outlines:
            yield (
                ("reference_beacons", ri, "level"),
                f"no level {ref.level}; levels are {known_levels}",
            )
        elif not _on_floor((ref.x, ref.y), outlines[ref.level]):
            yield (
                ("reference_beacons", ri),
                (
                    f"reference beacon at ({ref.x:g}, {ref.y:g}) is outside the outline of level "
                    f"{ref.level}"
                ),
            )
    for zi, zone in enumerate(site.zones):
        if zone.level not in outlines:
            yield ("zones", zi, "level"), f"no level {zone.level}; levels are {known_levels}"
            continue
        problem = _polygon_problem(zone.polygon)
        if problem:
            yield ("zones", zi, "polygon"), f"zone {zone.id}: {problem}"
        elif not polygon_inside_polygon(zone.polygon, outlines[zone.level], OUTSIDE_TOLERANCE_M):
            yield (
                ("zones", zi, "polygon"),
                (f"zone {zone.id} reaches outside the outline of level {zone.level}"),
            )
    for ki, kind in enumerate(site.beacon_kinds):
        for pi, pattern in enumerate(kind.match):
            earlier = [k for k in site.beacon_kinds[:ki] if pattern in k.match]
            if earlier:
                yield (
                    ("beacon_kinds", ki, "match", pi),
                    (f"pattern {pattern!r} already maps to kind {earlier[0].kind}"),
                )


def site_summary(site: Site) -> dict[str, Any]:
    """The figures `beacon-hub site check` prints: counts, area, density, spacing."""
    area = site.floor_area_m2()
    spacings = _nearest_neighbour_m(site.gateways)
    heights = [gw.z for gw in site.gateways]
    return {
        "site": site.id,
        "name": site.name,
        "kind": site.kind,
        "levels": len(site.levels),
        "area_m2": round(area, 1),
        "gateways": len(site.gateways),
        "gateways_per_100m2": round(100.0 * len(site.gateways) / area, 2),
        "gateway_spacing_m": {
            "min": round(min(spacings), 2) if spacings else None,
            "median": round(statistics.median(spacings), 2) if spacings else None,
            "max": round(max(spacings), 2) if spacings else None,
        },
        "gateway_height_m": {"min": min(heights), "max": max(heights)},
        "zones": len(site.zones),
        "zones_by_kind": dict(sorted(Counter(z.kind for z in site.zones).items())),
        "obstacles": sum(len(level.obstacles) for level in site.levels),
        "walls": sum(len(level.walls) for level in site.levels),
        "reference_beacons": len(site.reference_beacons),
        "reference_beacons_per_50m2": round(50.0 * len(site.reference_beacons) / area, 2),
        "beacon_kinds": {k.kind: k.height_m for k in site.beacon_kinds},
    }


def _nearest_neighbour_m(gateways: Sequence[Gateway]) -> list[float]:
    """Distance from each gateway to its nearest neighbour on the same level (plan view)."""
    out = []
    for gw in gateways:
        others = [
            math.dist((gw.x, gw.y), (o.x, o.y))
            for o in gateways
            if o is not gw and o.level == gw.level
        ]
        if others:
            out.append(min(others))
    return out
