"""The site rasterised for vectorised look-ups: which zone a point is in, where the floor is.

A fix must land where the beacon can be, its *area*: a cart on the walkway (not inside a
shelf), a pallet being carried anywhere on the floor (racks hold pallets), a parked pallet in
storage, off the traffic zones (aisles, corridors) where forklifts drive. Each level becomes a
grid of cells with a mask per area and a zone index, plus for every cell the nearest cell of
each area, so that thousands of points per tick are looked up and projected with a few numpy
indexing calls.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray
from scipy import ndimage

from beacon_hub.site import FLOOR_GRID_M, FLOOR_GRID_MARGIN_M, Site, ZoneKindName

__all__ = [
    "AREAS",
    "FLOOR",
    "STORAGE",
    "TRAFFIC_ZONE_KINDS",
    "WALKWAY",
    "FloorPlan",
    "LevelGrid",
    "distance_to_polygon_m",
    "points_in_polygon",
]

F64 = NDArray[np.float64]

GRID_RESOLUTION_M = FLOOR_GRID_M
"""Cell size, defined with the site schema that bounds a site's cells (site.FLOOR_GRID_M)."""
MARGIN_M = FLOOR_GRID_MARGIN_M

FLOOR = 0
"""Area: anywhere inside the level's outline."""
WALKWAY = 1
"""Area: the floor off obstacles (shelves, racks, counters)."""
STORAGE = 2
"""Area: the floor off traffic zones (racks included: they hold pallets)."""
AREAS = (FLOOR, WALKWAY, STORAGE)
TRAFFIC_ZONE_KINDS: tuple[ZoneKindName, ...] = ("aisle", "corridor")
"""Zone kinds kept clear for people and forklifts: nothing is stored there."""


def points_in_polygon(
    points: F64, polygon: Sequence[tuple[float, float]] | F64
) -> NDArray[np.bool_]:
    """Even-odd test of many points against one polygon, vectorised over points."""
    poly = np.asarray(polygon, dtype=np.float64)
    x, y = points[:, 0], points[:, 1]
    inside = np.zeros(points.shape[0], dtype=bool)
    x1, y1 = poly[:, 0], poly[:, 1]
    x2, y2 = np.roll(x1, -1), np.roll(y1, -1)
    for i in range(poly.shape[0]):
        crosses = (y1[i] > y) != (y2[i] > y)
        if not crosses.any():
            continue
        with np.errstate(divide="ignore", invalid="ignore"):
            x_cross = x1[i] + (y - y1[i]) * (x2[i] - x1[i]) / (y2[i] - y1[i])
        inside ^= crosses & (x < x_cross)
    return inside


def distance_to_polygon_m(points: F64, polygon: Sequence[tuple[float, float]] | F64) -> F64:
    """Distance from each point to the polygon's boundary."""
    poly = np.asarray(polygon, dtype=np.float64)
    a = poly
    b = np.roll(poly, -1, axis=0)
    ab = b - a  # (m, 2)
    ap = points[:, None, :] - a[None, :, :]  # (n, m, 2)
    length2 = np.maximum((ab * ab).sum(axis=1), 1e-12)
    s = np.clip((ap * ab[None]).sum(axis=2) / length2[None], 0.0, 1.0)
    closest = a[None] + s[..., None] * ab[None]
    return np.asarray(np.sqrt(((points[:, None, :] - closest) ** 2).sum(axis=2)).min(axis=1))


@dataclass(frozen=True)
class LevelGrid:
    level: int
    origin: tuple[float, float]
    resolution_m: float
    areas: NDArray[np.bool_]
    """(len(AREAS), ny, nx): which cells belong to each area."""
    zone: NDArray[np.int32]
    """Index into FloorPlan.zone_ids, -1 outside every zone."""
    nearest: NDArray[np.intp]
    """(len(AREAS), 2, ny, nx): for every cell the indices of the nearest cell of each area."""
    clearance: NDArray[np.float32]
    """(len(AREAS), ny, nx): metres from each cell's centre to the nearest cell off each area
    (0 off it)."""

    @property
    def floor(self) -> NDArray[np.bool_]:
        return np.asarray(self.areas[FLOOR])

    def cells(self, xy: F64) -> tuple[NDArray[np.intp], NDArray[np.intp]]:
        ny, nx = self.floor.shape
        ix = np.clip(((xy[:, 0] - self.origin[0]) / self.resolution_m).astype(np.intp), 0, nx - 1)
        iy = np.clip(((xy[:, 1] - self.origin[1]) / self.resolution_m).astype(np.intp), 0, ny - 1)
        return iy, ix

    def centres(self, iy: NDArray[np.intp], ix: NDArray[np.intp]) -> F64:
        return np.asarray(
            np.c_[
                self.origin[0] + (ix + 0.5) * self.resolution_m,
                self.origin[1] + (iy + 0.5) * self.resolution_m,
            ],
            dtype=np.float64,
        )


class FloorPlan:
    """Rasterised levels of a site. `traffic_zone_kinds` are the zone kinds left out of STORAGE."""

    def __init__(
        self,
        site: Site,
        resolution_m: float = GRID_RESOLUTION_M,
        traffic_zone_kinds: Collection[str] = TRAFFIC_ZONE_KINDS,
    ) -> None:
        self.site = site
        self.zone_ids: tuple[str, ...] = tuple(z.id for z in site.zones)
        self.levels: dict[int, LevelGrid] = {}
        for level in site.levels:
            outline = np.asarray(level.outline, dtype=np.float64)
            lo = outline.min(axis=0) - MARGIN_M
            hi = outline.max(axis=0) + MARGIN_M
            nx = int(np.ceil((hi[0] - lo[0]) / resolution_m))
            ny = int(np.ceil((hi[1] - lo[1]) / resolution_m))
            ix, iy = np.meshgrid(np.arange(nx), np.arange(ny))
            centres = np.c_[
                lo[0] + (ix.ravel() + 0.5) * resolution_m, lo[1] + (iy.ravel() + 0.5) * resolution_m
            ]
            floor = points_in_polygon(centres, outline).reshape(ny, nx)

            grid_xy = centres.reshape(ny, nx, 2)
            walkway = floor.copy()
            for obstacle in level.obstacles:
                walkway &= ~_cells_in(obstacle.polygon, grid_xy, lo, resolution_m)
            zone = np.full((ny, nx), -1, dtype=np.int32)
            storage = floor.copy()
            # Larger zones first, so a small zone drawn inside a larger one wins its cells.
            order = sorted(
                (i for i, z in enumerate(site.zones) if z.level == level.level),
                key=lambda i: -_area(site.zones[i].polygon),
            )
            for i in order:
                cells = _cells_in(site.zones[i].polygon, grid_xy, lo, resolution_m)
                zone[cells] = i
                if site.zones[i].kind in traffic_zone_kinds:
                    storage &= ~cells
            masks = {FLOOR: floor, WALKWAY: walkway, STORAGE: storage}
            # an area the level lacks (a room drawn as one aisle) is its whole floor
            areas = np.stack([masks[a] if masks[a].any() else floor for a in AREAS])
            self.levels[level.level] = LevelGrid(
                level=level.level,
                origin=(float(lo[0]), float(lo[1])),
                resolution_m=resolution_m,
                areas=areas,
                zone=zone,
                nearest=np.stack([_nearest(a) for a in areas]),
                clearance=np.stack([_clearance(a, resolution_m) for a in areas]),
            )

    def zone_index(self, level: int, xy: F64) -> NDArray[np.int32]:
        grid = self.levels[level]
        iy, ix = grid.cells(xy)
        return grid.zone[iy, ix]

    def allowed(self, level: int, xy: F64, area: int) -> NDArray[np.bool_]:
        """Whether each point lies in the area (FLOOR, WALKWAY, STORAGE) of the level."""
        grid = self.levels[level]
        iy, ix = grid.cells(xy)
        return np.asarray(grid.areas[area][iy, ix])

    def clearance_m(self, level: int, xy: F64, area: int) -> F64:
        """How far each point's cell is from the nearest cell off the area: a disc of radius r
        around a point stays in it where r + 1.5 cells is less than this."""
        grid = self.levels[level]
        iy, ix = grid.cells(xy)
        return np.asarray(grid.clearance[area][iy, ix], dtype=np.float64)

    def project(self, level: int, xy: F64, area: NDArray[np.int8]) -> F64:
        """Move points that are off their area to the centre of the area's nearest cell."""
        grid = self.levels[level]
        iy, ix = grid.cells(xy)
        inside_grid = (
            (xy[:, 0] >= grid.origin[0])
            & (xy[:, 1] >= grid.origin[1])
            & (ix < grid.floor.shape[1] - 1)
            & (iy < grid.floor.shape[0] - 1)
        )
        bad = ~(grid.areas[area, iy, ix] & inside_grid)
        if not bad.any():
            return xy
        out = xy.copy()
        b_iy, b_ix = iy[bad], ix[bad]
        near = grid.nearest[area[bad], :, b_iy, b_ix]  # (bad, 2)
        out[bad] = grid.centres(near[:, 0], near[:, 1])
        return out


def _cells_in(
    polygon: Sequence[tuple[float, float]], grid_xy: F64, lo: F64, resolution_m: float
) -> NDArray[np.bool_]:
    """Cells whose centre lies in the polygon, testing only the polygon's bounding box."""
    ny, nx = grid_xy.shape[:2]
    poly = np.asarray(polygon, dtype=np.float64)
    x0, y0 = ((poly.min(axis=0) - lo) / resolution_m).astype(int)
    x1, y1 = ((poly.max(axis=0) - lo) / resolution_m).astype(int) + 1
    x0, y0, x1, y1 = max(x0, 0), max(y0, 0), min(x1, nx), min(y1, ny)
    out = np.zeros((ny, nx), dtype=bool)
    if x1 > x0 and y1 > y0:
        sub = grid_xy[y0:y1, x0:x1].reshape(-1, 2)
        out[y0:y1, x0:x1] = points_in_polygon(sub, poly).reshape(y1 - y0, x1 - x0)
    return out


def _nearest(mask: NDArray[np.bool_]) -> NDArray[np.intp]:
    if not mask.any():
        raise ValueError("a level without floor cells")
    _, indices = ndimage.distance_transform_edt(~mask, return_indices=True)
    return np.asarray(indices, dtype=np.intp)


def _clearance(mask: NDArray[np.bool_], resolution_m: float) -> NDArray[np.float32]:
    distance = ndimage.distance_transform_edt(mask) * resolution_m
    return np.asarray(distance, dtype=np.float32)


def _area(polygon: Sequence[tuple[float, float]]) -> float:
    p = np.asarray(polygon, dtype=np.float64)
    x, y = p[:, 0], p[:, 1]
    return float(abs(np.dot(x, np.roll(y, -1)) - np.dot(y, np.roll(x, -1))) / 2.0)
