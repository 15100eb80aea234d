"""The gateway's one config schema: YAML file, then `BEACON_GATEWAY__*` environment, then `--set`.

Loaded only through `beacon_hub.config_loader.load_model`, so errors name the file and line.
Secrets (`broker.password`) are `SecretStr`: pydantic masks them in repr and logs, and the
gateway never writes its config anywhere. `broker.password_file` reads the password from a file
(systemd's `LoadCredential=`), so it need not sit in the YAML at all.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Literal, Self

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    field_validator,
    model_validator,
)

from beacon_hub.broker_settings import BrokerSettings, TlsConfig
from beacon_hub.config_loader import ConfigPath, load_model
from beacon_hub.ids import NAME_ID_PATTERN, mac_id

__all__ = [
    "ENV_PREFIX",
    "BatchingConfig",
    "BrokerConfig",
    "BufferConfig",
    "FilterConfig",
    "GatewayConfig",
    "ScannerConfig",
    "TlsConfig",
    "load_gateway_config",
]

ENV_PREFIX = "BEACON_GATEWAY"

WATCHDOG_SILENCE_S = 90.0
"""Restart the scan after this long without any advertisement: a stalled BlueZ discovery reports
no error; 90 s is what Home Assistant's habluetooth scanner uses."""

_HEX32 = re.compile(r"^[0-9a-f]{32}$")
_HEX20 = re.compile(r"^[0-9a-f]{20}$")

NameId = Annotated[str, Field(pattern=NAME_ID_PATTERN)]


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class BrokerConfig(BrokerSettings):
    client_id: str | None = Field(default=None, min_length=1, max_length=128)
    """Defaults to `beacon-gateway-{gateway_id}`."""


class ScannerConfig(_Section):
    source: Literal["bluez", "replay"] = "bluez"
    """`bluez` scans the radio with bleak. `replay` plays `replay_file` through the same
    callback path, for tests and demos on machines without a radio; never for production."""
    mode: Literal["active", "passive"] = "active"
    """Passive scanning sends no scan requests (saves beacon battery) but needs BlueZ >= 5.56
    with experimental features (`bluetoothd --experimental`); see docs/gateway.md."""
    adapter: str | None = Field(default=None, pattern=r"^hci[0-9]{1,3}$")
    """hci0, hci1 ...; None uses the first powered adapter."""
    rssi_floor_dbm: int = Field(default=-127, ge=-127, le=20)
    """BlueZ discovery filter RSSI: -127 lets everything through; filters.min_rssi_dbm is the
    gateway's own floor."""
    watchdog_silence_s: float = Field(default=WATCHDOG_SILENCE_S, gt=0, le=3600)
    backoff_initial_s: float = Field(default=1.0, gt=0, le=60)
    backoff_max_s: float = Field(default=60.0, gt=0, le=3600)
    power_cycle_after_failures: int | None = Field(default=None, ge=1, le=100)
    """After this many failed starts in a row, power the adapter off and on (D-Bus); off by
    default because it also drops other Bluetooth connections of the Pi."""
    replay_file: ConfigPath | None = None
    """JSON lines of advertisements (source: replay); see docs/gateway.md."""
    replay_interval_s: float = Field(default=0.1, ge=0.0, le=60)
    """Pause between replayed advertisements when a line gives no `delay_s`."""
    replay_loop: bool = True

    @model_validator(mode="after")
    def _replay(self) -> Self:
        if self.source == "replay" and self.replay_file is None:
            raise ValueError("source: replay needs replay_file")
        return self


class FilterConfig(_Section):
    ibeacon_uuids: list[str] = []
    """iBeacon proximity UUIDs (and AltBeacon 16-byte ids) to publish, any spelling."""
    eddystone_namespaces: list[str] = []
    """Eddystone-UID namespaces (20 hex digits) to publish."""
    id_patterns: list[str] = []
    """Shell-style patterns on canonical ids, e.g. `ibeacon:*:100:*`."""
    min_rssi_dbm: float = Field(default=-127.0, ge=-127, le=20)
    track_macs: list[str] = []
    """Addresses published as `mac:` ids although they send no beacon frame (asset tags).
    Only listed addresses: other devices are never published."""

    @field_validator("ibeacon_uuids")
    @classmethod
    def _uuids(cls, values: list[str]) -> list[str]:
        out = [v.replace("-", "").lower() for v in values]
        for v in out:
            if _HEX32.fullmatch(v) is None:
                raise ValueError(f"{v!r} is not a 16-byte UUID (32 hex digits)")
        return out

    @field_validator("eddystone_namespaces")
    @classmethod
    def _namespaces(cls, values: list[str]) -> list[str]:
        out = [v.lower() for v in values]
        for v in out:
            if _HEX20.fullmatch(v) is None:
                raise ValueError(f"{v!r} is not a 10-byte namespace (20 hex digits)")
        return out

    @field_validator("track_macs")
    @classmethod
    def _macs(cls, values: list[str]) -> list[str]:
        for v in values:
            mac_id(v)  # IdError (a ValueError) names the bad address
        return values


class BatchingConfig(_Section):
    window_s: float = Field(default=1.0, ge=0.05, le=60)
    """One batch per window; DESIGN.md's hub ticks every second."""
    max_samples: int = Field(default=20_000, ge=1, le=100_000)
    """A window with more samples is sent early (wire.MAX_BATCH_SAMPLES is the hard limit)."""


class BufferConfig(_Section):
    max_batches: int = Field(default=600, ge=1, le=1_000_000)
    """Batches kept while the broker is unreachable: 600 one-second batches = 10 minutes.
    When full the oldest is dropped and counted."""
    dir: ConfigPath | None = None
    """Keep the buffer on disk in this folder (survives a restart; costs SD card writes, only
    while the broker is away or slow, see `persist`). None keeps it in memory."""
    inflight: int = Field(default=10, ge=1, le=100)
    """Batches handed to paho and not yet acknowledged; paho re-sends them after a reconnect."""
    persist: Literal["outage", "every_batch"] = "outage"
    """With `dir`, which batches are written. `outage`: only those the broker cannot take at
    once (away, or `inflight` unacknowledged), plus those paho holds when the connection drops
    or the daemon stops; a kill -9 or power cut while connected loses what paho holds (at most
    `inflight` batches, normally none or one). `every_batch`: each one, deleted on its PUBACK
    (the only behaviour before this option): nothing in flight is lost to a power cut, at about
    60 KiB written per batch on ext4 (docs/gateway.md); for storage that does not wear out like
    an SD card."""


class GatewayConfig(_Section):
    gateway_id: NameId
    site: NameId
    broker: BrokerConfig = BrokerConfig()
    scanner: ScannerConfig = ScannerConfig()
    filters: FilterConfig = FilterConfig()
    batching: BatchingConfig = BatchingConfig()
    buffer: BufferConfig = BufferConfig()
    heartbeat_interval_s: float = Field(default=30.0, ge=0.1, le=3600)
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"


def load_gateway_config(
    path: Path | None,
    overrides: dict[str, object] | None = None,
    environ: dict[str, str] | None = None,
) -> GatewayConfig:
    """The gateway config from `path`, `BEACON_GATEWAY__SECTION__KEY` variables and overrides."""
    return load_model(
        GatewayConfig, path=path, env_prefix=ENV_PREFIX, overrides=overrides, environ=environ
    )
