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

from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import NDArray
from scipy import ndimage

__all__ = ["RadioMap"]

F64 = NDArray[np.float64]

MAP_RESOLUTION_M = 0.25
"""Grid step: a sixth of the 1.5 m over which static shadowing decorrelates (flat-calib2021)."""
MAP_BANDWIDTH_M = 0.4
"""Kernel sigma: smooths 1/3-s RSSI noise over the ~1 m shadowing correlation, no further."""
MAP_PRIOR_WEIGHT = 5.0
"""Evidence, in samples, that the path-loss model (correction 0) is worth in every cell."""


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
        """The correction in dB for every gateway and cell."""
        return self.sum_r / (self.sum_w + self.prior_weight)

    def observe(self, gw: NDArray[np.intp], xy: F64, residual_db: F64, keep: float = 1.0) -> None:
        """Add residuals (observed minus path-loss model) seen by gateways `gw` at positions `xy`.

        `keep` < 1 first fades the old evidence: live updates from reference beacons forget.
        """
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

    def correction(self, gw: NDArray[np.intp], xy: F64) -> tuple[F64, F64, F64]:
        """Bilinear correction and its gradient: gw (...), xy (..., 2) -> dB, dB/m in x and y."""
        values = self.values
        ny, nx = values.shape[1:]
        fx = (xy[..., 0] - self.origin[0]) / self.resolution_m
        fy = (xy[..., 1] - self.origin[1]) / self.resolution_m
        fx = np.clip(fx, 0.0, nx - 1.000001)
        fy = np.clip(fy, 0.0, ny - 1.000001)
        ix, iy = fx.astype(np.intp), fy.astype(np.intp)
        ax, ay = fx - ix, fy - iy
        g = np.clip(gw, 0, values.shape[0] - 1)
        v00 = values[g, iy, ix]
        v01 = values[g, iy, ix + 1]
        v10 = values[g, iy + 1, ix]
        v11 = values[g, iy + 1, ix + 1]
        top = v00 + ax * (v01 - v00)
        bottom = v10 + ax * (v11 - v10)
        value = top + ay * (bottom - top)
        d_dx = ((v01 - v00) * (1 - ay) + (v11 - v10) * ay) / self.resolution_m
        d_dy = (bottom - top) / self.resolution_m
        return value, d_dx, d_dy

    def to_dict(self) -> dict[str, Any]:
        """A YAML-friendly form (corrections in 0.1 dB and evidence in 0.1 samples)."""
        return {
            "origin": list(self.origin),
            "resolution_m": self.resolution_m,
            "bandwidth_m": self.bandwidth_m,
            "prior_weight": self.prior_weight,
            "shape": list(self.sum_r.shape[1:]),
            "gateways": {
                gw: {
                    "sum_r": np.round(self.sum_r[i], 1).ravel().tolist(),
                    "sum_w": np.round(self.sum_w[i], 1).ravel().tolist(),
                }
                for i, gw in enumerate(self.gateways)
            },
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any], gateways: tuple[str, ...]) -> RadioMap:
        """Rebuild a map for `gateways` (a gateway missing from the data gets no correction)."""
        ny, nx = (int(v) for v in data["shape"])
        sum_r = np.zeros((len(gateways), ny, nx))
        sum_w = np.zeros((len(gateways), ny, nx))
        for i, gw in enumerate(gateways):
            entry = data["gateways"].get(gw)
            if entry is not None:
                sum_r[i] = np.asarray(entry["sum_r"], dtype=np.float64).reshape(ny, nx)
                sum_w[i] = np.asarray(entry["sum_w"], dtype=np.float64).reshape(ny, nx)
        origin = (float(data["origin"][0]), float(data["origin"][1]))
        return cls(
            gateways,
            origin,
            float(data["resolution_m"]),
            float(data["bandwidth_m"]),
            float(data["prior_weight"]),
            sum_r,
            sum_w,
        )
