"""Shoppers' privacy between the engine and every output (docs/privacy.md).

    table, events = privacy.apply(site, result.fixes, result.events)

- A beacon of a shopper kind (`privacy.shopper_kinds`, default cart) without consent is removed
  from the fixes and events: it is never tracked individually, stored or targeted. Zone
  occupancy is counted before this step (service.py), so it still counts there. What was removed
  is counted in `beacon_hub_privacy_withheld_{fixes,events}_total`.
- A consenting shopper's id becomes `anon:{16 hex}`: the first 64 bits of
  HMAC-SHA256(key, id), stable for one key, unlinkable without it.
- Retention: `retention_job` deletes SQLite fixes and events older than `retention_days`.
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
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
from prometheus_client import CollectorRegistry, Counter

from beacon_hub.consent import ConsentRegistry
from beacon_hub.engine import FixTable
from beacon_hub.errors import BeaconHubError
from beacon_hub.hubconfig import InfluxConfig, PrivacyConfig
from beacon_hub.site import Site
from beacon_hub.wire import Event

__all__ = [
    "KEY_BYTES",
    "PSEUDONYM_PREFIX",
    "RETENTION_EVERY_S",
    "Privacy",
    "PrivacyError",
    "erase_influx",
    "erase_sqlite",
    "key_file_path",
    "load_key",
    "pseudonym",
    "retention_job",
]

log = logging.getLogger(__name__)

PSEUDONYM_PREFIX = "anon:"
KEY_BYTES = 32
"""HMAC-SHA256 keys of the hash's block-size half: 256 bits, as RFC 2104 recommends (>= L)."""
RETENTION_EVERY_S = 3600.0
"""How often the retention job runs: retention is counted in days, an hour late is nothing."""
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
        keep: list[int] = []
        beacons: list[str] = []
        changed = False
        for i, (b, k) in enumerate(zip(fixes.beacons, fixes.kinds, strict=True)):
            if k in shoppers:
                changed = True
                if not has(b, t):
                    continue
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
            else:
                withheld.append(e)
        self.withheld = withheld
        if withheld:
            self.withheld_events.labels(site).inc(len(withheld))
        return table, out


def _select(fixes: FixTable, keep: list[int], beacons: list[str]) -> FixTable:
    """The rows `keep` of a FixTable, with new beacon ids; every per-row column (array or
    list) is taken, whatever columns the table has grown."""
    n = len(fixes)
    if len(keep) == n:
        return dataclasses.replace(fixes, beacons=beacons)
    idx = np.asarray(keep, dtype=np.intp)
    changes: dict[str, Any] = {"beacons": beacons}
    for f in dataclasses.fields(fixes):
        if f.name == "beacons":
            continue
        value = getattr(fixes, f.name)
        if isinstance(value, np.ndarray) and value.ndim >= 1 and value.shape[0] == n:
            changes[f.name] = value[idx]
        elif isinstance(value, list) and len(value) == n:
            changes[f.name] = [value[i] for i in keep]
    return dataclasses.replace(fixes, **changes)


# ---------------------------------------------------------------------------------- retention


def retention_job(days: float, now: float) -> Callable[[sqlite3.Connection], None]:
    """A SQLite writer job: delete fixes, events and promotion decisions older than `days`."""
    cutoff = now - days * SECONDS_PER_DAY

    def job(db: sqlite3.Connection) -> None:
        removed = {}
        db.execute("BEGIN")
        try:
            for table in _tables_with_time(db):
                cur = db.execute(f"DELETE FROM {table} WHERE t < ?", (cutoff,))  # noqa: S608  # fixed names
                removed[table] = cur.rowcount
        except BaseException:
            db.execute("ROLLBACK")
            raise
        db.execute("COMMIT")
        if any(removed.values()):
            log.info("retention (%g days): removed %s", days, json.dumps(removed, sort_keys=True))

    return job


_RETAINED_TABLES = ("fixes", "events", "latest", "promotion_decisions")


def _tables_with_time(db: sqlite3.Connection) -> list[str]:
    names = {r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    return [t for t in _RETAINED_TABLES if t in names]


# ------------------------------------------------------------------------------------ erasure

_ERASE_TABLES = ("fixes", "latest", "events", "promotion_decisions", "assets")


def erase_sqlite(db: sqlite3.Connection, ids: Iterable[str]) -> dict[str, int]:
    """Delete every row of these beacon ids; rows removed per table."""
    ids = list(ids)
    marks = ",".join("?" * len(ids))
    names = {r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    removed: dict[str, int] = {}
    db.execute("BEGIN")
    try:
        for table in _ERASE_TABLES:
            if table in names:
                cur = db.execute(
                    f"DELETE FROM {table} WHERE beacon IN ({marks})",  # noqa: S608  # fixed names
                    ids,
                )
                removed[table] = cur.rowcount
    except BaseException:
        db.execute("ROLLBACK")
        raise
    db.execute("COMMIT")
    return removed


def _influxql_string(value: str) -> str:
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


def erase_influx(cfg: InfluxConfig, ids: Iterable[str], measurements: Iterable[str]) -> list[str]:
    """Delete these beacons' points from InfluxDB; one line per thing removed.

    1.x: `SHOW SERIES` then `DROP SERIES ... WHERE beacon = '...'` through /query (beacon is a
    tag, so its series hold exactly its points). 2.x: the delete API with a tag predicate over
    all time (not run against a real 2.x server here; docs/privacy.md)."""
    ids = list(ids)
    measurements = list(measurements)
    if cfg.version == 2:
        return _erase_v2(cfg, ids, measurements)
    out: list[str] = []
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
