"""Accuracy on real data: calibrate, replay and eval on flat-calib2021, every mode, one table.

    python scripts/accuracy_flat_calib2021.py [--dataset DIR] [--work DIR] [--json]

Runs exactly the commands the README lists (as subprocesses of the installed CLI):
convert the dataset, `beacon-hub calibrate` on the calibration walk, `beacon-hub replay` of the
robot route and of the walk in four modes (map or path loss only, tracking on or off) and in
two without the calibration (the site file's radio, as on the day of installation), and
`beacon-hub eval` against the robot's truth and the walk's reference path. Prints a markdown
table; with --json, one JSON object as the last line.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
SITE = ROOT / "config" / "flat-calib2021.yaml"
MODES: dict[str, tuple[bool, list[str]]] = {
    "map + tracking": (True, []),
    "map, one fix per sample": (True, ["--no-tracking"]),
    "path loss + tracking": (True, ["--no-map"]),
    "path loss, one fix per sample": (True, ["--no-map", "--no-tracking"]),
    "no calibration + tracking": (False, []),
    "no calibration, one fix per sample": (False, ["--no-tracking"]),
}
"""Mode -> (calibrated, replay flags)."""


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
    out: dict[str, dict[str, Any]] = {}
    for mode, (calibrated, flags) in MODES.items():
        out[mode] = {}
        calibration = ["--calibration", str(cal)] if calibrated else []
        name = "-".join([f.strip("-") for f in flags] + ([] if calibrated else ["uncalibrated"]))
        for route, reference in (
            ("robot", ["--truth", "robot_truth.csv"]),
            ("walk", ["--path", "walk_path.csv"]),
        ):
            fixes = work / f"{route}-{name or 'default'}.csv"
            _run(
                [
                    *hub,
                    "replay",
                    "--site",
                    str(SITE),
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
