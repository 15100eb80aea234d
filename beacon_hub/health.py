"""Health and metrics: the hub's Prometheus metrics (prometheus-client). The web server
(web.py) serves them on `/metrics` beside `/healthz`.

Every metric lives in the hub's own `CollectorRegistry` (not the process-global one), so two
hubs in one test process never share counters. Gateway labels are only gateways named in a site
file (anything else is `_unknown`): a hostile topic cannot grow the label set without bound.
"""

from __future__ import annotations

import logging

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.exposition import generate_latest

__all__ = ["UNKNOWN_GATEWAY", "Metrics"]

log = logging.getLogger(__name__)

UNKNOWN_GATEWAY = "_unknown"
"""Label for a gateway id that no site file names (bounded label cardinality)."""

TICK_BUCKETS_S = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
"""Tick duration buckets: a 1 s tick must stay well under 1 s; 10,000 beacons take ~0.1 s."""


class Metrics:
    """Every metric the hub exports, in one registry (names in docs/hub.md)."""

    def __init__(self) -> None:
        r = self.registry = CollectorRegistry()
        p = "beacon_hub_"
        self.readings = Counter(p + "readings", "Samples in decoded batches", ["site"], registry=r)
        self.readings_per_s = Gauge(
            p + "readings_per_second", "Samples per second over the last tick", registry=r
        )
        self.batches = Counter(p + "batches", "Batches decoded and accepted", ["site"], registry=r)
        self.rejected_batches = Counter(
            p + "rejected_batches",
            "Payloads refused whole, by gateway and reason",
            ["site", "gateway", "reason"],
            registry=r,
        )
        self.rejected_readings = Counter(
            p + "rejected_readings",
            "Samples refused (in refused batches or one by one), by gateway and reason",
            ["site", "gateway", "reason"],
            registry=r,
        )
        self.decode_errors = Counter(
            p + "decode_errors", "Payloads that did not decode, by reason", ["reason"], registry=r
        )
        self.gateway_last_seen = Gauge(
            p + "gateway_last_seen_timestamp_seconds",
            "Arrival of the gateway's last accepted batch",
            ["site", "gateway"],
            registry=r,
        )
        self.gateway_lost = Counter(
            p + "gateway_batches_lost",
            "Batches missing from a gateway's (boot, seq) sequence",
            ["site", "gateway"],
            registry=r,
        )
        self.gateway_duplicates = Counter(
            p + "gateway_batches_duplicate",
            "Batches seen twice (same boot and seq) and dropped",
            ["site", "gateway"],
            registry=r,
        )
        self.gateway_offset = Gauge(
            p + "gateway_clock_offset_seconds",
            "Learnt offset added to the gateway's clock (min of arrival - sent)",
            ["site", "gateway"],
            registry=r,
        )
        # Gateway status and heartbeat (ingest.py decodes them, livestate.py judges online).
        self.gateway_online = Gauge(
            p + "gateway_online",
            "1 while the hub shows the gateway online (status and recent traffic), else 0",
            ["site", "gateway"],
            registry=r,
        )
        self.gateway_status = Gauge(
            p + "gateway_status_online",
            "What the gateway's retained status (or last will) says: 1 online, 0 offline",
            ["site", "gateway"],
            registry=r,
        )
        self.gateway_heartbeat = Gauge(
            p + "gateway_heartbeat_timestamp_seconds",
            "Arrival of the gateway's last heartbeat",
            ["site", "gateway"],
            registry=r,
        )
        self.gateway_reported = Gauge(
            p + "gateway_reported",
            "The gateway's own counters from its last heartbeat (since its boot), by counter",
            ["site", "gateway", "counter"],
            registry=r,
        )
        self.inbox_depth = Gauge(p + "inbox_depth", "Messages waiting for the service", registry=r)
        self.inbox_dropped = Counter(
            p + "inbox_dropped",
            "Messages dropped unacknowledged by the overload policy",
            registry=r,
        )
        self.tick_duration = Histogram(
            p + "tick_duration_seconds",
            "Engine tick plus outputs",
            ["site"],
            buckets=TICK_BUCKETS_S,
            registry=r,
        )
        self.tick_lag = Gauge(
            p + "tick_lag_seconds",
            "How far the site's last tick was behind the clock when it ran",
            ["site"],
            registry=r,
        )
        self.ticks_skipped = Counter(
            p + "ticks_skipped",
            "Ticks left out because the site fell ingest.max_tick_lag_s behind the clock",
            ["site"],
            registry=r,
        )
        self.fixes = Counter(p + "fixes", "Fixes produced by the engine", ["site"], registry=r)
        self.accuracy_factor = Gauge(
            p + "accuracy_factor",
            "What the site's residuals multiply accuracy_m by (below 1: quieter than its radio)",
            ["site"],
            registry=r,
        )
        self.events = Counter(p + "events", "Events produced", ["site", "type"], registry=r)
        self.store_backlog = Gauge(
            p + "store_backlog_points", "Points waiting (memory and spill)", ["store"], registry=r
        )
        self.store_written = Counter(
            p + "store_written_points", "Points the store acknowledged", ["store"], registry=r
        )
        self.store_thinned = Counter(
            p + "store_thinned_fixes",
            "Fixes not stored: within stores.deadband_m of the last stored one",
            ["site"],
            registry=r,
        )
        self.store_dropped = Counter(
            p + "store_dropped_points", "Points dropped (spill full)", ["store"], registry=r
        )
        self.store_errors = Counter(
            p + "store_errors", "Failed write attempts", ["store"], registry=r
        )
        self.broker_connected = Gauge(p + "broker_connected", "1 while connected", registry=r)
        self.broker_connects = Counter(p + "broker_connects", "Successful connects", registry=r)
        self.session_resumes = Counter(
            p + "session_resumes",
            "Reconnects made so the broker sends again what an overload dropped unacknowledged",
            registry=r,
        )

    def render(self) -> bytes:
        return generate_latest(self.registry)
