"""A gateway's sequence state across a hub restart, through a real SQLite file: what the hub
never took below a gateway's next seq (a gap, a batch from before its first one heard) is taken
once after the restart, and what it took is still a duplicate."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from beacon_hub.health import Metrics
from beacon_hub.ingest import MAX_GAP_MEMORY, Accepted, Ingestor, SeqGaps
from beacon_hub.stores import (
    SavedGateway,
    SqliteStore,
    StoreError,
    TickRecord,
    TickWrite,
    seqs_of_text,
    seqs_text,
)
from tests.beacon_hub.test_hub_units import SITE, T0, _table, batch, ingestor, msg, reason


def _save(store: SqliteStore, ing: Ingestor, t: float) -> None:
    """One tick's transaction with every gateway's state, as the service saves it (Hub._tick)."""
    rows = [
        SavedGateway(site, gw, s.boot, s.next_seq, s.offset_s, s.last_sent, s.unsaved_gaps())
        for (site, gw), s in ing.state.items()
    ]
    store.commit(TickRecord(SITE, t, _table([], [], []), [], []), (), rows)


def _restarted(store: SqliteStore) -> Ingestor:
    """A new hub run's ingestor with the saved state, as the service restores it."""
    ing = ingestor()
    for g in store.saved_gateways():
        ing.restore(
            g.site, g.gateway, g.boot, g.next_seq, g.offset_s, last_sent=g.last_sent, gaps=g.gaps
        )
    return ing


def _seqs(ing: Ingestor, seqs: list[int], gw: str = "gw-1") -> list[str]:
    return [reason(ing.handle(msg(batch(gw=gw, seq=s), gw=gw))) for s in seqs]


def test_a_batch_of_a_gap_is_taken_once_after_a_restart(tmp_path: Path) -> None:
    """Seqs 2 and 3 went missing (counted lost) and come after the restart: a broker that held
    them back, a gateway that sent them again. The saved state had only the next seq, so both
    were refused as duplicates (and acknowledged: gone)."""
    store = SqliteStore(tmp_path / "hub.sqlite", Metrics())
    ing = ingestor()
    assert _seqs(ing, [0, 1, 4, 5]) == ["accepted"] * 4
    _save(store, ing, T0)
    assert store.db.execute("SELECT missing FROM gateways").fetchall() == [("2-3",)]
    ing = _restarted(store)
    assert _seqs(ing, [3, 3]) == ["accepted", "duplicate"]
    assert _seqs(ing, [0, 1, 4, 5]) == ["duplicate"] * 4
    _save(store, ing, T0 + 1)
    # a second restart: seq 3 is taken now, seq 2 still owed
    ing = _restarted(store)
    assert _seqs(ing, [3, 2, 2]) == ["duplicate", "accepted", "duplicate"]
    got = ing.handle(msg(batch(seq=6)))
    assert isinstance(got, Accepted)
    assert got.lost_before == 0
    assert ing.metrics.gateway_lost.labels(SITE, "gw-1")._value.get() == 0  # counted before
    store.close()


def test_a_batch_from_before_the_first_heard_is_taken_once_after_a_restart(
    tmp_path: Path,
) -> None:
    """The overload case: a gateway's seq 3 and 4 were dropped unacknowledged while the hub
    took seq 5 and 6 (its first heard); the tick with those was stored, and the hub restarted
    before the broker sent seq 3 and 4 again. Below the saved next seq, they were refused as
    duplicates."""
    store = SqliteStore(tmp_path / "hub.sqlite", Metrics())
    ing = ingestor()
    assert _seqs(ing, [5, 6, 3]) == ["accepted"] * 3
    _save(store, ing, T0)
    ing = _restarted(store)
    assert _seqs(ing, [4, 4, 3, 5, 6]) == ["accepted"] + ["duplicate"] * 4
    # as far back as a gap is remembered, as in a run that heard the boot first
    ing = ingestor()
    first = MAX_GAP_MEMORY + 5
    assert _seqs(ing, [first]) == ["accepted"]
    _save(store, ing, T0 + 1)
    ing = _restarted(store)
    assert _seqs(ing, [5, 4]) == ["accepted", "duplicate"]
    store.close()


def test_gaps_are_written_when_they_change_and_kept_until_then(tmp_path: Path) -> None:
    """Each gateway heard saves its row every tick; its gaps (up to MAX_GAP_MEMORY lone seqs)
    go with it only when they changed. A new boot's row drops the old boot's gaps."""
    store = SqliteStore(tmp_path / "hub.sqlite", Metrics())
    ing = ingestor()
    assert _seqs(ing, [0, 2]) == ["accepted"] * 2
    _save(store, ing, T0)
    assert _seqs(ing, [3, 4]) == ["accepted"] * 2
    assert not ing.state[(SITE, "gw-1")].gaps_changed  # the row goes without them
    _save(store, ing, T0 + 1)
    (saved,) = store.saved_gateways()
    assert (saved.next_seq, saved.gaps) == (5, SeqGaps(frozenset({1}), 0, frozenset()))
    # another boot's row without gaps (not as the service writes it) leaves none of the old
    row = SavedGateway(SITE, "gw-1", "ef01", 3, 0.05, T0, gaps=None)
    store.commit(TickRecord(SITE, T0 + 3, _table([], [], []), [], []), (), [row])
    assert [g.gaps for g in store.saved_gateways()] == [SeqGaps()]
    store.close()


def test_the_gaps_of_a_tick_given_up_are_written_with_the_next(tmp_path: Path) -> None:
    """A tick's transaction given up (a broken disk, a lock held past every attempt) carried the
    gaps that changed in it; the next tick's row carries none (unchanged since), so without
    the given-up row written with it the file kept the gaps of before."""
    store = SqliteStore(tmp_path / "hub.sqlite", Metrics())
    store.start()
    ing = ingestor()
    assert _seqs(ing, [0, 3]) == ["accepted"] * 2
    done: list[bool] = []

    def tick(t: float) -> TickWrite:
        rows = [
            SavedGateway(site, gw, s.boot, s.next_seq, s.offset_s, s.last_sent, s.unsaved_gaps())
            for (site, gw), s in ing.state.items()
        ]
        record = TickRecord(SITE, t, _table([], [], []), [], [])
        return TickWrite(record, (), rows, done.append)

    def drop_ticks(db: sqlite3.Connection) -> None:
        db.execute("DROP TABLE ticks")

    def create_ticks(db: sqlite3.Connection) -> None:
        db.execute("CREATE TABLE ticks (site TEXT PRIMARY KEY, t REAL NOT NULL) WITHOUT ROWID")

    store.submit(drop_ticks)
    store.submit_tick(tick(T0))  # fails every attempt
    store.submit(create_ticks)
    assert _seqs(ing, [4]) == ["accepted"]
    store.submit_tick(tick(T0 + 1))
    store.close()
    assert done == [False, True]
    store = SqliteStore(tmp_path / "hub.sqlite", Metrics())
    (saved,) = store.saved_gateways()
    assert (saved.next_seq, saved.gaps) == (5, SeqGaps(frozenset({1, 2}), 0, frozenset()))
    store.close()


@given(st.sets(st.integers(0, 2**40), max_size=MAX_GAP_MEMORY))
def test_seqs_are_kept_as_runs_and_read_back(seqs: set[int]) -> None:
    text = seqs_text(seqs)
    assert seqs_of_text(text) == seqs
    assert (text is None) == (not seqs)


def test_a_row_s_gaps_are_written_as_runs_and_a_hand_made_flood_refused(tmp_path: Path) -> None:
    assert seqs_text([7, 3, 4, 5, 9, 10]) == "3-5,7,9-10"
    store = SqliteStore(tmp_path / "hub.sqlite", Metrics())
    store.db.execute(
        "INSERT INTO gateways VALUES (?, 'gw-1', 'abcd', 10, 0.05, NULL, '0-99999999999', 3, NULL)",
        (SITE,),
    )
    with pytest.raises(StoreError, match="gateways row s1/gw-1: '0-99999999999'"):
        store.saved_gateways()
    store.close()
