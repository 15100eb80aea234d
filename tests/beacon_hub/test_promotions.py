"""Promotion rules in data time, and the webhook against a real local HTTP server."""

from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
import hmac
import itertools
import shutil
import socket
import sqlite3
import ssl
import threading
import time
import zoneinfo
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from prometheus_client import CollectorRegistry, Counter
from pydantic import SecretStr

from beacon_hub import promotions
from beacon_hub.consent import Consent, ConsentRegistry, ConsentStore
from beacon_hub.engine import FixTable
from beacon_hub.errors import ConfigError
from beacon_hub.hubconfig import WebhookConfig
from beacon_hub.privacy import Privacy
from beacon_hub.promotions import (
    Evaluator,
    Promotions,
    PseudonymConsent,
    Rule,
    Webhook,
    load_rules,
    sign,
)
from beacon_hub.provision import ensure_site_ca, issue_certificate
from beacon_hub.site import Site, load_site
from beacon_hub.stores import open_sqlite
from beacon_hub.wire import Event, decode_promotion

ROOT = Path(__file__).resolve().parents[2]
T0 = 1_700_000_000.0
"""2023-11-14 22:13:20 UTC, 23:13 in Europe/Berlin (config/store.yaml)."""
SITE = "store-demo"
A = "anon:00000000000000aa"
B = "anon:00000000000000bb"


@pytest.fixture(scope="module")
def site() -> Site:
    return load_site(ROOT / "config" / "store.yaml")


def _evaluator(site: Site, **rule: object) -> Evaluator:
    r = Rule.model_validate({"id": "coffee", "zone": "endcap-2-front", "min_dwell_s": 5, **rule})
    return Evaluator([r], {site.id: site}, lambda _s, _b: "cart", lambda _b, _t: True)


def _enter(b: str, t: float, zone: str = "endcap-2-front") -> Event:
    return Event("zone_enter", t, SITE, b, zone)


def _exit(b: str, t: float, zone: str = "endcap-2-front") -> Event:
    return Event("zone_exit", t, SITE, b, zone)


def _run(ev: Evaluator, t0: float, t1: float, events: dict[float, list[Event]]) -> list[str]:
    out: list[str] = []
    t = t0
    while t <= t1:
        out += [d.decision for d in ev.evaluate(SITE, t, events.get(t, []))]
        t += 1.0
    return out


def test_a_dwelling_shopper_triggers_once_per_cooldown(site: Site) -> None:
    ev = _evaluator(site, cooldown_s=600)
    events = {
        T0: [_enter(A, T0)],
        T0 + 60: [_exit(A, T0 + 60)],
        T0 + 100: [_enter(A, T0 + 100)],  # back within the cooldown
        T0 + 130: [_exit(A, T0 + 130)],
        T0 + 700: [_enter(A, T0 + 700)],  # back after it
    }
    assert _run(ev, T0, T0 + 720, events) == ["sent", "suppressed_cooldown", "sent"]


def test_a_short_visit_decides_nothing(site: Site) -> None:
    ev = _evaluator(site)
    assert _run(ev, T0, T0 + 20, {T0: [_enter(A, T0)], T0 + 3: [_exit(A, T0 + 3)]}) == []


def test_daily_cap_holds_over_a_day_of_data_time_and_resets_at_local_midnight(
    site: Site,
) -> None:
    ev = _evaluator(site, daily_cap=5, cooldown_s=0)
    sent_per_day: dict[str, int] = {}
    decisions = []
    # A new shopper every 10 minutes for 30 hours of data time.
    for k in range(180):
        t = T0 + 600 * k
        b = f"anon:{k:016x}"
        ev.evaluate(SITE, t, [_enter(b, t)])
        for d in ev.evaluate(SITE, t + 10, []):
            decisions.append(d.decision)
            if d.decision == "sent":
                day = dt.datetime.fromtimestamp(d.t, zoneinfo.ZoneInfo(site.timezone)).date()
                sent_per_day[str(day)] = sent_per_day.get(str(day), 0) + 1
        ev.evaluate(SITE, t + 20, [_exit(b, t + 20)])
    assert len(decisions) == 180
    assert all(n == 5 for n in sent_per_day.values())
    assert len(sent_per_day) == 3  # the run spans three local days
    assert decisions.count("suppressed_cap") == 180 - 15


def test_outside_hours_uses_the_site_timezone(site: Site) -> None:
    # T0 is 23:13 in Berlin: outside 08:00-22:00, inside the overnight window 22:00-06:00.
    day = _evaluator(site, start="08:00", end="22:00")
    assert _run(day, T0, T0 + 10, {T0: [_enter(A, T0)]}) == ["outside_hours"]
    night = _evaluator(site, start="22:00", end="06:00")
    assert _run(night, T0, T0 + 10, {T0: [_enter(A, T0)]}) == ["sent"]


def test_shoppers_without_consent_are_suppressed_without_an_id(site: Site) -> None:
    ev = _evaluator(site)
    raw = "ibeacon:3d1a7b52-8c4e-4f0a-9b6d-2e5f8a1c7d40:1:1"
    got = ev.evaluate(SITE, T0, [], [_enter(raw, T0)])
    got += ev.evaluate(SITE, T0 + 6, [], [])
    assert [(d.decision, d.beacon) for d in got] == [("suppressed_no_consent", None)]


def test_a_repeated_zone_enter_does_not_start_the_visit_again(site: Site) -> None:
    ev = _evaluator(site, cooldown_s=0)
    events = {T0: [_enter(A, T0)], T0 + 8: [_enter(A, T0)], T0 + 9: [_enter(A, T0 + 9)]}
    assert _run(ev, T0, T0 + 30, events) == ["sent"]  # one visit, one decision


CART = "ibeacon:3d1a7b52-8c4e-4f0a-9b6d-2e5f8a1c7d40:1:7"
"""config/store.yaml's cart kind matches this uuid."""


def _cart_fix(t: float) -> FixTable:
    """The cart's fix in the end-cap zone, as the engine gives it each tick."""
    return FixTable(
        t=t,
        beacons=[CART],
        x=np.zeros(1),
        y=np.zeros(1),
        accuracy_m=np.ones(1),
        level=np.zeros(1, dtype=np.int64),
        zones=["endcap-2-front"],
        kinds=["cart"],
        speed_m_s=np.zeros(1),
        gateway_slots=np.zeros((1, 1), dtype=np.intp),
        gateway_mask=np.ones((1, 1), dtype=bool),
        gateway_ids=("gw-1",),
    )


def _consent_run(
    site: Site, raw_events: dict[int, list[Event]], revoke_at: int, seconds: int = 20
) -> tuple[list[tuple[int, str, str | None]], Evaluator]:
    """The real ConsentRegistry and Privacy in front of the Evaluator, as service.py chains
    them; the shopper consents, then revokes at T0 + revoke_at."""
    now = [T0]
    consent = ConsentRegistry(clock=lambda: now[0])
    privacy = Privacy({site.id: site}, consent, b"k" * 32)
    rule = Rule.model_validate({"id": "coffee", "zone": "endcap-2-front", "min_dwell_s": 10})
    ev = Evaluator(
        [rule],
        {site.id: site},
        privacy.kind_of,
        consent.has_consent,
        shoppers=PseudonymConsent(consent, privacy.pseudonym),
    )
    consent.grant(CART)
    out: list[tuple[int, str, str | None]] = []
    for k in range(seconds):
        t = now[0] = T0 + k
        if k == revoke_at:
            consent.revoke(CART)
        _, events = privacy.apply(SITE, _cart_fix(t), raw_events.get(k, []))
        out += [(k, d.decision, d.beacon) for d in ev.evaluate(SITE, t, events, privacy.withheld)]
    return out, ev


def test_a_shopper_who_revokes_and_walks_off_mid_visit_gets_nothing(site: Site) -> None:
    # The audit's case: in at +0, revoked at +3, out at +6 (withheld: raw id, the visit is
    # under the pseudonym). It used to be sent at +10 and the visit never ended.
    events = {0: [Event("zone_enter", T0, SITE, CART, "endcap-2-front")]}
    events[6] = [Event("zone_exit", T0 + 6, SITE, CART, "endcap-2-front", {"dwell_s": 6.0})]
    got, ev = _consent_run(site, events, revoke_at=3)
    assert got == []  # a 6 s visit decides nothing for a 10 s rule, consent or not
    assert ev.open_visits == 0


def test_a_shopper_who_revokes_and_stays_is_suppressed_without_an_id(site: Site) -> None:
    enter = {0: [Event("zone_enter", T0, SITE, CART, "endcap-2-front")]}
    # No event after the revocation: consent is asked again when the rule decides.
    got, _ = _consent_run(site, enter, revoke_at=3)
    assert got == [(10, "suppressed_no_consent", None)]
    # A withheld event first (the engine's 10 s dwell), the exit later: the same, and closed.
    events = {
        **enter,
        10: [Event("dwell", T0 + 10, SITE, CART, "endcap-2-front", {"dwell_s": 10.0})],
        15: [Event("zone_exit", T0 + 15, SITE, CART, "endcap-2-front", {"dwell_s": 15.0})],
    }
    got, ev = _consent_run(site, events, revoke_at=3)
    assert got == [(10, "suppressed_no_consent", None)]
    assert ev.open_visits == 0
    # Consent kept: sent under the pseudonym (the same chain, no revocation).
    got, _ = _consent_run(site, enter, revoke_at=-1)
    assert [(k, d) for k, d, b in got] == [(10, "sent")]
    assert got[0][2] is not None
    assert got[0][2].startswith("anon:")


KEY = b"k" * 32


def _restarted(
    site: Site, db: sqlite3.Connection, stored: Consent, initial: dict[str, Consent] | None = None
) -> tuple[Privacy, Evaluator]:
    """The consent chain of a restarted hub, as service.py builds it: its previous run stored
    `stored` about CART (by pseudonym, ConsentStore); this one starts with the consent file
    `initial` and has not had the retained decision yet (it comes after the backlog)."""
    first = ConsentRegistry(store=ConsentStore(db, lambda job: job(db)))
    Privacy({site.id: site}, first, KEY)
    assert first.apply(CART, stored)
    consent = ConsentRegistry(initial, store=ConsentStore(db, lambda job: job(db)))
    privacy = Privacy({site.id: site}, consent, KEY)
    rule = {"id": "coffee", "zone": "endcap-2-front", "min_dwell_s": 10, "cooldown_s": 0}
    ev = Evaluator(
        [Rule.model_validate(rule)],
        {site.id: site},
        privacy.kind_of,
        consent.has_consent,
        shoppers=PseudonymConsent(consent, privacy.pseudonym),
    )
    return privacy, ev


def _cart_visit(privacy: Privacy, ev: Evaluator, start: float) -> list[tuple[str, str | None]]:
    """The cart in the end-cap from `start` for 12 s, through the privacy step: the rule's
    decisions (it decides at +10)."""
    out: list[tuple[str, str | None]] = []
    for k in range(13):
        t = start + k
        events = {0: [_enter(CART, t)], 12: [_exit(CART, t)]}.get(k, [])
        _, shown = privacy.apply(SITE, _cart_fix(t), events)
        out += [(d.decision, d.beacon) for d in ev.evaluate(SITE, t, shown, privacy.withheld)]
    return out


def test_a_shopper_whose_consent_was_restored_by_pseudonym_is_promoted(
    tmp_path: Path, site: Site
) -> None:
    # The privacy step tracked the shopper under the restored decision from the first tick,
    # but promotions asked only through the raw ids, which a decision restored by pseudonym
    # does not have: every visit decided suppressed_no_consent, during the backlog and after.
    grant = Consent(True, T0 - 60.0, expires=T0 + 100.0)
    with contextlib.closing(open_sqlite(tmp_path / "hub.sqlite")) as db:
        privacy, ev = _restarted(site, db, grant)
        anon = privacy.pseudonym(CART)
        assert _cart_visit(privacy, ev, T0) == [("sent", anon)]  # the backlog's visit
        # The retained copy, after the backlog, is the same decision and changes nothing.
        assert not privacy.consent.apply(CART, grant)
        assert _cart_visit(privacy, ev, T0 + 30.0) == [("sent", anon)]
        # The restored grant expires mid-visit: asked again when the rule decides.
        assert _cart_visit(privacy, ev, T0 + 90.0) == [("suppressed_no_consent", None)]


REVOKED_AFTER_A_RESTART = {
    "restored revocation": (Consent(False, T0 - 60.0), None, None),
    "restored revocation of a file grant": (Consent(False, T0 - 60.0), Consent(True), None),
    "a revocation at start newer than the restored grant": (
        Consent(True, T0 - 60.0),
        Consent(False, T0 - 30.0),
        None,
    ),
    "restored grant revoked on the topic": (
        Consent(True, T0 - 60.0),
        None,
        Consent(False, T0 - 30.0),
    ),
}


@pytest.mark.parametrize("case", REVOKED_AFTER_A_RESTART)
def test_a_revocation_holds_against_a_decision_restored_by_pseudonym(
    tmp_path: Path, site: Site, case: str
) -> None:
    stored, initial, topic = REVOKED_AFTER_A_RESTART[case]
    with contextlib.closing(open_sqlite(tmp_path / "hub.sqlite")) as db:
        privacy, ev = _restarted(site, db, stored, None if initial is None else {CART: initial})
        if topic is not None:
            assert privacy.consent.apply(CART, topic)
        got = _cart_visit(privacy, ev, T0) + _cart_visit(privacy, ev, T0 + 30.0)
        # Asked by pseudonym alone too (the privacy step withheld these visits first): the
        # registry's newest decision, not the restored one under it.
        assert ev.shoppers is not None
        assert not ev.shoppers.has_consent(privacy.pseudonym(CART), T0 + 1.0)
    assert got == [("suppressed_no_consent", None)] * 2


def _promotions(
    site: Site, db_path: Path, published: list[str], *, submit: Callable[..., None] | None = None
) -> Promotions:
    """A hub's Promotions over the SQLite file `db_path` (a new one per process start)."""
    db = open_sqlite(db_path)
    return Promotions(
        _evaluator(site, cooldown_s=3600, daily_cap=2),
        publish=lambda topic, _b, _q, _r: not published.append(topic),  # type: ignore[func-returns-value]
        submit=submit or (lambda job: job(db)),
        registry=None,
    )


def _visit(promos: Promotions, b: str, t: float) -> list[str]:
    got = promos.tick(SITE, t, [_enter(b, t)]) + promos.tick(SITE, t + 6, [])
    got += promos.tick(SITE, t + 7, [_exit(b, t + 7)])
    return [d.decision for d in got]


def test_cooldown_and_daily_cap_survive_a_restart(tmp_path: Path, site: Site) -> None:
    published: list[str] = []
    first = _promotions(site, tmp_path / "hub.sqlite", published)
    assert _visit(first, A, T0) == ["sent"]
    # Restarted (or crashed: its last ticks computed again from the re-sent readings).
    again = _promotions(site, tmp_path / "hub.sqlite", published)
    assert _visit(again, A, T0) == ["suppressed_cooldown"]
    assert _visit(again, A, T0 + 600) == ["suppressed_cooldown"]
    assert _visit(again, B, T0 + 610) == ["sent"]  # the day's second of daily_cap 2
    third = _promotions(site, tmp_path / "hub.sqlite", published)
    assert _visit(third, "anon:00000000000000cc", T0 + 620) == ["suppressed_cap"]
    assert published == [f"beacons/{SITE}/promotion/{b}" for b in (A, B)]
    # Past the cooldown, and the next local day (T0 is 23:13 in Berlin): both start again.
    fourth = _promotions(site, tmp_path / "hub.sqlite", published)
    assert _visit(fourth, A, T0 + 3700) == ["sent"]
    assert _visit(fourth, "anon:00000000000000cc", T0 + 3710) == ["sent"]


def test_a_promotion_is_delivered_only_once_its_decision_is_stored(
    tmp_path: Path, site: Site
) -> None:
    """A crash between the publish and the store used to leave a promotion out that the
    restarted hub could not see, so it sent it again."""
    jobs: list[Callable[[sqlite3.Connection], None]] = []
    published: list[str] = []
    db = open_sqlite(tmp_path / "hub.sqlite")
    writer_started = False

    def submit(job: Callable[[sqlite3.Connection], None]) -> None:
        """SqliteStore.submit: at once until the writer thread starts, then queued for it."""
        if writer_started:
            jobs.append(job)
        else:
            job(db)

    promos = _promotions(site, tmp_path / "hub.sqlite", published, submit=submit)
    writer_started = True
    assert [d.decision for d in promos.tick(SITE, T0, [_enter(A, T0)])] == []
    assert [d.decision for d in promos.tick(SITE, T0 + 6, [])] == ["sent"]
    assert published == []  # the writer has not stored it yet
    for job in jobs:
        job(db)
    assert published == [f"beacons/{SITE}/promotion/{A}"]
    assert db.execute("SELECT beacon, decision FROM promotion_decisions").fetchall() == [
        (A, "sent")
    ]


def test_rules_file_errors_name_file_and_place(tmp_path: Path, site: Site) -> None:
    path = tmp_path / "rules.yaml"
    path.write_text("rules:\n  - id: x\n    zone: endcap-2-front\n    cooldown_s: -1\n")
    with pytest.raises(ConfigError, match=r"rules\.yaml:4"):
        load_rules(path, {site.id: site})
    path.write_text("rules:\n  - id: x\n    zone: nowhere\n")
    with pytest.raises(ConfigError, match="zone 'nowhere' is in none"):
        load_rules(path, {site.id: site})
    rules = load_rules(ROOT / "config" / "promotions.yaml", {site.id: site})
    assert rules


@pytest.mark.parametrize(
    ("lines", "error"),
    [
        # An offset made an aware time that the first decision compared with a naive one: a
        # TypeError out of the service step, and the hub crash-looped on its backlog.
        ("    start: '08:00+01:00'\n    end: '20:00'\n", r":3: rules\[0\]\.start: .*HH:MM"),
        ("    start: '08:00'\n    end: '20:00:30'\n", r":4: rules\[0\]\.end: .*HH:MM"),
        ("    start: '24:00'\n    end: '20:00'\n", r":3: rules\[0\]\.start: .*HH:MM"),
        ("    start: '08:00'\n    end: '08:00'\n", r":4: rules\[0\]\.end: .*end equals start"),
        ("    kind: carts\n", r":3: rules\[0\]\.kind: expected 'cart', .*got 'carts'"),
        # A kind that exists, but no beacon of config/store.yaml is of it.
        ("    kind: pallet\n", r":3: rules\[0\]\.kind: rule 'x': kind 'pallet' is no beacon"),
    ],
)
def test_rules_that_could_never_fire_or_would_crash_are_refused(
    tmp_path: Path, site: Site, lines: str, error: str
) -> None:
    path = tmp_path / "rules.yaml"
    path.write_text("rules:\n  - id: x\n" + lines + "    zone: endcap-2-front\n")
    with pytest.raises(ConfigError, match=r"rules\.yaml" + error):
        load_rules(path, {site.id: site})


class _Receiver:
    """The retailer's backend: 500 on the first POST, then 200; dedups by Idempotency-Key."""

    def __init__(self) -> None:
        self.posts: list[tuple[dict[str, str], bytes]] = []
        self.accepted: dict[str, bytes] = {}
        self.got = threading.Event()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                outer.posts.append((dict(self.headers), body))
                status = 500 if len(outer.posts) == 1 else 200
                if status == 200:
                    outer.accepted.setdefault(self.headers["Idempotency-Key"], body)
                    outer.got.set()
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *_: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/promo"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def receiver() -> Iterator[_Receiver]:
    r = _Receiver()
    try:
        yield r
    finally:
        r.close()


def test_webhook_delivers_each_trigger_once_despite_a_failing_first_try(
    tmp_path: Path, site: Site, receiver: _Receiver
) -> None:
    db = open_sqlite(tmp_path / "hub.sqlite")
    published: list[tuple[str, bytes]] = []
    registry = CollectorRegistry()
    cfg = WebhookConfig(url=receiver.url, secret=SecretStr("s3cret"), retry_max_s=0.5)
    promos = Promotions(
        _evaluator(site),
        publish=lambda topic, body, _q, _r: not published.append((topic, body)),  # type: ignore[func-returns-value]
        submit=lambda job: job(db),
        registry=registry,
        webhook=cfg,
    )
    promos.tick(SITE, T0, [_enter(A, T0)])
    promos.tick(SITE, T0 + 6, [])
    promos.close(30.0)
    assert len(receiver.posts) == 2  # the 500, then the retry
    assert len(receiver.accepted) == 1
    keys = {h["Idempotency-Key"] for h, _ in receiver.posts}
    assert len(keys) == 1  # the retry carries the same key, so a receiver can dedup
    headers, body = receiver.posts[-1]
    stamp = headers["X-Beacon-Hub-Timestamp"]
    want = "sha256=" + hmac.new(b"s3cret", stamp.encode() + b"." + body, hashlib.sha256).hexdigest()
    assert headers["X-Beacon-Hub-Signature"] == want == sign(b"s3cret", stamp, body)
    promo = decode_promotion(body)
    got = (promo.beacon, promo.rule, promo.zone, promo.t)
    assert got == (A, "coffee", "endcap-2-front", T0 + 6)
    assert [t for t, _ in published] == [f"beacons/{SITE}/promotion/{A}"]
    rows = db.execute("SELECT rule, beacon, decision FROM promotion_decisions").fetchall()
    assert rows == [("coffee", A, "sent")]
    sample = registry.get_sample_value
    assert sample("beacon_hub_promotion_webhook_total", {"outcome": "delivered"}) == 1
    assert sample("beacon_hub_promotion_webhook_total", {"outcome": "retried"}) == 1
    labels = {"site": SITE, "rule": "coffee", "decision": "sent"}
    assert sample("beacon_hub_promotion_decisions_total", labels) == 1


GOOD_ANSWER = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok"
BROKEN_ANSWERS = {
    # Content-Length promises 100 bytes, 2 arrive, then the connection closes.
    "IncompleteRead": b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nok",
    "BadStatusLine": b"SPAM AND EGGS\r\n\r\n",
    "LineTooLong": b"HTTP/1.1 200 OK\r\nX-Filler: " + b"a" * 70_000 + b"\r\n\r\n",
}
"""Answers that break HTTP; http.client raises an HTTPException (not an OSError) for each."""


class _RawReceiver:
    """A receiver at the socket level, so it can break HTTP: the first answer is `first`, every
    later one a good 200. Records each request's Idempotency-Key."""

    def __init__(self, first: bytes) -> None:
        self.keys: list[str] = []
        self._first = first
        self._closing = False
        self._server = socket.create_server(("127.0.0.1", 0))
        self._address = self._server.getsockname()
        self.url = f"http://127.0.0.1:{self._address[1]}/promo"
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while True:
            conn, _ = self._server.accept()
            with conn:
                if self._closing:
                    return
                headers = self._read_request(conn)
                self.keys.append(headers["idempotency-key"])
                answer = self._first if len(self.keys) == 1 else GOOD_ANSWER
                with contextlib.suppress(OSError):  # the client may hang up mid-answer
                    conn.sendall(answer)
                    conn.shutdown(socket.SHUT_WR)

    @staticmethod
    def _read_request(conn: socket.socket) -> dict[str, str]:
        """The whole request is read before answering, so closing never resets the
        connection (the client would see a reset instead of the broken answer)."""
        data = b""
        while b"\r\n\r\n" not in data:
            data += conn.recv(65536)
        head, _, body = data.partition(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")[1:]
        headers = {k.lower(): v for k, v in (line.split(": ", 1) for line in lines)}
        while len(body) < int(headers.get("content-length", "0")):
            body += conn.recv(65536)
        return headers

    def close(self) -> None:
        self._closing = True
        socket.create_connection(self._address).close()  # wakes accept()
        self._thread.join(10.0)
        self._server.close()


def _webhook_counter() -> tuple[Counter, CollectorRegistry]:
    registry = CollectorRegistry()
    return Counter("hook", "webhook outcomes", ["outcome"], registry=registry), registry


@pytest.mark.parametrize("broken", sorted(BROKEN_ANSWERS))
def test_webhook_retries_a_broken_http_answer_and_its_worker_goes_on(
    broken: str, caplog: pytest.LogCaptureFixture
) -> None:
    receiver = _RawReceiver(BROKEN_ANSWERS[broken])
    counter, registry = _webhook_counter()
    webhook = Webhook(WebhookConfig(url=receiver.url, retry_max_s=0.5), counter)
    try:
        webhook.post("first", b"{}")
        webhook.post("second", b"{}")
        webhook.close(30.0)  # delivers what is queued
    finally:
        receiver.close()
    # The broken answer is retried with the same key; the worker then delivers the next one.
    assert receiver.keys == ["first", "first", "second"]
    outcomes = {
        o: registry.get_sample_value("hook_total", {"outcome": o})
        for o in ("delivered", "retried", "failed")
    }
    assert outcomes == {"delivered": 2.0, "retried": 1.0, "failed": None}
    assert f"attempt failed ({broken}" in caplog.text


def test_webhook_worker_survives_an_unexpected_error_in_one_delivery(
    caplog: pytest.LogCaptureFixture,
) -> None:
    receiver = _RawReceiver(GOOD_ANSWER)
    counter, registry = _webhook_counter()
    calls: list[float] = []

    def clock() -> float:  # a bug in the first delivery, before anything is sent
        calls.append(T0)
        if len(calls) == 1:
            raise RuntimeError("clock broke")
        return T0

    webhook = Webhook(WebhookConfig(url=receiver.url), counter, clock=clock)
    try:
        webhook.post("first", b"{}")
        webhook.post("second", b"{}")
        webhook.close(30.0)
    finally:
        receiver.close()
    assert receiver.keys == ["second"]
    assert registry.get_sample_value("hook_total", {"outcome": "failed"}) == 1
    assert registry.get_sample_value("hook_total", {"outcome": "delivered"}) == 1
    assert "promotion first failed unexpectedly" in caplog.text
    assert "RuntimeError: clock broke" in caplog.text  # with the traceback


def test_webhook_does_not_follow_a_redirect(caplog: pytest.LogCaptureFixture) -> None:
    # urllib followed a 302 to a POST with a GET without the body, and counted the GET's 200
    # delivered: the promotion never arrived, and its key went to the other address.
    requests: list[tuple[str, str]] = []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            self.rfile.read(int(self.headers["Content-Length"]))
            requests.append(("POST", self.path))
            self.send_response(302)
            self.send_header("Location", "/elsewhere")
            self.send_header("Content-Length", "0")
            self.end_headers()

        def do_GET(self) -> None:
            requests.append(("GET", self.path))
            self.send_response(200)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *_: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    counter, registry = _webhook_counter()
    url = f"http://127.0.0.1:{server.server_address[1]}/promo"
    webhook = Webhook(WebhookConfig(url=url, secret=SecretStr("s3cret")), counter)
    try:
        webhook.post("first", b"{}")
        webhook.close(30.0)
    finally:
        server.shutdown()
        server.server_close()
    assert requests == [("POST", "/promo")]  # refused like a 4xx: no retry, nothing follows
    assert registry.get_sample_value("hook_total", {"outcome": "delivered"}) is None
    assert registry.get_sample_value("hook_total", {"outcome": "failed"}) == 1
    assert "answered HTTP 302 to /elsewhere; redirects are not followed" in caplog.text


def test_webhook_reads_little_of_an_endless_answer_and_goes_on() -> None:
    # A receiver that answers 200 and then streams for ever: the worker read it all (3 GB in
    # 8 s here) and never came to the next promotion.
    keys: list[str] = []
    streamed = [0]
    server = socket.create_server(("127.0.0.1", 0))
    port = server.getsockname()[1]
    stop = threading.Event()

    def answer(conn: socket.socket) -> None:
        with conn:
            keys.append(_RawReceiver._read_request(conn)["idempotency-key"])
            conn.sendall(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
            chunk = b"10000\r\n" + b"x" * 0x10000 + b"\r\n"
            with contextlib.suppress(OSError):  # until the client hangs up
                while not stop.is_set():
                    conn.sendall(chunk)
                    streamed[0] += len(chunk)

    def serve() -> None:
        with contextlib.suppress(OSError):  # closed at the end of the test
            while True:
                conn, _ = server.accept()
                threading.Thread(target=answer, args=(conn,), daemon=True).start()

    threading.Thread(target=serve, daemon=True).start()
    counter, registry = _webhook_counter()
    webhook = Webhook(WebhookConfig(url=f"http://127.0.0.1:{port}/promo", timeout_s=2), counter)
    try:
        webhook.post("first", b"{}")
        webhook.post("second", b"{}")
        webhook.close(10.0)
    finally:
        stop.set()
        server.close()
    assert keys == ["first", "second"]
    assert registry.get_sample_value("hook_total", {"outcome": "delivered"}) == 2
    assert streamed[0] < 64 * 1024 * 1024  # what the socket buffers took, not the stream


TRICKLE_S = 0.2
"""A trickling receiver sends its next byte this often: well inside the tests' 1 s timeout_s,
so a timeout per socket read never fires; only a deadline over the whole attempt ends it."""
PAD_HEADER = b"X-Pad: y\r\n"
"""What a trickle goes on with for ever: header lines (http.client takes 100 of them, 600 bytes:
two minutes at TRICKLE_S), or body bytes after a Content-Length that promises a megabyte."""


class _SlowReceiver:
    """A receiver at the socket level whose first answer is `first(conn, stop)`: trickled or
    withheld until `stop`. Every later answer is `later`, a good 200 unless told. Over TLS with
    `tls`. Records each request's Idempotency-Key and whether the client hung up on the first
    answer (`hung_up`) rather than the test ending it."""

    def __init__(
        self,
        first: Callable[[socket.socket, threading.Event], None],
        tls: ssl.SSLContext | None = None,
        later: bytes = GOOD_ANSWER,
    ) -> None:
        self.keys: list[str] = []
        self._later = later
        self.first_request = threading.Event()
        self.hung_up = False
        self._first = first
        self._tls = tls
        self._stop = threading.Event()
        self._server = socket.create_server(("127.0.0.1", 0))
        self._server.settimeout(0.1)  # accept() wakes to see _stop
        self.url = f"{'https' if tls else 'http'}://127.0.0.1:{self._server.getsockname()[1]}/p"
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        answering: list[threading.Thread] = []
        with self._server:
            while not self._stop.is_set():
                try:
                    conn, _ = self._server.accept()
                except TimeoutError:
                    continue
                thread = threading.Thread(target=self._answer, args=(conn,), daemon=True)
                thread.start()
                answering.append(thread)
        for thread in answering:
            thread.join(5.0)

    def _answer(self, raw: socket.socket) -> None:
        raw.settimeout(5.0)  # a test that went wrong must not hang here
        with contextlib.suppress(OSError), raw:  # the client may hang up at any point
            conn = raw if self._tls is None else self._tls.wrap_socket(raw, server_side=True)
            with conn:
                self.keys.append(_RawReceiver._read_request(conn)["idempotency-key"])
                if len(self.keys) > 1:
                    conn.sendall(self._later)
                    return
                self.first_request.set()
                self._first(conn, self._stop)
                self.hung_up = not self._stop.is_set()

    def close(self) -> None:
        self._stop.set()
        self._thread.join(10.0)


def _trickle(fast: bytes, slow: bytes) -> Callable[[socket.socket, threading.Event], None]:
    """An answer that sends `fast` at once, then `slow` and PAD_HEADER for ever, a byte every
    TRICKLE_S, until the client hangs up (its end of the stream) or the test stops it."""

    def answer(conn: socket.socket, stop: threading.Event) -> None:
        conn.sendall(fast)
        conn.settimeout(TRICKLE_S)
        for byte in itertools.chain(slow, itertools.cycle(PAD_HEADER)):
            if stop.is_set():
                return
            try:
                if not conn.recv(1):
                    return  # the client hung up
            except TimeoutError:
                conn.sendall(bytes([byte]))

    return answer


TRICKLED = {
    "status line": (b"", b"HTTP/1.1 200 OK\r\n"),
    "headers": (b"HTTP/1.1 200 OK\r\n", b""),
    "body": (b"HTTP/1.1 200 OK\r\nContent-Length: 1000000\r\n\r\n", b""),
}
"""Where an answer trickles: http.client reads the status line and headers inside the opener,
the body is read by _read_answer."""


def _tls_receiver(folder: Path, monkeypatch: pytest.MonkeyPatch) -> ssl.SSLContext:
    """A server context for 127.0.0.1 under a new site CA (provision.py's, made by openssl),
    which the webhook's client trusts through SSL_CERT_FILE (read when its context is made)."""
    if shutil.which("openssl") is None:
        pytest.skip("the `openssl` command makes the test certificate")
    ca, _ = ensure_site_ca(folder / "ca")
    cert, key = folder / "receiver.crt", folder / "receiver.key"
    issue_certificate(ca, "receiver", cert, key, server_names=["127.0.0.1"])
    monkeypatch.setenv("SSL_CERT_FILE", str(ca.cert))
    tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    tls.load_cert_chain(cert, key)
    return tls


@pytest.mark.parametrize("where", sorted(TRICKLED))
@pytest.mark.parametrize("scheme", ["http", "https"])
def test_a_trickling_answer_holds_the_webhook_worker_no_longer_than_timeout_s(
    where: str, scheme: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A receiver that sends its status line or headers a byte at a time held the worker for as
    # long as it kept trickling: the socket timeout is per read, and http.client reads them.
    tls = _tls_receiver(tmp_path, monkeypatch) if scheme == "https" else None
    receiver = _SlowReceiver(_trickle(*TRICKLED[where]), tls)
    counter, registry = _webhook_counter()
    cfg = WebhookConfig(url=receiver.url, timeout_s=1.0, attempts=2, retry_max_s=0.5)
    webhook = Webhook(cfg, counter)
    try:
        webhook.post("slow", b"{}")
        webhook.post("next", b"{}")
        webhook.close(8.0)  # the old code was still held when this gave up
    finally:
        receiver.close()
    # The trickled attempt timed out and was retried (a good answer then); the next one went.
    assert receiver.keys == ["slow", "slow", "next"]
    assert receiver.hung_up  # the old code was still reading when the test ended it
    outcomes = {
        o: registry.get_sample_value("hook_total", {"outcome": o})
        for o in ("delivered", "retried", "failed")
    }
    assert outcomes == {"delivered": 2.0, "retried": 1.0, "failed": None}


def _silent(_conn: socket.socket, stop: threading.Event) -> None:
    """An answer that never comes: the receiver holds the connection until the test ends."""
    stop.wait()


def _eventually(what: Callable[[], bool], within_s: float = 5.0) -> bool:
    end = time.monotonic() + within_s
    while not what():
        if time.monotonic() > end:
            return False
        time.sleep(0.05)
    return True


ANSWER_500 = b"HTTP/1.1 500 Internal Server Error\r\nContent-Length: 0\r\n\r\n"


def _answer_500(conn: socket.socket, _stop: threading.Event) -> None:
    conn.sendall(ANSWER_500)


@pytest.mark.parametrize("first", [_silent, _answer_500], ids=["silent", "500"])
def test_webhook_close_keeps_its_bound_and_counts_what_it_left(
    first: Callable[[socket.socket, threading.Event], None],
) -> None:
    # close(0.5) waited for the worker 0.5 s (and as long again for room in a full queue),
    # then once more the webhook's timeout_s + 1 s: 12 s here, where the hub's shutdown gives
    # promotions 3 s. Both when the receiver never answers (the worker in its attempt) and when
    # it answers 500 (the worker waits to retry: it counted the queue dropped, then waited on
    # it, empty and without the end marker that found no room).
    receiver = _SlowReceiver(first, later=ANSWER_500)
    counter, registry = _webhook_counter()
    webhook = Webhook(WebhookConfig(url=receiver.url, timeout_s=10.0, queue=2), counter)

    def count(outcome: str) -> float | None:
        return registry.get_sample_value("hook_total", {"outcome": outcome})

    try:
        webhook.post("first", b"{}")
        assert receiver.first_request.wait(5.0)  # the worker is in its attempt
        webhook.post("second", b"{}")
        webhook.post("third", b"{}")  # the queue is full
        webhook.close(0.5)
        dropped, failed = count("dropped"), count("failed")
    finally:
        receiver.close()  # hangs up: the attempt in flight ends
    assert dropped == 2  # the queued ones, counted by the time close returns
    if first is _silent:
        # Returned with the attempt still in flight: the old close waited it out (its timeout_s,
        # 10 s), which had counted it failed by then.
        assert failed is None
    # The worker ends: the old one waited on the emptied queue for ever (the end marker had
    # found no room in it).
    assert _eventually(lambda: not webhook._thread.is_alive())  # its one thread
    # The one in flight is counted when its attempt ends: failed, and not tried again.
    assert _eventually(lambda: count("failed") == 1)
    assert (count("delivered"), count("dropped")) == (None, 2)
    assert set(receiver.keys) == {"first"}


def test_a_shopper_without_consent_decides_only_the_rules_of_its_kind(site: Site) -> None:
    # A cart without consent in a zone whose rule targets assets: the asset rule used to decide
    # (and store) suppressed_no_consent for it, as if a rule decided for every kind.
    consent = ConsentRegistry(clock=lambda: T0)
    privacy = Privacy({site.id: site}, consent, b"k" * 32)
    rules = [
        Rule.model_validate({"id": r, "zone": "endcap-2-front", "kind": k, "min_dwell_s": 5})
        for r, k in (("coffee", "cart"), ("asset-screen", "asset"))
    ]
    ev = Evaluator(
        rules,
        {site.id: site},
        privacy.kind_of,
        consent.has_consent,
        shoppers=PseudonymConsent(consent, privacy.pseudonym),
    )
    got = ev.evaluate(SITE, T0, [], [_enter(CART, T0)]) + ev.evaluate(SITE, T0 + 6, [], [])
    assert [(d.rule, d.decision, d.beacon) for d in got] == [
        ("coffee", "suppressed_no_consent", None)
    ]


def test_a_name_lookup_that_hangs_ends_with_the_attempt_and_is_not_started_twice(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # getaddrinfo has no timeout: with the store's DNS server down the worker waited as long as
    # the resolver did (glibc: 5 s per server and try), every later promotion behind it. The
    # system resolver cannot be made slow here, so the lookup function is the one double: it
    # hangs until the test lets it answer (with the real resolver's answer).
    release = threading.Event()
    lookups: list[str] = []

    def hanging(host: str, port: int, **kwargs: Any) -> list[Any]:
        lookups.append(host)
        release.wait(30.0)
        return socket.getaddrinfo(host, port, **kwargs)

    monkeypatch.setattr(promotions, "_LOOKUPS", promotions._Lookups(hanging))
    receiver = _SlowReceiver(_answer_500, later=GOOD_ANSWER)
    url = receiver.url.replace("127.0.0.1", "localhost")
    counter, registry = _webhook_counter()
    cfg = WebhookConfig(url=url, timeout_s=0.5, attempts=4, retry_max_s=0.2)
    webhook = Webhook(cfg, counter)

    def count(outcome: str) -> float | None:
        return registry.get_sample_value("hook_total", {"outcome": outcome})

    try:
        webhook.post("first", b"{}")
        # Two attempts end at their deadline while the lookup hangs: the old code was held in
        # the first one for as long as the lookup took.
        assert _eventually(lambda: count("retried") == 2)
        assert lookups == ["localhost"]  # waited for again, not started again
        release.set()
        webhook.close(5.0)
    finally:
        release.set()
        receiver.close()
    assert receiver.keys == ["first", "first"]  # the 500, then the good answer
    assert (count("delivered"), count("failed")) == (1.0, None)
