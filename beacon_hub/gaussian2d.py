"""Small 2-D Gaussian arithmetic shared by multilateration and tracking, for stacks of
thousands of 2x2 covariances at once."""

from __future__ import annotations

import math

import numpy as np
from numpy.typing import NDArray

__all__ = ["RADIUS_68_PER_SIGMA", "inv2x2", "radius_68_m"]

F64 = NDArray[np.float64]

RADIUS_68_PER_SIGMA = math.sqrt(-2.0 * math.log(1.0 - 0.68))
"""Radius holding 68 % of a circular 2-D Gaussian, in units of its per-axis sigma (1.51)."""


def inv2x2(m: F64) -> tuple[F64, F64]:
    """Inverse and determinant of stacked 2x2 matrices in closed form: LAPACK's batched inverse
    costs more than the arithmetic for 10,000 of them."""
    a, b, c, d = m[..., 0, 0], m[..., 0, 1], m[..., 1, 0], m[..., 1, 1]
    det = a * d - b * c
    inv = np.empty_like(m)
    inv[..., 0, 0] = d / det
    inv[..., 0, 1] = -b / det
    inv[..., 1, 0] = -c / det
    inv[..., 1, 1] = a / det
    return inv, det


def radius_68_m(cov: F64) -> F64:
    """`accuracy_m` of each (..., 2, 2) covariance: the 68 % radius of a circle with the same
    mean variance per axis (exact for a circular Gaussian, within 7 % for a flat one)."""
    half_trace = 0.5 * (cov[..., 0, 0] + cov[..., 1, 1])
    return np.asarray(RADIUS_68_PER_SIGMA * np.sqrt(np.maximum(half_trace, 0.0)))
