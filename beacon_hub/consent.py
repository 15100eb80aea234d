"""The consent registry: which shoppers' tags may be tracked individually (docs/privacy.md).

Three sources feed one registry, and the newest decision about a beacon wins:
- a file (`privacy.consent_file`): CSV `beacon[,expires]` or YAML, read at start, decided at t=0
  so anything from the topic or the API overrides it;
- the retained topic `beacons/{site}/consent/{beacon}` with `{"v":1,"consent":true|false,
  "t":..., "expires":...}`: the broker keeps the last decision per beacon, so every hub process
  that serves the site (and a restarted one) learns it on subscribing;
- the API (`PUT/DELETE /api/consent/{beacon}`, web.py) calls `grant`/`revoke`, which decide at
  once and publish the same retained topic for each site of this hub, so the other processes
  agree. A decision's `t` (wall clock of the deciding process) orders decisions from several
  sources; a re-delivered older one changes nothing. An API decision is the newest this process
  knows: its `t` is never before the decision it replaces (a wall clock stepped back, or another
  process's clock ahead, must not make the shopper's latest choice lose).

Consent is per tag, hub-wide: a message on any site's topic decides for the beacon.

Kept across a restart (`ConsentStore`, docs/privacy.md). A hub's persistent session holds the
readings queued while it was stopped, and the broker sends them right after the CONNACK; the
retained decisions come only after the hub's SUBSCRIBE, behind all of them (Mosquitto 2.0;
tests/integration/test_consent_order.py). A hub that started from the file alone ticked its
backlog before it knew any decision: a consenting shopper's fixes were withheld, and a file
grant revoked on the topic was tracked. So each decision is stored in the hub's SQLite database
(table `consent`, by pseudonym: no raw shopper id goes there) and read back at start; the
service acknowledges a consent message only once its decision is stored, or the broker would
not send it again after a crash. A decision made while the hub was stopped is queued for its
session like a reading, in the order the broker received them, so it takes effect in order with
the backlog.

Threads. `grant`/`revoke` run on the HTTP server's threads, `apply` on the service thread,
`has_consent` on the service thread (privacy.py) and HTTP threads: one lock guards the map.
A second lock makes each `grant`/`revoke` whole: the clock is read, the map written, the store
asked and the retained topic published before the next one starts, so the broker keeps the last
decision, not whichever publish came last. `apply` and `has_consent` never wait for a publish.
The store's jobs run on the SQLite writer's thread.
"""

from __future__ import annotations

import csv
import datetime as dt
import json
import math
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from beacon_hub.config_loader import read_yaml
from beacon_hub.errors import BeaconHubError, ConfigError, WireError
from beacon_hub.ids import canonical_beacon_id, check_name_id, is_beacon_id
from beacon_hub.wire import TOPIC_ROOT, WIRE_VERSION

__all__ = [
    "MAX_CONSENT_BYTES",
    "Consent",
    "ConsentRegistry",
    "ConsentStore",
    "consent_subscription",
    "consent_topic",
    "decode_consent",
    "encode_consent",
    "parse_consent_topic",
    "read_consent_file",
]

MAX_CONSENT_BYTES = 4096
"""A consent payload is a handful of fields; anything bigger is refused unread."""
MAX_CONSENT_ENTRIES = 1_000_000
"""Beacons a consent file may list (a chain's worth of tags); more is a mistake."""

Publish = Callable[[str, bytes, int, bool], bool]
"""MqttLink.publish(topic, payload, qos, retain)."""
Job = Callable[[sqlite3.Connection], None]
"""A job for the SQLite writer's thread (SqliteStore.submit)."""


@dataclass(frozen=True, slots=True)
class Consent:
    """One decision about one beacon."""

    consent: bool
    t: float = 0.0
    """When it was decided (Unix seconds); the newest decision wins."""
    expires: float | None = None
    """A grant lapses at this time (Unix seconds); None: until revoked."""

    def active(self, at: float) -> bool:
        return self.consent and (self.expires is None or at < self.expires)


# ------------------------------------------------------------------------------------ the topic


def consent_topic(site: str, beacon: str) -> str:
    if not is_beacon_id(beacon):
        raise WireError(f"{beacon!r:.80} is not a canonical beacon id")
    return f"{TOPIC_ROOT}/{check_name_id(site, 'site id')}/consent/{beacon}"


def consent_subscription(site: str) -> str:
    return f"{TOPIC_ROOT}/{check_name_id(site, 'site id')}/consent/+"


def parse_consent_topic(topic: str) -> tuple[str, str] | None:
    """(site, beacon) of a consent topic; None when the topic is not one; WireError when it is
    one with a bad beacon id."""
    parts = topic.split("/")
    if len(parts) != 4 or parts[0] != TOPIC_ROOT or parts[2] != "consent":
        return None
    if not is_beacon_id(parts[3]) or parts[3].startswith("anon:"):
        raise WireError(f"topic {topic!r:.120}: {parts[3]!r:.80} is not a canonical beacon id")
    return parts[1], parts[3]


def encode_consent(c: Consent) -> bytes:
    obj: dict[str, Any] = {"v": WIRE_VERSION, "consent": c.consent, "t": c.t}
    if c.expires is not None:
        obj["expires"] = c.expires
    return json.dumps(obj, separators=(",", ":"), allow_nan=False).encode()


def _time(obj: dict[str, Any], key: str) -> float | None:
    value = obj.get(key)
    if value is None:
        return None
    if type(value) not in (int, float) or not math.isfinite(value) or not 0 <= value <= 1e11:
        raise WireError(f"consent: {key} = {value!r:.40} is not a Unix time 0..1e11")
    return float(value)


def decode_consent(raw: bytes | bytearray) -> Consent:
    """A consent payload; WireError (naming the field) for anything else. Unknown keys are
    ignored (contracts.md: readers ignore keys they do not know)."""
    if not isinstance(raw, bytes | bytearray):
        raise WireError(f"consent must be bytes, got {type(raw).__name__}")
    if len(raw) > MAX_CONSENT_BYTES:
        raise WireError(f"consent of {len(raw)} bytes exceeds {MAX_CONSENT_BYTES}")
    try:
        obj = json.loads(bytes(raw).decode("utf-8"))
    except UnicodeDecodeError as e:
        raise WireError(f"consent is not UTF-8 ({e.reason} at byte {e.start})") from e
    except ValueError as e:
        raise WireError(f"consent is not valid JSON: {e}") from e
    except RecursionError as e:
        raise WireError("consent is nested too deeply") from e
    if not isinstance(obj, dict):
        raise WireError(f"consent must be a JSON object, got {type(obj).__name__}")
    version = obj.get("v")
    if type(version) is not int or version != WIRE_VERSION:
        raise WireError(f"consent: unsupported version v={version!r:.20}; this hub reads v=1")
    flag = obj.get("consent")
    if type(flag) is not bool:
        raise WireError(f"consent: consent = {flag!r:.40} is not true or false")
    return Consent(flag, _time(obj, "t") or 0.0, _time(obj, "expires"))


# ------------------------------------------------------------------------------------- the file


def _expiry(text: str, where: str) -> float | None:
    text = text.strip()
    if not text:
        return None
    try:
        seconds = float(text)
    except ValueError:
        pass
    else:
        if not math.isfinite(seconds):
            raise ConfigError(where, [f"{where}: expires {text!r:.40} is not a finite time"])
        return seconds
    try:
        when = dt.datetime.fromisoformat(text)
    except ValueError as e:
        raise ConfigError(
            where, [f"{where}: expires {text!r:.40} is not Unix seconds or ISO 8601"]
        ) from e
    if when.tzinfo is None:
        when = when.replace(tzinfo=dt.UTC)
    return when.timestamp()


def _beacon(text: object, where: str) -> str:
    try:
        beacon = canonical_beacon_id(str(text).strip())
    except WireError as e:
        raise ConfigError(where, [f"{where}: {e}"]) from e
    if beacon.startswith("anon:"):
        raise ConfigError(where, [f"{where}: consent is given for a tag's id, not a pseudonym"])
    return beacon


def read_consent_file(path: Path) -> dict[str, Consent]:
    """Beacon -> grant from a CSV (`beacon[,expires]`, header row) or YAML file (a list of ids,
    or of `{beacon: ..., expires: ...}`). Errors name the file and line."""
    out: dict[str, Consent] = {}
    if path.suffix.lower() == ".csv":
        try:
            with path.open(newline="", encoding="utf-8-sig") as f:  # Excel writes a BOM
                rows = list(csv.reader(f))
        except (OSError, UnicodeDecodeError, csv.Error) as e:
            raise ConfigError(str(path), [f"{path}: cannot read: {e}"]) from e
        if not rows or [c.strip() for c in rows[0]][:1] != ["beacon"]:
            raise ConfigError(str(path), [f"{path}:1: expected a header row `beacon[,expires]`"])
        header = [c.strip() for c in rows[0]]
        if header not in (["beacon"], ["beacon", "expires"]):
            raise ConfigError(str(path), [f"{path}:1: columns must be beacon[,expires]"])
        for line, row in enumerate(rows[1:], start=2):
            if not any(c.strip() for c in row):
                continue
            where = f"{path}:{line}"
            if len(row) > len(header):
                raise ConfigError(str(path), [f"{where}: more cells than columns"])
            expires = _expiry(row[1], where) if len(row) > 1 else None
            out[_beacon(row[0], where)] = Consent(True, 0.0, expires)
    else:
        doc = read_yaml(path)
        items = doc.data if doc.data is not None else []
        if not isinstance(items, list):
            raise ConfigError(str(path), [f"{doc.where(())}: expected a list of beacons"])
        for i, item in enumerate(items):
            where = doc.where((i,))
            if isinstance(item, dict):
                unknown = set(item) - {"beacon", "expires"}
                if unknown or "beacon" not in item:
                    raise ConfigError(str(path), [f"{where}: expected {{beacon, expires}}"])
                raw = item.get("expires")
                expires = None if raw is None else _expiry(str(raw), where)
                out[_beacon(item["beacon"], where)] = Consent(True, 0.0, expires)
            else:
                out[_beacon(item, where)] = Consent(True, 0.0, None)
    if len(out) > MAX_CONSENT_ENTRIES:
        raise ConfigError(str(path), [f"{path}: more than {MAX_CONSENT_ENTRIES} beacons"])
    return out


# ------------------------------------------------------------------------------------ the store

_UPSERT = """
INSERT INTO consent (anon, consent, t, expires) VALUES (?, ?, ?, ?)
ON CONFLICT (anon) DO UPDATE SET consent = excluded.consent, t = excluded.t,
    expires = excluded.expires
WHERE excluded.t >= consent.t"""
"""The newest decision wins here as in the registry: hub processes sharing one database write
the same decisions in whatever order their writers get to them."""


class ConsentStore:
    """The registry's decisions in the hub's SQLite database, by pseudonym (module docstring).

    `load` runs before the SQLite writer starts; after that every write is a job submitted to
    the writer's thread, in order. `when_saved` runs a callback (the acknowledgement of a consent
    message) once every decision asked for so far is stored: at once when none is pending, else
    as a job after theirs. A failed write is logged and counted by the writer, and the callback
    still runs, as a tick's acknowledgements do (service.py): the decision holds in memory, and
    a restart learns it from the retained topic, after the backlog, as before."""

    def __init__(self, db: sqlite3.Connection, submit: Callable[[Job], None]) -> None:
        self._db = db
        self._submit = submit
        self._lock = threading.Lock()
        self._pending = 0
        """Decisions reserved (in the registry's lock) and not yet through the writer."""

    def load(self) -> dict[str, Consent]:
        """Pseudonym -> the last decision stored (table `consent`, schema version 3 of the hub's
        database: stores.open_sqlite)."""
        rows = self._db.execute("SELECT anon, consent, t, expires FROM consent").fetchall()
        return {str(a): Consent(bool(c), float(t), e) for a, c, t, e in rows}

    def reserve(self) -> None:
        """A decision is coming (`save`): counted before the registry lets anyone see it, so a
        `when_saved` that finds it in the map also waits for it."""
        with self._lock:
            self._pending += 1

    def save(self, anon: str, decision: Consent) -> None:
        """Store a reserved decision; blocks while the writer's queue is full."""
        row = (anon, int(decision.consent), decision.t, decision.expires)

        def job(db: sqlite3.Connection) -> None:
            try:
                db.execute(_UPSERT, row)
            finally:
                with self._lock:
                    self._pending -= 1

        self._submit(job)

    def when_saved(self, callback: Callable[[], None]) -> None:
        with self._lock:
            now = self._pending == 0
        if now:
            callback()
        else:
            self._submit(lambda _db: callback())


# --------------------------------------------------------------------------------- the registry


class ConsentRegistry:
    """Beacon -> the newest consent decision. Thread-safe (module docstring)."""

    def __init__(
        self,
        initial: dict[str, Consent] | None = None,
        *,
        publish: Publish | None = None,
        sites: Iterable[str] = (),
        clock: Callable[[], float] = time.time,
        store: ConsentStore | None = None,
    ) -> None:
        self._lock = threading.Lock()
        self._decide_lock = threading.Lock()
        """Held by grant/revoke from reading the clock to the last publish (module docstring).
        Safe to hold across MqttLink.publish: MqttLink (ingest.py) sets no on_publish callback,
        so paho's publish() never calls back into the hub, and no paho callback takes this
        lock."""
        self._by_beacon: dict[str, Consent] = dict(initial or {})
        self._store = store
        self._restored: dict[str, Consent] = {} if store is None else store.load()
        """Pseudonym -> the decision a previous run stored, until one for the raw id comes
        (`_set`); read through the pseudonym `attach` hands over (`_known`), and by pseudonym
        (`has_consent_by_pseudonym`)."""
        self._publish = publish
        self._sites = tuple(sites)
        self._clock = clock
        self._pseudonym: Callable[[str], str] | None = None
        self.version = 0
        """Bumped on every change (privacy.py caches decisions per version)."""

    def attach(self, pseudonym: Callable[[str], str]) -> None:
        """privacy.py hands its keyed hash, so `grant` can return the pseudonym."""
        self._pseudonym = pseudonym

    # -- the protocol web.py calls (contract.md)

    def grant(self, beacon: str, expires: float | None = None) -> str:
        """Record consent now, publish it retained for this hub's sites; the pseudonym the
        beacon will have in every output."""
        beacon = canonical_beacon_id(beacon)
        self._decide(beacon, consent=True, expires=expires)
        if self._pseudonym is None:
            # An unkeyed hash of a guessable id would be no pseudonym at all.
            raise BeaconHubError("consent registry: no privacy key attached (Privacy.attach)")
        return self._pseudonym(beacon)

    def revoke(self, beacon: str) -> None:
        """Withdraw consent now (tracking stops at the next tick); stored data stays until
        retention or `beacon-hub erase`."""
        self._decide(canonical_beacon_id(beacon), consent=False, expires=None)

    def has_consent(self, beacon: str, at: float | None = None) -> bool:
        """True if the beacon's shopper has consented and the grant has not expired at `at`
        (default now; privacy.py passes the tick's data time)."""
        with self._lock:
            c = self._known(beacon)
        return c is not None and c.active(self._clock() if at is None else at)

    def has_consent_by_pseudonym(self, anon: str, at: float) -> bool:
        """True if the decision a previous run stored under this pseudonym grants consent at
        `at`, while no decision about the tag's raw id has replaced it (`_set`). For a shopper
        whose raw id has no decision here (promotions.py's PseudonymConsent asks, seeing only
        pseudonyms): after a restart that is every tag whose decision only the store knew, for
        the whole run if the retained copy that comes after the backlog is that same decision
        (`apply` changes nothing then)."""
        with self._lock:
            c = self._restored.get(anon)
        return c is not None and c.active(at)

    # -- the service side

    def apply(self, beacon: str, decision: Consent) -> bool:
        """A decision from the topic; False if an equal or newer one is already known."""
        with self._lock:
            old = self._known(beacon)
            if old is not None and old.t > decision.t:
                return False
            if old == decision:
                return False
            anon = self._set(beacon, decision)
        self._save(anon, decision)
        return True

    def when_saved(self, callback: Callable[[], None]) -> None:
        """Run `callback` once every decision so far is stored (ConsentStore.when_saved); at
        once without a store."""
        if self._store is None:
            callback()
        else:
            self._store.when_saved(callback)

    def consenting(self) -> list[str]:
        """Beacons with a decision of yes (expired or not), for the docs and tests. A decision
        restored from the store is known by pseudonym only (`has_consent_by_pseudonym`), until a
        newer one about the beacon comes."""
        with self._lock:
            return sorted(b for b, c in self._by_beacon.items() if c.consent)

    def decided(self) -> list[str]:
        """Beacons with a decision by their raw id, yes or no (promotions.py's PseudonymConsent
        indexes them by pseudonym: a pseudonym none of them has is asked of
        `has_consent_by_pseudonym`)."""
        with self._lock:
            return list(self._by_beacon)

    def _decide(self, beacon: str, *, consent: bool, expires: float | None) -> None:
        """Decide now and publish, whole (module docstring): two calls at once take effect, and
        reach the broker, in one order, and the later one wins everywhere."""
        with self._decide_lock:
            with self._lock:
                old = self._known(beacon)
                now = self._clock()
                decision = Consent(consent, now if old is None else max(now, old.t), expires)
                anon = self._set(beacon, decision)
            # Stored before it is published: our own copy, coming back on the topic, is then
            # acknowledged only after this (ConsentStore.when_saved).
            self._save(anon, decision)
            if self._publish is not None:
                payload = encode_consent(decision)
                for site in self._sites:
                    self._publish(consent_topic(site, beacon), payload, 1, True)

    def _known(self, beacon: str) -> Consent | None:
        """The newest decision about `beacon`: the map's, or one a previous run stored under its
        pseudonym (a file grant at t=0 must not hide a revocation stored since). Under _lock."""
        c = self._by_beacon.get(beacon)
        if self._restored and self._pseudonym is not None:
            stored = self._restored.get(self._pseudonym(beacon))
            if stored is not None and (c is None or stored.t >= c.t):
                return stored
        return c

    def _set(self, beacon: str, decision: Consent) -> str | None:
        """Record a decision (under _lock); its pseudonym if the store is to keep it, reserved
        there before the lock lets anyone see the decision (ConsentStore.reserve)."""
        self._by_beacon[beacon] = decision
        self.version += 1
        if self._pseudonym is None:
            return None
        anon = self._pseudonym(beacon)
        self._restored.pop(anon, None)
        if self._store is None:
            return None
        self._store.reserve()
        return anon

    def _save(self, anon: str | None, decision: Consent) -> None:
        """Outside _lock: the writer's queue may be full, and `has_consent` must not wait."""
        if anon is not None and self._store is not None:
            self._store.save(anon, decision)
