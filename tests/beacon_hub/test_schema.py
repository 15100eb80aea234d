"""The hub's SQLite file carries its layout's version: a new file gets ours, a file of a release
before versions were kept is recognised and upgraded in place with every row kept, and a file of
a newer release or of a layout we do not know is refused, naming the file and both versions, and
left as it was."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from beacon_hub.health import Metrics
from beacon_hub.ingest import SeqGaps
from beacon_hub.privacy import open_erase_sqlite
from beacon_hub.stores import SCHEMA_VERSION, SavedGateway, SqliteStore, StoreError, open_sqlite
from tests.beacon_hub.test_hub_units import _cli

ROOT = Path(__file__).resolve().parents[2]

RELEASE_0_SCHEMA = """
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
"""
"""What every release before schema versions wrote (stores.py's `_SCHEMA` at b251abf), copied
here rather than imported: the test must keep describing those files when the code moves on."""
RELEASE_0_PROMOTIONS = """
CREATE TABLE IF NOT EXISTS promotion_decisions (
    site TEXT NOT NULL, t REAL NOT NULL, rule TEXT NOT NULL, zone TEXT, beacon TEXT,
    decision TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS promotion_decisions_by_rule ON promotion_decisions (site, rule, t);
CREATE INDEX IF NOT EXISTS promotion_decisions_by_beacon ON promotion_decisions (beacon);
CREATE INDEX IF NOT EXISTS promotion_decisions_sent ON promotion_decisions (t)
    WHERE decision = 'sent';
"""
"""promotions.py's table of those releases, created once promotion rules were configured."""

SITE = "s1"
BEACON = "ibeacon:3d1a7b52-8c4e-4f0a-9b6d-2e5f8a1c7d40:1:7"
T0 = 1_800_000_000.0
RELEASE_0_ROWS: dict[str, list[tuple[object, ...]]] = {
    "fixes": [(SITE, BEACON, T0, 1.5, 2.5, 0, 0.75, "aisle-1", "cart", "C-7", 0.1, "gw-01;gw-02")],
    "latest": [(SITE, BEACON, T0, 1.5, 2.5, 0, 0.75, "aisle-1", "C-7")],
    "events": [(SITE, T0, "zone_enter", BEACON, "aisle-1", '{"from": null}')],
    "batches": [(SITE, "gw-01", "abcd", 41, 24, 24, 0, 0, T0 - 0.7, T0)],
    "gateways": [(SITE, "gw-01", "abcd", 42, 0.05)],
    "ticks": [(SITE, T0)],
    "occupancy": [(SITE, T0, "aisle-1", "cart", 1)],
    "assets": [(BEACON, "C-7", "cart", 2900, 21.5, T0)],
}
"""One row per table, as such a release wrote them."""
PROMOTION_ROWS: list[tuple[object, ...]] = [(SITE, T0, "r1", "aisle-1", BEACON, "sent")]


def release_0_file(path: Path, *, promotions: bool = False) -> None:
    """A database as a release before schema versions left it (user_version 0)."""
    db = sqlite3.connect(path, isolation_level=None)
    try:
        db.execute("PRAGMA journal_mode=WAL")
        db.executescript(RELEASE_0_SCHEMA + (RELEASE_0_PROMOTIONS if promotions else ""))
        rows = dict(RELEASE_0_ROWS)
        if promotions:
            rows["promotion_decisions"] = PROMOTION_ROWS
        for table, values in rows.items():
            for row in values:
                db.execute(f"INSERT INTO {table} VALUES ({','.join('?' * len(row))})", row)
    finally:
        db.close()


def _rows(db: sqlite3.Connection, table: str) -> list[tuple[object, ...]]:
    return db.execute(f"SELECT * FROM {table}").fetchall()


def _layout(db: sqlite3.Connection) -> list[tuple[str, str, str]]:
    """Every table and index with the SQL that makes it."""
    return db.execute(
        "SELECT type, name, sql FROM sqlite_master WHERE name NOT LIKE 'sqlite_autoindex%'"
        " ORDER BY name"
    ).fetchall()


def _version(path: Path) -> int:
    db = sqlite3.connect(path)
    try:
        return int(db.execute("PRAGMA user_version").fetchone()[0])
    finally:
        db.close()


def test_a_new_file_gets_the_current_version(tmp_path: Path) -> None:
    db = open_sqlite(tmp_path / "hub.sqlite")
    try:
        assert db.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
        columns = [r[1] for r in db.execute("PRAGMA table_info(gateways)")]
        assert columns == [
            *("site", "gateway", "boot", "next_seq", "offset_s", "last_sent"),
            *("missing", "first_seq", "early"),
        ]
    finally:
        db.close()


@pytest.mark.parametrize("promotions", [False, True], ids=["without-rules", "with-rules"])
def test_a_file_of_a_release_before_versions_is_upgraded_in_place_keeping_every_row(
    tmp_path: Path, promotions: bool, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "hub.sqlite"
    release_0_file(path, promotions=promotions)
    caplog.set_level("INFO")
    store = SqliteStore(path, Metrics())
    try:
        assert store.db.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
        for table, rows in RELEASE_0_ROWS.items():
            want = [(*r, None, None, None, None) for r in rows] if table == "gateways" else rows
            assert _rows(store.db, table) == want, table
        want_promotions = PROMOTION_ROWS if promotions else []
        assert _rows(store.db, "promotion_decisions") == want_promotions
        assert store.saved_gateways() == [
            SavedGateway(SITE, "gw-01", "abcd", 42, 0.05, None, SeqGaps())
        ]
        assert store.last_tick(SITE) == T0
    finally:
        store.close()
    assert f"{path}: written before schema versions were kept: taken as version 1" in caplog.text
    assert f"{path}: schema version 1 -> 2 (_add_gateway_last_sent)" in caplog.text
    _same_layout_as_a_new_file(path, tmp_path / "new.sqlite")
    assert caplog.text.count("taken as version 1") == 1  # once, not at every start
    assert caplog.text.count("schema version 1 -> 2") == 1


def _same_layout_as_a_new_file(path: Path, new_path: Path) -> None:
    """The upgraded file at `path` has the layout, indexes included, of a file this release
    makes new (at `new_path`)."""
    new = open_sqlite(new_path)
    upgraded = open_sqlite(path)
    try:
        assert _layout(upgraded) == _layout(new)
    finally:
        new.close()
        upgraded.close()


VERSION_3_CHANGES = """
ALTER TABLE gateways ADD COLUMN last_sent REAL;
CREATE TABLE IF NOT EXISTS consent (anon TEXT PRIMARY KEY, consent INTEGER NOT NULL, \
t REAL NOT NULL, expires REAL) WITHOUT ROWID;
PRAGMA user_version = 3;
"""
"""What versions 2 and 3 added to a release 0 file (stores.py's `_MIGRATIONS` at 75fcf39),
copied here for the same reason as RELEASE_0_SCHEMA."""


def test_a_file_of_version_3_gets_the_gateways_gaps_keeping_every_row(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Version 4 saves each gateway's gaps and first seq heard (ingest.SeqGaps). A version 3
    row has none: its gateway restores as before, with nothing owed."""
    path = tmp_path / "hub.sqlite"
    release_0_file(path, promotions=True)
    db = sqlite3.connect(path, isolation_level=None)
    db.executescript(VERSION_3_CHANGES)
    db.execute("UPDATE gateways SET last_sent = ?", (T0 - 0.3,))
    db.execute("INSERT INTO consent VALUES ('anon-1', 1, ?, NULL)", (T0,))
    before = {t: _rows(db, t) for t in (*RELEASE_0_ROWS, "promotion_decisions", "consent")}
    db.close()
    caplog.set_level("INFO")
    store = SqliteStore(path, Metrics())
    try:
        assert store.db.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
        for table, rows in before.items():
            want = [(*r, None, None, None) for r in rows] if table == "gateways" else rows
            assert _rows(store.db, table) == want, table
        assert store.saved_gateways() == [
            SavedGateway(SITE, "gw-01", "abcd", 42, 0.05, T0 - 0.3, SeqGaps())
        ]
    finally:
        store.close()
    assert f"{path}: schema version 3 -> 4 (_add_gateway_gaps)" in caplog.text
    assert "schema version 2 -> 3" not in caplog.text
    _same_layout_as_a_new_file(path, tmp_path / "new.sqlite")


def _refused_unchanged(path: Path, *words: str) -> None:
    """open_sqlite refuses the file with a message holding `words`, and leaves it as it was."""
    db = sqlite3.connect(path)
    before = (_version(path), list(db.iterdump()))
    db.close()
    with pytest.raises(StoreError) as refused:
        open_sqlite(path)
    for word in words:
        assert word in str(refused.value)
    db = sqlite3.connect(path)
    assert (_version(path), list(db.iterdump())) == before
    db.close()


def test_a_file_of_a_newer_release_is_refused_and_left_as_it_was(tmp_path: Path) -> None:
    path = tmp_path / "hub.sqlite"
    open_sqlite(path).close()
    db = sqlite3.connect(path)
    db.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    db.close()
    _refused_unchanged(
        path,
        f"{path}: the database is at schema version {SCHEMA_VERSION + 1}",
        f"newer than this beacon-hub's {SCHEMA_VERSION}",
    )
    # erase too: a later release may keep shoppers' data where this one does not look
    with pytest.raises(StoreError, match=f"schema version {SCHEMA_VERSION + 1}, newer"):
        open_erase_sqlite(path).close()


@pytest.mark.parametrize(
    ("schema", "version", "said"),
    [
        ("CREATE TABLE notes (id INTEGER PRIMARY KEY, body TEXT)", 0, "no table fixes"),
        (
            RELEASE_0_SCHEMA.replace("offset_s REAL, PRIMARY", "PRIMARY"),
            0,
            (
                "table gateways has columns (site TEXT NOT NULL PRIMARY KEY, gateway TEXT NOT NULL"
                " PRIMARY KEY, boot TEXT NOT NULL, next_seq INTEGER NOT NULL), expected (site TEXT"
                " NOT NULL PRIMARY KEY, gateway TEXT NOT NULL PRIMARY KEY, boot TEXT NOT NULL,"
                " next_seq INTEGER NOT NULL, offset_s REAL)"
            ),
        ),
        ("CREATE TABLE notes (id INTEGER PRIMARY KEY, body TEXT)", 1, "no table gateways"),
        (RELEASE_0_SCHEMA, SCHEMA_VERSION, "table gateways has columns"),
    ],
    ids=["another-programs", "gateways-lacks-a-column", "numbered-1-not-ours", "numbered-ours"],
)
def test_a_file_of_a_layout_we_do_not_know_is_refused_saying_what_differs(
    tmp_path: Path, schema: str, version: int, said: str
) -> None:
    """Before, `CREATE TABLE IF NOT EXISTS` kept such a table as it was: the hub failed at the
    first insert, or added its tables to another program's database."""
    path = tmp_path / "other.sqlite"
    db = sqlite3.connect(path)
    db.executescript(schema)
    db.execute(f"PRAGMA user_version = {version}")
    db.close()
    _refused_unchanged(
        path,
        f"{path}: not a beacon-hub database this release knows (schema version {version},"
        f" this beacon-hub's {SCHEMA_VERSION})",
        said,
    )


def test_the_hub_and_assets_import_exit_1_on_a_file_of_a_newer_release(tmp_path: Path) -> None:
    path = tmp_path / "hub.sqlite"
    open_sqlite(path).close()
    db = sqlite3.connect(path)
    db.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    db.close()
    cfg = tmp_path / "hub.yaml"
    cfg.write_text(
        f"sites:\n  - site: {ROOT / 'config/store.yaml'}\n"
        f"stores:\n  sqlite:\n    path: {path}\nhttp:\n  port: 0\n"
    )
    said = (
        f"{path}: the database is at schema version {SCHEMA_VERSION + 1}, newer than this"
        f" beacon-hub's {SCHEMA_VERSION}"
    )
    done = _cli("run", "--config", str(cfg), cwd=tmp_path)
    assert (done.returncode, said in done.stderr) == (1, True), done.stderr
    assets = tmp_path / "assets.csv"
    assets.write_text(f"beacon,label,kind\n{BEACON},C-7,cart\n")
    done = _cli("assets", "import", str(assets), "--db", str(path), cwd=tmp_path)
    assert (done.returncode, said in done.stderr) == (1, True), done.stderr
    assert _version(path) == SCHEMA_VERSION + 1
