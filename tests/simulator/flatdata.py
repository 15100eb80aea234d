"""The real dataset ../shared/datasets/flat-calib2021 and the statistics the radio is fitted to.

Shared by the real-data test and the docs; numbers are described in simulator/radio.py.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from numpy.typing import NDArray
from scipy.spatial import cKDTree

from beacon_hub.pathloss import fit_path_loss, mean_rssi_dbm
from tests.scripts.loading import load_script

__all__ = ["DATASET", "TAG_HEIGHT_M", "Flat", "RadioStats", "load_flat", "radio_stats"]

# Found the converter's way: $BEACON_HUB_DATASETS, else ../shared/datasets beside the repo.
DATASET: Path = load_script("convert_flat_calib2021").default_dataset()
TAG_HEIGHT_M = 1.3
"""The tag rode on the robot at about 1.3 m (dataset README)."""
REVISIT_WITHIN_M = 0.25
"""Two rows count as the same spot when the robot was within 0.25 m of itself."""
REVISIT_AFTER_S = 60.0
"""... and more than a minute apart, so the slow (people, doors) part has decorrelated."""
DISTANCE_BINS_M = ((0.5, 1.0), (1.0, 2.0), (2.0, 3.0))

FloatArray = NDArray[np.float64]


@dataclass(frozen=True)
class Flat:
    t_s: FloatArray  # (n,) Unix seconds
    xy: FloatArray  # (n, 2)
    rssi: FloatArray  # (n, 6) NaN where the anchor missed the bin
    anchors: FloatArray  # (6, 3)
    outline: list[tuple[float, float]]


@dataclass(frozen=True)
class RadioStats:
    ref_rssi_1m_dbm: FloatArray  # per anchor
    exponent: FloatArray
    residual_sd_db: FloatArray
    pooled_sd_db: float
    revisit_corr: float
    """Mean over anchors of the residual correlation of revisits (< 0.25 m, > 60 s apart)."""
    corr_by_distance: dict[tuple[float, float], float]
    missing: FloatArray  # fraction of empty bins per anchor


def load_flat(name: str = "calibration_df.csv") -> Flat:
    with (DATASET / name).open(newline="") as f:
        rows = list(csv.DictReader(f))
    with (DATASET / "anchors.csv").open(newline="") as f:
        anchors = np.array(
            [[float(r["x"]), float(r["y"]), float(r["z"])] for r in csv.DictReader(f)]
        )
    with (DATASET / "layout.csv").open(newline="") as f:
        outline = [(float(r["x"]), float(r["y"])) for r in csv.DictReader(f)]
    rssi = np.array(
        [[float(r[f"rssi_{k}"]) if r[f"rssi_{k}"] else np.nan for k in range(1, 7)] for r in rows]
    )
    return Flat(
        t_s=np.array([float(r["ts"]) for r in rows]) / 1e9,
        xy=np.array([[float(r["x"]), float(r["y"])] for r in rows]),
        rssi=rssi,
        anchors=anchors,
        outline=outline[:-1] if outline[0] == outline[-1] else outline,
    )


def radio_stats(
    t_s: FloatArray, xy: FloatArray, rssi: FloatArray, anchors: FloatArray
) -> RadioStats:
    """Fit each anchor, then measure how the residual splits into static and varying parts."""
    n_anchors = anchors.shape[0]
    residual = np.full_like(rssi, np.nan)
    fits = []
    for k in range(n_anchors):
        d = np.sqrt(
            np.sum((xy - anchors[k, :2]) ** 2, axis=1) + (TAG_HEIGHT_M - anchors[k, 2]) ** 2
        )
        fit = fit_path_loss(d, rssi[:, k])
        fits.append(fit)
        residual[:, k] = rssi[:, k] - mean_rssi_dbm(d, fit.ref_rssi_1m_dbm, fit.exponent)
    tree = cKDTree(xy)
    pairs = tree.query_pairs(max(hi for _, hi in DISTANCE_BINS_M), output_type="ndarray")
    dist = np.linalg.norm(xy[pairs[:, 0]] - xy[pairs[:, 1]], axis=1)
    apart = np.abs(t_s[pairs[:, 0]] - t_s[pairs[:, 1]]) > REVISIT_AFTER_S

    def corr(lo: float, hi: float) -> float:
        sel = pairs[(dist >= lo) & (dist < hi) & apart]
        values = []
        for k in range(n_anchors):
            a, b = residual[sel[:, 0], k], residual[sel[:, 1], k]
            ok = ~np.isnan(a) & ~np.isnan(b)
            values.append(np.corrcoef(a[ok], b[ok])[0, 1])
        return float(np.mean(values))

    return RadioStats(
        ref_rssi_1m_dbm=np.array([f.ref_rssi_1m_dbm for f in fits]),
        exponent=np.array([f.exponent for f in fits]),
        residual_sd_db=np.array([f.residual_sd_db for f in fits]),
        pooled_sd_db=float(np.sqrt(np.nanmean(residual**2))),
        revisit_corr=corr(0.0, REVISIT_WITHIN_M),
        corr_by_distance={b: corr(*b) for b in DISTANCE_BINS_M},
        missing=np.mean(np.isnan(rssi), axis=0),
    )
