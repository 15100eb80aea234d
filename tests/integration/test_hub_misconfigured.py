"""The hub against a real Mosquitto and configured wrong: a client id shared by two hubs, a broker
whose ACL refuses one site's subscription, a site whose gateways never reach it, a SIGHUP sent
to reload it. Each says what is wrong (the log, /healthz) and none takes the hub down."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from beacon_hub.health import Metrics
from beacon_hub.hubconfig import BrokerConfig, IngestConfig
from beacon_hub.ingest import SHORT_SESSIONS_SAID, MqttLink
from tests.integration.hubkit import _HTTP, Gateways, HubProcess, site_file, wait_until
from tests.servers import Mosquitto

pytestmark = pytest.mark.integration

WAIT_S = 60.0
"""How long a test waits for what it expects: takeovers come every reconnect (1-2 s)."""


def _wait(what: str, done: Callable[[], bool]) -> None:
    deadline = time.monotonic() + WAIT_S
    while not done():
        if time.monotonic() > deadline:
            raise AssertionError(f"no {what} within {WAIT_S:g} s")
        time.sleep(0.1)


def _link(broker: BrokerConfig, client_id: str, sites: list[str]) -> MqttLink:
    return MqttLink(broker, IngestConfig(), client_id=client_id, site_ids=sites, metrics=Metrics())


def test_two_hubs_given_one_client_id_are_told_so(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    broker = Mosquitto(tmp_path / "mosquitto")
    broker.start()
    config = BrokerConfig.model_validate({"url": broker.url, "reconnect_max_s": 1})
    links = [_link(config, "beacon-hub-copied", [site]) for site in ("site-a", "site-b")]
    said = "is another client connected as 'beacon-hub-copied'?"
    try:
        with caplog.at_level("WARNING", logger="beacon_hub.ingest"):
            for link in links:
                link.start()
            _wait("warning about the shared client id", lambda: said in caplog.text)
    finally:
        for link in links:
            link.stop()
        broker.stop()
    assert f"closed our connection {SHORT_SESSIONS_SAID} times in a row" in caplog.text


def test_a_refused_subscription_is_named_and_the_other_sites_served(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Mosquitto's dynamic security lets the hub subscribe to site-a only (SUBACK 0x80 for
    site-b's topics): the hub said "refused a subscription: Unspecified error" x 4 and counted
    itself disconnected, site-a's traffic flowing."""
    plugin = sorted(Path("/usr/lib").glob("*/mosquitto_dynamic_security.so"))
    assert plugin, "Debian's mosquitto package ships the dynamic security plugin"
    security = tmp_path / "dynsec.json"
    subprocess.run(
        ["mosquitto_ctrl", "dynsec", "init", str(security), "admin", "adminpw"],
        check=True,
        capture_output=True,
    )
    config_file = tmp_path / "mosquitto.conf"
    config_file.write_text(
        "listener $port 127.0.0.1\n"
        "allow_anonymous true\n"
        f"plugin {plugin[0]}\n"
        f"plugin_opt_config_file {security}\n"
        "persistence false\n" + ("user root\n" if os.geteuid() == 0 else "")
        # as root, Mosquitto drops to user mosquitto, which cannot write the plugin's file here
    )
    broker = Mosquitto(tmp_path / "mosquitto", config_file=config_file)
    broker.start()

    def ctrl(*args: str) -> None:
        admin = ["-h", "127.0.0.1", "-p", str(broker.port), "-u", "admin", "-P", "adminpw"]
        subprocess.run(["mosquitto_ctrl", *admin, "dynsec", *args], check=True, capture_output=True)

    link = None
    try:
        ctrl("createClient", "hub", "-p", "hubpw")
        ctrl("createRole", "hub-site-a")
        ctrl("addRoleACL", "hub-site-a", "subscribePattern", "beacons/site-a/#", "allow", "5")
        ctrl("addClientRole", "hub", "hub-site-a")
        config = BrokerConfig.model_validate(
            {"url": broker.url, "username": "hub", "password": "hubpw"}
        )
        link = _link(config, "beacon-hub-a-b", ["site-a", "site-b"])
        with caplog.at_level("ERROR", logger="beacon_hub.ingest"):
            link.start()
            _wait("subscription", link.connected.is_set)
    finally:
        if link is not None:
            link.stop()
        broker.stop()
    refused = [
        r.getMessage() for r in caplog.records if "refused the subscription" in r.getMessage()
    ]
    assert len(refused) == 1, caplog.text
    assert "beacons/site-b/gateway/+/readings" in refused[0]
    assert "beacons/site-a/" not in refused[0]
    assert "user hub" in refused[0]


def test_a_site_that_hears_nothing_shows_in_healthz_and_sighup_stops_nothing(
    tmp_path: Path,
) -> None:
    """Two sites, gateways only for site-a: /healthz gives site-b's data age from the connection
    (503 past HEALTH_NO_DATA_S; it stayed green while site-b ticked on empty windows). SIGHUP
    is logged and the hub goes on (it died at once, nothing flushed)."""
    broker = Mosquitto(tmp_path / "mosquitto")
    broker.start()
    sites = [site_file(tmp_path, "site-a"), site_file(tmp_path, "site-b")]
    hub = HubProcess(tmp_path / "hub", broker, sites)
    gateways = Gateways(broker, sites[0])
    try:
        hub.start()
        for _ in range(4):
            gateways.send_round()
            time.sleep(0.5)
        gateways.settle()

        def health() -> dict[str, Any]:
            with _HTTP.open(f"http://127.0.0.1:{hub.http_port}/healthz", timeout=5) as r:
                sites: dict[str, Any] = json.loads(r.read())["sites"]
                return sites

        wait_until("site-b older in data than site-a", lambda: _ages(health()))
        assert hub.proc is not None
        hub.proc.send_signal(signal.SIGHUP)
        wait_until("the SIGHUP logged", lambda: "SIGHUP: the hub reads" in hub.log())
        gateways.send_round()
        gateways.settle()
        assert hub.proc.poll() is None
        assert hub.stop() == 0
    finally:
        gateways.close()
        hub.close()
        broker.stop()


def _ages(sites: dict[str, Any]) -> bool:
    a, b = sites["site-a"]["data_age_s"], sites["site-b"]["data_age_s"]
    return a is not None and b is not None and b > a + 1.0


def test_a_site_moved_away_under_the_same_client_id_is_unsubscribed(tmp_path: Path) -> None:
    """A hub restarted with fewer sites under its fixed client id: the persistent session still
    holds the old site's subscriptions. The hub unsubscribes them at its first such batch and
    acknowledges what came (left unacknowledged, they would fill the broker's in-flight window
    and stall the hub's own sites)."""
    broker = Mosquitto(tmp_path / "mosquitto")
    broker.start()
    a, b = site_file(tmp_path, "site-a"), site_file(tmp_path, "site-b")
    before = HubProcess(tmp_path / "before", broker, [a, b], client_id="beacon-hub-x")
    after = HubProcess(tmp_path / "after", broker, [a], client_id="beacon-hub-x")
    gateways_a, gateways_b = Gateways(broker, a), Gateways(broker, b, seed=2)
    try:
        before.start()
        assert before.stop() == 0  # a clean DISCONNECT keeps the session and its subscriptions
        after.start()
        for _ in range(3):
            gateways_b.send_round()
            gateways_a.send_round()
            time.sleep(0.5)
        gateways_a.settle()
        gateways_b.settle()
        wait_until("the old site left", lambda: "unsubscribed from site site-b's" in after.log())
        wait_until(
            "site-a's batches stored",
            lambda: after.sql("SELECT count(*) FROM batches")[0][0] >= len(gateways_a.published),
        )
        assert after.sql("SELECT count(DISTINCT site) FROM batches") == [(1,)]
        assert after.log().count("unsubscribed from site") == 1
        assert after.stop() == 0
    finally:
        gateways_a.close()
        gateways_b.close()
        before.close()
        after.close()
        broker.stop()
