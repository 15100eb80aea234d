"""What gateways buffer while the broker is down reaches the engine in time (docs/hub.md, Ticks
and the failure table: broker SIGTERM / restart loses nothing). The shipped Mosquitto config
(persistence on) stopped with SIGTERM, the hub as a child process."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.integration.hubkit import Gateways, HubProcess, shipped_broker, site_file, wait_until
from tests.integration.test_hub_resilience import ledger, published, rounds_seen, sending

pytestmark = pytest.mark.integration

OUTAGE_ROUNDS = 3
"""Rounds the gateways buffer while the broker is down (one a second)."""
SLOW_RECONNECT_S = 10
"""One gateway's reconnect delay: it comes back well after the hub (whose backoff the kit
caps at 2 s), as a gateway on its own backoff (5 s by default, up to 30 s as configured) does."""


def test_readings_buffered_through_a_broker_restart_are_not_late(tmp_path: Path) -> None:
    broker = shipped_broker(tmp_path / "mq")
    broker.start()
    path = site_file(tmp_path, "outage")
    hub = HubProcess(tmp_path / "hub", broker, [path])
    hub.start()
    prompt, slow = Gateways(broker, path), Gateways(broker, path)
    prompt.gws, slow.gws = prompt.gws[1:], prompt.gws[:1]
    slow.client.reconnect_delay_set(SLOW_RECONNECT_S, SLOW_RECONNECT_S)
    try:
        with sending(prompt), sending(slow):
            wait_until("2 rounds stored", lambda: rounds_seen(prompt, hub, 2), hub=hub)
            broker.stop()
            wait_until(
                "the hub to see the broker gone",
                lambda: hub.metric_sum("beacon_hub_broker_connected") == 0,
                hub=hub,
            )
            buffered = prompt.rounds + OUTAGE_ROUNDS
            wait_until("rounds buffered by the gateways", lambda: prompt.rounds >= buffered)
            broker.start()
            wait_until("the slow gateway back", slow.client.is_connected)
            n = slow.rounds + 2
            wait_until("2 more rounds of it", lambda: slow.rounds >= n)
        want = published(prompt) + published(slow)
        wait_until("every batch in the ledger", lambda: set(ledger(hub)) >= set(want), hub=hub)
        late = hub.metric_sum("beacon_hub_rejected_readings_total", reason="late")
        assert hub.stop() == 0
        assert ledger(hub) == want
        assert hub.sql("SELECT sum(late) FROM batches") == [(0,)]
        assert late == 0
    finally:
        prompt.close()
        slow.close()
        hub.close()
        broker.stop()
