"""The readings contract of DESIGN.md through a real Mosquitto, as gateway and hub use it."""

from __future__ import annotations

import queue
import threading
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from beacon_hub.errors import WireError
from beacon_hub.wire import (
    ReadingBatch,
    decode_batch,
    encode_batch,
    readings_subscription,
    readings_topic,
)
from tests.servers import Mosquitto

pytestmark = pytest.mark.integration

TIMEOUT_S = 10.0
"""Generous bound for a loopback round trip; a healthy broker answers in milliseconds."""


def _site() -> str:
    """A site id of its own, so messages of other tests on the shared broker never arrive here."""
    return f"site-{uuid.uuid4().hex[:8]}"


def _client(broker: Mosquitto, name: str) -> mqtt.Client:
    """A connected client with its network loop running; raises if CONNACK does not come."""
    client = mqtt.Client(
        CallbackAPIVersion.VERSION2,
        client_id=f"{name}-{uuid.uuid4().hex[:8]}",
        protocol=mqtt.MQTTv311,
    )
    connected = threading.Event()

    def on_connect(
        _client: mqtt.Client, _userdata: Any, _flags: Any, reason: Any, _properties: Any
    ) -> None:
        if not reason.is_failure:
            connected.set()

    client.on_connect = on_connect
    client.connect(broker.host, broker.port, keepalive=30)
    client.loop_start()
    if not connected.wait(TIMEOUT_S):
        client.loop_stop()
        client.disconnect()
        pytest.fail(f"no CONNACK from {broker.url} within {TIMEOUT_S} s:\n{broker.log_text()}")
    return client


@contextmanager
def _subscribed(broker: Mosquitto, topic_filter: str) -> Iterator[queue.Queue[mqtt.MQTTMessage]]:
    """Messages on `topic_filter`, available once the broker has acknowledged the subscription."""
    inbox: queue.Queue[mqtt.MQTTMessage] = queue.Queue()
    subscribed = threading.Event()
    client = _client(broker, "hub")

    def on_subscribe(
        _client: mqtt.Client, _userdata: Any, _mid: int, codes: list[Any], _properties: Any
    ) -> None:
        if not any(code.is_failure for code in codes):
            subscribed.set()

    client.on_message = lambda _client, _userdata, msg: inbox.put(msg)
    client.on_subscribe = on_subscribe
    try:
        client.subscribe(topic_filter, qos=1)
        assert subscribed.wait(TIMEOUT_S), f"no successful SUBACK for {topic_filter}"
        yield inbox
    finally:
        client.disconnect()
        client.loop_stop()


def _publish(broker: Mosquitto, topic: str, payload: bytes) -> None:
    """Publish at QoS 1 and return once the broker has acknowledged it (PUBACK)."""
    client = _client(broker, "gw")
    try:
        info = client.publish(topic, payload, qos=1)
        info.wait_for_publish(TIMEOUT_S)
        assert info.is_published(), f"no PUBACK for {topic}"
    finally:
        client.disconnect()
        client.loop_stop()


def _receive(inbox: queue.Queue[mqtt.MQTTMessage]) -> mqtt.MQTTMessage:
    try:
        return inbox.get(timeout=TIMEOUT_S)
    except queue.Empty:
        pytest.fail(f"nothing received within {TIMEOUT_S} s")


def _batch() -> ReadingBatch:
    """Three beacons of different kinds, interleaved samples, tx known for only some."""
    return ReadingBatch(
        gw="gw-entrance_1",
        boot="9f3a0c7e",
        seq=41,
        sent=1_700_000_000.125,
        beacons=(
            "ibeacon:e2c56db5-dffb-48d2-b060-d0f5a71096e0:1:2",
            "eddystone:edd1ebeac04e5defa017:0123456789ab",
            "mac:aa:bb:cc:dd:ee:ff",
        ),
        b=(0, 1, 0, 2, 1, 0),
        dt_ms=(950.0, 812.5, 600.0, 420.25, 100.0, 0.0),
        rssi=(-67.0, -81.5, -66.0, -90.0, -79.0, -70.5),
        tx=(-59.0, None, -59.0, None, -62.0, -59.0),
    )


def test_batch_arrives_exactly_as_sent(mosquitto: Mosquitto) -> None:
    site = _site()
    batch = _batch()
    with _subscribed(mosquitto, readings_subscription(site)) as inbox:
        _publish(mosquitto, readings_topic(site, batch.gw), encode_batch(batch))
        msg = _receive(inbox)
    assert msg.topic == readings_topic(site, batch.gw)
    assert msg.qos == 1
    assert decode_batch(bytes(msg.payload)) == batch


@pytest.mark.parametrize(
    "payload",
    [
        pytest.param(b'{"v":1,"gw":"gw-1","boot":"9f3a', id="truncated-json"),
        pytest.param(b"\xff\xfe\x00garbage", id="not-utf8"),
        pytest.param(b"", id="empty"),
        pytest.param(
            b'{"v":1,"gw":"gw-1","boot":"9f3a0c7e","seq":1,"sent":1.0,'
            b'"beacons":["mac:aa:bb:cc:dd:ee:ff"],"b":[3],"dt_ms":[0],"rssi":[-70]}',
            id="index-out-of-range",
        ),
        pytest.param(b'{"v":2,"gw":"gw-1"}', id="future-version"),
    ],
)
def test_malformed_payload_is_refused_with_wire_error(mosquitto: Mosquitto, payload: bytes) -> None:
    site = _site()
    with _subscribed(mosquitto, readings_subscription(site)) as inbox:
        _publish(mosquitto, readings_topic(site, "gw-1"), payload)
        msg = _receive(inbox)
    assert msg.payload == payload
    with pytest.raises(WireError):
        decode_batch(bytes(msg.payload))
