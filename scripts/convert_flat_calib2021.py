"""Convert the flat-calib2021 dataset into beacon-hub's CSV files (DESIGN.md, Files).

    python scripts/convert_flat_calib2021.py [--dataset DIR] [--out DIR]

The dataset (../shared/datasets/flat-calib2021 beside the repository, README.md there) has one
row per 1/3 s with the tag's RSSI at the 6 anchors (`rssi_1..rssi_6`, empty when missed), the
time `ts` in Unix nanoseconds and, for the calibration and robot routes, the robot's x, y. It
becomes, in --out (default: the current folder):

    calibration_readings.csv, calibration_truth.csv   from calibration_df.csv
    robot_readings.csv, robot_truth.csv               from test_robot_df.csv
    walk_readings.csv, walk_path.csv                  from test_walk_df.csv, path_reference.csv

Readings: one row per non-empty RSSI cell, `t = ts / 1e9`, gateway `a{k}` (the site's ids),
beacon `TAG_ID`. Truth: `z = TAG_HEIGHT_M`, level 0, and the zone of config/flat-calib2021.yaml
that holds the point (or, for a point just outside every zone, the nearest zone within
`ZONE_SNAP_M`; else empty). The walk path is path_reference.csv's segments unchanged
(`x0,y0,x1,y1`, see beacon_hub/evaluation.py). The dataset folder may also be given by the
environment variable BEACON_HUB_DATASETS (the folder holding flat-calib2021).
"""

from __future__ import annotations

import argparse
import csv
import math
import os
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as `python scripts/convert_flat_calib2021.py` from a checkout
    sys.path.insert(0, str(ROOT))

from beacon_hub.csvfiles import READINGS, TRUTH, CsvWriter, Reading, TruthPoint  # noqa: E402
from beacon_hub.errors import BeaconHubError  # noqa: E402
from beacon_hub.evaluation import read_path, write_path, zone_edge_distance_m, zones_at  # noqa: E402
from beacon_hub.site import Site, load_site  # noqa: E402

__all__ = [
    "ANCHORS",
    "DATASET_NAME",
    "NS_PER_S",
    "SITE_FILE",
    "TAG_HEIGHT_M",
    "TAG_ID",
    "ZONE_SNAP_M",
    "Recording",
    "convert",
    "default_dataset",
    "main",
    "read_recording",
]

DATASET_NAME = "flat-calib2021"
SITE_FILE = ROOT / "config" / "flat-calib2021.yaml"
ANCHORS = tuple(range(1, 7))
"""Anchor k of the dataset (column rssi_k, anchors.csv id k) is gateway `a{k}` of the site."""
TAG_ID = "ibeacon:f1a7ca1b-2021-4000-8000-000005457591:1:1"
"""Our id for the dataset's one tag (it has none); matched by the site's `asset` kind."""
TAG_HEIGHT_M = 1.3
"""The tag rode the robot at about 1.3 m (dataset README)."""
NS_PER_S = 1e9
ZONE_SNAP_M = 0.3
"""A truth point this close outside every zone takes the nearest one: the robot cannot stand in
a wall, so such a point is LiDAR-SLAM error; 0.3 m is the site files' tolerance for plans."""


def default_dataset() -> Path:
    """$BEACON_HUB_DATASETS/flat-calib2021, else ../shared/datasets/flat-calib2021 by the repo."""
    folder = os.environ.get("BEACON_HUB_DATASETS")
    if folder:
        return Path(folder) / DATASET_NAME
    return Path(__file__).resolve().parents[2] / "shared" / "datasets" / DATASET_NAME


@dataclass(frozen=True)
class Recording:
    """One dataset file: times (s), robot positions (NaN when absent), RSSI (NaN when missed)."""

    t: np.ndarray
    xy: np.ndarray | None
    rssi: np.ndarray
    """(rows, 6): dBm heard by anchors 1..6."""


def read_recording(path: Path) -> Recording:
    """Read a dataset CSV (`,ts[,x,heading,y],rssi_1..rssi_6`)."""
    try:
        with path.open(newline="", encoding="utf-8") as handle:
            rows = list(csv.DictReader(handle))
    except OSError as e:
        raise BeaconHubError(f"{path}: cannot read: {e.strerror or e}") from e
    columns = ["ts", *(f"rssi_{k}" for k in ANCHORS)]
    if not rows or any(c not in rows[0] for c in columns):
        raise BeaconHubError(f"{path}: expected columns {','.join(columns)}")
    has_xy = "x" in rows[0] and "y" in rows[0]
    try:
        t = np.asarray([float(r["ts"]) for r in rows]) / NS_PER_S
        rssi = np.asarray(
            [[float(r[f"rssi_{k}"]) if r[f"rssi_{k}"] else np.nan for k in ANCHORS] for r in rows]
        )
        xy = np.asarray([[float(r["x"]), float(r["y"])] for r in rows]) if has_xy else None
    except ValueError as e:
        raise BeaconHubError(f"{path}: not a number: {e}") from e
    return Recording(t=t, xy=xy, rssi=rssi)


def _readings(rec: Recording) -> Iterator[Reading]:
    for t, row in zip(rec.t.tolist(), rec.rssi.tolist(), strict=True):
        for k, rssi in zip(ANCHORS, row, strict=True):
            if not math.isnan(rssi):  # NaN: the anchor missed the tag
                yield Reading(t=t, gateway=f"a{k}", beacon=TAG_ID, rssi=rssi)


def truth_zones(site: Site, xy: np.ndarray) -> tuple[list[str | None], int]:
    """Zone of each point, snapping points just outside every zone to the nearest one.

    Returns the zones and how many points were snapped.
    """
    levels = np.zeros(len(xy), dtype=np.int64)
    zones = zones_at(xy, levels, site.zones)
    snapped = 0
    for i in [i for i, z in enumerate(zones) if z is None]:
        point = xy[i : i + 1]
        dist = [float(zone_edge_distance_m(point, levels[:1], [zone])[0]) for zone in site.zones]
        best = int(np.argmin(dist))
        if dist[best] <= ZONE_SNAP_M:
            zones[i] = site.zones[best].id
            snapped += 1
    return zones, snapped


def _truth(rec: Recording, xy: np.ndarray, zones: Sequence[str | None]) -> Iterator[TruthPoint]:
    for t, (x, y), zone in zip(rec.t.tolist(), xy.tolist(), zones, strict=True):
        yield TruthPoint(t=t, beacon=TAG_ID, x=x, y=y, z=TAG_HEIGHT_M, level=0, zone=zone)


def convert(dataset: Path, out: Path, site: Site) -> list[tuple[str, int, str]]:
    """Write the six files into `out`; returns (file name, rows, note) per file."""
    if not (dataset / "calibration_df.csv").is_file():
        raise BeaconHubError(
            f"{dataset}: not the flat-calib2021 dataset (no calibration_df.csv); give --dataset "
            "or set BEACON_HUB_DATASETS to the folder holding flat-calib2021"
        )
    out.mkdir(parents=True, exist_ok=True)
    written: list[tuple[str, int, str]] = []
    for name, source in (
        ("calibration", "calibration_df.csv"),
        ("robot", "test_robot_df.csv"),
        ("walk", "test_walk_df.csv"),
    ):
        rec = read_recording(dataset / source)
        with CsvWriter(READINGS, out / f"{name}_readings.csv", optional=()) as w:
            rows = w.write_all(_readings(rec))
        missed = int(np.count_nonzero(np.isnan(rec.rssi)))
        written.append((f"{name}_readings.csv", rows, f"from {source}, {missed} empty cells"))
        if rec.xy is not None:
            zones, snapped = truth_zones(site, rec.xy)
            with CsvWriter(TRUTH, out / f"{name}_truth.csv") as w:
                rows = w.write_all(_truth(rec, rec.xy, zones))
            outside = sum(z is None for z in zones)
            note = f"{snapped} snapped to a zone within {ZONE_SNAP_M} m, {outside} in no zone"
            written.append((f"{name}_truth.csv", rows, note))
    segments = read_path(dataset / "path_reference.csv")
    rows = write_path(out / "walk_path.csv", segments.tolist())
    written.append(("walk_path.csv", rows, "segments of path_reference.csv"))
    return written


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", type=Path, default=None, metavar="DIR")
    parser.add_argument("--out", type=Path, default=Path(), metavar="DIR")
    args = parser.parse_args(argv)
    dataset: Path = args.dataset or default_dataset()
    try:
        site = load_site(SITE_FILE)
        written = convert(dataset, args.out, site)
    except BeaconHubError as e:
        print(f"convert_flat_calib2021: {e}", file=sys.stderr)
        return 1
    for name, rows, note in written:
        print(f"{args.out / name}: {rows} rows ({note})", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
