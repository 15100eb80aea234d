"""Hub throughput, latency and memory through a real Mosquitto on loopback (issue #5, Goals).

Workload: the example warehouse (60 gateways) with 10,000 beacons, each heard by its 4 nearest
gateways at 2.6 samples/s: 104,000 readings/s (a little over the goal, so that the live rate
measured over the run, start and end included, can reach it), sent as gateways send them (one
batch per gateway per second, ~1,700 samples, ~64 KB).

1. Capacity, same messages for both: the hub, which has run live and knows the gateways, is
   stopped while they publish 20 s in real time; the broker queues the batches for two
   persistent sessions, which then drain them: (a) the baseline, a decode-only subscriber
   (paho thread -> queue -> `decode_batch` + `Readings.from_batch`, the hub's decoding and
   validation, no engine), and (b) the restarted `beacon-hub run` (decode, one engine tick per
   second of data, MQTT outputs, SQLite). ratio = hub / baseline. A drain takes 3-7 s and this
   shared 2-core machine's speed wanders by a third from one minute to the next, so baseline
   and hub alternate for 3 rounds and the ratio is the median of the rounds' ratios.
2. Live: the gateways publish in real time for 60 s (10 s with --quick); the hub's inbox depth
   is sampled every second (flat = no growth), latency is from a batch's publication to the
   arrival of the first `tracks` message whose tick covers every reading of the batch, and the
   hub's resident memory is read at the end, with 10,000 beacons tracked. The gateways publish
   `--phase` seconds after each whole second of the clock: 0 by default, as gateway/daemon.py
   does on a clock NTP keeps in step with the hub's; `--phase random` picks one, as gateways
   with unsynchronised clocks would (the latency then depends on where it falls).

    python bench/hub_throughput.py [--quick] [--phase S|random]
"""

from __future__ import annotations

import argparse
import json
import math
import queue
import random
import statistics
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Any

# So it runs from a plain checkout too, without `pip install -e .`.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import paho.mqtt.client as mqtt
import yaml
from paho.mqtt.enums import CallbackAPIVersion

from beacon_hub.engine import Readings
from beacon_hub.wire import (
    ReadingBatch,
    decode_batch,
    decode_tracks,
    encode_batch,
    readings_subscription,
    readings_topic,
    tracks_topic,
)
from tests.integration.hubkit import (
    HubProcess,
    logged_totals,
    shipped_broker,
    site_file,
    wait_until,
)

GOAL_READINGS_PER_S = 100_000
GOAL_RATIO = 0.5
GOAL_RSS_MB = 500
BEACONS = 10_000
HEARD_BY = 4
"""Gateways hearing each beacon: in a racked warehouse, the nearest few."""
SAMPLES_PER_S = 2.6
"""Adverts per beacon per second that reach a gateway (a 385 ms advertising interval)."""
CAPACITY_S = 20
ROUNDS = 3
WARM_UP_S = 3
"""Seconds the hub runs live before the capacity rounds, to learn the gateways' boots."""
"""Capacity rounds, baseline and hub alternating; the ratio is their median."""
VARIANTS = 4
"""RSSI noise variants per gateway, cycled: encoding fresh noise every second costs the
publisher (which shares the CPU with the hub) more than it tells."""
Columns = tuple[tuple[str, ...], tuple[int, ...], tuple[float, ...], tuple[float, ...]]
"""One variant of a gateway's batch: ReadingBatch's beacons, b, dt_ms and rssi."""


class Workload:
    def __init__(self, site_path: Path, beacons: int, seed: int = 7) -> None:
        data = yaml.safe_load(site_path.read_text())
        self.site = data["id"]
        gws = [(g["id"], g["x"], g["y"]) for g in data["gateways"]]
        outline = data["levels"][0]["outline"]
        w, h = max(p[0] for p in outline), max(p[1] for p in outline)
        rng = random.Random(seed)
        uuid_ = "5e0b9c3a-71d4-4f86-a2e9-c48d16b7f035"
        heard: dict[str, list[tuple[str, float]]] = {g: [] for g, _, _ in gws}
        for i in range(beacons):
            bx, by = rng.uniform(1, w - 1), rng.uniform(1, h - 1)
            near = sorted(gws, key=lambda g: math.hypot(g[1] - bx, g[2] - by))[:HEARD_BY]
            for g, gx, gy in near:
                d = max(math.hypot(gx - bx, gy - by, 3.0), 0.5)
                heard[g].append((f"ibeacon:{uuid_}:{i // 65536}:{i % 65536}", d))
        self.gateways = [g for g, _, _ in gws]
        self.boot = {g: f"{rng.getrandbits(64):016x}" for g in self.gateways}
        self.seq = dict.fromkeys(self.gateways, 0)
        self.columns: dict[str, list[Columns]] = {}
        for g, items in heard.items():
            variants: list[Columns] = []
            for _ in range(VARIANTS):
                beacons_: list[str] = []
                b: list[int] = []
                dt: list[float] = []
                rssi: list[float] = []
                for j, (beacon, d) in enumerate(items):
                    beacons_.append(beacon)
                    n = 3 if (j + len(variants)) % 5 < 3 else 2  # 2.6 on average
                    for k in range(n):
                        b.append(j)
                        dt.append(round(1000.0 * (k + 0.5) / n, 1))
                        rssi.append(round(-59.0 - 22.0 * math.log10(d) + rng.gauss(0, 4), 1))
                variants.append((tuple(beacons_), tuple(b), tuple(dt), tuple(rssi)))
            self.columns[g] = variants
        self.readings_per_round = sum(len(v[0][1]) for v in self.columns.values())

    def newest_dt_s(self, gw: str) -> float:
        """How long before `sent` the newest sample of `gw`'s next batch was heard."""
        return min(self.columns[gw][self.seq[gw] % VARIANTS][2], default=0.0) / 1000.0

    def batch(self, gw: str, sent: float) -> tuple[str, bytes, int]:
        seq = self.seq[gw]
        self.seq[gw] = seq + 1
        beacons, b, dt, rssi = self.columns[gw][seq % VARIANTS]
        payload = encode_batch(
            ReadingBatch(
                gw=gw,
                boot=self.boot[gw],
                seq=seq,
                sent=sent,
                beacons=beacons,
                b=b,
                dt_ms=dt,
                rssi=rssi,
                tx=(None,) * len(b),
            )
        )
        return readings_topic(self.site, gw), payload, len(b)


def client(broker: Any, client_id: str, *, clean: bool = True) -> mqtt.Client:
    c = mqtt.Client(
        CallbackAPIVersion.VERSION2,
        client_id=client_id,
        protocol=mqtt.MQTTv311,
        clean_session=clean,
    )
    c.max_inflight_messages_set(1000)
    c.max_queued_messages_set(0)
    c.connect(broker.host, broker.port, keepalive=60)
    c.loop_start()
    return c


def baseline_session(broker: Any, work: Workload) -> str:
    """A persistent session subscribed to the readings, so the broker queues them: its id."""
    cid = f"baseline-{uuid.uuid4().hex[:6]}"
    subscribed = threading.Event()
    c = mqtt.Client(
        CallbackAPIVersion.VERSION2, client_id=cid, protocol=mqtt.MQTTv311, clean_session=False
    )
    c.on_subscribe = lambda *_: subscribed.set()
    c.connect(broker.host, broker.port)
    c.subscribe(readings_subscription(work.site), qos=1)
    c.loop_start()
    subscribed.wait(30)
    c.loop_stop()
    c.disconnect()
    return cid


def baseline_capacity(broker: Any, cid: str, total: int) -> float:
    """Decode-only subscriber draining what the broker queued for session `cid`: readings/s."""
    inbox: queue.Queue[bytes] = queue.Queue(maxsize=10_000)
    done = threading.Event()
    counted = [0, 0.0]

    def consume() -> None:
        got = 0
        while got < total:
            raw = inbox.get()
            if counted[1] == 0.0:
                counted[1] = time.perf_counter()
            batch = decode_batch(raw)
            Readings.from_batch(batch, 0.0)
            got += len(batch)
        counted[0] = got
        done.set()

    worker = threading.Thread(target=consume, daemon=True)  # may wait for ever: see below
    worker.start()
    c = mqtt.Client(
        CallbackAPIVersion.VERSION2, client_id=cid, protocol=mqtt.MQTTv311, clean_session=False
    )
    c.on_message = lambda _c, _u, m: inbox.put(bytes(m.payload))
    c.connect(broker.host, broker.port)
    c.loop_start()
    finished = done.wait(600)
    elapsed = time.perf_counter() - float(counted[1])
    c.loop_stop()
    c.disconnect()
    if not finished:  # the worker still waits for readings the broker did not deliver
        raise SystemExit(f"the decode-only baseline got fewer than {total:,} readings in 600 s")
    worker.join()
    return total / elapsed


def hub_capacity(hub: HubProcess, n_messages: int, total: int, since_rowid: int) -> float:
    """The hub draining what the broker queued for its session: readings per second."""
    hub.start()
    # Done when every batch is in the ledger, i.e. its tick ran and was stored. The clock starts
    # at the first batch's arrival (the hub's own start-up is not throughput).
    wait_until(
        "the hub to store every batch",
        lambda: (
            hub.sql("SELECT count(*) FROM batches WHERE rowid > ?", since_rowid)[0][0] >= n_messages
        ),
        600,
    )
    done = time.time()
    first: float = hub.sql("SELECT min(arrival) FROM batches WHERE rowid > ?", since_rowid)[0][0]
    # Readings refused as late cost the hub nothing and would flatter it: a restart's backlog
    # is to be ticked from its data (docs/hub.md, Ticks), every reading of it.
    late = hub.sql("SELECT sum(late) FROM batches WHERE rowid > ?", since_rowid)[0][0]
    if late:
        raise SystemExit(f"the hub refused {late} of the backlog's {total:,} readings as late")
    return total / max(done - first, 1e-6)


def publish_live(pub: mqtt.Client, work: Workload, seconds: int) -> list[int]:
    """The gateways publishing in real time for `seconds`, one batch each per second; returns
    the batches' reading counts once the broker has them all."""
    infos, counts = [], []
    nxt = time.monotonic()
    for _ in range(seconds):
        now = time.time()
        for gw in work.gateways:
            topic, payload, n = work.batch(gw, now)
            infos.append(pub.publish(topic, payload, qos=1))
            counts.append(n)
        nxt += 1.0
        time.sleep(max(0.0, nxt - time.monotonic()))
    for info in infos:
        info.wait_for_publish(120)
    return counts


def capacity_rounds(
    hub: HubProcess, broker: Any, work: Workload, seconds: int
) -> list[tuple[float, float]]:
    """(baseline, hub) readings per second for each round: the hub is stopped while the
    gateways publish `seconds` in real time, then restarted to catch up, as after an upgrade.

    The hub first runs live for a few seconds, so it knows the gateways' boots and clock offsets
    when it restarts, as a hub in service does. A backlog of boots it has never seen would be
    placed at its arrival time (the offset is learnt from the freshest batch), squeezing 20 s
    of data into the few seconds the drain takes: fewer engine ticks than the data holds, which
    flattered the hub (the code of 0940342 measured 0.37 that way, 0.18 this way)."""
    hub.start()  # creates the hub's persistent session and subscription
    pub = client(broker, f"pub-{uuid.uuid4().hex[:6]}")
    warm = publish_live(pub, work, WARM_UP_S)
    wait_until(
        "the hub to store the warm-up",
        lambda: hub.sql("SELECT count(*) FROM batches")[0][0] >= len(warm),
        60,
    )
    hub.stop()
    results = []
    for r in range(ROUNDS):
        cid = baseline_session(broker, work)
        since = hub.sql("SELECT coalesce(max(rowid), 0) FROM batches")[0][0]
        messages = publish_live(pub, work, seconds)
        total = sum(messages)
        base = baseline_capacity(broker, cid, total)
        cap = hub_capacity(hub, len(messages), total, since)
        hub.stop()
        print(
            f"round {r + 1}/{ROUNDS}: baseline {base:,.0f}, hub {cap:,.0f} readings/s, "
            f"ratio {cap / base:.2f}",
            file=sys.stderr,
        )
        results.append((base, cap))
    pub.loop_stop()
    pub.disconnect()
    hub.start()
    return results


def live(  # noqa: PLR0915  # one measurement, step by step
    hub: HubProcess, broker: Any, work: Workload, seconds: int, phase_s: float
) -> dict[str, Any]:
    pub = client(broker, f"live-{uuid.uuid4().hex[:6]}")
    tracks: list[tuple[float, float]] = []  # (tick t, arrival)
    sub = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"tr-{uuid.uuid4().hex[:6]}")
    subscribed = threading.Event()
    sub.on_subscribe = lambda *_: subscribed.set()

    def on_tracks(_c: Any, _u: Any, m: mqtt.MQTTMessage) -> None:
        arrival = time.time()  # before decoding: the consumer's own parsing is not hub latency
        tracks.append((decode_tracks(m.payload).t, arrival))

    sub.on_message = on_tracks
    sub.connect(broker.host, broker.port)
    sub.subscribe(tracks_topic(work.site), qos=0)
    sub.loop_start()
    subscribed.wait(30)
    # (gateway, seq, sent, newest reading, published)
    sent_batches: list[tuple[str, int, float, float, float]] = []
    depth: list[float] = []
    start_readings = hub.metric_sum("beacon_hub_readings_total")
    t_start = time.time()
    wall = time.time()
    time.sleep((math.floor(wall - phase_s) + 1.0 + phase_s) - wall)
    nxt = time.monotonic()
    published = 0
    for _ in range(seconds):
        now = time.time()
        for gw in work.gateways:
            newest, seq = now - work.newest_dt_s(gw), work.seq[gw]
            topic, payload, n = work.batch(gw, now)
            pub.publish(topic, payload, qos=1)
            published += n
            sent_batches.append((gw, seq, now, newest, time.time()))
        depth.append(hub.metric_sum("beacon_hub_inbox_depth"))
        nxt += 1.0
        time.sleep(max(0.0, nxt - time.monotonic()))
    total = start_readings + published
    wait_until(
        "the hub to take every reading",
        lambda: hub.metric_sum("beacon_hub_readings_total") >= total,
        120,
    )
    elapsed = time.time() - t_start
    last_sent = max(b[3] for b in sent_batches)
    wait_until("the last tick", lambda: bool(tracks) and tracks[-1][0] >= last_sent, 30)
    rate = (total - start_readings) / elapsed

    # The tick that took each batch in, from the hub's ledger: a tick whose time is past the
    # batch's readings but that ran before the batch was decoded does not carry its fix.
    def ledger() -> dict[tuple[str, int], float]:
        rows = hub.sql("SELECT gateway, seq, tick_t FROM batches WHERE site = ?", work.site)
        return {(g, int(q)): float(t) for g, q, t in rows}

    wanted = {(g, q) for g, q, *_ in sent_batches}
    wait_until("the ledger", lambda: wanted <= ledger().keys(), 30)
    taken = ledger()
    latencies = []
    ticks = sorted(tracks)
    for gw, seq, _, newest, published_at in sent_batches:
        for t, arrival in ticks:
            if t >= newest and t >= taken[gw, seq]:
                latencies.append(arrival - published_at)
                break
    latencies.sort()
    rss_kb = 0
    pid = hub.proc.pid if hub.proc else None
    if pid is not None:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                rss_kb = int(line.split()[1])
    tick_sum = hub.metric_sum("beacon_hub_tick_duration_seconds_sum")
    tick_n = hub.metric_sum("beacon_hub_tick_duration_seconds_count")
    beacons_live = hub.sql("SELECT count(*) FROM latest")[0][0]
    sub.loop_stop()
    sub.disconnect()
    pub.loop_stop()
    pub.disconnect()
    half = len(depth) // 2
    return {
        "readings_per_s": rate,
        "inbox_depth_max": max(depth),
        "inbox_depth_max_first_half": max(depth[:half] or [0]),
        "inbox_depth_max_second_half": max(depth[half:] or [0]),
        "latency_p50_ms": 1000 * latencies[len(latencies) // 2],
        # Where in the hub's 1 s tick grid the gateways publish: a batch waits for the next
        # tick (plus grace and the tick's own work), so this phase moves the latency by up to
        # a second from run to run. Circular mean of the publication times' fractions.
        "publish_phase_s": (
            math.atan2(
                sum(math.sin(2 * math.pi * b[2]) for b in sent_batches),
                sum(math.cos(2 * math.pi * b[2]) for b in sent_batches),
            )
            / (2 * math.pi)
        )
        % 1.0,
        "latency_p95_ms": 1000 * latencies[int(0.95 * (len(latencies) - 1))],
        "rss_mb": rss_kb / 1024,
        "tick_ms_mean": 1000 * tick_sum / max(tick_n, 1),
        "beacons_tracked": beacons_live,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="10 s live, 5 s capacity")
    parser.add_argument(
        "--phase",
        default="0",
        help="seconds after each whole second at which the gateways publish, or 'random'",
    )
    parser.add_argument(
        "--deadband-m",
        type=float,
        default=0.0,
        help="stores.deadband_m for the hub (0: every fix stored; docs/hub.md, Thinning)",
    )
    args = parser.parse_args()
    phase_s = random.random() if args.phase == "random" else float(args.phase) % 1.0
    live_s = 10 if args.quick else 60
    capacity_s = 5 if args.quick else CAPACITY_S
    with tempfile.TemporaryDirectory(prefix="hub-bench-") as tmp:
        folder = Path(tmp)
        broker = shipped_broker(folder / "mq")
        broker.start()
        try:
            site = f"bench-{uuid.uuid4().hex[:6]}"
            path = site_file(folder, site, "warehouse.yaml")
            work = Workload(path, BEACONS)
            hub = HubProcess(
                folder / "hub",
                broker,
                [path],
                extra={
                    "engine.tick_interval_s": 1.0,
                    "outputs.track_refresh_s": 30.0,
                    "stores.deadband_m": args.deadband_m,
                },
            )
            try:
                rounds = capacity_rounds(hub, broker, work, capacity_s)
                result = live(hub, broker, work, live_s, phase_s)
                if hub.stop() != 0:
                    raise SystemExit(f"the hub did not stop cleanly:\n{hub.log()[-2000:]}")
                totals = logged_totals(hub.log())
                fixes = sum(t["fixes"] for t in totals)
                stored_share = 1.0 - sum(t.get("thinned", 0) for t in totals) / max(fixes, 1)
            finally:
                hub.close()
        finally:
            broker.stop()
    ratios = sorted(c / b for b, c in rounds)
    ratio = statistics.median(ratios)
    base = statistics.median(b for b, _ in rounds)
    cap = statistics.median(c for _, c in rounds)
    rows = [
        (
            "workload",
            (
                f"{BEACONS:,} beacons x {HEARD_BY} gateways at {SAMPLES_PER_S} Hz, "
                f"{work.readings_per_round:,} readings/s in {len(work.gateways)} batches/s"
            ),
        ),
        ("baseline capacity", f"{base:,.0f} readings/s (decode + validate only; median)"),
        (
            "hub capacity",
            (
                f"{cap:,.0f} readings/s (engine, outputs, SQLite; median; "
                f"stores.deadband_m {args.deadband_m:g})"
            ),
        ),
        (
            "ratio",
            (
                f"{ratio:.2f} (goal >= {GOAL_RATIO}), median of "
                + ", ".join(f"{r:.2f}" for r in ratios)
            ),
        ),
        (
            "live rate",
            (
                f"{result['readings_per_s']:,.0f} readings/s for {live_s} s "
                f"(goal >= {GOAL_READINGS_PER_S:,})"
            ),
        ),
        (
            "inbox depth",
            (
                f"max {result['inbox_depth_max']:.0f} (first half "
                f"{result['inbox_depth_max_first_half']:.0f}, second half "
                f"{result['inbox_depth_max_second_half']:.0f})"
            ),
        ),
        (
            "latency",
            (
                f"p50 {result['latency_p50_ms']:.0f} ms, p95 {result['latency_p95_ms']:.0f} ms "
                f"(batches published {result['publish_phase_s']:.2f} s after a tick) "
                "(goal <= 1 tick + 100 ms = 1100 ms)"
            ),
        ),
        ("tick", f"{result['tick_ms_mean']:.0f} ms mean (engine + MQTT outputs)"),
        ("stored", f"{stored_share:.1%} of {fixes:,} fixes (the rest thinned)"),
        (
            "memory",
            (
                f"{result['rss_mb']:.0f} MB resident with {result['beacons_tracked']:,} "
                f"beacons tracked (goal <= {GOAL_RSS_MB} MB)"
            ),
        ),
    ]
    print("hub throughput through Mosquitto on loopback")
    for name, value in rows:
        print(f"  {name:<18}{value}")
    summary = {
        "baseline_readings_per_s": round(base),
        "hub_readings_per_s": round(cap),
        "ratio": round(ratio, 3),
        "ratios": [round(r, 3) for r in ratios],
        "live_readings_per_s": round(result["readings_per_s"]),
        "inbox_depth_max": result["inbox_depth_max"],
        "latency_p95_ms": round(result["latency_p95_ms"]),
        "publish_phase_s": round(result["publish_phase_s"], 3),
        "rss_mb": round(result["rss_mb"]),
        "tick_ms_mean": round(result["tick_ms_mean"]),
        "live_s": live_s,
        "deadband_m": args.deadband_m,
        "stored_share": round(stored_share, 3),
    }
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
