"""Shoppers' privacy between the engine and every output (docs/privacy.md).

    table, events = privacy.apply(site, result.fixes, result.events)

- A beacon of a shopper kind (`privacy.shopper_kinds`, default cart) without consent is removed
  from the fixes and events: it is never tracked individually, stored or targeted. Zone
  occupancy is counted before this step (service.py), so it still counts there. What was removed
  is counted in `beacon_hub_privacy_withheld_{fixes,events}_total`.
- A consenting shopper's id becomes `anon:{16 hex}`: the first 64 bits of
  HMAC-SHA256(key, id), stable for one key, unlinkable without it.
- Retention: `Retention` sorts data into classes (shoppers, each other beacon kind, other) with
  a retention each; `retention_job` deletes each class's old SQLite rows, and stores.py writes
  each class to its own InfluxDB 1.x retention policy.
- Erasure: `erase_sqlite` / `erase_influx` remove a beacon's rows under its id and pseudonym
  (`beacon-hub erase`).

The engine's ids stay raw inside the engine (it must follow the beacon); nothing downstream of
`apply` sees a raw shopper id, except `withheld`: the events of the last tick it removed, kept in
memory only so promotions can count `suppressed_no_consent` without an id.
"""

from __future__ import annotations

import dataclasses
import hashlib
import hmac
import json
import logging
import os
import secrets
import sqlite3
import stat
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, get_args

import numpy as np
from prometheus_client import CollectorRegistry, Counter

from beacon_hub.consent import ConsentRegistry
from beacon_hub.engine import FixTable
from beacon_hub.errors import BeaconHubError
from beacon_hub.hubconfig import RETENTION_DEFAULT_KEY, HubConfig, InfluxConfig, PrivacyConfig
from beacon_hub.site import BeaconKindName, Site
from beacon_hub.wire import Event

__all__ = [
    "KEY_BYTES",
    "OTHER",
    "POLICY_PREFIX",
    "PSEUDONYM_PREFIX",
    "RETENTION_EVERY_S",
    "SCAN_CHUNK_BYTES",
    "SHOPPERS",
    "KindOf",
    "Privacy",
    "PrivacyError",
    "Retention",
    "count_copies",
    "erase_influx",
    "erase_key",
    "erase_sqlite",
    "key_file_path",
    "load_key",
    "open_erase_sqlite",
    "pseudonym",
    "retention_job",
    "settle_erase",
    "site_kind_of",
]

log = logging.getLogger(__name__)

PSEUDONYM_PREFIX = "anon:"
KEY_BYTES = 32
"""HMAC-SHA256 keys of the hash's block-size half: 256 bits, as RFC 2104 recommends (>= L)."""
RETENTION_EVERY_S = 3600.0
"""How often the retention job runs: retention is counted in days, an hour late is nothing."""
ERASURE_KEEP_S = 7200.0
"""An erasure's tombstone (the `erasures` table, stores._add_erasures) is kept this long after
the erasure, in data time, then pruned by the retention job (so for 2 to 3 hours). It is needed
while rows dated before the erasure can still reach a store: ticks queued for the SQLite writer
and held by the InfluxDB writer (seconds; the writer reads it within a pass), and the backlog a
restarted hub ticks, at most service.MAX_CATCH_UP_S (600 s) back. The pseudonym is shopper data,
so not kept longer than that; the raw id is never kept."""
MAX_CACHED_PSEUDONYMS = 200_000
"""Pseudonyms remembered (about 40 MB); a hostile stream of ids only empties the cache."""
SECONDS_PER_DAY = 86_400.0


class PrivacyError(BeaconHubError):
    """The privacy key cannot be read or created, or an erase failed."""


def pseudonym(key: bytes, beacon: str) -> str:
    """`anon:` + the first 16 hex digits of HMAC-SHA256(key, beacon)."""
    digest = hmac.new(key, beacon.encode("utf-8"), hashlib.sha256).hexdigest()
    return PSEUDONYM_PREFIX + digest[:16]


def key_file_path(cfg: PrivacyConfig, sqlite_path: Path) -> Path:
    return cfg.key_file or sqlite_path.with_name(sqlite_path.name + ".privacy-key")


def load_key(cfg: PrivacyConfig, sqlite_path: Path) -> bytes:
    """`privacy.key`, or the key file (created with a random key, mode 0600, if missing)."""
    if cfg.key is not None:
        text = cfg.key.get_secret_value()
        if len(text) < 16:  # a short key makes pseudonyms guessable
            raise PrivacyError("privacy.key: use at least 16 characters (32 random hex digits)")
        return text.encode("utf-8")
    path = key_file_path(cfg, sqlite_path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        pass
    except OSError as e:
        raise PrivacyError(f"cannot create the privacy key file {path}: {e}") from e
    else:
        with os.fdopen(fd, "w") as f:
            f.write(secrets.token_hex(KEY_BYTES) + "\n")
        log.info("created the privacy key %s (keep it: pseudonyms depend on it)", path)
    try:
        if path.stat().st_mode & (stat.S_IRWXG | stat.S_IRWXO):
            log.warning("privacy key %s is readable by others; chmod 600 it", path)
        text = path.read_text(encoding="ascii").strip()
    except (OSError, UnicodeDecodeError) as e:
        raise PrivacyError(f"cannot read the privacy key file {path}: {e}") from e
    if len(text) < 32:
        raise PrivacyError(f"privacy key file {path}: expected 64 hex digits")
    return text.encode("ascii")


class Privacy:
    """Consent filter and pseudonyms for every site of a hub (module docstring)."""

    def __init__(
        self,
        sites: Mapping[str, Site],
        consent: ConsentRegistry,
        key: bytes,
        *,
        shopper_kinds: Iterable[str] = ("cart",),
        registry: CollectorRegistry | None = None,
    ) -> None:
        self.sites = dict(sites)
        self.consent = consent
        self._key = key
        self.shopper_kinds = frozenset(shopper_kinds)
        self._pseudonyms: dict[str, str] = {}
        self._kinds: dict[tuple[str, str], str | None] = {}
        self._anon_kinds: dict[str, str] = {}
        self._shown: dict[str, set[str]] = {}
        """Per site, the shoppers whose fixes went out since their last beacon_lost (raw ids):
        a retained track of theirs is at the broker under their pseudonym."""
        self.ended: list[str] = []
        """Pseudonyms of shoppers whose consent ended (revoked or expired) while their track was
        out, found by the last `apply`: the outputs clear their retained tracks, since none of
        their fixes, nor their beacon_lost, goes out any more."""
        self.withheld: list[Event] = []
        """Events of non-consenting shoppers removed by the last `apply` (raw ids; in memory
        only, for promotions.py's suppressed_no_consent count)."""
        self.withheld_fixes = Counter(
            "beacon_hub_privacy_withheld_fixes",
            "Fixes of shoppers without consent, removed before any output",
            ["site"],
            registry=registry,
        )
        self.withheld_events = Counter(
            "beacon_hub_privacy_withheld_events",
            "Events of shoppers without consent, removed before any output",
            ["site"],
            registry=registry,
        )
        consent.attach(self.pseudonym)

    def pseudonym(self, beacon: str) -> str:
        anon = self._pseudonyms.get(beacon)
        if anon is None:
            if len(self._pseudonyms) >= MAX_CACHED_PSEUDONYMS:
                self._pseudonyms.clear()
            anon = self._pseudonyms[beacon] = pseudonym(self._key, beacon)
        return anon

    def _anon(self, beacon: str, kind: str) -> str:
        anon = self.pseudonym(beacon)
        if len(self._anon_kinds) >= MAX_CACHED_PSEUDONYMS:
            self._anon_kinds.clear()
        self._anon_kinds[anon] = kind
        return anon

    def kind_of(self, site: str, beacon: str) -> str | None:
        """The beacon's kind from the site file (pseudonyms are shoppers' by construction)."""
        if beacon.startswith(PSEUDONYM_PREFIX):
            return self._anon_kinds.get(beacon)
        key = (site, beacon)
        if key not in self._kinds:
            if len(self._kinds) >= MAX_CACHED_PSEUDONYMS:
                self._kinds.clear()
            s = self.sites.get(site)
            k = None if s is None else s.kind_of(beacon)
            self._kinds[key] = None if k is None else k.kind
        return self._kinds[key]

    def is_shopper(self, site: str, beacon: str) -> bool:
        return self.kind_of(site, beacon) in self.shopper_kinds

    def apply(
        self, site: str, fixes: FixTable, events: list[Event]
    ) -> tuple[FixTable, list[Event]]:
        """Drop non-consenting shoppers, pseudonymise consenting ones (module docstring)."""
        t = fixes.t
        shoppers = self.shopper_kinds
        has = self.consent.has_consent
        shown = self._shown.setdefault(site, set())
        ended: list[str] = []
        keep: list[int] = []
        beacons: list[str] = []
        changed = False
        for i, (b, k) in enumerate(zip(fixes.beacons, fixes.kinds, strict=True)):
            if k in shoppers:
                changed = True
                if not has(b, t):
                    if b in shown:
                        shown.discard(b)
                        ended.append(self._anon(b, k))
                    continue
                shown.add(b)
                b = self._anon(b, k)  # noqa: PLW2901
            keep.append(i)
            beacons.append(b)
        table = _select(fixes, keep, beacons) if changed else fixes
        dropped = len(fixes) - len(table)
        if dropped:
            self.withheld_fixes.labels(site).inc(dropped)
        out: list[Event] = []
        withheld: list[Event] = []
        for e in events:
            k = self.kind_of(site, e.beacon)
            if k not in shoppers:
                out.append(e)
            elif has(e.beacon, e.t):
                out.append(dataclasses.replace(e, beacon=self._anon(e.beacon, k)))
                if e.type == "beacon_lost":
                    shown.discard(e.beacon)  # its track is cleared with this event
            else:
                withheld.append(e)
                if e.type == "beacon_lost" and e.beacon in shown:  # silent when consent ended
                    shown.discard(e.beacon)
                    ended.append(self._anon(e.beacon, k))
        self.withheld, self.ended = withheld, ended
        if withheld:
            self.withheld_events.labels(site).inc(len(withheld))
        return table, out


def _select(fixes: FixTable, keep: list[int], beacons: list[str]) -> FixTable:
    """The rows `keep` of a FixTable, with new beacon ids."""
    if len(keep) == len(fixes):
        return dataclasses.replace(fixes, beacons=beacons)
    return fixes.select(np.asarray(keep, dtype=np.intp), beacons)


# ---------------------------------------------------------------------------------- retention

SHOPPERS = "shoppers"
"""Retention class of shoppers' data: shopper kinds, `anon:` ids, promotion decisions."""
OTHER = "other"
"""Retention class of beacons whose kind no site file gives."""
POLICY_PREFIX = "beacon_hub_"
"""InfluxDB 1.x retention policies the hub writes to are `beacon_hub_{class}`."""

KindOf = Callable[[str, str], str | None]
"""(site, beacon) -> the beacon's kind from the site file, or None."""


def site_kind_of(sites: Mapping[str, Site]) -> KindOf:
    """A kind lookup straight from the site files: no cache, so any thread may call it."""

    def kind_of(site: str, beacon: str) -> str | None:
        s = sites.get(site)
        k = None if s is None else s.kind_of(beacon)
        return None if k is None else k.kind

    return kind_of


@dataclass(frozen=True, slots=True)
class Retention:
    """How long each class of data is kept (docs/privacy.md, Retention).

    Classes: `shoppers` (a shopper kind or an `anon:` id), one per other beacon kind (`pallet`,
    `reference`, ...) and `other` (no kind). SQLite prunes by class and age; InfluxDB 1.x keeps
    each class in its own retention policy `beacon_hub_{class}`."""

    shopper_kinds: frozenset[str] = frozenset({"cart"})
    days: Mapping[str, float | None] = dataclasses.field(default_factory=dict)
    """Class -> days kept; a class not here (or None) is kept forever."""
    kind_of: KindOf | None = None
    """For rows that carry no kind (events, latest): the beacon's kind by site and id."""

    @classmethod
    def from_config(cls, cfg: HubConfig, sites: Mapping[str, Site]) -> Retention:
        per_kind = cfg.stores.retention_days
        fallback = per_kind.get(RETENTION_DEFAULT_KEY)
        shoppers = frozenset(cfg.privacy.shopper_kinds)
        days: dict[str, float | None] = {SHOPPERS: cfg.privacy.retention_days, OTHER: fallback}
        for kind in get_args(BeaconKindName):
            if kind not in shoppers:
                days[kind] = per_kind.get(kind, fallback)
        return cls(shoppers, days, site_kind_of(sites))

    @property
    def classes(self) -> list[str]:
        """Every class a point can fall in: shoppers, each other kind, other."""
        kinds = [k for k in get_args(BeaconKindName) if k not in self.shopper_kinds]
        return [SHOPPERS, *kinds, OTHER]

    def class_of(self, kind: str | None, beacon: str) -> str:
        if kind in self.shopper_kinds or beacon.startswith(PSEUDONYM_PREFIX):
            return SHOPPERS
        return kind if kind is not None and kind in get_args(BeaconKindName) else OTHER

    def class_of_beacon(self, site: str, beacon: str) -> str:
        kind = None if self.kind_of is None else self.kind_of(site, beacon)
        return self.class_of(kind, beacon)

    def days_of(self, cls: str) -> float | None:
        return self.days.get(cls)

    def policy(self, cls: str) -> str:
        return POLICY_PREFIX + cls


def retention_job(retention: Retention, now: float) -> Callable[[sqlite3.Connection], None]:
    """A SQLite writer job: delete, per class, the rows older than the class's retention.

    `fixes` by its `kind` column (and `anon:` ids); `events` and `latest` by each old row's
    beacon, classed by site and id; `promotion_decisions` are shoppers' data as a whole. `now`
    is data time (the tick), so a replay prunes as the live hub would have."""
    cutoffs = {
        c: now - d * SECONDS_PER_DAY
        for c in retention.classes
        if (d := retention.days_of(c)) is not None
    }

    def job(db: sqlite3.Connection) -> None:
        names = _table_names(db)
        if "erasures" in names:
            _prune_erasures(db, now - ERASURE_KEEP_S)
        if not cutoffs:
            return
        removed: dict[str, int] = {}
        db.execute("BEGIN")
        try:
            if "fixes" in names:
                removed["fixes"] = _prune_fixes(db, retention, cutoffs)
            for table in ("events", "latest"):
                if table in names:
                    removed[table] = _prune_by_beacon(db, table, retention, cutoffs)
            if "promotion_decisions" in names and SHOPPERS in cutoffs:
                cur = db.execute(
                    "DELETE FROM promotion_decisions WHERE t < ?", (cutoffs[SHOPPERS],)
                )
                removed["promotion_decisions"] = cur.rowcount
        except BaseException:
            db.execute("ROLLBACK")
            raise
        db.execute("COMMIT")
        if any(removed.values()):
            log.info(
                "retention %s: removed %s",
                json.dumps({c: retention.days_of(c) for c in cutoffs}, sort_keys=True),
                json.dumps(removed, sort_keys=True),
            )

    return job


def _prune_erasures(db: sqlite3.Connection, before: float) -> None:
    """Tombstones of erasures before `before` deleted, and the guards with the last one."""
    from beacon_hub.stores import erasure_guards  # noqa: PLC0415  # stores imports us

    db.execute("BEGIN IMMEDIATE")
    try:
        db.execute("DELETE FROM erasures WHERE erased_at < ?", (before,))
        if db.execute("SELECT 1 FROM erasures LIMIT 1").fetchone() is None:
            erasure_guards(db, on=False)
    except BaseException:
        db.execute("ROLLBACK")
        raise
    db.execute("COMMIT")


_PSEUDONYM_END = PSEUDONYM_PREFIX[:-1] + chr(ord(PSEUDONYM_PREFIX[-1]) + 1)
"""`anon;`: beacon ids from `anon:` up to this one are pseudonyms (an index range; LIKE 'anon:%'
cannot use the index, being case-insensitive)."""


def _prune_fixes(db: sqlite3.Connection, retention: Retention, cutoffs: Mapping[str, float]) -> int:
    """Each kind's old rows through the `(kind, t)` index, so the work (inside the writer's
    transaction) follows what is deleted: `SELECT DISTINCT kind ... WHERE t < ?` walked every
    row older than the shortest retention, a year of pallet history to delete a day of carts."""
    removed = 0
    kinds: list[str | None] = []
    if db.execute("SELECT 1 FROM fixes WHERE kind IS NULL LIMIT 1").fetchone():
        kinds.append(None)
    row = db.execute("SELECT min(kind) FROM fixes").fetchone()
    while row is not None and row[0] is not None:  # hop along the index: one lookup a kind
        kinds.append(str(row[0]))
        row = db.execute("SELECT min(kind) FROM fixes WHERE kind > ?", (kinds[-1],)).fetchone()
    for kind in kinds:
        cls = retention.class_of(kind, "")
        if cls in cutoffs:
            cur = db.execute("DELETE FROM fixes WHERE kind IS ? AND t < ?", (kind, cutoffs[cls]))
            removed += cur.rowcount
    if SHOPPERS in cutoffs:  # pseudonyms of a kind no longer listed as a shopper kind
        for site in _sites_in(db, "fixes"):
            cur = db.execute(
                "DELETE FROM fixes WHERE site = ? AND beacon >= ? AND beacon < ? AND t < ?",
                (site, PSEUDONYM_PREFIX, _PSEUDONYM_END, cutoffs[SHOPPERS]),
            )
            removed += cur.rowcount
    return removed


def _beacons_in(db: sqlite3.Connection, table: str) -> list[tuple[str, str]]:
    """The distinct (site, beacon) of `table`, hopping along its (site, beacon, ...) index."""
    pairs: list[tuple[str, str]] = []
    query = f"SELECT min(beacon) FROM {table} WHERE site = ?"  # noqa: S608  # fixed names
    for site in _sites_in(db, table):
        row = db.execute(query, (site,)).fetchone()
        while row is not None and row[0] is not None:
            pairs.append((site, str(row[0])))
            row = db.execute(f"{query} AND beacon > ?", (site, row[0])).fetchone()
    return pairs


def _prune_by_beacon(
    db: sqlite3.Connection, table: str, retention: Retention, cutoffs: Mapping[str, float]
) -> int:
    """Rows of a table without a kind column: class each (site, beacon) once and delete its old
    rows through the (site, beacon, t) index. The work follows the beacons and what is deleted;
    `SELECT DISTINCT site, beacon ... WHERE t < ?` scanned the whole table (events has no
    index on t)."""
    removed = 0
    for site, beacon in _beacons_in(db, table):
        cls = retention.class_of_beacon(site, beacon)
        if cls in cutoffs:
            cur = db.execute(
                f"DELETE FROM {table} WHERE site = ? AND beacon = ? AND t < ?",  # noqa: S608
                (site, beacon, cutoffs[cls]),
            )
            removed += cur.rowcount
    return removed


# ------------------------------------------------------------------------------------ erasure


def _table_names(db: sqlite3.Connection) -> set[str]:
    return {r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}


_ERASE_TABLES = ("fixes", "latest", "events", "promotion_decisions", "assets")
"""The hub's tables of beacon rows, by their `beacon` column; a database with none is not the
hub's."""
_ERASE_ID_COLUMNS = {**dict.fromkeys(_ERASE_TABLES, "beacon"), "consent": "anon"}
"""Every table erase cleans, and the column that holds the id: the stored consent decision
(consent.ConsentStore) is by pseudonym. Its retained topic keeps the decision, and the hub
stores it again at its next start."""
_BY_SITE_AND_BEACON = frozenset({"fixes", "latest", "events"})
"""Tables indexed on (site, beacon, ...): erased site by site, so that the index finds the rows.
`beacon IN (...)` alone scanned the whole fixes table (months of 10,000 beacons a second),
holding the write lock past the live hub's busy timeout."""


def _sites_in(db: sqlite3.Connection, table: str) -> list[str]:
    """The distinct sites of `table`, hopping along its (site, ...) index: one lookup each."""
    sites: list[str] = []
    query = f"SELECT min(site) FROM {table}"  # noqa: S608  # fixed names
    row = db.execute(query).fetchone()
    while row is not None and row[0] is not None:
        sites.append(str(row[0]))
        row = db.execute(f"{query} WHERE site > ?", (sites[-1],)).fetchone()
    return sites


def erase_key(cfg: PrivacyConfig, sqlite_path: Path) -> bytes:
    """load_key for `erase`: the key the stores' pseudonyms were made with, never a new one.
    A key file that is not there (a typo in the database's path) would give a fresh key and
    the pseudonym of another shopper."""
    if cfg.key is None:
        path = key_file_path(cfg, sqlite_path)
        if not path.is_file():
            raise PrivacyError(
                f"privacy key file {path}: no such file; erase needs the key the hub made its "
                "pseudonyms with (privacy.key_file, by default beside stores.sqlite.path)"
            )
    return load_key(cfg, sqlite_path)


def open_erase_sqlite(path: Path) -> sqlite3.Connection:
    """The hub's existing SQLite database, for `erase`: opened without creating the file, its
    directory or its tables, and refused when it holds none of the tables erase cleans, or
    when a later release wrote it (its shoppers' data may be where this erase does not look:
    StoreError)."""
    from beacon_hub.stores import (  # noqa: PLC0415  # stores imports us
        SCHEMA_VERSION,
        SQLITE_BUSY_TIMEOUT_S,
        check_schema_version,
        upgrade_sqlite,
    )

    if not path.is_file():
        raise PrivacyError(
            f"{path}: no such SQLite database (stores.sqlite.path); erase works on the hub's "
            "existing database"
        )
    try:
        db = sqlite3.connect(
            path.resolve().as_uri() + "?mode=rw",
            uri=True,
            timeout=SQLITE_BUSY_TIMEOUT_S,
            isolation_level=None,
        )
    except sqlite3.Error as e:
        raise PrivacyError(f"{path}: cannot open the SQLite database: {e}") from e
    try:
        # Deleted rows overwritten with zeros (off by default in some builds of SQLite).
        db.execute("PRAGMA secure_delete=ON")
        names = _table_names(db)
    except sqlite3.Error as e:
        db.close()
        raise PrivacyError(f"{path}: not a SQLite database: {e}") from e
    if not names & set(_ERASE_TABLES):
        db.close()
        raise PrivacyError(
            f"{path}: not the hub's database: it has none of the tables {', '.join(_ERASE_TABLES)}"
        )
    try:
        if check_schema_version(db, path) < SCHEMA_VERSION:
            # The tombstone's table (an erase with a hub of the older release still running:
            # the triggers hold for its connection too).
            upgrade_sqlite(db, path)
    except BaseException:
        db.close()
        raise
    return db


def erase_sqlite(
    db: sqlite3.Connection, ids: Iterable[str], erased_at: float | None = None
) -> dict[str, int]:
    """Delete every row of these beacon ids, the stored consent decision of the pseudonym
    included; rows removed per table.

    In the same transaction, each pseudonym among them gets its tombstone (`erasures`, at
    `erased_at`, default now): no row of it dated up to then is stored afterwards, by a hub
    running meanwhile either (stores.erasure_guards), and that hub's InfluxDB writer drops its
    points (stores.ErasureFeed). A raw id gets none: it is never stored for a shopper."""
    ids = list(ids)
    marks = ",".join("?" * len(ids))
    names = _table_names(db)
    removed: dict[str, int] = {}
    from beacon_hub.stores import erasure_guards  # noqa: PLC0415  # stores imports us

    at = time.time() if erased_at is None else erased_at
    tombstones = [(i, at) for i in ids if i.startswith(PSEUDONYM_PREFIX)]
    db.execute("BEGIN")
    try:
        if "erasures" in names and tombstones:
            db.executemany(
                "INSERT INTO erasures VALUES (?, ?) ON CONFLICT (beacon) DO UPDATE"
                " SET erased_at = max(erased_at, excluded.erased_at)",
                tombstones,
            )
            erasure_guards(db, on=True)
        for table, column in _ERASE_ID_COLUMNS.items():
            if table not in names:
                continue
            delete = f"DELETE FROM {table} WHERE {column} IN ({marks})"  # noqa: S608  # fixed names
            if table in _BY_SITE_AND_BEACON:
                removed[table] = sum(
                    db.execute(f"{delete} AND site = ?", [*ids, site]).rowcount
                    for site in _sites_in(db, table)
                )
            else:
                removed[table] = db.execute(delete, ids).rowcount
    except BaseException:
        db.execute("ROLLBACK")
        raise
    db.execute("COMMIT")
    return removed


SCAN_CHUNK_BYTES = 1 << 24
"""The database file is read for left-over copies of an erased id in pieces of this size (16 MiB:
a few reads a second's worth of disk, bounded memory for a file of many gigabytes)."""


def count_copies(path: Path, ids: Iterable[str], besides: Iterable[str] = ()) -> int:
    """How often these ids' bytes occur in the file at `path` (0 when it is not there), less
    those of `besides`, in one read of the file.

    SQLite stores text as UTF-8, so a row's id is there byte for byte, in a row or in a page's
    unused space alike. An id that begins with one of them counts too: `settle_erase` passes
    those stored as `besides`, each of whose copies holds one."""
    signs = {i.encode(): 1 for i in ids} | {b.encode(): -1 for b in besides}
    if not signs or not path.is_file():
        return 0
    overlap = max(len(n) for n in signs) - 1
    count, tail = 0, b""
    with path.open("rb") as f:
        while chunk := f.read(SCAN_CHUNK_BYTES):
            window = tail + chunk
            # A match that lies inside `tail` was counted in the previous window.
            count += sum(sign * (window.count(n) - tail.count(n)) for n, sign in signs.items())
            tail = window[max(len(window) - overlap, 0) :] if overlap else b""
    return count


def _longer_ids(db: sqlite3.Connection, ids: list[str]) -> list[str]:
    """The stored ids that begin with one of `ids` and go on (`...:1:50` for `...:1:5`), those
    that do not begin with another of them: each of their copies holds one of `ids`' bytes."""
    names = _table_names(db)
    found: set[str] = set()
    for table in (t for t in _ERASE_TABLES if t in names):
        # ids are ASCII, so every id that goes on from `i` sorts between `i` and `i` + U+10FFFF.
        query = f"SELECT DISTINCT beacon FROM {table} WHERE beacon > ? AND beacon < ?"  # noqa: S608  # fixed names
        for i in ids:
            bounds = [i, i + "\U0010ffff"]
            if table in _BY_SITE_AND_BEACON:
                for site in _sites_in(db, table):
                    rows = db.execute(f"{query} AND site = ?", [*bounds, site])
                    found.update(r[0] for r in rows)
            else:
                found.update(r[0] for r in db.execute(query, bounds))
    return sorted(b for b in found if not any(b != o and b.startswith(o) for o in found))


def settle_erase(
    db: sqlite3.Connection, path: Path, ids: Iterable[str], *, vacuum: bool
) -> list[str]:
    """After `erase_sqlite`: take the erased rows out of the file's leftovers; one line each.

    - The write-ahead log holds the pages as they were before the delete until a checkpoint
      copies the log into the database (measured: 8,581 copies of an id in the log of a running
      hub after its rows were deleted). TRUNCATE empties it; a reader in the middle of a query
      can keep it from finishing, which is said.
    - With secure_delete the deleted rows' cells and freed pages are zeros, but copies can stay
      in a page's unused space after SQLite rebalanced its b-tree (measured: 10 copies in three
      pages of `fixes` and its history index after erasing 800 of 1,200 rows). Only rewriting
      the file (VACUUM) removes those; it holds the write lock as long as it runs, so a large
      database is best done with the hub stopped (the hub gives up a tick's rows after about
      30 s of waiting).
    """
    ids = list(ids)
    lines: list[str] = []
    if vacuum:
        db.execute("VACUUM")
        lines.append(f"sqlite {path}: rewritten (VACUUM)")
    busy, _, _ = db.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
    if busy:
        lines.append(
            f"sqlite {path}: the write-ahead log is in use by a reader; it keeps old copies of the"
            " rows until the next checkpoint"
        )
    longer = _longer_ids(db, ids)
    copies = sum(
        count_copies(f, ids, besides=longer) for f in (path, path.with_name(path.name + "-wal"))
    )
    tombstones = 0
    if "erasures" in _table_names(db):
        marks = ",".join("?" * len(ids))
        query = f"SELECT count(*) FROM erasures WHERE beacon IN ({marks})"  # noqa: S608  # marks
        tombstones = int(db.execute(query, ids).fetchone()[0])
    if tombstones:
        # Its one copy, in the row that keeps a running hub from storing it again.
        copies = max(0, copies - tombstones)
        lines.append(
            f"sqlite {path}: the pseudonym stays in its tombstone (table erasures) for"
            f" {ERASURE_KEEP_S / 3600:g} to {ERASURE_KEEP_S / 3600 + 1:g} h, then the hub's"
            " retention job removes it"
        )
    if copies:
        lines.append(
            f"sqlite {path}: {copies} stale copies of the id remain in the file's unused space,"
            " outside any row; `erase --vacuum` rewrites the file (stop the hub for a large one)"
        )
    else:
        lines.append(f"sqlite {path}: no copy of the id left in the file")
    return lines


def _influxql_string(value: str) -> str:
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


def erase_influx(cfg: InfluxConfig, ids: Iterable[str], measurements: Iterable[str]) -> list[str]:
    """Delete these beacons' points from InfluxDB and from the hub's spill; one line per thing
    removed.

    The spill first (`spill_dir`: points waiting for InfluxDB, replayed at the hub's next
    start), so that an erase during an outage does not come back, and works while the server
    is down. 1.x: `SHOW SERIES` then `DROP SERIES ... WHERE beacon = '...'` through /query
    (beacon is a tag, so its series hold exactly its points). 2.x: the delete API with a tag
    predicate over all time (not run against a real 2.x server here; docs/privacy.md)."""
    from beacon_hub.stores import erase_spilled  # noqa: PLC0415  # stores imports us

    ids = list(ids)
    measurements = list(measurements)
    try:
        spilled = erase_spilled(cfg.spill_dir, ids)
    except OSError as e:
        raise PrivacyError(f"spill directory {cfg.spill_dir}: {e}") from e
    out: list[str] = []
    if spilled:
        out.append(f"spill {cfg.spill_dir}: {spilled} points")
    if cfg.version == 2:
        return out + _erase_v2(cfg, ids, measurements)
    for beacon in ids:
        where = f"WHERE beacon = {_influxql_string(beacon)}"
        frm = ", ".join(f'"{m}"' for m in measurements)
        found = _v1_query(cfg, f"SHOW SERIES FROM {frm} {where}", post=False)
        series = [
            str(row[0]) for r in found for s in r.get("series", []) for row in s.get("values", [])
        ]
        if series:
            _v1_query(cfg, f"DROP SERIES FROM {frm} {where}", post=True)
        out.extend(f"influxdb {cfg.database}: dropped series {s}" for s in series)
    return out


def _v1_query(cfg: InfluxConfig, q: str, *, post: bool) -> list[dict[str, Any]]:
    params = {"db": cfg.database, "q": q}
    if cfg.username is not None:
        params["u"] = cfg.username
        params["p"] = cfg.password.get_secret_value() if cfg.password else ""
    body = urllib.parse.urlencode(params).encode()
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    if post:
        request = urllib.request.Request(f"{cfg.url}/query", body, method="POST")  # noqa: S310
    else:
        request = urllib.request.Request(f"{cfg.url}/query?{body.decode()}")  # noqa: S310
    try:
        with opener.open(request, timeout=cfg.timeout_s) as r:
            doc = json.loads(r.read())
    except (OSError, ValueError) as e:
        raise PrivacyError(f"influxdb {cfg.url}: {q!r}: {e}") from e
    results: list[dict[str, Any]] = doc.get("results", [])
    for res in results:
        if "error" in res:
            raise PrivacyError(f"influxdb {cfg.url}: {q!r}: {res['error']}")
    return results


def _erase_v2(cfg: InfluxConfig, ids: list[str], measurements: list[str]) -> list[str]:
    from influxdb_client.client.influxdb_client import InfluxDBClient  # noqa: PLC0415

    client = InfluxDBClient(
        url=cfg.url,
        token=cfg.token.get_secret_value() if cfg.token else "",
        org=cfg.org,
        timeout=int(cfg.timeout_s * 1000),
    )
    out: list[str] = []
    try:
        api = client.delete_api()
        for beacon in ids:
            for m in measurements:
                predicate = f'_measurement="{m}" AND beacon="{beacon}"'
                api.delete(
                    "1970-01-01T00:00:00Z",
                    "2262-04-11T00:00:00Z",
                    predicate,
                    bucket=cfg.bucket,
                    org=cfg.org,
                )
                out.append(f"influxdb {cfg.bucket}: deleted {predicate}")
    except Exception as e:
        raise PrivacyError(f"influxdb {cfg.url}: delete failed: {e}") from e
    finally:
        client.close()  # type: ignore[no-untyped-call]
    return out
