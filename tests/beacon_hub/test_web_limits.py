"""The web server against clients that do not play fair, on a real uvicorn on loopback: slow
request heads, more connections than file descriptors, streams opened all at once, and pages
that reach the hub through a rebound DNS name (beacon_hub/web.py, Slow clients; docs/security.md).

Two tests run the server in a child process with a low open-files limit, as systemd's default of
1024 is for the hub; the child is this module (`python -m tests.beacon_hub.test_web_limits`)."""

from __future__ import annotations

import http.client
import logging
import resource
import select
import socket
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import IO, Any

import numpy as np
import pytest
from pydantic import SecretStr, ValidationError

from beacon_hub.engine import FixTable
from beacon_hub.health import Metrics
from beacon_hub.hubconfig import HttpConfig
from beacon_hub.livestate import LiveState, zone_occupancy
from beacon_hub.site import Site, load_site
from beacon_hub.web import WebServer
from tests.beacon_hub.webworld import ROOT, get

STORE = "store-demo"
PATIENCE_S = 10.0
"""How long a test waits for the server to do what it must (close a connection, free a
stream's place) before calling it a failure; generous: the server's own timeouts are ~1 s."""
SLOW_HEAD = b"GET /api/sites HTTP/1.1\r\nHost: 127.0.0.1\r\n"  # no blank line: never complete
STREAM = f"GET /api/sites/{STORE}/stream HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".encode()


def _sites() -> list[Site]:
    return [load_site(ROOT / "config/store.yaml")]


@contextmanager
def serving(**http: Any) -> Iterator[tuple[WebServer, LiveState]]:
    cfg = HttpConfig(port=0, **http)
    live = LiveState(_sites(), cfg)
    server = WebServer(cfg, metrics=Metrics(), health=lambda: (True, {}), live=live, reader=None)
    server.start()
    try:
        yield server, live
    finally:
        server.stop()


def _connect(port: int, first: bytes = SLOW_HEAD) -> socket.socket:
    s = socket.create_connection(("127.0.0.1", port), timeout=PATIENCE_S)
    s.sendall(first)
    return s


def _closed_by_server(s: socket.socket, *, trickle: bool = False) -> bool:
    """True once the server closes `s` (EOF, reset, or a 503 then EOF) within PATIENCE_S. With
    `trickle`, a header line goes out at every poll, as a slowloris client does."""
    deadline = time.monotonic() + PATIENCE_S
    s.settimeout(0.2)  # a poll interval; only PATIENCE_S decides the outcome
    while time.monotonic() < deadline:
        try:
            if trickle:
                s.sendall(b"X-Slow: 1\r\n")
            data = s.recv(4096)
        except TimeoutError:
            continue
        except (ConnectionResetError, BrokenPipeError):
            return True
        if not data:
            return True
        assert data.startswith(b"HTTP/1.1 503 "), data[:80]  # refused: the answer, then EOF
    return False


def _still_open(s: socket.socket) -> bool:
    """No EOF or reset so far (what has arrived, like a stream's first event, is read)."""
    s.setblocking(False)
    try:
        while s.recv(4096):
            pass
    except BlockingIOError:
        return True
    except OSError:
        return False
    finally:
        s.settimeout(PATIENCE_S)
    return False


def _open_stream(port: int) -> tuple[socket.socket, int]:
    s = _connect(port, STREAM)
    return s, _status(s)


def _status(s: socket.socket) -> int:
    head = b""
    while b"\r\n" not in head:
        chunk = s.recv(256)
        assert chunk, "closed before a status line"
        head += chunk
    return int(head.split(b" ", 2)[1])


# ------------------------------------------------------------------------- slow clients


def test_a_request_head_trickling_in_is_closed_after_the_read_timeout() -> None:
    with serving(request_read_timeout_s=1.0) as (server, _):
        s = _connect(server.port)
        try:
            assert _closed_by_server(s, trickle=True)
        finally:
            s.close()
        assert get(f"http://127.0.0.1:{server.port}/healthz")[0] == 200


def test_at_the_connection_cap_the_longest_waiting_connection_makes_room() -> None:
    with serving(max_connections=4, max_stream_clients=2, request_read_timeout_s=60.0) as (
        server,
        _,
    ):
        slow = [_connect(server.port) for _ in range(4)]
        try:
            assert get(f"http://127.0.0.1:{server.port}/healthz")[0] == 200
            assert _closed_by_server(slow[0])
            assert all(_still_open(s) for s in slow[1:])
        finally:
            for s in slow:
                s.close()


def test_when_every_connection_is_busy_a_new_one_is_refused() -> None:
    with serving(max_connections=2, max_stream_clients=2) as (server, _):
        streams = [_open_stream(server.port) for _ in range(2)]
        try:
            assert [status for _, status in streams] == [200, 200]
            third = _connect(server.port, b"")
            try:
                assert _closed_by_server(third)
            finally:
                third.close()
            assert all(_still_open(s) for s, _ in streams)  # streams are never the ones closed
        finally:
            for s, _ in streams:
                s.close()


def _serve_child(nofile: int, max_connections: int, log: Path) -> subprocess.Popen[str]:
    """The child's log goes to a file: a pipe nobody reads would stop a child that logs a lot."""
    with log.open("w") as err:
        return subprocess.Popen(  # this interpreter, this module
            [
                sys.executable,
                "-m",
                "tests.beacon_hub.test_web_limits",
                str(nofile),
                str(max_connections),
            ],
            cwd=ROOT,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=err,
            text=True,
        )


def _ask(child: subprocess.Popen[str], line: str) -> str:
    """The child's answer, or "" when none comes within PATIENCE_S."""
    stdin, stdout = child.stdin, child.stdout
    assert stdin is not None
    assert stdout is not None
    stdin.write(line + "\n")
    stdin.flush()
    ready, _, _ = select.select([stdout], [], [], PATIENCE_S)
    return stdout.readline().strip() if ready else ""


def _finish(child: subprocess.Popen[str], log: Path) -> str:
    """Stop the child; its log."""
    try:
        child.communicate("quit\n", timeout=30)
    except subprocess.TimeoutExpired:
        child.kill()
        child.communicate()
    return log.read_text(errors="replace")


def test_a_connection_flood_leaves_descriptors_for_the_rest_of_the_hub(tmp_path: Path) -> None:
    # 384 files: 32 connections, the accept batches of a flood beyond them (web.LISTEN_BACKLOG)
    # and the interpreter's own, with room to spare.
    log_file = tmp_path / "child.log"
    child = _serve_child(nofile=384, max_connections=32, log=log_file)
    flood: list[socket.socket] = []
    try:
        port = int(_ask(child, "port"))
        for _ in range(500):  # more than the child's files
            with suppress(OSError):
                flood.append(_connect(port))
        assert _ask(child, "sqlite") == "sqlite ok"
        assert get(f"http://127.0.0.1:{port}/healthz")[0] == 200
    finally:
        for s in flood:
            s.close()
        log = _finish(child, log_file)
    assert "out of system resource" not in log
    assert "accept() failed" not in log


def test_running_out_of_descriptors_is_logged_once_not_in_a_loop(tmp_path: Path) -> None:
    # A cap above the process' files: what the log does when accept() itself fails.
    log_file = tmp_path / "child.log"
    child = _serve_child(nofile=64, max_connections=1_000, log=log_file)
    flood: list[socket.socket] = []
    try:
        port = int(_ask(child, "port"))
        for _ in range(100):  # more than its files, fewer than that plus the listen queue
            with suppress(OSError):
                flood.append(_connect(port))
        assert _ask(child, "wait-accept-failure") == "seen"
        # asyncio retries accept() each second: two more rounds, each once flooding the log
        time.sleep(2.5)
    finally:
        for s in flood:
            s.close()
        log = _finish(child, log_file)
    assert "may open only 64 files" in log  # the start-up warning names the mismatch
    assert log.count("accept() failed") == 1, log[-2000:]
    assert "out of system resource" not in log
    assert "Traceback" not in log


# ----------------------------------------------------------------------- stream cap


def test_streams_opened_together_stay_within_the_cap() -> None:
    with serving(max_stream_clients=2) as (server, _):
        socks = [socket.create_connection(("127.0.0.1", server.port)) for _ in range(12)]
        try:
            for s in socks:  # every request goes out before any answer is read
                s.settimeout(PATIENCE_S)
                s.sendall(STREAM)
            codes = sorted(_status(s) for s in socks)
        finally:
            for s in socks:
                s.close()
        assert codes == [200] * 2 + [503] * 10
        # The places come back when the clients go (the finally in web._EventStream).
        deadline = time.monotonic() + PATIENCE_S
        while True:
            again = [_open_stream(server.port) for _ in range(2)]
            for s, _ in again:
                s.close()
            if [status for _, status in again] == [200, 200] or time.monotonic() > deadline:
                break
            time.sleep(0.1)
        assert [status for _, status in again] == [200, 200]


def _big_tick(live: LiveState, t: float, n: int) -> None:
    """A tick of `n` fixes for the store: a few hundred kB of stream event."""
    table = FixTable(
        t=t,
        beacons=[f"{i:012x}" for i in range(n)],
        x=np.linspace(1.0, 20.0, n),
        y=np.full(n, 5.0),
        accuracy_m=np.full(n, 1.5),
        level=np.zeros(n, dtype=np.int64),
        zones=[None] * n,
        kinds=["cart"] * n,
        speed_m_s=np.zeros(n),
        gateway_slots=np.zeros((n, 1), dtype=np.intp),
        gateway_mask=np.ones((n, 1), dtype=bool),
        gateway_ids=("gw-01",),
    )
    live.tick(STORE, t, table, [], [None] * n, zone_occupancy(table))


def test_a_stream_nobody_reads_is_closed_and_gives_its_place_back(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A dashboard that stops reading (a tablet out of Wi-Fi range, no FIN) held its stream's
    place until TCP gave up, about 15 minutes of retransmissions."""
    with serving(max_stream_clients=1, send_stall_timeout_s=1.0) as (server, live):
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # before connect: the window
        s.settimeout(PATIENCE_S)
        s.connect(("127.0.0.1", server.port))
        try:
            s.sendall(STREAM)
            assert _status(s) == 200
            assert live.stream_count() == 1
            # Ticks keep coming; the client reads none of them from here on.
            deadline = time.monotonic() + 3 * PATIENCE_S
            t = 1_000.0
            while live.stream_count() and time.monotonic() < deadline:
                _big_tick(live, t, 2_000)
                t += 1.0
                time.sleep(0.05)
            assert live.stream_count() == 0
            again, status = _open_stream(server.port)
            again.close()
            assert status == 200  # its place is free again
        finally:
            s.close()
    assert "read nothing of its answer" in caplog.text


# ------------------------------------------------------------------------- DNS rebinding


def _status_with_host(port: int, host: str, token: str | None = None) -> int:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.putrequest("GET", "/api/sites", skip_host=True)
        conn.putheader("Host", host)
        if token is not None:
            conn.putheader("Authorization", f"Bearer {token}")
        conn.endheaders()
        resp = conn.getresponse()
        resp.read()
        return resp.status
    finally:
        conn.close()


@pytest.mark.parametrize(
    ("host", "status"),
    [
        ("127.0.0.1:9108", 200),
        ("127.8.9.10", 200),
        ("localhost", 200),
        ("LocalHost:80", 200),
        ("[::1]:9108", 200),
        ("[::1]", 200),
        ("hub.shop.lan:9108", 200),  # http.allowed_hosts
        ("rebind.attacker.example:9108", 400),
        ("rebind.attacker.example", 400),
        ("127.0.0.1.attacker.example", 400),
        ("localhost.attacker.example", 400),
        ("[::1].attacker.example", 400),
        ("0.0.0.0:9108", 400),
        ("", 400),
    ],
)
def test_without_a_token_only_this_machine_names_are_answered(host: str, status: int) -> None:
    with serving(allowed_hosts=["hub.shop.lan"]) as (server, _):
        assert _status_with_host(server.port, host) == status


def test_with_a_token_any_host_is_answered() -> None:
    with serving(token=SecretStr("t0k-t0k")) as (server, _):
        assert _status_with_host(server.port, "hub.example:9108", "t0k-t0k") == 200
        assert _status_with_host(server.port, "hub.example:9108") == 401


def test_http_limits_are_checked_in_the_config() -> None:
    assert HttpConfig(allowed_hosts=[" Hub.Shop.LAN ", "[FD00::7]"]).allowed_hosts == [
        "hub.shop.lan",
        "fd00::7",
    ]
    with pytest.raises(ValidationError, match="without a port"):
        HttpConfig(allowed_hosts=["hub.shop.lan:9108"])
    with pytest.raises(ValidationError, match="without a port"):
        HttpConfig(allowed_hosts=["http://hub.shop.lan"])
    with pytest.raises(ValidationError, match="each stream holds a connection"):
        HttpConfig(max_stream_clients=300, max_connections=256)


# --------------------------------------------------------------------------- the child


def _child(nofile: int, max_connections: int, commands: IO[str]) -> None:
    """Serve with at most `nofile` open files and answer the test's commands on stdout."""
    logging.basicConfig(level=logging.WARNING, format="%(name)s: %(message)s")
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (nofile, hard))
    seen: list[str] = []

    class Seen(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            seen.append(record.getMessage())

    logging.getLogger().addHandler(Seen())
    with serving(max_connections=max_connections, max_stream_clients=1) as (server, _):
        for line in commands:
            cmd = line.strip()
            if cmd == "port":
                print(server.port, flush=True)
            elif cmd == "sqlite":
                with tempfile.TemporaryDirectory() as tmp:
                    try:
                        db = sqlite3.connect(Path(tmp) / "hub.sqlite")
                        db.execute("create table t (x)")
                        db.close()
                        print("sqlite ok", flush=True)
                    except sqlite3.Error as e:
                        print(f"sqlite failed: {e}", flush=True)
            elif cmd == "wait-accept-failure":
                deadline = time.monotonic() + PATIENCE_S
                found = False
                while not found and time.monotonic() < deadline:
                    time.sleep(0.05)
                    found = any("accept() failed" in m for m in seen)
                print("seen" if found else "not seen", flush=True)
            elif cmd == "quit":
                break


if __name__ == "__main__":
    _child(int(sys.argv[1]), int(sys.argv[2]), sys.stdin)
