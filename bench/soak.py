"""Soak: the whole chain under faults, with the books balanced at the end (issue #8, point 6).

Gateways (one MQTT client each, as on the Pis) -> Mosquitto with the shipped config
(deploy/mosquitto/mosquitto.conf, persistence on) -> `beacon-hub run` as a child process ->
SQLite and a real InfluxDB 1.x. While the gateways publish one batch a second each, faults are
injected on a schedule spread over the run, one at a time, each followed by a wait for recovery:

- hub SIGKILL + restart;
- hub SIGKILL, then broker SIGKILL while the hub is away, then both restarted (the broker
  forgets what it queued since its last save: the one fault that may lose readings);
- broker SIGTERM + restart; broker SIGKILL + restart while the hub is connected;
- InfluxDB stopped for 20 s (30 s in runs of 10 minutes or more), then started again;
- a gateway's connection dropped without DISCONNECT (its will fires), back 3 s later with a
  new boot;
- bursts of hostile payloads on the readings topics (garbage, oversized, wrong types, unknown
  and mismatched gateway, replayed (boot, seq), ...).

The hub-killing faults come first, so the hub's last life spans most of the run and its memory
is measured over it. Afterwards the books are balanced:

- readings offered (batches the broker acknowledged with PUBACK) = processed (the hub's ledger,
  SQLite `batches`, each batch exactly once) + lost with a reason (a batch is explained as
  lost only if it was acknowledged inside a broker-SIGKILL window and the hub saw the gap: its
  ledger holds a later seq of the same boot); the hub's own count of lost batches
  (`beacon_hub_gateway_batches_lost_total`, summed over its lives) must agree;
- hostile payloads sent = counted rejected by the hub, reason by reason;
- fixes: every tick's `tracks` message (the hub's output, seen by a subscriber) against the
  fixes stored at that tick in SQLite and in InfluxDB, and SQLite against InfluxDB as sets of
  (beacon, time) over the whole run;
- the hub's resident memory (VmRSS from /proc, every second): growth over its last life after
  warm-up;
- recovery time per fault: from the end of the fault (the part back up) until /healthz is ok,
  every batch acknowledged before then is processed (or explained as lost), a fresh tick is
  out, and (InfluxDB outage) the hub's InfluxDB backlog is zero.

Verdict: zero unexplained losses, every fix in both stores, memory growth after warm-up at most
10 %, every fault recovered within RECOVERY_BOUND_S; otherwise exit 1 with the reasons. A soak
has no baseline to measure in the same run, so its JSON line (the last line, DESIGN.md's bench
convention) carries `"ratio": null` and the verdict instead.

    python bench/soak.py --minutes 2 [--seed 1]      # what scripts/check.sh runs
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import random
import signal
import socket
import sqlite3
import statistics
import sys
import tempfile
import threading
import time
import urllib.request
import uuid
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

# So it runs from a plain checkout too, without `pip install -e .`.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import paho.mqtt.client as mqtt
import yaml
from paho.mqtt.enums import CallbackAPIVersion

from beacon_hub.wire import (
    GatewayStatus,
    Heartbeat,
    ReadingBatch,
    decode_tracks,
    encode_batch,
    encode_heartbeat,
    encode_status,
    heartbeat_topic,
    readings_topic,
    status_topic,
    tracks_topic,
)
from tests.integration.hubkit import HubProcess, shipped_broker, site_file
from tests.servers import InfluxDB, Mosquitto

RECOVERY_BOUND_S = 30.0
"""A fault counts as recovered if the hub is healthy and caught up within this many seconds of
the faulty part being back. Measured recoveries are 1-6 s on a quiet 2-core machine (the hub
reconnects with a 1-2 s backoff, then replays what the broker queued); the bound leaves room
for a CI machine busy with other jobs."""
MEMORY_GROWTH_MAX = 0.10
"""Issue #8: no growth beyond 10 % after warm-up."""
WARMUP_S = 30.0
"""Hub memory is measured from this long into its last life (imports, caches, the backlog it
replays after a restart) to the end of the run."""
MEMORY_WINDOW_SAMPLES = 10
"""Samples (one a second) whose median is the start and the end value of the memory figure:
a median ignores one garbage-collection spike."""
BEACONS = 24
"""Pallet/cart beacons walking the store: a few hundred readings a second, so the soak's load
is the faults, not the throughput (bench/hub_throughput.py measures that)."""
SAMPLES_PER_BEACON = 2
"""Adverts per beacon and gateway in a one-second batch."""
WALK_M_PER_S = 0.4
"""Beacons move at about a slow walk, so tracks and zones change."""
GATEWAY_OFFLINE_S = 3.0
"""How long a dropped gateway stays away before it reconnects with a new boot."""
HEARTBEAT_EVERY_S = 5.0
"""Gateways send heartbeats (QoS 0) this often; the shipped default is 30 s."""
KILL_NEAR_S = 3.0
"""A tick stored this shortly before a hub SIGKILL may still have been in the InfluxDB writer's
memory (it flushes every 0.2 s here, retries after 0.5 s): the diagnosis names such ticks."""
CATCH_UP_TIMEOUT_S = 120.0
"""At the end: the hub must have processed everything offered within this long."""
POLL_S = 0.1
EARLY_ACK_KEEP_S = 3600.0
"""How long a PUBACK for a mid the gateway has not filed is kept: a reading's comes within
milliseconds of publish(); a status's or heartbeat's is never asked for. A client reuses a mid
only after 65,535 messages, some 15 hours of a soak gateway's (a round a second)."""
UUID_ = "7c0f5a3e-2b1d-4e8f-9a6c-1d2e3f4a5b6c"
_HTTP = urllib.request.build_opener(urllib.request.ProxyHandler({}))


# ------------------------------------------------------------------------------- gateways


@dataclass
class Sent:
    """One readings batch handed to paho; `acked` is when its PUBACK came back."""

    gw: str
    boot: str
    seq: int
    samples: int
    sent: float
    acked: float | None = None


class Gateway:
    """One gateway: its own MQTT client (3.1.1, QoS 1), retained status with a last will,
    heartbeats, and (boot, seq) per DESIGN.md. `drop()` cuts the TCP connection without a
    DISCONNECT, as a pulled cable or a crash does; `boot_again()` comes back with a new boot."""

    def __init__(
        self, site: str, gw: str, *, x: float, y: float, broker: Mosquitto, seed: int
    ) -> None:
        self.site, self.id, self.x, self.y = site, gw, x, y
        self.broker = broker
        self.rng = random.Random(seed)
        self.lock = threading.Lock()
        self.sent: list[Sent] = []
        self.recent: deque[tuple[Sent, bytes]] = deque(maxlen=8)
        """Recent payloads, for the hostile burst's replays."""
        self.boots: list[str] = []
        self.up = False
        """Connected or reconnecting (not dropped)."""
        self._inflight: dict[int, Sent] = {}
        self._early: dict[int, float] = {}
        """PUBACKs paho reported for mids not (yet) in _inflight, by mid: when."""
        self.client = self._connect()

    def boot_again(self) -> None:
        self.client = self._connect()

    def _connect(self) -> mqtt.Client:
        boot = f"{self.rng.getrandbits(64):016x}"
        self.boots.append(boot)
        self.boot, self.seq, self.started = boot, 0, time.time()
        client = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=f"soak-{self.id}-{boot[:6]}",
            protocol=mqtt.MQTTv311,
            clean_session=True,
        )
        client.max_inflight_messages_set(100)
        client.reconnect_delay_set(1, 2)
        client.will_set(status_topic(self.site, self.id), self._status("offline"), 1, retain=True)
        client.on_publish = self._on_publish
        client.on_connect = self._on_connect
        with self.lock:
            self._inflight, self._early = {}, {}
        client.connect_async(self.broker.host, self.broker.port, keepalive=10)
        client.loop_start()
        self.up = True
        return client

    def _status(self, state: str) -> bytes:
        return encode_status(
            GatewayStatus(
                self.id,
                "online" if state == "online" else "offline",
                time.time(),
                self.boot,
                "soak",
            )
        )

    def _on_connect(self, c: mqtt.Client, _u: Any, _f: Any, rc: Any, _p: Any) -> None:
        if not rc.is_failure:
            c.publish(status_topic(self.site, self.id), self._status("online"), 1, retain=True)

    def _on_publish(self, _c: mqtt.Client, _u: Any, mid: int, _rc: Any, _p: Any) -> None:
        # paho's network thread calls this holding paho's outgoing-message lock, which
        # client.publish() takes too: publish() must not hold self.lock while it calls paho
        # (the two locks taken in opposite orders deadlocked a CI soak, 2026-12-07).
        now = time.time()
        with self.lock:
            s = self._inflight.pop(mid, None)
            if s is not None:
                s.acked = now
                return
            # acknowledged before publish() filed it, or a status / heartbeat (EARLY_ACK_KEEP_S)
            self._early = {m: at for m, at in self._early.items() if now - at < EARLY_ACK_KEEP_S}
            self._early[mid] = now

    def publish(self, batch: ReadingBatch) -> None:
        payload = encode_batch(batch)
        s = Sent(self.id, batch.boot, batch.seq, len(batch), time.time())
        info = self.client.publish(readings_topic(self.site, self.id), payload, qos=1)
        with self.lock:
            acked = self._early.pop(info.mid, None)
            if acked is None:
                self._inflight[info.mid] = s
            else:
                s.acked = acked
            self.sent.append(s)
            self.recent.append((s, payload))

    def heartbeat(self) -> None:
        n = self.seq
        hb = Heartbeat(
            gw=self.id,
            boot=self.boot,
            t=time.time(),
            uptime_s=time.time() - self.started,
            adverts_seen=n * BEACONS * SAMPLES_PER_BEACON,
            adverts_published=n * BEACONS * SAMPLES_PER_BEACON,
            adverts_dropped=0,
            queue_depth=0,
            scanner_restarts=0,
            adverts_per_s=float(BEACONS * SAMPLES_PER_BEACON),
            version="soak",
        )
        self.client.publish(heartbeat_topic(self.site, self.id), encode_heartbeat(hb), qos=0)

    def pending(self) -> int:
        with self.lock:
            return len(self._inflight)

    def drop(self) -> None:
        """Cut the connection: no DISCONNECT, so the broker publishes the will."""
        client = self.client
        self.up = False
        client.loop_stop()
        sock = client.socket()
        if isinstance(sock, socket.socket):
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()

    def close(self) -> None:
        if self.up:
            self.client.disconnect()
            self.client.loop_stop()
        # The callbacks are bound methods of self, which holds the client: a cycle, which would
        # leave paho's wake-up socket pair (closed in the client's __del__) to the cycle
        # collector, whose finalizers may let the sockets warn as unclosed. Broken here, once
        # the network loop is stopped. (A client replaced by boot_again() is in no cycle.)
        self.client.on_publish = None
        self.client.on_connect = None


class Fleet:
    """The site's gateways and beacons; one round (a batch per gateway) each wall second."""

    def __init__(self, site_path: Path, broker: Mosquitto, seed: int) -> None:
        data = yaml.safe_load(site_path.read_text())
        self.site: str = data["id"]
        outline = data["levels"][0]["outline"]
        self.w = max(p[0] for p in outline)
        self.h = max(p[1] for p in outline)
        self.rng = random.Random(seed)
        self.beacons = [f"ibeacon:{UUID_}:{seed % 65536}:{i}" for i in range(BEACONS)]
        self.pos = [
            (self.rng.uniform(2, self.w - 2), self.rng.uniform(2, self.h - 2)) for _ in self.beacons
        ]
        self.gateways = [
            Gateway(self.site, g["id"], x=g["x"], y=g["y"], broker=broker, seed=seed * 1000 + i)
            for i, g in enumerate(data["gateways"])
        ]
        self.by_id = {g.id: g for g in self.gateways}
        self.paused: set[str] = set()
        """Gateways that are down (dropped); the round skips them."""
        self.rounds = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="fleet", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()

    def _walk(self) -> None:
        for i, (x, y) in enumerate(self.pos):
            a = self.rng.uniform(0, 2 * math.pi)
            self.pos[i] = (
                min(max(x + WALK_M_PER_S * math.cos(a), 1.0), self.w - 1.0),
                min(max(y + WALK_M_PER_S * math.sin(a), 1.0), self.h - 1.0),
            )

    def _batch(self, g: Gateway, sent: float) -> ReadingBatch:
        beacons: list[str] = []
        b: list[int] = []
        dt: list[float] = []
        rssi: list[float] = []
        for beacon, (x, y) in zip(self.beacons, self.pos, strict=True):
            d = max(math.hypot(x - g.x, y - g.y, 1.5), 0.5)
            level = -59.0 - 22.0 * math.log10(d)
            if level < -95:
                continue
            beacons.append(beacon)
            for k in range(SAMPLES_PER_BEACON):
                b.append(len(beacons) - 1)
                dt.append(round(1000.0 * (k + 0.5) / SAMPLES_PER_BEACON, 1))
                rssi.append(round(level + g.rng.gauss(0, 3), 1))
        seq = g.seq
        g.seq += 1
        return ReadingBatch(
            gw=g.id,
            boot=g.boot,
            seq=seq,
            sent=sent,
            beacons=tuple(beacons),
            b=tuple(b),
            dt_ms=tuple(dt),
            rssi=tuple(rssi),
            tx=(None,) * len(b),
        )

    def _run(self) -> None:
        nxt = time.monotonic()
        last_hb = 0.0
        while not self._stop.is_set():
            self._walk()
            now = time.time()
            hb = now - last_hb >= HEARTBEAT_EVERY_S
            for g in self.gateways:
                if g.id in self.paused:
                    continue
                g.publish(self._batch(g, now))
                if hb:
                    g.heartbeat()
            if hb:
                last_hb = now
            self.rounds += 1
            nxt += 1.0
            # Pacing, as a gateway batches once a second: not synchronisation.
            self._stop.wait(max(0.0, nxt - time.monotonic()))

    def all_sent(self) -> list[Sent]:
        out: list[Sent] = []
        for g in self.gateways:
            with g.lock:
                out.extend(g.sent)
        return out

    def pending(self) -> int:
        return sum(g.pending() for g in self.gateways if g.up)

    def close(self) -> None:
        for g in self.gateways:
            g.close()


# -------------------------------------------------------------------------- observers


class TracksListener:
    """Keeps the last `tracks` message of every tick: t -> beacons (the hub's own output).

    QoS 0, so ticks published while the broker is down are not seen; they are reported as
    unobserved. A tick recomputed after a hub crash is published again: the last one wins, as
    it is the one stored."""

    def __init__(self, broker: Mosquitto, site: str) -> None:
        self.site = site
        self.ticks: dict[float, set[str]] = {}
        self._parts: dict[float, int] = {}
        self.lock = threading.Lock()
        self.latest = -math.inf
        self.client = mqtt.Client(
            CallbackAPIVersion.VERSION2, client_id=f"soak-l-{uuid.uuid4().hex[:8]}"
        )
        self.client.reconnect_delay_set(1, 2)
        self.client.on_connect = lambda c, *_: c.subscribe(tracks_topic(site), 0)
        self.client.on_message = self._on_message
        self.client.connect_async(broker.host, broker.port, keepalive=10)
        self.client.loop_start()
        self._last_t: float | None = None

    def _on_message(self, _c: mqtt.Client, _u: Any, m: mqtt.MQTTMessage) -> None:
        msg = decode_tracks(m.payload)
        t = round(msg.t, 3)
        with self.lock:
            # Consecutive messages of equal t are parts of one tick; a new message for a t
            # seen before (not directly preceding) is a recomputation and replaces it.
            if self._last_t != t:
                self.ticks[t] = set()
            self.ticks[t].update(msg.beacons)
            self._last_t = t
            if msg.beacons:
                self.latest = max(self.latest, t)

    def snapshot(self) -> dict[float, set[str]]:
        with self.lock:
            return {t: set(b) for t, b in self.ticks.items()}

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()
        self.client.on_message = None  # a bound method: the cycle, as in Gateway.close


class Ledger:
    """The hub's ledger (SQLite `batches`), read incrementally by rowid."""

    def __init__(self, db_path: Path) -> None:
        self.db_path = db_path
        self.rows: Counter[tuple[str, str, int]] = Counter()
        self.samples: dict[tuple[str, str, int], tuple[int, int, int, int]] = {}
        self.seen_max: dict[tuple[str, str], int] = {}
        self._rowid = 0

    def refresh(self) -> None:
        if not self.db_path.exists():
            return
        db = sqlite3.connect(f"file:{self.db_path}?mode=ro", uri=True, timeout=10)
        try:
            rows = db.execute(
                "SELECT rowid, gateway, boot, seq, samples, accepted, late, impossible_rssi "
                "FROM batches WHERE rowid > ? ORDER BY rowid",
                (self._rowid,),
            ).fetchall()
        except sqlite3.OperationalError:  # the hub has not created its tables yet
            return
        finally:
            db.close()
        for rowid, gw, boot, seq, samples, accepted, late, impossible in rows:
            key = (gw, boot, seq)
            self.rows[key] += 1
            self.samples[key] = (samples, accepted, late, impossible)
            self.seen_max[(gw, boot)] = max(self.seen_max.get((gw, boot), -1), seq)
            self._rowid = rowid


@dataclass
class Life:
    """One run of the hub process: its pid, how it ended and its last /metrics."""

    number: int
    pid: int
    started: float
    ended: float | None = None
    end: str = "running"
    metrics: dict[str, float] = field(default_factory=dict)
    totals: dict[str, int] | None = None


def metric_sum(metrics: dict[str, float], name: str, **labels: str) -> float:
    total = 0.0
    for key, value in metrics.items():
        base, _, rest = key.partition("{")
        if base == name and all(f'{k}="{v}"' in rest for k, v in labels.items()):
            total += value
    return total


def rss_mb(pid: int) -> float | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024.0
    except OSError:
        return None
    return None


# ------------------------------------------------------------------------------- faults


@dataclass
class FaultResult:
    name: str
    at_s: float
    """Seconds into the run when it was injected."""
    outage_s: float
    """From injection until the faulty part was back."""
    recovery_s: float | None
    """From the part being back until the hub was healthy and caught up; None: not within the
    bound."""
    note: str = ""


@dataclass
class LossWindow:
    """Batches acknowledged by the broker in [start, end] may be lost: its SIGKILL came before
    it saved them, or it lost the hub's session and dropped what came before the hub was back."""

    start: float
    end: float
    fault: str


class Soak:
    def __init__(self, folder: Path, minutes: float, seed: int) -> None:
        self.folder = folder
        self.minutes = minutes
        self.seed = seed
        self.duration_s = minutes * 60.0
        self.influx_outage_s = 30.0 if minutes >= 10 else 20.0
        self.broker = shipped_broker(folder / "mq")
        self.influx = InfluxDB(folder / "influx")
        self.site = f"soak-{uuid.uuid4().hex[:8]}"
        self.site_path = site_file(folder, self.site)
        self.lives: list[Life] = []
        self.rss: list[tuple[float, int, float]] = []
        """(seconds into the run, hub life, RSS MB)."""
        self.faults: list[FaultResult] = []
        self.windows: list[LossWindow] = []
        self.hostile_sent: Counter[str] = Counter()
        self.hostile_counted: Counter[str] = Counter()
        self.t0 = time.time()
        self.hub: HubProcess
        self.fleet: Fleet
        self.listener: TracksListener
        self.ledger: Ledger
        self._broker_started = time.time()
        self._sampling = threading.Event()
        self._sampler: threading.Thread | None = None
        self._lock = threading.Lock()
        self._confirmed: dict[str, int] = {}
        """Per gateway: how many of its first batches are known processed or lost."""

    # -- set-up and the hub's lives

    def log(self, text: str) -> None:
        print(f"[{time.time() - self.t0:7.1f} s] {text}", flush=True)

    def start(self) -> None:
        self.broker.start()
        self._broker_started = time.time()
        self.influx.start()
        self.influx.create_database("beacons")
        self.hub = HubProcess(
            self.folder / "hub",
            self.broker,
            [self.site_path],
            influx_url=self.influx.url,
            influx_db="beacons",
            client_id=f"hub-{self.site}",
        )
        self.ledger = Ledger(self.hub.db_path)
        self.listener = TracksListener(self.broker, self.site)
        self.start_hub()
        self.fleet = Fleet(self.site_path, self.broker, self.seed)
        self.t0 = time.time()
        self.fleet.start()
        self._sampler = threading.Thread(target=self._sample, name="sampler", daemon=True)
        self._sampler.start()

    def start_hub(self) -> None:
        self.hub.start()
        if self.hub.proc is None:
            raise RuntimeError("the hub did not start")
        with self._lock:
            self.lives.append(Life(len(self.lives) + 1, self.hub.proc.pid, time.time()))

    def end_hub(self, sig: signal.Signals) -> None:
        life = self.lives[-1]
        with contextlib.suppress(OSError):
            self.scrape(life)
        code = self.hub.stop(sig)
        life.ended = time.time()
        life.end = sig.name
        if sig == signal.SIGTERM:
            if code != 0:
                raise RuntimeError(f"the hub exited with {code} on SIGTERM")
            found = [
                line.split("stopped; totals ", 1)[1]
                for line in self.hub.log().splitlines()
                if "stopped; totals " in line
            ]
            life.totals = json.loads(found[-1])

    def scrape(self, life: Life) -> dict[str, float]:
        m = self.hub.metrics()
        if life is self.lives[-1] and life.ended is None:
            life.metrics = m
        return m

    def healthy(self) -> bool:
        try:
            with _HTTP.open(f"http://127.0.0.1:{self.hub.http_port}/healthz", timeout=2) as r:
                return bool(r.status == 200)
        except OSError:
            return False

    def _sample(self) -> None:
        while not self._sampling.is_set():
            with self._lock:
                life = self.lives[-1]
            if life.ended is None:
                mb = rss_mb(life.pid)
                if mb is not None:
                    self.rss.append((time.time() - self.t0, life.number, mb))
                with contextlib.suppress(OSError, ValueError):
                    self.scrape(life)
            self._sampling.wait(1.0)

    # -- what "recovered" means

    def explained_lost(self, s: Sent) -> str | None:
        """Why batch s, not in the ledger, is lost, or None if that is not (yet) explained."""
        if s.acked is None:
            return None
        if self.ledger.seen_max.get((s.gw, s.boot), -1) <= s.seq:
            return None  # the hub has not seen a later batch of this boot: no gap yet
        for w in self.windows:
            if w.start <= s.acked <= w.end:
                return w.fault
        return None

    def caught_up(self, before: float) -> bool:
        """Every batch acknowledged before `before` is processed or explained as lost."""
        self.ledger.refresh()
        for g in self.fleet.gateways:
            with g.lock:
                sent = g.sent[self._confirmed.get(g.id, 0) :]
            settled = True
            for s in sent:
                if s.acked is None or s.acked > before:
                    settled = False  # later ones may still be confirmed below
                    continue
                key = (s.gw, s.boot, s.seq)
                if key not in self.ledger.rows and self.explained_lost(s) is None:
                    return False
                if settled:
                    # Processed (or lost with a reason) stays so: skip it from now on.
                    self._confirmed[g.id] = self._confirmed.get(g.id, 0) + 1
        return True

    def recover(
        self, name: str, injected: float, back: float, extra: Callable[[], bool] | None = None
    ) -> FaultResult:
        """Wait (polling observed state) until the hub is healthy, caught up with everything
        acknowledged up to `back`, and a fresh tick has been published."""
        deadline = back + RECOVERY_BOUND_S
        done: float | None = None
        while time.time() < deadline + 1.0:
            if (
                self.healthy()
                and self.listener.latest >= back - 1.0
                and self.caught_up(back)
                and (extra is None or extra())
            ):
                done = time.time()
                break
            time.sleep(POLL_S)
        rec = None if done is None or done - back > RECOVERY_BOUND_S else done - back
        result = FaultResult(name, injected - self.t0, back - injected, rec)
        self.faults.append(result)
        shown = f"{rec:.1f} s" if rec is not None else f"NOT within {RECOVERY_BOUND_S:g} s"
        self.log(f"{name}: outage {back - injected:.1f} s, recovered in {shown}")
        return result

    def wait_acked_since(self, t: float, rounds: int) -> None:
        """Until `rounds` more rounds have been acknowledged by the broker after t (the
        broker is queueing while the hub is away)."""
        target = {g.id: rounds for g in self.fleet.gateways if g.id not in self.fleet.paused}
        end = time.time() + 60
        while time.time() < end:
            counts = Counter(s.gw for s in self.fleet.all_sent() if s.acked and s.acked > t)
            if all(counts[g] >= n for g, n in target.items()):
                return
            time.sleep(POLL_S)

    # -- the faults

    def hub_sigkill(self) -> None:
        t = time.time()
        self.end_hub(signal.SIGKILL)
        self.wait_acked_since(t, 3)  # the broker queues for the hub's session meanwhile
        self.start_hub()
        self.recover("hub SIGKILL", t, time.time())

    def hub_away_broker_sigkill(self) -> None:
        t = time.time()
        self.end_hub(signal.SIGKILL)
        self.wait_acked_since(t, 3)
        window = LossWindow(self._broker_started, math.inf, "broker SIGKILL while the hub was away")
        self.windows.append(window)
        self.broker.kill()
        self.broker.start()
        self._broker_started = time.time()
        self.start_hub()
        window.end = time.time()  # healthy = subscribed: nothing after this is dropped
        self.recover("hub SIGKILL + broker SIGKILL", t, time.time())

    def broker_restart(self, sig: signal.Signals) -> None:
        t = time.time()
        window = LossWindow(self._broker_started, math.inf, "broker SIGKILL")
        if sig == signal.SIGKILL:
            self.windows.append(window)
        self.broker.restart(sig)
        self._broker_started = back = time.time()
        # The broker may have lost the hub's session (a SIGKILL before its first save); what
        # the gateways publish before the hub has subscribed again is then dropped.
        end = back + RECOVERY_BOUND_S
        while time.time() < end and not self.healthy():
            time.sleep(POLL_S)
        window.end = time.time()
        self.recover(f"broker {sig.name}", t, back)

    def influx_outage(self) -> None:
        t = time.time()
        self.influx.stop()
        self.log(f"InfluxDB stopped for {self.influx_outage_s:g} s")
        time.sleep(self.influx_outage_s)  # the fault itself lasts this long
        self.influx.start()

        def drained() -> bool:
            m = self.scrape(self.lives[-1])
            return metric_sum(m, "beacon_hub_store_backlog_points") == 0

        self.recover("InfluxDB stopped", t, time.time(), drained)

    def gateway_drop(self) -> None:
        k = sum(1 for f in self.faults if f.name.startswith("gateway"))
        g = self.fleet.gateways[k % len(self.fleet.gateways)]
        self.fleet.paused.add(g.id)
        end = time.time() + 10
        while g.pending() and time.time() < end:  # what it sent was acknowledged
            time.sleep(POLL_S)
        t = time.time()
        g.drop()
        time.sleep(GATEWAY_OFFLINE_S)  # the fault itself: the gateway is away
        g.boot_again()
        self.fleet.paused.discard(g.id)
        boot = g.boot

        def new_boot_processed() -> bool:
            return any(k[0] == g.id and k[1] == boot for k in self.ledger.seen_max)

        self.recover(f"gateway {g.id} dropped", t, time.time(), new_boot_processed)

    def hostile_burst(self) -> None:
        t = time.time()
        life = self.lives[-1]
        before = self.rejected(self.scrape(life))
        payloads = self.hostile_payloads()
        client = mqtt.Client(
            CallbackAPIVersion.VERSION2, client_id=f"soak-rogue-{uuid.uuid4().hex[:6]}"
        )
        acked: set[int] = set()
        client.on_publish = lambda _c, _u, mid, _r, _p: acked.add(mid)
        client.connect(self.broker.host, self.broker.port, keepalive=10)
        client.loop_start()
        mids = []
        for reason, topic, payload in payloads:
            mids.append(client.publish(topic, payload, qos=1).mid)
            self.hostile_sent[reason] += 1
        end = time.time() + RECOVERY_BOUND_S
        while time.time() < end and not set(mids) <= acked:
            time.sleep(POLL_S)
        client.disconnect()
        client.loop_stop()
        want = Counter(r for r, _, _ in payloads)
        back = time.time()

        def counted() -> bool:
            now = self.rejected(self.scrape(life))
            return all(now[r] - before[r] >= n for r, n in want.items())

        self.recover(f"hostile burst ({len(payloads)} payloads)", t, back, counted)
        after = self.rejected(self.scrape(life))
        for r in want:
            self.hostile_counted[r] += int(after[r] - before[r])

    def rejected(self, m: dict[str, float]) -> Counter[str]:
        out: Counter[str] = Counter()
        for key, value in m.items():
            base, _, rest = key.partition("{")
            if base == "beacon_hub_rejected_batches_total":
                reason = rest.split('reason="', 1)[1].split('"', 1)[0]
                out[reason] += int(value)
        return out

    def hostile_payloads(self) -> list[tuple[str, str, bytes]]:
        rng = random.Random(self.seed + len(self.faults))
        g = self.fleet.gateways[0]
        other = self.fleet.gateways[1]
        topic = readings_topic(self.site, g.id)
        with g.lock:
            replays = [p for s, p in g.recent if s.acked is not None and s.boot == g.boot][:3]
        good = json.loads(replays[0]) if replays else {}
        out: list[tuple[str, str, bytes]] = []
        for _ in range(3):
            out.append(("not_utf8", topic, bytes(rng.getrandbits(8) | 0x80 for _ in range(200))))
            out.append(
                ("not_json", topic, b"{ this is not json " + bytes(str(rng.random()), "ascii"))
            )
            out.append(("not_object", topic, b"[1, 2, 3]"))
            out.append(("too_deep", topic, b'{"v":1,"b":' + b"[" * 100_000 + b"]" * 100_000 + b"}"))
            out.append(("bad_version", topic, json.dumps({**good, "v": 99}).encode()))
            out.append(("bad_field", topic, json.dumps({**good, "seq": "seven"}).encode()))
            out.append(
                (
                    "bad_field",
                    topic,
                    json.dumps({**good, "rssi": ["loud"] * len(good.get("rssi", [1]))}).encode(),
                )
            )
            out.append(
                ("gateway_mismatch", readings_topic(self.site, other.id), json.dumps(good).encode())
            )
            rogue = {**good, "gw": "rogue-gw"}
            out.append(
                (
                    "unknown_gateway",
                    readings_topic(self.site, "rogue-gw"),
                    json.dumps(rogue).encode(),
                )
            )
            out.append(
                (
                    "bad_topic",
                    f"beacons/{self.site}/gateway/NOT VALID/readings",
                    json.dumps(good).encode(),
                )
            )
        out.append(("oversized", topic, b'{"v":1,"pad":"' + b"x" * 1_050_000 + b'"}'))
        out.extend(("duplicate", topic, p) for p in replays)
        return out

    # -- the run

    def plan(self) -> list[tuple[float, Callable[[], None]]]:
        """(seconds into the run, fault): hub-killing faults first, then the others in a cycle
        that fills the run; the last TAIL seconds are quiet."""
        head: list[Callable[[], None]] = [self.hub_sigkill, self.hub_away_broker_sigkill]
        cycle: list[Callable[[], None]] = [
            lambda: self.broker_restart(signal.SIGTERM),
            self.hostile_burst,
            self.influx_outage,
            self.gateway_drop,
            lambda: self.broker_restart(signal.SIGKILL),
            self.hostile_burst,
        ]
        start, tail = 10.0, 10.0
        span = max(self.duration_s - start - tail, 1.0)
        per_fault_s = (12.0 if self.minutes < 10 else 20.0) + self.influx_outage_s / len(cycle)
        n = max(len(head) + len(cycle), int(span / per_fault_s))
        n = len(head) + max(1, (n - len(head)) // len(cycle)) * len(cycle)
        faults = head + [cycle[i % len(cycle)] for i in range(n - len(head))]
        return [(start + i * span / len(faults), f) for i, f in enumerate(faults)]

    def run(self) -> None:
        plan = self.plan()
        self.log(
            f"site {self.site}: {len(self.fleet.gateways)} gateways, {BEACONS} beacons, "
            f"{len(plan)} faults over {self.minutes:g} min; hub pid {self.lives[-1].pid}"
        )
        for at, fault in plan:
            while time.time() - self.t0 < at:
                time.sleep(POLL_S)
            fault()
        while time.time() - self.t0 < self.duration_s:
            time.sleep(POLL_S)
        self.fleet.stop()
        self.log(f"gateways stopped after {self.fleet.rounds} rounds; waiting for the hub")
        end = time.time() + CATCH_UP_TIMEOUT_S
        while self.fleet.pending() and time.time() < end:
            time.sleep(POLL_S)
        last = time.time()
        while time.time() < end and not (
            self.caught_up(last) and self.listener.latest >= max(self.ledger_ticks())
        ):
            time.sleep(POLL_S)
        while time.time() < end:
            m = self.scrape(self.lives[-1])
            if metric_sum(m, "beacon_hub_store_backlog_points") == 0:
                break
            time.sleep(POLL_S)
        self._sampling.set()
        if self._sampler is not None:
            self._sampler.join()
        self.end_hub(signal.SIGTERM)

    def ledger_ticks(self) -> list[float]:
        db = sqlite3.connect(f"file:{self.hub.db_path}?mode=ro", uri=True, timeout=10)
        try:
            return [r[0] for r in db.execute("SELECT max(tick_t) FROM batches")] or [0.0]
        finally:
            db.close()

    def close(self) -> None:
        self._sampling.set()
        for part in (self.fleet, self.listener):
            with contextlib.suppress(Exception):
                part.close()
        self.hub.close()
        self.influx.stop()
        self.broker.stop()


# ------------------------------------------------------------------------------ the books


def sql(path: Path, query: str, *args: Any) -> list[tuple[Any, ...]]:
    db = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=10)
    try:
        return db.execute(query, args).fetchall()
    finally:
        db.close()


def influx_fixes(influx: InfluxDB, site: str, t0: float, t1: float) -> dict[float, set[str]]:
    """(time -> beacons) of the `fix` points in every retention policy (the hub may route kinds
    to policies of their own), read a minute at a time (rows per answer stay well below any
    server row limit)."""
    out: dict[float, set[str]] = {}
    policies = [r["name"] for r in influx.rows("SHOW RETENTION POLICIES ON beacons", "beacons")]
    for rp in policies:
        start = math.floor(t0) - 1
        while start <= t1:
            q = (
                f'SELECT accuracy_m FROM "{rp}"."fix" WHERE site = \'{site}\' '  # noqa: S608  # our own ids
                f"AND time >= {int(start * 1e9)} AND time < {int((start + 60) * 1e9)} "
                "GROUP BY beacon"
            )
            for row in influx.rows(q, "beacons"):
                out.setdefault(round(row["time"] / 1e9, 3), set()).add(row["beacon"])
            start += 60
    return out


def balance(soak: Soak) -> dict[str, Any]:  # noqa: PLR0915  # the books, column by column
    db = soak.hub.db_path
    soak.ledger.refresh()
    ledger = soak.ledger
    sent = soak.fleet.all_sent()
    offered = [s for s in sent if s.acked is not None]
    offered_keys = {(s.gw, s.boot, s.seq) for s in offered}
    processed = [s for s in offered if (s.gw, s.boot, s.seq) in ledger.rows]
    lost: Counter[str] = Counter()
    lost_samples = 0
    unexplained: list[Sent] = []
    for s in offered:
        if (s.gw, s.boot, s.seq) in ledger.rows:
            continue
        why = soak.explained_lost(s)
        if why is None:
            unexplained.append(s)
        else:
            lost[why] += 1
            lost_samples += s.samples
    twice_keys = [k for k, n in ledger.rows.items() if n > 1]
    twice = len(twice_keys)
    unacked_processed = sum(
        1 for s in sent if s.acked is None and (s.gw, s.boot, s.seq) in ledger.rows
    )
    sent_keys = {(s.gw, s.boot, s.seq) for s in sent}
    strangers = [k for k in ledger.rows if k not in sent_keys]
    sums = [ledger.samples[(s.gw, s.boot, s.seq)] for s in processed]
    counted_lost = sum(
        metric_sum(life.metrics, "beacon_hub_gateway_batches_lost_total") for life in soak.lives
    )

    tracks = soak.listener.snapshot()
    sq: dict[float, set[str]] = {}
    for t, beacon in sql(db, "SELECT t, beacon FROM fixes WHERE site = ?", soak.site):
        sq.setdefault(round(t, 3), set()).add(beacon)
    t_lo = min(sq, default=soak.t0)
    t_hi = max(sq, default=soak.t0)
    ix = influx_fixes(soak.influx, soak.site, t_lo, t_hi)
    observed = list(tracks)
    expected = sum(len(tracks[t]) for t in observed)
    mismatch_sqlite = [t for t in observed if tracks[t] != sq.get(t, set())]
    mismatch_influx = [t for t in observed if tracks[t] != ix.get(t, set())]
    sq_pairs = {(t, b) for t, bs in sq.items() for b in bs}
    ix_pairs = {(t, b) for t, bs in ix.items() for b in bs}
    unobserved = [t for t in sq if t not in tracks]
    final = soak.lives[-1]
    final_totals = final.totals or {}

    # Memory over the last life, after warm-up.
    life_samples = [(t, mb) for t, n, mb in soak.rss if n == final.number]
    life_t0 = final.started - soak.t0
    after = [mb for t, mb in life_samples if t >= life_t0 + WARMUP_S]
    if len(after) >= 2 * MEMORY_WINDOW_SAMPLES:
        mem_start = statistics.median(after[:MEMORY_WINDOW_SAMPLES])
        mem_end = statistics.median(after[-MEMORY_WINDOW_SAMPLES:])
        growth: float | None = mem_end / mem_start - 1.0
    else:
        mem_start = mem_end = after[-1] if after else math.nan
        growth = None
    in_sqlite = sum(len(tracks[t] & sq.get(t, set())) for t in observed)
    in_influx = sum(len(tracks[t] & ix.get(t, set())) for t in observed)
    return {
        "samples_offered": sum(s.samples for s in offered),
        "in_sqlite": in_sqlite,
        "in_influx": in_influx,
        "mem_peak": max((mb for _, mb in life_samples), default=math.nan),
        "offered": offered,
        "offered_keys": offered_keys,
        "processed": processed,
        "sums": sums,
        "lost": lost,
        "lost_samples": lost_samples,
        "unexplained": unexplained,
        "twice": twice,
        "twice_keys": twice_keys,
        "unacked_processed": unacked_processed,
        "strangers": strangers,
        "counted_lost": counted_lost,
        "tracks": tracks,
        "observed": observed,
        "expected": expected,
        "sq": sq,
        "ix": ix,
        "sq_pairs": sq_pairs,
        "ix_pairs": ix_pairs,
        "mismatch_sqlite": mismatch_sqlite,
        "mismatch_influx": mismatch_influx,
        "unobserved": unobserved,
        "final_totals": final_totals,
        "life_samples": life_samples,
        "mem_start": mem_start,
        "mem_end": mem_end,
        "growth": growth,
        "dropped_points": sum(
            metric_sum(life.metrics, "beacon_hub_store_dropped_points_total") for life in soak.lives
        ),
    }


def _table(soak: Soak, b: dict[str, Any]) -> list[str]:
    """The printed table: the books, the hostile payloads, the fixes, memory, each fault."""
    sums: list[tuple[int, int, int, int]] = b["sums"]
    used, late, impossible = (sum(s[k] for s in sums) for k in (1, 2, 3))
    rows: list[tuple[str, str]] = [
        ("readings offered (PUBACK)", f"{b['samples_offered']:,} in {len(b['offered']):,} batches"),
        (
            "processed (ledger, once each)",
            (
                f"{sum(s[0] for s in sums):,} in {len(b['processed']):,} batches "
                f"({used:,} used, {late:,} late, {impossible:,} impossible RSSI)"
            ),
        ),
    ]
    rows += [
        (f"lost: {why}", f"{n:,} batches ({b['lost_samples']:,} readings), seen as seq gaps")
        for why, n in sorted(b["lost"].items())
    ] or [("lost", "0")]
    lives = len(soak.lives)
    rows += [
        ("lost, as counted by the hub", f"{b['counted_lost']:g} batches (over its {lives} lives)"),
        (
            "unexplained",
            (
                f"{len(b['unexplained']):,} batches; {b['twice']} processed twice, "
                f"{len(b['strangers'])} never sent"
            ),
        ),
    ]
    if b["unacked_processed"]:
        rows.append(("processed, PUBACK never seen", f"{b['unacked_processed']} (not offered)"))
    rows += [
        (f"hostile: {r}", f"sent {n}, rejected {soak.hostile_counted[r]}")
        for r, n in sorted(soak.hostile_sent.items())
    ]
    sq_pairs, ix_pairs = b["sq_pairs"], b["ix_pairs"]
    rows += [
        ("fixes expected (`tracks` seen)", f"{b['expected']:,} in {len(b['observed']):,} ticks"),
        (
            "... of those, in SQLite / InfluxDB",
            (
                f"{b['in_sqlite']:,} / {b['in_influx']:,} "
                f"(ticks differing: {len(b['mismatch_sqlite'])} / {len(b['mismatch_influx'])})"
            ),
        ),
        (
            "all fixes in SQLite / InfluxDB",
            (
                f"{len(sq_pairs):,} / {len(ix_pairs):,} (in one only: {len(sq_pairs - ix_pairs)}"
                f" / {len(ix_pairs - sq_pairs)}; {len(b['unobserved'])} ticks unseen, broker down)"
            ),
        ),
        ("InfluxDB points dropped (spill full)", f"{b['dropped_points']:g}"),
    ]
    growth = b["growth"]
    judged = f"{100 * growth:+.1f} %" if growth is not None else "life too short to judge"
    rows.append(
        (
            f"hub RSS, last life, after {WARMUP_S:g} s",
            f"{b['mem_start']:.1f} -> {b['mem_end']:.1f} MB ({judged}); peak {b['mem_peak']:.1f}",
        )
    )
    for f in soak.faults:
        rec = f"{f.recovery_s:.1f} s" if f.recovery_s is not None else "NOT RECOVERED"
        rows.append((f"{f.at_s:5.0f} s: {f.name}", f"outage {f.outage_s:.1f} s, recovery {rec}"))
    width = max(len(k) for k, _ in rows)
    lines = [f"| {'figure'.ljust(width)} | value |", f"| {'-' * width} | --- |"]
    lines += [f"| {k.ljust(width)} | {v} |" for k, v in rows]
    if soak.rss:
        step = max(1, len(soak.rss) // 12)
        series = ", ".join(f"{t:.0f}s {mb:.0f}" for t, _, mb in soak.rss[::step])
        lines += ["", f"hub RSS over time (MB; a hub restart resets it): {series}"]
    return lines


def _verdict(soak: Soak, b: dict[str, Any]) -> list[str]:
    """Why the run failed; empty when it passed."""
    reasons: list[str] = []
    if b["unexplained"]:
        s = b["unexplained"][0]
        at = (s.acked or soak.t0) - soak.t0
        reasons.append(
            f"{len(b['unexplained'])} offered batches neither processed nor explained "
            f"(first: {s.gw} boot {s.boot} seq {s.seq}, PUBACK {at:.1f} s into the run)"
        )
    if b["twice"] or b["strangers"]:
        reasons.append(
            f"ledger: {b['twice']} batches processed twice, {len(b['strangers'])} never sent"
        )
    for gw, boot, seq in b["twice_keys"][:3]:
        g = soak.fleet.by_id[gw]
        earlier = boot != g.boots[-1]
        reasons.append(
            f"processed twice: {gw} boot {boot} seq {seq}"
            + (
                f" (a batch of its earlier boot, re-delivered after it rebooted as {g.boots[-1]}:"
                " the hub takes any boot but the last for a new one)"
                if earlier
                else ""
            )
        )
    n_lost = sum(b["lost"].values())
    if b["counted_lost"] != n_lost:
        reasons.append(f"the hub counted {b['counted_lost']:g} lost batches, its ledger {n_lost}")
    for reason, n in soak.hostile_sent.items():
        if soak.hostile_counted[reason] != n:
            reasons.append(f"hostile {reason}: sent {n}, rejected {soak.hostile_counted[reason]}")
    if b["mismatch_sqlite"] or b["mismatch_influx"] or b["sq_pairs"] != b["ix_pairs"]:
        reasons.append(
            f"fixes: {len(b['mismatch_sqlite'])} ticks differ from `tracks` in SQLite, "
            f"{len(b['mismatch_influx'])} in InfluxDB; "
            f"{len(b['sq_pairs'] ^ b['ix_pairs'])} fixes in one store only"
        )
    only_sqlite = {t for t, _ in b["sq_pairs"] - b["ix_pairs"]}
    if only_sqlite:
        kills = [life.ended for life in soak.lives if life.end == "SIGKILL" and life.ended]
        near = {t for t in only_sqlite if any(0 <= k - t <= KILL_NEAR_S for k in kills)}
        reasons.append(
            f"{len(only_sqlite)} ticks in SQLite but not in InfluxDB, {len(near)} of them stored"
            f" within {KILL_NEAR_S:g} s before a hub SIGKILL (what the InfluxDB writer still held"
            " in memory is lost, and a restarted hub recomputes only ticks SQLite lacks)"
        )
    growth = b["growth"]
    if growth is None:
        reasons.append("the hub's last life was too short to judge its memory")
    elif growth > MEMORY_GROWTH_MAX:
        reasons.append(
            f"hub memory grew {100 * growth:.1f} % after warm-up "
            f"(at most {100 * MEMORY_GROWTH_MAX:g} %)"
        )
    slow = [f.name for f in soak.faults if f.recovery_s is None]
    if slow:
        reasons.append(f"not recovered within {RECOVERY_BOUND_S:g} s: {', '.join(slow)}")
    return reasons


def report(soak: Soak, b: dict[str, Any]) -> tuple[list[str], dict[str, Any]]:
    reasons = _verdict(soak, b)
    recoveries = [f.recovery_s for f in soak.faults if f.recovery_s is not None]
    summary: dict[str, Any] = {
        "bench": "soak",
        "minutes": soak.minutes,
        "seed": soak.seed,
        "ratio": None,
        "baseline": "none: a soak balances its books instead of comparing speeds",
        "readings_offered": b["samples_offered"],
        "batches_offered": len(b["offered"]),
        "batches_processed": len(b["processed"]),
        "batches_lost_explained": sum(b["lost"].values()),
        "batches_lost_counted_by_hub": b["counted_lost"],
        "batches_unexplained": len(b["unexplained"]),
        "hostile_sent": sum(soak.hostile_sent.values()),
        "hostile_rejected": sum(soak.hostile_counted.values()),
        "fixes_expected": b["expected"],
        "fixes_expected_in_sqlite": b["in_sqlite"],
        "fixes_expected_in_influx": b["in_influx"],
        "fixes_sqlite": len(b["sq_pairs"]),
        "fixes_influx": len(b["ix_pairs"]),
        "rss_mb_start": round(b["mem_start"], 1),
        "rss_mb_end": round(b["mem_end"], 1),
        "rss_growth": None if b["growth"] is None else round(b["growth"], 4),
        "faults": len(soak.faults),
        "recovery_max_s": round(max(recoveries), 2) if recoveries else None,
        "recovery_bound_s": RECOVERY_BOUND_S,
        "ok": not reasons,
        "reasons": reasons,
    }
    return _table(soak, b), summary


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--minutes", type=float, default=2.0, help="length of the run (default 2)")
    parser.add_argument("--seed", type=int, default=1, help="beacon walk and payload seed")
    parser.add_argument(
        "--keep", type=Path, help="keep the servers' and hub's files in this folder"
    )
    args = parser.parse_args()
    with contextlib.ExitStack() as stack:
        if args.keep:
            folder = args.keep
            folder.mkdir(parents=True, exist_ok=True)
        else:
            folder = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="soak-")))
        soak = Soak(folder, args.minutes, args.seed)
        try:
            soak.start()
            soak.run()
            books = balance(soak)
        finally:
            soak.close()
        lines, summary = report(soak, books)
    print()
    print("\n".join(lines))
    print()
    if summary["ok"]:
        bound = (
            f"recovery <= {RECOVERY_BOUND_S:g} s, memory growth <= {100 * MEMORY_GROWTH_MAX:g} %"
        )
        print(f"verdict: ok (zero unexplained losses, every fix in both stores, {bound})")
    else:
        print("verdict: FAILED: " + "; ".join(summary["reasons"]))
    print(json.dumps(summary))
    return 0 if summary["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
