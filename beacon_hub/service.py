"""The live hub (`beacon-hub run`): MQTT in -> engine per site -> MQTT out and stores.

The engine is pure; this module owns the clock, the threads and the order of things. One
service thread (the caller of `Hub.run`) does all the work; paho's network thread only fills the
inbox (ingest.py), the InfluxDB writer and the HTTP server have threads of their own.

Ticks. A site ticks at multiples of `tick_interval_s` in hub time (gateway time corrected by the
learnt clock offset). Gateways close their windows on whole seconds of their clocks
(gateway/daemon.py); where NTP keeps those in step with the hub's, a round of batches arrives
as one burst just after T. Tick T runs as soon as its round is complete (every gateway heard
in the last two ticks whose batches end in step with the grid has sent the one for T), or once
a batch ends a whole interval past T (a gateway gone quiet does not hold a backlog up).
Otherwise the wall clock decides: `ROUND_WAIT_TICKS` intervals past T when gateways in step
are expected, `TICK_GRACE_S` past T when none are, once the inbox is empty; while batches wait
in it and the data is live (its newest reading within `max_lateness_s` of now), the same if no
gateway is in step, a whole interval past T if some are. A restarted hub continues from its last
stored tick, so a backlog the broker queued while it was down is replayed through the ticks it
missed (driven by the data) instead of arriving "late". While the broker link is down no tick
runs on the wall clock, and after the reconnect the outage's ticks are such a backlog too,
waiting for the gateways heard before it to deliver what they buffered (_link_changed). A
session resume after an overload (MqttLink.resume_if_dropped) is no outage: the link stays up
for the service, and wall-clock ticks wait only for the broker's first message after it.

Per tick, in this order: engine.tick -> zone occupancy (everyone) -> privacy (shoppers without
consent dropped, the others pseudonymised; nothing after this sees a raw shopper id) -> MQTT
outputs -> one SQLite transaction (fixes, events, the batch ledger, gateway sequence state, the
tick time) -> InfluxDB writer -> promotions -> the dashboard's live state; the readings messages
the tick consumed are acknowledged once its SQLite transaction commits (broker.ack =
after_store). A SIGKILL therefore loses at
most the readings after the last stored tick, and the broker sends those again.
"""

from __future__ import annotations

import json
import logging
import math
import queue
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from types import FrameType
from typing import Any, NamedTuple

from beacon_hub.calibration import load_calibration
from beacon_hub.consent import ConsentRegistry, ConsentStore, read_consent_file
from beacon_hub.engine import Engine
from beacon_hub.errors import BeaconHubError, ConfigError
from beacon_hub.health import Metrics
from beacon_hub.hubconfig import HubConfig
from beacon_hub.ingest import (
    RETIRED_BOOTS,
    Accepted,
    ConsentUpdate,
    HeartbeatUpdate,
    Inbound,
    Ingestor,
    MqttLink,
    StatusUpdate,
)
from beacon_hub.livestate import LiveState, zone_occupancy
from beacon_hub.outputs import SiteOutputs
from beacon_hub.privacy import RETENTION_EVERY_S, Privacy, Retention, load_key, retention_job
from beacon_hub.promotions import Evaluator, Promotions, PseudonymConsent, load_rules
from beacon_hub.registry import AssetRegistry, read_assets
from beacon_hub.site import Site, load_site
from beacon_hub.stores import (
    ErasureFeed,
    InfluxStore,
    LedgerEntry,
    SavedGateway,
    SqliteReader,
    SqliteStore,
    Store,
    TickRecord,
    TickWrite,
)
from beacon_hub.thinning import FixThinner
from beacon_hub.web import WebServer

__all__ = ["Hub", "run_hub"]

log = logging.getLogger(__name__)

TICK_GRACE_S = 0.1
"""With no gateway in step with the tick grid, wait this long past a tick for data before
ticking on the wall clock alone: the latency goal is one tick + 100 ms from a batch's arrival
to its fix."""
IN_STEP_S = 0.25
"""A gateway is in step with the tick grid when its newest batch ends less than this (at most a
quarter of the tick interval) after a whole tick in hub time, or up to `EARLY_S` before one:
hub time is about the arrival time, so this covers a window closed late on a busy gateway plus
the network's jitter."""
EARLY_S = 0.05
"""See IN_STEP_S: a clock a little behind the hub's that the offset has not absorbed."""
ROUND_WAIT_TICKS = 0.6
"""How long past a tick, in tick intervals, an incomplete round of gateways in step is waited
for: a straggler's batch (Wi-Fi, a busy gateway, 60 batches decoded one after another here)
gets into the tick it belongs to; a gateway that stays silent costs each tick this long until,
two ticks on, it is no longer expected. bench/hub_throughput.py on a slower day (2026-12-06):
with 0.3 s the last batches of a round came after the wait, and waited a whole tick more
(p95 latency 1,336 and 1,340 ms); with 0.6 s, 684, 819, 1,010 and 1,378 ms (a slow minute).
Relative to the interval so that a short tick never waits longer than itself."""
STARTUP_SETTLE_S = 1.0
"""After connecting, the broker delivers a queued backlog within milliseconds; wall-clock ticks
wait this long so they do not race ahead of it."""
MAX_CATCH_UP_S = 600.0
"""A restarted hub replays the ticks it missed if it was down at most this long (beyond, the
broker's queue limits have dropped readings anyway); otherwise it starts at the current time."""
MAX_TICKS_PER_STEP = 10
"""Ticks in a row before the service reads the inbox again while catching up."""
ACK_SETTLE_S = 0.5
"""A backlog's replay (a restart's) takes an empty inbox for the end of the broker's queue only
once every acknowledgement it owes has been sent and this long has passed: the broker holds
back what does not fit its in-flight window (20 messages by Mosquitto's default, 1000 in
deploy/mosquitto/mosquitto.conf) until the hub acknowledges, which it does after each tick's
transaction (broker.ack = after_store). Taken for silence, the gap ticked the rest of the
backlog on empty windows and refused it as late (300 of 360 readings once in four restarts
with a 20-message window). On loopback or a LAN the next messages follow an acknowledgement
within milliseconds; 0.5 s allows for a loaded host's thread scheduling, and is paid once, at
the backlog's end."""
BLOCKED_TICK_POLL_S = 0.01
"""The service loop's shortest wait for the inbox. A tick past its time that may not run yet (a
replay waiting for the broker's next window, ACK_SETTLE_S; a hold after a skip) woke the loop at
once, round after round: the service thread spun and starved the SQLite writer of the GIL, whose
commit the replay was waiting for (one took 58 s; a restart's 20 s backlog drained at 7,000
readings/s instead of 140,000-170,000). A message wakes the loop at once anyway."""
HEARD_BEFORE_OUTAGE_S = 5.0
"""Gateways that sent a batch ending this close (hub time) to the moment the broker was lost
are the ones whose buffered batches the outage's ticks wait for: a gateway sends one a second
(docs/gateway.md, batching.window), so five missed in a row is one already gone."""
GATEWAY_RETURN_S = 32.0
"""After reconnecting, the outage's ticks wait at most this long for those gateways' buffered
batches: each gateway reconnects on its own backoff, capped at 5 s by default and at most 30 s
as configured for a remote broker (docs/gateway.md, broker.reconnect_max_s), plus two of its
1 s batches; the wait ends as soon as all are back. Beyond, one that has not come back does
not hold the site up any longer (what it sends later is refused as late, and counted)."""
SHUTDOWN_FLUSH_S = 3.0
"""SIGTERM: time given to the stores to empty; what remains is on disk (the spill)."""
ASSET_SAVE_S = 60.0
"""How often battery and last-seen go to the assets table."""
HEALTH_STALE_TICKS = 5
"""/healthz turns 503 once a site has not ticked for this many intervals."""
HEALTH_NO_DATA_S = 60.0
"""/healthz turns 503 once a site has had no batch accepted for this long, counted from the
connection: its gateways send one a second each, so a minute of nothing is no gateway reaching
the hub (power, network, a broker ACL that grants the subscription and delivers nothing: the
hub ticked on empty windows and stayed green)."""


class _AckWatch:
    """The acknowledgements a tick owes the broker, from the service thread's hand-over of the
    tick to the SQLite writer, whose thread pays them after the transaction (ACK_SETTLE_S)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._owed = 0
        self._last_paid = -math.inf  # time.monotonic()

    def owe(self) -> None:
        with self._lock:
            self._owed += 1

    def paid(self) -> None:
        with self._lock:
            self._owed -= 1
            self._last_paid = time.monotonic()

    def settled(self) -> bool:
        """Nothing owed, and ACK_SETTLE_S since the last payment."""
        with self._lock:
            return not self._owed and time.monotonic() >= self._last_paid + ACK_SETTLE_S


@dataclass(slots=True)
class _SiteRun:
    site: Site
    engine: Engine
    outputs: SiteOutputs | None
    gateways: frozenset[str]
    thinner: FixThinner
    """What the stores keep (stores.deadband_m)."""
    next_tick: float | None = None
    data_wm: float = -math.inf
    reported: dict[str, float] = field(default_factory=dict)
    """Per gateway, the end (hub time) of its newest batch: when a tick's round is complete."""
    pending_acks: list[tuple[int, int, int]] = field(default_factory=list)
    """(mid, qos, session) of the messages the next stored tick acknowledges (after_store)."""
    ledger: list[LedgerEntry] = field(default_factory=list)
    touched: set[str] = field(default_factory=set)
    last_tick_wall: float | None = None
    last_data_wall: float | None = None
    """Wall clock of the newest batch accepted for the site (/healthz: data_age_s)."""
    tick_lag_s: float | None = None
    """How long after its data time the last tick ran (wall clock minus t)."""
    skipped: int = 0
    """Ticks the overload policy left out."""
    hold_until: float = -math.inf
    """After a skip, the wall clock alone does not run the newest tick before this (see
    _skip_if_behind)."""
    skip_logged: float = -math.inf
    """When the overload policy last warned about this site (ingest.log_every_s)."""
    backlog_until: float = -math.inf
    """Ticks before this are a broker outage's backlog: ticked in full, never skipped
    (infinite while the hub is disconnected or waits for its gateways; _link_changed)."""
    awaited: frozenset[str] = frozenset()
    """Gateways heard just before the broker was lost: until each has sent its batch for a
    tick (or `await_until`), the tick waits, so their buffered readings are not late."""
    await_until: float = math.inf
    """Wall clock: when the site stops waiting for `awaited` (GATEWAY_RETURN_S after the
    reconnect)."""


class _Round(NamedTuple):
    """A tick's round of batches, as far as the hub has heard it."""

    in_step: bool
    """Gateways in step with the grid are expected for the tick."""
    complete: bool
    """Each of them has sent its batch for it."""
    step: float
    """The tick interval."""

    @property
    def wait_s(self) -> float:
        """How long past the tick the wall clock waits for the round."""
        return ROUND_WAIT_TICKS * self.step if self.in_step else TICK_GRACE_S


def _round(reported: dict[str, float], t: float, step: float) -> _Round:
    """Tick `t`'s round: a gateway in step has sent its batch for `t` once one ends at or after
    t - step/2 (a gateway sends one batch per step). Gateways out of step join whichever tick
    follows their batches."""
    late, early = min(IN_STEP_S, step / 4.0), min(EARLY_S, step / 10.0)
    ends = []
    for end in reported.values():
        phase = end % step
        if end > t - 2.0 * step and (phase < late or phase > step - early):
            ends.append(end)
    return _Round(bool(ends), bool(ends) and min(ends) >= t - 0.5 * step, step)


def _load_sites(cfg: HubConfig) -> list[tuple[Site, Engine]]:
    out: list[tuple[Site, Engine]] = []
    seen: set[str] = set()
    for entry in cfg.sites:
        site = load_site(entry.site)
        if site.id in seen:
            raise ConfigError(str(entry.site), [f"{entry.site}: site id {site.id!r} given twice"])
        seen.add(site.id)
        cal = load_calibration(entry.calibration, site) if entry.calibration else None
        out.append((site, Engine(site, cfg.engine, cal)))
    return out


class Hub:
    """The service; construct (may raise ConfigError/StoreError), then `run(stop)`."""

    _resumed_at: float | None = None
    """When the service last resumed the session (MqttLink.resume_if_dropped), until it handles
    the next message: wall-clock ticks wait for that, at most STARTUP_SETTLE_S (_maybe_tick)."""

    def __init__(self, cfg: HubConfig, *, clock: Callable[[], float] = time.time) -> None:
        self.cfg = cfg
        self.clock = clock
        self.metrics = Metrics()
        sites = _load_sites(cfg)
        site_ids = [s.id for s, _ in sites]
        client_id = cfg.broker.client_id or ("beacon-hub-" + "-".join(sorted(site_ids)))[:128]
        self.link = MqttLink(
            cfg.broker, cfg.ingest, client_id=client_id, site_ids=site_ids, metrics=self.metrics
        )
        self.sqlite = SqliteStore(
            cfg.stores.sqlite.path, self.metrics, fixes=cfg.stores.sqlite.fixes
        )
        self.registry = AssetRegistry.from_db(self.sqlite.db)
        if cfg.assets is not None:
            self.registry.add(read_assets(cfg.assets))
        self.sites: dict[str, _SiteRun] = {}
        for site, engine in sites:
            self.sites[site.id] = self._site_run(site, engine, clock())
        self.ingestor = Ingestor(
            {s.id: r.gateways for s, r in ((r.site, r) for r in self.sites.values())},
            cfg.ingest,
            self.metrics,
        )
        # Consent, pseudonyms, promotions (docs/privacy.md, docs/promotions.md).
        site_map = {r.site.id: r.site for r in self.sites.values()}
        priv = cfg.privacy
        # The decisions the last run stored: the backlog its session queued comes before the
        # retained ones (consent.py, module docstring).
        self.consent = ConsentRegistry(
            read_consent_file(priv.consent_file) if priv.consent_file else None,
            publish=self.link.publish,
            sites=site_map,
            clock=clock,
            store=ConsentStore(self.sqlite.db, self.sqlite.submit),
        )
        self.privacy = Privacy(
            site_map,
            self.consent,
            load_key(priv, cfg.stores.sqlite.path),
            shopper_kinds=priv.shopper_kinds,
            registry=self.metrics.registry,
        )
        self.promotions = self._promotions(site_map)
        self.retention = Retention.from_config(cfg, site_map)
        self._last_retention = -math.inf
        self._restore_gateways()
        self.live = LiveState(
            (r.site for r in self.sites.values()),
            cfg.http,
            self.registry,
            clock=clock,
            occupancy_sink=self.sqlite.write_occupancy,
            metrics=self.metrics,
        )
        self.http: WebServer | None = None
        if cfg.http.enabled:
            try:
                self.http = WebServer(
                    cfg.http,
                    metrics=self.metrics,
                    health=self.health,
                    live=self.live,
                    reader=SqliteReader(cfg.stores.sqlite.path)
                    if cfg.stores.sqlite.fixes
                    else None,
                    consent=lambda: getattr(self, "consent", None),
                )
            except OSError as e:
                raise BeaconHubError(
                    f"http: cannot listen on {cfg.http.bind}:{cfg.http.port}: {e.strerror or e}"
                ) from e
        # Last: the InfluxDB writer starts a thread, so nothing that can fail comes after it.
        self.stores: list[Store] = []
        if cfg.stores.influx is not None:
            erasures = ErasureFeed(cfg.stores.sqlite.path)
            influx = InfluxStore(cfg.stores.influx, self.metrics, self.retention, erasures)
            self._add_influx(influx)
        self._connected_at: float | None = None
        """When the link last came up (each reconnect settles again)."""
        self._link_up = False
        """The broker link as _maybe_tick last saw it."""
        self._outage_from: float | None = None
        """When the link was lost, while it is (after the first connect)."""
        self._last_asset_save = time.monotonic()
        self._rate_t, self._rate_n = time.monotonic(), 0
        self.totals: dict[str, int] = {
            "fixes": 0,
            "thinned": 0,
            "events": 0,
            "batches": 0,
            "rejected": 0,
            "skipped_ticks": 0,
        }
        """Counted over this process's life; logged as JSON when it stops (operators, tests)."""
        self.ready = threading.Event()
        """Set once connected and serving (tests wait on it)."""
        self._live_from = clock()
        """Ticks before this are a backlog (a restart's): replayed in full, never skipped."""
        self._acks = _AckWatch()

    def _promotions(self, site_map: dict[str, Site]) -> Promotions | None:
        """The promotion rules' engine, if rules are configured (docs/promotions.md)."""
        cfg = self.cfg
        if cfg.promotions.rules is None:
            return None
        rules = load_rules(cfg.promotions.rules, site_map)
        evaluator = Evaluator(
            rules, site_map, self.privacy.kind_of, self.consent.has_consent,
            cfg.privacy.shopper_kinds,
            shoppers=PseudonymConsent(self.consent, self.privacy.pseudonym),
        )  # fmt: skip
        return Promotions(
            evaluator,
            publish=self.link.publish,
            submit=self.sqlite.submit,
            registry=self.metrics.registry,
            webhook=cfg.promotions.webhook,
        )

    def _site_run(self, site: Site, engine: Engine, now: float) -> _SiteRun:
        """A site's run, its ticks going on after the last one SQLite stored if that is recent."""
        cfg = self.cfg
        outputs = (
            SiteOutputs(site.id, self.link.publish, cfg.outputs.track_refresh_s)
            if cfg.outputs.mqtt
            else None
        )
        run = _SiteRun(
            site,
            engine,
            outputs,
            frozenset(g.id for g in site.gateways),
            FixThinner(cfg.stores.deadband_m, cfg.stores.heartbeat_s),
        )
        self.metrics.ticks_skipped.labels(site.id)  # the series exists (at 0) before a skip
        last = self.sqlite.last_tick(site.id)
        if last is not None and last >= now - MAX_CATCH_UP_S:
            run.next_tick = last + cfg.engine.tick_interval_s
            engine.resume(last)
        return run

    def _add_influx(self, influx: InfluxStore) -> None:
        """Adds the store and sends it again the ticks SQLite stored lately. Its writer holds a
        tick in memory until it is written or spilled (at most a flush interval plus one
        attempt); a SIGKILL loses that, and the restarted hub recomputes only the ticks after
        the last one SQLite stored. An identical point overwrites itself (found by
        bench/soak.py)."""
        self.stores.append(influx)
        cfg = influx.cfg
        window_s = cfg.flush_interval_s + cfg.timeout_s + 2 * self.cfg.engine.tick_interval_s
        for site in self.sites:
            last = self.sqlite.last_tick(site)
            if last is None:
                continue
            records = self.sqlite.recent_records(site, last - window_s)
            for record in records:
                influx.write(record)
            if records:
                log.info("%s: %d stored ticks sent to InfluxDB again", site, len(records))

    def _restore_gateways(self) -> None:
        """Each gateway's sequence (with what it may still send that was never taken), clock
        and earlier boots as the last run left them."""
        for g in self.sqlite.saved_gateways():
            if g.site in self.sites:
                retired = self.sqlite.retired_boots(g.site, g.gateway, g.boot, RETIRED_BOOTS)
                self.ingestor.restore(
                    g.site,
                    g.gateway,
                    g.boot,
                    g.next_seq,
                    g.offset_s,
                    retired,
                    last_sent=g.last_sent,
                    gaps=g.gaps,
                )

    # -- lifecycle

    def run(self, stop: threading.Event) -> None:
        """Serve until `stop` is set; then flush and close everything."""
        if self.http is not None:
            self.http.start()
            log.info(
                "dashboard, API and health on http://%s:%d/", self.cfg.http.bind, self.http.port
            )
        self.sqlite.start()
        self.link.start()
        try:
            while not stop.is_set():
                self._step()
        finally:
            self._shutdown()

    def _shutdown(self) -> None:
        # The SQLite writer finishes the ticks it holds and acknowledges them; what comes after
        # the last stored tick stays unacknowledged with the broker's session.
        if self.promotions is not None:
            self.promotions.close(SHUTDOWN_FLUSH_S)
        self.sqlite.submit(self.registry.save_job())
        self.sqlite.close()
        self.link.stop()
        for store in self.stores:
            if not store.flush(SHUTDOWN_FLUSH_S):
                log.warning(
                    "%s: %d points not yet written; kept in the spill", store.name, store.backlog()
                )
            store.close()
        if self.http is not None:
            self.http.stop()
        log.info("stopped; totals %s", json.dumps(self.totals, sort_keys=True))

    # -- the service loop

    def _step(self) -> None:
        now = self.clock()
        if self._connected_at is None and self.link.connected.is_set():
            self._connected_at = now
            self.ready.set()
        try:
            item = self.link.inbox.get(timeout=self._wait_s(now))
        except queue.Empty:
            item = None
        if item is not None:
            self._resumed_at = None  # the broker's queue is coming in (_maybe_tick)
            self._handle(item)
        elif self.link.resume_if_dropped():
            # The inbox had drained: messages an overload dropped are fetched again now.
            self._resumed_at = now
        self.metrics.inbox_depth.set(self.link.inbox.qsize())
        self._maybe_tick(self.clock())
        if time.monotonic() - self._last_asset_save >= ASSET_SAVE_S:
            self._last_asset_save = time.monotonic()
            self.sqlite.submit(self.registry.save_job())

    def _wait_s(self, now: float) -> float:
        step = self.cfg.engine.tick_interval_s
        if not self._link_up:
            return 0.2  # disconnected: only data runs a tick (_link_changed)
        due = [
            r.await_until
            if r.awaited
            else r.next_tick + _round(r.reported, r.next_tick, step).wait_s
            for r in self.sites.values()
            if r.next_tick is not None
        ]
        if not due:
            return 0.2
        return min(0.2, max(BLOCKED_TICK_POLL_S, min(due) - now))

    def _handle(self, item: Inbound) -> None:
        res = self.ingestor.handle(item)
        if isinstance(res, ConsentUpdate):
            if res.consent is not None:
                self.consent.apply(res.beacon, res.consent)
            # Once stored: acknowledged before, a decision a crash kept from the database would
            # come again only retained, after the next start's backlog (consent.py).
            link, mid, qos, session = self.link, item.mid, item.qos, item.session
            self.consent.when_saved(lambda: link.ack(mid, qos, session))
            return
        if isinstance(res, StatusUpdate | HeartbeatUpdate):
            # Gateway state for the live view, not data to store: acknowledged at once.
            self.live.gateway_update(res, item.arrival)
            self.link.ack(item.mid, item.qos, item.session)
            return
        if not isinstance(res, Accepted):
            self.totals["rejected"] += 1
            if not res.ours:
                if self.link.shared:
                    # Another hub's site, through a session shared by mistake (the same client
                    # id): acknowledged, it would be gone for the hub that serves it.
                    return
                # A subscription an earlier configuration left in our session: left, and the
                # message acknowledged (unacknowledged, they would fill the in-flight window).
                self.link.leave(item.topic)
                self.link.ack(item.mid, item.qos, item.session)
                return
            topic = self.cfg.ingest.dead_letter_topic
            if topic:
                self.link.publish(f"{topic}/{res.site}/{res.reason}", item.payload, 0, False)
            run = self.sites.get(res.site)
            after_store = self.cfg.broker.ack == "after_store"
            if res.reason == "duplicate" and run is not None and after_store:
                # A copy the broker sent again after a reconnect, whose first may still wait for
                # its tick's transaction: acknowledged with the site's next stored tick (ticks
                # commit in order). Acknowledged at once, the broker forgot the batch, and a hub
                # killed before that commit had lost it.
                run.pending_acks.append((item.mid, item.qos, item.session))
                return
            self.link.ack(item.mid, item.qos, item.session)  # refused for good: nothing to keep
            return
        run = self.sites[res.site]
        run.last_data_wall = item.arrival
        self.live.gateway_batch(res, item.arrival)
        counts = run.engine.ingest(res.readings)
        self.ingestor.count_samples(res.site, res.gateway, "late", counts.late)
        self.ingestor.count_samples(
            res.site, res.gateway, "impossible_rssi", counts.impossible_rssi
        )
        batch = res.batch
        if batch.tlm:
            self.registry.telemetry(batch.tlm)
        run.ledger.append(
            LedgerEntry(
                res.site,
                res.gateway,
                batch.boot,
                batch.seq,
                len(batch),
                counts.accepted,
                counts.late,
                counts.impossible_rssi,
                item.arrival,
            )
        )
        run.touched.add(res.gateway)
        self.totals["batches"] += 1
        self._rate_n += len(batch)
        t = res.readings.t
        newest = float(t.max()) if t.shape[0] else res.sent_hub
        ceiling = item.arrival + self.cfg.ingest.future_tolerance_s
        run.data_wm = max(run.data_wm, min(newest, ceiling))
        end = min(res.sent_hub, ceiling)
        if end > run.reported.get(res.gateway, -math.inf):
            run.reported[res.gateway] = end
        if run.next_tick is None:
            oldest = float(t.min()) if t.shape[0] else newest
            run.next_tick = self._align(max(oldest, item.arrival - MAX_CATCH_UP_S))
        if self.cfg.broker.ack == "after_ingest":
            self.link.ack(item.mid, item.qos, item.session)
        else:
            run.pending_acks.append((item.mid, item.qos, item.session))

    def _align(self, t: float) -> float:
        step = self.cfg.engine.tick_interval_s
        return math.ceil(t / step) * step

    def _link_changed(self, up: bool, now: float) -> None:
        """The broker link went down or came back (after the first connect). Down: ticks stop
        following the wall clock, since what the gateways buffer meanwhile comes only after
        the reconnect and a tick run now would refuse it as late (a 10 s outage lost 45 % of
        its readings so); being behind, they are not skipped either. Back: the outage's ticks
        are a backlog, run as its data arrives and ticked in full, waiting for the gateways
        heard just before the outage (_awaiting), at most MAX_CATCH_UP_S back."""
        self._link_up = up
        if not up:
            if self._connected_at is None:
                return  # not connected yet: nothing ticks on the clock anyway
            self._outage_from = now
            for run in self.sites.values():
                heard = now - HEARD_BEFORE_OUTAGE_S
                run.awaited |= {gw for gw, end in run.reported.items() if end >= heard}
                run.await_until = run.backlog_until = math.inf
            return
        if self._outage_from is None:
            return  # the first connect (_step)
        log.info(
            "broker back after %.1f s: ticking the outage from its data", now - self._outage_from
        )
        self._outage_from = None
        self._connected_at = now  # settles again: the session's queue comes first
        for run in self.sites.values():
            run.await_until = now + GATEWAY_RETURN_S
            if not run.awaited:
                run.backlog_until = now
            if run.next_tick is not None and run.next_tick < now - MAX_CATCH_UP_S:
                run.next_tick = self._align(now - MAX_CATCH_UP_S)

    def _awaiting(self, run: _SiteRun, t: float, now: float) -> bool:
        """Tick `t` of a broker outage waits for a gateway heard just before it that has not
        sent its batch for `t` yet: gateways reconnect on their own backoff and deliver their
        buffers then. The wait ends once all of them are back (a batch ending after the
        reconnect and within max_lateness_s of now), or GATEWAY_RETURN_S after the reconnect;
        then ticks are live again."""
        if not run.awaited:
            return False
        if self._link_up and self._connected_at is not None:
            # Back: sending live, past its buffer (which may hold batches sent after the hub's
            # reconnect: the gateway reconnects on its own backoff).
            live = max(self._connected_at, now - self.cfg.engine.max_lateness_s)
            back = all(run.reported.get(gw, -math.inf) >= live for gw in run.awaited)
            if back or now >= run.await_until:
                run.awaited, run.await_until = frozenset(), math.inf
                run.backlog_until = now
                return False
        due = t - 0.5 * self.cfg.engine.tick_interval_s  # as a round's (_round)
        return any(run.reported.get(gw, -math.inf) < due for gw in run.awaited)

    def _maybe_tick(self, now: float) -> None:
        # A resume is not an outage (MqttLink.up): the gateways buffered nothing for it.
        # Treated as one, it held wall-clock ticks for the 1 s settle and made each tick wait
        # for every gateway heard in the 5 s before: with 1 s ticks and gateways out of step
        # with the grid, 1.7-2.0 s from one tick to the next and a tick lag of 0.8-1.1 s
        # (0.14-0.16 s before it); now 1.01-1.05 s and 0.14-0.23 s.
        up = self.link.up
        if up != self._link_up:
            self._link_changed(up, now)
        settled = (
            up and self._connected_at is not None and now >= self._connected_at + STARTUP_SETTLE_S
        )
        if self._resumed_at is not None and now < self._resumed_at + STARTUP_SETTLE_S:
            # Until the broker's first message since the resume, as after any connect
            # (STARTUP_SETTLE_S) but only that long: the session's queue (what was dropped, and
            # after a window full of drops everything since) comes milliseconds after the
            # reconnect, to an inbox that was empty, and a tick due meanwhile would run ahead of
            # it and refuse its readings as late. (The overload test has none late either way.)
            settled = False
        idle = self.link.inbox.empty()
        step = self.cfg.engine.tick_interval_s
        lateness = self.cfg.engine.max_lateness_s
        for run in self.sites.values():
            if run.next_tick is None:
                if settled:
                    run.next_tick = self._align(now)
                continue
            for _ in range(MAX_TICKS_PER_STEP):
                self._skip_if_behind(run, self.clock())
                t = run.next_tick
                if self._awaiting(run, t, now):
                    break
                rnd = _round(run.reported, t, step)
                by_data = rnd.complete or run.data_wm >= t + step
                # Live (data within max_lateness of now): the wall clock drives, so a tick never
                # waits for the next batch. Replaying a backlog: only the data, or silence.
                live = run.data_wm >= now - lateness
                # A round in step still being decoded is this tick's: the inbox first (a tick
                # begun now would leave the rest to the next one), unless a whole tick late.
                busy_ok = live and (not rnd.in_step or now >= t + step)
                # Replaying, an empty inbox is the queue's end only once the broker has had our
                # acknowledgements, the last tick's included, and time to send what its window
                # held back (ACK_SETTLE_S).
                quiet = idle and (live or self._acks.settled())
                by_clock = (
                    settled
                    and (quiet or busy_ok)
                    and now >= t + rnd.wait_s
                    and (live or now >= run.hold_until)
                )
                if not (by_data or by_clock):
                    break
                self._tick(run, t)
                run.next_tick = t + step
                if run.next_tick < now - MAX_CATCH_UP_S:
                    run.next_tick = self._align(now - MAX_CATCH_UP_S)

    def _skip_if_behind(self, run: _SiteRun, now: float) -> None:
        """The overload policy's second half (docs/hub.md): a live site's next tick still
        waiting ingest.max_tick_lag_s after its interval has ended (a tick in step runs within
        it: the round's wait is 0.6 intervals) gives way to the newest one, counted and warned
        about. Without it an engine slower than the data falls behind for good (a tick of 20 ms
        for the demo's warehouse: 17 s behind after 70 s and growing), and the map shows where
        things were minutes ago. What the left-out ticks' readings would have placed is gone
        from the map and the history; the readings themselves were ingested (the next tick's
        window holds the newest) and acknowledged with that tick."""
        budget = self.cfg.ingest.max_tick_lag_s
        t = run.next_tick
        step = self.cfg.engine.tick_interval_s
        if budget is None or t is None or now - t - step <= budget:
            return
        if t < self._live_from or t < run.backlog_until:  # a restart's or an outage's backlog
            return
        newest = math.floor(now / step) * step
        skipped = round((newest - t) / step)
        if skipped <= 0:
            return
        run.next_tick = newest
        # Right after a stall the inbox can look empty for a moment before paho hands over what
        # the socket holds: the newest tick waits for its data (the site live again) up to
        # max_lateness_s, or it would run on an empty window and refuse the rest as late.
        run.hold_until = now + self.cfg.engine.max_lateness_s
        run.skipped += skipped
        self.metrics.ticks_skipped.labels(run.site.id).inc(skipped)
        self.totals["skipped_ticks"] += skipped
        if now - run.skip_logged >= self.cfg.ingest.log_every_s:
            run.skip_logged = now
            log.warning(
                "site %s: ticks %.1f s behind the clock (more than ingest.max_tick_lag_s = %g);"
                " %d left out, going on from the newest (more seen in"
                " beacon_hub_ticks_skipped_total)",
                run.site.id,
                now - t,
                budget,
                skipped,
            )

    def _acknowledger(self, acks: list[tuple[int, int, int]]) -> Callable[[bool], None]:
        """What the SQLite writer calls after a tick's transaction (broker.ack = after_store),
        committed or not (the writer has logged and counted a failure): the tick's messages
        acknowledged, and the debt in _AckWatch paid. Paho's ack is thread-safe."""
        link, watch = self.link, self._acks
        if acks:
            watch.owe()

        def acknowledge(_stored: bool) -> None:
            for mid, qos, session in acks:
                link.ack(mid, qos, session)
            if acks:
                watch.paid()

        return acknowledge

    def _tick(self, run: _SiteRun, t: float) -> None:
        started = time.perf_counter()
        site = run.site.id
        result = run.engine.tick(t)
        occupancy = zone_occupancy(result.fixes)
        table, events = self.privacy.apply(site, result.fixes, result.events)
        labels = self.registry.labels(table.beacons) if len(self.registry) else [None] * len(table)
        if run.outputs is not None:
            run.outputs.tick(t, table, events, labels, ended=self.privacy.ended)
        rows = run.thinner.keep(table)
        if rows.shape[0] < len(table):
            thinned = len(table) - rows.shape[0]
            self.metrics.store_thinned.labels(site).inc(thinned)
            self.totals["thinned"] += thinned
            record = TickRecord(
                site, t, table.select(rows), events, [labels[i] for i in rows.tolist()]
            )
        else:
            record = TickRecord(site, t, table, events, labels)
        saved = []
        for gw in run.touched:
            st = self.ingestor.state.get((site, gw))
            if st is not None:
                state = (st.boot, st.next_seq, st.offset_s, st.last_sent)
                saved.append(SavedGateway(site, gw, *state, gaps=st.unsaved_gaps()))
        ledger, acks = run.ledger, run.pending_acks
        run.ledger, run.pending_acks = [], []
        run.touched.clear()
        self.sqlite.submit_tick(TickWrite(record, ledger, saved, self._acknowledger(acks)))
        for store in self.stores:
            store.write(record)
        if self.promotions is not None:
            self.promotions.tick(site, t, events, self.privacy.withheld)
        if t - self._last_retention >= RETENTION_EVERY_S:
            self._last_retention = t
            self.sqlite.submit(retention_job(self.retention, t))
        if len(self.registry):
            self.registry.seen(table.beacons, t)
        run.last_tick_wall = self.clock()
        run.tick_lag_s = run.last_tick_wall - t
        self.metrics.tick_lag.labels(site).set(run.tick_lag_s)
        self.metrics.fixes.labels(site).inc(len(table))
        self.metrics.accuracy_factor.labels(site).set(run.engine.residuals.factor())
        self.totals["fixes"] += len(table)
        self.totals["events"] += len(result.events)
        for e in result.events:
            self.metrics.events.labels(site, e.type).inc()
        self.live.tick(site, t, table, events, labels, occupancy)
        self.metrics.tick_duration.labels(site).observe(time.perf_counter() - started)
        mono = time.monotonic()
        if mono - self._rate_t >= 1.0:
            self.metrics.readings_per_s.set(self._rate_n / (mono - self._rate_t))
            self._rate_t, self._rate_n = mono, 0

    # -- /healthz

    def health(self) -> tuple[bool, dict[str, Any]]:
        now = self.clock()
        stale = HEALTH_STALE_TICKS * self.cfg.engine.tick_interval_s + STARTUP_SETTLE_S
        sites = {}
        ok = self.link.up
        for sid, run in self.sites.items():
            age = None if run.last_tick_wall is None else now - run.last_tick_wall
            if age is not None and age > stale:
                ok = False
            since = run.last_data_wall or self._connected_at
            data_age = None if since is None else now - since
            if data_age is not None and data_age > HEALTH_NO_DATA_S:
                ok = False
            sites[sid] = {
                "data_age_s": data_age,
                "next_tick": run.next_tick,
                "seconds_since_tick": age,
                "tick_lag_s": run.tick_lag_s,
                "ticks_skipped": run.skipped,
            }
        return ok, {
            "broker_connected": self.link.connected.is_set(),
            "inbox_depth": self.link.inbox.qsize(),
            "store_backlog": {s.name: s.backlog() for s in self.stores},
            "sites": sites,
        }


def run_hub(cfg: HubConfig) -> int:
    """`beacon-hub run`: serve until SIGTERM/SIGINT, then flush and return 0."""
    hub = Hub(cfg)
    stop = threading.Event()

    def on_signal(signum: int, _frame: FrameType | None) -> None:
        log.info("%s: stopping", signal.Signals(signum).name)
        stop.set()

    def on_hangup(_signum: int, _frame: FrameType | None) -> None:
        # `systemctl reload`, `kill -HUP` or a closed terminal: without a handler the hub died
        # at once, nothing flushed. Its files are read at start only.
        log.warning("SIGHUP: the hub reads its config and site files at start only; restart it")

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGHUP, on_hangup)
    hub.run(stop)
    return 0
