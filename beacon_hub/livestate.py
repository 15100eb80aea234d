"""The live view the dashboard and the API read: per site, what is where now and what needs
attention (pallets idle at docks, lost beacons, low batteries, gateway health).

Threads. The service thread owns everything mutable here: it calls `gateway_batch` for each
accepted batch and `tick` once per site tick, and from those builds an immutable
`SiteSnapshot`. Readers (the web server's threads and its asyncio loop) only ever see finished
snapshots, swapped in under a lock.

The one place the service thread reaches the asyncio side is `LiveState._announce`: it calls
`loop.call_soon_threadsafe(self._fan_out, site)` on the loop the web server attached. On the
loop, `_fan_out` hands the newest snapshot to each subscribed stream's queue. Each queue holds
ONE snapshot (`STREAM_QUEUE_SNAPSHOTS`); policy: a client that has not taken the previous one
yet has it replaced by the newest (drop oldest), so a slow client sees fewer ticks, never an
unbounded backlog, and the service thread never waits for a client.

Gateway health. A gateway is `online` while its status (retained, its last will says
`offline`) does not say offline and a batch or heartbeat arrived within
`http.gateway_offline_after_s`; a gateway that has published no status yet is judged by its
traffic alone. An `offline` status stops counting once a batch or heartbeat of a newer boot
arrives after it (the gateway restarted; its new status is on the way), but not for batches of
the same boot that a broker delivers late. The gateway list is rebuilt at every tick and at
every status or heartbeat (`gateway_update`), so a clean or last-will `offline` shows at once in
`gateways()`, not only at the next tick.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from beacon_hub.engine import FixTable
from beacon_hub.health import Metrics
from beacon_hub.hubconfig import HttpConfig
from beacon_hub.ingest import Accepted, GatewayUpdate, StatusUpdate
from beacon_hub.registry import Asset, AssetRegistry
from beacon_hub.site import Site
from beacon_hub.wire import Event, GatewayStatus, Heartbeat

__all__ = [
    "LOSS_WINDOW_S",
    "MAX_LOST",
    "NO_KIND",
    "STREAM_QUEUE_SNAPSHOTS",
    "LiveState",
    "Occupancy",
    "SiteSnapshot",
    "zone_occupancy",
]

Occupancy = dict[str, dict[str, int]]
"""Zone id -> beacon kind -> count of beacons in that zone now."""

NO_KIND = "unknown"
"""Occupancy key for beacons whose kind no site file rule gives."""
LOSS_WINDOW_S = 300.0
"""A gateway's loss rate is over the batches of the last five minutes: long enough to see a
flaky link, short enough that an old outage does not colour it for the rest of the day."""
MAX_LOSS_ENTRIES = 4096
"""Batches remembered per gateway for the loss window (a gateway sends ~1 per second, 300 in
the window); the bound stops a flood of tiny batches from growing memory."""
MAX_LOST = 5_000
"""Lost beacons listed per site; beyond this the oldest loss is forgotten, with its last move."""
MAX_TRACKED_BEACONS = 200_000
"""Beacons whose zone and last move are remembered per site (the registry's own bound)."""
STALE_AFTER_S = 3600.0
"""A beacon without a fix for this long (hub time) that was not reported lost has its zone,
last position and last move forgotten (`_sweep`). The engine reports a beacon lost after
`lost_after_s` (30 s) of silence, and `beacon_lost` forgets them at once; this catches the
beacons whose `beacon_lost` never comes here: privacy.py withholds it once a shopper's consent
has ended. An hour, the engine's own `forget_after_s`: no beacon still heard goes without a
fix that long."""
SWEEP_EVERY_S = 60.0
"""How often (hub time) a site looks for stale beacons: one pass over its remembered beacons,
about 1 ms per 10,000."""
ASSET_REFRESH_S = 10.0
"""How often (wall clock) the asset list and low batteries are copied from the registry: the
registry changes with telemetry, a few times a minute per beacon at most."""
STREAM_QUEUE_SNAPSHOTS = 1
"""Snapshots waiting per stream client (policy in the module docstring: newest wins)."""
MAX_BATTERY_LIST = 1_000
"""Low batteries listed (lowest first)."""


def zone_occupancy(table: FixTable) -> Occupancy:
    """Beacons per zone and kind in one tick's fixes (every beacon, consented or not)."""
    out: Occupancy = {}
    for zone, kind in zip(table.zones, table.kinds, strict=True):
        if zone is None:
            continue
        per = out.setdefault(zone, {})
        k = kind or NO_KIND
        per[k] = per.get(k, 0) + 1
    return out


_POSITION_KEYS = (
    "beacon",
    "label",
    "kind",
    "x",
    "y",
    "level",
    "accuracy_m",
    "zone",
    "zone_since",
    "speed_m_s",
    "last_move",
)
"""Fields of one position, in the order of `SiteSnapshot.columns`."""


def _counters(hb: Heartbeat) -> dict[str, Any]:
    """A heartbeat's counters as the API shows them (`GatewayCounters` in web.py)."""
    return {
        "t": hb.t,
        "uptime_s": hb.uptime_s,
        "adverts_seen": hb.adverts_seen,
        "adverts_published": hb.adverts_published,
        "adverts_dropped": hb.adverts_dropped,
        "adverts_per_s": hb.adverts_per_s,
        "queue_depth": hb.queue_depth,
        "scanner_restarts": hb.scanner_restarts,
        "cpu_temp_c": hb.cpu_temp_c,
        "samples_per_s": hb.samples_per_s,
        "beacons_heard": hb.beacons_heard,
        "malformed_frames": hb.malformed_frames,
    }


class SiteSnapshot:
    """What one site looked like after one tick; immutable once built. The service thread
    leaves positions as columns; readers build the dicts and the JSON on first use (cached;
    two threads may build the same thing at once, both results are equal, one wins)."""

    __slots__ = (
        "_json",
        "_positions",
        "alerts",
        "columns",
        "gateways",
        "lag_s",
        "occupancy",
        "site",
        "t",
        "version",
    )

    def __init__(
        self,
        *,
        site: str,
        version: int,
        t: float,
        columns: tuple[list[Any], ...],
        occupancy: Occupancy,
        gateways: list[dict[str, Any]],
        alerts: dict[str, list[dict[str, Any]]],
        lag_s: float = 0.0,
    ) -> None:
        self.site = site
        self.version = version
        self.t = t
        self.lag_s = lag_s
        """How long after its data time `t` the tick ran (the hub catching up, or overloaded:
        docs/hub.md, Overload policy); the dashboard says so past BEHIND_S in app.js."""
        self.columns = columns
        self.occupancy = occupancy
        self.gateways = gateways
        self.alerts = alerts
        self._positions: list[dict[str, Any]] | None = None
        self._json: dict[str, bytes] = {}

    @property
    def positions(self) -> list[dict[str, Any]]:
        built = self._positions
        if built is None:
            built = [
                dict(zip(_POSITION_KEYS, row, strict=True))
                for row in zip(*self.columns, strict=True)
            ]
            self._positions = built
        return built

    def payload(self, part: str) -> Any:  # JSON-ready by construction
        if part == "positions":
            return {
                "site": self.site,
                "t": self.t,
                "lag_s": self.lag_s,
                "positions": self.positions,
            }
        if part == "occupancy":
            return {"site": self.site, "t": self.t, "zones": self.occupancy}
        if part == "gateways":
            return {"site": self.site, "t": self.t, "gateways": self.gateways}
        if part == "alerts":
            return {"site": self.site, "t": self.t, **self.alerts}
        return {
            "site": self.site,
            "version": self.version,
            "t": self.t,
            "lag_s": self.lag_s,
            "positions": self.positions,
            "zones": self.occupancy,
            "gateways": self.gateways,
            **self.alerts,
        }

    def json(self, part: str = "tick") -> bytes:
        """The encoded part (`tick` = everything, as the stream sends it); encoded once."""
        cached = self._json.get(part)
        if cached is None:
            cached = json.dumps(self.payload(part), separators=(",", ":")).encode()
            self._json[part] = cached
        return cached


@dataclass(slots=True)
class _GatewayLog:
    batches: deque[tuple[float, int]] = field(
        default_factory=lambda: deque(maxlen=MAX_LOSS_ENTRIES)
    )
    """(arrival, batches missing just before it) per accepted batch, in the loss window."""
    last_batch: float | None = None
    clock_skew_s: float | None = None
    status: GatewayStatus | None = None
    """The retained status (or last will) seen last; None before any, or once cleared."""
    status_at: float | None = None
    last_heartbeat: float | None = None
    heartbeat: Heartbeat | None = None
    boot: str | None = None
    """Boot of the newest batch or heartbeat, and when it was first seen."""
    boot_at: float | None = None

    def saw_boot(self, boot: str, arrival: float) -> None:
        if boot != self.boot:
            self.boot, self.boot_at = boot, arrival

    def said(self) -> GatewayStatus | None:
        """The status that still counts: an offline one stops counting once traffic of a
        newer boot arrived after it (module docstring)."""
        st = self.status
        if (
            st is not None
            and st.state == "offline"
            and st.boot is not None
            and self.boot not in (None, st.boot)
            and self.boot_at is not None
            and self.status_at is not None
            and self.boot_at > self.status_at
        ):
            return None
        return st


@dataclass(slots=True)
class _SiteLive:
    site: Site
    docks: frozenset[str]
    zone_since: dict[str, tuple[str | None, float]] = field(default_factory=dict)
    last_move: dict[str, float] = field(default_factory=dict)
    lost: OrderedDict[str, dict[str, Any]] = field(default_factory=OrderedDict)
    last_pos: dict[str, tuple[tuple[Any, Any, Any, float], int, str | None]] = field(
        default_factory=dict
    )
    """beacon -> ((x, y, level arrays, t) of its last tick, its row, its zone): kept as
    references, not copied, so the per-tick cost stays one dict write per beacon."""
    gateways: dict[str, _GatewayLog] = field(default_factory=dict)
    version: int = 0
    next_occupancy_t: float = float("-inf")
    next_sweep_t: float = float("-inf")


def _sweep(live: _SiteLive, t: float) -> None:
    """Every SWEEP_EVERY_S of hub time: forget the beacons without a fix for STALE_AFTER_S
    before `t` that are not listed as lost: their last position and zone, and their last move
    unless newer. With `beacon_lost` (forgets position and zone; the last move is kept while
    the loss is listed) this bounds every per-beacon dict to the beacons with a fix in the
    last STALE_AFTER_S and the MAX_LOST listed losses."""
    if t < live.next_sweep_t:
        return
    live.next_sweep_t = t + SWEEP_EVERY_S
    cutoff = t - STALE_AFTER_S
    last_pos, zone_since, last_move, lost = (
        live.last_pos,
        live.zone_since,
        live.last_move,
        live.lost,
    )
    for b in [b for b, (cols, _, _) in last_pos.items() if cols[3] < cutoff]:
        del last_pos[b]
        zone_since.pop(b, None)
    for b in [b for b, m in last_move.items() if m < cutoff]:
        if b not in last_pos and b not in lost:
            del last_move[b]


class LiveState:
    """Per-site live view; written by the service thread, read by the web server."""

    def __init__(
        self,
        sites: Iterable[Site],
        config: HttpConfig,
        registry: AssetRegistry | None = None,
        *,
        clock: Callable[[], float] = time.time,
        occupancy_sink: Callable[[str, float, Occupancy], None] | None = None,
        metrics: Metrics | None = None,
    ) -> None:
        self.config = config
        self.metrics = metrics
        """`beacon_hub_gateway_online` is set from it whenever the gateway list is built."""
        self.registry = registry
        self.clock = clock
        self.occupancy_sink = occupancy_sink
        """Called on the service thread every `http.occupancy_sample_s` of hub time per site
        (the SQLite store's `write_occupancy`)."""
        self.sites: dict[str, Site] = {s.id: s for s in sites}
        self._live = {
            sid: _SiteLive(s, frozenset(z.id for z in s.zones if z.kind == "dock"))
            for sid, s in self.sites.items()
        }
        self._lock = threading.Lock()
        self._snapshots: dict[str, SiteSnapshot] = {}
        self._gateway_views: dict[str, dict[str, Any]] = {
            sid: {"site": sid, "t": None, "gateways": self._gateways(live, clock())}
            for sid, live in self._live.items()
        }
        self._assets: tuple[Asset, ...] = ()
        self._low_battery: list[dict[str, Any]] = []
        self._assets_at = float("-inf")
        # asyncio side (touched only on the attached loop, except `_loop` itself):
        self._loop: asyncio.AbstractEventLoop | None = None
        self._streams: dict[str, set[asyncio.Queue[SiteSnapshot | None]]] = {}

    # ------------------------------------------------------------------ service thread

    def gateway_batch(self, accepted: Accepted, arrival: float) -> None:
        """An accepted readings batch (service thread): last batch, losses, clock skew."""
        live = self._live.get(accepted.site)
        if live is None:
            return
        g = live.gateways.get(accepted.gateway)
        if g is None:
            g = live.gateways[accepted.gateway] = _GatewayLog()
        g.batches.append((arrival, accepted.lost_before))
        g.last_batch = arrival if g.last_batch is None else max(g.last_batch, arrival)
        g.clock_skew_s = accepted.sent_hub - accepted.batch.sent
        g.saw_boot(accepted.batch.boot, arrival)

    def gateway_update(self, update: GatewayUpdate, arrival: float) -> None:
        """A gateway's status or heartbeat (service thread): the gateway list is rebuilt at
        once, so `gateways()` shows a gateway that went offline without waiting for a tick."""
        live = self._live.get(update.site)
        if live is None:
            return
        g = live.gateways.get(update.gateway)
        if g is None:
            g = live.gateways[update.gateway] = _GatewayLog()
        if isinstance(update, StatusUpdate):
            g.status, g.status_at = update.status, arrival
        else:
            hb = update.heartbeat
            g.heartbeat = hb
            g.last_heartbeat = (
                arrival if g.last_heartbeat is None else max(g.last_heartbeat, arrival)
            )
            g.saw_boot(hb.boot, arrival)
        now = self.clock()
        view = {"site": update.site, "t": now, "gateways": self._gateways(live, now)}
        with self._lock:
            self._gateway_views[update.site] = view

    def tick(  # noqa: PLR0917  # the hook's signature in docs/api.md and service._tick
        self,
        site: str,
        t: float,
        table: FixTable,
        events: Sequence[Event],
        labels: Sequence[str | None],
        occupancy: Occupancy,
    ) -> SiteSnapshot:
        """One site tick (service thread): update, build and publish a new snapshot."""
        live = self._live[site]
        now = self.clock()
        self._refresh_assets(now)
        for e in events:
            if e.type == "pallet_moved":
                live.last_move[e.beacon] = e.t
            elif e.type == "beacon_lost":
                self._lost(live, e)
        beacons, zones, kinds = table.beacons, table.zones, table.kinds
        n = len(beacons)
        since: list[float] = [t] * n
        moved: list[float | None] = [None] * n
        idle_rows: list[int] = []
        since_map, last_move, last_pos = live.zone_since, live.last_move, live.last_pos
        docks = live.docks
        threshold = self.config.idle_at_dock_s
        room = len(since_map) < MAX_TRACKED_BEACONS
        lost = live.lost
        cols = (table.x, table.y, table.level, t)
        for i, beacon in enumerate(beacons):
            zone = zones[i]
            held = since_map.get(beacon)
            if held is None:
                if room:
                    since_map[beacon] = (zone, t)
            elif held[0] != zone:
                since_map[beacon] = (zone, t)
                last_move[beacon] = t
            else:
                since[i] = held[1]
            moved[i] = last_move.get(beacon)
            if lost:
                lost.pop(beacon, None)
            if room or beacon in last_pos:
                last_pos[beacon] = (cols, i, zone)
            if zone in docks and kinds[i] == "pallet" and t - since[i] >= threshold:
                idle_rows.append(i)
        _sweep(live, t)
        columns = (
            beacons,
            list(labels),
            kinds,
            np.round(table.x, 2).tolist(),
            np.round(table.y, 2).tolist(),
            table.level.tolist(),
            np.round(table.accuracy_m, 2).tolist(),
            zones,
            since,
            np.round(table.speed_m_s, 2).tolist(),
            moved,
        )
        idle_rows.sort(key=lambda i: since[i])  # longest idle first
        idle = [
            {
                **dict(zip(_POSITION_KEYS, (c[i] for c in columns), strict=True)),
                "idle_s": t - since[i],
            }
            for i in idle_rows
        ]
        live.version += 1
        gateways = self._gateways(live, now)
        snap = SiteSnapshot(
            site=site,
            version=live.version,
            t=t,
            columns=columns,
            occupancy=occupancy,
            gateways=gateways,
            alerts={
                "idle": idle,
                "lost": list(reversed(live.lost.values())),
                "low_battery": self._low_battery,
            },
            lag_s=round(max(now - t, 0.0), 1),
        )
        if self.occupancy_sink is not None and t >= live.next_occupancy_t:
            live.next_occupancy_t = t + self.config.occupancy_sample_s
            self.occupancy_sink(site, t, occupancy)
        with self._lock:
            self._snapshots[site] = snap
            self._gateway_views[site] = {"site": site, "t": t, "gateways": gateways}
        self._announce(site)
        return snap

    def _lost(self, live: _SiteLive, e: Event) -> None:
        last = live.last_pos.pop(e.beacon, None)
        live.zone_since.pop(e.beacon, None)
        asset = self.registry.get(e.beacon) if self.registry is not None else None
        live.lost[e.beacon] = {
            "beacon": e.beacon,
            "label": asset.label if asset else None,
            "kind": asset.kind if asset else None,
            "t": e.t,
            "last_heard": e.data.get("last_heard"),
            "x": None if last is None else round(float(last[0][0][last[1]]), 2),
            "y": None if last is None else round(float(last[0][1][last[1]]), 2),
            "level": None if last is None else int(last[0][2][last[1]]),
            "zone": None if last is None else last[2],
        }
        live.lost.move_to_end(e.beacon)
        while len(live.lost) > MAX_LOST:
            gone, _ = live.lost.popitem(last=False)
            live.last_move.pop(gone, None)

    def _gateways(self, live: _SiteLive, now: float) -> list[dict[str, Any]]:
        out = []
        offline_after = self.config.gateway_offline_after_s
        for gw in live.site.gateways:
            g = live.gateways.get(gw.id) or _GatewayLog()
            while g.batches and g.batches[0][0] < now - LOSS_WINDOW_S:
                g.batches.popleft()
            batches = len(g.batches)
            lost = sum(n for _, n in g.batches)
            last, skew, hb_at, hb = g.last_batch, g.clock_skew_s, g.last_heartbeat, g.heartbeat
            said = g.said()
            version = hb.version if hb is not None else None if said is None else said.version
            heard = max((a for a in (last, hb_at) if a is not None), default=None)
            reason: str | None = None
            if said is not None and said.state == "offline":
                reason = "status"
            elif heard is None:
                reason = "never_heard"
            elif now - heard > offline_after:
                reason = "silent"
            if self.metrics is not None:
                self.metrics.gateway_online.labels(live.site.id, gw.id).set(reason is None)
            out.append(
                {
                    "id": gw.id,
                    "name": gw.name,
                    "x": gw.x,
                    "y": gw.y,
                    "level": gw.level,
                    "state": "offline" if reason else "online",
                    "offline_reason": reason,
                    "status": None if said is None else said.state,
                    "status_t": None if said is None else said.t,
                    "boot": g.boot or (said.boot if said is not None else None),
                    "version": version,
                    "last_batch": last,
                    "seconds_since_batch": None if last is None else round(now - last, 1),
                    "last_heartbeat": hb_at,
                    "seconds_since_heartbeat": None if hb_at is None else round(now - hb_at, 1),
                    "batches": batches,
                    "lost": lost,
                    "loss_rate": round(lost / (lost + batches), 4) if lost + batches else None,
                    "clock_skew_s": None if skew is None else round(skew, 3),
                    "heartbeat": None if hb is None else _counters(hb),
                }
            )
        return out

    def _refresh_assets(self, now: float) -> None:
        if self.registry is None or now - self._assets_at < ASSET_REFRESH_S:
            return
        self._assets_at = now
        assets = tuple(self.registry)
        limit = self.config.low_battery_mv
        low = sorted(
            (a for a in assets if a.battery_mv is not None and a.battery_mv < limit),
            key=lambda a: a.battery_mv or 0,
        )[:MAX_BATTERY_LIST]
        battery = [
            {
                "beacon": a.beacon,
                "label": a.label,
                "kind": a.kind,
                "battery_mv": a.battery_mv,
                "last_seen": a.last_seen,
            }
            for a in low
        ]
        with self._lock:
            self._assets = assets
            self._low_battery = battery

    # ------------------------------------------------------------------ readers (any thread)

    def snapshot(self, site: str) -> SiteSnapshot | None:
        with self._lock:
            return self._snapshots.get(site)

    def gateways(self, site: str) -> dict[str, Any] | None:
        """The newest gateway list of `site` (`Gateways` in docs/api.md): built at the last
        tick or the last status/heartbeat, whichever came later; None for an unknown site."""
        with self._lock:
            return self._gateway_views.get(site)

    def assets(self) -> tuple[Asset, ...]:
        with self._lock:
            return self._assets

    def find(self, query: str, limit: int) -> list[tuple[str, dict[str, Any]]]:
        """Live positions whose label or beacon id contains `query` (case-insensitive)."""
        q = query.casefold()
        with self._lock:
            snaps = list(self._snapshots.values())
        out: list[tuple[str, dict[str, Any]]] = []
        for snap in snaps:
            for p in snap.positions:
                label = p["label"] or ""
                if q in label.casefold() or q in p["beacon"]:
                    out.append((snap.site, p))
                    if len(out) >= limit:
                        return out
        return out

    # ------------------------------------------------------------------ the asyncio side

    def attach(self, loop: asyncio.AbstractEventLoop | None) -> None:
        """The web server's loop (or None when it stops); snapshots are announced to it."""
        self._loop = loop

    def _announce(self, site: str) -> None:
        """THE thread boundary (module docstring): service thread -> the web server's loop."""
        loop = self._loop
        if loop is None:
            return
        try:
            loop.call_soon_threadsafe(self._fan_out, site)
        except RuntimeError:  # the loop closed between attach(None) and here
            self._loop = None

    def _fan_out(self, site: str) -> None:
        """On the loop: give each stream of `site` the newest snapshot (drop-oldest policy)."""
        snap = self.snapshot(site)
        if snap is None:
            return
        for q in self._streams.get(site, ()):
            if q.full():
                q.get_nowait()
            q.put_nowait(snap)

    def subscribe(self, site: str) -> asyncio.Queue[SiteSnapshot | None]:
        """On the loop: a stream's queue, primed with the current snapshot if there is one."""
        q: asyncio.Queue[SiteSnapshot | None] = asyncio.Queue(maxsize=STREAM_QUEUE_SNAPSHOTS)
        self._streams.setdefault(site, set()).add(q)
        snap = self.snapshot(site)
        if snap is not None:
            q.put_nowait(snap)
        return q

    def admit(self, site: str, cap: int) -> asyncio.Queue[SiteSnapshot | None] | None:
        """On the loop: `subscribe`, unless `cap` streams are open (None). Count and subscription
        in one call with no await between, so streams starting together cannot all fit under
        the cap; the caller unsubscribes on every way out."""
        if self.stream_count() >= cap:
            return None
        return self.subscribe(site)

    def unsubscribe(self, site: str, q: asyncio.Queue[SiteSnapshot | None]) -> None:
        self._streams.get(site, set()).discard(q)

    def close_streams(self) -> None:
        """On the loop, when the server stops: every stream gets None (end) in place of any
        snapshot it has not taken."""
        for streams in self._streams.values():
            for q in streams:
                if q.full():
                    q.get_nowait()
                q.put_nowait(None)

    def stream_count(self) -> int:
        return sum(len(s) for s in self._streams.values())
