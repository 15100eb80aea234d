"""ConsentRegistry's API side under concurrency: grant/revoke at once end, in the registry and in
the broker's retained messages, at the newest decision (consent.py, module docstring)."""

from __future__ import annotations

import hashlib
import sqlite3
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Literal

import pytest

from beacon_hub.consent import (
    Consent,
    ConsentRegistry,
    ConsentStore,
    consent_topic,
    decode_consent,
)
from beacon_hub.privacy import erase_sqlite
from beacon_hub.stores import open_sqlite

T0 = 1_700_000_000.0
BEACON = "ibeacon:3d1a7b52-8c4e-4f0a-9b6d-2e5f8a1c7d40:1:5"
SITES = ("s1", "s2")
OVERTAKE_CHANCE_S = 0.5
"""How long the held grant gives the revoke to overtake it. A correct registry makes the revoke
wait for the grant, so this wait always runs out there; no assertion depends on its length (a
shorter one only makes the test likelier to miss the race in a broken registry)."""


class _Interleaving:
    """Clock and publish for a registry: the grant (thread "grant") reads T0 and is held either
    just after reading the clock or inside its first publish, while a revoke (reading T0 + 1)
    runs on another thread. Records what reaches the broker, in order."""

    def __init__(self, hold_in: Literal["clock", "publish"]) -> None:
        self.hold_in = hold_in
        self.held = threading.Event()
        self.revoked = threading.Event()
        self.broker: list[tuple[str, Consent]] = []
        self._times = iter([T0, T0 + 1.0])
        self._lock = threading.Lock()

    def _hold_grant(self, where: str) -> None:
        if where == self.hold_in and not self.held.is_set() and _thread() == "grant":
            self.held.set()
            self.revoked.wait(OVERTAKE_CHANCE_S)

    def clock(self) -> float:
        with self._lock:
            t = next(self._times)
        self._hold_grant("clock")
        return t

    def publish(self, topic: str, payload: bytes, qos: int, retain: bool) -> bool:
        assert (qos, retain) == (1, True)
        self._hold_grant("publish")
        with self._lock:
            self.broker.append((topic, decode_consent(payload)))
        return True

    def retained(self) -> dict[str, Consent]:
        """The broker keeps the last message per topic."""
        return dict(self.broker)


def _thread() -> str:
    return threading.current_thread().name


def _registry(clock: object, publish: object) -> ConsentRegistry:
    reg = ConsentRegistry(publish=publish, sites=SITES, clock=clock)  # type: ignore[arg-type]
    reg.attach(lambda _b: "anon:00000000000000aa")
    return reg


@pytest.mark.parametrize("hold_in", ["clock", "publish"])
def test_a_revoke_during_a_grant_ends_revoked_in_the_registry_and_at_the_broker(
    hold_in: Literal["clock", "publish"],
) -> None:
    world = _Interleaving(hold_in)
    reg = _registry(world.clock, world.publish)

    def revoke() -> None:
        reg.revoke(BEACON)
        world.revoked.set()

    grant = threading.Thread(target=reg.grant, args=(BEACON,), name="grant")
    grant.start()
    assert world.held.wait(30.0)
    other = threading.Thread(target=revoke, name="revoke")
    other.start()
    grant.join(30.0)
    other.join(30.0)
    assert not grant.is_alive()
    assert not other.is_alive()

    revoked = Consent(False, T0 + 1.0)
    assert not reg.has_consent(BEACON, T0 + 2.0)
    assert reg.consenting() == []
    assert reg.version == 2
    # A restarted or second hub learns the retained message: it must be the revoke.
    assert world.retained() == {consent_topic(site, BEACON): revoked for site in SITES}
    assert [c.t for _, c in world.broker] == [T0, T0, T0 + 1.0, T0 + 1.0]  # decision order


def test_an_api_decision_is_never_stamped_before_the_one_it_replaces() -> None:
    sent: list[Consent] = []
    now = [T0 + 5.0]

    def publish(_topic: str, payload: bytes, _qos: int, _retain: bool) -> bool:
        sent.append(decode_consent(payload))
        return True

    reg = _registry(lambda: now[0], publish)
    reg.revoke(BEACON)
    now[0] = T0  # the wall clock steps back (NTP)
    reg.grant(BEACON)
    assert reg.has_consent(BEACON, T0 + 6.0)  # the shopper's latest choice
    assert sent[-1] == Consent(True, T0 + 5.0)
    # Another hub that holds the revoke accepts the grant from the retained topic.
    elsewhere = ConsentRegistry({BEACON: Consent(False, T0 + 5.0)})
    assert elsewhere.apply(BEACON, sent[-1])
    assert elsewhere.has_consent(BEACON, T0 + 6.0)
    # A decision from a process whose clock runs ahead, then a revoke here: the revoke wins.
    assert reg.apply(BEACON, Consent(True, T0 + 50.0))
    reg.revoke(BEACON)
    assert not reg.has_consent(BEACON, T0 + 60.0)
    assert sent[-1] == Consent(False, T0 + 50.0)


class _Writer:
    """SqliteStore.submit's contract with a thread of its own: jobs run later, in order, on one
    connection. `run` does what the writer thread would do meanwhile."""

    def __init__(self, db: sqlite3.Connection) -> None:
        self.db = db
        self.jobs: list[Callable[[sqlite3.Connection], None]] = []

    def submit(self, job: Callable[[sqlite3.Connection], None]) -> None:
        self.jobs.append(job)

    def run(self) -> None:
        while self.jobs:
            self.jobs.pop(0)(self.db)


def _anon(beacon: str) -> str:
    return "anon:" + hashlib.sha256(beacon.encode()).hexdigest()[:16]  # unkeyed: a test's


def _stored(
    path: Path, initial: dict[str, Consent] | None = None
) -> tuple[ConsentRegistry, _Writer]:
    db = open_sqlite(path)  # the hub's database, with its `consent` table
    writer = _Writer(db)
    reg = ConsentRegistry(initial, clock=lambda: T0, store=ConsentStore(db, writer.submit))
    reg.attach(_anon)
    return reg, writer


def test_decisions_survive_a_restart_by_pseudonym_and_beat_the_file(tmp_path: Path) -> None:
    path = tmp_path / "hub.sqlite"
    other = BEACON.replace(":5", ":6")
    reg, writer = _stored(path)
    assert reg.apply(BEACON, Consent(True, T0))
    assert reg.apply(other, Consent(True, T0))
    reg.revoke(other)  # the API, at T0 (never before the grant it replaces)
    writer.run()
    rows = writer.db.execute("SELECT anon, consent FROM consent ORDER BY anon").fetchall()
    assert sorted(rows) == sorted([(_anon(BEACON), 1), (_anon(other), 0)])  # no raw id stored
    writer.db.close()

    # The file grants both at t=0: the stored revoke is newer and wins, the grant stays.
    file = {BEACON: Consent(True), other: Consent(True)}
    again, writer = _stored(path, file)
    assert again.has_consent(BEACON, T0 + 1.0)
    assert not again.has_consent(other, T0 + 1.0)
    # The retained copies arrive after the backlog and change nothing.
    assert not again.apply(BEACON, Consent(True, T0))
    assert not again.apply(other, Consent(False, T0))
    assert writer.jobs == []
    # A newer decision replaces the stored one, in memory and in the table.
    assert again.apply(BEACON, Consent(False, T0 + 2.0))
    assert not again.has_consent(BEACON, T0 + 3.0)
    writer.run()
    assert writer.db.execute(
        "SELECT consent, t FROM consent WHERE anon = ?", (_anon(BEACON),)
    ).fetchall() == [(0, T0 + 2.0)]
    writer.db.close()


def test_a_consent_message_is_acknowledged_after_its_decision_is_stored(tmp_path: Path) -> None:
    reg, writer = _stored(tmp_path / "hub.sqlite")
    acked: list[str] = []
    assert reg.apply(BEACON, Consent(True, T0))
    reg.when_saved(lambda: acked.append("grant"))
    assert acked == []  # its row is still with the writer
    assert not reg.apply(BEACON, Consent(True, T0))  # the retained copy: nothing new...
    reg.when_saved(lambda: acked.append("copy"))
    assert acked == []  # ...but what it confirms is not stored yet either
    writer.run()
    assert acked == ["grant", "copy"]
    assert writer.db.execute("SELECT count(*) FROM consent").fetchone() == (1,)
    reg.when_saved(lambda: acked.append("later"))  # nothing pending: at once
    assert acked == ["grant", "copy", "later"]
    writer.db.close()


def test_a_restored_decision_answers_by_pseudonym_until_a_raw_one_replaces_it(
    tmp_path: Path,
) -> None:
    # Promotions see only pseudonyms (promotions.py, PseudonymConsent): a decision the hub
    # restored by pseudonym must answer for it, or the privacy step tracks the shopper while
    # promotions withhold every offer.
    path = tmp_path / "hub.sqlite"
    other = BEACON.replace(":5", ":6")
    reg, writer = _stored(path)
    assert reg.apply(BEACON, Consent(True, T0, expires=T0 + 100.0))
    assert reg.apply(other, Consent(False, T0))
    writer.run()
    writer.db.close()

    again, writer = _stored(path)
    assert again.decided() == []  # known by pseudonym only
    assert again.has_consent_by_pseudonym(_anon(BEACON), T0 + 1.0)
    assert not again.has_consent_by_pseudonym(_anon(BEACON), T0 + 100.0)  # expired
    assert not again.has_consent_by_pseudonym(_anon(other), T0 + 1.0)  # revoked
    assert not again.has_consent_by_pseudonym(_anon("mac:aa:bb:cc:dd:ee:ff"), T0 + 1.0)
    # The retained copy after the backlog is the same decision: nothing changes, by pseudonym
    # the answer stays (it used to be the only way, and this copy never came under the raw id).
    assert not again.apply(BEACON, Consent(True, T0, expires=T0 + 100.0))
    assert again.has_consent_by_pseudonym(_anon(BEACON), T0 + 1.0)
    # A newer decision by raw id replaces it; the restored one no longer answers.
    assert again.apply(BEACON, Consent(False, T0 + 2.0))
    assert again.decided() == [BEACON]
    assert not again.has_consent_by_pseudonym(_anon(BEACON), T0 + 3.0)
    assert not again.has_consent(BEACON, T0 + 3.0)
    writer.run()
    writer.db.close()


def test_an_erased_decision_is_not_restored(tmp_path: Path) -> None:
    path = tmp_path / "hub.sqlite"
    reg, writer = _stored(path)
    assert reg.apply(BEACON, Consent(True, T0))
    writer.run()
    removed = erase_sqlite(writer.db, [BEACON, _anon(BEACON)])
    assert removed["consent"] == 1
    writer.db.close()
    again, writer = _stored(path)
    assert not again.has_consent_by_pseudonym(_anon(BEACON), T0 + 1.0)
    assert not again.has_consent(BEACON, T0 + 1.0)
    writer.db.close()
