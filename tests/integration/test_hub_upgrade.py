"""Upgrading in place: a hub started on the database an earlier release left goes on from it
(its gateways' sequences, its ticks, every row kept); one started on a newer release's database
refuses it (tests/beacon_hub/test_schema.py has the refusals and the layouts)."""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path

import pytest

from beacon_hub.stores import SCHEMA_VERSION
from tests.beacon_hub.test_schema import RELEASE_0_SCHEMA
from tests.integration.hubkit import Gateways, HubProcess, site_file, unique_site, wait_until
from tests.servers import Mosquitto

pytestmark = pytest.mark.integration

SAVED_SEQ = 41
"""The next seq each gateway's saved state expects."""
GONE = "ibeacon:3d1a7b52-8c4e-4f0a-9b6d-2e5f8a1c7d40:9:1"
"""A beacon of the earlier release's rows that the gateways no longer hear (its rows stay as
they were)."""


def test_a_database_of_a_release_before_versions_is_upgraded_and_the_hub_resumes_from_it(
    tmp_path: Path, mosquitto: Mosquitto
) -> None:
    site = unique_site()
    path = site_file(tmp_path, site)
    hub = HubProcess(tmp_path / "hub", mosquitto, [path])
    gws = Gateways(mosquitto, path)
    # What the earlier release left: each gateway's batches up to SAVED_SEQ - 1 in the ledger
    # and its state, a tick 3 s ago, a fix, an event and an asset.
    t = time.time() - 3.0
    old: dict[str, list[tuple[object, ...]]] = {
        "batches": [
            (site, gw, gws.boots[gw], seq, 24, 24, 0, 0, t - 0.5, t)
            for gw, _, _ in gws.gws
            for seq in range(SAVED_SEQ)
        ],
        "gateways": [(site, gw, gws.boots[gw], SAVED_SEQ, 0.05) for gw, _, _ in gws.gws],
        "fixes": [(site, GONE, t, 1.5, 2.5, 0, 0.75, None, "cart", "C-7", 0.1, "gw-01")],
        "events": [(site, t, "zone_exit", GONE, "aisle-1", "{}")],
        "assets": [(GONE, "C-7", "cart", 2900, 21.5, t)],
        "ticks": [(site, t)],
    }
    db = sqlite3.connect(hub.db_path, isolation_level=None)
    db.execute("PRAGMA journal_mode=WAL")
    db.executescript(RELEASE_0_SCHEMA)
    for table, rows in old.items():
        db.executemany(f"INSERT INTO {table} VALUES ({','.join('?' * len(rows[0]))})", rows)
    db.close()
    # gw-01 sends its last saved batch again (a duplicate only to a hub that resumed), gw-02
    # skips two (lost, counted only against the saved next seq), the others go on.
    for gw in gws.seqs:
        gws.seqs[gw] = SAVED_SEQ
    gws.seqs["gw-01"] = SAVED_SEQ - 1
    gws.seqs["gw-02"] = SAVED_SEQ + 2
    hub.start()
    try:
        gws.run_for(3.0)
        gws.settle()
        wait_until(
            "every batch sent accepted or refused",
            lambda: (
                hub.metric_sum("beacon_hub_batches_total")
                + hub.metric_sum("beacon_hub_rejected_batches_total")
                >= len(gws.published)
            ),
            hub=hub,
        )
        assert hub.metric_sum("beacon_hub_gateway_batches_duplicate_total") == 1
        assert hub.metric_sum("beacon_hub_gateway_batches_lost_total") == 2
        assert hub.metric_sum("beacon_hub_gateway_batches_lost_total", gateway="gw-02") == 2
        assert hub.stop() == 0
        assert hub.sql("PRAGMA user_version") == [(SCHEMA_VERSION,)]
        for table in ("fixes", "events", "assets"):
            assert set(old[table]) <= set(hub.sql(f"SELECT * FROM {table}")), table
        ledger = hub.sql("SELECT * FROM batches")
        assert set(old["batches"]) <= set(ledger)
        assert len(ledger) == len(old["batches"]) + len(gws.published) - 1  # the duplicate
        (ticked,) = hub.sql("SELECT t FROM ticks WHERE site = ?", site)
        assert ticked[0] > t
        saved = hub.sql("SELECT gateway, next_seq, last_sent FROM gateways")
        assert len(saved) == len(gws.gws)
        assert all(nxt == gws.seqs[gw] and sent is not None for gw, nxt, sent in saved), saved
        assert "schema version 1 -> 2 (_add_gateway_last_sent)" in hub.log()
    finally:
        gws.close()
        hub.close()
