"""Log-distance path loss: RSSI <-> distance, and its least-squares fit. The only place this
math lives; the simulator draws its radio from it and the hub's ranging and calibration use it.

    RSSI(d) = ref_rssi_1m_dbm - 10 * exponent * log10(d / 1 m)

Pure numpy functions on arrays (scalars broadcast); no I/O, no randomness. Hub-side module:
the gateway never imports it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from numpy.typing import ArrayLike, NDArray

__all__ = [
    "LN10_OVER_10",
    "MIN_DISTANCE_M",
    "PathLossFit",
    "distance_m",
    "distance_sd_m",
    "fit_path_loss",
    "mean_rssi_dbm",
]

LN10_OVER_10 = math.log(10) / 10
"""Turns a spread in dB into a relative spread of range (d ln d per dB, divided by exponent)."""

MIN_DISTANCE_M = 0.1
"""Below 0.1 m the far-field model means nothing (a 2.4 GHz wavelength is 12.5 cm); distances
are clamped here so that log10 stays finite for a beacon right under a gateway."""

FloatArray = NDArray[np.float64]


def mean_rssi_dbm(
    distance: ArrayLike, ref_rssi_1m_dbm: ArrayLike, exponent: ArrayLike
) -> FloatArray:
    """Expected RSSI (dBm) at `distance` metres."""
    d = np.maximum(np.asarray(distance, dtype=np.float64), MIN_DISTANCE_M)
    return np.asarray(ref_rssi_1m_dbm, dtype=np.float64) - 10.0 * np.asarray(
        exponent, dtype=np.float64
    ) * np.log10(d)


def distance_m(rssi_dbm: ArrayLike, ref_rssi_1m_dbm: ArrayLike, exponent: ArrayLike) -> FloatArray:
    """The distance (m) at which the model expects `rssi_dbm`: the inverse of mean_rssi_dbm."""
    rssi = np.asarray(rssi_dbm, dtype=np.float64)
    ref = np.asarray(ref_rssi_1m_dbm, dtype=np.float64)
    n = np.asarray(exponent, dtype=np.float64)
    return np.asarray(np.maximum(10.0 ** ((ref - rssi) / (10.0 * n)), MIN_DISTANCE_M))


def distance_sd_m(distance: ArrayLike, shadowing_db: ArrayLike, exponent: ArrayLike) -> FloatArray:
    """First-order spread of a range estimate (m) from an RSSI spread of `shadowing_db`."""
    d = np.asarray(distance, dtype=np.float64)
    return np.asarray(
        d * LN10_OVER_10 * np.asarray(shadowing_db) / np.asarray(exponent, dtype=np.float64)
    )


@dataclass(frozen=True, slots=True)
class PathLossFit:
    """A least-squares fit of the model to (distance, RSSI) pairs of one receiver."""

    ref_rssi_1m_dbm: float
    exponent: float
    residual_sd_db: float
    """Standard deviation of RSSI minus the fitted model: the shadowing spread."""
    samples: int


def fit_path_loss(distance: ArrayLike, rssi_dbm: ArrayLike) -> PathLossFit:
    """Fit ref RSSI and exponent by ordinary least squares in dB; NaN RSSI (missed) is skipped."""
    d = np.maximum(np.asarray(distance, dtype=np.float64).ravel(), MIN_DISTANCE_M)
    rssi = np.asarray(rssi_dbm, dtype=np.float64).ravel()
    if d.shape != rssi.shape:
        raise ValueError(f"distance and rssi differ in length: {d.size} vs {rssi.size}")
    keep = np.isfinite(rssi)
    d, rssi = d[keep], rssi[keep]
    x = -10.0 * np.log10(d)
    if rssi.size < 3 or float(np.ptp(x)) <= 0.0:
        raise ValueError("need at least 3 readings at 2 or more distinct distances to fit")
    design = np.column_stack([np.ones_like(x), x])
    coef, *_ = np.linalg.lstsq(design, rssi, rcond=None)
    residual = rssi - design @ coef
    return PathLossFit(
        ref_rssi_1m_dbm=float(coef[0]),
        exponent=float(coef[1]),
        residual_sd_db=float(np.std(residual)),
        samples=int(rssi.size),
    )
