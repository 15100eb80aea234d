"""Gateway status and heartbeat through a real Mosquitto into `beacon-hub run`: a retained
status is read at start, a heartbeat makes a gateway online, and both a clean shutdown (status
`offline` published, then DISCONNECT) and a last will (the gateway process killed) show in
/api/sites/{site}/gateways as offline at once. `http.gateway_offline_after_s` is an hour here,
so nothing but the status can make these gateways offline within the test."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import time
import urllib.request
import uuid
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
import yaml
from paho.mqtt.enums import CallbackAPIVersion

from beacon_hub.wire import (
    GatewayStatus,
    Heartbeat,
    encode_heartbeat,
    encode_status,
    heartbeat_topic,
    status_topic,
)
from tests.integration.hubkit import ROOT, HubProcess, site_file, unique_site, wait_until
from tests.servers import Mosquitto

pytestmark = pytest.mark.integration

_HTTP = urllib.request.build_opener(urllib.request.ProxyHandler({}))
BOOT = "a1b2c3d4e5f60718"


def gateways(hub: HubProcess, site: str) -> dict[str, dict[str, Any]]:
    url = f"http://127.0.0.1:{hub.http_port}/api/sites/{site}/gateways"
    with _HTTP.open(url, timeout=5) as r:
        body = json.loads(r.read())
    return {g["id"]: g for g in body["gateways"]}


def status(gw: str, state: str) -> bytes:
    return encode_status(GatewayStatus(gw, state, time.time(), BOOT, "9.9.9"))  # type: ignore[arg-type]


def heartbeat(gw: str, seen: int) -> bytes:
    return encode_heartbeat(
        Heartbeat(gw, BOOT, time.time(), 12.0, seen, seen - 2, 2, 5, 0, 40.0, "9.9.9")
    )


class Gateway:
    """One gateway's MQTT client in this process: its will is `offline`, as the real one's."""

    def __init__(self, broker: Mosquitto, site: str, gw: str) -> None:
        self.site, self.gw = site, gw
        self.client = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=f"gw-{uuid.uuid4().hex[:8]}",
            protocol=mqtt.MQTTv311,
            clean_session=True,
        )
        self.client.will_set(status_topic(site, gw), status(gw, "offline"), qos=1, retain=True)
        self.client.connect(broker.host, broker.port, keepalive=30)
        self.client.loop_start()

    def publish(self, topic: str, payload: bytes, qos: int, retain: bool = False) -> None:
        info = self.client.publish(topic, payload, qos=qos, retain=retain)
        info.wait_for_publish(30)

    def online(self, seen: int) -> None:
        self.publish(status_topic(self.site, self.gw), status(self.gw, "online"), 1, retain=True)
        self.publish(heartbeat_topic(self.site, self.gw), heartbeat(self.gw, seen), 0)

    def shut_down_cleanly(self) -> None:
        """What gateway/publisher.py does on SIGTERM: status offline, then DISCONNECT."""
        self.publish(status_topic(self.site, self.gw), status(self.gw, "offline"), 1, retain=True)
        self.client.disconnect()
        self.client.loop_stop()


KILLED_GATEWAY = textwrap.dedent(
    """
    import sys, time
    import paho.mqtt.client as mqtt
    from paho.mqtt.enums import CallbackAPIVersion
    host, port, status_topic, hb_topic, offline, online, hb = sys.argv[1:8]
    c = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv311, clean_session=True)
    c.will_set(status_topic, offline.encode(), qos=1, retain=True)
    c.connect(host, int(port), keepalive=30)
    c.loop_start()
    c.publish(status_topic, online.encode(), qos=1, retain=True).wait_for_publish(30)
    c.publish(hb_topic, hb.encode(), qos=0).wait_for_publish(30)
    print("up", flush=True)
    time.sleep(600)
    """
)


def test_status_heartbeat_clean_offline_and_last_will(mosquitto: Mosquitto, tmp_path: Path) -> None:
    site = unique_site()
    path = site_file(tmp_path, site)
    gw_a, gw_b, gw_c = (g["id"] for g in yaml.safe_load(path.read_text())["gateways"][:3])
    a = Gateway(mosquitto, site, gw_a)
    killed: subprocess.Popen[str] | None = None
    hub = HubProcess(
        tmp_path / "hub", mosquitto, [path], extra={"http.gateway_offline_after_s": 3600}
    )
    try:
        # Retained before the hub starts: the hub reads it when it subscribes.
        a.publish(status_topic(site, gw_a), status(gw_a, "online"), 1, retain=True)
        hub.start()
        wait_until(
            "the retained status read at start",
            lambda: gateways(hub, site)[gw_a]["status"] == "online",
            hub=hub,
        )
        g = gateways(hub, site)[gw_a]
        # Its word alone is not enough: nothing of it has arrived yet.
        assert (g["state"], g["offline_reason"]) == ("offline", "never_heard")

        a.online(seen=500)
        wait_until(
            "gateway A online from its heartbeat",
            lambda: gateways(hub, site)[gw_a]["state"] == "online",
            hub=hub,
        )
        g = gateways(hub, site)[gw_a]
        assert g["last_batch"] is None
        assert g["last_heartbeat"] is not None
        assert g["heartbeat"]["adverts_seen"] == 500
        assert (g["heartbeat"]["queue_depth"], g["version"], g["boot"]) == (5, "9.9.9", BOOT)
        assert hub.metric_sum("beacon_hub_gateway_online", site=site, gateway=gw_a) == 1.0
        assert (
            hub.metric_sum("beacon_hub_gateway_reported", gateway=gw_a, counter="adverts_seen")
            == 500.0
        )

        # A clean shutdown: status offline, then DISCONNECT (no will).
        a.shut_down_cleanly()
        wait_until(
            "gateway A offline by its status",
            lambda: gateways(hub, site)[gw_a]["offline_reason"] == "status",
            hub=hub,
        )
        assert gateways(hub, site)[gw_a]["state"] == "offline"

        # A gateway process killed: the broker publishes its last will.
        killed = subprocess.Popen(
            [
                sys.executable,
                "-c",
                KILLED_GATEWAY,
                mosquitto.host,
                str(mosquitto.port),
                status_topic(site, gw_b),
                heartbeat_topic(site, gw_b),
                status(gw_b, "offline").decode(),
                status(gw_b, "online").decode(),
                heartbeat(gw_b, 900).decode(),
            ],
            stdout=subprocess.PIPE,
            text=True,
            cwd=ROOT,
        )
        assert killed.stdout is not None
        assert killed.stdout.readline().strip() == "up"
        wait_until(
            "gateway B online",
            lambda: gateways(hub, site)[gw_b]["state"] == "online",
            hub=hub,
        )
        killed.kill()  # SIGKILL: the socket closes without DISCONNECT
        killed.wait(30)
        wait_until(
            "gateway B offline by its last will",
            lambda: gateways(hub, site)[gw_b]["offline_reason"] == "status",
            hub=hub,
        )

        # A garbled status is counted, the hub goes on.
        b = Gateway(mosquitto, site, gw_c)
        b.publish(status_topic(site, gw_c), b"{not json", 1, retain=False)
        wait_until(
            "the garbled status counted",
            lambda: (
                hub.metric_sum(
                    "beacon_hub_rejected_batches_total", site=site, gateway=gw_c, reason="not_json"
                )
                == 1.0
            ),
            hub=hub,
        )
        b.online(seen=10)
        wait_until(
            "gateway C online after its garbled status",
            lambda: gateways(hub, site)[gw_c]["state"] == "online",
            hub=hub,
        )
        b.shut_down_cleanly()
        assert hub.stop() == 0
    finally:
        if killed is not None:
            if killed.poll() is None:
                killed.kill()
                killed.wait()
            if killed.stdout is not None:
                killed.stdout.close()
        hub.close()
