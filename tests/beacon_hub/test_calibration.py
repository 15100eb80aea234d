"""`beacon-hub calibrate` from more than one walk: each matched to its own truth (other days
share beacons and clock times), then fitted together."""

from __future__ import annotations

import dataclasses
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from beacon_hub.calibration import (
    Calibration,
    GatewayFit,
    fit_calibration,
    load_calibration,
    save_calibration,
)
from beacon_hub.csvfiles import READINGS, TRUTH, CsvWriter
from beacon_hub.errors import ConfigError
from beacon_hub.site import load_site
from tests.beacon_hub.test_engine import room_site
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


FIT = (
    "{ref_rssi_1m_dbm: -59.0, path_loss_exponent: 2.0, shadowing_db: 6.0, "
    "residual_after_map_db: 5.0, samples: 100}"
)
GOOD = f"site: room\ngateways:\n  g0: {FIT}\n"


def _load_text(tmp_path: Path, text: str | bytes) -> Calibration:
    path = tmp_path / "cal.yaml"
    if isinstance(text, bytes):
        path.write_bytes(text)
    else:
        path.write_text(text)
    return load_calibration(path, room_site())


def test_a_minimal_calibration_loads(tmp_path: Path) -> None:
    cal = _load_text(tmp_path, GOOD)
    assert cal.gateways == {"g0": GatewayFit(-59.0, 2.0, 6.0, 5.0, 100)}
    assert cal.radio_map is None
    assert not cal.plan_losses
    assert cal.path_loss_accuracy_scale == {}


@pytest.mark.parametrize(
    ("text", "line", "place", "says"),
    [
        (GOOD.replace("samples: 100", "samples: .inf"), 3, "gateways.g0.samples",
         "expected an integer, got inf"),
        (GOOD.replace("samples: 100", "samples: 1.5"), 3, "gateways.g0.samples",
         "expected an integer"),
        (GOOD.replace("-59.0", "1" + "0" * 400), 3, "gateways.g0.ref_rssi_1m_dbm",
         "expected a number"),
        (GOOD.replace("-59.0", ".nan"), 3, "gateways.g0.ref_rssi_1m_dbm", "finite number"),
        (GOOD.replace("2.0", "1.0e+300"), 3, "gateways.g0.path_loss_exponent",
         "out of range: must be less than or equal to 20"),
        (GOOD.replace("6.0", "-1.0"), 3, "gateways.g0.shadowing_db", "out of range"),
        (GOOD.replace("samples: 100", "samples: 1" + "0" * 400), 3, "gateways.g0.samples",
         "out of range"),
        (GOOD + "path_loss_accuracy_scale: {tracking: 1" + "0" * 400 + "}\n", 4,
         "path_loss_accuracy_scale.tracking", "expected a number"),
        ("site: room\ngateways:\n  g3: {ref_rssi_1m_dbm: [1]}\n", 3,
         "gateways.g3.ref_rssi_1m_dbm", "expected a number, got [1] (list)"),
        ("site: room\ngateways:\n  g3: {ref_rssi_1m_dbm: [1]}\n", 3, "gateways.g3.samples",
         "required, but missing"),
        ("site: room\ngateways:\n  g3: {ref_rssi: -59.0}\n", 3, "gateways.g3.ref_rssi",
         "unknown key"),
        ("site: room\ngateways:\n  g3: 5\n", 3, "gateways.g3", "expected a mapping of keys"),
        ("site: room\ngateways: [g0]\n", 2, "gateways", "expected a mapping of keys"),
        ("gateways: {}\n", 1, "site", "required, but missing"),
        ("site: store\ngateways: {}\n", 1, "site", "calibrated for 'store', not 'room'"),
        (GOOD + "plan_losses: 1\n", 4, "plan_losses", "expected true or false"),
        (GOOD + "gateways: {}\n", 4, "gateways", "key given twice"),
        ("site: room\ngateways: &a {g0: *a}\n", 2, "gateways.g0",
         "an alias of a list or mapping"),
        ("- a\n", 1, "(top level)", "expected a mapping of keys"),
    ],
)  # fmt: skip
def test_a_bad_calibration_names_file_line_and_place(
    tmp_path: Path, text: str, line: int, place: str, says: str
) -> None:
    with pytest.raises(ConfigError) as info:
        _load_text(tmp_path, text)
    head = f"{tmp_path / 'cal.yaml'}:{line}: {place}: "
    found = [p for p in info.value.problems if p.startswith(head)]
    assert found, info.value.problems
    assert says in found[0], found[0]


@pytest.mark.parametrize(
    ("text", "says"),
    [
        (GOOD.encode() + b"# caf\xe9\n", "not UTF-8 text (invalid continuation byte at byte"),
        (GOOD.replace("-59.0", "1" + "0" * 5000), "not valid YAML: Exceeds the limit"),
        ("site: room\ngateways: {g0: [\n", "not valid YAML"),
        ("site: room\ngateways: {g0: !!float abc}\n", "not valid YAML"),
        ("site: room\n\x19\n", "cal.yaml:2: not valid YAML: character U+0019"),
    ],
)
def test_an_unreadable_calibration_names_the_file(
    tmp_path: Path, text: str | bytes, says: str
) -> None:
    with pytest.raises(ConfigError) as info:
        _load_text(tmp_path, text)
    [problem] = info.value.problems
    assert problem.startswith(str(tmp_path / "cal.yaml"))
    assert says in problem


def test_a_directory_or_missing_file_is_a_config_error(tmp_path: Path) -> None:
    for path in (tmp_path, tmp_path / "missing.yaml"):
        with pytest.raises(ConfigError, match="cannot read"):
            load_calibration(path, room_site())


def test_what_save_calibration_writes_loads_exactly(tmp_path: Path) -> None:
    """Every value as written, to the last bit, and the map's grids unchanged."""
    site = square()
    cal = fit_calibration(site, [noisy_walk(1)], with_map=True)
    cal.path_loss_accuracy_scale["tracking"] = 0.6684
    save_calibration(cal, tmp_path / "cal.yaml")
    back = load_calibration(tmp_path / "cal.yaml", site)
    assert back.gateways == {
        gw: GatewayFit(
            round(f.ref_rssi_1m_dbm, 2),
            round(f.path_loss_exponent, 3),
            round(f.shadowing_db, 2),
            round(f.residual_after_map_db, 2),
            f.samples,
        )
        for gw, f in cal.gateways.items()
    }
    assert back.path_loss_accuracy_scale == {"tracking": 0.668}
    assert cal.radio_map is not None
    assert back.radio_map is not None
    written = cal.radio_map.to_dict()
    assert back.radio_map.to_dict() == written
