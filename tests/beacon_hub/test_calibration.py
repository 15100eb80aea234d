"""`beacon-hub calibrate` from more than one walk: each matched to its own truth (other days
share beacons and clock times), then fitted together; walks that cannot be matched refused with
their cause, readings and fits of gateways the site does not have warned about."""

from __future__ import annotations

import dataclasses
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
import yaml

from beacon_hub import cli
from beacon_hub.calibration import (
    Calibration,
    GatewayFit,
    fit_calibration,
    load_calibration,
    save_calibration,
)
from beacon_hub.csvfiles import READINGS, TRUTH, CsvWriter, Reading, TruthPoint
from beacon_hub.errors import BeaconHubError, ConfigError
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


def test_the_map_kernel_is_chosen_and_kept_in_the_file(tmp_path: Path) -> None:
    """--map-bandwidth-m widens the map's kernel (a one-tag survey's, radiomap.py): the file
    keeps it, so the engine spreads live evidence by it too; a narrow one is the default."""
    site_path = tmp_path / "square.yaml"
    site_path.write_text(yaml.safe_dump(SQUARE))
    r1, t1 = _write_walk(tmp_path, "day1", 1)
    walk = ["--site", str(site_path), "--readings", str(r1), "--truth", str(t1)]
    widths = {}
    for bw in ("0.4", "0.8"):
        out = tmp_path / f"cal{bw}.yaml"
        extra = [] if bw == "0.4" else ["--map-bandwidth-m", bw]
        assert _calibrate(*walk, "--out", str(out), *extra).returncode == 0
        radio_map = load_calibration(out, load_site(site_path)).radio_map
        assert radio_map is not None
        widths[bw] = radio_map
        assert radio_map.bandwidth_m == float(bw)
    # the same evidence spread wider: more of the floor has some, each sample still weighing 1
    # in its own cell, so 4 times the total for twice the width (less what falls off the grid)
    narrow, wide = widths["0.4"].sum_w, widths["0.8"].sum_w
    assert (wide > 1.0).sum() > (narrow > 1.0).sum()
    assert wide.sum() == pytest.approx(4 * narrow.sum(), rel=0.05)
    bad = _calibrate(*walk, "--out", str(tmp_path / "x.yaml"), "--map-bandwidth-m", "5")
    assert bad.returncode == 1
    assert "--map-bandwidth-m 5: expected 0.1 to 2 m" in bad.stderr


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


def test_readings_of_gateways_not_in_the_site_and_gateways_left_unfitted_are_warned_of() -> None:
    """They were dropped without a word: a renamed gateway silently lost its fit."""
    site = square()
    rows, truth = noisy_walk(1)
    rows = [r for r in rows if r.gateway != "g4"]
    rows += [dataclasses.replace(r, gateway="g9") for r in rows[:50]]
    said: list[str] = []
    cal = fit_calibration(
        site, [(rows, truth)], with_map=False, names=[("r.csv", "t.csv")], warn=said.append
    )
    assert set(cal.gateways) == {"g1", "g2", "g3"}
    assert said == [
        (
            "r.csv: 50 readings from gateways that are not in site square are left out: "
            "g9 (50 readings)"
        ),
        (
            "no fit for 1 of site square's 4 gateways, with fewer than 30 readings matched to "
            "truth (g4 (0)): the engine keeps the site's radio settings for them"
        ),
    ]


def _shifted(rows: list[Reading], s: float) -> list[Reading]:
    return [dataclasses.replace(r, t=r.t + s) for r in rows]


OTHER = "ibeacon:e2c56db5-dffb-48d2-b060-d0f5a71096e0:9:9"


@pytest.mark.parametrize(
    ("walk", "says"),
    [
        (lambda _r, t: ([], t), "r.csv: no readings; the file has a header and no rows"),
        (lambda r, _t: (r, []), "t.csv: no positions; the truth file has a header and no rows"),
        (
            lambda r, t: ([dataclasses.replace(x, gateway="gx") for x in r], t),
            (
                "r.csv: none of its gateways is in site square: the readings come from gx; the "
                "site has g1, g2, g3, g4"
            ),
        ),
        (
            lambda r, t: ([dataclasses.replace(x, beacon=OTHER) for x in r], t),
            (
                f"r.csv: no reading of a beacon in t.csv: the readings hear {OTHER}; the truth "
                "follows ibeacon:e2c56db5-dffb-48d2-b060-d0f5a71096e0:1:1"
            ),
        ),
        (
            lambda r, t: (_shifted(r, 1000.0), t),
            (
                "r.csv: none of its 2880 readings of the beacons in t.csv falls within the "
                "truth's time span, between two positions at most 2 s apart: the readings run "
                "from 1700001000.000 to 1700001239.667, the truth from 1700000000.000 to "
                "1700000239.667 (Unix seconds)"
            ),
        ),
    ],
)
def test_a_walk_that_cannot_be_matched_is_refused_with_its_cause(
    walk: Callable[[list[Reading], list[TruthPoint]], tuple[list[Reading], list[TruthPoint]]],
    says: str,
) -> None:
    """Each once said `no gateway has 30 readings matched to truth`, naming no file."""
    rows, truth = noisy_walk(1)
    with pytest.raises(BeaconHubError) as info:
        fit_calibration(square(), [walk(rows, truth)], names=[("r.csv", "t.csv")])
    assert str(info.value) == says


def test_calibrate_names_the_empty_readings_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    site_path = tmp_path / "square.yaml"
    site_path.write_text(yaml.safe_dump(SQUARE))
    _, truth = _write_walk(tmp_path, "day1", 1)
    empty = tmp_path / "empty.csv"
    empty.write_text("t,gateway,beacon,rssi\n")
    status = cli.main(
        ["calibrate", "--site", str(site_path), "--readings", str(empty), "--truth", str(truth),
         "--out", str(tmp_path / "cal.yaml")]
    )  # fmt: skip
    assert status == 1
    assert capsys.readouterr().err == (
        f"beacon-hub: {empty}: no readings; the file has a header and no rows\n"
    )
    assert not (tmp_path / "cal.yaml").exists()


def test_fits_of_gateways_the_site_does_not_have_are_warned_of_with_their_line(
    tmp_path: Path,
) -> None:
    """A calibration of the same site id made before its gateways were renamed: the fits were
    left unused without a word. A warning, not an error: a gateway may have been removed."""
    path = tmp_path / "cal.yaml"
    path.write_text(f"site: room\ngateways:\n  g0: {FIT}\n  gw-old: {FIT}\n")
    said: list[str] = []
    cal = load_calibration(path, room_site(), warn=said.append)
    assert set(cal.gateways) == {"g0", "gw-old"}
    assert said == [
        (
            f"{path}: 1 calibrated gateways are not in site room and are left unused: "
            f"gw-old ({path}:4); 4 of the site's gateways have no fit here and keep its radio "
            "settings: g1, g2, g3, g4"
        )
    ]
    said.clear()
    _load_text(tmp_path, GOOD)
    load_calibration(tmp_path / "cal.yaml", room_site(), warn=said.append)
    assert said == []


def test_a_calibration_that_cannot_be_saved_leaves_nothing(tmp_path: Path) -> None:
    cal = fit_calibration(square(), [noisy_walk(1)], with_map=False)
    with pytest.raises(FileNotFoundError) as info:
        save_calibration(cal, tmp_path / "nodir" / "cal.yaml")
    assert info.value.filename == str(tmp_path / "nodir" / "cal.yaml")
    assert list(tmp_path.iterdir()) == []
