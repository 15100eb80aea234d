"""A small live world for the web tests: the example store and warehouse, real gateway batches
through the real Ingestor into real Engines, ticks into a real SQLite store and LiveState,
served by the real WebServer on loopback. Nothing is mocked; only the clock of the data is
chosen (the last minute), so history and stats queries have something to find."""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from beacon_hub.engine import Engine, EngineConfig
from beacon_hub.health import Metrics
from beacon_hub.hubconfig import HttpConfig, IngestConfig
from beacon_hub.ingest import Accepted, HeartbeatUpdate, Inbound, Ingestor, StatusUpdate
from beacon_hub.livestate import LiveState, zone_occupancy
from beacon_hub.pathloss import mean_rssi_dbm
from beacon_hub.registry import Asset, AssetRegistry
from beacon_hub.site import Site, load_site
from beacon_hub.stores import SqliteReader, SqliteStore, TickRecord
from beacon_hub.web import WebServer
from beacon_hub.wire import (
    GatewayStatus,
    Heartbeat,
    ReadingBatch,
    Telemetry,
    encode_batch,
    encode_heartbeat,
    encode_status,
    heartbeat_topic,
    readings_topic,
    status_topic,
)

ROOT = Path(__file__).resolve().parents[2]
PALLET_UUID = "5e0b9c3a-71d4-4f86-a2e9-c48d16b7f035"
CART_UUID = "3d1a7b52-8c4e-4f0a-9b6d-2e5f8a1c7d40"
DOCK_PALLET = f"ibeacon:{PALLET_UUID}:1:1042"
BAY_PALLET = f"ibeacon:{PALLET_UUID}:1:7"
VANISHING = f"ibeacon:{PALLET_UUID}:1:99"
CART_STILL = f"ibeacon:{CART_UUID}:1:1"
CART_MOVING = f"ibeacon:{CART_UUID}:1:2"
TICKS = 30
_HTTP = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def get(
    url: str, headers: dict[str, str] | None = None, timeout: float = 10.0
) -> tuple[int, bytes]:
    req = urllib.request.Request(url, headers=headers or {})  # noqa: S310  # loopback only
    try:
        with _HTTP.open(req, timeout=timeout) as r:
            return int(r.status), bytes(r.read())
    except urllib.error.HTTPError as e:
        return int(e.code), bytes(e.read())


def get_json(url: str, headers: dict[str, str] | None = None) -> Any:
    status, body = get(url, headers)
    assert status == 200, (url, status, body[:300])
    return json.loads(body)


def centre(site: Site, zone: str) -> tuple[float, float]:
    z = next(z for z in site.zones if z.id == zone)
    xs, ys = zip(*z.polygon, strict=True)
    return (min(xs) + max(xs)) / 2, (min(ys) + max(ys)) / 2


@dataclass
class World:
    path: Path
    config: HttpConfig
    sites: dict[str, Site]
    store: SqliteStore
    live: LiveState
    server: WebServer
    engines: dict[str, Engine]
    ingestor: Ingestor
    spots: dict[str, dict[str, tuple[float, float]]] = field(default_factory=dict)
    seq: int = 0
    t: float = 0.0
    snapshots: int = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.port}"

    def step(self, t: float, silent: frozenset[str] = frozenset()) -> None:
        """One tick of every site at hub time t: batches from every gateway, then the tick."""
        self.seq += 1
        for sid, site in self.sites.items():
            for g in site.gateways:
                beacons: list[str] = []
                rssi: list[float] = []
                for beacon, (x, y) in self.spots[sid].items():
                    if beacon in silent:
                        continue
                    d = float(np.sqrt((g.x - x) ** 2 + (g.y - y) ** 2 + (g.z - 1.0) ** 2))
                    level = float(mean_rssi_dbm(np.array([d]), -59.0, 2.2)[0])
                    if level > -95:
                        beacons.append(beacon)
                        rssi.append(level)
                tlm = (Telemetry(VANISHING, battery_mv=2100),) if VANISHING in beacons else ()
                batch = ReadingBatch(
                    gw=g.id,
                    boot="b00710000000000a",
                    seq=self.seq,
                    sent=t - 0.2,
                    beacons=tuple(beacons),
                    b=tuple(range(len(beacons))),
                    dt_ms=tuple(100.0 for _ in beacons),
                    rssi=tuple(rssi),
                    tx=tuple(None for _ in beacons),
                    tlm=tlm,
                )
                item = Inbound(t, readings_topic(sid, g.id), encode_batch(batch), 0, 0)
                res = self.ingestor.handle(item)
                assert isinstance(res, Accepted), res
                self.live.gateway_batch(res, time.time())
                if self.live.registry is not None and batch.tlm:
                    self.live.registry.telemetry(batch.tlm)
                self.engines[sid].ingest(res.readings)
            result = self.engines[sid].tick(t)
            occupancy = zone_occupancy(result.fixes)
            table = result.fixes
            registry = self.live.registry
            labels = registry.labels(table.beacons) if registry is not None else [None] * len(table)
            self.store.commit(TickRecord(sid, t, table, result.events, labels), (), ())
            self.live.tick(sid, t, table, result.events, labels, occupancy)
        self.t = t

    def report(self, sid: str, report: GatewayStatus | Heartbeat) -> None:
        """A gateway's status or heartbeat through the Ingestor into the live view, as the
        service hands it over (service._handle)."""
        if isinstance(report, GatewayStatus):
            topic, payload = status_topic(sid, report.gw), encode_status(report)
        else:
            topic, payload = heartbeat_topic(sid, report.gw), encode_heartbeat(report)
        res = self.ingestor.handle(Inbound(time.time(), topic, payload, 0, 0))
        assert isinstance(res, StatusUpdate | HeartbeatUpdate), res
        self.live.gateway_update(res, time.time())


def build_world(tmp: Path, config: HttpConfig | None = None) -> World:
    config = config or HttpConfig(port=0, idle_at_dock_s=5.0, occupancy_sample_s=0.0)
    metrics = Metrics()
    sites = {
        s.id: s
        for s in (load_site(ROOT / "config/warehouse.yaml"), load_site(ROOT / "config/store.yaml"))
    }
    path = tmp / "hub.sqlite"
    store = SqliteStore(path, metrics)
    registry = AssetRegistry(
        [
            Asset(DOCK_PALLET, "P-1042", "pallet"),
            Asset(BAY_PALLET, "P-0007", "pallet"),
            Asset(VANISHING, "P-0099", "pallet"),
        ]
    )
    live = LiveState(sites.values(), config, registry, occupancy_sink=store.write_occupancy)
    server = WebServer(
        config,
        metrics=metrics,
        health=lambda: (True, {"sites": {}}),
        live=live,
        reader=SqliteReader(path),
    )
    engines = {
        sid: Engine(s, EngineConfig(plan_losses=False, lost_after_s=5.0, min_dwell_s=1.0))
        for sid, s in sites.items()
    }
    ingestor = Ingestor(
        {sid: frozenset(g.id for g in s.gateways) for sid, s in sites.items()},
        IngestConfig(),
        metrics,
    )
    world = World(path, config, sites, store, live, server, engines, ingestor)
    st = sites["store-demo"]
    world.spots = {
        "warehouse-demo": {
            DOCK_PALLET: (22.5, 0.5),  # at the door of dock-1 (x 20-23.6, y 0-4)
            BAY_PALLET: (10.0, 20.0),
            VANISHING: (30.0, 10.0),
        },
        "store-demo": {CART_STILL: centre(st, "entrance"), CART_MOVING: centre(st, "checkout-1")},
    }
    return world


def run_world(world: World) -> None:
    """TICKS ticks ending now: the cart moves from checkout-1 to the entrance halfway, the
    vanishing pallet falls silent after a third (lost after 5 s)."""
    t0 = float(np.floor(time.time())) - TICKS
    st = world.sites["store-demo"]
    for i in range(TICKS):
        if i == TICKS // 2:
            world.spots["store-demo"][CART_MOVING] = centre(st, "entrance")
        silent = frozenset({VANISHING}) if i > TICKS // 3 else frozenset()
        world.step(t0 + i, silent)
