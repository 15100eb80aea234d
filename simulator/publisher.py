"""Publish simulated gateway batches to an MQTT broker, as gateways do (DESIGN.md contracts).

Topics, payloads, QoS and retain flags are the gateway's: `readings` QoS 1 with the columnar
batch, `status` retained online at start and offline at the end. All simulated gateways share
one MQTT 3.1.1 connection (a real gateway has its own; the broker and hub cannot tell, except
that a single last will cannot speak for thirty gateways, so none is set).

The gateway package's own Publisher is asyncio and per-gateway, and its Batcher takes one
reading per call; the simulator builds its batches vectorised and hands the encoded bytes here.
"""

from __future__ import annotations

import threading
import time
import urllib.parse
import uuid
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from beacon_hub.errors import BeaconHubError
from beacon_hub.wire import GatewayStatus, encode_batch, encode_status, readings_topic, status_topic
from simulator.scenario import Simulation, Window

__all__ = ["CONNECT_TIMEOUT_S", "MqttPublisher", "parse_broker_url"]

CONNECT_TIMEOUT_S = 10.0
"""How long to wait for CONNACK before giving up with a message naming the broker."""
DRAIN_TIMEOUT_S = 60.0
"""At the end, how long to wait for the broker to acknowledge every QoS 1 batch."""
MAX_INFLIGHT = 100
"""QoS 1 messages in flight at once: paho's default of 20 throttles --speed max on loopback."""


def parse_broker_url(url: str) -> tuple[str, int]:
    """`mqtt://host[:port]` -> (host, port); port 1883 by default."""
    parts = urllib.parse.urlsplit(url)
    if parts.scheme not in ("mqtt", "tcp") or not parts.hostname:
        raise BeaconHubError(f"--broker {url!r}: expected mqtt://host[:port]")
    try:
        port = parts.port or 1883
    except ValueError:
        raise BeaconHubError(f"--broker {url!r}: the port is not a number") from None
    return parts.hostname, port


class MqttPublisher:
    """A sink that publishes each window's batches; `close()` waits until all are acknowledged."""

    def __init__(self, url: str, sim: Simulation) -> None:
        host, port = parse_broker_url(url)
        self._site = sim.site.id
        self._sim = sim
        self._client = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=f"beacon-sim-{uuid.uuid4().hex[:8]}",
            protocol=mqtt.MQTTv311,
        )
        self._client.max_inflight_messages_set(MAX_INFLIGHT)
        self._client.max_queued_messages_set(0)
        self._connected = threading.Event()
        connected, failures = self._connected, []

        # Not a bound method: client -> callback -> self -> client would be a cycle, and paho's
        # wake-up sockets, closed only when the client is freed, would wait for the cycle
        # collector and may warn as unclosed (an error under the tests' filterwarnings).
        def on_connect(_c: mqtt.Client, _u: Any, _f: Any, reason: Any, _p: Any) -> None:
            if reason.is_failure:
                failures.append(str(reason))
            connected.set()

        self._client.on_connect = on_connect
        self._pending: list[mqtt.MQTTMessageInfo] = []
        self.published = 0
        try:
            self._client.connect(host, port, keepalive=30)
        except OSError as e:
            raise BeaconHubError(f"--broker {url}: cannot connect: {e.strerror or e}") from e
        self._client.loop_start()
        if not self._connected.wait(CONNECT_TIMEOUT_S) or failures:
            self._client.loop_stop()
            raise BeaconHubError(
                f"--broker {url}: no CONNACK within {CONNECT_TIMEOUT_S:g} s"
                + (f" ({failures[0]})" if failures else "")
            )
        for g, gw in enumerate(sim.gateway_ids):
            self._status(gw, "online", sim.boots[g], sim.options.start_s)

    def _status(self, gw: str, state: str, boot: str, t: float) -> None:
        payload = encode_status(
            GatewayStatus(gw=gw, state=state, t=t, boot=boot, version="beacon-sim")  # type: ignore[arg-type]
        )
        self._pending.append(
            self._client.publish(status_topic(self._site, gw), payload, qos=1, retain=True)
        )

    def write(self, sim: Simulation, window: Window) -> None:  # noqa: ARG002  # Sink protocol
        for batch in window.batches:
            info = self._client.publish(
                readings_topic(self._site, batch.gw), encode_batch(batch), qos=1
            )
            self._pending.append(info)
            self.published += 1
        # forget what the broker has acknowledged, so a long run holds no history
        if len(self._pending) > 4 * MAX_INFLIGHT:
            self._pending = [i for i in self._pending if not i.is_published()]

    def close(self) -> None:
        sim = self._sim
        end = sim.options.start_s + sim.options.duration_s
        for g, gw in enumerate(sim.gateway_ids):
            self._status(gw, "offline", sim.boots[g], end)
        deadline = time.monotonic() + DRAIN_TIMEOUT_S
        try:
            for info in self._pending:
                info.wait_for_publish(max(0.0, deadline - time.monotonic()))
            if not all(i.is_published() for i in self._pending):
                raise BeaconHubError(
                    f"the broker did not acknowledge every batch within {DRAIN_TIMEOUT_S:g} s"
                )
        finally:
            self._client.disconnect()
            self._client.loop_stop()
