"""Every InfluxQL query of the shipped Grafana dashboards (deploy/grafana/dashboards/*.json),
run against the real InfluxDB 1.6 holding simulated data, returns rows (docs/grafana.md).

Grafana cannot run here, so the test does what Grafana's InfluxDB data source does with a raw
query: it substitutes `$timeFilter`, `$__interval` and the template variables, and sends the
query to /query. The data is a simulated store and warehouse: the simulator's gateway batches
go through the hub's engine, and each tick through the hub's own InfluxStore (the line protocol
of docs/hub.md, Schema).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from beacon_hub.engine import Engine, EngineConfig, Readings
from beacon_hub.health import Metrics
from beacon_hub.hubconfig import InfluxConfig
from beacon_hub.site import Site, load_site
from beacon_hub.stores import InfluxStore, TickRecord
from simulator.agents import PopulationConfig
from simulator.scenario import RunOptions, Simulation
from tests.integration.hubkit import ROOT
from tests.servers import InfluxDB

GRAFANA = ROOT / "deploy" / "grafana"
DASHBOARDS = sorted((GRAFANA / "dashboards").glob("*.json"))
START_S = 1_700_000_000.0
"""Simulated data starts here (Unix s); the dashboards' time range is set around it."""
STORE_S = 120.0
WAREHOUSE_S = 120.0
"""Long enough for dwell events (10 s, 60 s) and pallet moves (a pallet parked 60 s that leaves
its spot). Building each simulation's radio model costs ~10 s here, the two runs ~10 s each."""
STORE_OUTAGE_AFTER_S = 80.0
"""The store's gateways all fall silent after this, as in a switch failure: the gateway health
dashboard then shows fixes dropping to zero and, 30 s later (engine.lost_after_s), beacons
lost."""
INTERVAL = "10s"
"""What Grafana would pick for $__interval over a few minutes on a wide panel."""


@dataclass
class Loaded:
    influx: InfluxDB
    db: str
    sites: dict[str, Site]
    """By site kind: store, warehouse."""


def simulate(
    site: Site,
    population: PopulationConfig,
    duration_s: float,
    store: InfluxStore,
    outage_after_s: float | None = None,
) -> None:
    """The simulator's batches through the engine, one tick per window, into the store; after
    `outage_after_s` the batches are lost on their way (the engine still ticks)."""
    sim = Simulation(
        site,
        RunOptions(duration_s=duration_s, seed=7, start_s=START_S, population=population),
    )
    engine = Engine(site, EngineConfig())
    for window in sim.windows():
        if outage_after_s is None or window.t0_s < START_S + outage_after_s:
            for batch in window.batches:
                engine.ingest(Readings.from_batch(batch))
        result = engine.tick(window.t1_s)
        table = result.fixes
        labels = [
            f"P-{1000 + i}" if kind == "pallet" else None for i, kind in enumerate(table.kinds)
        ]
        store.write(TickRecord(site.id, window.t1_s, table, result.events, labels))


@pytest.fixture(scope="module")
def loaded(influxdb: InfluxDB, tmp_path_factory: pytest.TempPathFactory) -> Loaded:
    db = "grafana_queries"
    influxdb.create_database(db)
    folder = tmp_path_factory.mktemp("grafana")
    cfg = InfluxConfig.model_validate(
        {"version": 1, "url": influxdb.url, "database": db, "spill_dir": str(folder / "spill")}
    )
    store = InfluxStore(cfg, Metrics())
    sites = {
        "store": load_site(ROOT / "config" / "store.yaml"),
        "warehouse": load_site(ROOT / "config" / "warehouse.yaml"),
    }
    try:
        simulate(
            sites["store"],
            PopulationConfig(carts=40, shoppers_per_hour=900.0),
            STORE_S,
            store,
            outage_after_s=STORE_OUTAGE_AFTER_S,
        )
        simulate(
            sites["warehouse"],
            PopulationConfig(pallets=120, forklifts=3, moves_per_hour=600.0),
            WAREHOUSE_S,
            store,
        )
        assert store.flush(60.0), "the InfluxDB store did not drain"
    finally:
        store.close()
    return Loaded(influxdb, db, sites)


def dashboard_queries(path: Path) -> list[tuple[str, str]]:
    """(where, query) for every panel target and every query variable of a dashboard."""
    data = json.loads(path.read_text())
    out = [
        (f"{path.name} panel {panel['title']!r}", target["query"])
        for panel in data["panels"]
        for target in panel.get("targets", [])
    ]
    out += [
        (f"{path.name} variable ${var['name']}", var["query"])
        for var in data["templating"]["list"]
        if var["type"] == "query"
    ]
    return out


def variables_for(loaded: Loaded, dashboard: str) -> dict[str, str]:
    """Values a user would pick: the site of the dashboard's kind and one of its zones etc."""
    kind = "warehouse" if dashboard.startswith("warehouse") else "store"
    site = loaded.sites[kind]
    busiest_zone = _busiest_cart_zone(loaded, site.id) if kind == "store" else ""
    return {
        "site": site.id,
        "zone": busiest_zone,
        "dock": "dock",
        "tick_s": "1",
        "gateway": site.gateways[0].id,
    }


def _busiest_cart_zone(loaded: Loaded, site: str) -> str:
    rows = loaded.influx.rows(
        f'SELECT "zone" FROM "fix" WHERE "site" = \'{site}\' AND "kind" = \'cart\' '
        "AND \"zone\" != ''",
        loaded.db,
    )
    zones = [str(r["zone"]) for r in rows]
    assert zones, "the simulated store produced no cart fixes in zones"
    return max(set(zones), key=zones.count)


def grafana_substitute(query: str, variables: dict[str, str]) -> str:
    """What Grafana's InfluxDB data source does before sending a raw query."""
    start_ms = int(START_S * 1000)
    end_ms = int((START_S + max(STORE_S, WAREHOUSE_S) + 60) * 1000)
    query = query.replace("$timeFilter", f"time >= {start_ms}ms and time <= {end_ms}ms")
    query = query.replace("$__interval", INTERVAL)

    def value(m: re.Match[str]) -> str:
        name = m.group(1) or m.group(2)
        if name not in variables:
            raise AssertionError(f"query uses ${name}, which the test does not know: {query}")
        return variables[name]

    return re.sub(r"\$\{(\w+)\}|\$(\w+)", value, query)


def test_dashboards_and_provisioning_files_are_well_formed() -> None:
    assert [p.name for p in DASHBOARDS] == ["gateway-health.json", "store.json", "warehouse.json"]
    uids = set()
    for path in DASHBOARDS:
        data = json.loads(path.read_text())
        uids.add(data["uid"])
        for panel in data["panels"]:
            for target in panel["targets"]:
                assert target["datasource"]["uid"] == "beacon-hub-influx", path
                assert target["rawQuery"] is True
    assert len(uids) == len(DASHBOARDS)
    ds = yaml.safe_load(
        (GRAFANA / "provisioning" / "datasources" / "beacon-hub-influxdb.yaml").read_text()
    )
    assert ds["datasources"][0]["uid"] == "beacon-hub-influx"
    assert ds["datasources"][0]["type"] == "influxdb"
    # the hub's default database, so the shipped files fit together untouched
    assert ds["datasources"][0]["database"] == InfluxConfig().database
    providers = yaml.safe_load(
        (GRAFANA / "provisioning" / "dashboards" / "beacon-hub.yaml").read_text()
    )
    assert providers["providers"][0]["type"] == "file"


@pytest.mark.parametrize(
    ("dashboard", "where", "query"),
    [(p.name, where, q) for p in DASHBOARDS for where, q in dashboard_queries(p)],
    ids=lambda v: re.sub(r"\W+", "-", str(v))[:60] if isinstance(v, str) else None,
)
def test_every_dashboard_query_returns_rows(
    loaded: Loaded, dashboard: str, where: str, query: str
) -> None:
    sent = grafana_substitute(query, variables_for(loaded, dashboard))
    rows = loaded.influx.rows(sent, loaded.db)
    assert rows, f"{where} returned no rows: {sent}"
    assert any(any(v not in (None, 0, "") for k, v in r.items() if k != "time") for r in rows), (
        f"{where} returned only empty values: {sent}"
    )
