"""How much of the flat's residuals a tag antenna pattern could explain.

    python scripts/robot_heading_residuals.py [--dataset DIR]

Converts flat-calib2021 and calibrates it as scripts/accuracy_flat_calib2021.py does, then takes
every reading of the robot route while the robot moves (faster than MOVING_M_S), its residual
against the calibration (path loss and radio map) at the robot's true position, and fits it by
least squares with one offset per anchor plus the first and second harmonics of the anchor's
bearing from the robot's heading: the pattern `beacon-sim run --heading-db` draws. Prints the
harmonics' amplitudes, the share of the residuals' variance they explain, and the fit of each
half of the route on its own (a pattern of the tag holds in both).
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
from numpy.typing import NDArray

from beacon_hub.calibration import load_calibration
from beacon_hub.csvfiles import read_readings, read_truth
from beacon_hub.engine import Engine, EngineConfig
from beacon_hub.pathloss import mean_rssi_dbm
from beacon_hub.site import load_site

ROOT = Path(__file__).resolve().parents[1]
SITE = ROOT / "config" / "flat-calib2021.yaml"
MOVING_M_S = 0.15
"""Slower than this (m/s, over +-1 s of the truth) the robot's heading is not known."""
HEADING_SPAN_S = 1.0
"""The heading is the truth's displacement from t - this to t + this (s)."""

F64 = NDArray[np.float64]


def _fit(design: F64, residual: F64) -> tuple[F64, float]:
    solution = np.linalg.lstsq(design, residual, rcond=None)
    coef = np.asarray(solution[0], dtype=np.float64)
    left = residual - design @ coef
    return coef, float(left.var())


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", type=Path, help="the flat-calib2021 folder")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        convert = [sys.executable, str(ROOT / "scripts" / "convert_flat_calib2021.py")]
        if args.dataset is not None:
            convert += ["--dataset", str(args.dataset)]
        subprocess.run(
            [*convert, "--out", str(work)],
            check=True,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        cal_path = work / "calibration.yaml"
        subprocess.run(
            [
                *(sys.executable, "-m", "beacon_hub.cli", "calibrate", "--site", str(SITE)),
                *("--readings", str(work / "calibration_readings.csv")),
                *("--truth", str(work / "calibration_truth.csv"), "--out", str(cal_path)),
            ],
            check=True,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        site = load_site(SITE)
        engine = Engine(site, EngineConfig(), load_calibration(cal_path, site))
        truth = sorted(read_truth(work / "robot_truth.csv"), key=lambda p: p.t)
        readings = list(read_readings(work / "robot_readings.csv"))
    tt = np.array([p.t for p in truth])
    tx, ty = np.array([p.x for p in truth]), np.array([p.y for p in truth])
    where = {g.id: (g.x, g.y, g.z) for g in site.gateways}
    height_m = 1.3  # the tag's on the robot, as the site file says
    rows: list[tuple[int, float, float]] = []
    for r in readings:
        x, y = float(np.interp(r.t, tt, tx)), float(np.interp(r.t, tt, ty))
        vx = (np.interp(r.t + HEADING_SPAN_S, tt, tx) - np.interp(r.t - HEADING_SPAN_S, tt, tx)) / 2
        vy = (np.interp(r.t + HEADING_SPAN_S, tt, ty) - np.interp(r.t - HEADING_SPAN_S, tt, ty)) / 2
        if np.hypot(vx, vy) <= MOVING_M_S or r.gateway not in where:
            continue
        g = engine.gateway_ids.index(r.gateway)
        gx, gy, gz = where[r.gateway]
        d = float(np.sqrt((x - gx) ** 2 + (y - gy) ** 2 + (height_m - gz) ** 2))
        predicted = float(mean_rssi_dbm(d, engine.gw_ref[g], engine.gw_exp[g]))
        if engine.radio_map is not None:
            predicted += float(engine.radio_map.correction(np.array([g]), np.array([[x, y]]))[0][0])
        relative = float(np.arctan2(gy - y, gx - x) - np.arctan2(vy, vx))
        rows.append((g, relative, r.rssi - predicted))
    gw = np.array([row[0] for row in rows])
    angle = np.array([row[1] for row in rows])
    residual = np.array([row[2] for row in rows])
    offsets = np.eye(len(engine.gateway_ids))[gw]
    harmonics = np.column_stack(
        [np.cos(angle), np.sin(angle), np.cos(2 * angle), np.sin(2 * angle)]
    )
    design = np.hstack([offsets, harmonics])
    _, var_offsets = _fit(offsets, residual)
    coef, var_both = _fit(design, residual)
    k = offsets.shape[1]
    print(f"robot readings while moving: {len(rows)}")
    print(
        f"first harmonic {np.hypot(coef[k], coef[k + 1]):.2f} dB, "
        f"second {np.hypot(coef[k + 2], coef[k + 3]):.2f} dB; "
        f"they explain {100 * (1 - var_both / var_offsets):.1f} % of the residuals' variance "
        f"(sd {np.sqrt(var_offsets):.2f} dB)"
    )
    half = len(rows) // 2
    for name, part in (("first half", slice(0, half)), ("second half", slice(half, None))):
        c, _ = _fit(design[part], residual[part])
        print(f"{name}: cos, sin of the first and second harmonic {np.round(c[k:], 2).tolist()} dB")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
