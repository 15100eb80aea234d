"""Stores: where fixes and events go, behind one small interface (`Store`).

- `SqliteStore`: the embedded default, and always the hub's own state (gateway sequence numbers
  and clock offsets, the last tick, the batch ledger, assets). One transaction per tick, WAL.
- `InfluxStore`: InfluxDB 1.x through `/write`, or 2.x/3.x/Cloud/1.8+ through influxdb-client's
  write API; the line protocol is built with influxdb-client's `Point` either way. Batching on
  a writer thread, retry with backoff, a bounded on-disk spill while the database is
  unreachable, replayed oldest first so the store fills in order.

The schema of both is in docs/hub.md. The SQLite file carries its layout's version
(`PRAGMA user_version`, SCHEMA_VERSION): `open_sqlite` brings an older file up to it in one
transaction and refuses a newer or unknown one.
"""

from __future__ import annotations

import collections
import functools
import json
import logging
import math
import operator
import queue
import re
import sqlite3
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, NamedTuple, Protocol, cast

import numpy as np
from influxdb_client.client.influxdb_client import InfluxDBClient
from influxdb_client.client.write.point import Point
from influxdb_client.client.write_api import SYNCHRONOUS
from influxdb_client.domain.write_precision import WritePrecision

from beacon_hub.engine import FixTable
from beacon_hub.errors import BeaconHubError
from beacon_hub.health import Metrics
from beacon_hub.hubconfig import InfluxConfig
from beacon_hub.ingest import MAX_GAP_MEMORY, RateLimitedLog, SeqGaps
from beacon_hub.privacy import Retention
from beacon_hub.registry import CONTROL_CHARS
from beacon_hub.wire import Event

__all__ = [
    "ALL_ZONES",
    "EVENT_MEASUREMENT",
    "FIX_MEASUREMENT",
    "SCHEMA_VERSION",
    "ErasureFeed",
    "InfluxStore",
    "LedgerEntry",
    "QueryTimeoutError",
    "SavedGateway",
    "SqliteReader",
    "SqliteStore",
    "Store",
    "StoreError",
    "TickRecord",
    "TickWrite",
    "check_schema_version",
    "ensure_policies",
    "erase_spilled",
    "erasure_guards",
    "fix_points",
    "open_sqlite",
    "policy_hours",
    "upgrade_sqlite",
]

log = logging.getLogger(__name__)

FIX_MEASUREMENT = "fix"
EVENT_MEASUREMENT = "event"
RETRY_MIN_S = 0.5
"""First wait after a failed write; doubles up to `retry_max_s`."""
MAX_MEMORY_POINTS = 1_000_000
"""Points held in memory for the writer thread (about 150 MB of line protocol); beyond this
the writer is stuck in a call, and new points go to the spill directly."""
ALL_ZONES = "*"
"""Zone and kind of the `occupancy` row that holds a sample's total."""
SQLITE_BUSY_TIMEOUT_S = 10.0
"""Wait for a lock held by a reader (the dashboard, an `assets import`) before failing."""
UNSTORABLE_LOG_EVERY_S = 60.0
"""A fix with a non-finite position or accuracy is skipped and counted; warned about at most
this often (the writer must not log 10,000 lines a tick if the engine ever sends such ticks)."""


def storable_fixes(table: FixTable) -> list[int] | None:
    """The rows of a tick both stores keep, or None for all of them (the usual case).

    A fix whose x, y or accuracy_m is not finite has no place to be stored: SQLite turns NaN
    into NULL (its NOT NULL columns then fail the whole transaction of up to
    MAX_TICKS_PER_TRANSACTION ticks) and Point silently leaves the field out. Both stores skip
    such a fix, count it in `store_dropped` and warn (UNSTORABLE_LOG_EVERY_S)."""
    ok = np.isfinite(table.x) & np.isfinite(table.y) & np.isfinite(table.accuracy_m)
    if bool(ok.all()):
        return None
    keep: list[int] = np.flatnonzero(ok).tolist()
    return keep


def _count_unstorable(metrics: Metrics, store: str, warn: RateLimitedLog, skipped: int) -> None:
    metrics.store_dropped.labels(store).inc(skipped)
    warn.warning(
        (store, "unstorable"),
        "%s: %d fixes with a non-finite x, y or accuracy_m not stored",
        store,
        skipped,
    )


class StoreError(BeaconHubError):
    """A store cannot be opened or written for a reason a retry will not fix."""


@dataclass(frozen=True, slots=True)
class TickRecord:
    """What one tick of one site produced, as the stores take it."""

    site: str
    t: float
    fixes: FixTable
    events: Sequence[Event]
    labels: Sequence[str | None]
    """Asset label per fix (registry), or None."""


@dataclass(frozen=True, slots=True)
class LedgerEntry:
    """One readings batch processed: what the engine did with its samples."""

    site: str
    gateway: str
    boot: str
    seq: int
    samples: int
    accepted: int
    late: int
    impossible_rssi: int
    arrival: float


@dataclass(frozen=True, slots=True)
class SavedGateway:
    site: str
    gateway: str
    boot: str
    next_seq: int
    offset_s: float | None
    last_sent: float | None = None
    """The newest in-order batch's send time (gateway clock); None: not known (a row saved at
    schema version 1)."""
    gaps: SeqGaps | None = None
    """What the boot may still send below `next_seq` that the hub never took. Written: None
    when unchanged since the gateway's last row (the saved ones stay; GatewayState.unsaved_gaps).
    Read: never None (empty for a row saved before schema version 4)."""


class Store(Protocol):
    """What the service needs of a fix store."""

    name: str

    def write(self, record: TickRecord) -> None:
        """Take one tick; must not block on the network."""

    def flush(self, timeout_s: float) -> bool:
        """Push everything out; True if nothing is left waiting."""

    def backlog(self) -> int:
        """Points accepted but not yet in the database."""

    def close(self) -> None: ...


# ------------------------------------------------------------------------------------- SQLite

SCHEMA_VERSION = 5
"""The layout of the hub's SQLite file that this code reads and writes, kept in the file's
`PRAGMA user_version`. Releases before versions were kept left it at 0 (their layout is version
1, _SCHEMA_V1). A change of layout raises it by one and adds its step to _MIGRATIONS."""

_SCHEMA_V1 = """
CREATE TABLE IF NOT EXISTS fixes (
    site TEXT NOT NULL, beacon TEXT NOT NULL, t REAL NOT NULL,
    x REAL NOT NULL, y REAL NOT NULL, level INTEGER NOT NULL, accuracy_m REAL NOT NULL,
    zone TEXT, kind TEXT, label TEXT, speed_m_s REAL, gateways TEXT
);
CREATE INDEX IF NOT EXISTS fixes_by_beacon ON fixes (site, beacon, t);
CREATE INDEX IF NOT EXISTS fixes_by_time ON fixes (t);
CREATE INDEX IF NOT EXISTS fixes_by_kind ON fixes (kind, t);
CREATE TABLE IF NOT EXISTS latest (
    site TEXT NOT NULL, beacon TEXT NOT NULL, t REAL NOT NULL,
    x REAL NOT NULL, y REAL NOT NULL, level INTEGER NOT NULL, accuracy_m REAL NOT NULL,
    zone TEXT, label TEXT,
    PRIMARY KEY (site, beacon)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS events (
    site TEXT NOT NULL, t REAL NOT NULL, type TEXT NOT NULL, beacon TEXT NOT NULL,
    zone TEXT, data TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS events_by_beacon ON events (site, beacon, t);
CREATE INDEX IF NOT EXISTS events_by_type ON events (site, type, t);
CREATE TABLE IF NOT EXISTS batches (
    site TEXT NOT NULL, gateway TEXT NOT NULL, boot TEXT NOT NULL, seq INTEGER NOT NULL,
    samples INTEGER NOT NULL, accepted INTEGER NOT NULL, late INTEGER NOT NULL,
    impossible_rssi INTEGER NOT NULL, arrival REAL NOT NULL, tick_t REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS batches_by_gateway ON batches (site, gateway, boot, seq);
CREATE TABLE IF NOT EXISTS gateways (
    site TEXT NOT NULL, gateway TEXT NOT NULL, boot TEXT NOT NULL, next_seq INTEGER NOT NULL,
    offset_s REAL, PRIMARY KEY (site, gateway)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS ticks (site TEXT PRIMARY KEY, t REAL NOT NULL) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS occupancy (
    site TEXT NOT NULL, t REAL NOT NULL, zone TEXT NOT NULL, kind TEXT NOT NULL,
    count INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS occupancy_by_time ON occupancy (site, t);
CREATE TABLE IF NOT EXISTS assets (
    beacon TEXT PRIMARY KEY, label TEXT UNIQUE, kind TEXT,
    battery_mv INTEGER, temperature_c REAL, last_seen REAL
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS promotion_decisions (
    site TEXT NOT NULL, t REAL NOT NULL, rule TEXT NOT NULL, zone TEXT, beacon TEXT,
    decision TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS promotion_decisions_by_rule ON promotion_decisions (site, rule, t);
CREATE INDEX IF NOT EXISTS promotion_decisions_by_beacon ON promotion_decisions (beacon);
CREATE INDEX IF NOT EXISTS promotion_decisions_sent ON promotion_decisions (t)
    WHERE decision = 'sent';
"""
"""Version 1, the layout of every release before versions were kept; frozen: a change of
layout is a step of _MIGRATIONS. `promotion_decisions` is promotions.py's table; those releases
created it only once promotion rules were configured, so a file of version 0 may lack it.
IF NOT EXISTS: applied to such a file, it adds that table (and any index it lacks)."""
_OPTIONAL_IN_V0 = frozenset({"promotion_decisions"})


def _add_gateway_last_sent(db: sqlite3.Connection) -> None:
    """Each gateway's last send time, so a clock stepped back while the hub was down is seen at
    its first batch after the restart, as it is live (ingest.PAST_RESYNC_BATCHES)."""
    db.execute("ALTER TABLE gateways ADD COLUMN last_sent REAL")


def _add_consent(db: sqlite3.Connection) -> None:
    """The consent decisions by pseudonym (consent.ConsentStore), so a restarted hub knows them
    before its session's backlog, which the broker sends ahead of the retained decisions."""
    db.execute(
        "CREATE TABLE IF NOT EXISTS consent (anon TEXT PRIMARY KEY, consent INTEGER NOT NULL, "
        "t REAL NOT NULL, expires REAL) WITHOUT ROWID"
    )


def _add_gateway_gaps(db: sqlite3.Connection) -> None:
    """Each gateway's seqs below its next one that the hub never took (ingest.SeqGaps: its gaps,
    its first seq heard and the earlier ones taken since), so a restarted hub takes such a batch
    when it comes instead of refusing it as a duplicate. NULL: none (as for every row before)."""
    db.execute("ALTER TABLE gateways ADD COLUMN missing TEXT")
    db.execute("ALTER TABLE gateways ADD COLUMN first_seq INTEGER")
    db.execute("ALTER TABLE gateways ADD COLUMN early TEXT")


ERASED_TABLES = ("fixes", "latest", "events", "promotion_decisions")
"""The tables whose rows carry a beacon and a data time `t`, which an erasure's tombstone keeps
closed to the erased pseudonym's past (erasure_guards)."""


def _add_erasures(db: sqlite3.Connection) -> None:
    """The tombstones of `erase` (privacy.erase_sqlite): each erased pseudonym and when it was
    erased (wall clock), written in the erase's own transaction with its guards
    (erasure_guards). The InfluxDB writer reads them as well (ErasureFeed). Kept
    ERASURE_KEEP_S, pruned by the retention job."""
    db.execute(
        "CREATE TABLE IF NOT EXISTS erasures (beacon TEXT PRIMARY KEY, erased_at REAL NOT NULL)"
        " WITHOUT ROWID"
    )


def erasure_guards(db: sqlite3.Connection, *, on: bool) -> None:
    """A trigger per table of ERASED_TABLES that ignores any insert of a tombstoned pseudonym's
    rows dated at or before its erasure (on), or none (off); in the caller's transaction.

    A running hub's SQLite writer may hold such ticks queued (MAX_PENDING_JOBS), a restarted hub
    may tick a backlog from before the erasure; rows of later ticks (consent still given) go in.
    In the database, not in the hub's code: every connection obeys them, an older hub's too.
    Only while there are tombstones (`erase` adds them, the retention job drops them with the
    last one): each costs about 1 us per row inserted (10,000 fixes: 23 -> 34 ms in memory)."""
    for table in ERASED_TABLES:
        if on:
            db.execute(
                f"CREATE TRIGGER IF NOT EXISTS {table}_erased BEFORE INSERT ON {table}"  # noqa: S608  # fixed names
                " WHEN EXISTS (SELECT 1 FROM erasures WHERE beacon = NEW.beacon"
                " AND NEW.t <= erased_at) BEGIN SELECT RAISE(IGNORE); END"
            )
        else:
            db.execute(f"DROP TRIGGER IF EXISTS {table}_erased")


_MIGRATIONS: tuple[Callable[[sqlite3.Connection], None], ...] = (
    _add_gateway_last_sent,
    _add_consent,
    _add_gateway_gaps,
    _add_erasures,
)
"""Step k takes a file from version k + 1 to k + 2. All the steps a file needs run in order in
the one transaction that opens it: a file is at the version it had or at SCHEMA_VERSION, never
in between."""

_Columns = dict[str, tuple[tuple[str, str, int, int], ...]]
"""Table -> its columns as (name, declared type, not null, position in the primary key)."""


def seqs_text(seqs: Iterable[int]) -> str | None:
    """Seqs as the `gateways` table keeps them: ascending runs, `first-last` or a lone seq,
    joined by commas (`3-7,12`); None for none. A gap is mostly one run (what a broker lost, an
    overload's drops), so a gateway's row stays short however many seqs it owes."""
    ordered = sorted(seqs)
    runs: list[str] = []
    i = 0
    while i < len(ordered):
        j = i
        while j + 1 < len(ordered) and ordered[j + 1] == ordered[j] + 1:
            j += 1
        runs.append(str(ordered[i]) if i == j else f"{ordered[i]}-{ordered[j]}")
        i = j + 1
    return ",".join(runs) or None


def seqs_of_text(text: str | None) -> frozenset[int]:
    """`seqs_text` read back; ValueError for what it does not write, or for more seqs than a
    gateway's state holds (MAX_GAP_MEMORY): a row changed by hand must not fill the memory."""
    if not text:
        return frozenset()
    seqs: set[int] = set()
    for run in text.split(","):
        first, dash, last = run.partition("-")
        lo, hi = int(first), int(last) if dash else int(first)
        if lo < 0 or hi < lo or len(seqs) + hi - lo >= MAX_GAP_MEMORY:
            raise ValueError(f"{run!r} in {text!r}: not a run of at most {MAX_GAP_MEMORY} seqs")
        seqs.update(range(lo, hi + 1))
    return frozenset(seqs)


def _gateway_row(g: SavedGateway) -> tuple[object, ...]:
    """The parameters of `gateways`' upsert (SqliteStore._insert_tick): the row, then whether
    its gaps are to be written."""
    if g.gaps is None:
        gaps: tuple[object, ...] = (None, None, None, False)
    else:
        gaps = (seqs_text(g.gaps.missing), g.gaps.first_seq, seqs_text(g.gaps.early), True)
    return (g.site, g.gateway, g.boot, g.next_seq, g.offset_s, g.last_sent, *gaps)


def gateway_lists(table: FixTable) -> list[str]:
    """Each fix's gateways joined by ';', in slot order, for all fixes at once.

    Beacons share few gateway sets (a beacon hears its nearest few), so each distinct set is
    joined once and the strings are spread back by index: the writer thread then holds the GIL
    for a few hundred joins a tick, not one per fix."""
    if len(table) == 0:
        return []
    used = np.where(table.gateway_mask, table.gateway_slots, -1).astype(np.int64)
    ids = table.gateway_ids
    base, width = len(ids) + 1, used.shape[1]
    if base**width < 2**62:
        # one integer per set (digits base len(ids) + 1): a 1-D unique instead of a row sort
        key = ((used + 1) * base ** np.arange(width, dtype=np.int64)).sum(axis=1)
        _, first, inverse = np.unique(key, return_index=True, return_inverse=True)
        sets = used[first]
    else:
        sets, inverse = np.unique(used, axis=0, return_inverse=True)
    joined = np.array([";".join([ids[g] for g in row if g >= 0]) for row in sets.tolist()])
    names: list[str] = joined[inverse.reshape(-1)].tolist()
    return names


def _record_of_rows(
    site: str, t: float, rows: list[tuple[Any, ...]], events: list[Event]
) -> TickRecord:
    """A TickRecord rebuilt from stored fix rows (`recent_records`' column order)."""
    lists = [str(r[10] or "").split(";") if r[10] else [] for r in rows]
    ids = tuple(sorted({g for gws in lists for g in gws}))
    slot_of = {g: i for i, g in enumerate(ids)}
    width = max((len(g) for g in lists), default=0)
    slots = np.zeros((len(rows), width), dtype=np.intp)
    mask = np.zeros((len(rows), width), dtype=bool)
    for i, gws in enumerate(lists):
        slots[i, : len(gws)] = [slot_of[g] for g in gws]
        mask[i, : len(gws)] = True
    table = FixTable(
        t=t,
        beacons=[str(r[1]) for r in rows],
        x=np.array([r[2] for r in rows], dtype=np.float64),
        y=np.array([r[3] for r in rows], dtype=np.float64),
        accuracy_m=np.array([r[5] for r in rows], dtype=np.float64),
        level=np.array([r[4] for r in rows], dtype=np.int64),
        zones=[r[6] or None for r in rows],
        kinds=[r[7] for r in rows],
        speed_m_s=np.array([r[9] if r[9] is not None else np.nan for r in rows]),
        gateway_slots=slots,
        gateway_mask=mask,
        gateway_ids=ids,
    )
    return TickRecord(site, t, table, events, [r[8] for r in rows])


def open_sqlite(path: Path) -> sqlite3.Connection:
    """The hub's SQLite database at SCHEMA_VERSION: created if new, brought up from an older
    version in one transaction; a file of a newer version or of a layout we do not know is
    refused (StoreError) and left as it was."""
    db: sqlite3.Connection | None = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        db = sqlite3.connect(
            path, timeout=SQLITE_BUSY_TIMEOUT_S, isolation_level=None, check_same_thread=False
        )
        db.execute("PRAGMA journal_mode=WAL")
        # NORMAL in WAL mode: a power cut may lose the last transactions, never corrupt.
        db.execute("PRAGMA synchronous=NORMAL")
        # Deleted rows (retention, a shopper's `erase`) overwritten with zeros, not left in free
        # space: Debian's SQLite is built with it on, python.org's and others' off.
        db.execute("PRAGMA secure_delete=ON")
        upgrade_sqlite(db, path)
    except (OSError, sqlite3.Error, StoreError) as e:
        if db is not None:
            db.close()
        if isinstance(e, StoreError):
            raise
        raise StoreError(f"cannot open SQLite store {path}: {e}") from e
    return db


def check_schema_version(db: sqlite3.Connection, path: Path) -> int:
    """The file's schema version; StoreError if a newer release wrote it (what this code
    would read or delete there may not be all there is)."""
    version = int(db.execute("PRAGMA user_version").fetchone()[0])
    if version > SCHEMA_VERSION:
        raise StoreError(
            f"{path}: the database is at schema version {version}, newer than this beacon-hub's"
            f" {SCHEMA_VERSION}: a later release wrote it. Run that release (or a later one),"
            " or give stores.sqlite.path another file"
        )
    return version


def upgrade_sqlite(db: sqlite3.Connection, path: Path) -> None:
    """Bring the open file to SCHEMA_VERSION, or refuse it; one transaction either way
    (open_sqlite's step; `erase` calls it too, as it opens the file without creating it).

    IMMEDIATE takes the write lock before the version is read: two processes opening one old
    file at once (the hub, an `assets import`) migrate it once, one after the other."""
    db.execute("BEGIN IMMEDIATE")
    try:
        at_open = version = check_schema_version(db, path)
        tables = _columns(db)
        new = version == 0 and not tables
        if not new:
            # Ours as its version says, of a release before versions were kept (0: version 1's
            # layout), or not ours at all (another program may use user_version too).
            optional = _OPTIONAL_IN_V0 if version == 0 else frozenset()
            _require(tables, max(version, 1), path, at_open, optional)
        if version == 0:
            if not new:
                log.info("%s: written before schema versions were kept: taken as version 1", path)
            for statement in _statements(_SCHEMA_V1):
                db.execute(statement)
            version = 1
        for step in _MIGRATIONS[version - 1 :]:
            if not new:
                log.info(
                    "%s: schema version %d -> %d (%s)", path, version, version + 1, step.__name__
                )
            step(db)
            version += 1
        if at_open != SCHEMA_VERSION:
            db.execute(f"PRAGMA user_version = {SCHEMA_VERSION:d}")
        db.execute("COMMIT")
    except BaseException:
        _roll_back(db)
        raise


def _require(
    found: _Columns,
    version: int,
    path: Path,
    at_open: int,
    optional: frozenset[str] = frozenset(),
) -> None:
    """StoreError unless `found` has the tables and columns of `version` (`optional` tables
    may be missing); tables of others are left alone."""
    problems: list[str] = []
    for table, columns in _layout(version).items():
        have = found.get(table)
        if have is None:
            if table not in optional:
                problems.append(f"no table {table}")
        elif have != columns:
            problems.append(
                f"table {table} has columns ({_described(have)}), expected ({_described(columns)})"
            )
    if problems:
        raise StoreError(
            f"{path}: not a beacon-hub database this release knows (schema version {at_open},"
            f" this beacon-hub's {SCHEMA_VERSION}): {'; '.join(problems)}"
        )


def _statements(script: str) -> list[str]:
    """A script's statements, to run one by one: executescript would COMMIT the transaction
    they belong in (sqlite3's legacy transaction control)."""
    return [s for s in script.split(";") if s.strip()]


def _columns(db: sqlite3.Connection) -> _Columns:
    names = [
        str(r[0])
        for r in db.execute(
            "SELECT name FROM sqlite_master"
            " WHERE type = 'table' AND substr(name, 1, 7) != 'sqlite_'"
        )
    ]
    return {
        name: tuple(
            (str(c), str(t), int(nn), int(pk))
            for c, t, nn, pk in db.execute(
                'SELECT name, type, "notnull", pk FROM pragma_table_info(?) ORDER BY cid', (name,)
            )
        )
        for name in names
    }


@functools.cache
def _layout(version: int) -> _Columns:
    """The tables and columns of a file of `version`, as _SCHEMA_V1 and _MIGRATIONS build it
    (in memory): a version's layout is written down once, in the steps that make it."""
    db = sqlite3.connect(":memory:", isolation_level=None)
    try:
        for statement in _statements(_SCHEMA_V1):
            db.execute(statement)
        for step in _MIGRATIONS[: version - 1]:
            step(db)
        return _columns(db)
    finally:
        db.close()


def _described(columns: tuple[tuple[str, str, int, int], ...]) -> str:
    return ", ".join(
        " ".join(w for w in (name, type_, "NOT NULL" * notnull, "PRIMARY KEY" * (pk > 0)) if w)
        for name, type_, notnull, pk in columns
    )


Job = Callable[[sqlite3.Connection], None]


@dataclass(frozen=True)
class TickWrite:
    """One tick for the writer thread: its fixes and events, the batches they came from and the
    gateways' state, and what to do once they are committed (acknowledge the batches)."""

    record: TickRecord
    ledger: Sequence[LedgerEntry]
    gateways: Sequence[SavedGateway]
    then: Callable[[bool], None]
    """Called on the writer thread with True once committed, False if the write failed."""


MAX_TICKS_PER_TRANSACTION = 8
"""Ticks already waiting for the writer are committed in one transaction, up to this many. Live,
the writer keeps up and each tick is its own transaction; while a backlog drains, each beacon's
index page is written once per transaction instead of once per tick. Measured here (2026-12-02,
10,000 beacons a tick, 200 ticks in): 384 ms a tick in its own transaction, 215 ms in groups of
8. The queue's bound (MAX_PENDING_JOBS) still holds the backlog."""

_HISTORY_ORDER = operator.itemgetter(0, 1, 2)
"""A fixes row's (site, beacon, t): the order of the history index `fixes_by_beacon`."""

TICK_COMMIT_ATTEMPTS = 3
"""A tick group's transaction is tried this many times before its ticks are given up (counted
in store_errors, logged): a lock held past the busy timeout (an `erase` scanning the fixes
table, an `assets import`) passes; a full or broken disk does not, and the hub goes on."""
TICK_RETRY_BACKOFF_S = 1.0
"""Pause before the second attempt, twice this before the third, on top of the busy timeout."""

MAX_PENDING_JOBS = 8
"""Ticks waiting for the SQLite writer. When full, the service thread waits (back-pressure on
the inbox, then on the broker): a slow disk slows the hub down, it does not lose data."""


class SqliteStore:
    """Fixes, events and the hub's state in one SQLite file; one transaction per tick.

    Writes run on a writer thread of their own (sqlite3 releases the GIL while it works, so
    this overlaps with decoding and the engine). The service reads its state before starting
    the writer; afterwards every use of the connection is a job on the writer thread.
    """

    name = "sqlite"

    def __init__(self, path: Path, metrics: Metrics, *, fixes: bool = True) -> None:
        self.path = path
        self.metrics = metrics
        self.keep_fixes = fixes
        self.db = open_sqlite(path)
        self._jobs: queue.Queue[Job | TickWrite | None] = queue.Queue(maxsize=MAX_PENDING_JOBS)
        self._thread: threading.Thread | None = None
        self._log = RateLimitedLog(UNSTORABLE_LOG_EVERY_S, logger=log)
        self._given_up: dict[tuple[str, str], SavedGateway] = {}
        """The newest gateway rows of tick groups given up (TICK_COMMIT_ATTEMPTS; writer thread),
        written with the next group: a later row carries its gaps only when they change again,
        and the batches of such a group were acknowledged all the same."""

    # -- writer thread

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="beacon-hub-sqlite")
        self._thread.start()

    def submit(self, job: Job) -> None:
        """Run `job(connection)` on the writer thread, in order; blocks while the queue is full."""
        if self._thread is None:
            job(self.db)
        else:
            self._jobs.put(job)

    def submit_tick(self, tick: TickWrite) -> None:
        """A tick to commit, after the jobs before it; ticks waiting together share a
        transaction (MAX_TICKS_PER_TRANSACTION)."""
        if self._thread is None:
            self._commit_ticks([tick])
        else:
            self._jobs.put(tick)

    def _run(self) -> None:
        pending: collections.deque[Job | TickWrite | None] = collections.deque()
        while True:
            job = pending.popleft() if pending else self._jobs.get()
            if job is None:
                return
            if isinstance(job, TickWrite):
                group = [job]
                while len(group) < MAX_TICKS_PER_TRANSACTION and not pending:
                    try:
                        nxt = self._jobs.get_nowait()
                    except queue.Empty:
                        break
                    if isinstance(nxt, TickWrite):
                        group.append(nxt)
                    else:
                        pending.append(nxt)  # runs after this group: submission order
                self._commit_ticks(group)
                continue
            try:
                job(self.db)
            except Exception:
                # A job that failed inside its own transaction must not leave it open: every
                # later BEGIN would fail, and with it every tick until a restart.
                _roll_back(self.db)
                log.exception("SQLite store %s: a write failed", self.path)
                self.metrics.store_errors.labels(self.name).inc()

    def _commit_ticks(self, group: Sequence[TickWrite]) -> None:
        ticks = [(w.record, w.ledger, w.gateways) for w in group]
        if self._given_up:  # first: the group's own rows come after them
            record, ledger, gateways = ticks[0]
            ticks[0] = (record, ledger, [*self._given_up.values(), *gateways])
        ok = False
        for attempt in range(TICK_COMMIT_ATTEMPTS):
            if attempt:
                time.sleep(TICK_RETRY_BACKOFF_S * attempt)
            try:
                self.commit_many(ticks)
            except Exception:  # the writer thread must outlive any one write
                said = ", ".join(f"{w.record.site} {w.record.t:.3f}" for w in group)
                log.exception(
                    "SQLite store %s: ticks not stored (attempt %d of %d): %s",
                    self.path, attempt + 1, TICK_COMMIT_ATTEMPTS, said,
                )  # fmt: skip
                continue
            ok = True
            break
        if ok:
            self._given_up.clear()
        else:
            for g in (g for w in group for g in w.gateways):
                key = (g.site, g.gateway)
                before = self._given_up.get(key)
                if g.gaps is None and before is not None:  # unchanged since that row
                    self._given_up[key] = replace(g, gaps=before.gaps)
                else:
                    self._given_up[key] = g
        for w in group:
            w.then(ok)

    def backlog(self) -> int:
        return self._jobs.qsize()

    # -- state

    def saved_gateways(self) -> list[SavedGateway]:
        rows = self.db.execute(
            "SELECT site, gateway, boot, next_seq, offset_s, last_sent, missing, first_seq, early"
            " FROM gateways"
        )
        saved = []
        for site, gw, boot, next_seq, offset_s, last_sent, missing, first_seq, early in rows:
            try:
                gaps = SeqGaps(seqs_of_text(missing), first_seq, seqs_of_text(early))
            except ValueError as e:
                raise StoreError(f"{self.path}: gateways row {site}/{gw}: {e}") from e
            saved.append(SavedGateway(site, gw, boot, next_seq, offset_s, last_sent, gaps))
        return saved

    def retired_boots(self, site: str, gateway: str, current: str, limit: int) -> dict[str, int]:
        """The gateway's earlier boots in the ledger, oldest first, with their next seq."""
        rows = self.db.execute(
            "SELECT boot, max(seq) + 1, max(rowid) AS newest FROM batches"
            " WHERE site = ? AND gateway = ? AND boot != ? GROUP BY boot"
            " ORDER BY newest DESC LIMIT ?",
            (site, gateway, current, limit),
        ).fetchall()
        return {str(boot): int(nxt) for boot, nxt, _ in reversed(rows)}

    def recent_records(self, site: str, after_t: float) -> list[TickRecord]:
        """The ticks of `site` after `after_t` as stored here, oldest first: a hub killed before
        its InfluxDB writer caught up sends them again at start (an identical point overwrites
        itself). Empty when `stores.sqlite.fixes` is off."""
        fixes: dict[float, list[tuple[Any, ...]]] = {}
        for row in self.db.execute(
            "SELECT t, beacon, x, y, level, accuracy_m, zone, kind, label, speed_m_s, gateways"
            " FROM fixes WHERE site = ? AND t > ? ORDER BY t, rowid",
            (site, after_t),
        ):
            fixes.setdefault(float(row[0]), []).append(row)
        events: dict[float, list[Event]] = {}
        for t, etype, beacon, zone, data in self.db.execute(
            "SELECT t, type, beacon, zone, data FROM events WHERE site = ? AND t > ?"
            " ORDER BY t, rowid",
            (site, after_t),
        ):
            events.setdefault(float(t), []).append(
                Event(type=etype, t=float(t), site=site, beacon=beacon, zone=zone,
                      data=json.loads(data))
            )  # fmt: skip
        return [
            _record_of_rows(site, t, fixes.get(t, []), events.get(t, []))
            for t in sorted(fixes.keys() | events.keys())
        ]

    def last_tick(self, site: str) -> float | None:
        row = self.db.execute("SELECT t FROM ticks WHERE site = ?", (site,)).fetchone()
        return None if row is None else float(row[0])

    # -- the per-tick transaction

    def write(self, record: TickRecord) -> None:
        self.submit(lambda _db: self.commit(record, (), ()))

    def commit(
        self,
        record: TickRecord,
        ledger: Iterable[LedgerEntry],
        gateways: Iterable[SavedGateway],
    ) -> None:
        """Fixes, events, the batches they came from and the gateway state, atomically."""
        self.commit_many([(record, ledger, gateways)])

    def commit_many(
        self,
        ticks: Sequence[tuple[TickRecord, Iterable[LedgerEntry], Iterable[SavedGateway]]],
    ) -> None:
        """Several ticks in one transaction, in order: all of them or none."""
        db = self.db
        skipped = 0
        try:
            db.execute("BEGIN")
            if self.keep_fixes:
                skipped = self._insert_fixes(db, [record for record, _, _ in ticks])
            for record, ledger, gateways in ticks:
                self._insert_tick(db, record, ledger, gateways)
            db.execute("COMMIT")
        except BaseException as e:
            _roll_back(db)  # whatever failed, the next BEGIN must work
            self.metrics.store_errors.labels(self.name).inc()
            if isinstance(e, sqlite3.Error):
                raise StoreError(f"SQLite store {self.path}: {e}") from e
            raise
        if self.keep_fixes:
            written = sum(len(r.fixes) + len(r.events) for r, _, _ in ticks) - skipped
            self.metrics.store_written.labels(self.name).inc(written)
        if skipped:
            _count_unstorable(self.metrics, self.name, self._log, skipped)

    @staticmethod
    def _insert_fixes(db: sqlite3.Connection, records: Sequence[TickRecord]) -> int:
        """The fixes of a transaction's ticks, and each beacon's newest in `latest`.

        Rows go in sorted by (site, beacon, t), the history index's order: the index is then
        walked once from end to end instead of being hit at 10,000 random places a tick
        (measured with 10,000 beacons a tick: 144 -> 124 ms a tick in transactions of one tick,
        85 -> 67 ms in transactions of five). A beacon's newest fix of the group is then the
        last of its run, so `latest` is written once per beacon, not once per tick.

        Fixes `storable_fixes` refuses are left out; returns how many."""
        rows: list[tuple[Any, ...]] = []
        skipped = 0
        for record in records:
            site, t, table = record.site, record.t, record.fixes
            n = len(table)
            if n == 0:
                continue
            start = len(rows)
            rows.extend(
                zip(
                    [site] * n,
                    table.beacons,
                    [t] * n,
                    table.x.tolist(),
                    table.y.tolist(),
                    table.level.tolist(),
                    table.accuracy_m.tolist(),
                    table.zones,
                    table.kinds,
                    record.labels,
                    table.speed_m_s.tolist(),
                    gateway_lists(table),
                    strict=True,
                )
            )
            keep = storable_fixes(table)
            if keep is not None:
                rows[start:] = [rows[start + i] for i in keep]
                skipped += n - len(keep)
        rows.sort(key=_HISTORY_ORDER)
        db.executemany("INSERT INTO fixes VALUES (?,?,?,?,?,?,?,?,?,?,?,?)", rows)
        newest = {(r[0], r[1]): r for r in rows} if len(records) > 1 else None
        db.executemany(
            "INSERT OR REPLACE INTO latest VALUES (?,?,?,?,?,?,?,?,?)",
            ((*r[:8], r[9]) for r in (rows if newest is None else newest.values())),
        )
        return skipped

    def _insert_tick(
        self,
        db: sqlite3.Connection,
        record: TickRecord,
        ledger: Iterable[LedgerEntry],
        gateways: Iterable[SavedGateway],
    ) -> None:
        site, t = record.site, record.t
        if self.keep_fixes and record.events:
            db.executemany(
                "INSERT INTO events VALUES (?,?,?,?,?,?)",
                [
                    (e.site, e.t, e.type, e.beacon, e.zone, json.dumps(dict(e.data)))
                    for e in record.events
                ],
            )
        db.executemany(
            "INSERT INTO batches VALUES (?,?,?,?,?,?,?,?,?,?)",
            [
                (
                    e.site,
                    e.gateway,
                    e.boot,
                    e.seq,
                    e.samples,
                    e.accepted,
                    e.late,
                    e.impossible_rssi,
                    e.arrival,
                    t,
                )
                for e in ledger
            ],
        )
        # A row's gaps are written only when they changed (gaps not None): a gateway's may run
        # to MAX_GAP_MEMORY lone seqs, and each gateway heard saves its row every tick. Else the
        # stored ones stay, unless the row is of another boot (they were that boot's). One
        # statement: rows of one gateway (a given-up group's, then the next) apply in order.
        db.executemany(
            "INSERT INTO gateways (site, gateway, boot, next_seq, offset_s, last_sent, missing,"
            " first_seq, early) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)"
            " ON CONFLICT (site, gateway) DO UPDATE SET"
            " missing = CASE WHEN ?10 OR boot != ?3 THEN ?7 ELSE missing END,"
            " first_seq = CASE WHEN ?10 OR boot != ?3 THEN ?8 ELSE first_seq END,"
            " early = CASE WHEN ?10 OR boot != ?3 THEN ?9 ELSE early END,"
            " boot = ?3, next_seq = ?4, offset_s = ?5, last_sent = ?6",
            [_gateway_row(g) for g in gateways],
        )
        db.execute("INSERT OR REPLACE INTO ticks VALUES (?, ?)", (site, t))

    def write_occupancy(
        self, site: str, t: float, occupancy: Mapping[str, Mapping[str, int]]
    ) -> None:
        """One occupancy sample (zone -> kind -> count) as rows of `occupancy`, on the writer
        thread. A row with zone and kind `*` carries the sample's total, so a sample with every
        zone empty still counts in the heat map's mean."""
        if not self.keep_fixes:
            return
        rows = [(site, t, z, k, n) for z, per in occupancy.items() for k, n in per.items()]
        rows.append((site, t, ALL_ZONES, ALL_ZONES, sum(r[4] for r in rows)))

        def job(db: sqlite3.Connection) -> None:
            db.execute("BEGIN")
            try:
                db.executemany("INSERT INTO occupancy VALUES (?,?,?,?,?)", rows)
                db.execute("COMMIT")
            except sqlite3.Error:
                db.execute("ROLLBACK")
                raise

        self.submit(job)

    def flush(self, timeout_s: float) -> bool:
        done = threading.Event()
        self.submit(lambda _db: done.set())
        return done.wait(timeout_s)

    def close(self) -> None:
        """Finish every queued job, then close."""
        if self._thread is not None:
            self._jobs.put(None)
            self._thread.join()
            self._thread = None
        self.db.close()


def _roll_back(db: sqlite3.Connection) -> None:
    """End a transaction a failed write left open (a no-op when none is)."""
    if db.in_transaction:
        db.execute("ROLLBACK")


# ------------------------------------------------------------------------- SQLite, read side

QUERY_BUDGET_S = 5.0
"""A dashboard query running longer than this is interrupted (sqlite3 progress handler): the
limits on ranges and rows make that rare, and a stuck reader must not pin a web thread."""
QUERY_CHECK_STEPS = 10_000
"""SQLite virtual-machine steps between deadline checks (microseconds of work)."""


class QueryTimeoutError(StoreError):
    """A read ran past QUERY_BUDGET_S and was interrupted."""


def _quantile(sorted_values: Sequence[float], q: float) -> float:
    """Linear interpolation between closest ranks (numpy's default method)."""
    pos = (len(sorted_values) - 1) * q
    lo = int(pos)
    hi = min(lo + 1, len(sorted_values) - 1)
    return sorted_values[lo] + (sorted_values[hi] - sorted_values[lo]) * (pos - lo)


class SqliteReader:
    """Read-only queries for the web server: its own connection per call (`mode=ro`), so it
    never shares the writer's connection or thread; WAL lets it read while the writer writes.
    Callers bound every range and row count; each query also has a time budget."""

    def __init__(self, path: Path, budget_s: float = QUERY_BUDGET_S) -> None:
        self.path = path
        self.budget_s = budget_s

    def _query(self, sql: str, params: Sequence[object]) -> list[tuple[Any, ...]]:
        uri = "file:" + urllib.parse.quote(str(self.path.resolve())) + "?mode=ro"
        try:
            db = sqlite3.connect(uri, uri=True, timeout=SQLITE_BUSY_TIMEOUT_S)
        except sqlite3.Error as e:
            raise StoreError(f"cannot read SQLite store {self.path}: {e}") from e
        deadline = time.monotonic() + self.budget_s
        db.set_progress_handler(lambda: int(time.monotonic() > deadline), QUERY_CHECK_STEPS)
        try:
            return db.execute(sql, params).fetchall()
        except sqlite3.OperationalError as e:
            if "interrupted" in str(e):
                raise QueryTimeoutError(f"query ran past {self.budget_s:g} s") from e
            raise StoreError(f"SQLite store {self.path}: {e}") from e
        except sqlite3.Error as e:
            raise StoreError(f"SQLite store {self.path}: {e}") from e
        finally:
            db.close()

    def history(
        self, site: str, beacon: str, since: float, until: float, limit: int
    ) -> tuple[list[tuple[float, float, float, int, float, str | None]], bool]:
        """(t, x, y, level, accuracy_m, zone) oldest first; the newest `limit` fixes of the
        range, and whether older ones were left out."""
        rows = self._query(
            "SELECT t, x, y, level, accuracy_m, zone FROM fixes "
            "WHERE site = ? AND beacon = ? AND t >= ? AND t <= ? ORDER BY t DESC LIMIT ?",
            (site, beacon, since, until, limit + 1),
        )
        truncated = len(rows) > limit
        out = [
            (float(r[0]), float(r[1]), float(r[2]), int(r[3]), float(r[4]), r[5])
            for r in rows[:limit]
        ]
        out.reverse()
        return out, truncated

    def events(
        self,
        site: str,
        since: float,
        until: float,
        limit: int,
        *,
        type_: str | None = None,
        beacon: str | None = None,
    ) -> list[Event]:
        """Events of the range, newest first."""
        sql = "SELECT t, type, beacon, zone, data FROM events WHERE site = ? AND t >= ? AND t <= ?"
        params: list[object] = [site, since, until]
        if type_ is not None:
            sql += " AND type = ?"
            params.append(type_)
        if beacon is not None:
            sql += " AND beacon = ?"
            params.append(beacon)
        sql += " ORDER BY t DESC LIMIT ?"
        params.append(limit)
        out = []
        for t, typ, b, zone, data in self._query(sql, params):
            try:
                parsed = json.loads(str(data))
            except ValueError:
                parsed = {}
            out.append(
                Event(
                    str(typ),
                    float(t),
                    site,
                    str(b),
                    None if zone is None else str(zone),
                    parsed if isinstance(parsed, dict) else {},
                )
            )
        return out

    def dwell(
        self, site: str, since: float, until: float, max_visits: int
    ) -> tuple[dict[str, dict[str, float]], bool]:
        """Per zone: visits (zone_exit events in the range), mean, median, p90 and max dwell in
        seconds; and whether the visits were cut at `max_visits` (the newest are kept)."""
        rows = self._query(
            "SELECT zone, json_extract(data, '$.dwell_s') FROM events "
            "WHERE site = ? AND type = 'zone_exit' AND t >= ? AND t <= ? AND zone IS NOT NULL "
            "ORDER BY t DESC LIMIT ?",
            (site, since, until, max_visits + 1),
        )
        truncated = len(rows) > max_visits
        by_zone: dict[str, list[float]] = {}
        for zone, dwell in rows[:max_visits]:
            if isinstance(dwell, int | float):
                by_zone.setdefault(str(zone), []).append(float(dwell))
        stats = {}
        for zone, values in by_zone.items():
            values.sort()
            stats[zone] = {
                "visits": float(len(values)),
                "mean_s": sum(values) / len(values),
                "median_s": _quantile(values, 0.5),
                "p90_s": _quantile(values, 0.9),
                "max_s": values[-1],
            }
        return stats, truncated

    def heat(
        self, site: str, since: float, until: float
    ) -> tuple[dict[str, dict[str, float]], int]:
        """Per zone: mean and peak beacon count over the occupancy samples of the range; and the
        number of samples."""
        rows = self._query(
            "SELECT zone, SUM(count), MAX(n) FROM ("
            "  SELECT zone, t, SUM(count) AS count, SUM(count) AS n FROM occupancy"
            "  WHERE site = ? AND t >= ? AND t <= ? GROUP BY zone, t"
            ") GROUP BY zone",
            (site, since, until),
        )
        samples = 0
        totals: dict[str, tuple[float, float]] = {}
        for zone, total, peak in rows:
            if zone == ALL_ZONES:
                continue
            totals[str(zone)] = (float(total), float(peak))
        count = self._query(
            "SELECT COUNT(*) FROM occupancy WHERE site = ? AND t >= ? AND t <= ? AND zone = ?",
            (site, since, until, ALL_ZONES),
        )
        samples = int(count[0][0]) if count else 0
        return {
            z: {"mean": total / samples if samples else 0.0, "peak": peak}
            for z, (total, peak) in totals.items()
        }, samples


# ----------------------------------------------------------------------------------- InfluxDB


_MS = cast(WritePrecision, WritePrecision.MS)
"""influxdb-client declares its precisions as str constants on the enum-like class."""


def _line(measurement: str, tags: dict[str, str], fields: dict[str, object], t_ms: int) -> str:
    """One line of line protocol through influxdb-client's Point (escaping, field types)."""
    point = Point.from_dict(
        {"measurement": measurement, "tags": tags, "fields": fields, "time": t_ms},
        write_precision=_MS,
    )
    line: str = point.to_line_protocol()
    return line


def _text(value: str) -> str:
    """A string field's value with control characters (registry.CONTROL_CHARS) as spaces. Point
    escapes quotes and backslashes in a string field but not a newline, which ends a line of
    line protocol (InfluxDB 1.6 parses the rest as a new, broken point, and the spill and the
    per-policy split read a batch line by line); the registry refuses them in labels, this keeps
    any other way in from breaking a batch."""
    return value if value.isprintable() else CONTROL_CHARS.sub(" ", value)


def fix_points(record: TickRecord) -> list[str]:
    """Line protocol of one tick (docs/hub.md, Schema); fixes `storable_fixes` refuses are
    left out."""
    return [line for _, _, line in _points(record, storable_fixes(record.fixes))]


def _points(
    record: TickRecord, keep: Sequence[int] | None
) -> Iterator[tuple[str | None, str, str]]:
    """(kind, beacon, line) of each point of one tick (of the fixes `keep`, None: all); an
    event's kind is its beacon's fix's in the same tick, or None (the caller looks it up)."""
    table, site = record.fixes, record.site
    t_ms = round(record.t * 1000)
    x, y = table.x.tolist(), table.y.tolist()
    acc, lvl, speed = table.accuracy_m.tolist(), table.level.tolist(), table.speed_m_s.tolist()
    gws = gateway_lists(table)
    for i in range(len(table)) if keep is None else keep:
        tags = {"site": site, "beacon": table.beacons[i]}
        kind = table.kinds[i]
        if kind is not None:
            tags["kind"] = kind
        fields: dict[str, object] = {
            "x": x[i],
            "y": y[i],
            "level": lvl[i],
            "accuracy_m": acc[i],
            "speed_m_s": speed[i],
            "zone": _text(table.zones[i] or ""),
            "gateways": _text(gws[i]),
        }
        label = record.labels[i]
        if label is not None:
            fields["label"] = _text(label)
        yield kind, table.beacons[i], _line(FIX_MEASUREMENT, tags, fields, t_ms)
    kinds: dict[str, str | None] | None = None
    for e in record.events:
        if kinds is None:
            kinds = dict(zip(table.beacons, table.kinds, strict=True))
        # beacon and zone are tags: points with equal tags and time overwrite each other, and
        # one tick may hold several events of one type (different beacons, overlapping zones).
        etags = {"site": e.site, "type": e.type, "beacon": e.beacon}
        if e.zone is not None:
            etags["zone"] = e.zone
        efields: dict[str, object] = {"data": json.dumps(dict(e.data), separators=(",", ":"))}
        line = _line(EVENT_MEASUREMENT, etags, efields, round(e.t * 1000))
        yield kinds.get(e.beacon), e.beacon, line


_RP_MARK = "#rp:"
"""Buffered and spilled lines headed for a retention policy start `#rp:{policy} `. A real line
of line protocol never starts with `#` (that is a comment), so unmarked lines (`write_lines`,
spill files of older versions) go to the database's default policy."""


def _marked(policy: str, line: str) -> str:
    return f"{_RP_MARK}{policy} {line}"


def _split_marked(body: bytes) -> dict[str | None, list[str]]:
    """A batch's lines grouped by retention policy (None: the database's default), in order."""
    groups: dict[str | None, list[str]] = {}
    for entry in body.decode().split("\n"):
        if entry.startswith(_RP_MARK):
            policy, _, line = entry[len(_RP_MARK) :].partition(" ")
            groups.setdefault(policy, []).append(line)
        else:
            groups.setdefault(None, []).append(entry)
    return groups


class _RefusedError(Exception):
    """The database refused a whole batch for good (malformed lines, 4xx): retrying will not
    help."""


class _Outcome(NamedTuple):
    """What the database did with a batch it answered: the points it did not store."""

    expired: int = 0
    """Dropped as older than the retention policy's duration (what retention asks for)."""
    refused: int = 0
    """Refused for good (a line it could not parse, a field type conflict); the rest stored."""
    reason: str = ""


class _PoliciesMissingError(Exception):
    """Retention policies the hub needs are missing and it may not create them (not admin)."""


Sender = Callable[[str | None, bytes], _Outcome]
"""Writes one batch of line protocol to a retention policy (None: the default; 2.x ignores it);
returns the points the database did not store although it took the batch. Raises
_RefusedError (none stored: drop) or anything else (retry)."""

BEYOND_RETENTION = re.compile(r"points beyond retention policy dropped=(\d+)")
"""InfluxDB 1.x answers 400 `partial write: points beyond retention policy dropped=N` and stores
the rest: those points are already past their retention, which is what retention asks for."""
PARTIAL_DROPPED = re.compile(r"dropped=(\d+)\s*$")
UNPARSED = "unable to parse '"
"""InfluxDB 1.x (services/httpd/handler.go) answers 400 `partial write: REASON dropped=N` when
it stored part of a batch: N counts points a shard refused (a field type conflict), but lines it
could not parse are listed one `unable to parse '...'` each with `dropped=0`. A 400 without
`partial write` stored nothing."""


def _v1_outcome(status: int, error: str) -> _Outcome | None:
    """The points a 1.x 400 `partial write` did not store; None if the answer is not one."""
    if status != 400 or not error.startswith("partial write"):
        return None
    expired = BEYOND_RETENTION.search(error)
    if expired:
        return _Outcome(expired=int(expired.group(1)))
    counted = PARTIAL_DROPPED.search(error)
    refused = max(error.count(UNPARSED), int(counted.group(1)) if counted else 0)
    return _Outcome(refused=refused, reason=error[:300])


def _v1_auth(cfg: InfluxConfig) -> dict[str, str]:
    if cfg.username is None:
        return {}
    return {"u": cfg.username, "p": cfg.password.get_secret_value() if cfg.password else ""}


_NO_PROXY = urllib.request.build_opener(urllib.request.ProxyHandler({}))
"""The database sits on the site network: a proxy from the environment must not see it."""


def _v1_sender(cfg: InfluxConfig) -> Sender:
    base = {"db": cfg.database, "precision": "ms", **_v1_auth(cfg)}

    def send(policy: str | None, body: bytes) -> _Outcome:
        params = dict(base)
        if policy or cfg.retention_policy:
            params["rp"] = policy or cfg.retention_policy or ""
        url = f"{cfg.url}/write?{urllib.parse.urlencode(params)}"
        request = urllib.request.Request(  # noqa: S310  # http(s) only, checked by the config
            url, body, {"Content-Type": "text/plain; charset=utf-8"}, method="POST"
        )
        try:
            with _NO_PROXY.open(request, timeout=cfg.timeout_s) as response:
                response.read()
        except urllib.error.HTTPError as e:
            with e:
                detail = e.read().decode(errors="replace")
            try:
                error = str(json.loads(detail).get("error", detail))
            except (ValueError, AttributeError):
                error = detail
            outcome = _v1_outcome(e.code, error)
            if outcome is not None:
                return outcome
            if e.code in (400, 413):
                raise _RefusedError(f"HTTP {e.code}: {detail[:300]}") from e
            raise
        return _Outcome()

    return send


def _v2_sender(cfg: InfluxConfig) -> tuple[Sender, Callable[[], None]]:
    client = InfluxDBClient(
        url=cfg.url,
        token=cfg.token.get_secret_value() if cfg.token else "",
        org=cfg.org,
        timeout=int(cfg.timeout_s * 1000),
    )
    api = client.write_api(write_options=SYNCHRONOUS)

    def send(_policy: str | None, body: bytes) -> _Outcome:
        try:
            api.write(bucket=cfg.bucket, org=cfg.org, record=body, write_precision=_MS)
        except Exception as e:  # ApiException carries the HTTP status; anything else: retry
            status = getattr(e, "status", None)
            if status in (400, 413):
                raise _RefusedError(f"HTTP {status}: {e}") from e
            raise
        return _Outcome()

    return send, client.close


# ------------------------------------------------------------------ InfluxDB retention policies

SHARD_1H_BELOW_H = 48
SHARD_1D_BELOW_H = 6 * 30 * 24
"""Shard group durations as InfluxDB 1.x picks them by default (1 h below 2 days, 1 day up to
6 months, 7 days beyond and for INF), given explicitly so an ALTER keeps them consistent."""


def policy_hours(days: float | None) -> int | None:
    """A retention in days as an InfluxDB duration in whole hours (at least the server's 1 h
    minimum), None for INF."""
    if days is None:
        return None
    return max(1, math.ceil(days * 24 - 1e-9))


def _shard_hours(hours: int | None) -> int:
    if hours is not None and hours < SHARD_1H_BELOW_H:
        return 1
    if hours is not None and hours <= SHARD_1D_BELOW_H:
        return 24
    return 168


def _go_duration_s(text: str) -> int:
    """SHOW RETENTION POLICIES' durations: `720h0m0s`, `0s` (INF)."""
    m = re.fullmatch(r"(?:(\d+)h)?(?:(\d+)m)?(?:(\d+)s)?", text)
    if m is None:
        raise ValueError(f"unexpected duration {text!r}")
    h, mi, sec = (int(g or 0) for g in m.groups())
    return h * 3600 + mi * 60 + sec


def _quote(name: str) -> str:
    return '"' + name.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _influxql(cfg: InfluxConfig, q: str) -> list[dict[str, Any]]:
    """One InfluxQL statement through 1.x /query. Not allowed -> _PoliciesMissingError; anything
    else (network, 5xx, an unknown database) raises to be retried."""
    body = urllib.parse.urlencode({"q": q, **_v1_auth(cfg)}).encode()
    request = urllib.request.Request(f"{cfg.url}/query", body, method="POST")  # noqa: S310
    try:
        with _NO_PROXY.open(request, timeout=cfg.timeout_s) as response:
            doc = json.loads(response.read())
    except urllib.error.HTTPError as e:
        with e:
            detail = e.read().decode(errors="replace")[:300]
        if e.code in (401, 403):
            raise _PoliciesMissingError(detail) from e
        raise
    results: list[dict[str, Any]] = doc.get("results", [])
    for r in results:
        if "error" in r:
            error = str(r["error"])
            if "authoriz" in error or "admin" in error:
                raise _PoliciesMissingError(error)
            raise StoreError(f"InfluxDB {cfg.url}: {q}: {error}")
    return results


def ensure_policies(
    cfg: InfluxConfig, wanted: Mapping[str, tuple[int | None, bool]]
) -> tuple[list[str], list[str]]:
    """Create or alter the retention policies `wanted` (name -> (hours or None for INF,
    required)) in `cfg.database`; returns the statements run and those this user may not run
    for policies that are not required. Raises _PoliciesMissingError naming what an admin has
    to run when a required one is refused."""
    db = _quote(cfg.database)
    found = _influxql(cfg, f"SHOW RETENTION POLICIES ON {db}")
    have = {
        str(row[0]): _go_duration_s(str(row[1]))
        for r in found
        for series in r.get("series", [])
        for row in series.get("values", [])
    }
    ran: list[str] = []
    refused: list[str] = []
    optional: list[str] = []
    for name, (hours, required) in wanted.items():
        duration = "INF" if hours is None else f"{hours}h"
        shard = f"{_shard_hours(hours)}h"
        if name not in have:
            q = (
                f"CREATE RETENTION POLICY {_quote(name)} ON {db} DURATION {duration} "
                f"REPLICATION 1 SHARD DURATION {shard}"
            )
        elif have[name] != (hours or 0) * 3600:
            q = (
                f"ALTER RETENTION POLICY {_quote(name)} ON {db} DURATION {duration} "
                f"SHARD DURATION {shard}"
            )
        else:
            continue
        try:
            _influxql(cfg, q)
        except _PoliciesMissingError:
            (refused if required else optional).append(q)
        else:
            ran.append(q)
    if refused:
        raise _PoliciesMissingError(
            f"InfluxDB {cfg.url}: user {cfg.username or '(none)'} may not manage retention "
            f"policies (needs admin); points wait in the spill until an admin runs: "
            + "; ".join(refused)
        )
    return ran, optional


MAX_BODY_BYTES = 5_000_000
"""Bytes of line protocol in one spill file and in one POST. InfluxDB 1.x refuses a body over
its `[http] max-body-size` (25,000,000 bytes by default, influxdb.conf) by closing the
connection while the body is still being sent, which reads as "unreachable" and was retried for
ever with everything queued behind it. A fifth of the default leaves room for a server
configured lower, and is still a thousand times a tick's line of a beacon (~250 bytes)."""


def _chunks(lines: Sequence[str], max_points: int, max_bytes: int) -> Iterator[list[str]]:
    """`lines` in order, in runs of at most max_points lines and max_bytes bytes joined by
    newlines (a single longer line makes a run of its own)."""
    run: list[str] = []
    size = 0
    for line in lines:
        n = len(line.encode()) + 1
        if run and (len(run) >= max_points or size + n > max_bytes):
            yield run
            run, size = [], 0
        run.append(line)
        size += n
    if run:
        yield run


_SPILL_NAME = re.compile(r"(\d+)-(\d+)\.lp")
"""A spill file's name: its place in the order and its points."""


def _spill_files(folder: Path) -> tuple[list[tuple[int, int, Path]], list[Path]]:
    """(index, points, path) of the spill files in `folder` in order, and the other `*.lp`
    files there (not ours: an operator's notes, a copy)."""
    ours: list[tuple[int, int, Path]] = []
    stray: list[Path] = []
    for f in folder.glob("*.lp"):
        m = _SPILL_NAME.fullmatch(f.name)
        if m is None:
            stray.append(f)
        else:
            ours.append((int(m.group(1)), int(m.group(2)), f))
    ours.sort()
    return ours, sorted(stray)


class _Spill:
    """Batches on disk, oldest first: `{n:012d}-{points}.lp`; bounded in bytes.

    A file removed behind the writer's back (an operator's clean-up, tmpfiles, a second hub
    given the same folder) is forgotten and its points counted in `vanished`; it must not stop
    the writer. A `*.lp` file whose name is not of that form is left alone (warned about)."""

    def __init__(self, folder: Path, max_bytes: int) -> None:
        self.folder = folder
        self.max_bytes = max_bytes
        folder.mkdir(parents=True, exist_ok=True)
        found, stray = _spill_files(folder)
        if stray:
            log.warning(
                "spill directory %s: ignoring files not named {n}-{points}.lp: %s",
                folder,
                ", ".join(f.name for f in stray),
            )
        self.files = [f for _, _, f in found]
        self._counts = {f: points for _, points, f in found}
        self._sizes = {f: f.stat().st_size for f in self.files}
        self.bytes = sum(self._sizes.values())
        self.points = sum(self._counts.values())
        self.vanished = 0
        """Points of files that disappeared from the folder, not yet reported."""
        self._next = found[-1][0] + 1 if found else 0

    def _points(self, f: Path) -> int:
        return self._counts[f]

    def __len__(self) -> int:
        return len(self.files)

    def append(self, body: bytes, points: int) -> int:
        """Store one batch; returns the points dropped to stay within max_bytes."""
        dropped = 0
        while self.files and self.bytes + len(body) > self.max_bytes:
            dropped += self.pop_oldest()
        path = self.folder / f"{self._next:012d}-{points}.lp"
        self._next += 1
        tmp = path.with_suffix(".tmp")
        tmp.write_bytes(body)
        tmp.replace(path)  # a crash leaves a whole file or none
        self.files.append(path)
        self._counts[path] = points
        self._sizes[path] = len(body)
        self.bytes += len(body)
        self.points += points
        return dropped

    def oldest(self) -> tuple[bytes, int, Path] | None:
        """The oldest batch still on disk, or None."""
        while self.files:
            f = self.files[0]
            try:
                return f.read_bytes(), self._points(f), f
            except FileNotFoundError:
                if not self._adopt_renamed(0):
                    self.vanished += self._forget_oldest()
        return None

    def pop_oldest(self) -> int:
        """Delete the oldest batch; returns its points. A copy `erase` wrote of it meanwhile
        (same place in the order, fewer points) goes too: what it holds was just sent."""
        f = self.files[0]
        points = self._forget_oldest()
        f.unlink(missing_ok=True)
        for other in self._same_place(f):
            other.unlink(missing_ok=True)
        return points

    def _same_place(self, f: Path) -> list[Path]:
        """The spill files of f's place in the order, by their names now (f's own included)."""
        m = _SPILL_NAME.fullmatch(f.name)
        if m is None:
            return []
        return [g for g in self.folder.glob(f"{m.group(1)}-*.lp") if _SPILL_NAME.fullmatch(g.name)]

    def _adopt_renamed(self, i: int) -> bool:
        """The i-th file is gone: if `erase` (erase_spilled) wrote it anew under its new point
        count, take that one in its place; False if there is none."""
        f = self.files[i]
        found = self._same_place(f)
        if not found:
            return False
        g = found[0]
        m = _SPILL_NAME.fullmatch(g.name)
        assert m is not None  # noqa: S101  # _same_place matched it
        try:
            size = g.stat().st_size
        except FileNotFoundError:
            return False
        self._replace(i, g, int(m.group(2)), size)
        return True

    def _replace(self, i: int, g: Path, points: int, size: int) -> None:
        f = self.files[i]
        self.bytes += size - self._sizes.pop(f)
        self.points += points - self._counts.pop(f)
        self.files[i] = g
        self._counts[g] = points
        self._sizes[g] = size

    def drop_lines(self, erased: Callable[[str], bool]) -> int:
        """Remove the lines `erased` picks from every file (an erasure's tombstone); returns
        how many. A file changed is written anew under its new point count, as erase_spilled
        does, and one left empty is removed."""
        removed = 0
        i = 0
        while i < len(self.files):
            f = self.files[i]
            try:
                lines = f.read_bytes().decode(errors="replace").split("\n")
            except FileNotFoundError:
                if self._adopt_renamed(i):
                    continue
                i += 1  # oldest() counts it when it comes to it
                continue
            kept = [line for line in lines if not erased(line)]
            if len(kept) == len(lines):
                i += 1
                continue
            removed += len(lines) - len(kept)
            m = _SPILL_NAME.fullmatch(f.name)
            assert m is not None  # noqa: S101  # ours
            g = _write_spill_anew(f, int(m.group(1)), kept, ".tmp")
            if g is None:
                self.bytes -= self._sizes.pop(f)
                self.points -= self._counts.pop(f)
                del self.files[i]
                continue
            self._replace(i, g, len(kept), g.stat().st_size)
            i += 1
        return removed

    def _forget_oldest(self) -> int:
        f = self.files.pop(0)
        self.bytes -= self._sizes.pop(f)
        points = self._counts.pop(f)
        self.points -= points
        return points


_TAG_ESCAPES = str.maketrans(
    {",": r"\,", "=": r"\=", " ": r"\ ", "\n": r"\n", "\t": r"\t", "\r": r"\r"}
)
"""A tag value's escapes as Point writes them."""


_SERIES_KEY = re.compile(r"(?:\\.|[^ \\])*")
"""The start of a line of line protocol up to its first unescaped space: measurement and tags."""


def erase_spilled(folder: Path, beacons: Iterable[str]) -> int:
    """Remove the points of these beacons (the `beacon` tag) from the spill files in `folder`;
    returns the points removed. Each file changed is written anew under its new point count
    (_write_spill_anew); a crash in between leaves the erased points until `erase` runs again."""
    wanted = {f",beacon={b.translate(_TAG_ESCAPES)}," for b in beacons}
    if not folder.is_dir() or not wanted:
        return 0
    removed = 0
    for index, _, f in _spill_files(folder)[0]:
        lines = f.read_bytes().decode(errors="replace").split("\n")
        kept = [line for line in lines if not any(w in _line_tags(line)[1] for w in wanted)]
        if len(kept) != len(lines):
            removed += len(lines) - len(kept)
            _write_spill_anew(f, index, kept, ".erase.tmp")
    return removed


def _line_tags(line: str) -> tuple[str, str]:
    """A spilled line without its policy mark, and its series key's tags followed by a comma
    (`fix,beacon=...,kind=cart,`), where a tag is found as `,name=value,`."""
    bare = line.partition(" ")[2] if line.startswith(_RP_MARK) else line
    key = _SERIES_KEY.match(bare)
    return bare, (key.group(0) if key else bare) + ","


def _write_spill_anew(f: Path, index: int, kept: list[str], tmp_suffix: str) -> Path | None:
    """Spill file `f` (place `index` in the order) written anew with the lines `kept` under
    their count (a temporary file with `tmp_suffix`, renamed), then `f` removed; `f` removed
    alone when none is kept. Returns the new file. A crash in between leaves points twice,
    which InfluxDB stores once. `erase` and the hub's writer use different suffixes: they may
    rewrite one file at once."""
    path = f.with_name(f"{index:012d}-{len(kept)}.lp")
    if kept:
        tmp = path.with_name(path.name + tmp_suffix)
        tmp.write_bytes("\n".join(kept).encode())
        tmp.replace(path)
    if not kept or path != f:
        f.unlink(missing_ok=True)
    return path if kept else None


def _erased_line(erased: Mapping[str, int]) -> Callable[[str], bool]:
    """Whether a line of line protocol (marked or not) is a point of an erased beacon dated at
    or before its erasure; `erased`: tag value as Point escapes it -> the erasure's time in
    whole ms, rounded up (the lines' precision)."""
    keys = {f",beacon={b},": t for b, t in erased.items()}

    def picked(line: str) -> bool:
        bare, tags = _line_tags(line)
        for k, t_ms in keys.items():
            if k in tags:
                stamp = bare.rpartition(" ")[2]
                return not stamp.isdigit() or int(stamp) <= t_ms
        return False

    return picked


def _without_erased(record: TickRecord, erased: Mapping[str, float]) -> TickRecord:
    """The record less its points of erased beacons dated at or before their erasure."""
    t = record.t
    drop = {i for i, b in enumerate(record.fixes.beacons) if b in erased and t <= erased[b]}
    events = [e for e in record.events if not (e.beacon in erased and e.t <= erased[e.beacon])]
    if not drop and len(events) == len(record.events):
        return record
    keep = np.array([i for i in range(len(record.fixes)) if i not in drop], dtype=np.intp)
    labels = [record.labels[i] for i in keep.tolist()]
    return TickRecord(record.site, t, record.fixes.select(keep), events, labels)


class ErasureFeed:
    """The tombstones of `erase` (table `erasures`, stores._add_erasures) for the InfluxDB
    writer: read from the hub's SQLite file on the writer's own thread with a read-only
    connection of its own. This is where an erasure crosses to that thread, from `erase` in
    another process as from anything else: the database, which the erase's transaction wrote
    with its deletes. The table is small (ERASURE_KEEP_S bounds it)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._db: sqlite3.Connection | None = None

    def read(self) -> dict[str, float]:
        """Every tombstone: pseudonym -> when it was erased."""
        if self._db is None:
            uri = "file:" + urllib.parse.quote(str(self.path.resolve())) + "?mode=ro"
            self._db = sqlite3.connect(
                uri, uri=True, timeout=SQLITE_BUSY_TIMEOUT_S, check_same_thread=False
            )
        rows = self._db.execute("SELECT beacon, erased_at FROM erasures").fetchall()
        return {str(b): float(t) for b, t in rows}

    def close(self) -> None:
        if self._db is not None:
            self._db.close()
            self._db = None


def _delete_erased(cfg: InfluxConfig, beacon: str, erased_at: float) -> None:
    """Delete a beacon's points dated at or before `erased_at` from the database: 1.x `DELETE`
    through /query (every retention policy of the database); 2.x the delete API (not run against
    a real 2.x server here). Raises on any failure (retried)."""
    t_ms = math.ceil(erased_at * 1000)
    if cfg.version == 1:
        where = "WHERE beacon = '" + beacon.replace("\\", "\\\\").replace("'", "\\'") + "'"
        q = "; ".join(
            f"DELETE FROM {_quote(m)} {where} AND time <= {t_ms * 1_000_000:d}"  # noqa: S608  # quoted
            for m in (FIX_MEASUREMENT, EVENT_MEASUREMENT)
        )
        body = urllib.parse.urlencode({"db": cfg.database, "q": q, **_v1_auth(cfg)}).encode()
        request = urllib.request.Request(f"{cfg.url}/query", body, method="POST")  # noqa: S310
        with _NO_PROXY.open(request, timeout=cfg.timeout_s) as response:
            doc = json.loads(response.read())
        errors = [str(r["error"]) for r in doc.get("results", []) if "error" in r]
        if errors:
            raise StoreError(f"InfluxDB {cfg.url}: {q}: {'; '.join(errors)}")
        return
    client = InfluxDBClient(
        url=cfg.url,
        token=cfg.token.get_secret_value() if cfg.token else "",
        org=cfg.org,
        timeout=int(cfg.timeout_s * 1000),
    )
    try:
        second = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(t_ms // 1000))
        stop = f"{second}.{t_ms % 1000:03d}Z"
        for m in (FIX_MEASUREMENT, EVENT_MEASUREMENT):
            predicate = f'_measurement="{m}" AND beacon="{beacon}"'
            client.delete_api().delete(
                "1970-01-01T00:00:00Z", stop, predicate, bucket=cfg.bucket, org=cfg.org
            )
    finally:
        client.close()  # type: ignore[no-untyped-call]


WRITER_PAUSE_S = 1.0
"""After a writer pass that failed unexpectedly: a pause, so a lasting fault does not spin."""
WRITER_LOG_EVERY_S = 60.0
"""Such a failure's traceback at most this often (store_errors counts every one)."""


class InfluxStore:
    """InfluxDB writer thread: batches, retries with backoff, spills to disk, replays in order.

    On 1.x (unless `retention_policy` names one policy for everything) each point goes to its
    retention class's policy `beacon_hub_{class}`, which the writer creates or alters to the
    configured duration before its first write (privacy.Retention, docs/privacy.md)."""

    def __init__(
        self,
        cfg: InfluxConfig,
        metrics: Metrics,
        retention: Retention | None = None,
        erasures: ErasureFeed | None = None,
    ) -> None:
        self.cfg = cfg
        self.metrics = metrics
        self.name = f"influx_v{cfg.version}"
        self._erasures = erasures
        self._erased: dict[str, float] = {}
        """The tombstones as the last pass read them (writer thread): points of these pseudonyms
        dated at or before their erasure are not sent, spilled or kept (_take_erasures)."""
        self._owed: dict[str, float] = {}
        """Tombstones whose delete this writer still owes the database (writer thread): a point
        it sent before it saw one may have arrived after `erase` dropped the series."""
        self._delete_retry_at = 0.0
        self._delete_delay_s = RETRY_MIN_S
        self.retention = retention or Retention()
        self.policies: dict[str, str | None] = {}
        """Retention class -> the 1.x policy its points go to (None: the database's default,
        for a class kept forever); empty: no policies managed."""
        if cfg.version == 1 and cfg.retention_policy is None:
            r = self.retention
            self.policies = {c: None if r.days_of(c) is None else r.policy(c) for c in r.classes}
        self._policies_ready = not self.policies
        self._policies_logged = False
        self._close_client: Callable[[], None] = lambda: None
        if cfg.version == 1:
            self._send = _v1_sender(cfg)
        else:
            self._send, self._close_client = _v2_sender(cfg)
        try:
            self._spill = _Spill(cfg.spill_dir, cfg.spill_max_bytes)
        except OSError as e:
            raise StoreError(f"cannot use spill directory {cfg.spill_dir}: {e}") from e
        if len(self._spill):
            log.info(
                "%s: %d points spilled by an earlier run will be replayed first",
                self.name,
                self._spill.points,
            )
        self._lock = threading.Condition()
        self._log = RateLimitedLog(WRITER_LOG_EVERY_S, logger=log)
        self._buffer: list[str] = []
        self._sending = 0
        self._stop = False
        self._flush_now = False
        self._retry_at = 0.0
        self._delay_s = RETRY_MIN_S
        self._unreachable = False
        """The last attempt failed: until one succeeds, whatever waits in memory goes to the
        spill at once (docs/hub.md, failure table), not one batch per retry."""
        self._unstorable_log = RateLimitedLog(UNSTORABLE_LOG_EVERY_S, logger=log)
        self._buffered_since = time.monotonic()
        self._records: list[TickRecord] = []
        self._record_points = 0
        """Points of ticks not yet turned into line protocol (the writer thread does that: 10,000
        Points cost ~130 ms, which must not delay the service thread's next tick)."""
        self._thread = threading.Thread(target=self._run, name=f"beacon-hub-{self.name}")
        self._thread.start()

    # -- service thread

    def write(self, record: TickRecord) -> None:
        with self._lock:
            self._records.append(record)
            self._record_points += len(record.fixes) + len(record.events)
            self._lock.notify()

    def write_lines(self, lines: list[str]) -> None:
        with self._lock:
            if len(self._buffer) + len(lines) > MAX_MEMORY_POINTS:
                # The writer is stuck in a call: park these on disk rather than grow memory.
                self._spill_locked(lines)
            else:
                if not self._buffer:
                    self._buffered_since = time.monotonic()
                self._buffer.extend(lines)
            if len(self._buffer) >= self.cfg.batch_points:
                self._lock.notify()
        self._gauge()

    def backlog(self) -> int:
        """Points not yet in the database, and a delete owed for each erasure (_owed)."""
        with self._lock:
            waiting = len(self._buffer) + self._sending + self._spill.points + self._record_points
            return waiting + len(self._owed)

    def flush(self, timeout_s: float) -> bool:
        deadline = time.monotonic() + timeout_s
        with self._lock:
            self._flush_now = True
            self._retry_at = 0.0  # try at once, whatever the backoff said
            self._lock.notify()
            while (
                self._buffer
                or self._sending
                or len(self._spill)
                or self._record_points
                or self._owed
            ):
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._lock.wait(min(left, 0.1))
            return True

    def close(self) -> None:
        """Stop the writer; whatever is still in memory goes to the spill for the next run."""
        with self._lock:
            self._stop = True
            self._lock.notify()
        self._thread.join()
        try:
            self._take_erasures()
        except Exception:  # traceback logged; the spill is filtered at the next start
            log.warning("%s: cannot read the erasures", self.name, exc_info=True)
        if self._erasures is not None:
            self._erasures.close()
        with self._lock:
            for record in self._records:
                self._buffer.extend(self._lines(record))
            self._records, self._record_points = [], 0
            if self._buffer:
                self._spill_locked(self._buffer)
                self._buffer = []
        self._close_client()
        self._gauge()

    # -- writer thread

    def _due_locked(self, now: float) -> float:
        """0 if there is something to send (or delete) now, else how long to wait."""
        due = self._due_send_locked(now)
        if self._owed:
            return min(due, max(0.0, self._delete_retry_at - now))
        return due

    def _due_send_locked(self, now: float) -> float:
        if self._stop or self._records:
            return 0.0
        if self._buffer and self._unreachable:
            return 0.0  # to the spill, where a crash does not lose it
        if now < self._retry_at:
            return self._retry_at - now
        if len(self._spill):
            return 0.0
        if not self._buffer:
            return self.cfg.flush_interval_s
        if self._flush_now or len(self._buffer) >= self.cfg.batch_points:
            return 0.0
        return max(0.0, self._buffered_since + self.cfg.flush_interval_s - now)

    def _run(self) -> None:
        """The writer thread: outlives any one failure (counted, logged at most once per
        WRITER_LOG_EVERY_S, tried again after a pause), or write() would pile up records that
        nothing sends or spills any more."""
        while True:
            try:
                if self._pass():
                    return
            except Exception:  # noqa: BLE001  # outlive any failure; traceback logged
                self.metrics.store_errors.labels(self.name).inc()
                self._log.warning(("writer",), "%s: writer pass failed", self.name, exc_info=True)
                with self._lock:
                    self._sending = 0
                    self._lock.wait(WRITER_PAUSE_S)

    def _pass(self) -> bool:
        """One turn of the writer: records to lines, or one batch sent. True when stopped."""
        with self._lock:
            while (wait := self._due_locked(time.monotonic())) > 0:
                self._lock.wait(wait)
            if self._stop:
                return True
            records, self._records = self._records, []
        # Before anything of this pass is sent or spilled: nothing erased leaves after this.
        self._take_erasures()
        if records:
            lines = [line for r in records for line in self._lines(r)]
            self.write_lines(lines)
            with self._lock:
                self._record_points -= sum(len(r.fixes) + len(r.events) for r in records)
            return False
        if self._owed and time.monotonic() >= self._delete_retry_at:
            self._pay_owed()
            return False
        sent_file: Path | None = None
        with self._lock:
            if self._due_locked(time.monotonic()) != 0.0 or self._stop:
                return False
            if self._buffer and (self._unreachable or len(self._spill)):
                # Order: anything spilled goes first, so what waits joins the spill behind it.
                # While the database is unreachable that is all of it, at once: a crash then
                # loses at most what arrived since the last pass (about one tick).
                self._spill_locked(self._buffer)
                self._buffer = []
                self._buffered_since = time.monotonic()
                if self._due_locked(time.monotonic()) != 0.0:
                    return False  # a retry's backoff is still running
            self._flush_now = False
            batch = next(_chunks(self._buffer, self.cfg.batch_points, MAX_BODY_BYTES), [])
            del self._buffer[: len(batch)]
            self._buffered_since = time.monotonic()
            if batch:
                body, points, from_spill = "\n".join(batch).encode(), len(batch), False
                self._sending = points
            else:
                oldest = self._spill.oldest()
                self._count_vanished_locked()
                if oldest is None:
                    return False
                body, points, sent_file = oldest
                from_spill = True
        ok = self._attempt(body, points)
        with self._lock:
            self._sending = 0
            # (the spill may have dropped that file meanwhile to stay within its bound)
            if from_spill and ok is not None and self._spill.files[:1] == [sent_file]:
                self._spill.pop_oldest()
            elif not from_spill and ok is None:
                self._spill_locked(batch)
            self._lock.notify_all()
        self._gauge()
        return False

    def _take_erasures(self) -> None:
        """Tombstones new since the last pass (writer thread, or close() after it stopped):
        their points leave memory and the spill at once, and their delete is owed."""
        if self._erasures is None:
            return
        current = self._erasures.read()
        new = {b: t for b, t in current.items() if self._erased.get(b) != t}
        self._erased = current
        if not new:
            return
        picked = _erased_line(
            {b.translate(_TAG_ESCAPES): math.ceil(t * 1000) for b, t in new.items()}
        )
        with self._lock:
            kept = [line for line in self._buffer if not picked(line)]
            dropped = len(self._buffer) - len(kept)
            self._buffer = kept
            dropped += self._spill.drop_lines(picked)
            self._owed.update(new)
        log.info(
            "%s: %d erased (%s): %d points dropped from memory and the spill",
            self.name, len(new), ", ".join(sorted(new)), dropped,
        )  # fmt: skip
        self._gauge()

    def _pay_owed(self) -> None:
        """The deletes owed for tombstones, up to each one's erasure; retried with a backoff of
        their own, so a refused delete does not hold the writes up."""
        for beacon, erased_at in list(self._owed.items()):
            try:
                _delete_erased(self.cfg, beacon, erased_at)
            except Exception:  # noqa: BLE001  # network, 5xx, refused: counted, retried
                self.metrics.store_errors.labels(self.name).inc()
                self._log.warning(
                    ("delete",), "%s: erased points of %s not deleted yet; retried",
                    self.name, beacon, exc_info=True,
                )  # fmt: skip
                self._delete_retry_at = time.monotonic() + self._delete_delay_s
                self._delete_delay_s = min(self._delete_delay_s * 2, self.cfg.retry_max_s)
                return
            with self._lock:
                if self._owed.get(beacon) == erased_at:
                    del self._owed[beacon]
                self._lock.notify_all()
            log.info("%s: deleted the points of %s up to its erasure", self.name, beacon)
        self._delete_delay_s = RETRY_MIN_S
        self._gauge()

    def _count_vanished_locked(self) -> None:
        lost, self._spill.vanished = self._spill.vanished, 0
        if lost:
            log.error(
                "%s: %d spilled points lost: their files were removed from %s",
                self.name, lost, self.cfg.spill_dir,
            )  # fmt: skip
            self.metrics.store_dropped.labels(self.name).inc(lost)

    def _lines(self, record: TickRecord) -> list[str]:
        """A tick's line protocol, each line marked with its class's policy when there are any;
        fixes `storable_fixes` refuses are left out (counted), and points of an erasure."""
        if self._erased:
            record = _without_erased(record, self._erased)
        keep = storable_fixes(record.fixes)
        if keep is not None:
            skipped = len(record.fixes) - len(keep)
            _count_unstorable(self.metrics, self.name, self._unstorable_log, skipped)
        if not self.policies:
            return [line for _, _, line in _points(record, keep)]
        retention, policies, site = self.retention, self.policies, record.site
        out: list[str] = []
        for kind, beacon, line in _points(record, keep):
            if kind is None:
                cls = retention.class_of_beacon(site, beacon)
            else:
                cls = retention.class_of(kind, beacon)
            policy = policies[cls]
            out.append(line if policy is None else _marked(policy, line))
        return out

    def _deliver(self, body: bytes) -> _Outcome:
        """Send one batch, split by retention policy and in POSTs of at most MAX_BODY_BYTES. A
        failure part way raises and the whole batch is sent again later: a point written twice
        (same series, same time) is stored once. Returns the points not stored: past their
        retention, or refused for good (the rest of their POST is stored)."""
        if not self._policies_ready:
            # Every class's policy exists, the unused ones too: the dashboards read them all.
            r = self.retention
            wanted = {
                r.policy(c): (policy_hours(r.days_of(c)), self.policies[c] is not None)
                for c in self.policies
            }
            try:
                ran, optional = ensure_policies(self.cfg, wanted)
            except _PoliciesMissingError as e:
                if not self._policies_logged:
                    self._policies_logged = True
                    log.error("%s: %s", self.name, e)  # noqa: TRY400  # the message says it all
                raise
            for q in ran:
                log.info("%s: %s", self.name, q)
            if optional:
                log.warning(
                    "%s: may not create the unused policies the Grafana dashboards read "
                    "(needs admin); run: %s",
                    self.name,
                    "; ".join(optional),
                )
            self._policies_ready = True
        reasons: list[str] = []
        refused = expired = 0
        for policy, lines in _split_marked(body).items():
            for chunk in _chunks(lines, len(lines), MAX_BODY_BYTES):
                post = "\n".join(chunk).encode()
                if len(post) > MAX_BODY_BYTES:  # one line longer than any server takes
                    reasons.append(f"a line of {len(post)} bytes (more than {MAX_BODY_BYTES})")
                    refused += 1
                    continue
                try:
                    outcome = self._send(policy, post)
                except _RefusedError as e:
                    reasons.append(str(e))
                    refused += len(chunk)
                    continue
                expired += outcome.expired
                refused += outcome.refused
                if outcome.reason:
                    reasons.append(outcome.reason)
        return _Outcome(expired, refused, "; ".join(reasons))

    def _attempt(self, body: bytes, points: int) -> bool | None:
        """True answered (written, or refused for good: dropped, counted), None failed (keep
        and retry)."""
        try:
            outcome = self._deliver(body)
        except Exception as e:  # noqa: BLE001  # network, 5xx, timeouts: all retried
            self.metrics.store_errors.labels(self.name).inc()
            with self._lock:
                self._retry_at = time.monotonic() + self._delay_s
                self._unreachable = True
                log.warning(
                    "%s unreachable (%s); %d points kept, retry in %.1f s",
                    self.name,
                    e,
                    points + self._spill.points,
                    self._delay_s,
                )
                self._delay_s = min(self._delay_s * 2, self.cfg.retry_max_s)
            return None
        if outcome.expired:
            # Already past their retention (a spill replayed late, a replayed recording).
            log.info(
                "%s: %d points older than their retention policy not stored",
                self.name,
                outcome.expired,
            )
        if outcome.refused or outcome.reason:
            log.error(
                "%s refused %d points for good (dropped), stored the rest: %s",
                self.name,
                outcome.refused,
                outcome.reason,
            )
            self.metrics.store_errors.labels(self.name).inc()
        dropped = min(points, outcome.expired + outcome.refused)
        self.metrics.store_dropped.labels(self.name).inc(dropped)
        self.metrics.store_written.labels(self.name).inc(points - dropped)
        with self._lock:
            if self._delay_s > RETRY_MIN_S:
                log.info("%s reachable again", self.name)
            self._delay_s = RETRY_MIN_S
            self._unreachable = False
        return True

    def _spill_locked(self, lines: list[str]) -> None:
        """Lines to the spill, in files of at most batch_points lines and MAX_BODY_BYTES."""
        for chunk in _chunks(lines, self.cfg.batch_points, MAX_BODY_BYTES):
            self._spill_locked_body("\n".join(chunk).encode(), len(chunk))

    def _spill_locked_body(self, body: bytes, points: int) -> None:
        try:
            dropped = self._spill.append(body, points)
        except OSError as e:
            log.error("%s: cannot spill %d points (dropped): %s", self.name, points, e)  # noqa: TRY400
            dropped = points
        if dropped:
            log.error("%s: spill full, dropped the oldest %d points", self.name, dropped)
            self.metrics.store_dropped.labels(self.name).inc(dropped)

    def _gauge(self) -> None:
        self.metrics.store_backlog.labels(self.name).set(self.backlog())
