"""An erasure's tombstone (docs/privacy.md, Erasure): a hub running while `erase` runs stores
nothing of the erased pseudonym dated up to the erasure, in SQLite or InfluxDB (real 1.6)."""

from __future__ import annotations

import sqlite3
import threading
from pathlib import Path

from beacon_hub.health import Metrics
from beacon_hub.privacy import (
    ERASURE_KEEP_S,
    Retention,
    erase_sqlite,
    open_erase_sqlite,
    retention_job,
)
from beacon_hub.stores import (
    ErasureFeed,
    InfluxStore,
    SqliteStore,
    TickWrite,
    _Spill,
    erase_spilled,
    open_sqlite,
)
from beacon_hub.wire import Event
from tests.beacon_hub.test_stores import SITE, _cfg, _count, _now_s, _record
from tests.servers import InfluxDB

GONE, KEPT = "anon:52fe29dfd35bff64", "anon:0123456789abcdef"
T0 = 1_780_000_000.0


def _tick(t: float) -> TickWrite:
    record = _record(t, [GONE, KEPT], kind="cart")
    events = [Event("zone_enter", t, SITE, b, "aisle-1") for b in (GONE, KEPT)]
    return TickWrite(
        type(record)(record.site, t, record.fixes, events, record.labels), (), (), lambda _ok: None
    )


def test_ticks_queued_for_the_sqlite_writer_before_an_erase_are_not_stored_after_it(
    tmp_path: Path,
) -> None:
    """The writer's queue held ticks of the erased pseudonym (MAX_PENDING_JOBS) when `erase`
    deleted its rows: they were committed afterwards, and the erased rows were back."""
    path = tmp_path / "hub.sqlite"
    store = SqliteStore(path, Metrics())
    store.start()
    store.submit_tick(_tick(T0 - 1))  # the writer's statements prepared before the erase
    assert store.flush(30.0)
    release = threading.Event()

    def busy(_db: object) -> None:  # the writer busy: the next ticks wait in its queue
        release.wait()

    store.submit(busy)
    store.submit_tick(_tick(T0))
    store.submit_tick(_tick(T0 + 1))
    db = open_erase_sqlite(path)
    try:
        erase_sqlite(db, [GONE], erased_at=T0 + 1.5)
    finally:
        db.close()
    release.set()
    store.submit_tick(_tick(T0 + 2))  # after the erasure: consent still given, tracked anew
    assert store.flush(30.0)
    rows = {
        table: sorted(store.db.execute(f"SELECT beacon, t FROM {table}").fetchall())
        for table in ("fixes", "events", "latest")
    }
    store.close()
    history = sorted([(GONE, T0 + 2), *((KEPT, T0 + k) for k in (-1, 0, 1, 2))])
    assert rows == {
        "fixes": history,
        "events": history,
        "latest": sorted([(GONE, T0 + 2), (KEPT, T0 + 2)]),
    }


def test_the_retention_job_prunes_tombstones_after_erasure_keep_s(tmp_path: Path) -> None:
    path = tmp_path / "hub.sqlite"
    db = open_sqlite(path)
    erase_sqlite(db, [GONE], erased_at=T0)
    erase_sqlite(db, [KEPT], erased_at=T0 + 10)
    assert _guards(db) == 4  # fixes, latest, events, promotion_decisions
    retention_job(Retention(), T0 + ERASURE_KEEP_S + 5)(db)  # data time, as the hub runs it
    assert db.execute("SELECT beacon FROM erasures").fetchall() == [(KEPT,)]
    assert _guards(db) == 4
    retention_job(Retention(), T0 + ERASURE_KEEP_S + 15)(db)
    assert db.execute("SELECT beacon FROM erasures").fetchall() == []
    assert _guards(db) == 0  # no cost to the inserts while nothing is erased
    db.close()


def _guards(db: sqlite3.Connection) -> int:
    return int(
        db.execute("SELECT count(*) FROM sqlite_master WHERE type = 'trigger'").fetchone()[0]
    )


def test_the_influx_writer_drops_what_it_holds_of_an_erasure_and_deletes_what_it_sent(
    tmp_path: Path, influx_db: tuple[InfluxDB, str]
) -> None:
    """`erase` dropped the series, then the hub's writer sent what it held (a batch in memory,
    a spilled file `erase` had not seen): the erased points were back in InfluxDB."""
    server, name = influx_db
    path = tmp_path / "hub.sqlite"
    open_sqlite(path).close()
    t = _now_s()
    store = InfluxStore(
        _cfg(server.url, name, tmp_path / "spill", retention_policy="autogen"),
        Metrics(),
        erasures=ErasureFeed(path),
    )
    try:
        store.write(_record(t, [GONE, KEPT], kind="cart"))
        assert store.flush(30.0)  # sent before the erasure
        db = open_erase_sqlite(path)
        try:
            erase_sqlite(db, [GONE], erased_at=t + 1.5)  # (its DROP SERIES ran here)
        finally:
            db.close()
        store.write(_record(t + 1, [GONE, KEPT], kind="cart"))  # held when `erase` ran
        store.write(_record(t + 2, [GONE, KEPT], kind="cart"))  # after it: tracked anew
        assert store.flush(30.0)
    finally:
        store.close()
    gone = [
        r["time"] / 1e9 for r in server.rows(f"SELECT x FROM fix WHERE beacon = '{GONE}'", name)
    ]
    assert gone == [t + 2]
    assert _count(server, name, f"WHERE beacon = '{KEPT}'") == 3


def test_a_spill_file_erase_wrote_anew_is_replayed_not_counted_lost(tmp_path: Path) -> None:
    """`erase` writes a spill file it changes under its new point count: the running hub looked
    for the old name, counted its points lost and never sent the others' points in it."""
    folder = tmp_path / "spill"
    spill = _Spill(folder, 10_000_000)
    lines = [f"fix,beacon={b},site=s1 x=1 {k}" for k in (1000, 2000) for b in (GONE, KEPT)]
    spill.append("\n".join(lines[:2]).encode(), 2)
    spill.append("\n".join(lines[2:]).encode(), 2)
    assert erase_spilled(folder, [GONE]) == 2
    assert sorted(f.name for f in folder.glob("*.lp")) == ["000000000000-1.lp", "000000000001-1.lp"]
    oldest = spill.oldest()
    assert oldest is not None
    assert oldest[:2] == (lines[1].encode(), 1)
    assert spill.vanished == 0
    assert spill.pop_oldest() == 1
    oldest = spill.oldest()
    assert oldest is not None
    assert oldest[:2] == (lines[3].encode(), 1)
    assert spill.points == 1
    assert spill.bytes == len(lines[3])
