"""`beacon-hub replay`: how ticks are laid over a recording when tracking is off."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np

from beacon_hub.csvfiles import READINGS, CsvWriter, Reading, read_events, read_fixes
from beacon_hub.engine import EngineConfig
from beacon_hub.pathloss import mean_rssi_dbm
from beacon_hub.replay import ReplayStats, replay
from beacon_hub.site import Site, validate_site_data

T0 = 1_700_000_000.0
REF_DBM, EXPONENT = -59.0, 2.0
GATEWAYS = {"g1": (0.0, 0.0), "g2": (10.0, 0.0), "g3": (10.0, 10.0), "g4": (0.0, 10.0)}


def square() -> Site:
    return validate_site_data(
        {
            "id": "square",
            "kind": "lab",
            "radio": {"ref_rssi_1m_dbm": REF_DBM, "path_loss_exponent": EXPONENT},
            "levels": [{"outline": [[0.0, 0.0], [10.0, 0.0], [10.0, 10.0], [0.0, 10.0]]}],
            "gateways": [{"id": g, "x": x, "y": y, "z": 1.0} for g, (x, y) in GATEWAYS.items()],
            "beacon_kinds": [{"kind": "asset", "match": ["ibeacon:*"], "height_m": 1.0}],
        },
        "square",
    )


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
