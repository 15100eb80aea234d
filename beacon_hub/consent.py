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

Threads. `grant`/`revoke` run on the HTTP server's threads, `apply` on the service thread,
`has_consent` on the service thread (privacy.py) and HTTP threads: one lock guards the map.
A second lock makes each `grant`/`revoke` whole: the clock is read, the map written and the
retained topic published before the next one starts, so the broker keeps the last decision, not
whichever publish came last. `apply` and `has_consent` never wait for a publish.
"""

from __future__ import annotations

import csv
import datetime as dt
import json
import math
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
    ) -> None:
        self._lock = threading.Lock()
        self._decide_lock = threading.Lock()
        """Held by grant/revoke from reading the clock to the last publish (module docstring).
        Safe to hold across MqttLink.publish: MqttLink (ingest.py) sets no on_publish callback,
        so paho's publish() never calls back into the hub, and no paho callback takes this
        lock."""
        self._by_beacon: dict[str, Consent] = dict(initial or {})
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
            c = self._by_beacon.get(beacon)
        return c is not None and c.active(self._clock() if at is None else at)

    # -- the service side

    def apply(self, beacon: str, decision: Consent) -> bool:
        """A decision from the topic; False if an equal or newer one is already known."""
        with self._lock:
            old = self._by_beacon.get(beacon)
            if old is not None and old.t > decision.t:
                return False
            if old == decision:
                return False
            self._by_beacon[beacon] = decision
            self.version += 1
        return True

    def consenting(self) -> list[str]:
        """Beacons with a decision of yes (expired or not), for the docs and tests."""
        with self._lock:
            return sorted(b for b, c in self._by_beacon.items() if c.consent)

    def _decide(self, beacon: str, *, consent: bool, expires: float | None) -> None:
        """Decide now and publish, whole (module docstring): two calls at once take effect, and
        reach the broker, in one order, and the later one wins everywhere."""
        with self._decide_lock:
            with self._lock:
                old = self._by_beacon.get(beacon)
                now = self._clock()
                decision = Consent(consent, now if old is None else max(now, old.t), expires)
                self._by_beacon[beacon] = decision
                self.version += 1
            if self._publish is not None:
                payload = encode_consent(decision)
                for site in self._sites:
                    self._publish(consent_topic(site, beacon), payload, 1, True)
