"""Consent and a persistent session's queue, through a real Mosquitto (docs/privacy.md, Consent
after a restart or a reconnect).

What the broker does (Mosquitto 2.0): right after the CONNACK of a persistent session it sends
the readings it queued for it; the retained consent decisions come only after the hub's
SUBSCRIBE, behind every message still queued, and while the in-flight window is full of
readings the hub has not acknowledged (it acknowledges them once their tick is stored) they do
not come at all. A decision published while the hub was away is queued for its session like a
reading, in the order the broker received them.

So a restarted hub ticked its backlog before it knew any consent: a consenting shopper's fixes
were withheld, and one whose consent file grant had been revoked on the topic was tracked. A
running hub that reconnects has its decisions in memory and gets the ones made meanwhile in
order with the readings. Once the hub restored its decisions by pseudonym, promotions, which see
only pseudonyms, still asked them through the raw ids: the restored shopper was tracked, and
every visit of theirs after the restart decided suppressed_no_consent.
"""

from __future__ import annotations

import threading
import time
import uuid
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
import yaml
from paho.mqtt.enums import CallbackAPIVersion

from beacon_hub.consent import Consent, consent_subscription, consent_topic, encode_consent
from beacon_hub.hubconfig import PrivacyConfig
from beacon_hub.privacy import load_key, pseudonym
from tests.integration.hubkit import Gateways, HubProcess, site_file, unique_site, wait_until
from tests.integration.test_hub_resilience import sending
from tests.servers import Mosquitto

pytestmark = pytest.mark.integration

DOWN_ROUNDS = 6
"""Rounds the gateways send while the hub is stopped: 120 batches of the store's 20 gateways,
six times the broker's in-flight window (Mosquitto's default of 20 here)."""
CART_SPOT = (20.0, 16.0)
TICK_S = 0.5
"""The kit hub's tick interval (HubProcess)."""


def _publish(broker: Mosquitto, topic: str, payload: bytes, *, retain: bool) -> None:
    """One QoS 1 message, as another hub process's consent API or a store's system sends it."""
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"c-{uuid.uuid4().hex[:8]}")
    client.connect(broker.host, broker.port)
    client.loop_start()
    try:
        client.publish(topic, payload, qos=1, retain=retain).wait_for_publish(30)
    finally:
        client.loop_stop()
        client.disconnect()


def _decide(broker: Mosquitto, site: str, beacon: str, *, consent: bool) -> float:
    """A decision on the retained topic, stamped now; its time."""
    t = time.time()
    payload = encode_consent(Consent(consent, t))
    _publish(broker, consent_topic(site, beacon), payload, retain=True)
    return t


def _fixes(hub: HubProcess, beacon: str, after: float = 0.0) -> list[float]:
    rows = hub.sql("SELECT t FROM fixes WHERE beacon = ? AND t > ? ORDER BY t", beacon, after)
    return [float(r[0]) for r in rows]


def _last_tick(hub: HubProcess, site: str) -> float:
    rows = hub.sql("SELECT t FROM ticks WHERE site = ?", site)
    return float(rows[0][0]) if rows else 0.0


def _cart(folder: Path, broker: Mosquitto) -> tuple[str, Path, Gateways, str]:
    site = unique_site()
    path = site_file(folder, site)
    gws = Gateways(broker, path, beacons=1, samples_per_beacon=3)
    gws.spots = [CART_SPOT]
    return site, path, gws, gws.beacon_ids[0]


def _shopper_hub(folder: Path, broker: Mosquitto, path: Path, **extra: object) -> HubProcess:
    return HubProcess(folder, broker, [path], extra={"privacy.shopper_kinds": ["cart"], **extra})


def _restart_with_backlog(
    hub: HubProcess, gws: Gateways, site: str, rounds: int = DOWN_ROUNDS
) -> tuple[float, float]:
    """Stop the hub, let the gateways send `rounds` rounds for its session, start it again and
    wait until it has ticked past them; the send times of the first and last of those rounds."""
    assert hub.stop() == 0
    first = time.time()
    wanted = gws.rounds + rounds
    with sending(gws):
        wait_until("the rounds sent while the hub is down", lambda: gws.rounds >= wanted)
    last = time.time()
    hub.start()
    wait_until("the backlog ticked", lambda: _last_tick(hub, site) > last + 1.0, hub=hub)
    return first, last


PRODUCE = (35.0, 15.0)
"""A cart spot in the produce department, a zone of 10 m by 17 m that a fix's noise does not
leave. (aisle-4, around CART_SPOT, is 2.8 m wide: after a restarted engine's first fix strayed
to the service desk, from a tick with one gateway's batch, its fixes never held aisle-4 for the
zones' 2 s.)"""
PROMOTED_ROUNDS = 2 * DOWN_ROUNDS
"""The backlog of the promotion test: that first stray fix holds the cart at the service desk
for about 5 s, and the visit is decided 2 s after it enters the produce department."""
PRODUCE_RULE = {"id": "produce-offer", "zone": "produce", "min_dwell_s": 2, "cooldown_s": 0}
"""No cooldown: every visit of a consenting shopper is `sent`."""


def _decisions(
    hub: HubProcess, after: float = 0.0, until: float = 1e11
) -> list[tuple[str | None, str]]:
    """(beacon, decision) of the produce rule in data time (`after`, `until`]: the cart is the
    only shopper, so every row is about it (a shopper without consent is stored without an id)."""
    query = "SELECT beacon, decision FROM promotion_decisions WHERE t > ? AND t <= ? ORDER BY t"
    return [(b, str(d)) for b, d in hub.sql(query, after, until)]


def _zone_exit(hub: HubProcess, anon: str, after: float) -> bool:
    query = "SELECT 1 FROM events WHERE beacon = ? AND type = 'zone_exit' AND zone = ? AND t > ?"
    return bool(hub.sql(query, anon, PRODUCE_RULE["zone"], after))


def test_a_restarted_hub_ticks_its_backlog_under_the_consent_it_had(
    tmp_path: Path, mosquitto: Mosquitto
) -> None:
    """(a) Consent given on the retained topic (another hub's API): the readings queued while
    this hub was stopped are tracked under the pseudonym, none withheld."""
    site, path, gws, cart = _cart(tmp_path, mosquitto)
    _decide(mosquitto, site, cart, consent=True)
    hub = _shopper_hub(tmp_path / "hub", mosquitto, path)
    try:
        hub.start()
        anon = pseudonym(load_key(PrivacyConfig(), hub.db_path), cart)
        with sending(gws):
            wait_until("the cart tracked", lambda: len(_fixes(hub, anon)) >= 2, hub=hub)
        first, last = _restart_with_backlog(hub, gws, site)
        withheld = hub.metric_sum("beacon_hub_privacy_withheld_fixes_total", site=site)
        backlog = [t for t in _fixes(hub, anon, first) if t <= last]
        print(f"after the restart: {withheld:g} fixes withheld, {len(backlog)} stored")
        assert withheld == 0
        assert backlog
        assert hub.stop() == 0
    finally:
        hub.close()
        gws.close()


def test_a_restarted_hub_does_not_track_a_revoked_file_grant(
    tmp_path: Path, mosquitto: Mosquitto
) -> None:
    """(a) with a consent file: the file grants, the topic revokes (newer), the hub stops; its
    backlog must not be tracked under the file's grant, nor promoted."""
    site, path, gws, cart = _cart(tmp_path, mosquitto)
    gws.spots = [PRODUCE]
    consent_file = tmp_path / "consent.yaml"
    consent_file.write_text(yaml.safe_dump([cart]))
    rules = tmp_path / "rules.yaml"
    rules.write_text(yaml.safe_dump({"rules": [PRODUCE_RULE]}))
    extra = {"privacy.consent_file": str(consent_file), "promotions.rules": str(rules)}
    hub = _shopper_hub(tmp_path / "hub", mosquitto, path, **extra)
    try:
        hub.start()
        anon = pseudonym(load_key(PrivacyConfig(), hub.db_path), cart)
        with sending(gws):
            wait_until("the cart tracked", lambda: len(_fixes(hub, anon)) >= 2, hub=hub)
            _decide(mosquitto, site, cart, consent=False)
            wait_until(
                "the revocation in force",
                lambda: hub.metric_sum("beacon_hub_privacy_withheld_fixes_total", site=site) > 0,
                hub=hub,
            )
            # A tick runs once its round has come, never more than a quarter interval before
            # the clock (service._round): one after this ran after the cart was withheld.
            in_force = time.time() + TICK_S
        _restart_with_backlog(hub, gws, site)
        with sending(gws):  # the cart stays until its visit is decided
            wait_until("a decision after", lambda: bool(_decisions(hub, in_force)), hub=hub)
        tracked = _fixes(hub, anon, in_force)
        decided = _decisions(hub, in_force)
        print(f"after the restart: {len(tracked)} fixes tracked after the revocation, {decided}")
        assert tracked == []
        assert decided
        assert set(decided) == {(None, "suppressed_no_consent")}
        assert hub.stop() == 0
    finally:
        hub.close()
        gws.close()


def test_a_restarted_hub_promotes_a_shopper_whose_consent_it_restored(
    tmp_path: Path, mosquitto: Mosquitto
) -> None:
    """(a) for promotions: consent given on the retained topic, a rule where the cart stands,
    the hub restarted with a backlog. The visit after the restart (begun in the backlog, or just
    after when the restarted engine's first fixes strayed), and a visit after the retained
    decision has come, are promoted like the one before. Promotions see only the pseudonym; the
    decision the hub restored by pseudonym counted for the privacy step but not for promotions,
    which decided suppressed_no_consent for both visits, the second because the retained copy,
    the same decision as the restored one, changed nothing."""
    site, path, gws, cart = _cart(tmp_path, mosquitto)
    gws.spots = [PRODUCE]
    _decide(mosquitto, site, cart, consent=True)
    rules = tmp_path / "rules.yaml"
    rules.write_text(yaml.safe_dump({"rules": [PRODUCE_RULE]}))
    hub = _shopper_hub(tmp_path / "hub", mosquitto, path, **{"promotions.rules": str(rules)})
    try:
        hub.start()
        anon = pseudonym(load_key(PrivacyConfig(), hub.db_path), cart)
        with sending(gws):
            wait_until("the first visit decided", lambda: bool(_decisions(hub)), hub=hub)
        before = _decisions(hub)
        first, last = _restart_with_backlog(hub, gws, site, PROMOTED_ROUNDS)
        with sending(gws):  # the cart stays until the visit after the restart is decided
            wait_until("the visit after", lambda: bool(_decisions(hub, first)), hub=hub)
            # The cart leaves and comes back: a visit whose readings were sent after the hub
            # had subscribed, so behind the retained decision (the test below).
            moved = time.time()
            gws.spots = [CART_SPOT]
            wait_until("the cart gone", lambda: _zone_exit(hub, anon, moved), hub=hub)
            back = time.time()
            gws.spots = [PRODUCE]
            wait_until("the visit later", lambda: bool(_decisions(hub, back)), hub=hub)
        restarted = _decisions(hub, first, moved)
        later = _decisions(hub, back)
        print(
            f"before the restart {before}; after it {restarted}, of which "
            f"{len(_decisions(hub, first, last))} in the backlog; later {later}"
        )
        assert set(before) == {(anon, "sent")}
        assert set(restarted) == {(anon, "sent")}
        assert set(later) == {(anon, "sent")}
        assert hub.stop() == 0
    finally:
        hub.close()
        gws.close()


def test_mosquitto_queues_a_decision_in_order_and_sends_the_retained_ones_after_the_queue(  # noqa: PLR0915  # one exchange, step by step
    mosquitto: Mosquitto,
) -> None:
    """The broker's side of the above, with a bare persistent session as the hub's (QoS 1,
    manual acknowledgements) on Mosquitto's default in-flight window of 20: a revocation
    published while the session is away is queued between the readings around it; the retained
    copies come only after the SUBACK and behind everything queued; and while the window is full
    of unacknowledged readings they do not come at all, while a later QoS 0 message does. So a
    hub holding its readings until the retained decisions arrive would wait for ever."""
    site, beacon = unique_site(), "ibeacon:3d1a7b52-8c4e-4f0a-9b6d-2e5f8a1c7d40:9:1"
    readings, consent = f"beacons/{site}/gateway/gw-01/readings", consent_topic(site, beacon)
    probe = f"probe/{site}"
    got: list[tuple[str, bytes, bool, int]] = []
    lock = threading.Lock()

    def on_message(_c: mqtt.Client, _u: object, m: mqtt.MQTTMessage) -> None:
        with lock:
            got.append((m.topic, bytes(m.payload), bool(m.retain), m.mid))

    def on_connect(c: mqtt.Client, _u: object, _f: object, _r: object, _p: object) -> None:
        c.subscribe([(readings, 1), (consent_subscription(site), 1), (probe, 0)])

    subacks: list[int] = []
    client_id = f"h-{uuid.uuid4().hex[:8]}"

    def session() -> mqtt.Client:
        """A connection of the persistent session: a new client each time, as paho leaves a
        stopped loop's wake-up sockets unclosed when the same one starts again (paho issue 627)."""
        c = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=client_id,
            protocol=mqtt.MQTTv311,
            clean_session=False,
            manual_ack=True,
        )
        c.on_message, c.on_connect = on_message, on_connect
        c.on_subscribe = lambda _c, _u, mid, _r, _p: subacks.append(mid)
        c.connect(mosquitto.host, mosquitto.port)
        c.loop_start()
        return c

    pub = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"p-{uuid.uuid4().hex[:8]}")
    pub.connect(mosquitto.host, mosquitto.port)
    pub.loop_start()

    def send(topic: str, payload: bytes, *, retain: bool) -> None:
        pub.publish(topic, payload, qos=1, retain=retain).wait_for_publish(30)

    send(consent, encode_consent(Consent(True, 1.0)), retain=True)
    hub = session()
    try:
        wait_until("the grant", lambda: len(got) == 1)
        hub.ack(got[0][3], 1)
        hub.disconnect()
        hub.loop_stop()
        with lock:
            got.clear()
        subacks.clear()
        for i in range(30):
            if i == 5:
                send(consent, encode_consent(Consent(False, 2.0)), retain=True)
            send(readings, f"r{i}".encode(), retain=False)
        hub = session()
        wait_until("the SUBACK", lambda: bool(subacks))
        hub.publish(probe, b"probe", qos=0)
        wait_until("the probe", lambda: any(t == probe for t, *_ in got))
        with lock:
            held = list(got)
        names = [p.decode() if t in (readings, probe) else (t, p[:40], r) for t, p, r, _ in held]
        revoke_live = (consent, encode_consent(Consent(False, 2.0))[:40], False)
        # The window (20): 5 readings, the revocation where it was published, 14 readings.
        assert names[:20] == [f"r{i}" for i in range(5)] + [revoke_live] + [
            f"r{i}" for i in range(5, 19)
        ]
        assert names[20:] == ["probe"]  # no retained decision while the window is full
        for _t, _p, _r, mid in held[:20]:
            hub.ack(mid, 1)
        wait_until("the retained decision", lambda: any(r for _, _, r, _ in got))
        with lock:
            rest = [p.decode() if t == readings else (t, r) for t, p, r, _ in got[21:]]
        # Behind what was queued: the readings the acknowledgements let through come first.
        assert rest[-1] == (consent, True)
        assert rest[:-1] == [f"r{i}" for i in range(19, 30)]
    finally:
        hub.loop_stop()
        hub.disconnect()
        pub.loop_stop()
        pub.disconnect()
