"""The hub's stages without servers: ingest bookkeeping, outputs, spill, registry, CLI exits."""

from __future__ import annotations

import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import SecretStr

from beacon_hub.consent import Consent, encode_consent
from beacon_hub.engine import FixTable
from beacon_hub.errors import ConfigError, CsvError
from beacon_hub.health import UNKNOWN_GATEWAY, Metrics
from beacon_hub.hubconfig import InfluxConfig, IngestConfig, load_hub_config
from beacon_hub.ingest import (
    DECODE_REASONS,
    FUTURE_RESYNC_BATCHES,
    MAX_GAP_MEMORY,
    PAST_RESYNC_BATCHES,
    Accepted,
    ConsentUpdate,
    GatewayUpdate,
    Inbound,
    Ingestor,
    Rejected,
)
from beacon_hub.outputs import SiteOutputs
from beacon_hub.registry import Asset, AssetRegistry, import_assets, read_assets
from beacon_hub.stores import (
    InfluxStore,
    SqliteStore,
    TickRecord,
    TickWrite,
    _Spill,
    fix_points,
    open_sqlite,
)
from beacon_hub.wire import MAX_BATCH_BYTES, Event, ReadingBatch, decode_tracks, encode_batch

BEACON = "ibeacon:3d1a7b52-8c4e-4f0a-9b6d-2e5f8a1c7d40:1:{}"
SITE = "s1"
TOPIC = "beacons/s1/gateway/{}/readings"
T0 = 1_800_000_000.0


def batch(gw: str = "gw-1", seq: int = 0, sent: float = T0, boot: str = "abcd") -> bytes:
    return encode_batch(
        ReadingBatch(
            gw=gw,
            boot=boot,
            seq=seq,
            sent=sent,
            beacons=(BEACON.format(1),),
            b=(0, 0),
            dt_ms=(100.0, 500.0),
            rssi=(-60.0, -70.0),
            tx=(None, None),
        )
    )


def ingestor() -> Ingestor:
    return Ingestor({SITE: frozenset({"gw-1", "gw-2"})}, IngestConfig(), Metrics())


def msg(payload: bytes, arrival: float = T0 + 0.05, gw: str = "gw-1") -> Inbound:
    return Inbound(arrival, TOPIC.format(gw), payload, 1, 1)


def reason(result: Accepted | Rejected | ConsentUpdate | GatewayUpdate) -> str:
    """What became of a readings batch (`Ingestor.handle`'s other results are for other topics)."""
    assert isinstance(result, Accepted | Rejected), result
    return result.reason if isinstance(result, Rejected) else "accepted"


def test_sequence_gaps_are_counted_and_duplicates_dropped() -> None:
    ing = ingestor()
    assert reason(ing.handle(msg(batch(seq=0)))) == "accepted"
    got = ing.handle(msg(batch(seq=3), arrival=T0 + 3.05))
    assert isinstance(got, Accepted)
    assert got.lost_before == 2
    assert ing.metrics.gateway_lost.labels(SITE, "gw-1")._value.get() == 2
    assert reason(ing.handle(msg(batch(seq=3), arrival=T0 + 3.1))) == "duplicate"
    assert reason(ing.handle(msg(batch(seq=0), arrival=T0 + 3.1))) == "duplicate"
    # A reordered batch fills its gap once.
    assert reason(ing.handle(msg(batch(seq=1), arrival=T0 + 3.2))) == "accepted"
    assert reason(ing.handle(msg(batch(seq=1), arrival=T0 + 3.3))) == "duplicate"
    # A new boot starts a new sequence.
    assert reason(ing.handle(msg(batch(seq=0, boot="beef"), arrival=T0 + 4))) == "accepted"


def test_batches_from_before_a_gateways_first_heard_one_are_taken_once() -> None:
    """An overload dropped a gateway's seq 0 (unacknowledged) and took its seq 1 and 2; the
    broker sends seq 0 again only at the next connect, after them. The hub had never seen
    seq 0, yet refused it as a duplicate below the expected seq and acknowledged it: the batch
    was gone (tests/integration/test_hub_overload.py waited 60 s for it)."""
    ing = ingestor()
    assert reason(ing.handle(msg(batch(seq=1, sent=T0 + 1), arrival=T0 + 1.05))) == "accepted"
    assert reason(ing.handle(msg(batch(seq=2, sent=T0 + 2), arrival=T0 + 2.05))) == "accepted"
    got = ing.handle(msg(batch(seq=0), arrival=T0 + 3.1))
    assert isinstance(got, Accepted)
    assert got.lost_before == 0
    assert reason(ing.handle(msg(batch(seq=0), arrival=T0 + 3.2))) == "duplicate"
    assert reason(ing.handle(msg(batch(seq=2, sent=T0 + 2), arrival=T0 + 3.2))) == "duplicate"
    assert ing.metrics.gateway_lost.labels(SITE, "gw-1")._value.get() == 0
    # Remembered as far back as a gap is (MAX_GAP_MEMORY); older is taken for a duplicate.
    ing = ingestor()
    assert reason(ing.handle(msg(batch(seq=MAX_GAP_MEMORY + 5)))) == "accepted"
    assert reason(ing.handle(msg(batch(seq=5)))) == "accepted"
    assert reason(ing.handle(msg(batch(seq=4)))) == "duplicate"
    # A restored state is not a first hearing: the saved sequence covers what came before.
    ing = ingestor()
    ing.restore(SITE, "gw-1", "abcd", 3, 0.05, {})
    assert reason(ing.handle(msg(batch(seq=3)))) == "accepted"
    assert reason(ing.handle(msg(batch(seq=2)))) == "duplicate"


def test_a_gateway_named_consent_is_a_gateway() -> None:
    """Topics are told apart by their third level, not by a substring: a gateway or site whose
    id is "consent" (a valid name) had every batch refused as a bad consent topic."""
    ing = Ingestor({"consent": frozenset({"consent"})}, IngestConfig(), Metrics())
    payload = batch(gw="consent")
    item = Inbound(T0 + 0.05, "beacons/consent/gateway/consent/readings", payload, 1, 1)
    assert reason(ing.handle(item)) == "accepted"
    beacon = BEACON.format(1)
    payload = encode_consent(Consent(consent=True, t=T0, expires=None))
    decision = ing.handle(Inbound(T0, f"beacons/consent/consent/{beacon}", payload, 2, 1))
    assert isinstance(decision, ConsentUpdate), decision
    assert (decision.beacon, decision.consent) == (beacon, Consent(True, T0, None))


def test_a_boot_the_gateway_has_left_is_refused_not_taken_for_a_reboot() -> None:
    """A broker restored from its snapshot re-delivers batches of the gateway's previous boot
    (found by bench/soak.py): seen ones are duplicates, unseen ones stale, and neither resets
    the current boot's sequence."""
    ing = ingestor()
    for seq in range(3):
        assert reason(ing.handle(msg(batch(seq=seq, boot="aaaa")))) == "accepted"
    assert reason(ing.handle(msg(batch(seq=0, boot="bbbb"), arrival=T0 + 5))) == "accepted"
    assert reason(ing.handle(msg(batch(seq=1, boot="aaaa"), arrival=T0 + 6))) == "duplicate"
    assert reason(ing.handle(msg(batch(seq=7, boot="aaaa"), arrival=T0 + 6))) == "stale_boot"
    assert reason(ing.handle(msg(batch(seq=1, boot="bbbb"), arrival=T0 + 6))) == "accepted"
    assert reason(ing.handle(msg(batch(seq=0, boot="bbbb"), arrival=T0 + 6))) == "duplicate"
    # a restart remembers them too (the service passes the ledger's earlier boots)
    ing = ingestor()
    ing.restore(SITE, "gw-1", "bbbb", 2, 0.05, {"aaaa": 3})
    assert reason(ing.handle(msg(batch(seq=2, boot="aaaa")))) == "duplicate"
    assert reason(ing.handle(msg(batch(seq=3, boot="aaaa")))) == "stale_boot"
    assert reason(ing.handle(msg(batch(seq=2, boot="bbbb")))) == "accepted"


def test_the_ledger_gives_a_gateways_earlier_boots_newest_last(tmp_path: Path) -> None:
    store = SqliteStore(tmp_path / "hub.sqlite", Metrics())
    rows = [("aaaa", 0), ("aaaa", 4), ("bbbb", 0), ("cccc", 0), ("cccc", 1), ("dddd", 0)]
    store.db.executemany(
        "INSERT INTO batches VALUES (?, 'gw-1', ?, ?, 1, 1, 0, 0, 0, 0)",
        [(SITE, boot, seq) for boot, seq in rows],
    )
    store.db.commit()
    assert store.retired_boots(SITE, "gw-1", "dddd", 2) == {"bbbb": 1, "cccc": 2}
    assert list(store.retired_boots(SITE, "gw-1", "dddd", 16)) == ["aaaa", "bbbb", "cccc"]
    assert store.retired_boots(SITE, "gw-2", "dddd", 16) == {}
    store.close()


def test_an_absurd_seq_jump_does_not_blackhole_the_gateway() -> None:
    ing = ingestor()
    ing.handle(msg(batch(seq=0)))
    assert reason(ing.handle(msg(batch(seq=2**40)))) == "seq_jump"
    assert reason(ing.handle(msg(batch(seq=1)))) == "accepted"
    for k in range(FUTURE_RESYNC_BATCHES - 1):
        assert reason(ing.handle(msg(batch(seq=2**40 + k)))) == "seq_jump"
    assert reason(ing.handle(msg(batch(seq=2**40 + 9)))) == "accepted"  # it really jumped


def test_clock_offset_is_the_minimum_and_corrects_sample_times() -> None:
    ing = ingestor()
    skew = -3600.0  # the gateway's clock is an hour ahead
    for seq, latency in enumerate([0.30, 0.05, 0.20]):
        res = ing.handle(msg(batch(seq=seq, sent=T0 + seq - skew), arrival=T0 + seq + latency))
        assert isinstance(res, Accepted)
    assert isinstance(res, Accepted)  # the last batch's (mypy does not keep the loop's narrowing)
    st_ = ing.state[(SITE, "gw-1")]
    assert st_.offset_s == pytest.approx(skew + 0.05, abs=1e-3)
    # sample time = sent + offset - dt: within the minimum latency of the hub's clock
    assert res.readings.t.max() == pytest.approx(T0 + 2 + 0.05 - 0.1, abs=1e-3)


def test_batches_from_the_future_are_refused_until_the_clock_is_relearnt() -> None:
    ing = ingestor()
    ing.handle(msg(batch(seq=0)))
    for k in range(1, FUTURE_RESYNC_BATCHES):
        res = ing.handle(msg(batch(seq=k, sent=T0 + k + 600), arrival=T0 + k))
        assert reason(res) == "future"
    res = ing.handle(msg(batch(seq=9, sent=T0 + 609), arrival=T0 + 9))
    assert reason(res) == "accepted"  # the gateway's clock was stepped: followed now


def test_a_clock_stepped_back_is_relearnt_and_the_others_keep_theirs(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """gw-1 ran two hours ahead, then NTP stepped it back while its (boot, seq) went on: its
    readings were placed two hours in the past, refused as late for ever (the creep needs
    years). After PAST_RESYNC_BATCHES in a row they are placed where they belong."""
    ing = ingestor()
    ahead = 7200.0
    for k in range(5):
        for gw in ("gw-1", "gw-2"):
            skew = ahead if gw == "gw-1" else 0.0
            ing.handle(msg(batch(gw=gw, seq=k, sent=T0 + k + skew), T0 + k + 0.05, gw=gw))
    assert ing.state[(SITE, "gw-1")].offset_s == pytest.approx(-ahead + 0.05, abs=1e-3)
    offsets = []
    for k in range(5, 5 + PAST_RESYNC_BATCHES):
        for gw in ("gw-1", "gw-2"):
            res = ing.handle(msg(batch(gw=gw, seq=k, sent=T0 + k), T0 + k + 0.05, gw=gw))
            assert reason(res) == "accepted"
        offsets.append(ing.state[(SITE, "gw-1")].offset_s)
    assert offsets[:-1] == [pytest.approx(-ahead + 0.05, abs=1e-3)] * (PAST_RESYNC_BATCHES - 1)
    assert offsets[-1] == pytest.approx(0.05, abs=1e-3)
    assert isinstance(res, Accepted)
    assert res.gateway == "gw-2"
    assert ing.state[(SITE, "gw-2")].offset_s == pytest.approx(0.05, abs=1e-3)
    assert "s1/gw-1: clock stepped back by 7200.0 s" in caplog.text
    assert "gw-2: clock" not in caplog.text


def test_a_backlog_arriving_late_is_not_taken_for_a_clock_step() -> None:
    """A broker outage's backlog arrives long after it was sent, but its send times keep rising
    with seq: the offset stays (a relearn would place the live readings in the future)."""
    ing = ingestor()
    for k in range(3):
        ing.handle(msg(batch(seq=k, sent=T0 + k), T0 + k + 0.05))
    for k in range(3, 3 + 4 * PAST_RESYNC_BATCHES):  # buffered, delivered at once
        assert reason(ing.handle(msg(batch(seq=k, sent=T0 + k), T0 + 40.0))) == "accepted"
    assert ing.state[(SITE, "gw-1")].offset_s == pytest.approx(0.05, abs=0.01)  # + creep
    # a steady delay, then a reordered batch sent before the newest: no step either
    ing.handle(msg(batch(seq=30, sent=T0 + 30), T0 + 30.05))
    for k in range(31, 31 + 2 * PAST_RESYNC_BATCHES):
        ing.handle(msg(batch(seq=k, sent=T0 + k), T0 + k + 10.0))
    assert reason(ing.handle(msg(batch(seq=29, sent=T0 + 29), T0 + 45.0))) == "accepted"
    assert ing.state[(SITE, "gw-1")].offset_s == pytest.approx(0.05, abs=0.01)  # + creep


def test_a_restored_gateway_owes_no_clock_creep_for_the_downtime() -> None:
    ing = ingestor()
    ing.restore(SITE, "gw-1", "abcd", 10, 0.05)
    res = ing.handle(msg(batch(seq=10, sent=T0 - 30), arrival=T0))  # backlog after restart
    assert isinstance(res, Accepted)
    assert res.readings.t.max() == pytest.approx(T0 - 30 + 0.05 - 0.1, abs=1e-3)
    assert reason(ing.handle(msg(batch(seq=9)))) == "duplicate"


def test_a_clock_stepped_back_while_the_hub_was_down_is_seen_from_the_saved_send_time() -> None:
    """The saved state holds the last send time: the first batch after the restart is seen to
    go back, and the offset relearnt as live. Without it (state of schema 1) the saved offset
    stayed, the readings 120 s in the past."""
    for last_sent, offset_s in ((T0 - 1.0, 120.05), (None, 0.05)):
        ing = ingestor()
        ing.restore(SITE, "gw-1", "abcd", 10, 0.05, last_sent=last_sent)
        for k in range(PAST_RESYNC_BATCHES):
            res = ing.handle(msg(batch(seq=10 + k, sent=T0 - 120 + k), arrival=T0 + k + 0.05))
            assert reason(res) == "accepted"
        assert ing.state[(SITE, "gw-1")].offset_s == pytest.approx(offset_s, abs=0.01)


@pytest.mark.parametrize(
    ("topic_gw", "payload", "want"),
    [
        ("gw-9", batch(gw="gw-9"), "unknown_gateway"),
        ("gw-2", batch(gw="gw-1"), "gateway_mismatch"),
        ("GW-1", batch(), "bad_topic"),
        ("gw-1", b"\xff\xfe", "not_utf8"),
        ("gw-1", b"{", "not_json"),
        ("gw-1", b"[" * 100_000, "too_deep"),
        ("gw-1", b" " * (MAX_BATCH_BYTES + 1), "oversized"),
        ("gw-1", b'{"v":2}', "bad_version"),
        ("gw-1", b"[1]", "not_object"),
        ("gw-1", b'{"v":1,"gw":"gw-1"}', "bad_field"),
    ],
)
def test_bad_input_is_refused_with_its_reason(topic_gw: str, payload: bytes, want: str) -> None:
    ing = ingestor()
    res = ing.handle(Inbound(T0, TOPIC.format(topic_gw), payload, 1, 1))
    assert reason(res) == want
    assert isinstance(res, Rejected)
    label = topic_gw if topic_gw in ("gw-1", "gw-2") else UNKNOWN_GATEWAY
    assert ing.metrics.rejected_batches.labels(SITE, label, want)._value.get() == 1


def test_another_sites_batch_is_refused_as_not_ours_and_named() -> None:
    """Two hubs given one client id share a session, and each gets the other's sites: refused,
    naming the topic, and marked not ours, so the service leaves it unacknowledged for the hub
    that serves it (acknowledged, it was gone from the broker for good)."""
    ing = ingestor()
    topic = "beacons/site-b/gateway/gw-1/readings"
    res = ing.handle(Inbound(T0, topic, batch(), 1, 1))
    assert isinstance(res, Rejected)
    assert (res.reason, res.ours) == ("bad_topic", False)
    assert topic in res.detail
    ours = ing.handle(Inbound(T0, TOPIC.format("GW-1"), batch(), 1, 1))
    assert isinstance(ours, Rejected)
    assert ours.ours


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=3000))
def test_any_bytes_are_accepted_or_refused_with_a_known_reason(raw: bytes) -> None:
    res = ingestor().handle(msg(raw))
    assert reason(res) in (*DECODE_REASONS, "accepted", "gateway_mismatch")


def _table(
    beacons: list[str],
    x: list[float],
    zones: list[str | None],
    *,
    t: float = T0,
    accuracy_m: float = 2.0,
) -> FixTable:
    n = len(beacons)
    return FixTable(
        t=t,
        beacons=beacons,
        x=np.array(x),
        y=np.zeros(n),
        accuracy_m=np.full(n, accuracy_m),
        level=np.zeros(n, dtype=np.int64),
        zones=zones,
        kinds=[None] * n,
        speed_m_s=np.zeros(n),
        gateway_slots=np.zeros((n, 1), dtype=np.intp),
        gateway_mask=np.ones((n, 1), dtype=bool),
        gateway_ids=("gw-1",),
    )


def test_stored_ticks_rebuild_the_same_influx_points(tmp_path: Path) -> None:
    """What a hub restarted after a SIGKILL sends to InfluxDB again is what it sent first."""
    store = SqliteStore(tmp_path / "hub.sqlite", Metrics())
    b1, b2 = BEACON.format(1), BEACON.format(2)
    ticks = []
    for k in range(3):
        table = FixTable(
            t=T0 + k,
            beacons=[b1, b2],
            x=np.array([1.5 + k, 7.25]),
            y=np.array([2.0, 3.0]),
            accuracy_m=np.array([1.2, 4.5]),
            level=np.zeros(2, dtype=np.int64),
            zones=["aisle-1", None],
            kinds=["cart", None],
            speed_m_s=np.array([0.4, 0.0]),
            gateway_slots=np.array([[1, 0], [2, 0]], dtype=np.intp),
            gateway_mask=np.array([[True, True], [True, False]]),
            gateway_ids=("gw-1", "gw-2", "gw-3"),
        )
        events = [Event("zone_enter", T0 + k, SITE, b1, "aisle-1", {"n": k})] if k == 1 else []
        ticks.append(TickRecord(SITE, T0 + k, table, events, ["C-1", None]))
        store.commit(ticks[-1], (), ())
    again = store.recent_records(SITE, T0 + 0.5)
    assert [r.t for r in again] == [T0 + 1, T0 + 2]
    assert [fix_points(r) for r in again] == [fix_points(r) for r in ticks[1:]]
    assert store.recent_records(SITE, T0 + 2) == []
    store.close()


def test_ticks_waiting_for_the_writer_share_a_transaction_in_order(tmp_path: Path) -> None:
    """A backlog is committed several ticks at a time; jobs keep their order; every tick's
    acknowledgement runs once, after its commit."""
    store = SqliteStore(tmp_path / "hub.sqlite", Metrics())
    begins: list[str] = []
    store.db.set_trace_callback(lambda sql: begins.append(sql) if sql == "BEGIN" else None)
    store.start()
    gate = threading.Event()

    def busy(_db: sqlite3.Connection) -> None:
        gate.wait(10)

    store.submit(busy)  # the writer is busy: the next ticks queue up
    done: list[tuple[float, bool]] = []
    order: list[str] = []
    for k in range(3):
        t = T0 + k
        # beacon 2 is not heard in the last tick: its newest fix is the middle one's
        heard = [BEACON.format(1), BEACON.format(2)][: 2 if k < 2 else 1]
        record = TickRecord(
            SITE,
            t,
            _table(heard, [1.0 + k, 2.0 + k][: len(heard)], [None] * len(heard)),
            [],
            [None] * len(heard),
        )

        def acknowledge(ok: bool, t: float = t) -> None:
            done.append((t, ok))

        store.submit_tick(TickWrite(record, (), (), acknowledge))

    def after_ticks(_db: sqlite3.Connection) -> None:
        order.append(f"after ticks: {len(done)} acknowledged")

    store.submit(after_ticks)
    gate.set()
    store.close()
    assert done == [(T0, True), (T0 + 1, True), (T0 + 2, True)]
    assert order == ["after ticks: 3 acknowledged"]
    assert len(begins) == 1  # three ticks, one transaction
    db = open_sqlite(tmp_path / "hub.sqlite")
    assert db.execute("SELECT count(*), count(DISTINCT t) FROM fixes").fetchone() == (5, 3)
    assert db.execute("SELECT beacon, t, x FROM latest ORDER BY beacon").fetchall() == [
        (BEACON.format(1), T0 + 2, 3.0),
        (BEACON.format(2), T0 + 1, 3.0),
    ]
    assert db.execute(
        "SELECT t, x FROM fixes WHERE site = ? AND beacon = ? ORDER BY t", (SITE, BEACON.format(2))
    ).fetchall() == [(T0, 2.0), (T0 + 1, 3.0)]


def test_a_write_that_fails_inside_its_transaction_does_not_stop_later_ticks(
    tmp_path: Path,
) -> None:
    """Another process holding the write lock past the busy timeout (an `erase`, an `assets
    import`): the registry's save fails inside its transaction, which must not stay open (every
    later BEGIN failed until a restart), and a tick that meets the lock is tried again."""
    path = tmp_path / "hub.sqlite"
    metrics = Metrics()
    store = SqliteStore(path, metrics)
    store.db.execute("PRAGMA busy_timeout = 50")  # the hub waits 10 s; the test need not
    store.start()
    registry = AssetRegistry([Asset(BEACON.format(1), "P-1")])
    registry.seen([BEACON.format(1)], T0)
    other = sqlite3.connect(path, isolation_level=None)
    other.execute("BEGIN IMMEDIATE")
    store.submit(registry.save_job())
    assert store.flush(30)
    errors = metrics.store_errors.labels("sqlite")
    assert errors._value.get() == 1
    stored: list[bool] = []
    store.submit_tick(
        TickWrite(TickRecord(SITE, T0, _table([BEACON.format(1)], [1.0], [None]), [], [None]),
                  [], [], stored.append)
    )  # fmt: skip
    deadline = time.monotonic() + 30
    while errors._value.get() < 2 and time.monotonic() < deadline:
        time.sleep(0.01)  # the tick's first attempt meets the lock
    other.execute("COMMIT")
    other.close()
    assert store.flush(30)
    assert stored == [True]
    registry.seen([BEACON.format(1)], T0 + 1)  # the next tick's save, as the hub makes them
    store.submit(registry.save_job())
    store.close()
    db = sqlite3.connect(path)
    assert db.execute("SELECT count(*) FROM fixes").fetchone() == (1,)
    assert db.execute("SELECT last_seen FROM assets").fetchone() == (T0 + 1,)
    db.close()


def test_a_failed_tick_transaction_is_reported_and_the_writer_goes_on(tmp_path: Path) -> None:
    store = SqliteStore(tmp_path / "hub.sqlite", Metrics())
    store.start()
    done: list[bool] = []

    def drop_ticks(db: sqlite3.Connection) -> None:
        db.execute("DROP TABLE ticks")

    def create_ticks(db: sqlite3.Connection) -> None:
        db.execute("CREATE TABLE ticks (site TEXT PRIMARY KEY, t REAL NOT NULL) WITHOUT ROWID")

    store.submit(drop_ticks)
    record = TickRecord(SITE, T0, _table([BEACON.format(1)], [1.0], [None]), [], [None])
    store.submit_tick(TickWrite(record, (), (), done.append))
    store.submit(create_ticks)
    store.submit_tick(TickWrite(record, (), (), done.append))
    store.close()
    assert done == [False, True]
    db = open_sqlite(tmp_path / "hub.sqlite")
    assert db.execute("SELECT count(*) FROM fixes").fetchone() == (1,)  # the failed one rolled back


def test_outputs_publish_on_change_refresh_and_clear_lost_tracks() -> None:
    sent: list[tuple[str, bytes, int, bool]] = []

    def publish(topic: str, payload: bytes, qos: int, retain: bool) -> bool:
        sent.append((topic, payload, qos, retain))
        return True

    out = SiteOutputs(SITE, publish, 30.0)
    b = BEACON.format(1)
    out.tick(T0, _table([b], [1.0], [None]), [], [None])
    out.tick(T0 + 1, _table([b], [1.5], [None]), [], [None])  # moved 0.5 <= accuracy/2
    out.tick(T0 + 2, _table([b], [3.0], [None]), [], [None])  # moved 2 > 1
    out.tick(T0 + 3, _table([b], [3.0], ["z1"]), [], [None])  # zone change
    out.tick(T0 + 40, _table([b], [3.0], ["z1"]), [], [None])  # refresh
    track = [s for s in sent if "/track/" in s[0]]
    assert len(track) == 4
    assert all(s[3] for s in track)  # retained
    assert len([s for s in sent if s[0].endswith("/tracks")]) == 5
    lost = Event("beacon_lost", T0 + 80, SITE, b)
    out.tick(T0 + 80, _table([], [], []), [lost], [])
    assert sent[-1] == (f"beacons/{SITE}/track/{b}", b"", 1, True)
    assert sent[-2][0] == f"beacons/{SITE}/event/beacon_lost"


def test_a_huge_tick_is_split_into_tracks_messages_within_the_limit() -> None:
    sent: list[bytes] = []

    def keep(topic: str, payload: bytes, _qos: int, _retain: bool) -> bool:
        if topic.endswith("/tracks"):
            sent.append(payload)
        return True

    out = SiteOutputs(SITE, keep, 30)
    n = 20_000
    beacons = [BEACON.format(i) for i in range(n)]
    out.tick(T0, _table(beacons, [1.23456789] * n, ["aisle-1"] * n), [], [None] * n)
    assert len(sent) > 1
    assert all(len(p) <= MAX_BATCH_BYTES for p in sent)
    parts = [decode_tracks(p) for p in sent]
    assert [b for m in parts for b in m.beacons] == beacons
    assert {m.t for m in parts} == {T0}
    assert parts[0].x[0] == 1.235


def test_spill_keeps_order_and_its_bound(tmp_path: Path) -> None:
    spill = _Spill(tmp_path, max_bytes=100)
    assert spill.append(b"a" * 40, 4) == 0
    assert spill.append(b"b" * 40, 4) == 0
    assert spill.append(b"c" * 40, 4) == 4  # the oldest went to stay within 100 bytes
    assert spill.oldest() == (b"b" * 40, 4, tmp_path / "000000000001-4.lp")
    again = _Spill(tmp_path, max_bytes=100)  # a restarted hub finds it, in order
    assert [again.oldest(), again.points] == [(b"b" * 40, 4, tmp_path / "000000000001-4.lp"), 8]
    again.pop_oldest()
    assert again.oldest() == (b"c" * 40, 4, tmp_path / "000000000002-4.lp")
    again.pop_oldest()
    assert (again.oldest(), again.points, again.bytes) == (None, 0, 0)


def test_influx_writer_outlives_a_spill_file_removed_behind_its_back(tmp_path: Path) -> None:
    """An operator's clean-up (or a second hub on the same folder) deletes a spilled batch: its
    points are counted lost, and the writer goes on spilling and then writing the rest."""
    endpoint = _V2Endpoint(fail_first=10**9)
    spill = tmp_path / "spill"
    cfg = InfluxConfig(
        version=2, url=endpoint.url, bucket="bk", org="acme", token=SecretStr("tok"),
        spill_dir=spill, flush_interval_s=0.05, retry_max_s=0.1, batch_points=100,
    )  # fmt: skip
    metrics = Metrics()
    store = InfluxStore(cfg, metrics)
    try:
        store.write_lines([f"fix,site=s1 x={i} {i}" for i in range(10)])
        _wait_for(lambda: len(list(spill.glob("*.lp"))) == 1)
        for f in spill.glob("*.lp"):
            f.unlink()
        later = [f"fix,site=s1 x={i} {i}" for i in range(10, 15)]
        store.write_lines(later)
        _wait_for(lambda: metrics.store_dropped.labels(store.name)._value.get() == 10)
        endpoint.failures = 0
        assert store.flush(30.0)
        assert store._thread.is_alive()
    finally:
        store.close()
        endpoint.close()
    written = [ln for _, _, body in endpoint.requests for ln in body.decode().split("\n")]
    assert written == later


def _wait_for(condition: Callable[[], bool], timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.01)


def test_assets_from_csv_and_yaml_and_import(tmp_path: Path) -> None:
    csv_path = tmp_path / "a.csv"
    csv_path.write_text(f"beacon,label,kind\n{BEACON.format(1)},P-1,pallet\n{BEACON.format(2)},,\n")
    assets = read_assets(csv_path)
    assert [(a.label, a.kind) for a in assets] == [("P-1", "pallet"), (None, None)]
    yaml_path = tmp_path / "a.yaml"
    yaml_path.write_text(f"assets:\n  - beacon: '{BEACON.format(3)}'\n    label: P-3\n")
    assert read_assets(yaml_path)[0].label == "P-3"
    db = open_sqlite(tmp_path / "h.sqlite")
    assert import_assets(db, assets) == 2
    # The label moves to another beacon: still unique.
    import_assets(db, [Asset(BEACON.format(3), "P-1")])
    reg = AssetRegistry.from_db(db)
    assert reg.by_label("P-1") is not None
    assert reg.label(BEACON.format(3)) == "P-1"
    assert reg.label(BEACON.format(1)) is None
    db.close()


@pytest.mark.parametrize(
    "text",
    [
        "beacon,label\nnot-an-id,P-1\n",
        "beacon,label,kind\n" + BEACON.format(1) + ",P-1,truck\n",
        "beacon,label\n" + BEACON.format(1) + ",P-1\n" + BEACON.format(2) + ",P-1\n",
    ],
)
def test_bad_asset_files_say_where(tmp_path: Path, text: str) -> None:
    path = tmp_path / "bad.csv"
    path.write_text(text)
    with pytest.raises(CsvError, match=r"bad\.csv"):
        read_assets(path)


def _cli(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "beacon_hub.cli", *args],
        capture_output=True,
        text=True,
        check=False,
        cwd=cwd,
        timeout=60,
    )


def test_run_with_a_config_error_exits_1_naming_file_line_and_key(tmp_path: Path) -> None:
    root = Path(__file__).resolve().parents[2]
    cfg = tmp_path / "hub.yaml"
    cfg.write_text(f"sites:\n  - site: {root / 'config/store.yaml'}\nbroker:\n  url: http://x\n")
    done = _cli("run", "--config", str(cfg), cwd=tmp_path)
    assert done.returncode == 1
    assert f"{cfg}:4: broker.url" in done.stderr


@pytest.mark.parametrize(
    "key", ["stores.sqlite.path", "stores.influx.spill_dir", "privacy.consent_file"]
)
def test_a_path_no_file_can_have_is_refused_naming_the_key(key: str) -> None:
    """A NUL in a path passed validation and raised ValueError where the file was opened."""
    root = Path(__file__).resolve().parents[2]
    with pytest.raises(ConfigError, match=rf"command line {key}: {key}: a path cannot contain"):
        load_hub_config(None, sites=[root / "config/store.yaml"], overrides={key: "a\0b"})


def test_assets_import_with_a_bad_csv_exits_1(tmp_path: Path) -> None:
    path = tmp_path / "bad.csv"
    path.write_text("beacon,label\nnope,P-1\n")
    done = _cli("assets", "import", str(path), "--db", str(tmp_path / "h.sqlite"), cwd=tmp_path)
    assert done.returncode == 1
    assert "bad.csv:2: column beacon" in done.stderr


class _V2Endpoint:
    """A stand-in for InfluxDB 2.x's `POST /api/v2/write` (no 2.x server is installed here; the
    v1 path runs against a real InfluxDB 1.6 in tests/integration). Answers 503 `fail_first`
    times, then 204, and keeps what it accepted."""

    def __init__(self, fail_first: int) -> None:
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer  # noqa: PLC0415

        self.requests: list[tuple[str, dict[str, str], bytes]] = []
        self.failures = fail_first
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                if outer.failures > 0:
                    outer.failures -= 1
                    self.send_response(503)
                else:
                    outer.requests.append((self.path, dict(self.headers), body))
                    self.send_response(204)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *_: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def test_influx_v2_path_retries_then_writes_in_order(tmp_path: Path) -> None:
    endpoint = _V2Endpoint(fail_first=2)
    cfg = InfluxConfig(
        version=2,
        url=endpoint.url,
        bucket="bk",
        org="acme",
        token=SecretStr("tok"),
        spill_dir=tmp_path / "spill",
        flush_interval_s=0.05,
        retry_max_s=0.1,
        batch_points=3,
    )
    store = InfluxStore(cfg, Metrics())
    try:
        lines = [f"fix,site=s1 x={i} {i}" for i in range(10)]
        for k in range(0, 10, 2):
            store.write_lines(lines[k : k + 2])
        assert store.flush(30.0)
    finally:
        store.close()
        endpoint.close()
    path, headers, _ = endpoint.requests[0]
    assert path.startswith("/api/v2/write?")
    for param in ("org=acme", "bucket=bk", "precision=ms"):
        assert param in path
    assert headers["Authorization"] == "Token tok"
    written = [ln for _, _, body in endpoint.requests for ln in body.decode().split("\n")]
    assert written == lines  # every point, in order, after two refusals


def test_outputs_forget_beacons_that_come_and_go_and_publish_the_same_tracks() -> None:
    """Waves of new ids, each fixed for a while and then gone (half with beacon_lost, half
    without: privacy.py withholds it once consent ends), among beacons that stay or come back
    after gaps. What is remembered stays bounded, and each track published is what DESIGN.md's
    rule gives remembering every beacon for ever."""
    refresh = 10.0
    sent: list[tuple[str, bytes]] = []

    def publish(topic: str, payload: bytes, _qos: int, _retain: bool) -> bool:
        sent.append((topic, payload))
        return True

    out = SiteOutputs(SITE, publish, refresh)
    want: list[str] = []
    held: dict[str, tuple[float, float, str | None]] = {}  # the rule, remembering all
    rng = np.random.default_rng(5)
    stay = [BEACON.format(k) for k in range(40)]
    sizes = []
    previous: list[str] = []
    for k in range(400):
        t = T0 + k
        wave = [f"eddystone:{k // 20:020x}:{j:012x}" for j in range(300)]
        beacons = [b for b in stay if rng.random() < 0.8]
        # away for 4, 9, 10 or 13 ticks at a time: back before, at and after the refresh
        beacons += [BEACON.format(1000 + p) for p in (4, 9, 10, 13) if (k // p) % 2 == 0]
        beacons += wave
        x = np.round(rng.uniform(0.0, 0.7, len(beacons)), 3).tolist()
        zones: list[str | None] = [None if rng.random() < 0.9 else "z1" for _ in beacons]
        now = set(beacons)
        gone = [b for b in previous if b not in now and int(b[-12:], 16) % 2 == 0]
        events = [Event("beacon_lost", t, SITE, b) for b in gone]
        previous = wave
        out.tick(t, _table(beacons, x, zones, t=t, accuracy_m=1.0), events, [None] * len(beacons))
        for i, b in enumerate(beacons):
            h = held.get(b)
            if h is None or t - h[0] >= refresh or h[2] != zones[i] or abs(x[i] - h[1]) > 0.5:
                held[b] = (t, x[i], zones[i])
                want.append(b)
        for b in gone:
            held.pop(b, None)
        sizes.append((len(out._last), out._last.t.shape[0]))
    got = [topic.rsplit("/", 1)[1] for topic, payload in sent if "/track/" in topic and payload]
    assert got == want
    assert len(held) == 20 * 150 + 150 + 44  # the rule remembers those lost without an event
    # the current wave and the one before (within the refresh), the 44 that stay, and
    # forgotten slots not yet reclaimed
    assert max(s for s, _ in sizes[50:]) <= 3 * (2 * 300 + 44)
    assert max(c for _, c in sizes[50:]) <= 4_096
