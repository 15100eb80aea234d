"""The hub's one config schema: YAML file, then `BEACON_HUB__*` environment, then `--set`.

Loaded only through `beacon_hub.config_loader.load_model`, so errors name the file and line.
Secrets (`broker.password`, `stores.influx.token`, `stores.influx.password`) are `SecretStr`:
pydantic masks them in repr and logs. The reference of every key is docs/hub.md.
"""

from __future__ import annotations

import urllib.parse
from pathlib import Path
from typing import Annotated, Any, Literal, Self

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    field_validator,
    model_validator,
)

from beacon_hub.config_loader import load_model
from beacon_hub.engine import EngineConfig
from beacon_hub.errors import ConfigError

__all__ = [
    "ENV_PREFIX",
    "BrokerConfig",
    "HttpConfig",
    "HubConfig",
    "InfluxConfig",
    "IngestConfig",
    "OutputsConfig",
    "SiteEntry",
    "SqliteConfig",
    "StoresConfig",
    "TlsConfig",
    "load_hub_config",
]

ENV_PREFIX = "BEACON_HUB"

TRACK_REFRESH_S = 30.0
"""DESIGN.md: `track/{beacon}` is republished at least this often even without a change."""


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class SiteEntry(_Section):
    site: Path
    """A site file (docs/site-file.md)."""
    calibration: Path | None = None
    """Output of `beacon-hub calibrate` for this site."""


class TlsConfig(_Section):
    ca_file: Path | None = None
    cert_file: Path | None = None
    key_file: Path | None = None

    @model_validator(mode="after")
    def _pair(self) -> Self:
        if (self.cert_file is None) != (self.key_file is None):
            raise ValueError("cert_file and key_file go together")
        return self


class BrokerConfig(_Section):
    url: str = "mqtt://localhost:1883"
    """mqtt://host[:port] or mqtts://host[:port] (TLS; port 8883 by default)."""
    client_id: str | None = Field(default=None, min_length=1, max_length=128)
    """Fixed id of the persistent session; defaults to `beacon-hub-{site ids joined by -}`.
    Two hub processes must never share one (the broker would kick one out every connect)."""
    username: str | None = None
    password: SecretStr | None = None
    password_file: Path | None = None
    tls: TlsConfig | None = None
    keepalive_s: int = Field(default=30, ge=5, le=3600)
    reconnect_min_s: int = Field(default=1, ge=1, le=60)
    reconnect_max_s: int = Field(default=30, ge=1, le=600)
    """paho's reconnect backoff: starts at reconnect_min_s, doubles up to this."""
    ack: Literal["after_store", "after_ingest"] = "after_store"
    """When a readings message is acknowledged to the broker. after_store: once the tick that
    used it is in the stores, so a crash loses nothing the broker delivered; needs the broker's
    max_inflight_messages above the batches of one tick (deploy/mosquitto/mosquitto.conf).
    after_ingest: at once; works with any broker limit, a crash loses about one tick."""

    @model_validator(mode="before")
    @classmethod
    def _credentials_out_of_url(cls, data: Any) -> Any:
        """mqtt://user:pass@host moves the credentials to their keys, so the URL can be logged."""
        if not isinstance(data, dict) or not isinstance(data.get("url"), str):
            return data
        parts = urllib.parse.urlsplit(data["url"])
        if "@" not in parts.netloc:
            return data
        userinfo, _, hostport = parts.netloc.rpartition("@")
        user, has_password, password = userinfo.partition(":")
        data = {**data, "url": urllib.parse.urlunsplit(parts._replace(netloc=hostport))}
        if user and data.get("username") is None:
            data["username"] = urllib.parse.unquote(user)
        if has_password and data.get("password") is None:
            data["password"] = urllib.parse.unquote(password)
        return data

    @field_validator("password", mode="before")
    @classmethod
    def _password_never_fails(cls, value: Any) -> Any:
        if value is None or isinstance(value, SecretStr):
            return value
        return SecretStr(value if isinstance(value, str) else str(value))

    @field_validator("url")
    @classmethod
    def _url(cls, url: str) -> str:
        parts = urllib.parse.urlsplit(url)
        if parts.scheme not in ("mqtt", "mqtts") or not parts.hostname:
            raise ValueError("expected mqtt://host[:port] or mqtts://host[:port]")
        try:
            _ = parts.port
        except ValueError as e:
            raise ValueError(f"bad port: {e}") from e
        return url

    @property
    def host(self) -> str:
        return urllib.parse.urlsplit(self.url).hostname or ""

    @property
    def use_tls(self) -> bool:
        return urllib.parse.urlsplit(self.url).scheme == "mqtts" or self.tls is not None

    @property
    def port(self) -> int:
        port = urllib.parse.urlsplit(self.url).port
        if port is not None:
            return port
        return 8883 if self.use_tls else 1883

    def read_password(self) -> str | None:
        if self.password is not None:
            return self.password.get_secret_value()
        if self.password_file is None:
            return None
        try:
            return self.password_file.read_text(encoding="utf-8").strip()
        except OSError as e:
            where = str(self.password_file)
            raise ConfigError(where, [f"broker.password_file {where}: {e.strerror}"]) from e


class IngestConfig(_Section):
    queue_messages: int = Field(default=2_000, ge=10, le=1_000_000)
    """The bounded inbox between paho's thread and the service (docs/hub.md, Overload). 2,000
    batches are a minute of a 35-gateway warehouse at 100,000 readings/s, ~120 MB at 60 KB a
    batch; the worst case is 2,000 maximal (1 MiB) batches, 2 GB."""
    overload_wait_s: float = Field(default=5.0, ge=0, le=60)
    """A full inbox blocks paho's thread (TCP back-pressure on the broker) this long before the
    message is dropped unacknowledged (the broker re-sends it on the next connect)."""
    future_tolerance_s: float = Field(default=2.0, ge=0, le=3600)
    """A batch whose send time runs ahead of its gateway's learnt clock offset by more than
    this is refused as `future`."""
    dead_letter_topic: str | None = None
    """If set, every refused payload is republished here (QoS 0) with the reason in the topic:
    `{dead_letter_topic}/{site}/{reason}`."""
    log_every_s: float = Field(default=60.0, ge=0, le=86_400)
    """Bad input is logged at most once per gateway and reason in this interval."""


class OutputsConfig(_Section):
    mqtt: bool = True
    """Publish `track/{beacon}`, `tracks` and `event/{type}` (DESIGN.md)."""
    track_refresh_s: float = Field(default=TRACK_REFRESH_S, gt=0, le=3600)


class SqliteConfig(_Section):
    path: Path = Path("beacon-hub.sqlite")
    """The embedded store and the hub's own state (gateway sequence numbers, assets)."""
    fixes: bool = True
    """Store fixes and events here; False keeps only the hub's state in SQLite."""


class InfluxConfig(_Section):
    version: Literal[1, 2] = 1
    """1: InfluxDB 1.x `/write`; 2: influxdb-client's write API (2.x, 3.x, Cloud, 1.8+)."""
    url: str = "http://localhost:8086"
    database: str = "beacons"
    """1.x database (version 1)."""
    retention_policy: str | None = None
    username: str | None = None
    password: SecretStr | None = None
    bucket: str = "beacons"
    org: str = "-"
    token: SecretStr | None = None
    batch_points: int = Field(default=5_000, ge=1, le=1_000_000)
    flush_interval_s: float = Field(default=1.0, gt=0, le=300)
    retry_max_s: float = Field(default=30.0, gt=0, le=3600)
    """Backoff between failed writes doubles from 0.5 s up to this."""
    spill_dir: Path = Path("beacon-hub-spill")
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


class HttpConfig(_Section):
    enabled: bool = True
    bind: str = "127.0.0.1"
    port: int = Field(default=9108, ge=0, le=65535)
    """/healthz and /metrics; 0 picks a free port (tests). 9108 is free in Prometheus'
    default port allocations list."""


class HubConfig(_Section):
    sites: Annotated[list[SiteEntry], Field(min_length=1)]
    broker: BrokerConfig = BrokerConfig()
    engine: EngineConfig = EngineConfig()
    ingest: IngestConfig = IngestConfig()
    outputs: OutputsConfig = OutputsConfig()
    stores: StoresConfig = StoresConfig()
    http: HttpConfig = HttpConfig()
    assets: Path | None = None
    """An asset registry file (CSV or YAML) loaded at start, on top of the imported ones."""


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
