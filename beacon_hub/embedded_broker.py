"""An MQTT 3.1.1 broker on loopback for `beacon-hub demo`: Mosquitto if installed, else amqtt.

Mosquitto runs as a child process with a generated config in a temporary folder (anonymous,
loopback only, no persistence). Without it, amqtt's pure-Python broker runs on an asyncio loop of
its own in a thread; it manages about 3,000 messages/s here (issue #7), plenty for gateways that
publish one batch a second. Either way the caller gets the same small surface: `url`, `kind`,
`stop()`.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import logging
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, Literal, Protocol

from beacon_hub.errors import BeaconHubError

__all__ = [
    "BrokerChoice",
    "BrokerError",
    "EmbeddedBroker",
    "start_broker",
]

BrokerChoice = Literal["auto", "mosquitto", "amqtt"]
"""auto: Mosquitto when `mosquitto` is on PATH, amqtt otherwise."""

LOOPBACK = "127.0.0.1"
READY_TIMEOUT_S = 10.0
"""Either broker accepts connections within ~50 ms here; only a broken install takes longer."""
STOP_TIMEOUT_S = 5.0
"""Mosquitto exits within milliseconds of SIGTERM without persistence; then SIGKILL."""
BIND_ATTEMPTS = 3
"""A probed free port can be taken by someone else before the broker binds it; retry this often."""
MAX_INFLIGHT_MESSAGES = 1000
"""The hub acknowledges readings only once their tick is stored (broker.ack = after_store), so
a tick's batches (55 gateways here) must all be in flight at once; deploy/mosquitto uses 1000."""
_PR_SET_PDEATHSIG = 1
"""prctl(2) option: the kernel signals the child when its parent dies, so a SIGKILLed demo
leaves no broker behind."""

log = logging.getLogger(__name__)


class BrokerError(BeaconHubError):
    """The embedded broker could not start (missing package, port, broken install)."""


class EmbeddedBroker(Protocol):
    kind: Literal["mosquitto", "amqtt"]
    host: str
    port: int

    @property
    def url(self) -> str: ...

    def stop(self) -> None: ...


def start_broker(choice: BrokerChoice = "auto") -> EmbeddedBroker:
    """A running broker on a free loopback port; the caller must `stop()` it."""
    binary = shutil.which("mosquitto")
    if choice == "mosquitto" and binary is None:
        raise BrokerError("broker: mosquitto is not on PATH (apt-get install mosquitto)")
    last: BrokerError | None = None
    for _ in range(BIND_ATTEMPTS):
        port = _free_port()
        try:
            if binary is not None and choice != "amqtt":
                return MosquittoBroker(binary, port)
            return AmqttBroker(port)
        except _PortTakenError as e:
            last = e
    raise BrokerError(f"broker: no free port after {BIND_ATTEMPTS} attempts") from last


class _PortTakenError(BrokerError):
    pass


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((LOOPBACK, 0))
        port: int = s.getsockname()[1]
        return port


def _accepts(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        return False


def _die_with_parent() -> None:
    """Runs in the forked child before exec (Linux only; elsewhere a no-op)."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


class MosquittoBroker:
    """Debian's mosquitto as a child process in its own session (Ctrl-C reaches only us; we stop
    it after the clients that use it)."""

    kind: Literal["mosquitto", "amqtt"] = "mosquitto"

    def __init__(self, binary: str, port: int) -> None:
        self.host = LOOPBACK
        self.port = port
        self._folder = tempfile.TemporaryDirectory(prefix="beacon-hub-mosquitto-")
        folder = Path(self._folder.name)
        conf = folder / "mosquitto.conf"
        lines = [
            f"listener {port} {LOOPBACK}",
            "allow_anonymous true",
            "persistence false",
            f"max_inflight_messages {MAX_INFLIGHT_MESSAGES}",
            "max_queued_messages 100000",
            "log_dest stderr",
            "log_type error",
            "log_type warning",
            # As root, Mosquitto would switch to user `mosquitto`; stay who we are instead.
            f"user {pwd.getpwuid(os.geteuid()).pw_name}",
        ]
        conf.write_text("\n".join(lines) + "\n")
        self._log = (folder / "mosquitto.log").open("w+b")
        self._proc = subprocess.Popen(  # noqa: S603  # our own config, a binary found on PATH
            [binary, "-c", str(conf)],
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            preexec_fn=_die_with_parent,  # noqa: PLW1509  # called before any thread starts
        )
        deadline = time.monotonic() + READY_TIMEOUT_S
        while not _accepts(self.host, port):
            if self._proc.poll() is not None:
                text = self._log_text()
                self._cleanup()
                if "Address already in use" in text:
                    raise _PortTakenError(f"mosquitto: port {port} taken")
                raise BrokerError(f"mosquitto exited with {self._proc.returncode}: {text[-500:]}")
            if time.monotonic() > deadline:
                self.stop()
                raise BrokerError(f"mosquitto: not accepting within {READY_TIMEOUT_S:g} s")
            time.sleep(0.02)

    @property
    def url(self) -> str:
        return f"mqtt://{self.host}:{self.port}"

    def _log_text(self) -> str:
        self._log.flush()
        self._log.seek(0)
        return self._log.read().decode("utf-8", "replace")

    def stop(self) -> None:
        if self._proc.poll() is None:
            self._proc.terminate()
            try:
                self._proc.wait(STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()
        self._cleanup()

    def _cleanup(self) -> None:
        self._log.close()
        self._folder.cleanup()


_QUIET_LOGGERS = ("amqtt", "transitions")
"""amqtt logs every connect and disconnect, and a stack trace when a client drops its socket;
`transitions` (its state machines) logs each state change. A demo prints none of that."""


class AmqttBroker:
    """amqtt's Broker on a private asyncio loop in a thread; the thread and the loop are held here
    (an unreferenced task or loop can be garbage-collected mid-run)."""

    kind: Literal["mosquitto", "amqtt"] = "amqtt"

    def __init__(self, port: int) -> None:
        self.host = LOOPBACK
        self.port = port
        for name in _QUIET_LOGGERS:
            logging.getLogger(name).setLevel(logging.CRITICAL)
        self._loop = asyncio.new_event_loop()
        self._broker: Any = None
        self._failure: BaseException | None = None
        self._started = threading.Event()
        self._thread = threading.Thread(target=self._serve, name="amqtt-broker", daemon=True)
        self._thread.start()
        if not self._started.wait(READY_TIMEOUT_S):
            self.stop()
            raise BrokerError(f"amqtt: not started within {READY_TIMEOUT_S:g} s")
        if self._failure is not None:
            self._thread.join(STOP_TIMEOUT_S)
            self._loop.close()
            cause = self._failure.__cause__ or self._failure
            if isinstance(cause, OSError) and cause.errno == 98:  # EADDRINUSE
                raise _PortTakenError(f"amqtt: port {port} taken") from self._failure
            raise BrokerError(f"amqtt: cannot start: {self._failure}") from self._failure

    def _config(self) -> dict[str, Any]:
        # Only anonymous auth: amqtt's default plugin set adds event and packet loggers and a
        # $SYS publisher that the demo does not want.
        return {
            "listeners": {"default": {"type": "tcp", "bind": f"{self.host}:{self.port}"}},
            "plugins": {
                "amqtt.plugins.authentication.AnonymousAuthPlugin": {"allow_anonymous": True}
            },
        }

    def _serve(self) -> None:
        asyncio.set_event_loop(self._loop)
        try:
            self._loop.run_until_complete(self._start())
        except Exception as e:  # noqa: BLE001  # handed to the starting thread, which raises it
            self._failure = e
            self._started.set()
            return
        self._started.set()
        self._loop.run_forever()

    async def _start(self) -> None:
        from amqtt.broker import Broker  # type: ignore[import-untyped]  # noqa: PLC0415

        self._broker = Broker(self._config(), loop=self._loop)
        await self._broker.start()

    @property
    def url(self) -> str:
        return f"mqtt://{self.host}:{self.port}"

    def stop(self) -> None:
        if not self._thread.is_alive():
            if not self._loop.is_closed():
                self._loop.close()
            return
        if self._broker is not None:
            done = asyncio.run_coroutine_threadsafe(self._broker.shutdown(), self._loop)
            try:
                done.result(STOP_TIMEOUT_S)
            except Exception as e:  # noqa: BLE001  # a broker that fails to stop is still stopped below
                log.debug("amqtt shutdown: %s", e)
            # amqtt leaves the handlers of clients that never sent CONNECT running; cancel what
            # remains so their sockets close here, not in the garbage collector.
            leftovers = asyncio.run_coroutine_threadsafe(_cancel_others(), self._loop)
            try:
                leftovers.result(STOP_TIMEOUT_S)
            except Exception as e:  # noqa: BLE001  # as above
                log.debug("amqtt tasks: %s", e)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(STOP_TIMEOUT_S)
        if not self._thread.is_alive():
            self._loop.close()


async def _cancel_others() -> None:
    tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
