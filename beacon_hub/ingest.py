"""MQTT in: paho-mqtt v2 subscriber, the thread boundary, decode + validate, per-gateway sequence
and clock bookkeeping, bad-input accounting.

Threads. paho runs its network loop on its own thread (`loop_start`) and calls `_on_message`
there. That callback is THE one place where paho's thread hands anything to the service: it puts
`(arrival time, topic, payload, mid, session)` into `MqttLink.inbox`, a bounded `queue.Queue`,
and does nothing else. Everything after that (decoding, engine, outputs, stores,
acknowledgements) runs on the service thread. Calls the other way (`publish`, `ack`) are
thread-safe by paho's design; `ack` also runs on the SQLite writer's thread (broker.ack =
after_store). The service thread owns the link's life: `start`, `stop`, and `resume_if_dropped`
(below), which stops and restarts paho's thread as `stop` and `start` do and closes the stopped
thread's wake-up socket pair itself (paho leaves it to the garbage collector, paho issue 627);
`publish` and `ack` write to that pair, so they wait while it is swapped. What paho's thread
tells the service besides the inbox is state it alone writes and the service only reads:
`connected`, `shared`, the drops owed.

Overload policy. When the inbox is full, paho's thread blocks for up to
`ingest.overload_wait_s`: it stops reading the socket, so TCP pushes back on the broker, which
keeps queueing for our persistent session. Past that wait the message is dropped *unacknowledged*
(counted in `beacon_hub_inbox_dropped_total`, warned at most once a minute); the broker sends it
again on the next connect of this session (MQTT 3.1.1, 4.4), and only then: until that connect
it holds a slot of the broker's in-flight window (Mosquitto's `max_inflight_messages`). Once the
service finds the inbox empty (the overload is over) while such drops are owed, it reconnects
the session (`resume_if_dropped`, counted in `beacon_hub_session_resumes_total`): without that,
drops that fill the window stop the broker sending the hub any QoS 1 message until a restart
(docs/hub.md).

Acknowledgements and connections. A message's mid is the broker's packet identifier on the
connection it came on. Each connect and each loss starts a new `session` number, every Inbound
carries the one it came in, and `ack` sends nothing for an earlier one: the broker sends that
message again on the new connection (the ack never reached it), where its duplicate is
acknowledged. Sent on the new connection, the old mid could acknowledge another message (a
broker that lost the session numbers its messages from the start again, one that restored an
older copy from where that left off; tests/integration/test_hub_overload.py), and paho writes an
ack queued while it reconnects on the new connection, even before its CONNECT.

Acknowledgement. The client runs with `manual_ack=True`; the service acknowledges a readings
message only after it has been processed (broker.ack in docs/hub.md), so a hub killed with
SIGKILL gets every unacknowledged message again from the broker on restart. A stop (and a
resume) disconnects only once the broker has read every acknowledgement sent before the
DISCONNECT: paho's thread waits for the broker to close the connection (_on_socket_close, at
most CLOSE_WAIT_S), so a hub stopped right after a tick gets none of its messages again.

Gateway status and heartbeat. The link also subscribes to each site's
`beacons/{site}/gateway/+/status` (retained, QoS 1; the gateway's last will says `offline`) and
`.../heartbeat` (QoS 0). They cross into the service through the same inbox, decode with the wire
decoders into `StatusUpdate` / `HeartbeatUpdate` (bad ones are counted per reason like readings)
and are acknowledged at once: they are state for the live view (livestate.py), not data to store.

Sequence and clock (DESIGN.md). Each gateway stamps (boot, seq): a seq above the expected one
counts the gap as lost batches, one below it is a duplicate and is dropped (unless it fills a
known gap, or is older than the boot's first batch heard: one an overload dropped comes again
after the next ones, GatewayState.first_seq). The gaps and the first seq heard are saved with
the rest of the state (SeqGaps), so what the hub never took is not a duplicate after a restart
either. The gateway's clock offset is the minimum of (arrival - sent) over its batches of one
boot, allowed to creep upwards by the worst crystal drift so a slow clock is followed. A clock
stepped forward (batches in the `future`) or back (send time going back, then behind) is
relearnt after a few batches in a row (FUTURE_RESYNC_BATCHES, PAST_RESYNC_BATCHES); the last
send time is saved with the rest of the state, so a step made while the hub was down is seen
too.
"""

from __future__ import annotations

import logging
import math
import queue
import select
import socket
import ssl
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Final

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode

from beacon_hub.broker_settings import RefusalLog, connect_failure, paho_logger
from beacon_hub.consent import Consent, consent_subscription, decode_consent, parse_consent_topic
from beacon_hub.engine import Readings
from beacon_hub.errors import WireError
from beacon_hub.health import UNKNOWN_GATEWAY, Metrics
from beacon_hub.hubconfig import BrokerConfig, IngestConfig
from beacon_hub.wire import (
    GatewayStatus,
    Heartbeat,
    ReadingBatch,
    decode_batch,
    decode_heartbeat,
    decode_status,
    parse_topic,
    readings_subscription,
)

__all__ = [
    "DECODE_REASONS",
    "HEARTBEAT_COUNTERS",
    "MAX_GAP_MEMORY",
    "MAX_SEQ_JUMP",
    "OFFSET_CREEP_S_PER_S",
    "RESUME_MIN_INTERVAL_S",
    "RETIRED_BOOTS",
    "Accepted",
    "ConsentUpdate",
    "GatewayState",
    "GatewayUpdate",
    "HeartbeatUpdate",
    "Inbound",
    "Ingestor",
    "MqttLink",
    "RateLimitedLog",
    "Rejected",
    "SeqGaps",
    "StatusUpdate",
    "decode_reason",
    "gateway_subscriptions",
]

log = logging.getLogger(__name__)
_PAHO_LOG: Final = paho_logger("beacon_hub.paho")

OFFSET_CREEP_S_PER_S = 1e-4
"""How fast the learnt clock offset may rise: 100 ppm, twice the +-50 ppm tolerance of the
crystals on Pi-class boards, so a gateway whose clock runs slow is still followed."""
FUTURE_RESYNC_BATCHES = 5
"""Consecutive batches running ahead of the learnt offset after which the offset is relearnt:
a gateway whose clock was stepped forward (NTP) is refused for a few seconds, not forever."""
PAST_RESYNC_BATCHES = FUTURE_RESYNC_BATCHES
"""The other direction: consecutive batches of one boot, in seq order, whose send time went
back (the first of them sent earlier than its predecessor) and which all arrive more than
ingest.future_tolerance_s behind the learnt offset, after which the offset is relearnt. A
gateway stepped back by NTP otherwise had its readings placed that far in the past and refused
as late until the 100 ppm creep caught up (two hours: 2.3 years). The send time going back is
what tells a step from a delay: a broker outage's or a restart's backlog arrives late too, but
its send times keep rising with seq."""
MAX_GAP_MEMORY = 1024
"""Missing seqs remembered per gateway so a late (reordered) batch fills its gap, not counted
as a duplicate; older gaps are forgotten (they stay counted as lost)."""
RETIRED_BOOTS = 16
"""Earlier boots remembered per gateway: a Pi restarted every few minutes for an hour by a
flapping power supply is still told apart from a replay of its first boot."""
MAX_SEQ_JUMP = 86_400
"""A seq this far beyond the expected one (a day of 1 s batches) is refused as `seq_jump` unless
FUTURE_RESYNC_BATCHES in a row agree: a gateway's buffer drops batches, it does not skip a day
of numbers, but a forged or corrupt seq would otherwise turn every later batch into a
duplicate."""
OUTPUT_QUEUE_MESSAGES: Final = 20_000
"""paho's queue for what the hub publishes (events QoS 1 while disconnected): bounded, the
excess is refused by paho and counted by the outputs."""
OUTPUT_INFLIGHT: Final = 100
"""QoS 1 events in flight to the broker at a time (paho's default of 20 throttles bursts)."""

HEARTBEAT_COUNTERS = (
    "uptime_s",
    "adverts_seen",
    "adverts_published",
    "adverts_dropped",
    "queue_depth",
    "scanner_restarts",
)
"""Heartbeat fields exported as `beacon_hub_gateway_reported{counter=...}` (a fixed set: the
label cannot grow)."""

DECODE_REASONS = (
    "oversized",
    "not_utf8",
    "not_json",
    "too_deep",
    "not_object",
    "bad_version",
    "bad_field",
)


def decode_reason(error: WireError) -> str:
    """A short, bounded label for why a payload did not decode (for metrics)."""
    text = str(error)
    for needle, reason in (
        ("exceeds", "oversized"),
        ("not UTF-8", "not_utf8"),
        ("not valid JSON", "not_json"),
        ("nested too deeply", "too_deep"),
        ("must be a JSON object", "not_object"),
        ("unsupported version", "bad_version"),
    ):
        if needle in text:
            return reason
    return "bad_field"


def gateway_subscriptions(site: str) -> list[str]:
    """The filters a hub subscribes to for one site's gateway status and heartbeats."""
    base = readings_subscription(site).removesuffix("/readings")  # validates the site id
    return [f"{base}/status", f"{base}/heartbeat"]


@dataclass(frozen=True, slots=True)
class Inbound:
    """One message as paho's thread hands it over."""

    arrival: float
    topic: str
    payload: bytes
    mid: int
    qos: int
    session: int = 0
    """The connection it came on (MqttLink, module docstring): its mid names it only there."""


class RateLimitedLog:
    """Warn at most once per key and interval, saying how many were suppressed."""

    def __init__(
        self,
        interval_s: float,
        clock: Callable[[], float] = time.monotonic,
        logger: logging.Logger = log,
    ) -> None:
        self.interval_s = interval_s
        self._clock = clock
        self._logger = logger
        self._last: dict[tuple[str, ...], float] = {}
        self._suppressed: dict[tuple[str, ...], int] = {}

    def warning(
        self, key: tuple[str, ...], message: str, *args: object, exc_info: bool = False
    ) -> None:
        now = self._clock()
        last = self._last.get(key)
        if last is not None and now - last < self.interval_s:
            self._suppressed[key] = self._suppressed.get(key, 0) + 1
            return
        self._last[key] = now
        skipped = self._suppressed.pop(key, 0)
        if skipped:
            message += " (%d more like it suppressed)"
            args = (*args, skipped)
        self._logger.warning(message, *args, exc_info=exc_info)


STOP_POLL_S = 0.1
"""How often paho's thread, waiting for room in the inbox, looks whether the hub is stopping."""
SHORT_SESSION_S: Final = 10.0
"""A connection the broker closes this soon after it was made is short. A broker closes a
client's connection when another connects with the same client id (MQTT 3.1.1, 3.1.4-2); two
hubs given one id took turns every 1-2 s (Mosquitto 2.0: 15 takeovers in 20 s), each losing
the broker's queue of the other's sites."""
SHORT_SESSIONS_SAID: Final = 3
"""Short connections in a row after which the hub says so (one could be a broker restart)."""
RESUME_MIN_INTERVAL_S: Final = 1.0
"""A session resume (MqttLink.resume_if_dropped) waits this long after the last one. Each
resume makes the broker send again every message not yet acknowledged (Mosquitto 2.0 sends the
session's whole queue at once) and, as the subscriptions are renewed, every retained gateway
status and consent decision. Unlimited, an overload oscillating faster than that reconnected at
every drained inbox: bursts every 0.1 s into a 10-message inbox with ingest.overload_wait_s = 0
made 20 resumes a second (2.9 ms of the service thread each, a connect and a disconnect in the
broker's log each), the re-sent copies overfilling the inbox again (2,328 dropped for 3,022
delivered in 10 s). The cost of waiting: what the drops hold back (with the broker's in-flight
window full of them, everything) comes up to this much later, less than engine.max_lateness_s
(2 s); and after an overload each resume lets in about an inbox of the queue, so recovery runs
at about ingest.queue_messages a second (the default 2,000: 33 s of the 60-gateway example
warehouse's batches a second; the test's 10-message inbox took ~15 s for 300 messages, ~2 s
unlimited). With the default overload_wait_s (5 s: a drop needs that long of a full inbox)
resumes come further apart than this anyway."""
CLOSE_WAIT_S: Final = 2.0
"""After the DISCONNECT of a stop or a resume, how long the link waits for the broker to close
the connection before it closes it anyway (MqttLink._on_socket_close). The broker reads what we
sent in order and closes once it reads the DISCONNECT: on loopback within milliseconds, a
remote one within a round trip and a busy broker's backlog. Past this the stop goes on, as
before the wait, and says so (the broker may then send the last acknowledged messages again)."""
_DRAIN_BYTES: Final = 65_536


class MqttLink:
    """The hub's one MQTT connection: subscribes to the sites' readings, hands messages over,
    acknowledges, publishes outputs. See the module docstring for threads and policy."""

    def __init__(
        self,
        broker: BrokerConfig,
        ingest: IngestConfig,
        *,
        client_id: str,
        site_ids: Iterable[str],
        metrics: Metrics,
    ) -> None:
        self.broker = broker
        self.client_id = client_id
        sites = list(site_ids)
        # Consent and gateway status topics are retained: subscribing delivers the current
        # decision per beacon and the current state per gateway. The retained ones come after
        # the session's queue, not before it; QoS 1 (_on_connect) is what queues a decision
        # made while we are away in order with the readings around it (consent.py).
        self.subscriptions = [readings_subscription(s) for s in sites] + [
            consent_subscription(s) for s in sites
        ]
        self.subscriptions += [f for s in sites for f in gateway_subscriptions(s)]
        self.metrics = metrics
        self.inbox: queue.Queue[Inbound] = queue.Queue(maxsize=ingest.queue_messages)
        self._overload_wait_s = ingest.overload_wait_s
        self._overload_log = RateLimitedLog(60.0)
        self._resume_log = RateLimitedLog(60.0)
        self.connected = threading.Event()
        self.session_present = False
        self._client: mqtt.Client | None = None
        self._closing = False
        """A stop or a resume is closing the connection on purpose."""
        self._session = 0
        """The connection's number (Inbound.session): paho's thread starts a new one at each
        connect and each loss, under `_ack_lock`, so no ack of an earlier one slips through."""
        self._ack_lock = threading.Lock()
        self._wake_lock = threading.Lock()
        """Held by `publish` and while a resume swaps paho's wake-up socket pair (_restart_loop):
        paho writes a byte to it from the publishing thread, which must not find it closed."""
        self._dropped_owed = 0
        """QoS 1/2 messages dropped unacknowledged since the connect: each holds a slot of the
        broker's in-flight window until the next one. Paho's thread writes it."""
        self._last_resume = -math.inf
        """time.monotonic() of the last resume (RESUME_MIN_INTERVAL_S); the service thread's."""
        self._resuming = False
        """A resume's reconnect is under way: set by the service thread, cleared by paho's once
        the connection is up again (`connected` set first) or has failed (`up`)."""
        self._refusals = RefusalLog(log)
        self._connected_since = 0.0
        self._short_sessions = 0
        self._takeover_log = RateLimitedLog(60.0)
        self._left: set[str] = set()
        """Sites whose subscriptions this link left (`leave`), since its last connect."""

    def start(self) -> None:
        """Connect in the background; paho reconnects by itself with backoff."""
        client = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=self.client_id,
            protocol=mqtt.MQTTv311,
            clean_session=False,
            manual_ack=True,
        )
        client.enable_logger(_PAHO_LOG)
        self.broker.secure(client)
        client.reconnect_delay_set(self.broker.reconnect_min_s, self.broker.reconnect_max_s)
        client.max_inflight_messages_set(OUTPUT_INFLIGHT)
        client.max_queued_messages_set(OUTPUT_QUEUE_MESSAGES)
        client.on_connect = self._on_connect
        client.on_connect_fail = self._on_connect_fail
        client.on_disconnect = self._on_disconnect
        client.on_message = self._on_message
        client.on_subscribe = self._on_subscribe
        client.on_socket_close = self._on_socket_close
        self._client = client
        log.info(
            "connecting to %s:%d as %s (persistent session)",
            self.broker.host,
            self.broker.port,
            self.client_id,
        )
        self._connect(client)

    def _connect(self, client: mqtt.Client) -> None:
        client.connect_async(self.broker.host, self.broker.port, keepalive=self.broker.keepalive_s)
        client.loop_start()

    def stop(self) -> None:
        client = self._client
        if client is None:
            return
        self._closing = True
        # A clean DISCONNECT keeps the persistent session (clean_session=False): the broker goes
        # on queueing readings for us until we are back. paho writes it after everything queued
        # before it (the acknowledgements of the ticks the SQLite writer stored), and its thread
        # then waits for the broker to close the connection (_on_socket_close), so the broker
        # has read them all when loop_stop returns.
        client.disconnect()
        client.loop_stop()
        self._resuming = False
        with self._wake_lock, self._ack_lock:
            # Its wake-up socket pair closed now, not when the cycle collector finds the client
            # (its callbacks are our bound methods): paho issue 627.
            client._reset_sockets(sockpair_only=True)
            self._client = None
        self.connected.clear()
        self.metrics.broker_connected.set(0)

    # -- paho's network thread

    def _on_message(self, _c: mqtt.Client, _u: Any, msg: mqtt.MQTTMessage) -> None:
        """paho's thread: hand the bytes over, never touch service state (module docstring)."""
        item = Inbound(time.time(), msg.topic, bytes(msg.payload), msg.mid, msg.qos, self._session)
        deadline = time.monotonic() + self._overload_wait_s
        while not self._closing:
            # In slices: a stop must not wait out overload_wait_s per message paho still
            # reads before it writes the DISCONNECT (20 outstanding outputs made it 94 s,
            # past systemd's stop timeout, and the stores were never flushed).
            try:
                self.inbox.put(
                    item, timeout=max(0.0, min(STOP_POLL_S, deadline - time.monotonic()))
                )
            except queue.Full:
                if time.monotonic() < deadline:
                    continue
                # Policy: dropped unacknowledged, counted; the broker re-sends on the next connect.
                self.metrics.inbox_dropped.inc()
                if msg.qos > 0:
                    self._dropped_owed += 1
                self._overload_log.warning(
                    ("overload",),
                    "inbox full for %.1f s: dropped a message unacknowledged",
                    self._overload_wait_s,
                )
            return
        # Stopping or resuming: left unacknowledged, so the broker sends it on the next connect.

    def _on_connect(
        self, client: mqtt.Client, _u: Any, flags: Any, reason: Any, _props: Any
    ) -> None:
        if reason.is_failure:
            self._resuming = False  # an outage now, not a resume
            self._refusals.error(
                str(reason), "broker %s refused the connection: %s", self.broker.host
            )
            return
        self._refusals.clear()
        with self._ack_lock:
            self._session += 1
        # The broker sends what was dropped again now (or lost it with the session).
        self._dropped_owed = 0
        self.session_present = bool(getattr(flags, "session_present", False))
        # Subscribing again is harmless with a persistent session and covers a broker that
        # lost it (SIGKILL before its autosave). Connected counts from the SUBACK.
        client.subscribe([(topic, 1) for topic in self.subscriptions])
        self.metrics.broker_connects.inc()
        log.info(
            "connected (session present: %s); subscribing %s",
            self.session_present,
            ", ".join(self.subscriptions),
        )

    def _on_connect_fail(self, _c: mqtt.Client, _u: Any) -> None:
        """paho cannot connect (its `except OSError`): say why, once per reason."""
        self._resuming = False  # an outage now, not a resume
        host, port = self.broker.host, self.broker.port
        self._refusals.error(connect_failure(), "cannot connect to %s:%d: %s", host, port)

    def _on_subscribe(self, _c: mqtt.Client, _u: Any, _mid: int, reasons: Any, _props: Any) -> None:
        refused = [t for t, r in zip(self.subscriptions, reasons, strict=False) if r.is_failure]
        if refused:
            # The rest is served: a site whose topics the broker's ACL denies gets nothing,
            # the others go on (/healthz shows the sites that receive nothing).
            log.error(
                "the broker refused the subscription to %s (its ACL for user %s?); "
                "those topics get nothing",
                ", ".join(refused),
                self.broker.username or "(anonymous)",
            )
        self._connected_since = time.monotonic()
        self._left.clear()
        self.metrics.broker_connected.set(1)
        self.connected.set()
        self._resuming = False  # after `connected`: `up` never sees neither (see there)

    def _on_disconnect(
        self, _c: mqtt.Client, _u: Any, _flags: Any, reason: Any, _props: Any
    ) -> None:
        # Before paho reconnects: an ack of this connection queued after this point would be
        # written on the next one (paho keeps what is queued from its reconnect to the CONNACK).
        with self._ack_lock:
            self._session += 1
        if not self._closing:
            self._resuming = False  # a resume's new connection lost: an outage now
        if not self.connected.is_set() and not self._closing:
            # Between CONNACK and SUBACK: said (once per reason), or a connection the broker
            # closes that early would pass unnoticed: `lost the broker` below is for a link
            # that was up.
            self._refusals.error(
                str(reason),
                "broker %s closed the connection before confirming the subscriptions: %s",
                self.broker.host,
            )
        if self.connected.is_set() and not self._closing:
            log.warning("lost the broker (%s); paho reconnects with backoff", reason)
            short = time.monotonic() - self._connected_since < SHORT_SESSION_S
            self._short_sessions = self._short_sessions + 1 if short else 0
            if self._short_sessions >= SHORT_SESSIONS_SAID:
                self._takeover_log.warning(
                    ("takeover",),
                    "the broker closed our connection %d times in a row within %.0f s: is "
                    "another client connected as %r? Each hub process needs its own "
                    "broker.client_id (docs/hub.md, Scale-out)",
                    self._short_sessions,
                    SHORT_SESSION_S,
                    self.client_id,
                )
        self.connected.clear()
        self.metrics.broker_connected.set(0)

    def _on_socket_close(self, _c: mqtt.Client, _u: Any, sock: Any) -> None:
        """paho's thread, about to close the socket. After our DISCONNECT (a stop or a resume),
        wait until the broker has closed the connection, at most CLOSE_WAIT_S, reading and
        dropping what it still sends (messages left unacknowledged, which it sends again on the
        next connect).

        paho closes the socket right after writing the DISCONNECT, and the broker may not have
        read what came before it yet: the acknowledgements of the last stored tick, our last
        QoS 1 events. A socket closed with unread data in it (a message the broker sent after
        paho's last read) sends a reset, and a closed one answers the broker's next write with
        one. Mosquitto writes to us while it reads those bytes (a PUBACK for each of our QoS 1
        events, the next queued message for each acknowledgement), that write fails, and it
        drops the connection with the rest unread (2.0.11 logs "disconnected due to out of
        memory" for a failed PUBACK, its error code 1): the tick's messages came again after
        the restart, refused as duplicates (docs/hub.md, A clean stop). Waiting for its close,
        the socket stays open for its writes and is closed with nothing unread. Our half is
        shut first (a FIN after the DISCONNECT), so a broker that leaves the close to the
        client closes too (MQTT 3.1.1, 3.14.4: it SHOULD close)."""
        if not self._closing or not isinstance(sock, socket.socket):
            return  # a connection lost, not closed by us: nothing of ours waits to be read
        if not _await_close(sock, CLOSE_WAIT_S):
            log.warning(
                "the broker did not close the connection within %.1f s of our DISCONNECT;"
                " closing it: the acknowledgements sent just before may be lost, and their"
                " messages come again (refused as duplicates)",
                CLOSE_WAIT_S,
            )

    # -- service thread

    @property
    def up(self) -> bool:
        """Connected, or reconnecting for a resume (resume_if_dropped): the service's view of the
        link. A resume is not an outage: the gateways stay connected to the broker, which
        queues their messages for our session during the milliseconds of the reconnect
        (1.5-3.6 ms here) and sends them right after it, so there is nothing buffered to wait
        for. If that reconnect fails, paho's thread clears `resuming` and the link is down."""
        # `resuming` first: paho's thread sets `connected` before it clears `resuming`.
        return self._resuming or self.connected.is_set()

    @property
    def shared(self) -> bool:
        """The broker closed our last connection soon after it was made: probably another
        client with our client id, sharing our session (_on_disconnect)."""
        return self._short_sessions > 0

    def leave(self, topic: str) -> bool:
        """A message of a site we do not serve came on `topic`: our persistent session still
        holds that site's subscriptions from an earlier configuration (sites moved to another
        hub under the same client id), and would deliver its batches for ever. Unsubscribe
        them, once per connect; False if already done."""
        parts = topic.split("/")
        site = parts[1] if len(parts) > 1 else ""
        client = self._client
        if client is None or not site or site in self._left:
            return False
        self._left.add(site)
        filters = [readings_subscription(site), consent_subscription(site)]
        client.unsubscribe([*filters, *gateway_subscriptions(site)])
        log.warning(
            "got %s, of a site this hub does not serve: unsubscribed from site %s's topics "
            "(a subscription an earlier configuration left in the persistent session)",
            topic,
            site,
        )
        return True

    def resume_if_dropped(self) -> bool:
        """Service thread, the inbox found empty: if messages were dropped unacknowledged since
        the connect, reconnect the session so the broker sends them again (module docstring),
        at most once per RESUME_MIN_INTERVAL_S. True if it did."""
        client = self._client
        owed = self._dropped_owed
        if client is None or not owed or not self.connected.is_set() or not self.inbox.empty():
            return False
        now = time.monotonic()
        if now - self._last_resume < RESUME_MIN_INTERVAL_S:
            return False  # the service asks again at its next empty inbox
        self._last_resume = now
        self.metrics.session_resumes.inc()
        self._resume_log.warning(
            ("resume",),
            "the overload is over, and %d messages it dropped unacknowledged hold the broker's"
            " in-flight window until we connect again (MQTT 3.1.1 sends them again only then):"
            " reconnecting the session",
            owed,
        )
        self._resuming = True  # before the DISCONNECT: `up` stays true throughout
        self._closing = True
        try:
            # As stop(): a clean DISCONNECT keeps the session and its unacknowledged messages.
            # The same client, not a new one: it keeps the outputs (QoS 1) awaiting their PUBACK
            # and sends them again.
            client.disconnect()
            client.loop_stop()
        finally:
            self._closing = False
        self._restart_loop(client)
        return True

    def _restart_loop(self, client: mqtt.Client) -> None:
        """Connect again and start paho's thread anew, its stopped one's wake-up socket pair
        closed first. paho's loop_start makes a new pair and drops the old one unclosed (paho
        issue 627, paho 2.2): CPython closed it when the last reference went, with a
        ResourceWarning "unclosed socket" for each of its two sockets at every resume, and it
        stayed open for as long as anything still held it. paho has no public call for this;
        `_reset_sockets(sockpair_only=True)` is what its own `loop()` does before making a new
        pair (tests/integration/test_hub_overload.py sees a paho that changes it).

        Under both locks: `ack` (any thread, _ack_lock) and `publish` (the HTTP server's and the
        SQLite writer's threads too, _wake_lock) write a byte to the pair, and must find either
        the old one open or the new one. paho's thread is stopped, so no callback of ours waits
        on either lock meanwhile."""
        with self._wake_lock, self._ack_lock:
            client._reset_sockets(sockpair_only=True)
            self._connect(client)

    def ack(self, mid: int, qos: int, session: int) -> None:
        """Any thread. Nothing is sent for a message of an earlier connection (module
        docstring): the broker sends it again on this one."""
        if qos == 0:
            return
        with self._ack_lock:
            client = self._client
            if client is not None and session == self._session:
                client.ack(mid, qos)

    def publish(self, topic: str, payload: bytes, qos: int, retain: bool = False) -> bool:
        """False if paho refused it (queue full, or QoS 0 while disconnected)."""
        with self._wake_lock:  # not while a resume swaps paho's wake-up pair
            client = self._client
            if client is None:
                return False
            info = client.publish(topic, payload, qos=qos, retain=retain)
        return info.rc == MQTTErrorCode.MQTT_ERR_SUCCESS or (
            info.rc == MQTTErrorCode.MQTT_ERR_NO_CONN and qos > 0
        )


def _await_close(sock: socket.socket, timeout_s: float) -> bool:
    """Shut our half of `sock` and read until the peer closes it (True) or `timeout_s` passes
    (False). What is read is dropped. A reset or any other error ends the wait too: the peer
    has closed."""
    deadline = time.monotonic() + timeout_s
    try:
        sock.shutdown(socket.SHUT_WR)
        while True:
            try:
                if not sock.recv(_DRAIN_BYTES):
                    return True
                continue
            except (BlockingIOError, ssl.SSLWantReadError):
                pass
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([sock], [], [], left)[0]:
                return False
    except OSError:  # reset, or already closed: nothing more comes
        return True


@dataclass(slots=True)
class GatewayState:
    """Sequence and clock bookkeeping of one gateway (of the boot seen last)."""

    boot: str
    next_seq: int
    offset_s: float | None = None
    last_arrival: float | None = None
    """None after a restore: no creep is owed for the time the hub was down."""
    future_streak: int = 0
    past_streak: int = 0
    """In-order batches in a row behind the offset since the send time went back
    (PAST_RESYNC_BATCHES)."""
    past_raw_s: float | None = None
    """The least arrival - sent over that streak: the offset a relearn takes."""
    last_sent: float | None = None
    """Send time of the newest in-order batch accepted (this boot's). Saved with each tick and
    restored, so a clock stepped back while the hub was down is seen at the first batch after
    the restart; None: not known (a new boot, or state saved before it was kept)."""
    jump_streak: int = 0
    missing: set[int] = field(default_factory=set)
    """Seqs skipped below `next_seq` (counted lost), taken if they come (MAX_GAP_MEMORY)."""
    first_seq: int | None = None
    """The seq this boot was first heard at (by this run, or by the run whose saved state was
    restored); None for a state restored from a row saved before it was kept, whose sequence
    covers what came before. The hub never took a batch below it: one that comes is not a
    duplicate but, say, one an overload dropped unacknowledged while it took the next ones,
    which the broker sends again only at the next connect (Overload policy), after them, or
    after a restart. Taken once each, as far back as a gap is remembered (MAX_GAP_MEMORY)."""
    early: set[int] = field(default_factory=set)
    """Seqs below `first_seq` taken since: a second copy is a duplicate."""
    gaps_changed: bool = True
    """`missing`, `first_seq` or `early` changed since `unsaved_gaps` last took them for the
    store: a state made here starts changed, a restored one does not."""
    retired: dict[str, int] = field(default_factory=dict)
    """Earlier boots of the gateway -> their next seq when they ended, newest last (at most
    RETIRED_BOOTS). A batch of one of them is refused: a broker restored from a snapshot
    re-delivers batches of a boot the gateway has left, and a replay could do the same."""

    def unsaved_gaps(self) -> SeqGaps | None:
        """The seqs below `next_seq` not taken yet, as the store saves them, if they changed
        since the last call (else None: what is saved holds). Copies: the sets change on."""
        if not self.gaps_changed:
            return None
        self.gaps_changed = False
        return SeqGaps(frozenset(self.missing), self.first_seq, frozenset(self.early))


@dataclass(frozen=True, slots=True)
class SeqGaps:
    """What a gateway's boot may still send below its next seq that the hub never took: its
    remembered gaps (GatewayState.missing) and its first seq heard with the earlier seqs taken
    since (`first_seq`, `early`). Saved with the tick's gateway state, so a batch the hub never
    took is not refused as a duplicate after a restart: one in a gap, or one an overload
    dropped unacknowledged before the tick that took later ones was stored (acknowledgements
    follow that tick's transaction, so the broker still owes it)."""

    missing: frozenset[int] = frozenset()
    first_seq: int | None = None
    early: frozenset[int] = frozenset()


def _before_first_heard(st: GatewayState, seq: int) -> bool:
    """`seq` is below the boot's first batch heard in this run, within MAX_GAP_MEMORY of it,
    and not taken yet (GatewayState.first_seq)."""
    first = st.first_seq
    return first is not None and first - MAX_GAP_MEMORY <= seq < first and seq not in st.early


@dataclass(frozen=True, slots=True)
class Accepted:
    site: str
    gateway: str
    batch: ReadingBatch
    readings: Readings
    lost_before: int
    """Batches found missing just before this one."""
    sent_hub: float
    """The batch's send time in hub time (its newest possible sample)."""


@dataclass(frozen=True, slots=True)
class ConsentUpdate:
    """A decision from `beacons/{site}/consent/{beacon}` (consent.py); the service applies it."""

    site: str
    beacon: str
    consent: Consent | None
    """None: the retained decision was cleared (empty payload); what is known stays."""


@dataclass(frozen=True, slots=True)
class StatusUpdate:
    """A gateway's retained `status` (or its last will); the service hands it to the live
    view and acknowledges it at once."""

    site: str
    gateway: str
    status: GatewayStatus | None
    """None: the retained status was cleared (empty payload); the state is unknown again."""


@dataclass(frozen=True, slots=True)
class HeartbeatUpdate:
    """A gateway's `heartbeat` counters (QoS 0); state for the live view, not stored."""

    site: str
    gateway: str
    heartbeat: Heartbeat


GatewayUpdate = StatusUpdate | HeartbeatUpdate


@dataclass(frozen=True, slots=True)
class Rejected:
    site: str
    gateway: str
    """A gateway of the site, or UNKNOWN_GATEWAY."""
    reason: str
    samples: int
    detail: str
    ours: bool = True
    """False for a message of a site this hub does not serve: it came through a session another
    hub shares (the same client id; left unacknowledged for it) or a subscription an earlier
    configuration left in ours (MqttLink.leave)."""


class Ingestor:
    """Turns one inbound message into readings in hub time, or a counted rejection."""

    def __init__(
        self,
        gateways: Mapping[str, frozenset[str]],
        config: IngestConfig,
        metrics: Metrics,
    ) -> None:
        self.gateways = gateways
        """Site id -> the gateway ids its site file names."""
        self.config = config
        self.metrics = metrics
        self.state: dict[tuple[str, str], GatewayState] = {}
        self.bad_log = RateLimitedLog(config.log_every_s)

    def restore(  # noqa: PLR0917  # the saved state, field by field
        self,
        site: str,
        gw: str,
        boot: str,
        next_seq: int,
        offset_s: float | None,
        retired: Mapping[str, int] | None = None,
        *,
        last_sent: float | None = None,
        gaps: SeqGaps | None = None,
    ) -> None:
        """State saved by a previous run (the SQLite store), so a restart detects gaps and drops
        re-delivered duplicates across it, takes what it never took (`gaps`: a batch of a gap,
        or one from before the boot's first batch heard), reads a queued backlog in the right
        time, and sees a clock stepped back meanwhile (`last_sent`, _stepped_back)."""
        gaps = gaps or SeqGaps()
        self.state[(site, gw)] = GatewayState(
            boot=boot,
            next_seq=next_seq,
            offset_s=offset_s,
            last_sent=last_sent,
            missing=set(gaps.missing),
            first_seq=gaps.first_seq,
            early=set(gaps.early),
            gaps_changed=False,
            retired=dict(retired or {}),
        )

    def handle(self, item: Inbound) -> Accepted | Rejected | ConsentUpdate | GatewayUpdate:  # noqa: PLR0915  # one check after another, in the order that matters
        if item.topic.split("/", 3)[2:3] == ["consent"]:  # not a gateway or site named so
            return self._consent(item)
        try:
            topic = parse_topic(item.topic)
        except WireError as e:
            site = item.topic.split("/")[1] if item.topic.count("/") >= 1 else "?"
            return self._reject(site, UNKNOWN_GATEWAY, "bad_topic", 0, str(e))
        site = topic.site
        known = self.gateways.get(site, frozenset())
        topic_gw = topic.subject or ""
        label = topic_gw if topic_gw in known else UNKNOWN_GATEWAY
        if site not in self.gateways:
            detail = f"{item.topic}: not a site of ours"
            return self._reject(site, label, "bad_topic", 0, detail, ours=False)
        if topic.kind not in ("readings", "status", "heartbeat"):
            return self._reject(site, label, "bad_topic", 0, f"{item.topic}: not a gateway topic")
        if topic.kind != "readings":
            return self._gateway_report(item, site, topic.kind == "status", topic_gw, label)
        try:
            batch = decode_batch(item.payload)
        except WireError as e:
            reason = decode_reason(e)
            self.metrics.decode_errors.labels(reason).inc()
            return self._reject(site, label, reason, 0, str(e))
        n = len(batch)
        if batch.gw != topic_gw:
            return self._reject(site, label, "gateway_mismatch", n, f"batch says gw={batch.gw!r}")
        if label == UNKNOWN_GATEWAY:
            return self._reject(site, label, "unknown_gateway", n, "not in the site file")
        st = self.state.get((site, label))
        lost = 0
        if st is not None and batch.boot != st.boot and batch.boot in st.retired:
            if batch.seq < st.retired[batch.boot]:
                self.metrics.gateway_duplicates.labels(site, label).inc()
                return self._reject(
                    site, label, "duplicate", n, f"(boot {batch.boot}, seq {batch.seq}) again"
                )
            ended = f"boot {batch.boot} ended; the gateway is on {st.boot}"
            return self._reject(site, label, "stale_boot", n, ended)
        if st is None or st.boot != batch.boot:
            retired: dict[str, int] = {}
            if st is not None:
                log.info("%s/%s rebooted (boot %s -> %s)", site, label, st.boot, batch.boot)
                retired = st.retired
                retired[st.boot] = st.next_seq
                while len(retired) > RETIRED_BOOTS:
                    del retired[next(iter(retired))]
            st = self.state[(site, label)] = GatewayState(
                boot=batch.boot, next_seq=batch.seq, retired=retired, first_seq=batch.seq
            )
        if batch.seq < st.next_seq:
            if batch.seq in st.missing:
                # A reordered batch fills its gap; the gap stays counted as lost when seen.
                st.missing.discard(batch.seq)
                st.gaps_changed = True
            elif _before_first_heard(st, batch.seq):
                # Never taken (GatewayState.first_seq); nothing was counted lost for it.
                st.early.add(batch.seq)
                st.gaps_changed = True
            else:
                self.metrics.gateway_duplicates.labels(site, label).inc()
                return self._reject(
                    site, label, "duplicate", n, f"(boot {batch.boot}, seq {batch.seq}) again"
                )
        elif batch.seq > st.next_seq + MAX_SEQ_JUMP and st.jump_streak + 1 < FUTURE_RESYNC_BATCHES:
            # One absurd seq must not make every later batch of the gateway a "duplicate".
            st.jump_streak += 1
            return self._reject(
                site, label, "seq_jump", n, f"seq {batch.seq} after {st.next_seq - 1}"
            )
        elif batch.seq > st.next_seq:
            st.jump_streak = 0
            lost = batch.seq - st.next_seq
            if lost <= MAX_GAP_MEMORY:
                st.missing.update(range(st.next_seq, batch.seq))
                while len(st.missing) > MAX_GAP_MEMORY:
                    st.missing.discard(min(st.missing))
                st.gaps_changed = True
            self.metrics.gateway_lost.labels(site, label).inc(lost)
            self.bad_log.warning(
                (site, label, "lost"),
                "%s/%s: %d batches missing before seq %d",
                site,
                label,
                lost,
                batch.seq,
            )
        in_order = batch.seq >= st.next_seq
        if in_order:
            st.next_seq = batch.seq + 1
            st.jump_streak = 0
        raw = item.arrival - batch.sent
        if st.offset_s is None:
            st.offset_s = raw
        else:
            since = 0.0 if st.last_arrival is None else max(item.arrival - st.last_arrival, 0.0)
            crept = st.offset_s + OFFSET_CREEP_S_PER_S * since
            if raw < crept - self.config.future_tolerance_s:
                st.future_streak += 1
                if st.future_streak < FUTURE_RESYNC_BATCHES:
                    return self._reject(
                        site,
                        label,
                        "future",
                        n,
                        f"sent {crept - raw:.1f} s ahead of the gateway's learnt clock",
                    )
                log.warning(
                    "%s/%s: clock jumped by %.1f s; relearning its offset", site, label, crept - raw
                )
                crept = raw
            st.future_streak = 0
            if in_order:  # a reordered batch neither starts nor breaks a streak
                crept = self._stepped_back(st, batch.sent, raw, crept, site=site, gw=label)
            st.offset_s = min(crept, raw)
        if in_order:
            st.last_sent = batch.sent
        st.last_arrival = item.arrival
        self.metrics.gateway_offset.labels(site, label).set(st.offset_s)
        self.metrics.gateway_last_seen.labels(site, label).set(item.arrival)
        self.metrics.readings.labels(site).inc(n)
        self.metrics.batches.labels(site).inc()
        return Accepted(
            site=site,
            gateway=label,
            batch=batch,
            readings=Readings.from_batch(batch, st.offset_s),
            lost_before=lost,
            sent_hub=batch.sent + st.offset_s,
        )

    def _stepped_back(
        self, st: GatewayState, sent: float, raw: float, crept: float, *, site: str, gw: str
    ) -> float:
        """The offset to go on from for an in-order batch: `crept`, or after PAST_RESYNC_BATCHES
        the least arrival - sent of a streak that began with the send time going back."""
        behind = raw > crept + self.config.future_tolerance_s
        went_back = st.last_sent is not None and sent < st.last_sent
        if not behind or not (st.past_streak or went_back):
            st.past_streak, st.past_raw_s = 0, None
            return crept
        st.past_streak += 1
        st.past_raw_s = raw if st.past_raw_s is None else min(st.past_raw_s, raw)
        if st.past_streak < PAST_RESYNC_BATCHES:
            return crept  # placed in the past and refused as late, as before: not yet sure
        relearnt = st.past_raw_s
        log.warning(
            "%s/%s: clock stepped back by %.1f s (its send time went back while its seq went"
            " on); relearning its offset",
            site,
            gw,
            relearnt - crept,
        )
        st.past_streak, st.past_raw_s = 0, None
        return relearnt

    def _consent(self, item: Inbound) -> ConsentUpdate | Rejected:
        site = item.topic.split("/")[1] if item.topic.count("/") >= 1 else "?"
        try:
            parsed = parse_consent_topic(item.topic)
        except WireError as e:
            return self._reject(site, UNKNOWN_GATEWAY, "bad_topic", 0, str(e))
        if parsed is None or parsed[0] not in self.gateways:
            return self._reject(
                site, UNKNOWN_GATEWAY, "bad_topic", 0, "not a consent topic of ours"
            )
        if not item.payload:
            # An empty retained message clears the topic: no decision, nothing to refuse.
            return ConsentUpdate(parsed[0], parsed[1], None)
        try:
            decision = decode_consent(item.payload)
        except WireError as e:
            reason = decode_reason(e)
            self.metrics.decode_errors.labels(reason).inc()
            return self._reject(site, UNKNOWN_GATEWAY, reason, 0, str(e))
        return ConsentUpdate(parsed[0], parsed[1], decision)

    def _gateway_report(
        self, item: Inbound, site: str, is_status: bool, topic_gw: str, label: str
    ) -> GatewayUpdate | Rejected:
        """A status or heartbeat of a gateway of `site` (topic already checked)."""
        kind = "status" if is_status else "heartbeat"
        report: GatewayStatus | Heartbeat | None = None
        if item.payload or not is_status:
            try:
                report = (decode_status if is_status else decode_heartbeat)(item.payload)
            except WireError as e:
                reason = decode_reason(e)
                self.metrics.decode_errors.labels(reason).inc()
                return self._reject(site, label, reason, 0, f"{kind}: {e}")
            if report.gw != topic_gw:
                return self._reject(
                    site, label, "gateway_mismatch", 0, f"{kind} says gw={report.gw!r}"
                )
        # (an empty payload clears a retained status: nothing to decode)
        if label == UNKNOWN_GATEWAY:
            return self._reject(site, label, "unknown_gateway", 0, f"{kind}: not in the site file")
        m = self.metrics
        if isinstance(report, Heartbeat):
            m.gateway_heartbeat.labels(site, label).set(item.arrival)
            for name in HEARTBEAT_COUNTERS:
                m.gateway_reported.labels(site, label, name).set(getattr(report, name))
            return HeartbeatUpdate(site, label, report)
        if report is not None:
            m.gateway_status.labels(site, label).set(1.0 if report.state == "online" else 0.0)
        return StatusUpdate(site, label, report)

    def count_samples(self, site: str, gateway: str, reason: str, samples: int) -> None:
        """Samples the engine refused one by one (late, impossible RSSI)."""
        if samples:
            self.metrics.rejected_readings.labels(site, gateway, reason).inc(samples)
            self.bad_log.warning(
                (site, gateway, reason),
                "%s/%s: %d readings refused: %s",
                site,
                gateway,
                samples,
                reason,
            )

    def _reject(
        self, site: str, gw: str, reason: str, samples: int, detail: str, *, ours: bool = True
    ) -> Rejected:
        if site not in self.gateways:
            site = "_unknown"
        self.metrics.rejected_batches.labels(site, gw, reason).inc()
        if samples:
            self.metrics.rejected_readings.labels(site, gw, reason).inc(samples)
        self.bad_log.warning(
            (site, gw, reason), "refused a payload from %s/%s (%s): %s", site, gw, reason, detail
        )
        return Rejected(site, gw, reason, samples, detail, ours)
