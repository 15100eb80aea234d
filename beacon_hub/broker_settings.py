"""How a program reaches the MQTT broker: the settings the gateway, the hub and the simulator
share, each extending them in its own config schema. Light (pydantic only): the gateway uses it.
"""

from __future__ import annotations

import logging
import ssl
import sys
import time
import urllib.parse
from collections.abc import Callable
from pathlib import Path
from typing import Any, Self

import paho.mqtt.client as mqtt
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationInfo,
    field_validator,
    model_validator,
)

from beacon_hub.config_loader import ConfigPath
from beacon_hub.errors import ConfigError

__all__ = [
    "PAHO_REPEAT_S",
    "BrokerSettings",
    "RefusalLog",
    "TlsConfig",
    "connect_failure",
    "paho_logger",
]

MQTT_PORT = 1883
MQTTS_PORT = 8883
"""IANA-registered MQTT ports, plain and over TLS."""


class TlsConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    ca_file: ConfigPath | None = None
    """CA bundle that signed the broker's certificate; None uses the system's CAs."""
    cert_file: ConfigPath | None = None
    """Client certificate, for brokers that authenticate clients by certificate."""
    key_file: ConfigPath | None = None

    @model_validator(mode="after")
    def _pair(self) -> Self:
        if (self.cert_file is None) != (self.key_file is None):
            raise ValueError("cert_file and key_file go together")
        return self


class BrokerSettings(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    url: str = "mqtt://localhost:1883"
    """mqtt://host[:port] or mqtts://host[:port] (TLS; port 8883 by default)."""
    client_id: str | None = Field(default=None, min_length=1, max_length=128)
    username: str | None = None
    password: SecretStr | None = None
    password_file: ConfigPath | None = None
    tls: TlsConfig | None = None
    """TLS settings; mqtts:// alone turns TLS on with the system's CAs."""
    keepalive_s: int = Field(default=30, ge=5, le=3600)
    """MQTT keepalive; the broker publishes a last will 1.5 keepalives after a silent loss."""
    reconnect_max_s: int = Field(default=5, ge=1, le=600)
    """Upper bound of paho's reconnect backoff (which doubles from its start). 5 s: after a
    broker outage the hub's map waits for the gateways' buffered batches (service.py,
    GATEWAY_RETURN_S), and a gateway on a 30 s cap came back 21 s after a broker that was down
    40 s (5 s: 2 s; measured with paho and Mosquitto on loopback, 2026-12-07). Sixty gateways
    trying every 5 s are nothing to a broker; raise it for thousands on a remote one."""

    @model_validator(mode="before")
    @classmethod
    def _credentials_out_of_url(cls, data: Any) -> Any:
        """mqtt://user:pass@host is accepted, but the credentials move to their own keys at
        once, so the URL can be logged. (Validation errors echo their input: no check on a
        section holding a secret may fail after this point.)"""
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
        if has_password and data.get("password") is None and data.get("password_file") is None:
            data["password"] = urllib.parse.unquote(password)
        return data

    @field_validator("password", mode="before")
    @classmethod
    def _password_never_fails(cls, value: Any) -> Any:
        """YAML reads `1234` as a number; a type error would print the password back."""
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

    @field_validator("password_file")
    @classmethod
    def _one_password(cls, path: Path | None, info: ValidationInfo) -> Path | None:
        if path is not None and info.data.get("password") is not None:
            raise ValueError("give password or password_file, not both")
        return path

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
        return MQTTS_PORT if self.use_tls else MQTT_PORT

    def secure(self, client: mqtt.Client) -> None:
        """Give a paho client these credentials and, where asked, TLS."""
        if self.username is not None:
            client.username_pw_set(self.username, self.read_password())
        if self.use_tls:
            tls = self.tls
            client.tls_set(
                ca_certs=str(tls.ca_file) if tls and tls.ca_file else None,
                certfile=str(tls.cert_file) if tls and tls.cert_file else None,
                keyfile=str(tls.key_file) if tls and tls.key_file else None,
            )

    def read_password(self) -> str | None:
        if self.password is not None:
            return self.password.get_secret_value()
        if self.password_file is None:
            return None
        where = str(self.password_file)
        try:
            return self.password_file.read_text(encoding="utf-8").strip()
        except UnicodeDecodeError as e:  # the reason only: the message must not show the bytes
            reason = f"not UTF-8 text ({e.reason} at byte {e.start})"
            raise ConfigError(where, [f"broker.password_file {where}: {reason}"]) from e
        except (OSError, ValueError) as e:  # ValueError: a NUL in a path built in code
            reason = e.strerror if isinstance(e, OSError) and e.strerror else str(e)
            raise ConfigError(where, [f"broker.password_file {where}: {reason}"]) from e


PAHO_REPEAT_S = 60.0
"""paho logs the same error at every reconnect attempt (`failed to receive on socket: [Errno
104] Connection reset by peer` once a second against a TLS listener): one a minute of each."""


class _PahoNoise(logging.Filter):
    """What paho logs that says nothing new. "Client is not connected" at ERROR whenever its loop
    runs without a socket: once after every clean DISCONNECT (every stop logged an error) and at
    every retry while the broker cannot be reached, where it hides the reason (the programs say
    it: `connect_failure`, "lost the broker"). And a warning or error repeated word for word
    within PAHO_REPEAT_S (a Pi's journal filled at one a second)."""

    def __init__(self, clock: Callable[[], float] | None = None) -> None:
        super().__init__()
        self._clock = clock or time.monotonic
        self._last: dict[str, float] = {}

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if message.startswith("Client is not connected"):
            return False
        if record.levelno < logging.WARNING:
            return True
        now = self._clock()
        last = self._last.get(message)
        if last is not None and now - last < PAHO_REPEAT_S:
            return False
        if len(self._last) >= _PAHO_MESSAGES_KEPT:  # errno texts vary little; stay bounded
            self._last.clear()
        self._last[message] = now
        return True


_PAHO_MESSAGES_KEPT = 64


def paho_logger(name: str) -> logging.Logger:
    """The logger to give paho (`enable_logger`), without its noise (_PahoNoise)."""
    logger = logging.getLogger(name)
    if not any(isinstance(f, _PahoNoise) for f in logger.filters):
        logger.addFilter(_PahoNoise())
    return logger


class RefusalLog:
    """Why the broker cannot be reached, said once per reason: paho retries every few seconds
    (the hub's and the gateway's connection callbacks); `clear` once connected."""

    def __init__(self, logger: logging.Logger) -> None:
        self._logger = logger
        self._last: str | None = None

    def error(self, reason: str, message: str, *args: object) -> None:
        """`message` % (*args, reason), unless the last one said had this reason."""
        if reason != self._last:
            self._logger.error(message, *args, reason)
            self._last = reason

    def clear(self) -> None:
        self._last = None


def connect_failure() -> str:
    """Inside paho's `on_connect_fail` (called from its `except OSError`): why the connection
    failed, which paho itself logs at DEBUG only ("Connection failed, retrying"): connection
    refused, a TLS mismatch, a certificate not verified."""
    error = sys.exception()
    if error is None:
        return "unknown reason"
    if isinstance(error, ssl.SSLError):
        return f"TLS: {error.reason or error}"
    if isinstance(error, ConnectionResetError):
        # what Mosquitto does to a TLS hello on a plain listener
        return f"{error.strerror}: does the listener speak what the URL's scheme says (mqtts: TLS)?"
    if isinstance(error, OSError) and error.strerror:
        return error.strerror
    return str(error) or type(error).__name__
