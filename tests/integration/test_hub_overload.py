"""The inbox overload policy against a real Mosquitto (docs/hub.md, Overload policy): a full
inbox drops messages unacknowledged and counts them, and the broker sends exactly those again
when the persistent session reconnects."""

from __future__ import annotations

import queue
import time
import uuid
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from beacon_hub.health import Metrics
from beacon_hub.hubconfig import BrokerConfig, IngestConfig
from beacon_hub.ingest import Inbound, MqttLink
from beacon_hub.wire import readings_topic
from tests.integration.hubkit import WAIT_S, shipped_broker, unique_site, wait_until

pytestmark = pytest.mark.integration

RESTART_PAUSE_S = 1.0
"""Between the hub's clean stop and its restart: time for the broker to read the first one out."""


def test_a_full_inbox_drops_unacknowledged_and_the_broker_sends_them_again(
    tmp_path: Path,
) -> None:
    broker = shipped_broker(tmp_path / "mq")
    broker.start()
    site = unique_site()
    client_id = f"hub-{uuid.uuid4().hex[:8]}"
    cfg = BrokerConfig(url=broker.url)

    def link(queue_messages: int, metrics: Metrics) -> MqttLink:
        ingest = IngestConfig(queue_messages=queue_messages, overload_wait_s=0)
        out = MqttLink(cfg, ingest, client_id=client_id, site_ids=[site], metrics=metrics)
        out.start()
        assert out.connected.wait(WAIT_S)
        return out

    pub = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"p-{uuid.uuid4().hex[:6]}")
    pub.connect(broker.host, broker.port)
    pub.loop_start()
    try:
        metrics = Metrics()
        first = link(10, metrics)  # nobody drains it: the inbox is full after 10
        infos = [
            pub.publish(readings_topic(site, "gw-1"), str(i).encode(), qos=1) for i in range(50)
        ]
        for info in infos:
            info.wait_for_publish(WAIT_S)
        wait_until("40 drops counted", lambda: metrics.inbox_dropped._value.get() == 40)
        kept: list[Inbound] = [first.inbox.get_nowait() for _ in range(10)]
        for item in kept:
            first.ack(item.mid, item.qos)
        first.stop()  # a clean disconnect keeps the session and its unacknowledged messages
        # Mosquitto may read the second CONNECT (a session takeover) before the rest of the
        # first connection's bytes, and drop those: its last PUBACKs, whose messages it then
        # sends again (seen once in CI under load: 7 of the 10 kept came back). A hub restarts
        # in seconds, not in the microseconds between these two lines.
        time.sleep(RESTART_PAUSE_S)

        second = link(100, Metrics())
        again: list[bytes] = []
        try:
            wait_until("the dropped messages again", lambda: _drain(second, again) >= 40)
            assert sorted(again, key=int) == sorted(
                {str(i).encode() for i in range(50)} - {k.payload for k in kept}, key=int
            )
        finally:
            second.stop()
    finally:
        pub.loop_stop()
        pub.disconnect()
        broker.stop()


def _drain(link: MqttLink, into: list[bytes]) -> int:
    while True:
        try:
            item = link.inbox.get_nowait()
        except queue.Empty:
            return len(into)
        link.ack(item.mid, item.qos)
        into.append(item.payload)
