"""The stores against a real InfluxDB 1.6 and SQLite: spill bounds and replay, outages, odd
content, partial writes, non-finite fixes, erasure from the spill."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import pytest

from beacon_hub.engine import FixTable
from beacon_hub.health import Metrics
from beacon_hub.hubconfig import InfluxConfig
from beacon_hub.privacy import PrivacyError, Retention, erase_influx, retention_job
from beacon_hub.stores import (
    EVENT_MEASUREMENT,
    FIX_MEASUREMENT,
    MAX_BODY_BYTES,
    InfluxStore,
    SqliteStore,
    TickRecord,
    fix_points,
    open_sqlite,
)
from tests.servers import InfluxDB, free_port

pytestmark = pytest.mark.integration

SITE = "s1"
PALLET = "mac:aa:bb:cc:dd:ee:{:02x}"


def _table(
    t: float,
    beacons: Sequence[str],
    *,
    x: Sequence[float] | None = None,
    accuracy_m: Sequence[float] | None = None,
    kind: str | None = "pallet",
) -> FixTable:
    n = len(beacons)
    return FixTable(
        t=t,
        beacons=list(beacons),
        x=np.array(x if x is not None else [1.5] * n, dtype=np.float64),
        y=np.full(n, 2.5),
        accuracy_m=np.array(accuracy_m if accuracy_m is not None else [0.75] * n),
        level=np.zeros(n, dtype=np.int64),
        zones=["aisle-1"] * n,
        kinds=[kind] * n,
        speed_m_s=np.full(n, 0.1),
        gateway_slots=np.zeros((n, 1), dtype=np.intp),
        gateway_mask=np.ones((n, 1), dtype=bool),
        gateway_ids=("gw-1",),
    )


def _record(
    t: float,
    beacons: Sequence[str],
    labels: Sequence[str | None] | None = None,
    *,
    x: Sequence[float] | None = None,
    accuracy_m: Sequence[float] | None = None,
    kind: str | None = "pallet",
) -> TickRecord:
    table = _table(t, beacons, x=x, accuracy_m=accuracy_m, kind=kind)
    return TickRecord(SITE, t, table, [], list(labels or [None] * len(beacons)))


def _now_s() -> float:
    """A whole second a minute ago: inside any retention policy, and points of the same series
    at the same time would overwrite each other."""
    return float(int(time.time()) - 60)


def _cfg(url: str, db: str, spill: Path, **kw: object) -> InfluxConfig:
    return InfluxConfig.model_validate({"url": url, "database": db, "spill_dir": spill, **kw})


def _closed_url() -> str:
    return f"http://127.0.0.1:{free_port()}"


def _count(server: InfluxDB, db: str, where: str = "", source: str = '"fix"') -> int:
    rows = server.rows(f"SELECT count(x) FROM {source} {where}", db)
    return int(rows[0]["count"]) if rows else 0


def _metric(metrics: Metrics, name: str, store: str) -> float:
    value: float = getattr(metrics, name).labels(store)._value.get()
    return value


def _spilled(folder: Path) -> int:
    return sum(int(f.stem.split("-")[1]) for f in folder.glob("*.lp"))


def _wait_for(condition: Callable[[], bool], timeout_s: float = 60.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.02)


# ------------------------------------------------------------------------- spill size bounds


def test_a_spill_file_larger_than_influxd_takes_is_replayed_in_full(
    tmp_path: Path, influx_db: tuple[InfluxDB, str]
) -> None:
    """An older version's close() wrote the whole backlog as one file; POSTed whole it is over
    influxd's max-body-size (25 MB), the connection is reset, and it was retried for ever."""
    server, db = influx_db
    spill = tmp_path / "spill"
    spill.mkdir()
    t0_ms = int(_now_s() * 1000) - 3_600_000
    pad = "g" * 260
    lines = [
        f'fix,beacon=b{i % 1000},site={SITE} gateways="{pad}",x=1 {t0_ms + (i // 1000) * 1000}'
        for i in range(100_000)
    ]
    body = "\n".join(lines).encode()
    assert len(body) > 25_000_000
    (spill / f"000000000000-{len(lines)}.lp").write_bytes(body)
    metrics = Metrics()
    store = InfluxStore(_cfg(server.url, db, spill), metrics)
    try:
        assert store.flush(120.0)
    finally:
        store.close()
    assert _count(server, db) == len(lines)
    assert _metric(metrics, "store_written", store.name) == len(lines)
    assert _metric(metrics, "store_dropped", store.name) == 0
    assert list(spill.glob("*.lp")) == []


def test_close_spills_in_files_of_at_most_a_batch(tmp_path: Path) -> None:
    spill = tmp_path / "spill"
    cfg = _cfg(_closed_url(), "beacons", spill, batch_points=1000, retry_max_s=600.0)
    store = InfluxStore(cfg, Metrics())
    t0 = _now_s()
    for k in range(10):
        store.write(_record(t0 + k, [f"b{i}" for i in range(900)]))
    store.close()
    files = sorted(spill.glob("*.lp"))
    assert _spilled(spill) == 9000
    assert all(int(f.stem.split("-")[1]) <= 1000 for f in files)
    assert all(f.stat().st_size <= MAX_BODY_BYTES for f in files)


# -------------------------------------------------------------------------------- outages


def test_while_influxdb_is_unreachable_what_waits_goes_to_disk_at_once(tmp_path: Path) -> None:
    """A crash during an outage must not lose what memory held: after the first failed write,
    everything handed over reaches the spill without waiting a retry per batch."""
    spill = tmp_path / "spill"
    cfg = _cfg(_closed_url(), "beacons", spill, batch_points=100, retry_max_s=600.0)
    metrics = Metrics()
    store = InfluxStore(cfg, metrics)
    try:
        t0 = _now_s()
        store.write(_record(t0, [PALLET.format(0)]))
        _wait_for(lambda: _metric(metrics, "store_errors", store.name) >= 1)
        beacons = [f"b{i}" for i in range(500)]
        for k in range(1, 11):
            store.write(_record(t0 + k, beacons))
        _wait_for(lambda: _spilled(spill) == 1 + 10 * 500)
        assert store.backlog() == _spilled(spill)
    finally:
        store.close()


def test_a_stray_file_in_the_spill_folder_is_left_alone(
    tmp_path: Path, influx_db: tuple[InfluxDB, str]
) -> None:
    server, db = influx_db
    spill = tmp_path / "spill"
    spill.mkdir()
    (spill / "README.lp").write_text("notes\n")
    t_ms = int(_now_s() * 1000)
    (spill / "000000000003-2.lp").write_text(
        f"fix,beacon=b1,site={SITE} x=1 {t_ms}\nfix,beacon=b2,site={SITE} x=2 {t_ms}"
    )
    store = InfluxStore(_cfg(server.url, db, spill), Metrics())
    try:
        store.write(_record(t_ms / 1000 + 1, [PALLET.format(1)]))
        assert store.flush(30.0)
    finally:
        store.close()
    assert _count(server, db) == 3
    assert [f.name for f in spill.iterdir()] == ["README.lp"]


# ------------------------------------------------------------------------------- content


@pytest.mark.parametrize("policies", [True, False], ids=["per-class-policies", "default-policy"])
def test_a_newline_in_a_label_breaks_no_point(
    tmp_path: Path, influx_db: tuple[InfluxDB, str], policies: bool
) -> None:
    server, db = influx_db
    retention = Retention(days={"pallet": 365.0}) if policies else None
    metrics = Metrics()
    store = InfluxStore(_cfg(server.url, db, tmp_path / "spill"), metrics, retention)
    t = _now_s()
    beacons = [PALLET.format(i) for i in range(3)]
    try:
        store.write(_record(t, beacons, ["P-0", "Rack A\nBay 3\r", "P-2"]))
        assert store.flush(30.0)
    finally:
        store.close()
    source = '"beacon_hub_pallet"."fix"' if policies else '"fix"'
    rows = server.rows(f"SELECT beacon, label, x FROM {source}", db)
    assert sorted((r["time"], r["beacon"], r["label"], r["x"]) for r in rows) == [
        (int(t * 1e9), beacons[0], "P-0", 1.5),
        (int(t * 1e9), beacons[1], "Rack A Bay 3 ", 1.5),
        (int(t * 1e9), beacons[2], "P-2", 1.5),
    ]
    assert _metric(metrics, "store_written", store.name) == 3
    assert _metric(metrics, "store_dropped", store.name) == 0


@pytest.mark.parametrize("bad", ["unparsable", "type-conflict"])
def test_a_partial_write_counts_the_stored_lines_written(
    tmp_path: Path, influx_db: tuple[InfluxDB, str], bad: str
) -> None:
    """InfluxDB 1.x stores a batch's good lines and answers `400 partial write`: they are
    written, only the bad one is dropped, and nothing is sent again."""
    server, db = influx_db
    t_ms = int(_now_s() * 1000)
    server.write(db, f"fix,beacon=first,site={SITE} x=1 {t_ms - 1000}", precision="ms")
    good = [f"fix,beacon=b{i},site={SITE} x={i} {t_ms}" for i in range(9)]
    broken = {
        "unparsable": f"fix,beacon=b9,site={SITE} x=",
        "type-conflict": f'fix,beacon=b9,site={SITE} x="text" {t_ms}',
    }[bad]
    metrics = Metrics()
    store = InfluxStore(_cfg(server.url, db, tmp_path / "spill"), metrics)
    try:
        store.write_lines([*good[:4], broken, *good[4:]])
        assert store.flush(30.0)
    finally:
        store.close()
    assert _count(server, db) == 1 + 9
    assert _metric(metrics, "store_written", store.name) == 9
    assert _metric(metrics, "store_dropped", store.name) == 1
    assert _metric(metrics, "store_errors", store.name) == 1


# ------------------------------------------------------------------------ non-finite fixes


def test_a_non_finite_fix_is_skipped_by_both_stores_and_its_ticks_kept(
    tmp_path: Path, influx_db: tuple[InfluxDB, str]
) -> None:
    """One NaN accuracy used to fail the SQLite transaction of up to 8 ticks (NOT NULL)."""
    server, db = influx_db
    t0 = _now_s() - 10
    beacons = [PALLET.format(i) for i in range(3)]
    records = [
        _record(
            t0 + k,
            beacons,
            accuracy_m=[0.5, float("nan") if k == 3 else 0.5, 0.5],
            x=[float("inf") if k == 5 else 1.0, 1.0, 1.0],
        )
        for k in range(8)
    ]
    metrics = Metrics()
    sqlite = SqliteStore(tmp_path / "hub.sqlite", metrics)
    try:
        sqlite.commit_many([(r, (), ()) for r in records])
        stored = sqlite.db.execute("SELECT t, beacon FROM fixes ORDER BY t, beacon").fetchall()
    finally:
        sqlite.close()
    skipped = {(t0 + 3, beacons[1]), (t0 + 5, beacons[0])}
    expected = [(r.t, b) for r in records for b in beacons if (r.t, b) not in skipped]
    assert stored == expected
    assert _metric(metrics, "store_written", "sqlite") == len(expected)
    assert _metric(metrics, "store_dropped", "sqlite") == 2

    assert [len(fix_points(r)) for r in records] == [3, 3, 3, 2, 3, 2, 3, 3]
    influx = InfluxStore(_cfg(server.url, db, tmp_path / "spill"), metrics)
    try:
        for r in records:
            influx.write(r)
        assert influx.flush(30.0)
    finally:
        influx.close()
    rows = server.rows('SELECT beacon, accuracy_m FROM "fix"', db)
    assert sorted((r["time"] / 1e9, r["beacon"]) for r in rows) == expected
    assert _metric(metrics, "store_written", influx.name) == len(expected)
    assert _metric(metrics, "store_dropped", influx.name) == 2


# ------------------------------------------------------------------------------------ erase


def test_erase_removes_a_shopper_from_the_spill_so_a_restart_does_not_bring_it_back(
    tmp_path: Path, influx_db: tuple[InfluxDB, str]
) -> None:
    server, db = influx_db
    spill = tmp_path / "spill"
    shopper, other = "anon:52fe29dfd35bff64", PALLET.format(7)
    t = _now_s()
    up = _cfg(server.url, db, spill, retention_policy="autogen")
    store = InfluxStore(up, Metrics())
    store.write(_record(t, [shopper, other], kind="cart"))
    assert store.flush(30.0)
    store.close()
    # An outage: the next ticks wait in the spill when the hub stops.
    down = InfluxStore(_cfg(_closed_url(), db, spill, retention_policy="autogen"), Metrics())
    for k in (1, 2):
        down.write(_record(t + k, [shopper, other], kind="cart"))
    down.close()
    assert _spilled(spill) == 4

    out = erase_influx(up, [shopper], (FIX_MEASUREMENT, EVENT_MEASUREMENT))
    assert out[0] == f"spill {spill}: 2 points"
    assert _spilled(spill) == 2
    assert _count(server, db, f"WHERE beacon = '{shopper}'") == 0

    again = InfluxStore(up, Metrics())  # the hub starts and replays its spill
    try:
        assert again.flush(30.0)
    finally:
        again.close()
    assert _count(server, db, f"WHERE beacon = '{shopper}'") == 0
    assert _count(server, db, f"WHERE beacon = '{other}'") == 3


def test_erase_of_the_spill_works_while_influxdb_is_down(tmp_path: Path) -> None:
    spill = tmp_path / "spill"
    spill.mkdir()
    lines = [
        "#rp:beacon_hub_shoppers fix,beacon=anon:00000000000000aa,kind=cart,site=s1 x=1 1000",
        "fix,beacon=anon:00000000000000aa0,site=s1 x=1 1000",
        'event,beacon=anon:00000000000000aa,site=s1,type=dwell data="{}" 1000',
        "fix,beacon=keep\\ me,site=s1 x=1 1000",
    ]
    (spill / "000000000000-4.lp").write_text("\n".join(lines))
    cfg = _cfg(_closed_url(), "beacons", spill, timeout_s=1.0)
    with pytest.raises(PrivacyError, match="influxdb"):
        erase_influx(cfg, ["anon:00000000000000aa"], (FIX_MEASUREMENT, EVENT_MEASUREMENT))
    assert [f.name for f in spill.glob("*.lp")] == ["000000000000-2.lp"]
    assert (spill / "000000000000-2.lp").read_text().split("\n") == [lines[1], lines[3]]


# --------------------------------------------------------------------------- retention cost


def _prune_steps(tmp_path: Path, old_pallet_rows: int) -> int:
    """SQLite virtual-machine steps (in units of 1,000) of one retention job over a database
    with `old_pallet_rows` pallet fixes and events kept by their retention, and a fixed number
    of old shopper rows to delete."""
    db = open_sqlite(tmp_path / f"prune-{old_pallet_rows}.sqlite")
    now, day_s = 1_800_000_000.0, 86_400.0
    rest = (1.0, 2.0, 0, 1.0, "z")
    fixes = [
        (SITE, PALLET.format(i % 50), now - 2 * day_s - i, *rest, "pallet", None, 0.0, "gw")
        for i in range(old_pallet_rows)
    ]
    fixes += [
        (SITE, f"anon:{i:016x}", now - 3 * day_s, *rest, "cart", None, 0.0, "gw")
        for i in range(100)
    ]
    events = [(SITE, t, "dwell", b, "z", json.dumps({})) for (_, b, t, *_) in fixes]
    db.execute("BEGIN")
    db.executemany("INSERT INTO fixes VALUES (?,?,?,?,?,?,?,?,?,?,?,?)", fixes)
    db.executemany("INSERT INTO events VALUES (?,?,?,?,?,?)", events)
    db.execute("COMMIT")
    steps = [0]

    def count() -> int:
        steps[0] += 1
        return 0

    db.set_progress_handler(count, 1000)
    retention = Retention(
        days={"shoppers": 1.0, "pallet": 365.0},
        kind_of=lambda _site, beacon: "pallet" if beacon.startswith("mac:") else None,
    )
    retention_job(retention, now)(db)
    db.set_progress_handler(None, 0)
    left = db.execute("SELECT kind, count(*) FROM fixes GROUP BY kind").fetchall()
    assert left == [("pallet", old_pallet_rows)]
    assert db.execute("SELECT count(*) FROM events").fetchone()[0] == old_pallet_rows
    db.close()
    return steps[0]


def test_retention_work_follows_what_it_deletes_not_what_it_keeps(tmp_path: Path) -> None:
    """The hourly job runs inside the writer's transaction: with a year of pallet history
    kept, its work must not grow with that history (counted in SQLite steps, not timed)."""
    small = _prune_steps(tmp_path, 2_000)
    large = _prune_steps(tmp_path, 40_000)
    assert large <= small + 10
