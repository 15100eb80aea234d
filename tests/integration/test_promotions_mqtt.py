"""Promotions and consent through a real Mosquitto into a real hub process (docs/promotions.md).

Two shoppers' carts stand in the produce department; one said yes (consent file), one did not.
The consenting one gets the promotion exactly once (cooldown an hour) under its pseudonym; the
other is never published, stored or targeted, yet the zone occupancy counts both.
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from pathlib import Path

import paho.mqtt.client as mqtt
import yaml
from paho.mqtt.enums import CallbackAPIVersion

from beacon_hub.consent import Consent, consent_topic, encode_consent
from beacon_hub.hubconfig import PrivacyConfig
from beacon_hub.privacy import load_key, pseudonym
from beacon_hub.wire import decode_promotion
from tests.integration.hubkit import _HTTP, Gateways, HubProcess, site_file, unique_site, wait_until
from tests.servers import Mosquitto


class _Listener:
    def __init__(self, broker: Mosquitto, site: str) -> None:
        self.messages: list[tuple[str, bytes]] = []
        self.lock = threading.Lock()
        self.client = mqtt.Client(
            CallbackAPIVersion.VERSION2, client_id=f"l-{uuid.uuid4().hex[:8]}", clean_session=True
        )
        # A closure over the list and lock, not the bound method: self holds the client, and the
        # cycle would leave paho's wake-up socket pair, closed in its __del__, to the cycle
        # collector, which may let the sockets warn as unclosed (filterwarnings = error: exit 1).
        messages, lock = self.messages, self.lock

        def on_message(_c: mqtt.Client, _u: object, msg: mqtt.MQTTMessage) -> None:
            with lock:
                messages.append((msg.topic, bytes(msg.payload)))

        self.client.on_message = on_message
        self.client.connect(broker.host, broker.port)
        self.client.subscribe(f"beacons/{site}/#", qos=1)
        self.client.loop_start()

    def topics(self, part: str) -> list[tuple[str, bytes]]:
        with self.lock:
            return [(t, p) for t, p in self.messages if f"/{part}" in t]

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


def test_dwelling_shopper_gets_one_promotion_and_the_unconsented_one_nothing(  # noqa: PLR0915  # one scenario, end to end
    tmp_path: Path, mosquitto: Mosquitto
) -> None:
    site_id = unique_site()
    site_path = site_file(tmp_path, site_id)
    gws = Gateways(mosquitto, site_path, beacons=2, samples_per_beacon=3)
    gws.spots = [(35.0, 15.0), (35.0, 12.0)]  # both in the produce department
    yes, no = gws.beacon_ids
    consent_file = tmp_path / "consent.yaml"
    consent_file.write_text(yaml.safe_dump([yes]))
    rules = tmp_path / "rules.yaml"
    rule = {"id": "produce-offer", "zone": "produce", "min_dwell_s": 2, "cooldown_s": 3600}
    rules.write_text(yaml.safe_dump({"rules": [rule]}))
    hub = HubProcess(
        tmp_path / "hub",
        mosquitto,
        [site_path],
        extra={
            "privacy.consent_file": str(consent_file),
            "privacy.shopper_kinds": ["cart"],
            "promotions.rules": str(rules),
        },
    )
    listener = _Listener(mosquitto, site_id)
    try:
        hub.start()
        anon = pseudonym(load_key(PrivacyConfig(), hub.db_path), yes)
        stop = threading.Event()
        sender = threading.Thread(target=gws.run_for, args=(60.0, stop))
        sender.start()
        try:
            wait_until("a promotion", lambda: bool(listener.topics("promotion/")), hub=hub)
            wait_until(
                "the refusal of the other shopper",
                lambda: bool(
                    hub.sql(
                        "SELECT 1 FROM promotion_decisions WHERE decision = 'suppressed_no_consent'"
                    )
                ),
                hub=hub,
            )
            # Ten more seconds of dwelling: the cooldown holds it to one.
            seen = gws.rounds
            wait_until("ten more rounds", lambda: gws.rounds >= seen + 10, hub=hub)
            with _HTTP.open(
                f"http://127.0.0.1:{hub.http_port}/api/sites/{site_id}/zones/occupancy", timeout=5
            ) as r:
                occupancy = json.loads(r.read())
        finally:
            stop.set()
            sender.join()
        gws.settle()
        assert hub.stop() == 0
    finally:
        hub.close()
        listener.close()
        gws.close()

    promos = listener.topics("promotion/")
    assert [t for t, _ in promos] == [f"beacons/{site_id}/promotion/{anon}"]
    promo = decode_promotion(promos[0][1])
    assert (promo.rule, promo.zone, promo.beacon) == ("produce-offer", "produce", anon)
    # Nothing of either raw id, nor of the unconsented shopper at all, left the hub on MQTT
    # (the gateways' own readings carry raw ids, of course).
    outputs = [(t, p) for t, p in listener.messages if "/gateway/" not in t]
    everything = b"".join(t.encode() + p for t, p in outputs)
    assert yes.encode() not in everything
    assert no.encode() not in everything
    assert anon.encode() in everything
    # ... nor went into SQLite.
    stored = {r[0] for r in hub.sql("SELECT beacon FROM fixes UNION SELECT beacon FROM events")}
    assert stored == {anon}
    decisions = hub.sql("SELECT beacon, decision FROM promotion_decisions ORDER BY t")
    assert (anon, "sent") in decisions
    assert {b for b, d in decisions if d == "suppressed_no_consent"} == {None}
    assert sum(1 for _, d in decisions if d == "sent") == 1
    # Zone occupancy (counted before the privacy step) still counts both carts.
    assert occupancy["zones"]["produce"]["cart"] == 2


def test_a_revoked_shoppers_retained_track_is_cleared(tmp_path: Path, mosquitto: Mosquitto) -> None:
    """After a revocation the hub outputs nothing of the shopper, its beacon_lost included, so
    nothing cleared the retained `track/{pseudonym}`: the broker showed where the cart last was
    to every new subscriber for as long as it ran."""
    site_id = unique_site()
    site_path = site_file(tmp_path, site_id)
    gws = Gateways(mosquitto, site_path, beacons=1, samples_per_beacon=3)
    gws.spots = [(35.0, 15.0)]
    [cart] = gws.beacon_ids
    consent_file = tmp_path / "consent.yaml"
    consent_file.write_text(yaml.safe_dump([cart]))
    hub = HubProcess(
        tmp_path / "hub",
        mosquitto,
        [site_path],
        extra={"privacy.consent_file": str(consent_file), "privacy.shopper_kinds": ["cart"]},
    )
    listener = _Listener(mosquitto, site_id)
    revoker = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"r-{uuid.uuid4().hex[:8]}")
    revoker.connect(mosquitto.host, mosquitto.port)
    revoker.loop_start()
    try:
        hub.start()
        track = f"beacons/{site_id}/track/{pseudonym(load_key(PrivacyConfig(), hub.db_path), cart)}"
        stop = threading.Event()
        sender = threading.Thread(target=gws.run_for, args=(60.0, stop))
        sender.start()
        try:
            published = lambda: any(p for t, p in listener.topics("track/") if t == track)  # noqa: E731
            wait_until("the cart's track", published, hub=hub)
            revoke = encode_consent(Consent(consent=False, t=time.time(), expires=None))
            info = revoker.publish(consent_topic(site_id, cart), revoke, qos=1, retain=True)
            info.wait_for_publish(10)
            wait_until(
                "the retained track cleared",
                lambda: (track, b"") in listener.topics("track/"),
                hub=hub,
            )
        finally:
            stop.set()
            sender.join()
        assert hub.stop() == 0
    finally:
        hub.close()
        listener.close()
        revoker.loop_stop()
        revoker.disconnect()
        gws.close()
