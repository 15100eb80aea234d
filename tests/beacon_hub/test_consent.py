"""ConsentRegistry's API side under concurrency: grant/revoke at once end, in the registry and in
the broker's retained messages, at the newest decision (consent.py, module docstring)."""

from __future__ import annotations

import threading
from typing import Literal

import pytest

from beacon_hub.consent import Consent, ConsentRegistry, consent_topic, decode_consent

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
