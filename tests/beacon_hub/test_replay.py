"""`beacon-hub replay`: how ticks are laid over a recording when tracking is off; the
calibration walk replayed on path loss alone to size accuracy_m; recordings that do not fit the
site refused or warned about."""

from __future__ import annotations

import dataclasses
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from beacon_hub import replay as replay_module
from beacon_hub.calibration import Calibration, fit_calibration
from beacon_hub.csvfiles import READINGS, CsvWriter, Reading, TruthPoint, read_events, read_fixes
from beacon_hub.engine import Engine, EngineConfig
from beacon_hub.errors import BeaconHubError
from beacon_hub.evaluation import evaluate_truth
from beacon_hub.pathloss import mean_rssi_dbm
from beacon_hub.replay import EngineReplay, ReplayStats, path_loss_accuracy_scale, replay
from beacon_hub.site import Site, validate_site_data

T0 = 1_700_000_000.0
REF_DBM, EXPONENT = -59.0, 2.0
GATEWAYS = {"g1": (0.0, 0.0), "g2": (10.0, 0.0), "g3": (10.0, 10.0), "g4": (0.0, 10.0)}


SQUARE: dict[str, Any] = {
    "id": "square",
    "kind": "lab",
    "radio": {"ref_rssi_1m_dbm": REF_DBM, "path_loss_exponent": EXPONENT},
    "levels": [{"outline": [[0.0, 0.0], [10.0, 0.0], [10.0, 10.0], [0.0, 10.0]]}],
    "gateways": [{"id": g, "x": x, "y": y, "z": 1.0} for g, (x, y) in GATEWAYS.items()],
    "beacon_kinds": [{"kind": "asset", "match": ["ibeacon:*"], "height_m": 1.0}],
}
"""A 10 m square lab with a gateway in each corner, as a site file's data."""


def square() -> Site:
    return validate_site_data(SQUARE, "square")


def beacon(i: int) -> str:
    return f"ibeacon:e2c56db5-dffb-48d2-b060-d0f5a71096e0:1:{i}"


def heard(t: float, b: str, x: float, y: float) -> list[Reading]:
    """The beacon at (x, y) heard by every gateway at time t, noise-free."""
    out = []
    for g, (gx, gy) in GATEWAYS.items():
        d = max(float(np.hypot(x - gx, y - gy)), 0.1)
        out.append(Reading(t, g, b, float(mean_rssi_dbm(d, REF_DBM, EXPONENT))))
    return out


def replay_without_tracking(tmp_path: Path, rows: list[Reading]) -> tuple[ReplayStats, Path]:
    out = tmp_path / "f.csv"
    with CsvWriter(READINGS, tmp_path / "r.csv") as readings:
        readings.write_all(sorted(rows, key=lambda r: r.t))
    config = EngineConfig(tracking=False)
    return replay(square(), tmp_path / "r.csv", out, config=config, progress=False), out


def test_one_tag_gets_one_fix_per_sample_instant(tmp_path: Path) -> None:
    """A tag recorded in instants (the dataset's 1/3-s rows): each instant is its own fix."""
    rows = [r for k in range(30) for r in heard(T0 + k / 3.0, beacon(1), 4.0, 6.0)]
    stats, out = replay_without_tracking(tmp_path, rows)
    fixes = list(read_fixes(out))
    assert stats.ticks == 30
    assert len(fixes) == 30
    assert max(np.hypot(f.x - 4.0, f.y - 6.0) for f in fixes) < 0.05


def test_many_beacons_at_random_get_one_fix_per_tick(tmp_path: Path) -> None:
    """Fifty beacons advertising at random, 10 Hz each for 10 s, never form instants (their
    adverts run together): without tracking they get a fix per tick from the window. They once
    collapsed into a single tick for the whole recording."""
    rng = np.random.default_rng(3)
    rows = [
        r
        for i in range(50)
        for t in T0 + np.sort(rng.uniform(0.0, 10.0, 100))
        for r in heard(float(t), beacon(i), 1.0 + 0.15 * i, 5.0)
    ]
    stats, out = replay_without_tracking(tmp_path, rows)
    per_beacon = Counter(f.beacon for f in read_fixes(out))
    assert stats.ticks == 10
    assert len(per_beacon) == 50
    assert set(per_beacon.values()) == {10}


def test_replay_writes_the_engine_s_events(tmp_path: Path) -> None:
    """A beacon heard for 40 s and then silent: its events (beacon_lost after lost_after_s)
    go to --events, as many as replay counted."""
    rows = [r for k in range(40) for r in heard(T0 + k, beacon(1), 4.0, 6.0)]
    rows += heard(T0 + 80.0, beacon(2), 6.0, 4.0)  # keeps the clock going past lost_after_s
    with CsvWriter(READINGS, tmp_path / "r.csv") as readings:
        readings.write_all(sorted(rows, key=lambda r: r.t))
    stats = replay(
        square(),
        tmp_path / "r.csv",
        tmp_path / "f.csv",
        progress=False,
        events_path=tmp_path / "e.csv",
    )
    events = list(read_events(tmp_path / "e.csv"))
    assert len(events) == stats.events
    assert [e.beacon for e in events if e.type == "beacon_lost"] == [beacon(1)]


def noisy_walk(seed: int) -> tuple[list[Reading], list[TruthPoint]]:
    """A tag walking loops of the square for 4 minutes, heard by every gateway 3 times a second
    through a static field (6 dB, smooth over metres, its own per gateway) and 2 dB of fading:
    the path-loss model fitted to it counts the static field as independent noise."""
    rng = np.random.default_rng(seed)
    rows: list[Reading] = []
    truth: list[TruthPoint] = []
    for k in range(720):
        t = T0 + k / 3.0
        angle = 2.0 * np.pi * k / 240.0
        x, y = 5.0 + 3.5 * np.cos(angle), 5.0 + 3.0 * np.sin(angle)
        truth.append(TruthPoint(t, beacon(1), float(x), float(y)))
        for j, (g, (gx, gy)) in enumerate(GATEWAYS.items()):
            d = max(float(np.hypot(x - gx, y - gy)), 0.1)
            static = 6.0 * np.sin(x / 1.5 + j) * np.cos(y / 2.0 + 2 * j)
            rssi = mean_rssi_dbm(d, REF_DBM, EXPONENT) + static + rng.normal(0.0, 2.0)
            rows.append(Reading(t, g, beacon(1), float(rssi)))
    return rows, truth


def test_the_path_loss_accuracy_scale_makes_accuracy_a_68_percent_radius() -> None:
    """Replayed on path loss alone (one fix per sample) with the scale that calibrate measures,
    68 % of the walk's true positions fall within accuracy_m, on the walk itself and on another
    walk through the same field; unscaled, 84 %. With a map in use the scale stays out."""
    site = square()
    rows, truth = noisy_walk(1)
    calibration = fit_calibration(site, [(rows, truth)], with_map=False)
    scale = path_loss_accuracy_scale(site, [(rows, truth)], calibration, tracking=False)
    assert scale is not None

    def within(walk: tuple[list[Reading], list[TruthPoint]], cal: Calibration) -> float:
        config = EngineConfig(use_map=False, tracking=False)
        run = EngineReplay(site, walk[0], config=config, calibration=cal)
        fixes = [f for result in run.ticks() for f in result.fixes.fixes()]
        return float(evaluate_truth(fixes, walk[1]).summary["within_accuracy"])

    scaled = dataclasses.replace(calibration, path_loss_accuracy_scale={"no_tracking": scale})
    assert within((rows, truth), scaled) == pytest.approx(0.68, abs=0.02)
    assert within(noisy_walk(2), scaled) == pytest.approx(0.68, abs=0.05)
    assert within((rows, truth), calibration) > 0.78

    mapped = fit_calibration(site, [(rows, truth)], with_map=True)
    untracked = EngineConfig(tracking=False)
    assert Engine(site, untracked, calibration=scaled).accuracy_scale == pytest.approx(scale)
    assert Engine(site, calibration=scaled).accuracy_scale == 1.0  # measured without tracking
    with_map = dataclasses.replace(mapped, path_loss_accuracy_scale={"no_tracking": scale})
    assert Engine(site, untracked, calibration=with_map).accuracy_scale == 1.0
    no_map = EngineConfig(tracking=False, use_map=False)
    assert Engine(site, no_map, calibration=with_map).accuracy_scale == pytest.approx(scale)


def test_too_short_a_walk_measures_no_scale() -> None:
    site = square()
    rows, truth = noisy_walk(1)
    calibration = fit_calibration(site, [(rows, truth)], with_map=False)
    for tracking in (True, False):
        short = path_loss_accuracy_scale(site, [(rows[:40], truth)], calibration, tracking=tracking)
        assert short is None


def write_readings(path: Path, rows: list[Reading]) -> Path:
    with CsvWriter(READINGS, path) as out:
        out.write_all(rows)
    return path


def test_a_recording_from_none_of_the_site_s_gateways_is_refused(tmp_path: Path) -> None:
    """It once replayed to a fixes file holding only its header, and exited 0."""
    rows = [
        dataclasses.replace(r, gateway=f"x-{r.gateway}")
        for k in range(10)
        for r in heard(T0 + k, beacon(1), 4.0, 6.0)
    ]
    path = write_readings(tmp_path / "r.csv", rows)
    with pytest.raises(BeaconHubError) as info:
        replay(square(), path, tmp_path / "f.csv", progress=False)
    assert str(info.value) == (
        f"{path}: none of its gateways is in site square: the readings come from x-g1, x-g2, "
        "x-g3, x-g4; the site has g1, g2, g3, g4"
    )
    assert not (tmp_path / "f.csv").exists()


def test_readings_from_some_unknown_gateways_are_named_once(tmp_path: Path) -> None:
    rows = [r for k in range(10) for r in heard(T0 + k, beacon(1), 4.0, 6.0)]
    rows += [Reading(T0 + k, "gw-old", beacon(1), -70.0) for k in range(3)]
    rows += [Reading(T0 + 0.5, "gw-gone", beacon(1), -70.0)]
    path = write_readings(tmp_path / "r.csv", sorted(rows, key=lambda r: r.t))
    said: list[str] = []
    stats = replay(square(), path, tmp_path / "f.csv", progress=False, warn=said.append)
    assert said == [
        (
            f"{path}: 4 readings from gateways that are not in site square are left out: "
            "gw-gone (1 readings), gw-old (3 readings)"
        )
    ]
    assert stats.unknown_gateway == 4


def test_repeated_rows_are_counted_and_replayed_as_recorded(tmp_path: Path) -> None:
    rows = [r for k in range(10) for r in heard(T0 + k, beacon(1), 4.0, 6.0)]
    path = write_readings(tmp_path / "r.csv", rows + rows[:7])
    said: list[str] = []
    stats = replay(square(), path, tmp_path / "f.csv", progress=False, warn=said.append)
    assert len(said) == 1
    assert said[0].startswith(f"{path}: 7 rows repeat an earlier row exactly")
    assert stats.readings == len(rows) + 7


def test_reading_a_long_recording_shows_progress(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """1.2 M rows take seconds to read and sort: a line per PROGRESS_READINGS, as calibrate."""
    monkeypatch.setattr(replay_module, "PROGRESS_READINGS", 15)
    rows = [r for k in range(10) for r in heard(T0 + k, beacon(1), 4.0, 6.0)]
    replay(square(), write_readings(tmp_path / "r.csv", rows), tmp_path / "f.csv")
    lines = capsys.readouterr().err.splitlines()
    assert [line for line in lines if "readings read" in line] == [
        "replay: 15 readings read",
        "replay: 30 readings read",
    ]


def test_the_reading_table_feeds_the_engine_as_reading_objects_did() -> None:
    """Columns instead of Reading objects (305 bytes a reading): each tick's chunks are what
    grouping the objects gave (gateways in order of appearance, beacons sorted by name, samples
    in row order), at 32 bytes a reading; repeated rows are counted as a set of rows did."""
    rng = np.random.default_rng(2)
    names = [beacon(int(i)) for i in rng.permutation(40)] + [
        f"mac:aa:bb:cc:dd:ee:{i:02x}" for i in range(5)
    ]
    rows = [
        Reading(
            float(rng.integers(0, 20)) / 4,
            f"g{rng.integers(0, 4)}",
            names[int(rng.integers(0, len(names)))],
            float(rng.integers(-90, -50)),
            None if rng.random() < 0.5 else -59.0,
        )
        for _ in range(600)
    ]
    rows += rows[:7]  # exact repeats
    table = replay_module.ReadingTable.of(rows).sorted_by_time()
    assert table.repeated() == len(rows) - len(set(rows))
    per_reading = sum(
        c.nbytes for c in (table.t, table.gateway, table.beacon, table.rssi, table.tx)
    )
    assert per_reading / len(table) == 32
    ordered = sorted(rows, key=lambda r: r.t)
    pos = 0
    for tick in np.arange(0.0, 5.5, 1.0):
        end = pos
        while end < len(ordered) and ordered[end].t <= tick:
            end += 1
        expected: dict[str, list[Reading]] = {}
        for r in ordered[pos:end]:
            expected.setdefault(r.gateway, []).append(r)
        got = table.chunks(pos, end)
        assert [c.gateway for c in got] == list(expected)
        for chunk, items in zip(got, expected.values(), strict=True):
            assert chunk.beacons == sorted({r.beacon for r in items})
            assert [chunk.beacons[i] for i in chunk.b] == [r.beacon for r in items]
            assert chunk.t.tolist() == [r.t for r in items]
            assert chunk.rssi.tolist() == [r.rssi for r in items]
            tx = [np.nan if r.tx_power is None else r.tx_power for r in items]
            np.testing.assert_array_equal(chunk.tx, tx)
        pos = end
