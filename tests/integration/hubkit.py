"""Parts for the hub's integration tests: the shipped Mosquitto config on a free port, a site of
their own, gateways that publish real batches, and `beacon-hub run` as a child process.

Nothing here is a mock: batches go through a real Mosquitto into a real hub process, which
writes real SQLite and InfluxDB. Waiting is always for a condition (`wait_until`), never a nap.
"""

from __future__ import annotations

import json
import math
import os
import random
import re
import signal
import sqlite3
import subprocess
import sys
import threading
import time
import urllib.request
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import yaml
from paho.mqtt.enums import CallbackAPIVersion

from beacon_hub.wire import ReadingBatch, encode_batch, readings_topic
from tests.servers import Mosquitto, free_port

ROOT = Path(__file__).resolve().parents[2]
SHIPPED_MOSQUITTO_CONF = ROOT / "deploy" / "mosquitto" / "mosquitto.conf"
WAIT_S = 60.0
"""Upper bound for any condition to become true; only reached when something is broken."""
_HTTP = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def wait_until(
    what: str,
    predicate: Callable[[], bool],
    timeout_s: float = WAIT_S,
    hub: HubProcess | None = None,
) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            tail = ""
            if hub is not None:
                tail = f"\nhub log ends with:\n{hub.log()[-4000:]}{_link_state(hub)}"
            raise AssertionError(f"timed out after {timeout_s:g} s waiting for {what}{tail}")
        time.sleep(0.05)


LINK_METRICS = (
    "beacon_hub_broker_connected",
    "beacon_hub_broker_connects_total",
    "beacon_hub_session_resumes_total",
    "beacon_hub_inbox_dropped_total",
    "beacon_hub_inbox_depth",
)
"""What a timed-out wait shows of the hub's MQTT link besides its log, whose warnings are
rate-limited: an overload test that waited in vain logged its first resume, not its second (the
batch it waited for had been refused as a duplicate, the one line that told)."""


def _link_state(hub: HubProcess) -> str:
    try:
        metrics = hub.metrics()
    except OSError as e:  # a hub that died or hangs: its log says more
        return f"\nhub metrics: not read ({e})"
    shown = [f"{k} {v:g}" for k, v in metrics.items() if k.partition("{")[0] in LINK_METRICS]
    return "\nhub metrics:\n" + "\n".join(shown)


def shipped_broker(folder: Path) -> Mosquitto:
    """deploy/mosquitto/mosquitto.conf with only what a test must change: a loopback port,
    anonymous access, the data folder and logging to the test's log file."""
    text = SHIPPED_MOSQUITTO_CONF.read_text()
    text = re.sub(r"(?m)^listener .*$", "listener $port 127.0.0.1", text)
    text = re.sub(r"(?m)^allow_anonymous .*$", "allow_anonymous true", text)
    text = re.sub(r"(?m)^password_file .*$", "", text)
    text = re.sub(r"(?m)^persistence_location .*$", "persistence_location $folder/data/", text)
    text = re.sub(r"(?m)^log_dest .*$", "log_dest stdout", text)
    if os.geteuid() == 0:
        text += "\nuser root\n"
    template = folder / "shipped-mosquitto.conf"
    folder.mkdir(parents=True, exist_ok=True)
    template.write_text(text)
    return Mosquitto(folder / "broker", config_file=template)


def site_file(folder: Path, site_id: str, base: str = "store.yaml") -> Path:
    """A copy of an example site under its own id (tests on one broker never meet)."""
    data = yaml.safe_load((ROOT / "config" / base).read_text())
    data["id"] = site_id
    path = folder / f"{site_id}.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def unique_site() -> str:
    return f"t-{uuid.uuid4().hex[:10]}"


# ------------------------------------------------------------------------------- gateways


@dataclass
class Published:
    gw: str
    boot: str
    seq: int
    samples: int


@dataclass
class Gateways:
    """Gateways of a site publishing batches in real time (sent = now), like the real ones.

    Beacons sit at fixed spots; RSSI follows the site's path-loss model with some noise, so the
    engine produces fixes. Every batch published (PUBACK received) is in `published`.
    """

    broker: Mosquitto
    site_path: Path
    beacons: int = 12
    samples_per_beacon: int = 2
    seed: int = 1
    published: list[Published] = field(default_factory=list)
    clock_s: float = 0.0
    """How far the gateways' clocks are off: added to the wall clock as the send time of each
    round `send_round` stamps itself (a clock NTP stepped back is a negative change of it)."""

    def __post_init__(self) -> None:
        data = yaml.safe_load(self.site_path.read_text())
        self.site_id: str = data["id"]
        self.gws = [(g["id"], g["x"], g["y"]) for g in data["gateways"]]
        outline = data["levels"][0]["outline"]
        w = max(p[0] for p in outline)
        h = max(p[1] for p in outline)
        rng = random.Random(self.seed)
        self.rng = rng
        uuid_ = "3d1a7b52-8c4e-4f0a-9b6d-2e5f8a1c7d40"
        self.beacon_ids = [f"ibeacon:{uuid_}:{self.seed}:{i}" for i in range(self.beacons)]
        self.spots = [(rng.uniform(2, w - 2), rng.uniform(2, h - 2)) for _ in self.beacon_ids]
        self.boots = {gw: f"{rng.getrandbits(64):016x}" for gw, _, _ in self.gws}
        self.seqs = dict.fromkeys(self.boots, 0)
        self.client = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=f"gws-{uuid.uuid4().hex[:8]}",
            protocol=mqtt.MQTTv311,
            clean_session=True,
        )
        self.client.max_inflight_messages_set(1000)
        # The callback closes over the set, not `self` (which holds the client): that cycle would
        # leave paho's wake-up socket pair, closed in its __del__, to the cycle collector, which
        # may let the sockets warn as unclosed (with filterwarnings = error: tests pass, exit 1).
        acked: set[int] = set()
        self._acked = acked
        self.client.on_publish = lambda _c, _u, mid, _r, _p: acked.add(mid)
        self.client.connect(self.broker.host, self.broker.port, keepalive=30)
        self.client.loop_start()
        self._pending: list[tuple[mqtt.MQTTMessageInfo, Published]] = []
        self.rounds = 0
        """Rounds handed to paho (published once the broker acknowledges them)."""

    def batch(self, gw: str, gx: float, gy: float, sent: float) -> ReadingBatch:
        beacons: list[str] = []
        b: list[int] = []
        dt: list[float] = []
        rssi: list[float] = []
        for beacon, (x, y) in zip(self.beacon_ids, self.spots, strict=True):
            d = max(math.hypot(x - gx, y - gy, 1.5), 0.5)
            level = -59.0 - 22.0 * math.log10(d)
            if level < -95:
                continue
            beacons.append(beacon)
            for k in range(self.samples_per_beacon):
                b.append(len(beacons) - 1)
                dt.append(round(1000.0 * (k + 0.5) / self.samples_per_beacon, 1))
                rssi.append(round(level + self.rng.gauss(0, 3), 1))
        seq = self.seqs[gw]
        self.seqs[gw] = seq + 1
        return ReadingBatch(
            gw=gw,
            boot=self.boots[gw],
            seq=seq,
            sent=sent,
            beacons=tuple(beacons),
            b=tuple(b),
            dt_ms=tuple(dt),
            rssi=tuple(rssi),
            tx=(None,) * len(b),
        )

    def send_round(self, sent: float | None = None) -> None:
        """One batch from every gateway (what they send each second)."""
        now = time.time() + self.clock_s if sent is None else sent
        for gw, gx, gy in self.gws:
            self.publish(self.batch(gw, gx, gy, now))
        self.rounds += 1

    def publish(self, batch: ReadingBatch) -> None:
        """One batch as `batch` made it, whenever the test says: one held back, one again."""
        topic = readings_topic(self.site_id, batch.gw)
        info = self.client.publish(topic, encode_batch(batch), qos=1)
        self._pending.append((info, Published(batch.gw, batch.boot, batch.seq, len(batch))))

    def settle(self) -> None:
        """Wait for the broker's PUBACK of everything sent; those count as published."""
        for info, pub in self._pending:
            # (not wait_for_publish: it raises for a message queued while disconnected, which
            # paho still sends after reconnecting)

            def acked(i: mqtt.MQTTMessageInfo = info) -> bool:
                return i.mid in self._acked

            wait_until(f"PUBACK of {pub}", acked)
            self.published.append(pub)
        self._pending.clear()

    def run_for(self, seconds: float, stop: threading.Event | None = None) -> None:
        """Send one round per second of wall time (paced on the wall clock)."""
        end = time.monotonic() + seconds
        nxt = time.monotonic()
        while time.monotonic() < end and not (stop and stop.is_set()):
            self.send_round()
            nxt += 1.0
            delay = nxt - time.monotonic()
            if delay > 0:
                time.sleep(delay)  # pacing, as a gateway does: not synchronisation

    @property
    def samples(self) -> int:
        return sum(p.samples for p in self.published)

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


# -------------------------------------------------------------------------------- the hub


def logged_totals(log: str) -> list[dict[str, int]]:
    """The counts a hub logs each time it stops (SIGTERM), oldest first."""
    return [json.loads(m) for m in re.findall(r"stopped; totals (\{.*\})", log)]


class HubProcess:
    """`beacon-hub run --config hub.yaml` as a child process (SIGTERM/SIGKILL like systemd)."""

    def __init__(
        self,
        folder: Path,
        broker: Mosquitto,
        sites: Iterable[Path],
        *,
        influx_url: str | None = None,
        influx_db: str | None = None,
        client_id: str | None = None,
        extra: dict[str, Any] | None = None,
    ) -> None:
        self.folder = folder
        folder.mkdir(parents=True, exist_ok=True)
        self.http_port = free_port()
        self.db_path = folder / "hub.sqlite"
        cfg: dict[str, Any] = {
            "sites": [{"site": str(p)} for p in sites],
            "broker": {"url": broker.url, "reconnect_max_s": 2},
            "engine": {"tick_interval_s": 0.5},
            "stores": {"sqlite": {"path": str(self.db_path)}},
            "http": {"port": self.http_port},
            # The kit's beacons carry the store's cart UUID; the pipeline tests count every fix,
            # so they are not treated as shoppers here. The privacy tests say shopper_kinds.
            "privacy": {"shopper_kinds": []},
        }
        if client_id:
            cfg["broker"]["client_id"] = client_id
        if influx_url:
            cfg["stores"]["influx"] = {
                "version": 1,
                "url": influx_url,
                "database": influx_db,
                "flush_interval_s": 0.2,
                "retry_max_s": 1.0,
                "spill_dir": str(folder / "spill"),
            }
        for key, value in (extra or {}).items():
            section, _, name = key.partition(".")
            cfg.setdefault(section, {})[name] = value
        self.config_path = folder / "hub.yaml"
        self.config_path.write_text(yaml.safe_dump(cfg))
        self.log_path = folder / "hub.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        log = self.log_path.open("ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "beacon_hub.cli", "run", "--config", str(self.config_path)],
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=self.folder,
            env={**os.environ, "PYTHONPATH": str(ROOT)},
        )
        log.close()
        wait_until("the hub's /healthz", self._healthy)

    def _healthy(self) -> bool:
        assert self.proc is not None
        if self.proc.poll() is not None:
            raise AssertionError(f"the hub exited with {self.proc.returncode}:\n{self.log()}")
        try:
            with _HTTP.open(f"http://127.0.0.1:{self.http_port}/healthz", timeout=2) as r:
                return bool(r.status == 200)
        except OSError:
            return False

    def metrics(self) -> dict[str, float]:
        """The Prometheus text as {'name{labels}': value}."""
        with _HTTP.open(f"http://127.0.0.1:{self.http_port}/metrics", timeout=5) as r:
            text = r.read().decode()
        out: dict[str, float] = {}
        for line in text.splitlines():
            if line and not line.startswith("#"):
                key, _, value = line.rpartition(" ")
                out[key] = float(value)
        return out

    def metric_sum(self, name: str, **labels: str) -> float:
        total = 0.0
        for key, value in self.metrics().items():
            base, _, rest = key.partition("{")
            if base != name:
                continue
            if all(f'{k}="{v}"' in rest for k, v in labels.items()):
                total += value
        return total

    def stop(self, sig: signal.Signals = signal.SIGTERM) -> int:
        assert self.proc is not None
        self.proc.send_signal(sig)
        code = self.proc.wait(30)
        self.proc = None
        return code

    def kill(self) -> None:
        self.stop(signal.SIGKILL)

    def close(self) -> None:
        """For `finally`: a hub a failed test left running must not outlive it."""
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait()
            self.proc = None

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def sql(self, query: str, *args: Any) -> list[tuple[Any, ...]]:
        db = sqlite3.connect(self.db_path, timeout=10)
        try:
            return db.execute(query, args).fetchall()
        finally:
            db.close()
