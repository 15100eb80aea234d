"""The radio map: a per-gateway correction of the path-loss model, in dB, over the floor.

Static shadowing (furniture, shelving, walls the plan does not show) is the largest error in a
real building and does not average out over time: on flat-calib2021 about 4.5 of the 6.6 dB
residual spread stays put when the same spot is revisited. The map learns it from residuals
observed at known positions (a calibration walk or survey, and live from reference beacons) by
kernel smoothing onto a grid with shrinkage towards zero where evidence is thin:

    correction(cell) = sum_j k(cell, x_j) r_j / (sum_j k(cell, x_j) + prior_weight)

Sums of evidence are kept, so live observations add to them with exponential forgetting.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Annotated, Any

import numpy as np
from numpy.typing import NDArray
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    PlainValidator,
    StrictFloat,
    StrictInt,
    StrictStr,
)
from scipy import ndimage

from beacon_hub.config_loader import Loc
from beacon_hub.multilateration import MapTable
from beacon_hub.obstruction import LevelObstructions
from beacon_hub.site import MAX_COORDINATE_M, Site

__all__ = [
    "MAP_BANDWIDTH_M",
    "MAP_BANDWIDTH_RANGE_M",
    "SURVEY_BANDWIDTH_M",
    "RadioMap",
    "RadioMapFile",
    "map_file_problems",
]

F64 = NDArray[np.float64]

MAP_RESOLUTION_M = 0.25
"""Grid step: a sixth of the 1.5 m over which static shadowing decorrelates (flat-calib2021)."""
MAP_BANDWIDTH_M = 0.4
"""Kernel sigma: smooths 1/3-s RSSI noise over the ~1 m shadowing correlation, no further.
Right for a dense calibration (a robot's walk, many tags); a one-tag survey wants about 0.8
(`calibrate --map-bandwidth-m`, SURVEY_BANDWIDTH_M)."""
SURVEY_BANDWIDTH_M = 0.8
"""The kernel for a one-tag survey (beacon-hub survey, points or walk): its evidence is a few
passes or spots, not the many crossing tracks of a dense calibration, and a wider kernel carries
it further. Simulated store (E)'s test day, calibrated from one tag (scripts/survey_accuracy.py,
2026-12-07), median / p90 at 0.4 -> 0.8 m: points 2.5 m apart held 30 s 1.16 / 5.30 -> 0.83 /
4.18, 1.5 m apart held 10 s 0.70 / 4.44 -> 0.57 / 2.28, a walk along rows 2.5 m apart 0.98 /
4.99 -> 0.73 / 3.76 (before its first and last truth rows were kept: 1.0 m gave 0.78 / 4.71
against 0.73 / 3.92 at 0.8). Dense calibrations lose by it: the README's 60 carts
with known positions 0.44 / 2.48 -> 0.68 / 2.24, and warehouse (F)'s 600 pallets in the right or
a neighbouring bay 95.1 -> 93.0 %, parked median 0.41 -> 0.49 m."""
MAP_BANDWIDTH_RANGE_M = (0.1, 2.0)
"""What `calibrate --map-bandwidth-m` takes: from under a cell to 8 cells of the finest grid
(MAX_FILE_KERNEL_CELLS)."""
MAP_MAX_CELLS = 20_000
"""Cells per gateway: a large hall gets a coarser map (0.46 m for 80 x 50 m), which keeps the
floor-plan losses quick to compute at start-up (cells x gateways x wall edges)."""
MAP_PRIOR_WEIGHT = 5.0
_PLAN_CACHE: dict[tuple[object, ...], F64] = {}
"""Floor-plan losses by site, height and grid: several engines of one site in a process (the
hub's tests, replay after calibrate) compute them once; seconds for a racked warehouse."""
_PLAN_CACHE_SIZE = 8
"""Evidence, in samples, that the path-loss model (correction 0) is worth in every cell."""

MAX_FILE_MAP_CELLS = 100_000
"""Cells of one gateway's grid in a calibration file. RadioMap.for_site sizes its step by the
area, for MAP_MAX_CELLS, and a long thin site gets more: 42,423 for a 20 km strip, the thinnest
the site schema admits. The engine keeps about 64 bytes a cell and gateway (sums, values and
plan base in float64, the bilinear tables in float32)."""
MAX_FILE_GRID_CHARS = 32 * MAX_FILE_MAP_CELLS
"""A grid written as one string is at most this long: _as_text writes a value in at most 24
characters and a space (repr of a float); checked before the string is split."""
MAX_FILE_KERNEL_CELLS = 8.0
"""Largest bandwidth_m in cells (resolution_m): the live update's Gaussian filter costs this
many cells on each side, times 4, per cell. `calibrate` writes at most 1.6 (0.4 m over 0.25 m)."""
MAX_CORRECTION_DB = 150.0
"""Largest learned correction |sum_r| / (sum_w + prior_weight) in a file: RSSI spans 147 dB
(-127..+20 dBm, wire.RSSI_MIN_DBM..RSSI_MAX_DBM), so no residual, and no mean of them, is
larger."""


@dataclass
class RadioMap:
    gateways: tuple[str, ...]
    origin: tuple[float, float]
    resolution_m: float
    bandwidth_m: float
    prior_weight: float
    sum_r: F64
    """(gateways, ny, nx) kernel-weighted sum of residuals (dB)."""
    sum_w: F64
    """(gateways, ny, nx) kernel-weighted evidence (samples)."""
    base: F64 | None = None
    """(gateways, ny, nx) what the floor plan predicts (minus wall and obstacle losses, dB);
    learned corrections are relative to it. Not saved: it follows from the site file."""
    _values: F64 | None = field(default=None, repr=False)
    _tables: dict[bool, MapTable] = field(default_factory=dict, repr=False)

    @classmethod
    def for_site(
        cls, site: Site, gateways: tuple[str, ...], *, bandwidth_m: float = MAP_BANDWIDTH_M
    ) -> RadioMap:
        """An empty map over the site's levels, its step set by MAP_MAX_CELLS."""
        outline = np.concatenate([np.asarray(level.outline) for level in site.levels])
        lo, hi = outline.min(axis=0) - 1.0, outline.max(axis=0) + 1.0
        area = float(np.prod(hi - lo))
        step = max(MAP_RESOLUTION_M, float(np.sqrt(area / MAP_MAX_CELLS)))
        return cls.empty(
            gateways,
            (float(lo[0]), float(lo[1])),
            (float(hi[0]), float(hi[1])),
            resolution_m=step,
            bandwidth_m=bandwidth_m,
        )

    def with_plan_losses(self, site: Site, height_m: float) -> RadioMap:
        """Set the base to minus the wall and obstacle losses from each gateway to every cell,
        for a beacon at `height_m` on the gateway's level."""
        # The grid's shape too: two maps of one site at one origin and step can differ in
        # extent (a calibration's map against the site's own), and set_base needs this shape.
        key = (
            site.model_dump_json(), height_m, self.origin, self.resolution_m, self.sum_r.shape,
            self.gateways,
        )  # fmt: skip
        cached = _PLAN_CACHE.get(key)
        if cached is None:
            cached = self._plan_losses(site, height_m)
            if len(_PLAN_CACHE) >= _PLAN_CACHE_SIZE:
                _PLAN_CACHE.pop(next(iter(_PLAN_CACHE)))
            _PLAN_CACHE[key] = cached
        self.set_base(cached.copy())
        return self

    def _plan_losses(self, site: Site, height_m: float) -> F64:
        cells = self.cell_centres()
        ny, nx = self.sum_r.shape[1:]
        base = np.zeros_like(self.sum_r)
        levels = {level.level: LevelObstructions.of(level) for level in site.levels}
        points = np.c_[cells, np.full(cells.shape[0], height_m)]
        by_id = {g.id: g for g in site.gateways}
        for i, gw_id in enumerate(self.gateways):
            gw = by_id.get(gw_id)
            if gw is None or levels[gw.level].empty:
                continue
            loss = levels[gw.level].loss_db(points, np.array([[gw.x, gw.y, gw.z]]))
            base[i] = -loss[:, 0].reshape(ny, nx)
        return base

    @classmethod
    def empty(
        cls,
        gateways: tuple[str, ...],
        lo: tuple[float, float],
        hi: tuple[float, float],
        *,
        resolution_m: float = MAP_RESOLUTION_M,
        bandwidth_m: float = MAP_BANDWIDTH_M,
        prior_weight: float = MAP_PRIOR_WEIGHT,
    ) -> RadioMap:
        nx = int(np.ceil((hi[0] - lo[0]) / resolution_m)) + 1
        ny = int(np.ceil((hi[1] - lo[1]) / resolution_m)) + 1
        shape = (len(gateways), ny, nx)
        return cls(
            gateways, lo, resolution_m, bandwidth_m, prior_weight, np.zeros(shape), np.zeros(shape)
        )

    @property
    def values(self) -> F64:
        """The correction in dB for every gateway and cell: plan losses plus what was learned."""
        if self._values is None:
            learned = self.sum_r / (self.sum_w + self.prior_weight)
            self._values = learned if self.base is None else learned + self.base
        return self._values

    def set_base(self, base: F64) -> None:
        if base.shape != self.sum_r.shape:
            raise ValueError(
                f"plan-loss grid {base.shape} does not match the map {self.sum_r.shape}"
            )
        self.base = base
        self._values = None
        self._tables.clear()

    def cell_centres(self) -> F64:
        """(ny * nx, 2) site coordinates of every cell, row by row."""
        ny, nx = self.sum_r.shape[1:]
        ix, iy = np.meshgrid(np.arange(nx), np.arange(ny))
        return np.asarray(
            np.c_[
                self.origin[0] + ix.ravel() * self.resolution_m,
                self.origin[1] + iy.ravel() * self.resolution_m,
            ],
            dtype=np.float64,
        )

    def observe(self, gw: NDArray[np.intp], xy: F64, residual_db: F64, keep: float = 1.0) -> None:
        """Add residuals (observed minus path-loss model) seen by gateways `gw` at positions `xy`.

        `keep` < 1 first fades the old evidence: live updates from reference beacons forget.
        """
        if self.base is not None:
            # learned corrections are relative to the plan's prediction
            residual_db = (
                residual_db - _bilinear(self.base, gw, xy, self.origin, self.resolution_m)[0]
            )
        self._values = None
        self._tables.clear()
        if keep < 1.0:
            self.sum_r *= keep
            self.sum_w *= keep
        ny, nx = self.sum_r.shape[1:]
        ix = np.rint((xy[:, 0] - self.origin[0]) / self.resolution_m).astype(np.intp)
        iy = np.rint((xy[:, 1] - self.origin[1]) / self.resolution_m).astype(np.intp)
        ok = (ix >= 0) & (ix < nx) & (iy >= 0) & (iy < ny) & np.isfinite(residual_db)
        binned_r = np.zeros_like(self.sum_r)
        binned_w = np.zeros_like(self.sum_w)
        np.add.at(binned_r, (gw[ok], iy[ok], ix[ok]), residual_db[ok])
        np.add.at(binned_w, (gw[ok], iy[ok], ix[ok]), 1.0)
        sigma = self.bandwidth_m / self.resolution_m
        # gaussian_filter's kernel sums to 1; scaled so a sample weighs 1 in its own cell.
        peak = 2.0 * np.pi * sigma * sigma
        for g in np.unique(gw[ok]):
            self.sum_r[g] += peak * ndimage.gaussian_filter(binned_r[g], sigma, mode="constant")
            self.sum_w[g] += peak * ndimage.gaussian_filter(binned_w[g], sigma, mode="constant")

    def correction(
        self, gw: NDArray[np.intp], xy: F64, *, learned: bool = True
    ) -> tuple[F64, F64, F64]:
        """Bilinear correction and its gradient: gw (...), xy (..., 2) -> dB, dB/m in x and y.

        `learned=False` gives the floor plan's prediction alone (no calibration, no references).
        """
        if learned:
            return _bilinear(self.values, gw, xy, self.origin, self.resolution_m)
        if self.base is None:
            zero = np.zeros(np.shape(gw))
            return zero, zero, zero
        return _bilinear(self.base, gw, xy, self.origin, self.resolution_m)

    def table(self, *, learned: bool = True) -> MapTable | None:
        """The correction as solve_grid reads it (float32 bilinear coefficients), kept until the
        map changes; None where it is zero everywhere (no plan losses and `learned=False`)."""
        if not learned and self.base is None:
            return None
        cached = self._tables.get(learned)
        if cached is None:
            values = self.values if learned or self.base is None else self.base
            cached = MapTable.of(values, self.origin, self.resolution_m)
            self._tables[learned] = cached
        return cached

    def to_dict(self) -> dict[str, Any]:
        """A YAML-friendly form (corrections in 0.1 dB and evidence in 0.1 samples)."""
        return {
            "origin": list(self.origin),
            "resolution_m": self.resolution_m,
            "bandwidth_m": self.bandwidth_m,
            "prior_weight": self.prior_weight,
            "shape": list(self.sum_r.shape[1:]),
            "gateways": {
                gw: {"sum_r": _as_text(self.sum_r[i]), "sum_w": _as_text(self.sum_w[i])}
                for i, gw in enumerate(self.gateways)
            },
        }

    def for_gateways(self, gateways: tuple[str, ...]) -> RadioMap:
        """The same map indexed by another gateway list (a gateway it lacks gets no correction)."""
        index = {gw: i for i, gw in enumerate(self.gateways)}
        shape = (len(gateways), *self.sum_r.shape[1:])
        sum_r, sum_w = np.zeros(shape), np.zeros(shape)
        for i, gw in enumerate(gateways):
            if gw in index:
                sum_r[i] = self.sum_r[index[gw]]
                sum_w[i] = self.sum_w[index[gw]]
        return RadioMap(
            gateways,
            self.origin,
            self.resolution_m,
            self.bandwidth_m,
            self.prior_weight,
            sum_r,
            sum_w,
        )

    @classmethod
    def from_dict(cls, data: dict[str, Any], gateways: tuple[str, ...]) -> RadioMap:
        """Rebuild a map for `gateways` (a gateway missing from the data gets no correction).

        ValueError (pydantic's ValidationError among them) for data that does not validate;
        a calibration file is validated with file, line and path by load_calibration.
        """
        checked = RadioMapFile.model_validate(data)
        problems = [
            f"{'.'.join(map(str, loc))}: {what}" for loc, what in map_file_problems(checked)
        ]
        if problems:
            raise ValueError("; ".join(problems))
        return cls.from_file(checked, gateways)

    @classmethod
    def from_file(cls, data: RadioMapFile, gateways: tuple[str, ...]) -> RadioMap:
        """The map of a validated section (map_file_problems found nothing) for `gateways`."""
        ny, nx = data.shape
        sum_r = np.zeros((len(gateways), ny, nx))
        sum_w = np.zeros((len(gateways), ny, nx))
        for i, gw in enumerate(gateways):
            entry = data.gateways.get(gw)
            if entry is not None:
                sum_r[i] = entry.sum_r.reshape(ny, nx)
                sum_w[i] = entry.sum_w.reshape(ny, nx)
        return cls(
            gateways,
            data.origin,
            data.resolution_m,
            data.bandwidth_m,
            data.prior_weight,
            sum_r,
            sum_w,
        )


FiniteFloat = Annotated[StrictFloat, Field(allow_inf_nan=False)]
GridSize = Annotated[StrictInt, Field(ge=2, le=MAX_FILE_MAP_CELLS)]
"""Rows or columns of a map: two at least, as bilinear interpolation reads a cell and the next."""


def _grid(value: object) -> F64:
    """A grid as _as_text writes it (one string of numbers) or as a list (files written before),
    flat and finite; its length is checked against the shape by map_file_problems."""
    if isinstance(value, str):
        if len(value) > MAX_FILE_GRID_CHARS:
            raise ValueError(
                f"{len(value):,} characters, more than a grid of {MAX_FILE_MAP_CELLS:,} numbers"
            )
        try:
            out = np.array(value.split(), dtype=np.float64)
        except ValueError as e:
            raise ValueError(f"expected numbers separated by spaces ({e})") from None
    elif isinstance(value, list):
        if len(value) > MAX_FILE_MAP_CELLS:
            raise ValueError(f"{len(value):,} numbers, more than {MAX_FILE_MAP_CELLS:,}")
        try:
            out = np.array(value, dtype=np.float64)
        except (ValueError, TypeError, OverflowError):
            out = np.zeros((0, 0))
        if out.ndim != 1:
            raise ValueError("expected a list of numbers")
    else:
        # ValueError: pydantic turns it into a located problem; a TypeError would escape
        raise ValueError(f"expected a string of numbers, got {type(value).__name__}")  # noqa: TRY004
    bad = np.flatnonzero(~np.isfinite(out))
    if bad.size:
        raise ValueError(f"value {bad[0] + 1} is {out[bad[0]]}; expected finite numbers")
    return out


Grid = Annotated[F64, PlainValidator(_grid)]


def _shape(value: tuple[int, int]) -> tuple[int, int]:
    cells = value[0] * value[1]
    if cells > MAX_FILE_MAP_CELLS:
        raise ValueError(f"{cells:,} cells; a map may have {MAX_FILE_MAP_CELLS:,} a gateway")
    return value


class _FileModel(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, arbitrary_types_allowed=True)


class GridsFile(_FileModel):
    """One gateway's evidence, each grid row by row (ny * nx values)."""

    sum_r: Grid
    sum_w: Grid


class RadioMapFile(_FileModel):
    """The `radio_map` section of a calibration file, as RadioMap.to_dict writes it."""

    origin: tuple[
        Annotated[FiniteFloat, Field(ge=-2 * MAX_COORDINATE_M, le=2 * MAX_COORDINATE_M)],
        Annotated[FiniteFloat, Field(ge=-2 * MAX_COORDINATE_M, le=2 * MAX_COORDINATE_M)],
    ]
    """The centre of the first cell, on the site's plane (site coordinates are within
    MAX_COORDINATE_M; twice that leaves room for the map's margin)."""
    resolution_m: Annotated[FiniteFloat, Field(ge=0.01, le=1000.0)]
    """RadioMap.for_site's step: 0.25 m or more (MAP_RESOLUTION_M), 2.7 m for the largest floor
    the site schema admits and 141 m for levels at opposite corners of its coordinates."""
    bandwidth_m: Annotated[FiniteFloat, Field(gt=0)]
    prior_weight: Annotated[FiniteFloat, Field(gt=0)]
    """Must be positive: a cell without evidence divides by it."""
    shape: Annotated[tuple[GridSize, GridSize], AfterValidator(_shape)]
    """(ny, nx)."""
    gateways: dict[StrictStr, GridsFile]


def map_file_problems(data: RadioMapFile) -> Iterator[tuple[Loc, str]]:
    """What a radio map section's schema cannot check: grids of the shape's length, evidence
    that is not negative, corrections within MAX_CORRECTION_DB, a kernel of bounded size."""
    kernel = data.bandwidth_m / data.resolution_m
    if kernel > MAX_FILE_KERNEL_CELLS:
        yield (
            ("bandwidth_m",),
            (
                f"{data.bandwidth_m:g} m is {kernel:g} cells of resolution_m "
                f"{data.resolution_m:g} m; at most {MAX_FILE_KERNEL_CELLS:g}"
            ),
        )
    ny, nx = data.shape
    for gw, entry in data.gateways.items():
        sizes_ok = True
        for name, grid in (("sum_r", entry.sum_r), ("sum_w", entry.sum_w)):
            if grid.size != ny * nx:
                sizes_ok = False
                yield (
                    ("gateways", gw, name),
                    f"{grid.size:,} values; expected {ny * nx:,} (shape {ny} x {nx})",
                )
        if not sizes_ok:
            continue
        if (entry.sum_w < 0).any():
            i = int(np.flatnonzero(entry.sum_w < 0)[0])
            yield (
                ("gateways", gw, "sum_w"),
                f"value {i + 1} is {entry.sum_w[i]:g}; evidence cannot be negative",
            )
            continue
        # Compared as a product: the quotient overflows where the evidence is nearly nil (a
        # prior_weight of 1e-300 under a sum_r of 1.8e8), and a warning is no refusal.
        weight = entry.sum_w + data.prior_weight
        too_big = np.abs(entry.sum_r) > MAX_CORRECTION_DB * weight
        if too_big.any():
            i = int(np.flatnonzero(too_big)[0])
            with np.errstate(over="ignore"):
                correction = abs(entry.sum_r[i]) / weight[i]
            yield (
                ("gateways", gw, "sum_r"),
                (
                    f"value {i + 1} ({entry.sum_r[i]:g}) makes a correction of "
                    f"{correction:g} dB; at most {MAX_CORRECTION_DB:g}"
                ),
            )


def _as_text(values: F64) -> str:
    """A grid's values in 0.1 as one YAML string of numbers: a YAML list of a warehouse's
    1.5 million values took 7.0 s to load (the parser resolves every item's type in Python),
    the string 0.14 s."""
    return " ".join(map(repr, (np.round(values, 1) + 0.0).ravel().tolist()))  # + 0.0: no -0.0


def _bilinear(
    values: F64, gw: NDArray[np.intp], xy: F64, origin: tuple[float, float], resolution_m: float
) -> tuple[F64, F64, F64]:
    """`xy` (..., 2) broadcasts against `gw`: a beacon's point given once, shape (B, 1, 2),
    serves all its gateway slots (B, K) without computing the cell K times."""
    n_gw, ny, nx = values.shape
    fx = np.clip((xy[..., 0] - origin[0]) / resolution_m, 0.0, nx - 1.000001)
    fy = np.clip((xy[..., 1] - origin[1]) / resolution_m, 0.0, ny - 1.000001)
    ix, iy = fx.astype(np.intp), fy.astype(np.intp)
    ax, ay = fx - ix, fy - iy
    # one flat index and four 1-D gathers: a 3-index fancy gather costs several times more
    flat = np.clip(gw, 0, n_gw - 1) * (ny * nx) + (iy * nx + ix)
    table = values.reshape(-1)
    v00 = table[flat]
    v01 = table[flat + 1]
    v10 = table[flat + nx]
    v11 = table[flat + (nx + 1)]
    top = v00 + ax * (v01 - v00)
    bottom = v10 + ax * (v11 - v10)
    value = top + ay * (bottom - top)
    d_dx = ((v01 - v00) * (1 - ay) + (v11 - v10) * ay) / resolution_m
    d_dy = (bottom - top) / resolution_m
    return value, d_dx, d_dy
