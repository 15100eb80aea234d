"""The flat-calib2021 converter: every non-empty RSSI cell becomes one reading, truth lands in the
site's rooms, and the files read back with beacon-hub's own readers.

The dataset lives beside the repository (../shared/datasets/flat-calib2021, or the folder named by
BEACON_HUB_DATASETS). Without it these tests fail: a green run must mean they ran.
"""

from __future__ import annotations

import csv
import math
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

from beacon_hub.csvfiles import FIXES, CsvWriter, read_readings, read_truth
from beacon_hub.evaluation import read_path, run_eval
from beacon_hub.geometry import distance_to_polygon_edge_m, point_in_polygon
from beacon_hub.site import Site, load_site
from beacon_hub.wire import Fix
from tests.scripts.loading import load_script

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "scripts" / "convert_flat_calib2021.py"
SITE = ROOT / "config" / "flat-calib2021.yaml"


conv = load_script("convert_flat_calib2021")
DATASET: Path = conv.default_dataset()


@pytest.fixture(scope="module")
def dataset() -> Path:
    if not (DATASET / "calibration_df.csv").is_file():
        pytest.fail(
            f"flat-calib2021 dataset not found at {DATASET}: it is expected beside the repository "
            "at ../shared/datasets/flat-calib2021, or set BEACON_HUB_DATASETS to the folder "
            "holding it"
        )
    return DATASET


@pytest.fixture(scope="module")
def out(dataset: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The converter run as a user runs it, into a fresh folder."""
    target = tmp_path_factory.mktemp("flat")
    result = subprocess.run(
        [sys.executable, str(SCRIPT), "--dataset", str(dataset), "--out", str(target)],
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 6  # one summary line per file
    return target


@pytest.fixture(scope="module")
def site() -> Site:
    return load_site(SITE)


def source_rows(path: Path) -> list[dict[str, str]]:
    with path.open(newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


def non_empty_cells(rows: list[dict[str, str]]) -> Counter[str]:
    """Independent count of heard samples per anchor column."""
    return Counter(f"a{k}" for row in rows for k in range(1, 7) if row[f"rssi_{k}"].strip() != "")


@pytest.mark.parametrize(
    ("name", "source"),
    [
        ("calibration", "calibration_df.csv"),
        ("robot", "test_robot_df.csv"),
        ("walk", "test_walk_df.csv"),
    ],
)
def test_one_reading_per_non_empty_rssi_cell(
    out: Path, dataset: Path, name: str, source: str
) -> None:
    rows = source_rows(dataset / source)
    readings = list(read_readings(out / f"{name}_readings.csv"))
    assert Counter(r.gateway for r in readings) == non_empty_cells(rows)
    assert {r.beacon for r in readings} == {conv.TAG_ID}
    first = rows[0]
    assert readings[0].t == pytest.approx(float(first["ts"]) / 1e9, abs=1e-3)
    heard = next(k for k in range(1, 7) if first[f"rssi_{k}"])
    assert readings[0].gateway == f"a{heard}"
    assert readings[0].rssi == pytest.approx(float(first[f"rssi_{heard}"]), abs=0.005)


@pytest.mark.parametrize(
    ("name", "source"), [("calibration", "calibration_df.csv"), ("robot", "test_robot_df.csv")]
)
def test_truth_follows_the_robot_and_lands_in_rooms(
    out: Path, dataset: Path, site: Site, name: str, source: str
) -> None:
    rows = source_rows(dataset / source)
    truth = list(read_truth(out / f"{name}_truth.csv"))
    assert len(truth) == len(rows)
    outline = site.level(0).outline
    zones = {z.id: z.polygon for z in site.zones}
    for row, p in zip(rows, truth, strict=True):
        assert (p.x, p.y) == pytest.approx((float(row["x"]), float(row["y"])), abs=1e-3)
        assert (p.z, p.level, p.beacon) == (1.3, 0, conv.TAG_ID)
        if point_in_polygon((p.x, p.y), outline):
            assert p.zone is not None, f"no zone for ({p.x}, {p.y}) inside the flat"
        if p.zone is not None:
            polygon = zones[p.zone]
            assert point_in_polygon((p.x, p.y), polygon) or (
                distance_to_polygon_edge_m((p.x, p.y), polygon) <= conv.ZONE_SNAP_M
            )
    # The routes visit every room.
    assert {p.zone for p in truth if p.zone} == set(zones)


def test_walk_path_is_the_reference_polyline(out: Path, dataset: Path) -> None:
    rows = source_rows(dataset / "path_reference.csv")
    expected = [float(v) for row in rows for v in row.values()]
    assert read_path(out / "walk_path.csv").ravel().tolist() == pytest.approx(expected)


def test_the_site_matches_the_dataset(site: Site, dataset: Path) -> None:
    anchors = {f"a{row['id']}": row for row in source_rows(dataset / "anchors.csv")}
    assert {g.id for g in site.gateways} == set(anchors)
    for g in site.gateways:
        a = anchors[g.id]
        assert (g.x, g.y, g.z) == (float(a["x"]), float(a["y"]), float(a["z"]))
    kind = site.kind_of(conv.TAG_ID)
    assert kind is not None
    assert (kind.kind, kind.height_m) == ("asset", 1.3)
    layout = [(float(r["x"]), float(r["y"])) for r in source_rows(dataset / "layout.csv")]
    assert site.level(0).outline == layout[:-1]  # the closing repeat of the first corner dropped
    assert math.isclose(site.floor_area_m2(), 50.8, abs_tol=0.1)


def test_perfect_fixes_score_zero_against_the_converted_truth(out: Path) -> None:
    """The converted files drive `eval` end to end: fixes at the truth score perfectly."""
    truth = list(read_truth(out / "robot_truth.csv"))
    fixes_file = out / "perfect_fixes.csv"
    with CsvWriter(FIXES, fixes_file) as w:
        w.write_all(
            Fix(t=p.t, beacon=p.beacon, x=p.x, y=p.y, accuracy_m=0.5, zone=p.zone) for p in truth
        )
    summary = run_eval([fixes_file], truth_path=out / "robot_truth.csv", site_path=SITE)
    assert summary["scored"] == len(truth)
    assert summary["max_m"] == pytest.approx(0.0, abs=1e-3)
    assert summary["zone_accuracy"] == 1.0
    assert summary["coverage"] == 1.0
