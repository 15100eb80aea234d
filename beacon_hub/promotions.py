"""Proximity promotions: rules over the engine's zone events, decided in data time
(docs/promotions.md).

    shoppers = PseudonymConsent(consent_registry, privacy.pseudonym)
    evaluator = Evaluator(rules, sites, kind_of, has_consent, shopper_kinds, shoppers=shoppers)
    decisions = evaluator.evaluate(site, t, events, withheld)       # once per tick; no I/O
    promotions = Promotions(...); promotions.tick(site, t, events, withheld)   # the shell

A visit starts at `zone_enter` (or a `dwell` event for a visit already under way when the hub
started; a second `zone_enter` of an open visit is ignored) and ends at `zone_exit` or
`beacon_lost`. Once a visit has lasted a rule's `min_dwell_s`, the rule decides exactly once for
that visit, in this order:
suppressed_no_consent -> outside_hours -> suppressed_cooldown -> suppressed_cap -> sent.
Consent is asked again at that moment, for shoppers too: a shopper who revoked (or whose grant
expired) mid-visit is `suppressed_no_consent`. Their later events reach us withheld, under the
raw id; the open visit moves under that id, so their exit still closes it.
Cooldown is per rule and shopper (from the last `sent`); the daily cap counts a rule's sends per
site and local day (the site file's timezone). Both are rebuilt at start from the `sent` rows
of SQLite `promotion_decisions`, so a restart resets neither. Every decision is counted in
`beacon_hub_promotion_decisions_total` and stored in `promotion_decisions`; a shopper without
consent is stored without an id. The table is in the hub's SQLite file, whose layout and
its versions stores.py keeps (`open_sqlite` creates it with the others). A `sent` is
delivered once its row is stored (on the SQLite writer's thread, right after the tick's own
transaction): published QoS 1 on `beacons/{site}/promotion/{beacon}` and, if configured,
POSTed to the webhook. So a crash never
delivers a promotion that a restart cannot see: the ticks after the last stored one are
computed again (docs/hub.md), and a decision of theirs was either stored (the restored cooldown
holds the repeat back) or never delivered.

Webhook. One worker thread, a bounded queue (`promotions.webhook.queue`; full: the newest is
dropped and counted), retries with doubling backoff on network errors (a broken HTTP answer
included), 408, 425, 429 and 5xx; a redirect is not followed (_NoRedirect). An attempt, from its
name lookup to its answer's last byte, ends `timeout_s` after it began (_Lookups,
_DeadlineSocket: one deadline, not one per read), and of an answer's body at most
MAX_ANSWER_BYTES are read (_read_answer); an answer not complete by then is a timeout, retried.
The worker never dies: a delivery that raises anything unforeseen is counted failed and logged,
and the next promotion is delivered as usual. Its close gives the queue `timeout_s`, returns
within WEBHOOK_CLOSE_GRACE_S more, and counts what it left dropped (Webhook.close). Each POST
carries `X-Beacon-Hub-Timestamp` (Unix seconds), `X-Beacon-Hub-Signature: sha256={hex
HMAC-SHA256(secret, "{timestamp}.{body}")}` and `Idempotency-Key` (the same on every retry of
one promotion, so the receiver drops a retry whose first try did arrive).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import functools
import hashlib
import hmac
import http.client
import logging
import queue
import re
import socket
import sqlite3
import ssl
import threading
import time
import urllib.error
import urllib.request
import zoneinfo
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal

from prometheus_client import CollectorRegistry, Counter
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, StrictStr

from beacon_hub.config_loader import Loc, problems_to_error, read_yaml, validate_located
from beacon_hub.consent import ConsentRegistry
from beacon_hub.errors import ConfigError
from beacon_hub.hubconfig import WebhookConfig
from beacon_hub.ids import NAME_ID_PATTERN
from beacon_hub.ingest import RateLimitedLog
from beacon_hub.site import BeaconKindName, Site
from beacon_hub.wire import Event, Promotion, encode_promotion, promotion_topic

__all__ = [
    "DECISIONS",
    "Decision",
    "Evaluator",
    "Promotions",
    "PseudonymConsent",
    "Rule",
    "RulesFile",
    "Webhook",
    "idempotency_key",
    "load_rules",
    "sign",
]

log = logging.getLogger(__name__)

DecisionKind = Literal[
    "sent", "suppressed_cooldown", "suppressed_cap", "suppressed_no_consent", "outside_hours"
]
DECISIONS: tuple[DecisionKind, ...] = (
    "sent",
    "suppressed_cooldown",
    "suppressed_cap",
    "suppressed_no_consent",
    "outside_hours",
)
RETRY_MIN_S = 0.5
"""First wait after a failed webhook POST; doubles up to `retry_max_s`."""
PRUNE_EVERY_TICKS = 1000
"""Cooldown entries older than their cooldown are forgotten this often (bounded memory)."""
VISIT_MAX_S = 2 * 86_400.0
"""A visit open this long is forgotten at the next prune: longer than any `min_dwell_s` (at most
a day), so every rule has decided it, and its exit may never reach us (consent given again
mid-visit: the exit comes under the pseudonym, the visit was moved under the raw id)."""
RESTORE_DAY_S = 25 * 3600.0
"""At start, `sent` rows this far before the newest one are read besides each rule's cooldown:
a local day lasts at most 25 h (the day daylight saving time ends)."""
RESTORE_WAIT_S = 60.0
"""How long the start waits for the SQLite writer to read those rows (it runs them at once
before the writer thread starts, as service.py does)."""
RETRYABLE_HTTP = frozenset({408, 425, 429})
"""Besides 5xx: timeouts and rate limits are worth another try; other 4xx never succeed."""
MAX_ANSWER_BYTES = 65_536
"""The most of a receiver's answer the worker reads: the status is all it needs, and an endless
or huge body (a misconfigured endpoint streaming a file) must not hold the worker, which every
later promotion waits for, nor fill the hub's memory. 64 KiB holds any error page."""
WEBHOOK_CLOSE_GRACE_S = 0.5
"""Webhook.close returns at most this long after its `timeout_s`: what the worker gets, once
told to stop, to count the promotion it was on and end. One waiting to retry wakes at once and
takes milliseconds; one in an attempt is not waited for (the attempt ends by the webhook's
timeout_s, then counts it). The first took milliseconds on the 2-core test machine (close(0.5)
returned after 0.50 s, all counted), so 0.5 s leaves a loaded hub host a wide margin, and
the hub's promotions shutdown (service.SHUTDOWN_FLUSH_S, 3 s) stays within 3.5 s."""
WEBHOOK_LOG_EVERY_S = 60.0
"""A broken receiver fails every attempt: say why at most once a minute per kind of failure
(the counter has every one)."""

_SENT_SINCE = """
SELECT site, rule, beacon, t FROM promotion_decisions
WHERE decision = 'sent'
  AND t >= (SELECT max(t) FROM promotion_decisions WHERE decision = 'sent') - ?
"""
_HH_MM = re.compile(r"(?:[01][0-9]|2[0-3]):[0-5][0-9]")
"""A local wall-clock time. Nothing else: an offset ('08:00+01:00') would make an aware time
that cannot be compared with the site's local one, and the site file's timezone already says
where the rule's hours are."""


def _clock_time(text: str) -> str:
    if _HH_MM.fullmatch(text) is None:
        raise ValueError("expected a quoted local time HH:MM (the site's timezone), e.g. '08:00'")
    return text


class Rule(BaseModel):
    """One promotion rule (docs/promotions.md)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    id: Annotated[StrictStr, Field(pattern=NAME_ID_PATTERN)]
    zone: Annotated[StrictStr, Field(pattern=NAME_ID_PATTERN)]
    site: Annotated[StrictStr, Field(pattern=NAME_ID_PATTERN)] | None = None
    """Only this site; None: every site of the hub with this zone."""
    kind: BeaconKindName = "cart"
    """The beacon kind it targets; a kind of the sites' `beacon_kinds` (load_rules checks)."""
    min_dwell_s: float = Field(default=10.0, ge=0, le=86_400)
    start: Annotated[StrictStr, AfterValidator(_clock_time)] | None = None
    """Local time (site timezone) from which it may fire; with `end`. Quote it: '08:00'."""
    end: Annotated[StrictStr, AfterValidator(_clock_time)] | None = None
    """Local time until which it may fire; before `start` means overnight."""
    cooldown_s: float = Field(default=3600.0, ge=0, le=30 * 86_400)
    """Per shopper: no second send of this rule within this time of the last one."""
    daily_cap: int | None = Field(default=None, ge=0)
    """Sends of this rule per site and local day; None: no cap."""
    consent_required: bool = True
    """Shopper kinds always need consent (privacy.py drops them first); for other kinds this
    asks the consent registry too."""
    offer: dict[str, Any] = {}
    """Passed through to the promotion payload (offer id, text, screen...)."""


class RulesFile(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    rules: list[Rule] = []


def load_rules(path: Path, sites: Mapping[str, Site]) -> list[Rule]:
    """The rules file, checked against the hub's sites; errors name the file and line."""
    doc = read_yaml(path)
    if not isinstance(doc.data, dict):
        raise ConfigError(str(path), [f"{path}: the top level must be a mapping of keys"])
    rules = validate_located(RulesFile, doc).rules
    problems: list[tuple[Loc, str]] = []
    seen: set[str] = set()
    for i, rule in enumerate(rules):
        for key, what in _rule_problems(rule, sites, seen):
            problems.append((("rules", i, key), f"rule {rule.id!r}: {what}"))
        seen.add(rule.id)
    if problems:
        raise problems_to_error(doc, problems)
    return list(rules)


def _rule_problems(
    rule: Rule, sites: Mapping[str, Site], seen: set[str]
) -> Iterable[tuple[str, str]]:
    """(key, what is wrong) of one rule against the hub's sites and the rules before it."""
    if rule.id in seen:
        yield "id", "rule id given twice"
    if (rule.start is None) != (rule.end is None):
        yield ("start" if rule.end is None else "end"), "give both start and end, or neither"
    elif rule.start is not None and rule.start == rule.end:
        yield "end", f"end equals start ({rule.start!r}): no time is inside; leave both out"
    if rule.site is not None and rule.site not in sites:
        yield "site", f"site {rule.site!r} is not served by this hub"
        return
    targets = [sites[rule.site]] if rule.site is not None else list(sites.values())
    with_zone = [s for s in targets if rule.zone in {z.id for z in s.zones}]
    if not with_zone:
        yield "zone", f"zone {rule.zone!r} is in none of the sites"
        return
    kinds = {k.kind for s in with_zone for k in s.beacon_kinds}
    if rule.kind not in kinds:
        names = ", ".join(sorted(s.id for s in with_zone))
        have = ", ".join(sorted(kinds)) or "none"
        what = f"kind {rule.kind!r} is no beacon kind of {names} (site file beacon_kinds: {have})"
        yield "kind", what + "; the rule would never fire"


@dataclass(frozen=True, slots=True)
class Decision:
    t: float
    site: str
    rule: str
    zone: str
    beacon: str | None
    """The (pseudonymised) shopper; None when it had no consent."""
    decision: DecisionKind
    offer: Mapping[str, Any] = field(default_factory=dict)


@dataclass(slots=True)
class _Visit:
    enter: float
    consented: bool
    decided: set[str] = field(default_factory=set)


class PseudonymConsent:
    """Consent asked by pseudonym. The registry knows shoppers by their raw ids; promotions see
    only pseudonyms (privacy.py). This keeps the reverse index of the beacons the registry has a
    decision about in memory, the same knowledge privacy.py's pseudonym cache holds, rebuilt
    when the registry changed and a shopper's decision is due: one keyed hash per beacon
    (privacy.py caches them).

    A decision the registry restored at start (consent.py, ConsentStore) is known by pseudonym
    only, and the privacy step honours it from the first tick; so it is asked here too, for a
    pseudonym that no raw id of the registry has. Answering only through the raw ids, a
    restarted hub decided suppressed_no_consent for every visit of a shopper whose decision it
    restored, the backlog's and all later ones (the retained copy, equal to the restored
    decision, changes nothing). A pseudonym with a raw id is asked by that id: the registry's
    newest decision, the restored one included, so a revocation of either kind holds."""

    def __init__(self, registry: ConsentRegistry, pseudonym: Callable[[str], str]) -> None:
        self._registry = registry
        self.pseudonym = pseudonym
        """Raw id -> pseudonym (Privacy.pseudonym)."""
        self._version = -1
        self._raw_of: dict[str, str] = {}

    def has_consent(self, anon: str, at: float) -> bool:
        """Has the shopper behind this pseudonym consent at data time `at`?"""
        version = self._registry.version  # before reading: a change meanwhile rebuilds again
        if version != self._version:
            self._raw_of = {self.pseudonym(b): b for b in self._registry.decided()}
            self._version = version
        raw = self._raw_of.get(anon)
        if raw is not None:
            return self._registry.has_consent(raw, at)
        # No raw id (as of `version`) has this pseudonym: a restored decision, if any, is the
        # newest. One made by raw id since removed it (ConsentRegistry._set): no until the next
        # rebuild, never a stale yes.
        return self._registry.has_consent_by_pseudonym(anon, at)


class Evaluator:
    """The rules over events, in data time; pure and deterministic.

    `shoppers` lets it follow a shopper's consent after the visit started (module docstring);
    the hub must pass it. Without it (tests of other things), a shopper's consent is taken as
    it was at the visit's first event."""

    def __init__(
        self,
        rules: Sequence[Rule],
        sites: Mapping[str, Site],
        kind_of: Callable[[str, str], str | None],
        has_consent: Callable[[str, float], bool],
        shopper_kinds: Iterable[str] = ("cart",),
        *,
        shoppers: PseudonymConsent | None = None,
    ) -> None:
        self.rules = list(rules)
        self.kind_of = kind_of
        self.has_consent = has_consent
        self.shopper_kinds = frozenset(shopper_kinds)
        self.shoppers = shoppers
        self._tz = {s.id: zoneinfo.ZoneInfo(s.timezone) for s in sites.values()}
        self._by_zone: dict[tuple[str, str], list[Rule]] = {}
        for site in sites.values():
            zones = {z.id for z in site.zones}
            for rule in self.rules:
                if rule.zone in zones and rule.site in (None, site.id):
                    self._by_zone.setdefault((site.id, rule.zone), []).append(rule)
        self._visits: dict[tuple[str, str, str], _Visit] = {}
        self._zones_of: dict[tuple[str, str], set[str]] = {}
        self._last_sent: dict[tuple[str, str, str], float] = {}
        self._day: dict[tuple[str, str], tuple[dt.date, int]] = {}
        self._ticks = 0

    @property
    def open_visits(self) -> int:
        """Visits under way; each ends at its exit, a beacon_lost or VISIT_MAX_S."""
        return len(self._visits)

    def evaluate(
        self, site: str, t: float, events: Iterable[Event], withheld: Iterable[Event] = ()
    ) -> list[Decision]:
        """Advance with one tick's events (`withheld`: shoppers without consent, raw ids, from
        privacy.py); the decisions due at data time t."""
        for e in events:
            self._visit_event(site, e, consented=True)
        for e in withheld:
            self._consent_ended(site, e.beacon)
            self._visit_event(site, e, consented=False)
        out: list[Decision] = []
        for (vsite, beacon, zone), visit in self._visits.items():
            if vsite != site:
                continue
            for rule in self._by_zone.get((site, zone), ()):
                if rule.id in visit.decided or t - visit.enter < rule.min_dwell_s:
                    continue
                # Without consent too: a withheld shopper's raw id has its kind from the site
                # file, and a rule for another kind must not count (or store) a decision.
                if self.kind_of(site, beacon) != rule.kind:
                    continue
                visit.decided.add(rule.id)
                out.append(self._decide(rule, site, beacon, zone, t, visit.consented))
        self._ticks += 1
        if self._ticks % PRUNE_EVERY_TICKS == 0:
            self._prune(t)
        return out

    def restore(self, sent: Iterable[tuple[str, str, str | None, float]]) -> None:
        """Before the first tick: the cooldowns and daily counts that decisions already sent
        left (site, rule, beacon, t: rows of promotion_decisions), e.g. after a restart. Each
        rule's count is that of the local day of its newest send; rows of rules or sites this
        hub no longer has are left out."""
        known = {r.id for r in self.rules}
        newest: float | None = None
        for site, rule, beacon, t in sorted(sent, key=lambda row: row[3]):
            if rule not in known or site not in self._tz:
                continue
            newest = t
            if beacon is not None:
                self._last_sent[(rule, site, beacon)] = t
            day = dt.datetime.fromtimestamp(t, self._tz[site]).date()
            counted, count = self._day.get((rule, site), (day, 0))
            self._day[(rule, site)] = (day, count + 1 if counted == day else 1)
        if newest is not None:
            self._prune(newest)

    def _consent_ended(self, site: str, raw: str) -> None:
        """A withheld event of `raw`: its open visits under the pseudonym, if any (consent
        ended mid-visit), go on as visits without consent under the raw id, so its exit closes
        them and a rule that decides them decides suppressed_no_consent."""
        if self.shoppers is None:
            return
        anon = self.shoppers.pseudonym(raw)
        for zone in self._zones_of.pop((site, anon), set()):
            visit = self._visits.pop((site, anon, zone), None)
            if visit is None or (site, raw, zone) in self._visits:
                continue
            visit.consented = False
            self._visits[(site, raw, zone)] = visit
            self._zones_of.setdefault((site, raw), set()).add(zone)

    def _visit_event(self, site: str, e: Event, consented: bool) -> None:
        if e.type == "beacon_lost":
            for zone in self._zones_of.pop((site, e.beacon), set()):
                self._visits.pop((site, e.beacon, zone), None)
            return
        if e.zone is None or (site, e.zone) not in self._by_zone:
            return
        key = (site, e.beacon, e.zone)
        if e.type == "zone_enter" and key not in self._visits:  # else a repeat: the visit goes on
            self._visits[key] = _Visit(e.t, consented)
            self._zones_of.setdefault((site, e.beacon), set()).add(e.zone)
        elif e.type == "dwell" and key not in self._visits:
            # A visit under way when the hub (re)started: its start from the dwell time.
            since = float(e.data.get("dwell_s", 0.0))
            self._visits[key] = _Visit(e.t - since, consented)
            self._zones_of.setdefault((site, e.beacon), set()).add(e.zone)
        elif e.type == "zone_exit":
            self._close(key)

    def _close(self, key: tuple[str, str, str]) -> None:
        site, beacon, zone = key
        self._visits.pop(key, None)
        zones = self._zones_of.get((site, beacon))
        if zones is not None:
            zones.discard(zone)
            if not zones:
                del self._zones_of[(site, beacon)]

    def _decide(  # noqa: PLR0917  # one visit's facts, all needed
        self, rule: Rule, site: str, beacon: str, zone: str, t: float, consented: bool
    ) -> Decision:
        def made(kind: DecisionKind, who: str | None = beacon) -> Decision:
            return Decision(t, site, rule.id, zone, who, kind, rule.offer)

        if not consented:
            return made("suppressed_no_consent", None)
        if rule.kind in self.shopper_kinds:  # the visit's beacon is of the rule's kind
            if self.shoppers is not None and not self.shoppers.has_consent(beacon, t):
                return made("suppressed_no_consent", None)  # revoked or expired mid-visit
        elif rule.consent_required and not self.has_consent(beacon, t):
            return made("suppressed_no_consent", None)
        local = dt.datetime.fromtimestamp(t, self._tz[site])
        if rule.start is not None and rule.end is not None:
            start, end = dt.time.fromisoformat(rule.start), dt.time.fromisoformat(rule.end)
            now = local.time()
            inside = start <= now < end if start <= end else (now >= start or now < end)
            if not inside:
                return made("outside_hours")
        key = (rule.id, site, beacon)
        last = self._last_sent.get(key)
        if last is not None and t - last < rule.cooldown_s:
            return made("suppressed_cooldown")
        day, count = self._day.get((rule.id, site), (local.date(), 0))
        if day != local.date():
            day, count = local.date(), 0
        if rule.daily_cap is not None and count >= rule.daily_cap:
            self._day[(rule.id, site)] = (day, count)
            return made("suppressed_cap")
        self._day[(rule.id, site)] = (day, count + 1)
        self._last_sent[key] = t
        return made("sent")

    def _prune(self, t: float) -> None:
        cooldown = {r.id: r.cooldown_s for r in self.rules}
        self._last_sent = {
            k: last for k, last in self._last_sent.items() if t - last < cooldown.get(k[0], 0.0)
        }
        for key in [k for k, visit in self._visits.items() if t - visit.enter > VISIT_MAX_S]:
            self._close(key)


# ------------------------------------------------------------------------------------ webhook


def sign(secret: bytes, timestamp: str, body: bytes) -> str:
    """The signature header's value: `sha256=` + HMAC-SHA256(secret, "{timestamp}." + body)."""
    mac = hmac.new(secret, timestamp.encode() + b"." + body, hashlib.sha256).hexdigest()
    return "sha256=" + mac


class Webhook:
    """POSTs promotions on a worker thread (module docstring: queue, retries, headers)."""

    def __init__(
        self,
        cfg: WebhookConfig,
        counter: Counter,
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.cfg = cfg
        self._counter = counter
        self._clock = clock
        self._queue: queue.Queue[tuple[str, bytes] | None] = queue.Queue(maxsize=cfg.queue)
        self._stop = threading.Event()
        self._opener = urllib.request.build_opener(
            urllib.request.ProxyHandler({}),
            _NoRedirect(),
            _DeadlineHTTPHandler(),
            _DeadlineHTTPSHandler(),
        )
        self._log = RateLimitedLog(WEBHOOK_LOG_EVERY_S, logger=log)
        self._thread = threading.Thread(target=self._run, name="beacon-hub-webhook", daemon=True)
        self._thread.start()

    def post(self, key: str, body: bytes) -> None:
        """Service thread: hand over; never blocks. Full queue, or closed: drop this one, count
        it."""
        if self._stop.is_set():  # no worker will take it
            self._counter.labels("dropped").inc()
            return
        try:
            self._queue.put_nowait((key, body))
        except queue.Full:
            self._counter.labels("dropped").inc()

    def close(self, timeout_s: float) -> None:
        """Deliver what is queued for up to `timeout_s`, then give up; returns within
        `timeout_s` + WEBHOOK_CLOSE_GRACE_S. What is still queued then is counted dropped before
        it returns. A promotion in flight is not waited for: counted when its attempt ends
        (within the webhook's timeout_s, if the process still runs), failed unless that attempt
        succeeds, since none follows."""
        deadline = time.monotonic() + timeout_s
        with contextlib.suppress(queue.Full):  # full until the deadline: _stop ends the worker
            self._queue.put(None, timeout=timeout_s)
        self._thread.join(max(0.0, deadline - time.monotonic()))
        self._stop.set()  # no attempt starts now; a retry's wait ends at once
        if not self._thread.is_alive():
            return
        left = 0
        with contextlib.suppress(queue.Empty):  # the worker takes some too: each counted once
            while True:
                if self._queue.get_nowait() is not None:  # None: our own, put above
                    left += 1
        self._counter.labels("dropped").inc(left)
        with contextlib.suppress(queue.Full):  # room now, unless a post came in between
            self._queue.put_nowait(None)  # the worker ends after its attempt
        self._thread.join(WEBHOOK_CLOSE_GRACE_S)
        busy = "; an attempt still in flight" if self._thread.is_alive() else ""
        log.warning(
            "webhook %s: closed with %d queued promotions undelivered (counted dropped)%s",
            self.cfg.url,
            left,
            busy,
        )

    def _run(self) -> None:
        """The worker. Whatever one delivery raises, it is counted failed and the worker goes
        on: a dead worker would leave every later promotion to fill the queue and be dropped."""
        while (item := self._queue.get()) is not None:
            if self._stop.is_set():
                self._counter.labels("dropped").inc()
                continue
            try:
                self._deliver(*item)
            except Exception:  # noqa: BLE001  # outlive any delivery; traceback logged
                self._counter.labels("failed").inc()
                self._log.warning(  # with the traceback: a bug to fix
                    ("unexpected",),
                    "webhook %s: promotion %s failed unexpectedly; the worker goes on",
                    self.cfg.url,
                    item[0],
                    exc_info=True,
                )

    def _deliver(self, key: str, body: bytes) -> None:
        wait = RETRY_MIN_S
        for attempt in range(1, self.cfg.attempts + 1):
            outcome = self._attempt(key, body)
            if outcome == "ok":
                self._counter.labels("delivered").inc()
                return
            if outcome == "refused" or attempt == self.cfg.attempts or self._stop.is_set():
                break  # closed (no retry would start): failed, not retried
            self._counter.labels("retried").inc()
            if self._stop.wait(wait):
                break
            wait = min(wait * 2, self.cfg.retry_max_s)
        self._counter.labels("failed").inc()
        log.warning("webhook %s: promotion %s not delivered", self.cfg.url, key)

    def _attempt(self, key: str, body: bytes) -> Literal["ok", "retry", "refused"]:
        stamp = str(int(self._clock()))
        headers = {
            "Content-Type": "application/json",
            "Idempotency-Key": key,
            "X-Beacon-Hub-Timestamp": stamp,
        }
        if self.cfg.secret is not None:
            secret = self.cfg.secret.get_secret_value().encode()
            headers["X-Beacon-Hub-Signature"] = sign(secret, stamp, body)
        request = urllib.request.Request(self.cfg.url, body, headers, method="POST")  # noqa: S310  # http(s) only, checked by the config
        try:
            # The whole attempt, from the connect to the answer's last byte, within timeout_s
            # (_DeadlineSocket); past it, a TimeoutError like a silent receiver's.
            with self._opener.open(request, timeout=self.cfg.timeout_s) as r:
                _read_answer(r)
        except urllib.error.HTTPError as e:
            e.close()
            if e.code >= 500 or e.code in RETRYABLE_HTTP:
                return "retry"
            if 300 <= e.code < 400:  # not followed (_NoRedirect): say where it points
                where = e.headers.get("Location", "?")
                log.warning(
                    "webhook %s answered HTTP %d to %s; redirects are not followed "
                    "(promotions.webhook.url must be the receiver itself)",
                    self.cfg.url,
                    e.code,
                    where,
                )
                return "refused"
            log.warning("webhook %s refused a promotion: HTTP %d", self.cfg.url, e.code)
            return "refused"
        except (OSError, http.client.HTTPException, ValueError) as e:
            # OSError: refused, reset, timeout, TLS (URLError is one). HTTPException: a receiver
            # that breaks HTTP, e.g. a truncated body (IncompleteRead), a garbage status line
            # (BadStatusLine) or an over-long header (LineTooLong); none is an OSError.
            # ValueError: anything else http.client refuses in an answer. All worth a retry; a
            # receiver that did get the POST drops the retry by its Idempotency-Key.
            kind = type(e).__name__
            self._log.warning(
                ("attempt", kind), "webhook %s: attempt failed (%s: %s)", self.cfg.url, kind, e
            )
            return "retry"
        return "ok"


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    """Redirects are not followed: urllib turns a POST answered 301/302/303 into a GET without
    the body (the promotion never arrives, yet the 200 of the GET counted it delivered) and
    sends the signature and key along to whatever host the answer names. The 3xx is returned
    as an HTTPError instead, a refusal like other 4xx: the configured url is wrong."""

    def redirect_request(self, *_args: object, **_kwargs: object) -> None:
        return None


def _read_answer(r: http.client.HTTPResponse) -> None:
    """Read the receiver's answer to its end, so a truncated one is a failed attempt, but no
    more than MAX_ANSWER_BYTES: a body that never ends must not fill the hub's memory. One that
    trickles is ended by the attempt's deadline (_DeadlineSocket)."""
    got = 0
    while got < MAX_ANSWER_BYTES:
        chunk = r.read1(MAX_ANSWER_BYTES - got)
        if not chunk:
            if r.length:  # Content-Length promised more than arrived before the close
                raise http.client.IncompleteRead(b"", r.length)
            return
        got += len(chunk)


class _DeadlineSocket(socket.socket):
    """A socket whose every send and receive ends by one `deadline` (monotonic) for all of
    them: before each, its timeout shrinks to the time left. A plain timeout is per call, so a
    receiver that trickles its status line or headers a byte at a time, which http.client
    reads inside the opener, held the worker for as long as it liked (every later promotion
    waits for the worker). No deadline: a plain socket."""

    deadline: float | None = None

    def arm(self) -> None:
        """The timeout of the next call: the time left."""
        if self.deadline is None:
            return
        left = self.deadline - time.monotonic()
        if left <= 0:  # a timeout of 0 would make the socket non-blocking, not give up
            raise TimeoutError("the webhook attempt's deadline (timeout_s) passed")
        self.settimeout(left)

    # Any arguments, passed on as given: ssl.SSLSocket's defaults differ from socket's.
    def recv(self, *args: Any, **kwargs: Any) -> bytes:
        self.arm()
        return super().recv(*args, **kwargs)

    def recv_into(self, *args: Any, **kwargs: Any) -> int:  # what makefile() reads with
        self.arm()
        return super().recv_into(*args, **kwargs)

    def send(self, *args: Any, **kwargs: Any) -> int:
        self.arm()
        return super().send(*args, **kwargs)

    def sendall(self, *args: Any, **kwargs: Any) -> None:
        # One call, one timeout for all of it (socket.sendall since Python 3.5); SSLSocket's
        # sendall loops over send, armed again each time.
        self.arm()
        super().sendall(*args, **kwargs)


class _DeadlineSSLSocket(_DeadlineSocket, ssl.SSLSocket):
    """_DeadlineSocket over TLS: its methods run before SSLSocket's (the MRO). The handshake
    runs inside wrap_socket, before the deadline is set, under the timeout the plain socket had
    (the handshake's total since Python 3.5): the time left after the connect."""


AddrInfo = list[tuple[Any, Any, int, str, Any]]
"""What socket.getaddrinfo returns: (family, type, proto, canonname, sockaddr) tuples."""


@dataclass(slots=True)
class _Lookup:
    done: threading.Event = field(default_factory=threading.Event)
    found: AddrInfo = field(default_factory=list)
    error: OSError | ValueError | None = None


class _Lookups:
    """Name lookups that end by the attempt's deadline. getaddrinfo has no timeout: with the
    store's DNS server down, glibc waits its own timeouts (5 s per server and try), and the
    worker, which delivers one promotion at a time, waited with it. The lookup runs on a
    daemon thread of its own and the attempt waits for it until its deadline; a lookup still
    running is waited for again by the next attempt for the same host instead of a second
    one started, so a resolver that never answers holds one thread, not one per attempt."""

    def __init__(self, getaddrinfo: Callable[..., AddrInfo]) -> None:
        self._getaddrinfo = getaddrinfo
        self._lock = threading.Lock()
        self._running: dict[tuple[str, int], _Lookup] = {}

    def resolve(self, host: str, port: int, deadline: float) -> AddrInfo:
        key = (host, port)
        with self._lock:
            lookup = self._running.get(key)
            if lookup is None:
                lookup = self._running[key] = _Lookup()
                threading.Thread(
                    target=self._run, args=(key, lookup), name="webhook-lookup", daemon=True
                ).start()
        if not lookup.done.wait(max(deadline - time.monotonic(), 0.0)):
            raise TimeoutError(f"the name lookup of {host} outlasted the attempt (timeout_s)")
        if lookup.error is not None:
            raise lookup.error
        return lookup.found

    def _run(self, key: tuple[str, int], lookup: _Lookup) -> None:
        try:
            lookup.found = self._getaddrinfo(*key, type=socket.SOCK_STREAM)
        except (OSError, ValueError) as e:  # gaierror; UnicodeError for a name IDNA refuses
            lookup.error = e
        finally:
            with self._lock:
                del self._running[key]
            lookup.done.set()


_LOOKUPS = _Lookups(socket.getaddrinfo)


def _connect(host: str, port: int, deadline: float) -> _DeadlineSocket:
    """socket.create_connection, with one deadline over the name lookup (_Lookups) and all of
    the host's addresses (each got the whole timeout)."""
    error: OSError = OSError(f"no address for {host}")
    for family, kind, proto, _, address in _LOOKUPS.resolve(host, port, deadline):
        sock = _DeadlineSocket(family, kind, proto)
        sock.deadline = deadline
        try:
            sock.arm()
            sock.connect(address)
            # As http.client does: the headers and body go in two sends, and Nagle would hold
            # the second until the receiver acknowledges the first.
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            sock.arm()  # for a TLS handshake: what is left
        except OSError as e:
            sock.close()
            error = e
        else:
            return sock
    raise error


def _deadline_of(conn: http.client.HTTPConnection) -> float:
    """The opener's `timeout` becomes the deadline of the whole attempt, from its connect."""
    if conn.timeout is None:  # never: _attempt always passes timeout_s
        raise ValueError("a webhook connection needs a timeout")
    return time.monotonic() + conn.timeout


class _DeadlineHTTPConnection(http.client.HTTPConnection):
    def connect(self) -> None:  # no proxy tunnel: the opener has no proxies
        self.sock = _connect(self.host, self.port, _deadline_of(self))


class _DeadlineHTTPSConnection(http.client.HTTPSConnection):
    def __init__(self, host: str, /, *, context: ssl.SSLContext, **kwargs: Any) -> None:
        super().__init__(host, context=context, **kwargs)
        self._tls = context  # http.client keeps it too, but privately

    def connect(self) -> None:
        deadline = _deadline_of(self)
        tls = self._tls.wrap_socket(
            _connect(self.host, self.port, deadline), server_hostname=self.host
        )
        if not isinstance(tls, _DeadlineSSLSocket):  # never: the handler's context makes them
            raise TypeError(f"webhook TLS socket of {type(tls)} has no deadline")
        tls.deadline = deadline
        self.sock = tls


class _DeadlineHTTPHandler(urllib.request.HTTPHandler):
    """Replaces urllib's (a subclass: build_opener leaves its own out) with _DeadlineSocket."""

    def http_open(self, req: urllib.request.Request) -> http.client.HTTPResponse:
        return self.do_open(_DeadlineHTTPConnection, req)


class _DeadlineHTTPSHandler(urllib.request.HTTPSHandler):
    """As _DeadlineHTTPHandler, over TLS. The context is http.client's default one (the
    system's CAs, host names checked, ALPN http/1.1) making _DeadlineSSLSocket."""

    def __init__(self) -> None:
        context = ssl.create_default_context()
        context.set_alpn_protocols(["http/1.1"])
        context.sslsocket_class = _DeadlineSSLSocket
        super().__init__(context=context)
        self._tls = context

    def https_open(self, req: urllib.request.Request) -> http.client.HTTPResponse:
        return self.do_open(functools.partial(_DeadlineHTTPSConnection, context=self._tls), req)


# -------------------------------------------------------------------------------------- shell

Publish = Callable[[str, bytes, int, bool], bool]
Submit = Callable[[Callable[[sqlite3.Connection], None]], None]


def idempotency_key(d: Decision) -> str:
    raw = f"{d.site}|{d.rule}|{d.beacon}|{d.t!r}".encode()
    return hashlib.sha256(raw).hexdigest()[:32]


class Promotions:
    """The service side: evaluate each tick, count, record, then publish and POST (module
    docstring). At construction it reads the `sent` rows back into the evaluator's cooldowns
    and daily counts; `submit` runs jobs in order (SqliteStore.submit: at once before the
    writer thread starts, on it afterwards)."""

    def __init__(
        self,
        evaluator: Evaluator,
        *,
        publish: Publish,
        submit: Submit,
        registry: CollectorRegistry | None,
        webhook: WebhookConfig | None = None,
    ) -> None:
        self.evaluator = evaluator
        self._publish = publish
        self._submit = submit
        self.decisions = Counter(
            "beacon_hub_promotion_decisions",
            "Promotion decisions by rule and outcome",
            ["site", "rule", "decision"],
            registry=registry,
        )
        self.webhook_posts = Counter(
            "beacon_hub_promotion_webhook",
            "Webhook deliveries: delivered, retried (attempts), failed, dropped (queue full)",
            ["outcome"],
            registry=registry,
        )
        self.unpublished = Counter(
            "beacon_hub_promotion_unpublished",
            "Promotions the MQTT client refused (its queue full)",
            ["site"],
            registry=registry,
        )
        self._restore(evaluator)
        self.webhook = None if webhook is None else Webhook(webhook, self.webhook_posts)

    def _restore(self, evaluator: Evaluator) -> None:
        horizon = max([RESTORE_DAY_S, *(r.cooldown_s for r in evaluator.rules)])
        rows: list[tuple[str, str, str | None, float]] = []
        done = threading.Event()

        def read(db: sqlite3.Connection) -> None:
            try:
                rows.extend(db.execute(_SENT_SINCE, (horizon,)).fetchall())
            finally:
                done.set()

        self._submit(read)
        if not done.wait(RESTORE_WAIT_S):
            log.warning("promotions: SQLite did not answer; cooldowns and daily caps start empty")
            return
        evaluator.restore(rows)
        if rows:
            log.info("promotions: cooldowns and daily counts restored from %d sends", len(rows))

    def tick(
        self, site: str, t: float, events: Iterable[Event], withheld: Iterable[Event] = ()
    ) -> list[Decision]:
        decisions = self.evaluator.evaluate(site, t, events, withheld)
        if not decisions:
            return decisions
        for d in decisions:
            self.decisions.labels(d.site, d.rule, d.decision).inc()
        rows = [(d.site, d.t, d.rule, d.zone, d.beacon, d.decision) for d in decisions]

        def record(db: sqlite3.Connection) -> None:
            try:
                db.execute("BEGIN")
                try:
                    db.executemany(
                        "INSERT INTO promotion_decisions VALUES (?, ?, ?, ?, ?, ?)", rows
                    )
                except BaseException:
                    db.execute("ROLLBACK")
                    raise
                db.execute("COMMIT")
            finally:
                # Stored first (module docstring); delivered even if storing failed (logged
                # and counted by the writer): this process's cooldown still holds.
                self._deliver(decisions)

        self._submit(record)
        return decisions

    def _deliver(self, decisions: Iterable[Decision]) -> None:
        """The `sent` ones, on the SQLite writer's thread (paho's publish and the webhook's
        queue are thread-safe)."""
        for d in decisions:
            if d.decision != "sent" or d.beacon is None:
                continue
            body = encode_promotion(Promotion(d.t, d.site, d.beacon, d.rule, d.zone, d.offer))
            if not self._publish(promotion_topic(d.site, d.beacon), body, 1, False):
                self.unpublished.labels(d.site).inc()
            if self.webhook is not None:
                self.webhook.post(idempotency_key(d), body)

    def close(self, timeout_s: float) -> None:
        """Deliver what the SQLite writer still holds, then the webhook's queue, within
        `timeout_s` + WEBHOOK_CLOSE_GRACE_S (service.py calls this before it closes the
        writer; Webhook.close counts what is left)."""
        deadline = time.monotonic() + timeout_s
        flushed = threading.Event()
        self._submit(lambda _db: flushed.set())
        flushed.wait(timeout_s)
        if self.webhook is not None:
            self.webhook.close(max(0.0, deadline - time.monotonic()))
