"""Accuracy on real data: calibrate, replay and eval on flat-calib2021, every mode, one table.

    python scripts/accuracy_flat_calib2021.py [--dataset DIR] [--work DIR] [--json]

Runs exactly the commands the README lists (as subprocesses of the installed CLI):
convert the dataset, `beacon-hub calibrate` on the calibration walk, `beacon-hub replay` of the
robot route and of the walk in four modes (map or path loss only, tracking on or off) and in
four without the calibration (the site file's radio, as on the day of installation; with and
without learning the tag's tx power), two more with a generic -59 dBm reference for the tag
instead of the site file's fitted one (a site drawn without any measurement), and
`beacon-hub eval` against the robot's truth and the walk's reference path. Prints a markdown
table; with --json, one JSON object as the last line.
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import yaml

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
