"""`beacon-hub demo`: broker, simulated store and warehouse, hub, SQLite, dashboard: one process.

Nothing needs to be installed beyond the package: the broker is Mosquitto when it is on PATH and
amqtt otherwise (embedded_broker.py), the sites are the example store and warehouse, the data go
to a temporary folder unless `data_dir` is set.

Threads: the main thread owns signals and prints progress; the hub runs its service loop on a
thread of its own (as `beacon-hub run` runs it on the main thread); each site's simulator paces
its gateway batches on a thread and publishes them through the broker like real gateways. They
meet only in `_Demo` below, through `threading.Event`s and read-only looks at thread-safe
counters (prometheus metrics, a separate SQLite connection).

Stopping (Ctrl-C, SIGTERM or `--duration`): simulators first (their gateways publish `offline`),
then the hub (it stores and acknowledges what it holds), then the broker.
"""

from __future__ import annotations

import csv
import dataclasses
import logging
import math
import signal
import sqlite3
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path
from types import FrameType
from typing import Any, TextIO

from pydantic import BaseModel, ConfigDict, Field

from beacon_hub.commands import EXIT_ERROR, EXIT_OK
from beacon_hub.config_loader import load_model
from beacon_hub.embedded_broker import BrokerChoice, EmbeddedBroker, start_broker
from beacon_hub.engine import EngineConfig
from beacon_hub.errors import BeaconHubError, ConfigError
from beacon_hub.hubconfig import HttpConfig, HubConfig
from beacon_hub.site import Site, load_site

__all__ = [
    "DEMO_HTTP_PORT",
    "ENV_PREFIX",
    "DemoConfig",
    "DemoSimulation",
    "load_demo_config",
    "run_demo",
]

ENV_PREFIX = "BEACON_HUB_DEMO"
DEMO_HTTP_PORT = 8080
"""The dashboard's port unless `--set http.port=...` (0 picks a free one)."""
SERVE_TIMEOUT_S = 30.0
"""Broker, hub and HTTP are up within a second or two here; only something broken takes this."""
STOP_TIMEOUT_S = 30.0
"""Each thread's share of a clean stop; the hub's SQLite writer needs well under a second."""
ONLINE_WITHIN_S = 10.0
"""A gateway counts as online in the progress line if a batch arrived this recently (gateways
publish every second; the hub's own offline rule is in the dashboard's gateway panel)."""
CATCH_UP_S = 0.5
"""Simulated windows that ended longer ago than this when their turn comes are not published
(a real gateway has nothing to send for the time before it was switched on)."""
TRACKED_WITHIN_S = 10.0
"""A beacon counts as tracked if it had a fix this recently."""

EXAMPLES_DIR = Path(__file__).with_name("examples")
"""config/'s example store, warehouse and promotions, carried in the package (symbolic links in
the repository, files in a wheel) so that `beacon-hub demo` needs no repository."""

log = logging.getLogger(__name__)


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class DemoSimulation(_Section):
    """What the simulated gateways hear (simulator/agents.py); defaults follow `beacon-sim`."""

    seed: int = 1
    carts: int = Field(default=60, ge=0, le=10_000)
    shoppers_per_hour: float = Field(default=240.0, ge=0, le=100_000)
    pallets: int = Field(default=600, ge=0, le=100_000)
    forklifts: int = Field(default=3, ge=0, le=100)
    moves_per_hour: float = Field(default=600.0, ge=0, le=100_000)
    """Ten times `beacon-sim`'s 60, so that pallets visibly move within the first minute."""


class DemoConfig(_Section):
    """`beacon-hub demo`'s one schema: `--set key=value` and `BEACON_HUB_DEMO__KEY` reach it."""

    sites: list[Path] = Field(
        default=[EXAMPLES_DIR / "store.yaml", EXAMPLES_DIR / "warehouse.yaml"], min_length=1
    )
    """Site files (relative ones from the working directory); by default the example store and
    warehouse of config/, which the package carries, so the demo runs from any folder."""
    broker: BrokerChoice = "auto"
    """auto: Mosquitto when `mosquitto` is on PATH, else the embedded amqtt broker."""
    data_dir: Path | None = None
    """SQLite database and the demo's asset labels; a temporary folder (removed at the end)
    unless set."""
    simulation: DemoSimulation = DemoSimulation()
    engine: EngineConfig = EngineConfig()
    http: HttpConfig = HttpConfig(port=DEMO_HTTP_PORT)
    consent_share: float = Field(default=0.5, ge=0, le=1)
    """Share of the simulated shoppers who said yes (their carts are tracked under a pseudonym;
    the others only count in zone occupancy: docs/privacy.md)."""
    promotions: Path | None = EXAMPLES_DIR / "promotions.yaml"
    """Promotion rules (docs/promotions.md); skipped when the file does not exist."""
    progress_every_s: float = Field(default=5.0, gt=0, le=3600)


def load_demo_config(overrides: dict[str, Any] | None = None) -> DemoConfig:
    return load_model(DemoConfig, env_prefix=ENV_PREFIX, overrides=overrides)


def _check_sites(cfg: DemoConfig) -> list[Site]:
    missing = [p for p in cfg.sites if not p.is_file()]
    if missing:
        names = ", ".join(str(p) for p in missing)
        raise ConfigError(
            "demo",
            [
                (
                    f"sites: {names} not found from {Path.cwd()}; give "
                    "--set 'sites=[path/a.yaml,path/b.yaml]'"
                )
            ],
        )
    return [load_site(p) for p in cfg.sites]


def _labels(site: Site, beacon_ids: tuple[str, ...]) -> list[tuple[str, str, str]]:
    """(beacon, label, kind) for the simulated tags: pallets P-1001..., carts C-0001...

    The warehouse's operators search pallets by label ("where is P-1042?")."""
    rows: list[tuple[str, str, str]] = []
    counters: dict[str, int] = {}
    prefix = {"pallet": ("P-", 1000), "cart": ("C-", 0), "asset": ("A-", 0)}
    for beacon in beacon_ids:
        kind = site.kind_of(beacon)
        if kind is None or kind.kind not in prefix:
            continue
        head, base = prefix[kind.kind]
        n = counters[kind.kind] = counters.get(kind.kind, 0) + 1
        rows.append((beacon, f"{head}{base + n:04d}", kind.kind))
    return rows


class _SiteFeed:
    """One site's simulated gateways, publishing a batch per gateway per second of wall time."""

    def __init__(self, site: Site, cfg: DemoSimulation, broker_url: str, stop: threading.Event):
        from simulator.radio import REALISTIC_RADIO  # noqa: PLC0415  # numpy: keeps --help fast
        from simulator.scenario import RunOptions, Simulation, default_population  # noqa: PLC0415

        population = default_population(site)
        if site.kind == "store":
            population = dataclasses.replace(
                population, carts=cfg.carts, shoppers_per_hour=cfg.shoppers_per_hour
            )
        elif site.kind == "warehouse":
            population = dataclasses.replace(
                population,
                pallets=cfg.pallets,
                forklifts=cfg.forklifts,
                moves_per_hour=cfg.moves_per_hour,
            )
        options = RunOptions(
            duration_s=365 * 86_400.0,  # ended by `stop`; windows are made one at a time
            seed=cfg.seed,
            start_s=math.floor(time.time()),
            population=population,
            radio=REALISTIC_RADIO,
        )
        try:
            self.sim = Simulation(site, options)
        except ValueError as e:
            raise BeaconHubError(f"demo: cannot simulate {site.id}: {e}") from e
        self.site = site
        self._url = broker_url
        self._stop = stop
        self.readings = 0
        self.failure: BaseException | None = None
        self.thread = threading.Thread(target=self._run, name=f"demo-sim-{site.id}", daemon=True)

    def _run(self) -> None:
        from simulator.publisher import MqttPublisher  # noqa: PLC0415

        sim = self.sim
        start = sim.options.start_s
        try:
            publisher = MqttPublisher(self._url, sim)
        except BeaconHubError as e:
            self.failure = e
            self._stop.set()
            return
        # Simulated time is Unix time: window [t0, t1) goes out when the wall clock reaches t1.
        # Windows that passed while the hub was starting are simulated but not sent: the hub
        # would refuse their readings as late.
        end = start
        try:
            for window in sim.windows():
                if window.t1_s < time.time() - CATCH_UP_S:
                    continue
                if self._stop.wait(max(0.0, window.t1_s - time.time())):
                    break
                publisher.write(sim, window)
                self.readings += int(window.reading_t_s.size)
                end = window.t1_s
        except Exception as e:  # noqa: BLE001  # reported by the main thread, which stops the demo
            self.failure = e
            self._stop.set()
        finally:
            # the gateways' `offline` status carries the end of what was actually simulated
            sim.options = dataclasses.replace(sim.options, duration_s=max(end - start, 0.0))
            try:
                publisher.close()
            except BeaconHubError as e:
                log.warning("%s: %s", self.site.id, e)


class _Demo:
    def __init__(self, cfg: DemoConfig, data_dir: Path, out: TextIO) -> None:
        self.cfg = cfg
        self.data_dir = data_dir
        self.out = out
        self.stop = threading.Event()
        self.sites = _check_sites(cfg)
        self.broker: EmbeddedBroker | None = None
        self.hub: Any = None
        self.hub_failure: BaseException | None = None
        self.hub_thread: threading.Thread | None = None
        self.feeds: list[_SiteFeed] = []
        self.db_path = data_dir / "beacon-hub.sqlite"

    def hub_config(self, broker_url: str) -> HubConfig:
        """The hub's config: both sites, SQLite in the data folder, labels for the simulated
        tags, consent for a share of the shoppers, the promotion rules if present."""
        labels = [row for feed in self.feeds for row in _labels(feed.site, feed.sim.beacon_ids)]
        assets = self.data_dir / "demo-assets.csv"
        with assets.open("w", newline="", encoding="utf-8") as f:
            writer = csv.writer(f)
            writer.writerow(["beacon", "label", "kind"])
            writer.writerows(labels)
        carts = [beacon for beacon, _, kind in labels if kind == "cart"]
        consent = self.data_dir / "demo-consent.csv"
        with consent.open("w", newline="", encoding="utf-8") as f:
            writer = csv.writer(f)
            writer.writerow(["beacon"])
            writer.writerows([b] for b in carts[: round(len(carts) * self.cfg.consent_share)])
        promotions = self.cfg.promotions
        return HubConfig.model_validate(
            {
                "sites": [{"site": p} for p in self.cfg.sites],
                "broker": {"url": broker_url},
                "engine": self.cfg.engine,
                "stores": {"sqlite": {"path": self.db_path}},
                "http": self.cfg.http,
                "assets": assets,
                "privacy": {"consent_file": consent},
                "promotions": {
                    "rules": promotions if promotions and promotions.is_file() else None
                },
            }
        )

    def start(self) -> str:
        """Broker, simulators (not yet publishing), hub; returns the dashboard URL once served."""
        from beacon_hub.service import Hub  # noqa: PLC0415  # numpy: keeps --help fast

        self.broker = start_broker(self.cfg.broker)
        self.feeds = [
            _SiteFeed(site, self.cfg.simulation, self.broker.url, self.stop) for site in self.sites
        ]
        self.hub = Hub(self.hub_config(self.broker.url))
        self.hub_thread = threading.Thread(target=self._serve, name="beacon-hub-service")
        self.hub_thread.start()
        url = self._wait_served()
        for feed in self.feeds:
            feed.thread.start()
        return url

    def _serve(self) -> None:
        try:
            self.hub.run(self.stop)
        except Exception as e:  # noqa: BLE001  # reported by the main thread
            self.hub_failure = e
            self.stop.set()

    def _wait_served(self) -> str:
        http = self.hub.http
        if http is None:
            raise BeaconHubError("demo: http.enabled is false; the demo is the dashboard")
        bind = self.cfg.http.bind
        host = "127.0.0.1" if bind in ("0.0.0.0", "", "::") else bind  # noqa: S104  # a name to print
        url = f"http://{host}:{http.port}/"
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        deadline = time.monotonic() + SERVE_TIMEOUT_S
        while not self.stop.is_set():
            if self.hub.ready.is_set():
                try:
                    with opener.open(url + "healthz", timeout=2):
                        return url
                except urllib.error.HTTPError:
                    return url  # it answers: /healthz says 503 until the first ticks
                except OSError:
                    pass
            if time.monotonic() > deadline:
                raise BeaconHubError(f"demo: the hub did not serve {url} in {SERVE_TIMEOUT_S:g} s")
            time.sleep(0.05)
        return url

    def progress(self, elapsed_s: float, readings_before: float, interval_s: float) -> float:
        """Prints one progress line; returns the readings count it saw."""
        registry = self.hub.metrics.registry
        readings = 0.0
        fixes = 0.0
        tracked = self._tracked()
        now = time.time()
        online: dict[str, int] = {}
        for metric in registry.collect():
            for s in metric.samples:
                if s.name == "beacon_hub_readings_total":
                    readings += s.value
                elif s.name == "beacon_hub_fixes_total":
                    fixes += s.value
                elif s.name == "beacon_hub_gateway_last_seen_timestamp_seconds" and (
                    now - s.value <= ONLINE_WITHIN_S
                ):
                    online[s.labels["site"]] = online.get(s.labels["site"], 0) + 1
        parts = [
            f"{site.id} {tracked.get(site.id, 0)} tracked, "
            f"{online.get(site.id, 0)}/{len(site.gateways)} gateways online"
            for site in self.sites
        ]
        rate = (readings - readings_before) / interval_s if interval_s > 0 else 0.0
        print(
            f"demo: {elapsed_s:5.0f} s, {rate:,.0f} readings/s, {fixes:,.0f} fixes; "
            + "; ".join(parts),
            file=self.out,
            flush=True,
        )
        return readings

    def _tracked(self) -> dict[str, int]:
        """Beacons with a recent fix, per site, from the hub's SQLite (read-only, WAL)."""
        try:
            db = sqlite3.connect(f"file:{self.db_path}?mode=ro", uri=True, timeout=1.0)
        except sqlite3.Error:
            return {}
        try:
            rows = db.execute(
                "SELECT site, COUNT(*) FROM latest WHERE t >= ? GROUP BY site",
                (time.time() - TRACKED_WITHIN_S,),
            ).fetchall()
        except sqlite3.Error:
            return {}  # the hub has not created its tables yet
        finally:
            db.close()
        return {str(site): int(n) for site, n in rows}

    def shutdown(self) -> None:
        self.stop.set()
        # paho logs an error when its network thread races the hub's own disconnect; on the way
        # out that is noise, not news.
        logging.getLogger("beacon_hub.paho").setLevel(logging.CRITICAL)
        for feed in self.feeds:
            if feed.thread.is_alive():
                feed.thread.join(STOP_TIMEOUT_S)
        if self.hub_thread is not None:
            self.hub_thread.join(STOP_TIMEOUT_S)
        if self.broker is not None:
            self.broker.stop()

    def failure(self) -> BaseException | None:
        for feed in self.feeds:
            if feed.failure is not None:
                return feed.failure
        return self.hub_failure


def run_demo(cfg: DemoConfig, duration_s: float | None = None, out: TextIO = sys.stdout) -> int:
    """Runs until SIGINT/SIGTERM or `duration_s`; returns the exit status (0 when all went well)."""
    if duration_s is not None and not duration_s > 0:
        raise BeaconHubError(f"--duration must be positive, got {duration_s:g}")
    logging.basicConfig(level=logging.WARNING, format="beacon-hub demo: %(name)s: %(message)s")
    with tempfile.TemporaryDirectory(prefix="beacon-hub-demo-") as tmp:
        data_dir = cfg.data_dir or Path(tmp)
        data_dir.mkdir(parents=True, exist_ok=True)
        demo = _Demo(cfg, data_dir, out)

        def on_signal(_signum: int, _frame: FrameType | None) -> None:
            demo.stop.set()

        previous = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
        try:
            return _serve(demo, duration_s)
        finally:
            demo.shutdown()
            for s, handler in previous.items():
                signal.signal(s, handler)


def _serve(demo: _Demo, duration_s: float | None) -> int:
    cfg = demo.cfg
    print(
        "demo: starting the broker, the simulated gateways and the hub "
        "(the hub's radio maps take a few seconds)",
        file=demo.out,
        flush=True,
    )
    url = demo.start()
    if demo.stop.is_set():
        return _report_end(demo)
    broker = demo.broker.kind if demo.broker else "?"
    print(f"dashboard: {url}", file=demo.out, flush=True)
    print(
        f"demo: {broker} broker on {demo.broker.url if demo.broker else '?'}, sites "
        + ", ".join(s.id for s in demo.sites)
        + f", data in {demo.data_dir}; Ctrl-C stops",
        file=demo.out,
        flush=True,
    )
    started = time.monotonic()
    end = math.inf if duration_s is None else started + duration_s
    seen = 0.0
    last = started
    while not demo.stop.is_set():
        now = time.monotonic()
        if demo.stop.wait(max(0.0, min(last + cfg.progress_every_s, end) - now)):
            break
        now = time.monotonic()
        seen = demo.progress(now - started, seen, now - last)
        last = now
        if now >= end:
            break
    return _report_end(demo)


def _report_end(demo: _Demo) -> int:
    demo.shutdown()
    failure = demo.failure()
    if failure is not None:
        print(f"beacon-hub demo: stopped by an error: {failure}", file=sys.stderr)
        return EXIT_ERROR
    totals = demo.hub.totals if demo.hub is not None else {}
    print(
        f"demo: stopped; {totals.get('batches', 0)} batches, {totals.get('fixes', 0)} fixes, "
        f"{totals.get('events', 0)} events",
        file=demo.out,
        flush=True,
    )
    return EXIT_OK
