"""An erasure's tombstone (docs/privacy.md, Erasure): a hub running while `erase` runs stores
nothing of the erased pseudonym dated up to the erasure."""

from __future__ import annotations

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
from beacon_hub.stores import SqliteStore, TickWrite, open_sqlite
from beacon_hub.wire import Event
from tests.beacon_hub.test_stores import SITE, _record

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
    history = sorted([(GONE, T0 + 2), (KEPT, T0), (KEPT, T0 + 1), (KEPT, T0 + 2)])
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
    retention_job(Retention(), T0 + ERASURE_KEEP_S + 5)(db)  # data time, as the hub runs it
    assert db.execute("SELECT beacon FROM erasures").fetchall() == [(KEPT,)]
    db.close()
