"""`beacon-hub calibrate` from more than one walk: each matched to its own truth (other days
share beacons and clock times), then fitted together."""

from __future__ import annotations

import dataclasses
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from beacon_hub.calibration import fit_calibration, load_calibration
from beacon_hub.csvfiles import READINGS, TRUTH, CsvWriter
from beacon_hub.site import load_site
from tests.beacon_hub.test_replay import SQUARE, noisy_walk, square

DAY_S = 86_400.0


def test_two_walks_fit_as_one_walk_twice_as_long() -> None:
    """Two days' walks at the same clock times: fitted as the second day shifted by a day
    would be, and with twice the samples of either."""
    site = square()
    day1, day2 = noisy_walk(1), noisy_walk(2)
    one = fit_calibration(site, [day1], with_map=False)
    both = fit_calibration(site, [day1, day2], with_map=True)
    shifted = (
        day1[0] + [dataclasses.replace(r, t=r.t + DAY_S) for r in day2[0]],
        day1[1] + [dataclasses.replace(p, t=p.t + DAY_S) for p in day2[1]],
    )
    joined = fit_calibration(site, [shifted], with_map=True)
    for gw, fit in both.gateways.items():
        assert fit.samples == 2 * one.gateways[gw].samples
        assert fit.ref_rssi_1m_dbm == pytest.approx(joined.gateways[gw].ref_rssi_1m_dbm, abs=1e-9)
        assert fit.path_loss_exponent == pytest.approx(
            joined.gateways[gw].path_loss_exponent, abs=1e-9
        )
    assert both.radio_map is not None
    assert joined.radio_map is not None
    assert (both.radio_map.sum_w == joined.radio_map.sum_w).all()


def _write_walk(tmp_path: Path, name: str, seed: int) -> tuple[Path, Path]:
    rows, truth = noisy_walk(seed)
    with CsvWriter(READINGS, tmp_path / f"{name}_r.csv") as out:
        out.write_all(rows)
    with CsvWriter(TRUTH, tmp_path / f"{name}_t.csv") as out:
        out.write_all(truth)
    return tmp_path / f"{name}_r.csv", tmp_path / f"{name}_t.csv"


def _calibrate(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "beacon_hub.cli", "calibrate", *args],
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )


def test_calibrate_takes_a_truth_per_walk(tmp_path: Path) -> None:
    site_path = tmp_path / "square.yaml"
    site_path.write_text(yaml.safe_dump(SQUARE))
    r1, t1 = _write_walk(tmp_path, "day1", 1)
    r2, t2 = _write_walk(tmp_path, "day2", 2)
    out = tmp_path / "cal.yaml"
    ok = _calibrate(
        "--site", str(site_path), "--readings", str(r1), "--truth", str(t1),
        "--readings", str(r2), "--truth", str(t2), "--out", str(out),
    )  # fmt: skip
    assert ok.returncode == 0, ok.stderr
    cal = load_calibration(out, load_site(site_path))
    assert {fit.samples for fit in cal.gateways.values()} == {2 * 720}
    assert set(cal.path_loss_accuracy_scale) == {"tracking", "no_tracking"}

    short = _calibrate(
        "--site", str(site_path), "--readings", str(r1), "--truth", str(t1),
        "--readings", str(r2), "--out", str(out),
    )  # fmt: skip
    assert short.returncode == 1
    assert "2 --readings but 1 --truth" in short.stderr
