"""The hub's web server: the dashboard (`/`, `/static/`), the JSON API (`/api/...`, described by
`/openapi.json`; docs/api.md), server-sent events, `/healthz` and `/metrics`.

FastAPI app served by uvicorn on a thread of its own with its own asyncio loop; uvicorn installs
no signal handlers off the main thread, and `stop()` ends it cleanly (open event streams are
told to finish first). Data comes from two places only: `LiveState` snapshots (the service
thread publishes them; the thread boundary is documented in livestate.py) and a read-only SQLite
connection per request (`SqliteReader`), never the writer's.

Hostile input. Every id is validated against its pattern, every range and row count has a
cap, times must be finite: what does not fit is a 4xx with a reason, never a 500. Auth: with
`http.token` set, every /api request needs `Authorization: Bearer T` or `?token=T` (EventSource
cannot send headers); the dashboard shell, its static files, /openapi.json, /healthz and
/metrics carry no data and stay open, so the page can load and ask for the token. Without a
token (loopback bind only) every request's Host must name this machine (localhost, 127.x,
[::1], or `http.allowed_hosts`): a web page that rebinds its own DNS name to 127.0.0.1 could
otherwise read the API from a browser on the hub's host (docs/security.md, DNS rebinding).

Slow clients. The token is checked only once a request's head has arrived, so the server's own
limits must hold before it: at most `http.max_connections` connections at once, and a client
that keeps the server waiting for its request longer than `http.request_read_timeout_s` is
closed (`_bounded_h11`; uvicorn bounds neither: its `limit_concurrency` answers 503 only after a
head arrived, and its keep-alive timer runs only between requests and restarts at every byte).
Nor does it bound the other way round: an answer the client stops reading (a tablet gone out
of Wi-Fi range without closing, a stuck client) waited for room in the socket for ever, holding
its connection and, for a stream, its place among `http.max_stream_clients` until TCP gave up
(~15 min); now a connection whose writes stay paused for `http.send_stall_timeout_s` is closed.
asyncio's "accept() out of system resource" report is logged at most once a minute, since a
flood of connections decides how often it happens.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import logging
import re
import resource
import socket
import threading
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Annotated, Any, Literal, Protocol

import h11
import uvicorn
from fastapi import APIRouter, Depends, FastAPI, HTTPException, Query, Request
from fastapi import Path as PathParam
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, Response, StreamingResponse
from fastapi.staticfiles import StaticFiles
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from pydantic import BaseModel, ConfigDict
from starlette.types import ASGIApp, Receive, Scope, Send
from uvicorn.protocols.http.h11_impl import H11Protocol

from beacon_hub.errors import BeaconHubError
from beacon_hub.health import Metrics
from beacon_hub.hubconfig import HttpConfig, is_loopback
from beacon_hub.ids import NAME_ID_PATTERN, is_beacon_id
from beacon_hub.ingest import RateLimitedLog
from beacon_hub.livestate import LiveState, SiteSnapshot
from beacon_hub.site import Site
from beacon_hub.stores import QueryTimeoutError, SqliteReader, StoreError

__all__ = [
    "MAX_EVENTS",
    "MAX_HISTORY_FIXES",
    "MAX_RANGE_S",
    "ConsentWriter",
    "WebServer",
    "create_app",
]

log = logging.getLogger(__name__)

STATIC_DIR = Path(__file__).with_name("static")
MAX_RANGE_S = 31 * 86_400.0
"""Longest since..until range any query takes: a month of history is what the dashboard's
period selector offers; longer ranges belong in InfluxDB."""
DEFAULT_RANGE_S = 3600.0
"""since defaults to an hour before until (until defaults to now)."""
MAX_HISTORY_FIXES = 20_000
"""Fixes one history request returns at most (5.5 h at a 1 s tick; ~1 MB of JSON)."""
MAX_EVENTS = 1_000
MAX_DWELL_VISITS = 200_000
"""zone_exit events a dwell query reads at most (the newest); a busy store has ~50,000 a day."""
MAX_ASSET_RESULTS = 100
MAX_QUERY_CHARS = 64
"""Longest asset search (`q`); the dashboard's search box has the same maxlength."""
KEEPALIVE_S = 15.0
"""An SSE comment this often keeps proxies from closing an idle stream (nginx: 60 s)."""
SHUTDOWN_GRACE_S = 2
"""uvicorn's graceful shutdown wait for open connections, seconds (an int for uvicorn)."""
LISTEN_BACKLOG = 64
"""Connections the kernel queues before the server accepts them; ample for a few dozen
dashboards. asyncio also accepts up to this many per wake-up before any is admitted, so in a
flood about three such batches (~200 sockets, measured) are open beyond http.max_connections,
and out of file descriptors it reports that many errors per wake-up (uvicorn's 2048: a loop)."""
MAX_HEAD_BYTES = 16 * 1024
"""Longest request head (request line and headers) accepted; longer gets 400. h11's default,
stated here so that it cannot change under us: the dashboard's heads are under 1 kB."""
WARN_EVERY_S = 60.0
"""At most one warning this often for what a client's connections decide the rate of (refused
and closed connections, failed accepts), with a count of those not logged."""
FD_RESERVE = 256
"""File descriptors the rest of the hub may need beside HTTP's sockets (SQLite readers and
writer, MQTT, InfluxDB, spill files, logs, Python's own): 23 in `beacon-hub demo` (measured),
ten-fold for larger sites and spills. Below max_connections + 4 accept batches + this, a
start-up warning says so."""
_BEACON_ID_CHARS = 80
_EVENT_TYPE = re.compile(r"^[a-z_]{1,32}$")


class ConsentWriter(Protocol):
    """What the consent endpoints call (beacon_hub/consent.py's ConsentRegistry)."""

    def grant(self, beacon: str) -> str: ...
    def revoke(self, beacon: str) -> None: ...
    def has_consent(self, beacon: str) -> bool: ...


# ----------------------------------------------------------------------- response models


class _Out(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Position(_Out):
    beacon: str
    label: str | None
    kind: str | None
    x: float
    y: float
    level: int
    accuracy_m: float
    """68 % of true positions fall within this radius."""
    zone: str | None
    zone_since: float
    """Hub time (Unix seconds) the beacon entered its current zone, or was first seen."""
    speed_m_s: float
    last_move: float | None
    """Last zone change or pallet_moved event, hub time; None if not seen since start."""


class Positions(_Out):
    site: str
    t: float | None
    lag_s: float | None = None
    """How long after its data time `t` the hub ran this tick (above about a second: catching
    up after a restart, or overloaded; docs/hub.md, Overload policy)."""
    positions: list[Position]


class IdlePallet(Position):
    idle_s: float


class LostBeacon(_Out):
    beacon: str
    label: str | None
    kind: str | None
    t: float
    last_heard: float | None
    x: float | None
    y: float | None
    level: int | None
    zone: str | None


class LowBattery(_Out):
    beacon: str
    label: str | None
    kind: str | None
    battery_mv: int | None
    last_seen: float | None


class Alerts(_Out):
    site: str
    t: float | None
    idle: list[IdlePallet]
    lost: list[LostBeacon]
    low_battery: list[LowBattery]


class GatewayCounters(_Out):
    """The gateway's own counters from its last heartbeat (wire.Heartbeat), since its boot."""

    t: float
    """When the gateway sent it (its own clock)."""
    uptime_s: float
    adverts_seen: int
    adverts_published: int
    adverts_dropped: int
    adverts_per_s: float
    queue_depth: int
    scanner_restarts: int
    cpu_temp_c: float | None
    samples_per_s: float | None
    beacons_heard: int | None
    malformed_frames: int | None
    """Undecodable beacon frames since the gateway started (absent from older gateways)."""


class GatewayHealth(_Out):
    id: str
    name: str
    x: float
    y: float
    level: int
    state: Literal["online", "offline"]
    """online: its status does not say offline and a batch or heartbeat arrived within
    http.gateway_offline_after_s (a gateway without a status is judged by its traffic)."""
    offline_reason: Literal["status", "silent", "never_heard"] | None
    """Why offline: its status (clean shutdown or last will) says so, nothing heard for
    http.gateway_offline_after_s, or nothing heard since the hub started; None when online."""
    status: Literal["online", "offline"] | None
    """What its retained status topic says (None: no status, or superseded by a new boot)."""
    status_t: float | None
    """When the gateway set that status (its own clock; a last will's is its connect time)."""
    boot: str | None
    """The gateway's boot id (newest batch or heartbeat, else its status)."""
    version: str | None
    """Gateway software version (heartbeat, else status)."""
    last_batch: float | None
    """Wall-clock arrival of the last accepted batch."""
    seconds_since_batch: float | None
    last_heartbeat: float | None
    """Wall-clock arrival of the last heartbeat."""
    seconds_since_heartbeat: float | None
    batches: int
    """Batches accepted in the loss window (livestate.LOSS_WINDOW_S)."""
    lost: int
    loss_rate: float | None
    """lost / (lost + batches) over the window, from the gateways' (boot, seq)."""
    clock_skew_s: float | None
    """Learnt offset added to the gateway's clock (its skew plus the network delay)."""
    heartbeat: GatewayCounters | None


class Gateways(_Out):
    site: str
    t: float | None
    """Hub time the list was built: the last tick, or the last status or heartbeat."""
    gateways: list[GatewayHealth]


class Occupancy(_Out):
    site: str
    t: float | None
    zones: dict[str, dict[str, int]]
    """zone id -> beacon kind -> beacons in it now (every beacon, consented or not)."""


class Tick(_Out):
    """One server-sent `tick` event of /api/sites/{site}/stream."""

    site: str
    version: int
    t: float
    lag_s: float
    """How long after `t` the tick ran (as in Positions)."""
    positions: list[Position]
    zones: dict[str, dict[str, int]]
    gateways: list[GatewayHealth]
    idle: list[IdlePallet]
    lost: list[LostBeacon]
    low_battery: list[LowBattery]


class SiteSummary(_Out):
    id: str
    name: str
    kind: str
    levels: list[int]


class Sites(_Out):
    sites: list[SiteSummary]


class WallGeo(_Out):
    id: str | None
    start: tuple[float, float]
    end: tuple[float, float]


class ObstacleGeo(_Out):
    id: str
    kind: str
    polygon: list[tuple[float, float]]


class LevelGeo(_Out):
    level: int
    name: str
    outline: list[tuple[float, float]]
    walls: list[WallGeo]
    obstacles: list[ObstacleGeo]


class ZoneGeo(_Out):
    id: str
    name: str
    kind: str
    level: int
    polygon: list[tuple[float, float]]


class GatewayGeo(_Out):
    id: str
    name: str
    x: float
    y: float
    z: float
    level: int


class SiteGeometry(_Out):
    id: str
    name: str
    kind: str
    timezone: str
    levels: list[LevelGeo]
    zones: list[ZoneGeo]
    gateways: list[GatewayGeo]


class HistoryFix(_Out):
    t: float
    x: float
    y: float
    level: int
    accuracy_m: float
    zone: str | None


class History(_Out):
    site: str
    beacon: str
    since: float
    until: float
    truncated: bool
    """True when the range held more than `limit` fixes (the newest are returned)."""
    fixes: list[HistoryFix]


class DwellStats(_Out):
    visits: int
    mean_s: float
    median_s: float
    p90_s: float
    max_s: float


class Dwell(_Out):
    site: str
    since: float
    until: float
    truncated: bool
    zones: dict[str, DwellStats]


class HeatStats(_Out):
    mean: float
    peak: float


class Heat(_Out):
    site: str
    since: float
    until: float
    samples: int
    zones: dict[str, HeatStats]


class EventOut(_Out):
    t: float
    type: str
    beacon: str
    zone: str | None
    data: dict[str, Any]


class Events(_Out):
    site: str
    since: float
    until: float
    events: list[EventOut]


class AssetOut(_Out):
    beacon: str
    label: str | None
    kind: str | None
    battery_mv: int | None
    last_seen: float | None
    site: str | None
    """Where it is now (live), with zone, x, y, level; None when it has no live position."""
    zone: str | None
    x: float | None
    y: float | None
    level: int | None


class Assets(_Out):
    q: str
    assets: list[AssetOut]


class ConsentOut(_Out):
    beacon: str
    consent: bool
    pseudonym: str | None


class Problem(_Out):
    detail: str


# ----------------------------------------------------------------------------- the app


_CONNECTIONS = ("http-connections",)
"""One rate limit for what the connection cap does: refusals and evictions alike."""
_STALLED = ("http-stalled",)
"""Its own rate limit: a client that stops reading is not a flood of connections."""

_BUSY = (
    b"HTTP/1.1 503 Service Unavailable\r\ncontent-type: text/plain; charset=utf-8\r\n"
    b"content-length: 21\r\nconnection: close\r\n\r\ntoo many connections\n"
)


def _bounded_h11(
    max_connections: int, read_timeout_s: float, send_stall_timeout_s: float
) -> type[H11Protocol]:
    """uvicorn's h11 protocol with the bounds it lacks (module docstring, Slow clients).

    A connection on which the server waits for the client (for a request head, or for the rest
    of a body after the answer went out) is closed `read_timeout_s` after that wait began, bytes
    trickling in or not. At `max_connections`, a new connection closes the one that has kept the
    server waiting longest; when none is waiting (all busy with requests or streams) the new one
    gets 503 and is closed. A cap at accept is what bounds file descriptors: uvicorn's
    `limit_concurrency` is checked only when a head is complete. A connection whose transport
    paused writing (its buffer over the high-water mark: the client reads nothing) and has not
    resumed `send_stall_timeout_s` later is closed; the answer's coroutine, waiting to drain,
    then ends with the disconnect, and a stream's `finally` gives its place back."""

    class BoundedH11(H11Protocol):
        _deadline: asyncio.TimerHandle | None = None
        _stalled: asyncio.TimerHandle | None = None

        def pause_writing(self) -> None:
            super().pause_writing()
            if self._stalled is None and not self.transport.is_closing():
                self._stalled = self.loop.call_later(send_stall_timeout_s, self.stall)

        def resume_writing(self) -> None:
            super().resume_writing()
            if self._stalled is not None:
                self._stalled.cancel()
                self._stalled = None

        def stall(self) -> None:
            notices.warning(
                _STALLED,
                "http: a client read nothing of its answer for %.0f s; closed it",
                send_stall_timeout_s,
            )
            self.forget()
            # abort, not close: close() waits to flush a buffer this client will never read.
            self.transport.abort()

        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            super().connection_made(transport)
            if len(admitted) >= max_connections:
                if not waiting:
                    notices.warning(
                        _CONNECTIONS, "http: %d connections busy; refused one", len(admitted)
                    )
                    transport.write(_BUSY)
                    transport.close()
                    return
                oldest = next(iter(waiting))
                notices.warning(
                    _CONNECTIONS, "http: %d connections; closed the longest waiting", len(admitted)
                )
                oldest.drop()
            admitted.add(self)
            self.watch()

        def connection_lost(self, exc: Exception | None) -> None:
            self.forget()
            super().connection_lost(exc)

        def handle_events(self) -> None:
            super().handle_events()
            self.watch()

        def on_response_complete(self) -> None:
            super().on_response_complete()
            self.watch()

        def watch(self) -> None:
            """Arm the deadline when a wait for the client begins, disarm it when it ends."""
            states = (self.conn.our_state, self.conn.their_state)
            on_client = states in {(h11.IDLE, h11.IDLE), (h11.DONE, h11.SEND_BODY)}
            if on_client and self in admitted and not self.transport.is_closing():
                if self._deadline is None:
                    self._deadline = self.loop.call_later(read_timeout_s, self.drop)
                    waiting[self] = None
            elif self._deadline is not None:
                self._deadline.cancel()
                self._deadline = None
                waiting.pop(self, None)

        def drop(self) -> None:
            self.forget()
            self.transport.close()

        def forget(self) -> None:
            if self._deadline is not None:
                self._deadline.cancel()
                self._deadline = None
            if self._stalled is not None:
                self._stalled.cancel()
                self._stalled = None
            waiting.pop(self, None)
            admitted.discard(self)

    admitted: set[BoundedH11] = set()
    waiting: dict[BoundedH11, None] = {}  # insertion order: the longest wait first
    notices = RateLimitedLog(WARN_EVERY_S, logger=log)
    return BoundedH11


def _host_name(value: str) -> str:
    """The host in a Host header, lower case, without its port or an IPv6 address' brackets."""
    text = value.strip().lower()
    if text.startswith("["):
        name, bracket, rest = text[1:].partition("]")
        return name if bracket and (not rest or rest.startswith(":")) else text
    name, colon, port = text.rpartition(":")
    return name if colon and port.isascii() and (port.isdigit() or not port) else text


class _LoopbackHostsOnly:
    """Refuses (400) a request whose Host is not this machine: with no token, a page that has
    rebound its own DNS name to 127.0.0.1 would otherwise read the API (module docstring)."""

    def __init__(self, app: ASGIApp, allowed: frozenset[str]) -> None:
        self.app = app
        self.allowed = allowed

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            # No Host at all is an HTTP/1.0 client, never a browser: let it through.
            hosts = [value for key, value in scope["headers"] if key == b"host"]
            for name in (_host_name(value.decode("latin-1")) for value in hosts):
                if not (name == "localhost." or is_loopback(name) or name in self.allowed):
                    detail = (
                        f"Host {name[:64]!r} is not this machine: the hub is bound to loopback "
                        "without a token, so it answers localhost, 127.x and [::1] only "
                        "(http.allowed_hosts adds names; docs/security.md)"
                    )
                    await JSONResponse({"detail": detail}, status_code=400)(scope, receive, send)
                    return
        await self.app(scope, receive, send)


def _validation_detail(error: RequestValidationError) -> str:
    """FastAPI's list of errors as one line naming each parameter and what it expects (the
    input is not echoed: it may be 5,000 characters of someone's probe)."""
    parts: list[str] = []
    for err in error.errors():
        loc = [str(p) for p in err.get("loc", ())]
        where, name = (loc[0], ".".join(loc[1:])) if len(loc) > 1 else ("request", "".join(loc))
        parts.append(f"{name} ({where} parameter): {err.get('msg', 'not valid')}")
    return "; ".join(dict.fromkeys(parts)) or "the request is not valid"


class _Context:
    def __init__(  # noqa: PLR0917  # built in one place, WebServer
        self,
        config: HttpConfig,
        metrics: Metrics,
        health: Callable[[], tuple[bool, dict[str, Any]]],
        live: LiveState,
        reader: SqliteReader | None,
        consent: Callable[[], ConsentWriter | None],
    ) -> None:
        self.config = config
        self.metrics = metrics
        self.health = health
        self.live = live
        self.reader = reader
        self.consent = consent


def _valid_beacon(beacon: str) -> str:
    if len(beacon) > _BEACON_ID_CHARS or not is_beacon_id(beacon):
        raise HTTPException(422, "not a canonical beacon id (e.g. ibeacon:{uuid}:{major}:{minor})")
    return beacon


def _range(since: float | None, until: float | None) -> tuple[float, float]:
    end = time.time() if until is None else until
    start = end - DEFAULT_RANGE_S if since is None else since
    if start > end:
        raise HTTPException(400, "since is after until")
    if end - start > MAX_RANGE_S:
        raise HTTPException(400, f"range longer than {MAX_RANGE_S:.0f} s")
    return start, end


def _json(body: bytes) -> Response:
    return Response(content=body, media_type="application/json")


Time = Annotated[
    float | None,
    Query(description="Unix seconds (hub time)", ge=0, le=1e11, allow_inf_nan=False),
]


def _site_of(request: Request, site: Annotated[str, PathParam(max_length=63)]) -> Site:
    ctx: _Context = request.app.state.ctx
    found = ctx.live.sites.get(site) if re.fullmatch(NAME_ID_PATTERN, site) else None
    if found is None:
        raise HTTPException(404, "no such site")
    return found


SiteDep = Annotated[Site, Depends(_site_of)]
BeaconArg = Annotated[str, PathParam(max_length=_BEACON_ID_CHARS)]


def create_app(ctx: _Context) -> FastAPI:  # noqa: PLR0915  # one route after another
    """The FastAPI app over `ctx`; served by WebServer."""
    app = FastAPI(
        title="beacon-hub",
        description="Live positions, zones, gateways, history and events of the hub's sites "
        "(docs/api.md).",
        version="1",
        docs_url=None,  # Swagger UI and ReDoc load assets from a CDN; the hub runs offline
        redoc_url=None,
        openapi_url="/openapi.json",
    )
    app.state.ctx = ctx
    live, cfg = ctx.live, ctx.config
    token = cfg.token.get_secret_value().encode() if cfg.token is not None else None
    if cfg.checks_host:
        app.add_middleware(_LoopbackHostsOnly, allowed=frozenset(cfg.allowed_hosts))

    def require_token(request: Request) -> None:
        if token is None:
            return
        given = request.query_params.get("token")
        auth = request.headers.get("authorization", "")
        if auth[:7].lower() == "bearer ":
            given = auth[7:].strip()
        if given is None or not hmac.compare_digest(given.encode(), token):
            raise HTTPException(
                401, "a valid token is required", headers={"WWW-Authenticate": "Bearer"}
            )

    api = APIRouter(
        prefix="/api",
        dependencies=[Depends(require_token)],
        responses={401: {"model": Problem}, 404: {"model": Problem}, 422: {"model": Problem}},
    )

    def reader() -> SqliteReader:
        if ctx.reader is None:
            raise HTTPException(404, "this hub keeps no history (stores.sqlite.fixes: false)")
        return ctx.reader

    @app.exception_handler(StoreError)
    async def store_error(_r: Request, e: StoreError) -> JSONResponse:
        status = 503 if isinstance(e, QueryTimeoutError) else 500
        log.warning("store query failed: %s", e)
        return JSONResponse({"detail": str(e)}, status_code=status)

    @app.exception_handler(RequestValidationError)
    async def invalid_request(_r: Request, e: RequestValidationError) -> JSONResponse:
        # Every 4xx is a Problem, as /openapi.json says; FastAPI's own 422 body is a list.
        return JSONResponse({"detail": _validation_detail(e)}, status_code=422)

    @app.get("/", include_in_schema=False)
    def dashboard() -> FileResponse:
        return FileResponse(STATIC_DIR / "index.html", media_type="text/html")

    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")

    @app.get("/healthz", include_in_schema=False)
    def healthz() -> JSONResponse:
        ok, detail = ctx.health()
        return JSONResponse({"ok": ok, **detail}, status_code=200 if ok else 503)

    @app.get("/metrics", include_in_schema=False)
    def metrics() -> Response:
        return Response(ctx.metrics.render(), media_type=CONTENT_TYPE_LATEST)

    @api.get("/sites", response_model=Sites)
    def sites() -> dict[str, Any]:
        return {
            "sites": [
                {
                    "id": s.id,
                    "name": s.name,
                    "kind": s.kind,
                    "levels": [lv.level for lv in s.levels],
                }
                for s in live.sites.values()
            ]
        }

    @api.get("/sites/{site}", response_model=SiteGeometry)
    def site_geometry(site: SiteDep) -> dict[str, Any]:
        return {
            "id": site.id,
            "name": site.name,
            "kind": site.kind,
            "timezone": site.timezone,
            "levels": [
                {
                    "level": lv.level,
                    "name": lv.name,
                    "outline": lv.outline,
                    "walls": [{"id": w.id, "start": w.start, "end": w.end} for w in lv.walls],
                    "obstacles": [
                        {"id": o.id, "kind": o.kind, "polygon": o.polygon} for o in lv.obstacles
                    ],
                }
                for lv in site.levels
            ],
            "zones": [
                {"id": z.id, "name": z.name, "kind": z.kind, "level": z.level, "polygon": z.polygon}
                for z in site.zones
            ],
            "gateways": [
                {"id": g.id, "name": g.name, "x": g.x, "y": g.y, "z": g.z, "level": g.level}
                for g in site.gateways
            ],
        }

    def _live_part(site: Site, part: str, empty: dict[str, Any]) -> Response:
        snap = live.snapshot(site.id)
        if snap is None:
            return JSONResponse({"site": site.id, "t": None, **empty})
        return _json(snap.json(part))

    @api.get("/sites/{site}/positions", response_model=Positions)
    def positions(site: SiteDep) -> Response:
        return _live_part(site, "positions", {"positions": []})

    @api.get("/sites/{site}/zones/occupancy", response_model=Occupancy)
    def occupancy(site: SiteDep) -> Response:
        return _live_part(site, "occupancy", {"zones": {}})

    @api.get("/sites/{site}/gateways", response_model=Gateways)
    def gateways(site: SiteDep) -> Response:
        # Built on the service thread at each tick and each status or heartbeat (livestate.py).
        return JSONResponse(live.gateways(site.id))

    @api.get("/sites/{site}/alerts", response_model=Alerts)
    def alerts(site: SiteDep) -> Response:
        return _live_part(site, "alerts", {"idle": [], "lost": [], "low_battery": []})

    @api.get("/sites/{site}/beacons/{beacon}/history", response_model=History)
    def history(
        site: SiteDep,
        beacon: BeaconArg,
        since: Time = None,
        until: Time = None,
        limit: Annotated[int, Query(ge=1, le=MAX_HISTORY_FIXES)] = MAX_HISTORY_FIXES,
    ) -> dict[str, Any]:
        beacon = _valid_beacon(beacon)
        start, end = _range(since, until)
        rows, truncated = reader().history(site.id, beacon, start, end, limit)
        return {
            "site": site.id,
            "beacon": beacon,
            "since": start,
            "until": end,
            "truncated": truncated,
            "fixes": [
                {"t": t, "x": x, "y": y, "level": lv, "accuracy_m": a, "zone": z}
                for t, x, y, lv, a, z in rows
            ],
        }

    @api.get("/sites/{site}/zones/dwell", response_model=Dwell)
    def dwell(site: SiteDep, since: Time = None, until: Time = None) -> dict[str, Any]:
        start, end = _range(since, until)
        stats, truncated = reader().dwell(site.id, start, end, MAX_DWELL_VISITS)
        return {
            "site": site.id,
            "since": start,
            "until": end,
            "truncated": truncated,
            "zones": {z: {**s, "visits": int(s["visits"])} for z, s in stats.items()},
        }

    @api.get("/sites/{site}/zones/heat", response_model=Heat)
    def heat(site: SiteDep, since: Time = None, until: Time = None) -> dict[str, Any]:
        start, end = _range(since, until)
        zones, samples = reader().heat(site.id, start, end)
        return {"site": site.id, "since": start, "until": end, "samples": samples, "zones": zones}

    @api.get("/sites/{site}/events", response_model=Events)
    def events(  # noqa: PLR0917  # FastAPI maps query parameters by name
        site: SiteDep,
        type: Annotated[str | None, Query(max_length=32)] = None,  # noqa: A002  # the API's name
        beacon: Annotated[str | None, Query(max_length=_BEACON_ID_CHARS)] = None,
        since: Time = None,
        until: Time = None,
        limit: Annotated[int, Query(ge=1, le=MAX_EVENTS)] = 100,
    ) -> dict[str, Any]:
        if type is not None and not _EVENT_TYPE.fullmatch(type):
            raise HTTPException(422, "type: lower-case letters and _ only (e.g. zone_enter)")
        if beacon is not None:
            beacon = _valid_beacon(beacon)
        start, end = _range(since, until)
        found = reader().events(site.id, start, end, limit, type_=type, beacon=beacon)
        return {
            "site": site.id,
            "since": start,
            "until": end,
            "events": [
                {"t": e.t, "type": e.type, "beacon": e.beacon, "zone": e.zone, "data": e.data}
                for e in found
            ],
        }

    @api.get("/assets", response_model=Assets)
    def assets(
        q: Annotated[str, Query(min_length=1, max_length=MAX_QUERY_CHARS)],
        limit: Annotated[int, Query(ge=1, le=MAX_ASSET_RESULTS)] = 20,
    ) -> dict[str, Any]:
        needle = q.strip().casefold()
        if not needle:  # "" is in every label: a blank query would list everything
            raise HTTPException(422, "q: blank; give part of a label or beacon id")
        out: list[dict[str, Any]] = []
        seen: set[str] = set()
        for site_id, p in live.find(needle, limit):
            seen.add(p["beacon"])
            out.append(
                {
                    "beacon": p["beacon"],
                    "label": p["label"],
                    "kind": p["kind"],
                    "battery_mv": None,
                    "last_seen": None,
                    "site": site_id,
                    "zone": p["zone"],
                    "x": p["x"],
                    "y": p["y"],
                    "level": p["level"],
                }
            )
        for a in live.assets():
            if len(out) >= limit:
                break
            if a.beacon in seen:
                continue
            if needle in (a.label or "").casefold() or needle in a.beacon:
                out.append(
                    {
                        "beacon": a.beacon,
                        "label": a.label,
                        "kind": a.kind,
                        "battery_mv": a.battery_mv,
                        "last_seen": a.last_seen,
                        "site": None,
                        "zone": None,
                        "x": None,
                        "y": None,
                        "level": None,
                    }
                )
        by_beacon = {a.beacon: a for a in live.assets()} if out else {}
        for row in out:
            known = by_beacon.get(row["beacon"])
            if known is not None:
                row["battery_mv"], row["last_seen"] = known.battery_mv, known.last_seen
        return {"q": q, "assets": out}

    def consent_target(beacon: str) -> tuple[str, ConsentWriter]:
        """The tag's id, checked, and the registry that may change its consent."""
        beacon = _valid_beacon(beacon)
        if beacon.startswith("anon:"):
            raise HTTPException(422, "consent is given for a tag's own id, not a pseudonym")
        if not cfg.allow_writes:
            raise HTTPException(403, "the API is read-only (http.allow_writes: false)")
        registry = ctx.consent()
        if registry is None:
            raise HTTPException(404, "this hub has no consent registry")
        return beacon, registry

    @api.put("/consent/{beacon}", response_model=ConsentOut)
    def grant(beacon: BeaconArg) -> dict[str, Any]:
        beacon, registry = consent_target(beacon)
        try:
            pseudonym = registry.grant(beacon)
        except (BeaconHubError, ValueError) as e:
            raise HTTPException(400, str(e)) from e
        return {"beacon": beacon, "consent": True, "pseudonym": pseudonym}

    @api.delete("/consent/{beacon}", response_model=ConsentOut)
    def revoke(beacon: BeaconArg) -> dict[str, Any]:
        beacon, registry = consent_target(beacon)
        try:
            registry.revoke(beacon)
        except (BeaconHubError, ValueError) as e:
            raise HTTPException(400, str(e)) from e
        return {"beacon": beacon, "consent": False, "pseudonym": None}

    @api.get(
        "/sites/{site}/stream",
        response_class=StreamingResponse,
        responses={
            200: {
                "content": {"text/event-stream": {"schema": Tick.model_json_schema()}},
                "description": "`event: tick` per site tick; data is a Tick (JSON)",
            },
            503: {"model": Problem},
        },
    )
    async def stream(site: SiteDep) -> StreamingResponse:
        return _EventStream(live, site.id, cfg.max_stream_clients)

    app.include_router(api)
    return app


class _EventStream(StreamingResponse):
    """One client's server-sent events. The stream takes its place among
    `http.max_stream_clients` when the response starts (`LiveState.admit`: count and
    subscription at once), so requests arriving together cannot all pass the check, and the
    `finally` gives the place back on every way out (the end, a disconnect, a cancellation, an
    error). Checking in the handler and subscribing in the body let 39 of 40 concurrent
    requests through a cap of 4."""

    def __init__(self, live: LiveState, site: str, cap: int) -> None:
        headers = {"Cache-Control": "no-store", "X-Accel-Buffering": "no"}
        super().__init__(self._events(), media_type="text/event-stream", headers=headers)
        self._live = live
        self._site = site
        self._cap = cap
        self._queue: asyncio.Queue[SiteSnapshot | None] | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        queue = self._live.admit(self._site, self._cap)
        if queue is None:
            busy = JSONResponse({"detail": "too many open streams"}, status_code=503)
            await busy(scope, receive, send)
            return
        self._queue = queue
        try:
            await super().__call__(scope, receive, send)
        finally:
            self._live.unsubscribe(self._site, queue)

    async def _events(self) -> AsyncIterator[bytes]:
        """Its queue holds the newest snapshot only (livestate.py); None means the server is
        stopping. Runs only after __call__ subscribed."""
        queue = self._queue
        if queue is None:  # not admitted: __call__ answered 503 instead
            return
        yield b"retry: 2000\n\n"
        while True:
            try:
                snap = await asyncio.wait_for(queue.get(), KEEPALIVE_S)
            except TimeoutError:
                yield b": keepalive\n\n"
                continue
            if snap is None:
                return
            # Encoding 10,000 positions takes ~0.1 s: off the loop, once per snapshot (cached).
            body = await asyncio.to_thread(snap.json)
            yield b"event: tick\nid: %d\ndata: %s\n\n" % (snap.version, body)


class _Server(uvicorn.Server):
    """uvicorn without signal handling: the hub's main thread owns SIGTERM/SIGINT."""

    @contextlib.contextmanager
    def capture_signals(self) -> Any:
        yield


class WebServer:
    """Binds at construction (so `port` is known and a busy port fails early), serves from
    `start()` on a thread with its own loop until `stop()`."""

    def __init__(
        self,
        config: HttpConfig,
        *,
        metrics: Metrics,
        health: Callable[[], tuple[bool, dict[str, Any]]],
        live: LiveState,
        reader: SqliteReader | None,
        consent: Callable[[], ConsentWriter | None] = lambda: None,
    ) -> None:
        self.ctx = _Context(config, metrics, health, live, reader, consent)
        self.app = create_app(self.ctx)
        family = socket.AF_INET6 if ":" in config.bind else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((config.bind, config.port))
            sock.listen(LISTEN_BACKLOG)
        except OSError:
            sock.close()
            raise
        sock.setblocking(False)
        self._sock = sock
        _warn_if_few_descriptors(config.max_connections)
        self._server = _Server(
            uvicorn.Config(
                self.app,
                http=_bounded_h11(
                    config.max_connections,
                    config.request_read_timeout_s,
                    config.send_stall_timeout_s,
                ),
                ws="none",  # none served; an upgrade would take the connection out of the count
                backlog=LISTEN_BACKLOG,
                h11_max_incomplete_event_size=MAX_HEAD_BYTES,
                log_config=None,
                access_log=False,
                lifespan="off",
                timeout_graceful_shutdown=SHUTDOWN_GRACE_S,
            )
        )
        self._accept_errors = RateLimitedLog(WARN_EVERY_S, logger=log)
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._started = threading.Event()

    @property
    def port(self) -> int:
        return int(self._sock.getsockname()[1])

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="beacon-hub-http", daemon=True)
        self._thread.start()
        self._started.wait()

    def _run(self) -> None:
        loop = asyncio.new_event_loop()
        asyncio.set_event_loop(loop)
        self._loop = loop
        loop.set_exception_handler(self._loop_error)
        self.ctx.live.attach(loop)
        self._started.set()
        try:
            loop.run_until_complete(self._server.serve(sockets=[self._sock]))
        finally:
            self.ctx.live.attach(None)
            loop.run_until_complete(loop.shutdown_asyncgens())
            loop.run_until_complete(loop.shutdown_default_executor())
            loop.close()

    def _loop_error(self, loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        """Out of file descriptors, asyncio reports each failed accept (up to LISTEN_BACKLOG per
        wake-up, with a traceback); one line a minute says as much."""
        if context.get("message") == "socket.accept() out of system resource":
            self._accept_errors.warning(
                ("accept",),
                "http: accept() failed (%s): the process is out of file descriptors; see "
                "LimitNOFILE and http.max_connections (docs/security.md)",
                context.get("exception"),
            )
            return
        loop.default_exception_handler(context)

    def stop(self) -> None:
        """Ask open streams to finish, stop uvicorn, join its thread."""
        loop = self._loop
        if loop is not None and not loop.is_closed():
            with contextlib.suppress(RuntimeError):  # closed meanwhile: nothing to tell
                loop.call_soon_threadsafe(self.ctx.live.close_streams)
        self._server.should_exit = True
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        self._sock.close()


def _warn_if_few_descriptors(max_connections: int) -> None:
    soft, _hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    needed = max_connections + 4 * LISTEN_BACKLOG + FD_RESERVE
    if soft != resource.RLIM_INFINITY and needed > soft:
        log.warning(
            "http.max_connections is %d but the process may open only %d files: a flood of "
            "connections could starve SQLite and MQTT; raise LimitNOFILE (deploy/systemd) or "
            "lower http.max_connections",
            max_connections,
            soft,
        )
