"""The real `beacon-gateway run` as a process: last will on SIGKILL, clean stop on SIGTERM (with
the broker away, the disk buffer keeps the batches for the next start), systemd notifications,
and the exit code for a machine without a radio.

The process scans with `scanner.source: replay`, which feeds a recorded file through the same
callback path as bleak; no radio exists here.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from beacon_hub.wire import decode_batch, decode_status
from gateway.cli import EXIT_NO_RADIO
from tests.gateway.mqtt_client import TIMEOUT_S, Received, Subscriber
from tests.servers import Mosquitto

pytestmark = pytest.mark.integration

REPO = Path(__file__).parents[2]
REPLAY = Path(__file__).parent / "data" / "replay.jsonl"


@pytest.fixture
def notify_socket() -> Iterator[socket.socket]:
    """A datagram socket standing in for systemd's NOTIFY_SOCKET (short path: AF_UNIX limit)."""
    folder = tempfile.mkdtemp(prefix="gw-", dir="/tmp")
    path = Path(folder) / "notify"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(path))
    sock.settimeout(TIMEOUT_S)
    try:
        yield sock
    finally:
        sock.close()
        path.unlink(missing_ok=True)
        Path(folder).rmdir()


def _start(
    config: Path, env: dict[str, str] | None = None, *, stderr: int | None = None
) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "gateway.cli", "run", "--config", str(config)],
        cwd=REPO,
        env={**os.environ, **(env or {})},
        stdout=subprocess.DEVNULL,
        stderr=stderr,
    )


def _write_config(
    tmp_path: Path, broker: Mosquitto, site: str, scanner: str, more: str = ""
) -> Path:
    path = tmp_path / "gateway.yaml"
    path.write_text(
        f"gateway_id: gw-proc\nsite: {site}\n"
        f"broker: {{url: '{broker.url}', keepalive_s: 30}}\n"
        f"scanner: {scanner}\n"
        "batching: {window_s: 0.2}\n"
        "log_level: WARNING\n" + more
    )
    return path


def _wait_until(condition: Callable[[], bool], what: str) -> None:
    """Poll a condition only the file system shows; fail after TIMEOUT_S."""
    deadline = time.monotonic() + TIMEOUT_S
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"gave up waiting for {what}")
        time.sleep(0.05)


def _states(messages: list[Received], boot: str | None = None) -> list[str]:
    out: list[str] = []
    for m in messages:
        if m.topic.endswith("/status"):
            status = decode_status(m.payload)
            if boot is None or status.boot == boot:
                out.append(status.state)
    return out


def _online_boot(sub: Subscriber) -> str:
    messages = sub.wait_for(lambda ms: "online" in _states(ms), "status online")
    status = next(decode_status(m.payload) for m in messages if m.topic.endswith("/status"))
    assert status.boot is not None
    return status.boot


def _notifications(sock: socket.socket, wanted: set[str]) -> set[str]:
    got: set[str] = set()
    while not wanted <= got:
        got.update(sock.recv(4096).decode().split("\n"))
    return got


def test_sigkill_shows_offline_through_the_last_will(
    tmp_path: Path, mosquitto: Mosquitto, notify_socket: socket.socket
) -> None:
    site = f"site-{uuid.uuid4().hex[:8]}"
    config = _write_config(tmp_path, mosquitto, site, f"{{source: replay, replay_file: {REPLAY}}}")
    sub = Subscriber(mosquitto, f"beacons/{site}/gateway/gw-proc/#")
    env = {"NOTIFY_SOCKET": notify_socket.getsockname(), "WATCHDOG_USEC": "200000"}
    proc = _start(config, env)
    try:
        boot = _online_boot(sub)
        messages = sub.wait_for(
            lambda ms: any(m.topic.endswith("/readings") for m in ms), "a readings batch"
        )
        batch = decode_batch(next(m.payload for m in messages if m.topic.endswith("/readings")))
        assert batch.boot == boot
        assert "mac:5a:11:22:33:44:55" not in batch.beacons  # the phone in the file
        assert {b.split(":")[0] for b in batch.beacons} <= {"ibeacon", "eddystone", "altbeacon"}
        assert _notifications(notify_socket, {"READY=1", "WATCHDOG=1"})
        proc.send_signal(signal.SIGKILL)
        assert proc.wait(TIMEOUT_S) == -signal.SIGKILL
        messages = sub.wait_for(lambda ms: "offline" in _states(ms, boot), "the last will")
    finally:
        proc.kill()
        proc.wait()
        sub.close()
    assert _states(messages, boot) == ["online", "offline"]


def test_sigterm_is_a_clean_stop_with_offline_status(
    tmp_path: Path, mosquitto: Mosquitto, notify_socket: socket.socket
) -> None:
    site = f"site-{uuid.uuid4().hex[:8]}"
    config = _write_config(tmp_path, mosquitto, site, f"{{source: replay, replay_file: {REPLAY}}}")
    sub = Subscriber(mosquitto, f"beacons/{site}/gateway/gw-proc/status")
    proc = _start(config, {"NOTIFY_SOCKET": notify_socket.getsockname()})
    try:
        boot = _online_boot(sub)
        _notifications(notify_socket, {"READY=1"})
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(TIMEOUT_S) == 0
        assert "STOPPING=1" in _notifications(notify_socket, {"STOPPING=1"})
        messages = sub.wait_for(lambda ms: "offline" in _states(ms, boot), "offline")
    finally:
        proc.kill()
        proc.wait()
        sub.close()
    assert _states(messages, boot) == ["online", "offline"]


def test_sigterm_with_the_broker_away_keeps_every_batch_for_the_next_start(
    tmp_path: Path,
) -> None:
    """Run 1 never reaches the broker: its batches, the last window's too, wait on disk. Run 2
    sends them, each once and in order, before any batch of its own boot."""
    broker = Mosquitto(tmp_path / "mosquitto")
    broker.start()
    broker.stop()  # its port, with nothing listening: the broker is away
    site = f"site-{uuid.uuid4().hex[:8]}"
    folder = tmp_path / "buffer"
    config = _write_config(
        tmp_path,
        broker,
        site,
        f"{{source: replay, replay_file: {REPLAY}}}",
        f"buffer: {{dir: '{folder}'}}\n",
    )
    proc = _start(config)
    try:
        _wait_until(lambda: len(list(folder.glob("*.batch"))) >= 3, "three batches on disk")
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(TIMEOUT_S) == 0
    finally:
        proc.kill()
        proc.wait()
    stored = len(list(folder.glob("*.batch")))
    assert not list(folder.glob("*.inflight"))  # never connected: paho held nothing
    broker.start()
    sub = Subscriber(broker, f"beacons/{site}/gateway/gw-proc/readings")
    proc = _start(config)
    try:
        messages = sub.wait_for(
            lambda ms: len({decode_batch(m.payload).boot for m in ms}) == 2, "the new boot"
        )
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(TIMEOUT_S) == 0
    finally:
        proc.kill()
        proc.wait()
        sub.close()
        broker.stop()
    received = [decode_batch(m.payload) for m in messages]
    first_boot = received[0].boot
    assert [b.seq for b in received if b.boot == first_boot] == list(range(stored))
    assert {b.boot for b in received[:stored]} == {first_boot}  # before anything newer


def test_no_radio_gives_one_clear_message_and_its_own_exit_code(
    tmp_path: Path, mosquitto: Mosquitto
) -> None:
    site = f"site-{uuid.uuid4().hex[:8]}"
    config = _write_config(tmp_path, mosquitto, site, "{source: bluez, adapter: hci99}")
    # No system D-Bus at this address, whatever the machine has: the same answer everywhere.
    env = {"DBUS_SYSTEM_BUS_ADDRESS": f"unix:path={tmp_path}/no-such-bus"}
    proc = _start(config, env, stderr=subprocess.PIPE)
    _, stderr = proc.communicate(timeout=TIMEOUT_S)
    assert proc.returncode == EXIT_NO_RADIO
    lines = [line for line in stderr.decode().splitlines() if line.startswith("beacon-gateway:")]
    assert len(lines) == 1
    assert "BlueZ" in lines[0]
