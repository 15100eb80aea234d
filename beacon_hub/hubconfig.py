"""The hub's one config schema: YAML file, then `BEACON_HUB__*` environment, then `--set`.

Loaded only through `beacon_hub.config_loader.load_model`, so errors name the file and line.
Secrets (`broker.password`, `stores.influx.token`, `stores.influx.password`) are `SecretStr`:
pydantic masks them in repr and logs. The reference of every key is docs/hub.md.
"""

from __future__ import annotations

import ipaddress
import urllib.parse
from pathlib import Path
from typing import Annotated, Any, Literal, get_args

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    field_validator,
    model_validator,
)

from beacon_hub.broker_settings import BrokerSettings, TlsConfig
from beacon_hub.config_loader import ConfigPath, load_model
from beacon_hub.engine import EngineConfig
from beacon_hub.site import BeaconKindName

__all__ = [
    "ENV_PREFIX",
    "RETENTION_DEFAULT_KEY",
    "BrokerConfig",
    "HttpConfig",
    "HubConfig",
    "InfluxConfig",
    "IngestConfig",
    "OutputsConfig",
    "PrivacyConfig",
    "PromotionsConfig",
    "SiteEntry",
    "SqliteConfig",
    "StoresConfig",
    "TlsConfig",
    "WebhookConfig",
    "is_loopback",
    "load_hub_config",
]

ENV_PREFIX = "BEACON_HUB"
RETENTION_DEFAULT_KEY = "default"
"""`stores.retention_days` entry for the kinds it does not list and for beacons of no kind."""

TRACK_REFRESH_S = 30.0
"""DESIGN.md: `track/{beacon}` is republished at least this often even without a change."""


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class SiteEntry(_Section):
    site: ConfigPath
    """A site file (docs/site-file.md)."""
    calibration: ConfigPath | None = None
    """Output of `beacon-hub calibrate` for this site."""


class BrokerConfig(BrokerSettings):
    client_id: str | None = Field(default=None, min_length=1, max_length=128)
    """Fixed id of the persistent session; defaults to `beacon-hub-{site ids joined by -}`.
    Two hub processes must never share one (the broker would kick one out every connect)."""
    reconnect_min_s: int = Field(default=1, ge=1, le=60)
    """paho's reconnect backoff starts here and doubles up to reconnect_max_s."""
    reconnect_max_s: int = Field(default=5, ge=1, le=600)
    """The backoff's cap: 5 s for the hub, not the gateways' 30. The hub runs next to its broker
    (docs/hub.md), one client whose retries cost a refused connect on the local network, and
    while it is away its sites wait (docs/hub.md, Ticks): with 30 s, a 10 s broker restart kept
    it away 15 s (backoff 1, 2, 4, 8). Many gateways keep 30 s, so they do not all return at
    once."""
    ack: Literal["after_store", "after_ingest"] = "after_store"
    """When a readings message is acknowledged to the broker. after_store: once the tick that
    used it is in the stores, so a crash loses nothing the broker delivered; needs the broker's
    max_inflight_messages above the batches of one tick (deploy/mosquitto/mosquitto.conf).
    after_ingest: at once; works with any broker limit, a crash loses about one tick."""


class IngestConfig(_Section):
    queue_messages: int = Field(default=2_000, ge=10, le=1_000_000)
    """The bounded inbox between paho's thread and the service (docs/hub.md, Overload). 2,000
    batches are half a minute of the 60-gateway example warehouse at 100,000 readings/s, ~130
    MB at 64 KB a batch (bench/hub_throughput.py's); the worst case is 2,000 maximal (1 MiB)
    batches, 2 GB."""
    overload_wait_s: float = Field(default=5.0, ge=0, le=60)
    """A full inbox blocks paho's thread (TCP back-pressure on the broker) this long before the
    message is dropped unacknowledged (the broker sends it again on the next connect, which the
    hub makes once the inbox has drained: docs/hub.md, Overload policy)."""
    future_tolerance_s: float = Field(default=2.0, ge=0, le=3600)
    """A batch whose send time runs ahead of its gateway's learnt clock offset by more than
    this is refused as `future`."""
    dead_letter_topic: str | None = None
    """If set, every refused payload is republished here (QoS 0) with the reason in the topic:
    `{dead_letter_topic}/{site}/{reason}`."""
    log_every_s: float = Field(default=60.0, ge=0, le=86_400)
    """Bad input is logged at most once per gateway and reason in this interval."""
    max_tick_lag_s: float | None = Field(default=10.0, gt=0, le=3600)
    """A live site whose next tick still waits this long after its interval has ended (ticks
    slower than their interval: more beacons than the machine can place, a stall) skips to the
    newest tick and counts the ones it left out (docs/hub.md, Overload policy). Ten seconds is
    ten times the longest stall bench/hub_throughput.py has shown (1.1 s) and keeps a map no
    more than seconds stale. Data from before the hub started (a restart's backlog) is always
    ticked in full. None: never skip (the ticks fall behind without bound, up to 600 s)."""


class OutputsConfig(_Section):
    mqtt: bool = True
    """Publish `track/{beacon}`, `tracks` and `event/{type}` (DESIGN.md)."""
    track_refresh_s: float = Field(default=TRACK_REFRESH_S, gt=0, le=3600)


class SqliteConfig(_Section):
    path: ConfigPath = Path("beacon-hub.sqlite")
    """The embedded store and the hub's own state (gateway sequence numbers, assets)."""
    fixes: bool = True
    """Store fixes and events here; False keeps only the hub's state in SQLite."""


class InfluxConfig(_Section):
    version: Literal[1, 2] = 1
    """1: InfluxDB 1.x `/write`; 2: influxdb-client's write API (2.x, 3.x, Cloud, 1.8+)."""
    url: str = "http://localhost:8086"
    database: str = "beacons"
    """1.x database (version 1)."""
    retention_policy: str | None = Field(default=None, pattern=r"^[A-Za-z0-9_]+$")
    """Write every point into this existing policy; the hub then creates none of its own.
    Unset (recommended): per-class policies `beacon_hub_{class}` (docs/privacy.md, Retention)."""
    username: str | None = None
    password: SecretStr | None = None
    bucket: str = "beacons"
    org: str = "-"
    token: SecretStr | None = None
    batch_points: int = Field(default=5_000, ge=1, le=1_000_000)
    flush_interval_s: float = Field(default=1.0, gt=0, le=300)
    retry_max_s: float = Field(default=30.0, gt=0, le=3600)
    """Backoff between failed writes doubles from 0.5 s up to this."""
    spill_dir: ConfigPath = Path("beacon-hub-spill")
    spill_max_bytes: int = Field(default=512 * 1024 * 1024, ge=1024)
    """While the database is unreachable, batches go to files here; beyond this size the
    oldest file is dropped and counted (an outage longer than the spill can hold)."""
    timeout_s: float = Field(default=10.0, gt=0, le=300)

    @field_validator("url")
    @classmethod
    def _url(cls, url: str) -> str:
        parts = urllib.parse.urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError("expected http://host:port or https://host:port")
        return url.rstrip("/")


class StoresConfig(_Section):
    sqlite: SqliteConfig = SqliteConfig()
    influx: InfluxConfig | None = None
    retention_days: dict[str, Annotated[float, Field(gt=0, le=36_500)] | None] = {}
    """Days kept per beacon kind that is not a shopper's (`pallet: 365`), `default` for the
    kinds not listed and beacons of no kind; a missing or null entry keeps forever. Shoppers
    follow `privacy.retention_days` (docs/privacy.md, Retention)."""
    deadband_m: float = Field(default=0.0, ge=0, le=100)
    """Store a beacon's fix only when it moved this far from its last stored fix, changed zone
    or level, or `heartbeat_s` passed (beacon_hub/thinning.py); 0 stores every fix. A parked
    pallet's fix wanders a few tens of centimetres from tick to tick: 0.5 m stored 9 % of the
    fixes of 480 s of the calibrated simulated warehouse, 14 % of the hub bench's (docs/hub.md,
    Thinning)."""
    heartbeat_s: float = Field(default=60.0, gt=0, le=86_400)
    """With `deadband_m`, a beacon still heard gets a stored fix at least this often: a
    history query over any minute finds it (a common historian heartbeat)."""


_HOST_CHARS = frozenset("abcdefghijklmnopqrstuvwxyz0123456789.-:")
"""What an allowed Host may hold: a DNS name, an IPv4 address or an IPv6 one (no brackets)."""


def is_loopback(host: str) -> bool:
    """`localhost` or a loopback address (a bind, a Host header's name)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # a host name: it may resolve to anything


class HttpConfig(_Section):
    """The dashboard, the JSON API (docs/api.md), /healthz and /metrics on one port."""

    enabled: bool = True
    bind: str = "127.0.0.1"
    port: int = Field(default=9108, ge=0, le=65535)
    """0 picks a free port (tests, the demo). 9108 is free in Prometheus' default port
    allocations list."""
    token: SecretStr | None = None
    """Bearer token every /api request and the dashboard need (`Authorization: Bearer T` or
    `?token=T`); /healthz and /metrics stay open. Required when `bind` is not loopback."""
    allow_writes: bool = False
    """Enables PUT/DELETE /api/consent/{beacon}; the API is read-only otherwise."""
    idle_at_dock_s: float = Field(default=1800.0, gt=0, le=30 * 86_400)
    """A pallet in a zone of kind `dock` for longer than this is listed as idle: goods should
    leave the dock within half an hour of arriving (a common cross-dock target)."""
    low_battery_mv: int = Field(default=2500, ge=0, le=10_000)
    """Eddystone TLM battery below this is listed as low: a CR2032/CR2477 cell holds ~3.0 V
    for most of its life and collapses soon after 2.5 V under radio load."""
    gateway_offline_after_s: float = Field(default=15.0, gt=0, le=86_400)
    """A gateway with no batch for this long is shown offline: gateways send one batch a
    second (gateway batching.window), so 15 s is well past jitter and a broker reconnect."""
    occupancy_sample_s: float = Field(default=10.0, ge=0, le=3600)
    """Zone occupancy goes to SQLite (table `occupancy`) this often, in hub time (0: every
    tick); the heat map and occupancy history read it."""
    max_stream_clients: int = Field(default=64, ge=1, le=10_000)
    """Server-sent event streams open at once; more are refused with 503."""
    max_connections: int = Field(default=256, ge=1, le=60_000)
    """HTTP connections open at once, streams included. At the cap a new connection closes the
    one that has kept the server waiting longest for its request, or gets 503 when every one is
    busy. 256 holds `max_stream_clients`' 64 dashboards plus 192 requests at a time; with the
    ~200 sockets a flood holds for a moment beyond it (web.LISTEN_BACKLOG) it stays under half
    of systemd's default soft limit of 1024 open files, leaving the rest to SQLite, MQTT and
    InfluxDB even where LimitNOFILE was not raised."""
    request_read_timeout_s: float = Field(default=10.0, ge=1.0, le=300.0)
    """A client has this long to send its request (the head; a body nobody reads) from when the
    server starts waiting for it; then the connection is closed, bytes trickling in or not.
    The API's heads are under 1 kB and it takes no bodies: a working client needs milliseconds,
    a poor Wi-Fi link a second or two; 10 s frees a slowloris' connections six times sooner
    than nginx's default client_header_timeout (60 s)."""
    send_stall_timeout_s: float = Field(default=60.0, ge=1.0, le=3600.0)
    """A connection whose answer has not moved for this long, because the client reads none of
    it (a tablet gone out of Wi-Fi range without closing, a stuck client), is closed: it frees
    its place among `max_connections` and, for a stream, `max_stream_clients` (TCP alone gives
    up after ~15 min of retransmissions, Linux tcp_retries2). 60 s is nginx's default
    send_timeout; a slow but reading client moves its answer far more often."""
    allowed_hosts: list[str] = []
    """Host names besides localhost, 127.x and [::1] that requests may carry when the hub is
    bound to loopback without a token (names for this machine, e.g. behind a local reverse
    proxy that keeps the client's Host); other Hosts get 400 (docs/security.md, DNS rebinding)."""

    @field_validator("allowed_hosts")
    @classmethod
    def _host_names(cls, names: list[str]) -> list[str]:
        out: list[str] = []
        for name in names:
            host = name.strip().lower().removeprefix("[").removesuffix("]")
            if not 0 < len(host) <= 253 or not set(host) <= _HOST_CHARS or host.count(":") == 1:
                raise ValueError(f"{name!r}: give a host name or IP address, without a port")
            out.append(host)
        return out

    @model_validator(mode="after")
    def _token_beyond_loopback(self) -> HttpConfig:
        if self.enabled and not is_loopback(self.bind) and self.token is None:
            raise ValueError(
                f"http.bind is {self.bind!r} (beyond loopback) but http.token is not set: "
                "set http.token (or BEACON_HUB__HTTP__TOKEN), or bind 127.0.0.1"
            )
        if self.max_stream_clients > self.max_connections:
            raise ValueError(
                f"http.max_stream_clients ({self.max_stream_clients}) exceeds "
                f"http.max_connections ({self.max_connections}): each stream holds a connection"
            )
        return self

    @property
    def checks_host(self) -> bool:
        """Requests must name this machine in Host: loopback bind and no token (web.py)."""
        return is_loopback(self.bind) and self.token is None


class PrivacyConfig(_Section):
    """Shoppers' consent, pseudonyms and retention (docs/privacy.md)."""

    shopper_kinds: list[str] = ["cart"]
    """Beacon kinds (site file `beacon_kinds`) that belong to shoppers: tracked only with consent,
    and only under a pseudonym."""
    key: SecretStr | None = None
    """The pseudonym key (HMAC-SHA256). Unset: a random key in `key_file`, created at first
    start. Hub processes that share a database or dashboard must share the key."""
    key_file: ConfigPath | None = None
    """Default: `{stores.sqlite.path}.privacy-key` next to the SQLite file, mode 0600."""
    consent_file: ConfigPath | None = None
    """Beacons whose shoppers said yes: CSV (`beacon[,expires]`) or YAML (a list of ids or of
    `{beacon, expires}`); `expires` is Unix seconds or an ISO 8601 date-time."""
    retention_days: float | None = Field(default=None, gt=0, le=36_500)
    """Shoppers' data (shopper kinds, `anon:` ids, promotion decisions) is kept this long: deleted
    from SQLite hourly and written to InfluxDB 1.x's `beacon_hub_shoppers` policy of this
    duration. None keeps it. Other kinds: `stores.retention_days`."""


class WebhookConfig(_Section):
    url: str
    secret: SecretStr | None = None
    """Signs each POST: `X-Beacon-Hub-Signature: sha256=HMAC(secret, "{timestamp}.{body}")`."""
    timeout_s: float = Field(default=5.0, gt=0, le=120)
    attempts: int = Field(default=5, ge=1, le=100)
    """Tries per promotion; waits double from 0.5 s up to `retry_max_s` in between."""
    retry_max_s: float = Field(default=30.0, gt=0, le=3600)
    queue: int = Field(default=1_000, ge=1, le=1_000_000)
    """Promotions waiting for the webhook; when full the newest is dropped and counted."""

    @field_validator("url")
    @classmethod
    def _url(cls, url: str) -> str:
        parts = urllib.parse.urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError("expected an http:// or https:// URL")
        return url


class PromotionsConfig(_Section):
    rules: ConfigPath | None = None
    """The rules file (docs/promotions.md); None: no promotions."""
    webhook: WebhookConfig | None = None


class HubConfig(_Section):
    sites: Annotated[list[SiteEntry], Field(min_length=1)]
    broker: BrokerConfig = BrokerConfig()
    engine: EngineConfig = EngineConfig()
    ingest: IngestConfig = IngestConfig()
    outputs: OutputsConfig = OutputsConfig()
    stores: StoresConfig = StoresConfig()
    http: HttpConfig = HttpConfig()
    privacy: PrivacyConfig = PrivacyConfig()
    promotions: PromotionsConfig = PromotionsConfig()
    assets: ConfigPath | None = None
    """An asset registry file (CSV or YAML) loaded at start, on top of the imported ones."""

    @model_validator(mode="after")
    def _retention_keys(self) -> HubConfig:
        kinds = set(get_args(BeaconKindName))
        for key in self.stores.retention_days:
            if key in self.privacy.shopper_kinds:
                raise ValueError(
                    f"stores.retention_days.{key}: {key} is a shopper kind "
                    "(privacy.shopper_kinds); its retention is privacy.retention_days"
                )
            if key != RETENTION_DEFAULT_KEY and key not in kinds:
                raise ValueError(
                    f"stores.retention_days.{key}: expected a beacon kind "
                    f"({', '.join(sorted(kinds))}) or {RETENTION_DEFAULT_KEY!r}"
                )
        return self


def load_hub_config(
    path: Path | None,
    *,
    sites: list[Path] | None = None,
    overrides: dict[str, Any] | None = None,
    environ: dict[str, str] | None = None,
) -> HubConfig:
    """The hub config; `sites` (from `--site`) are added to the file's."""
    merged = dict(overrides or {})
    if sites:
        base: list[dict[str, Any]] = []
        if path is not None:
            file_cfg = load_model(_SitesOnly, path=path)
            base = [{"site": s.site, "calibration": s.calibration} for s in file_cfg.sites]
        merged["sites"] = base + [{"site": p} for p in sites]
    return load_model(
        HubConfig, path=path, env_prefix=ENV_PREFIX, overrides=merged, environ=environ
    )


class _SitesOnly(BaseModel):
    model_config = ConfigDict(extra="ignore")
    sites: list[SiteEntry] = []
