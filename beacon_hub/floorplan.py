"""The site rasterised for vectorised look-ups: which zone a point is in, where the floor is.

A fix must land where the beacon can be: a cart on the walkable floor (not inside a shelf), a
pallet anywhere on the floor (racks hold pallets). Each level becomes a grid of cells with a
floor mask, a walkable mask and a zone index, plus for every cell the nearest allowed cell, so
that thousands of points per tick are looked up and projected with a few numpy indexing calls.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray
from scipy import ndimage

from beacon_hub.site import Site

__all__ = ["FloorPlan", "LevelGrid", "distance_to_polygon_m", "points_in_polygon"]

F64 = NDArray[np.float64]

GRID_RESOLUTION_M = 0.1
"""Cell size: a tenth of the best achievable BLE accuracy, and 400k cells for an 80 x 50 m hall."""
MARGIN_M = 1.0


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
    floor: NDArray[np.bool_]
    walkable: NDArray[np.bool_]
    zone: NDArray[np.int32]
    """Index into FloorPlan.zone_ids, -1 outside every zone."""
    nearest_floor: NDArray[np.intp]
    """(2, ny, nx): for every cell the indices of the nearest floor cell."""
    nearest_walkable: NDArray[np.intp]
    clearance_floor: NDArray[np.float32]
    """(ny, nx): metres from each cell's centre to the nearest cell off the floor (0 off it)."""
    clearance_walkable: NDArray[np.float32]

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
    """Rasterised levels of a site."""

    def __init__(self, site: Site, resolution_m: float = GRID_RESOLUTION_M) -> None:
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
            walkable = floor.copy()
            for obstacle in level.obstacles:
                walkable &= ~_cells_in(obstacle.polygon, grid_xy, lo, resolution_m)
            zone = np.full((ny, nx), -1, dtype=np.int32)
            # Larger zones first, so a small zone drawn inside a larger one wins its cells.
            order = sorted(
                (i for i, z in enumerate(site.zones) if z.level == level.level),
                key=lambda i: -_area(site.zones[i].polygon),
            )
            for i in order:
                zone[_cells_in(site.zones[i].polygon, grid_xy, lo, resolution_m)] = i
            self.levels[level.level] = LevelGrid(
                level=level.level,
                origin=(float(lo[0]), float(lo[1])),
                resolution_m=resolution_m,
                floor=floor,
                walkable=walkable,
                zone=zone,
                nearest_floor=_nearest(floor),
                nearest_walkable=_nearest(walkable if walkable.any() else floor),
                clearance_floor=_clearance(floor, resolution_m),
                clearance_walkable=_clearance(walkable, resolution_m),
            )

    def zone_index(self, level: int, xy: F64) -> NDArray[np.int32]:
        grid = self.levels[level]
        iy, ix = grid.cells(xy)
        return grid.zone[iy, ix]

    def allowed(self, level: int, xy: F64, walkable_only: bool) -> NDArray[np.bool_]:
        """Whether each point lies on the floor (or the walkable floor) of the level."""
        grid = self.levels[level]
        iy, ix = grid.cells(xy)
        mask = grid.walkable if walkable_only else grid.floor
        return np.asarray(mask[iy, ix])

    def clearance_m(self, level: int, xy: F64, walkable_only: bool) -> F64:
        """How far each point's cell is from the nearest cell off the (walkable) floor: a disc
        of radius r around a point stays on it where r + 1.5 cells is less than this."""
        grid = self.levels[level]
        iy, ix = grid.cells(xy)
        clear = grid.clearance_walkable if walkable_only else grid.clearance_floor
        return np.asarray(clear[iy, ix], dtype=np.float64)

    def project(self, level: int, xy: F64, walkable_only: NDArray[np.bool_]) -> F64:
        """Move points that are off the allowed floor to the centre of the nearest allowed cell."""
        grid = self.levels[level]
        iy, ix = grid.cells(xy)
        allowed = np.where(walkable_only, grid.walkable[iy, ix], grid.floor[iy, ix])
        inside_grid = (
            (xy[:, 0] >= grid.origin[0])
            & (xy[:, 1] >= grid.origin[1])
            & (ix < grid.floor.shape[1] - 1)
            & (iy < grid.floor.shape[0] - 1)
        )
        bad = ~(allowed & inside_grid)
        if not bad.any():
            return xy
        out = xy.copy()
        b_iy, b_ix = iy[bad], ix[bad]
        near_walk = grid.nearest_walkable[:, b_iy, b_ix]
        near_floor = grid.nearest_floor[:, b_iy, b_ix]
        near = np.where(walkable_only[bad][None, :], near_walk, near_floor)
        out[bad] = grid.centres(near[0], near[1])
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
