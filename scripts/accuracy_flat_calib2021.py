"""Accuracy on real data: calibrate, replay and eval on flat-calib2021, every mode, one table.

    python scripts/accuracy_flat_calib2021.py [--dataset DIR] [--work DIR] [--json]

Runs exactly the commands the README lists (as subprocesses of the installed CLI):
convert the dataset, `beacon-hub calibrate` on the calibration walk, `beacon-hub replay` of the
robot route and of the walk in four modes (map or path loss only, tracking on or off) and in
four without the calibration (the site file's radio, as on the day of installation; with and
without learning the tag's tx power), two more with a generic -59 dBm reference for the tag
instead of the site file's fitted one (a site drawn without any measurement), and
`beacon-hub eval` against the robot's truth and the walk's reference path. Two rows more are
what Bermuda and ESPresense do for rooms, scored by the same `eval`: the beacon is in the area of
the receiver it is nearest to (`nearest_receiver`), with the site file's radio and with the
calibration's per-receiver fits. Prints a markdown table; with --json, one JSON object as the
last line.
"""

from __future__ import annotations

import argparse
import json
import math
import re
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from beacon_hub.csvfiles import FIXES, CsvWriter, Reading, read_readings
from beacon_hub.evaluation import zones_at
from beacon_hub.site import load_site
from beacon_hub.wire import Fix

ROOT = Path(__file__).resolve().parents[1]
SITE = ROOT / "config" / "flat-calib2021.yaml"
GENERIC_REF_DBM = -59.0
"""A generic iBeacon's measured power at 1 m (its advertised default), against the -47.4 dBm
the site file fitted for the flat's tag: what a site drawn without measurements would say."""
NOT_LEARNT = ["--set", "tx_offset=none"]
MODES: dict[str, tuple[str, bool, list[str]]] = {
    "map + tracking": ("fitted", True, []),
    "map, one fix per sample": ("fitted", True, ["--no-tracking"]),
    "path loss + tracking": ("fitted", True, ["--no-map"]),
    "path loss, one fix per sample": ("fitted", True, ["--no-map", "--no-tracking"]),
    "no calibration + tracking": ("fitted", False, []),
    "no calibration, one fix per sample": ("fitted", False, ["--no-tracking"]),
    "no calibration, tx power not learnt + tracking": ("fitted", False, NOT_LEARNT),
    "no calibration, tx power not learnt, one fix per sample": (
        "fitted",
        False,
        [*NOT_LEARNT, "--no-tracking"],
    ),
    "generic -59 dBm + tracking": ("generic", False, []),
    "generic -59 dBm, tx power not learnt + tracking": ("generic", False, NOT_LEARNT),
}
"""Mode -> (the site file's radio or the generic reference, calibrated, replay flags)."""
NEAREST = {
    "nearest receiver (Bermuda's and ESPresense's rooms)": False,
    "nearest receiver, calibrated distances": True,
}
"""Baseline -> whether it reads distances through the calibration's per-receiver fits."""
NEAREST_WINDOW_S = 3.0
"""The baseline's median window of each receiver's RSSI, the best of 1, 3 and 10 s for its
rooms on the robot route (76, 79 and 76 %, 2026-12-07); Bermuda smooths over about as long."""
NEAREST_TICK_S = 1.0
"""One baseline fix a second, as the engine's ticks."""


def nearest_receiver(
    readings: Path, site_path: Path, out: Path, calibration: Path | None = None
) -> None:
    """Write `out` (a fixes CSV, DESIGN.md) as room presence by the nearest receiver does it: each
    second each beacon is at the receiver whose median RSSI over NEAREST_WINDOW_S says it is
    nearest (by that receiver's path loss: the site file's, or the calibration's fit), in that
    receiver's zone; `accuracy_m` is that distance."""
    site = load_site(site_path)
    gateways = list(site.gateways)
    xy = np.array([(g.x, g.y) for g in gateways])
    zones = zones_at(xy, np.array([g.level for g in gateways], dtype=np.int64), site.zones)
    radio = {g.id: site.gateway_radio(g) for g in gateways}
    path_loss = {g: (r.ref_rssi_1m_dbm, r.path_loss_exponent) for g, r in radio.items()}
    if calibration is not None:
        fits = yaml.safe_load(calibration.read_text())["gateways"]
        path_loss |= {g: (f["ref_rssi_1m_dbm"], f["path_loss_exponent"]) for g, f in fits.items()}
    heard: dict[str, list[Reading]] = {}
    for r in read_readings(readings):
        heard.setdefault(r.beacon, []).append(r)
    with CsvWriter(FIXES, out) as writer:
        for beacon, rows in sorted(heard.items()):
            rows.sort(key=lambda r: r.t)
            t = np.array([r.t for r in rows])
            rssi = np.array([r.rssi for r in rows])
            by = np.array([r.gateway for r in rows])
            for tick in np.arange(t[0] + NEAREST_TICK_S, t[-1] + 1e-9, NEAREST_TICK_S):
                lo, hi = np.searchsorted(t, [tick - NEAREST_WINDOW_S, tick], side="right")
                best_m, at = math.inf, -1
                for k, g in enumerate(gateways):
                    mine = rssi[lo:hi][by[lo:hi] == g.id]
                    if mine.size:
                        ref, n = path_loss[g.id]
                        d = 10.0 ** ((ref - float(np.median(mine))) / (10.0 * n))
                        if d < best_m:
                            best_m, at = d, k
                if at >= 0:
                    g = gateways[at]
                    writer.write(
                        Fix(float(tick), beacon, g.x, g.y, best_m, zones[at], (g.id,), g.level)
                    )


def _run(args: list[str]) -> str:
    result = subprocess.run(args, capture_output=True, text=True, check=False, timeout=600)
    if result.returncode != 0:
        raise SystemExit(f"{' '.join(args)} failed:\n{result.stderr}")
    return result.stdout


def measure(dataset: Path | None, work: Path) -> dict[str, dict[str, Any]]:
    """The eval summaries per mode and route: {mode: {"robot": {...}, "walk": {...}}}."""
    hub = [sys.executable, "-m", "beacon_hub.cli"]
    convert = [
        sys.executable,
        str(ROOT / "scripts" / "convert_flat_calib2021.py"),
        "--out",
        str(work),
    ]
    if dataset is not None:
        convert += ["--dataset", str(dataset)]
    _run(convert)
    cal = work / "calibration.yaml"
    _run(
        [
            *hub,
            "calibrate",
            "--site",
            str(SITE),
            "--readings",
            str(work / "calibration_readings.csv"),
            "--truth",
            str(work / "calibration_truth.csv"),
            "--out",
            str(cal),
        ]
    )
    sites = {"fitted": SITE, "generic": work / "flat-generic-reference.yaml"}
    generic = yaml.safe_load(SITE.read_text())
    generic["radio"] = {**generic["radio"], "ref_rssi_1m_dbm": GENERIC_REF_DBM}
    sites["generic"].write_text(yaml.safe_dump(generic, sort_keys=False))
    out: dict[str, dict[str, Any]] = {}
    for mode, (radio, calibrated, flags) in MODES.items():
        out[mode] = {}
        calibration = ["--calibration", str(cal)] if calibrated else []
        name = re.sub(r"[^a-z0-9]+", "-", mode.lower()).strip("-")
        site = sites[radio]
        for route, reference in (
            ("robot", ["--truth", "robot_truth.csv"]),
            ("walk", ["--path", "walk_path.csv"]),
        ):
            fixes = work / f"{route}-{name}.csv"
            _run(
                [
                    *hub,
                    "replay",
                    "--site",
                    str(site),
                    "--readings",
                    str(work / f"{route}_readings.csv"),
                    *calibration,
                    "--out",
                    str(fixes),
                    *flags,
                ]
            )
            ref = [reference[0], str(work / reference[1])]
            out[mode][route] = json.loads(
                _run([*hub, "eval", "--fixes", str(fixes), *ref, "--site", str(site)])
            )
    for mode, calibrated in NEAREST.items():
        out[mode] = {}
        name = re.sub(r"[^a-z0-9]+", "-", mode.lower()).strip("-")
        for route, ref in (
            ("robot", ["--truth", str(work / "robot_truth.csv")]),
            ("walk", ["--path", str(work / "walk_path.csv")]),
        ):
            fixes = work / f"{route}-{name}.csv"
            readings = work / f"{route}_readings.csv"
            nearest_receiver(readings, SITE, fixes, cal if calibrated else None)
            out[mode][route] = json.loads(
                _run([*hub, "eval", "--fixes", str(fixes), *ref, "--site", str(SITE)])
            )
    return out


def table(results: dict[str, dict[str, Any]]) -> str:
    rows = [
        (
            "| mode | robot median / p90 (m) | robot within accuracy_m | robot zone accuracy "
            "| walk median / p90 (m, to path) |"
        ),
        "| --- | --- | --- | --- | --- |",
    ]
    for mode, r in results.items():
        robot, walk = r["robot"], r["walk"]
        rows.append(
            f"| {mode} | {robot['median_m']:.2f} / {robot['p90_m']:.2f} | "
            f"{robot['within_accuracy']:.0%} | {robot['zone_accuracy']:.0%} | "
            f"{walk['median_m']:.2f} / {walk['p90_m']:.2f} |"
        )
    return "\n".join(rows)


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--dataset", type=Path, help="the flat-calib2021 folder")
    parser.add_argument("--work", type=Path, help="keep the intermediate files here")
    parser.add_argument("--json", action="store_true", help="also print one JSON line")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        work = args.work or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        results = measure(args.dataset, work)
    print(table(results))
    if args.json:
        summary = {
            mode: {
                route: {k: r[route][k] for k in ("median_m", "p90_m", "p95_m", "within_accuracy")}
                for route in ("robot", "walk")
            }
            for mode, r in results.items()
        }
        print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
