"""Real Mosquitto and InfluxDB servers for tests and benchmarks (DESIGN.md, Testing).

Each server runs the Debian binary as a child process on free loopback ports, with its config,
data and log inside one folder the caller owns, so runs never share state and need no root.
`restart()` keeps port and data folder: persistence across a broker or database restart is a
behaviour we test, not an accident of set-up.
"""

from __future__ import annotations

import atexit
import json
import os
import shutil
import signal
import socket
import string
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import IO, Any, Self

__all__ = ["InfluxDB", "InfluxError", "Mosquitto", "ServerError", "free_port"]

LOOPBACK = "127.0.0.1"
STOP_TIMEOUT_S = 10.0
"""SIGTERM grace before SIGKILL: Mosquitto saves its database and InfluxDB 1.6 closes its
shards on SIGTERM; both take milliseconds on an idle test server."""
LOG_TAIL_CHARS = 3000
_POLL_S = 0.02
"""Readiness is polled; either server starts in about 30 ms here, so a 20 ms poll adds little."""

# urllib honours http_proxy & co.; a proxy must never see (or break) loopback test traffic.
_HTTP = urllib.request.build_opener(urllib.request.ProxyHandler({}))

_running: set[_Server] = set()


@atexit.register
def _kill_leftovers() -> None:
    """Last resort if a caller forgot stop(): a stray server would outlive the test run."""
    for server in list(_running):
        server.kill()


class ServerError(RuntimeError):
    """A server binary is missing, failed to start, or did not become ready in time."""


class InfluxError(RuntimeError):
    """InfluxDB refused a request: `status` is the HTTP status, the message is the server's."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(f"InfluxDB answered {status}: {message}")
        self.status = status
        self.message = message


class _AddressInUseError(ServerError):
    """Another process took the port between our probe and the server's bind."""


def free_port() -> int:
    """A loopback TCP port that was free a moment ago.

    Nothing holds it: the server binds it itself, and `start()` retries once with new ports if
    someone else won the race.
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((LOOPBACK, 0))
        port: int = s.getsockname()[1]
        return port


def _listening_ports(pid: int) -> set[int] | None:
    """TCP ports process `pid` listens on, from Linux's /proc; None where /proc cannot say.

    A probe that connects only proves *someone* listens: if another process won the port race,
    our server is about to exit with "address in use" while the probe talks to the winner.
    """
    tables = [Path("/proc/net/tcp"), Path("/proc/net/tcp6")]
    try:
        fds = list(Path(f"/proc/{pid}/fd").iterdir())
    except OSError:
        return None
    inodes = set()
    for fd in fds:
        try:
            target = str(fd.readlink())
        except OSError:  # closed while we looked
            continue
        if target.startswith("socket:["):
            inodes.add(target[len("socket:[") : -1])
    ports = set()
    for table in tables:
        try:
            lines = table.read_text().splitlines()[1:]
        except OSError:  # tcp6 is missing where IPv6 is disabled
            continue
        for line in lines:
            # sl local_address rem_address st ... inode; st 0A is LISTEN
            fields = line.split()
            if fields[3] == "0A" and fields[9] in inodes:
                ports.add(int(fields[1].rsplit(":", 1)[1], 16))
    return ports


def _find_binary(name: str, known_path: str, package: str) -> str:
    found = shutil.which(name) or (known_path if os.access(known_path, os.X_OK) else None)
    if found is None:
        raise ServerError(
            f"{name} not found: install it with `sudo apt-get install {package}` (Debian package)"
        )
    return found


class _Server:
    """Process lifecycle shared by both servers; subclasses say how to configure and probe."""

    name = ""
    ready_timeout_s = 20.0

    def __init__(self, folder: Path) -> None:
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.log_path = self.folder / f"{self.name}.log"
        self._port: int | None = None
        self._proc: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None

    # -- what subclasses provide
    def _pick_ports(self) -> None:
        self._port = free_port()

    def _command(self) -> list[str]:
        raise NotImplementedError

    def _ready(self) -> bool:
        raise NotImplementedError

    # -- public surface
    @property
    def port(self) -> int:
        if self._port is None:
            raise ServerError(f"{self.name} has no port before start()")
        return self._port

    @property
    def host(self) -> str:
        return LOOPBACK

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    @property
    def pid(self) -> int | None:
        return None if self._proc is None else self._proc.pid

    def start(self) -> None:
        """Start and wait until ready. A first start retries once on a port race; a restart
        keeps its port, because clients and persistence tests depend on it."""
        if self.running:
            raise ServerError(f"{self.name} is already running (pid {self.pid})")
        first_start = self._port is None
        if first_start:
            self._pick_ports()
        try:
            self._spawn_and_wait()
        except _AddressInUseError:
            if not first_start:
                raise
            self._pick_ports()
            self._spawn_and_wait()

    def stop(self) -> None:
        """SIGTERM, so the server saves its state as in production; SIGKILL if it hangs."""
        proc = self._proc
        if proc is not None and proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        self._reap()

    def kill(self) -> None:
        """SIGKILL: a crash or power loss, with no chance to save anything."""
        proc = self._proc
        if proc is not None and proc.poll() is None:
            proc.kill()
            proc.wait()
        self._reap()

    def restart(self, sig: signal.Signals = signal.SIGTERM) -> None:
        """Stop (SIGTERM) or kill (SIGKILL), then start on the same port with the same data."""
        if sig == signal.SIGKILL:
            self.kill()
        elif sig == signal.SIGTERM:
            self.stop()
        else:
            raise ValueError(f"restart takes SIGTERM or SIGKILL, not {sig!r}")
        self.start()

    def log_text(self) -> str:
        """Everything the server wrote, over all its starts in this folder."""
        return self._log_since(0)

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- plumbing
    def _spawn_and_wait(self) -> None:
        command = self._command()  # may raise ServerError for a missing binary: no process yet
        log_start = self.log_path.stat().st_size if self.log_path.exists() else 0
        self._log = self.log_path.open("ab")
        self._proc = subprocess.Popen(
            command,
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            cwd=self.folder,
            env=self._env(),
        )
        _running.add(self)
        try:
            self._wait_ready(self._proc, log_start)
        except BaseException:
            self.kill()  # also on Ctrl-C: a half-started server must not outlive us
            raise

    def _wait_ready(self, proc: subprocess.Popen[bytes], log_start: int) -> None:
        deadline = time.monotonic() + self.ready_timeout_s
        while True:
            if proc.poll() is not None:
                code = proc.returncode
                log = self._log_since(log_start)
                if "address already in use" in log.lower():
                    raise _AddressInUseError(self._failure(f"port {self._port} is taken", log))
                raise ServerError(self._failure(f"exited with code {code} while starting", log))
            if self._ready():
                ports = _listening_ports(proc.pid)
                if ports is None or self.port in ports:
                    return
            if time.monotonic() > deadline:
                what = f"not ready after {self.ready_timeout_s:g} s"
                raise ServerError(self._failure(what, self._log_since(log_start)))
            time.sleep(_POLL_S)

    def _log_since(self, offset: int) -> str:
        try:
            return self.log_path.read_bytes()[offset:].decode(errors="replace")
        except FileNotFoundError:
            return ""

    def _env(self) -> dict[str, str]:
        return dict(os.environ)

    def _failure(self, what: str, log: str) -> str:
        tail = log[-LOG_TAIL_CHARS:].strip() or "(empty)"
        return f"{self.name} {what}; log {self.log_path} ends with:\n{tail}"

    def _reap(self) -> None:
        _running.discard(self)
        if self._log is not None:
            self._log.close()
            self._log = None


class Mosquitto(_Server):
    """Eclipse Mosquitto 2.0, anonymous, with persistence in the folder.

    `extra_config` is appended to the generated config (TLS, ACLs, queue limits). `config_file`
    replaces the generated config entirely; it is a `string.Template` where `$port` and `$folder`
    stand for this server's port and folder, so a shipped config can be run on a free port.
    """

    name = "mosquitto"
    ready_timeout_s = 10.0

    def __init__(
        self, folder: Path, extra_config: str = "", config_file: Path | None = None
    ) -> None:
        super().__init__(folder)
        self.extra_config = extra_config
        self.config_file = config_file
        self.config_path = self.folder / "mosquitto.conf"
        self.data_dir = self.folder / "data"

    @property
    def url(self) -> str:
        return f"mqtt://{LOOPBACK}:{self.port}"

    def _command(self) -> list[str]:
        binary = _find_binary("mosquitto", "/usr/sbin/mosquitto", "mosquitto")
        self.data_dir.mkdir(exist_ok=True)
        self.config_path.write_text(self._config())
        return [binary, "-c", str(self.config_path)]

    def _config(self) -> str:
        if self.config_file is not None:
            template = string.Template(Path(self.config_file).read_text())
            return template.safe_substitute(port=self.port, folder=self.folder)
        lines = [
            f"listener {self.port} {LOOPBACK}",
            "allow_anonymous true",
            "persistence true",
            f"persistence_location {self.data_dir}/",
            "autosave_interval 1",
            "log_dest stdout",
            "log_type error",
            "log_type warning",
            "log_type notice",
            "log_type information",
            "log_timestamp_format %Y-%m-%dT%H:%M:%S",
        ]
        if os.geteuid() == 0:
            # As root, Mosquitto drops to user `mosquitto`, which cannot write our 0700 folder.
            lines.append("user root")
        return "\n".join([*lines, self.extra_config, ""])

    def _ready(self) -> bool:
        try:
            with socket.create_connection((LOOPBACK, self.port), timeout=1.0):
                return True
        except OSError:
            return False


class InfluxDB(_Server):
    """InfluxDB 1.6 (Debian's; v1 HTTP API only), auth off, no self-monitoring.

    The RPC port (backup/restore) gets its own free port, else two instances would collide on
    8088. `INFLUXDB_*` variables are dropped from the environment because influxd lets them
    override the config file.
    """

    name = "influxd"
    ready_timeout_s = 30.0

    def __init__(self, folder: Path) -> None:
        super().__init__(folder)
        self.config_path = self.folder / "influxdb.conf"
        self.rpc_port: int | None = None

    @property
    def url(self) -> str:
        return f"http://{LOOPBACK}:{self.port}"

    def _pick_ports(self) -> None:
        self._port = free_port()
        self.rpc_port = free_port()
        while self.rpc_port == self._port:
            self.rpc_port = free_port()

    def _command(self) -> list[str]:
        binary = _find_binary("influxd", "/usr/bin/influxd", "influxdb")
        self.config_path.write_text(self._config())
        return [binary, "-config", str(self.config_path)]

    def _config(self) -> str:
        folder = self.folder
        return f"""\
reporting-disabled = true
bind-address = "{LOOPBACK}:{self.rpc_port}"

[meta]
  dir = "{folder}/meta"
  logging-enabled = false

[data]
  dir = "{folder}/data"
  wal-dir = "{folder}/wal"
  query-log-enabled = false

[http]
  bind-address = "{LOOPBACK}:{self.port}"
  auth-enabled = false
  log-enabled = false
  pprof-enabled = false

[monitor]
  store-enabled = false

[logging]
  level = "warn"
  suppress-logo = true
"""

    def _env(self) -> dict[str, str]:
        return {k: v for k, v in os.environ.items() if not k.startswith("INFLUXDB_")}

    def _ready(self) -> bool:
        try:
            with _HTTP.open(f"{self.url}/ping", timeout=1.0) as response:
                status: int = response.status
                return status == 204
        except (urllib.error.URLError, OSError):
            return False

    # -- v1 HTTP API
    def query(self, q: str, db: str | None = None) -> dict[str, Any]:
        """Run InfluxQL (POST, so CREATE/DROP work too); times come back as integer ns.

        InfluxDB answers 200 with a per-statement "error" for things like an unknown database;
        that is raised as InfluxError too, so a test cannot mistake it for an empty result.
        """
        params = {"q": q, "epoch": "ns"}
        if db is not None:
            params["db"] = db
        body = self._request("/query", urllib.parse.urlencode(params).encode(), {})
        result: dict[str, Any] = json.loads(body)
        errors = [r["error"] for r in result.get("results", []) if "error" in r]
        if "error" in result:
            errors.insert(0, result["error"])
        if errors:
            raise InfluxError(200, "; ".join(errors))
        return result

    def rows(self, q: str, db: str) -> list[dict[str, Any]]:
        """The rows of a one-statement query as dicts, with GROUP BY tags merged in."""
        out: list[dict[str, Any]] = []
        for series in self.query(q, db)["results"][0].get("series", []):
            tags = series.get("tags", {})
            out.extend(
                {**tags, **dict(zip(series["columns"], v, strict=True))} for v in series["values"]
            )
        return out

    def create_database(self, name: str) -> None:
        self.query(f"CREATE DATABASE {_quote_ident(name)}")

    def write(self, db: str, lines: str | bytes, precision: str = "ns") -> None:
        """POST line protocol to the v1 `/write` endpoint; InfluxError with the server's reason
        (400 for a malformed line, 404 for an unknown database)."""
        body = lines.encode() if isinstance(lines, str) else lines
        params = urllib.parse.urlencode({"db": db, "precision": precision})
        self._request(f"/write?{params}", body, {"Content-Type": "text/plain; charset=utf-8"})

    def _request(self, path: str, body: bytes, headers: dict[str, str]) -> bytes:
        # S310 guards against file: and custom schemes; this URL is always http://127.0.0.1.
        url = f"{self.url}{path}"
        request = urllib.request.Request(url, body, headers, method="POST")  # noqa: S310
        try:
            with _HTTP.open(request, timeout=30.0) as response:
                data: bytes = response.read()
                return data
        except urllib.error.HTTPError as e:
            with e:  # an unclosed HTTPError leaks its socket (a ResourceWarning, so an error)
                detail = e.read().decode(errors="replace")
            try:
                parsed = json.loads(detail)
            except ValueError:
                parsed = None
            if isinstance(parsed, dict) and isinstance(parsed.get("error"), str):
                detail = parsed["error"]
            raise InfluxError(e.code, detail) from None


def _quote_ident(name: str) -> str:
    """InfluxQL double-quoted identifier."""
    escaped = name.replace("\\", "\\\\").replace('"', '\\"')
    return f'"{escaped}"'
