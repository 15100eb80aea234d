"""Retention per class (docs/privacy.md, Retention) against the real InfluxDB 1.6 and SQLite:
old shopper data gone, pallet history kept.

InfluxDB enforces a policy's duration in its hourly shard sweep (1 h minimum), which a test
cannot wait for; what it enforces at once is the write: points older than their policy's
duration are refused. So the test checks the policies' configured durations (SHOW RETENTION
POLICIES), which policy each point went to, and that an old shopper point was never stored.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest

from beacon_hub.engine import FixTable
from beacon_hub.health import Metrics
from beacon_hub.hubconfig import HubConfig, InfluxConfig, PrivacyConfig
from beacon_hub.privacy import Retention, load_key, pseudonym, retention_job
from beacon_hub.site import load_site
from beacon_hub.stores import InfluxStore, SqliteStore, TickRecord
from beacon_hub.wire import Event
from tests.integration.hubkit import ROOT
from tests.servers import InfluxDB

pytestmark = pytest.mark.integration

CART = "ibeacon:3d1a7b52-8c4e-4f0a-9b6d-2e5f8a1c7d40:1:{}"
"""config/store.yaml's cart kind (a shopper kind) matches this uuid."""
PALLET = "ibeacon:5e0b9c3a-71d4-4f86-a2e9-c48d16b7f035:1:{}"
"""config/warehouse.yaml's pallet kind matches this uuid."""
LOOSE = "mac:aa:bb:cc:dd:ee:0{}"
"""No site gives this a kind: class `other`."""
DAY_S = 86_400.0
SHOPPER_DAYS = 2.0
PALLET_DAYS = 365.0


def _fix(beacon: str, kind: str | None, t: float) -> FixTable:
    return FixTable(
        t=t,
        beacons=[beacon],
        x=np.array([1.5]),
        y=np.array([2.5]),
        accuracy_m=np.array([1.0]),
        level=np.zeros(1, dtype=np.int64),
        zones=["z1"],
        kinds=[kind],
        speed_m_s=np.zeros(1),
        gateway_slots=np.zeros((1, 1), dtype=np.intp),
        gateway_mask=np.ones((1, 1), dtype=bool),
        gateway_ids=("gw-01",),
    )


def _retention(shopper_days: float | None, pallet_days: float | None) -> Retention:
    sites = {
        s.id: s for s in (load_site(ROOT / "config" / f) for f in ("store.yaml", "warehouse.yaml"))
    }
    cfg = HubConfig.model_validate(
        {
            "sites": [{"site": str(ROOT / "config" / "store.yaml")}],
            "privacy": {"retention_days": shopper_days},
            "stores": {"retention_days": {"pallet": pallet_days}},
        }
    )
    return Retention.from_config(cfg, sites)


def _policies(server: InfluxDB, db: str) -> dict[str, str]:
    rows = server.rows(f'SHOW RETENTION POLICIES ON "{db}"', db)
    return {str(r["name"]): str(r["duration"]) for r in rows}


def test_old_shopper_data_is_gone_and_pallet_history_kept(
    tmp_path: Path, influx_db: tuple[InfluxDB, str]
) -> None:
    server, db = influx_db
    store_site = load_site(ROOT / "config" / "store.yaml").id
    warehouse = load_site(ROOT / "config" / "warehouse.yaml").id
    key = load_key(PrivacyConfig(), tmp_path / "hub.sqlite")
    shopper = pseudonym(key, CART.format(1))  # privacy.apply has run: shoppers are pseudonyms
    now = float(round(time.time()))
    old = now - 3 * DAY_S  # past the shoppers' 2 days, well within the pallets' 365
    records = [
        TickRecord(
            site, t, _fix(beacon, kind, t), [Event("zone_enter", t, site, beacon, "z1")], [label]
        )
        for site, beacon, kind, label in (
            (store_site, shopper, "cart", None),
            (warehouse, PALLET.format(1), "pallet", "P-1001"),
            (store_site, LOOSE.format(1), None, None),
        )
        for t in (old, now)
    ]
    retention = _retention(SHOPPER_DAYS, PALLET_DAYS)

    # InfluxDB: each class in its policy, the durations as configured.
    cfg = InfluxConfig(version=1, url=server.url, database=db, spill_dir=tmp_path / "spill")
    metrics = Metrics()
    influx = InfluxStore(cfg, metrics, retention)
    try:
        for r in records:
            influx.write(r)
        assert influx.flush(30.0), "the InfluxDB store did not drain"
    finally:
        influx.close()
    policies = _policies(server, db)
    assert policies["beacon_hub_shoppers"] == "48h0m0s"
    assert policies["beacon_hub_pallet"] == "8760h0m0s"
    for unused in ("beacon_hub_reference", "beacon_hub_asset", "beacon_hub_other"):
        assert policies[unused] == "0s"  # INF; created for the dashboards, kept forever

    def times(source: str, beacon: str) -> list[float]:
        rows = server.rows(f"SELECT * FROM {source} WHERE beacon = '{beacon}'", db)
        return [r["time"] / 1e9 for r in rows]

    # The old shopper point was refused by the database as past its policy: never stored.
    assert times('"beacon_hub_shoppers"."fix"', shopper) == [now]
    assert times('"beacon_hub_shoppers"."event"', shopper) == [now]
    assert times('"beacon_hub_pallet"."fix"', PALLET.format(1)) == [old, now]
    assert times('"beacon_hub_pallet"."event"', PALLET.format(1)) == [old, now]
    # A class kept forever stays in the database's default policy; nothing else lands there.
    assert {r["beacon"] for r in server.rows('SELECT x, beacon FROM "fix"', db)} == {
        LOOSE.format(1)
    }
    dropped = metrics.registry.get_sample_value(
        "beacon_hub_store_dropped_points_total", {"store": influx.name}
    )
    assert dropped == 2  # the old shopper fix and event, counted

    # A new retention is applied to the existing policy at the next start.
    again = InfluxStore(cfg, Metrics(), _retention(1.0, PALLET_DAYS))
    try:
        again.write(records[1])
        assert again.flush(30.0)
    finally:
        again.close()
    assert _policies(server, db)["beacon_hub_shoppers"] == "24h0m0s"

    # SQLite: the hourly job deletes the old shopper rows, keeps the pallet's history.
    sqlite = SqliteStore(tmp_path / "hub.sqlite", Metrics())
    for r in records:
        sqlite.commit(r, (), ())
    retention_job(retention, now)(sqlite.db)
    for table in ("fixes", "events"):
        left = sorted(sqlite.db.execute(f"SELECT beacon, t FROM {table}"))
        kept = [(shopper, now), (PALLET.format(1), old), (PALLET.format(1), now)]
        kept += [(LOOSE.format(1), old), (LOOSE.format(1), now)]
        assert left == sorted(kept), table
    sqlite.close()
