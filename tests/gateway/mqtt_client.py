"""A test subscriber on a real Mosquitto: collects messages, lets a test await a condition."""

from __future__ import annotations

import threading
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from tests.servers import Mosquitto

TIMEOUT_S = 20.0
"""Fail-safe for awaited conditions; none of them is a performance threshold."""


@dataclass(frozen=True)
class Received:
    topic: str
    payload: bytes
    retain: bool


class Subscriber:
    """Subscribes at QoS 1. With `persistent`, the session survives a broker restart (the broker
    queues messages for it while it reconnects)."""

    def __init__(self, broker: Mosquitto, topic_filter: str, *, persistent: bool = False) -> None:
        self.messages: list[Received] = []
        self._cond = threading.Condition()
        self._subscribed = threading.Event()
        self.client = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=f"test-sub-{uuid.uuid4().hex[:8]}",
            protocol=mqtt.MQTTv311,
            clean_session=not persistent,
        )
        self.client.reconnect_delay_set(1, 1)
        self.topic_filter = topic_filter
        # The callbacks close over what they use, not `self` (it holds the client) and not the
        # client (they get it as an argument): a cycle back to the client would leave paho's
        # wake-up socket pair, closed in its __del__, to the cycle collector, which may let the
        # sockets warn as unclosed (with filterwarnings = error: tests pass, exit 1).
        messages, cond, subscribed = self.messages, self._cond, self._subscribed

        def on_connect(c: mqtt.Client, _u: Any, _f: Any, reason: Any, _p: Any) -> None:
            if not reason.is_failure:
                c.subscribe(topic_filter, qos=1)

        def on_subscribe(_c: mqtt.Client, _u: Any, _m: int, _codes: Any, _p: Any) -> None:
            subscribed.set()

        def on_message(_c: mqtt.Client, _u: Any, msg: mqtt.MQTTMessage) -> None:
            with cond:
                messages.append(Received(msg.topic, bytes(msg.payload), bool(msg.retain)))
                cond.notify_all()

        self.client.on_connect = on_connect
        self.client.on_subscribe = on_subscribe
        self.client.on_message = on_message
        self.client.connect(broker.host, broker.port, keepalive=30)
        self.client.loop_start()
        if not self._subscribed.wait(TIMEOUT_S):
            self.close()
            pytest.fail(f"no SUBACK from {broker.url}")

    def wait_for(self, predicate: Callable[[list[Received]], bool], what: str) -> list[Received]:
        """Block until `predicate(messages)` holds; fail the test after TIMEOUT_S."""
        with self._cond:
            if not self._cond.wait_for(lambda: predicate(self.messages), TIMEOUT_S):
                pytest.fail(f"gave up waiting for {what}; got {len(self.messages)} messages")
            return list(self.messages)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()
