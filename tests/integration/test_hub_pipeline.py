"""Gateways -> Mosquitto (deploy/mosquitto/mosquitto.conf) -> `beacon-hub run` -> SQLite and
InfluxDB 1.x, and the hub's MQTT outputs, all real (issue #5, Checked by)."""

from __future__ import annotations

import itertools
import math
import queue
import re
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from beacon_hub.wire import decode_event, decode_fix, decode_tracks, encode_batch, readings_topic
from tests.integration.hubkit import (
    WAIT_S,
    Gateways,
    HubProcess,
    logged_totals,
    shipped_broker,
    site_file,
    unique_site,
    wait_until,
)
from tests.servers import InfluxDB, Mosquitto

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mosquitto]:
    server = shipped_broker(tmp_path_factory.mktemp("shipped-broker"))
    server.start()
    try:
        yield server
    finally:
        server.stop()


def totals(hub: HubProcess) -> dict[str, int]:
    """The counts the hub logs as it stops (SIGTERM)."""
    found = logged_totals(hub.log())
    assert found, f"no totals line in the hub's log:\n{hub.log()[-3000:]}"
    return found[-1]


class Listener:
    """Subscribes to a site's outputs and keeps every message."""

    def __init__(self, broker: Mosquitto, site: str) -> None:
        self.messages: queue.Queue[tuple[str, bytes, bool]] = queue.Queue()
        self.client = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=f"l-{uuid.uuid4().hex[:8]}",
            protocol=mqtt.MQTTv311,
        )
        subscribed = threading.Event()
        # Over the queue, not `self` (which holds the client): that cycle would leave paho's
        # wake-up socket pair, closed in its __del__, to the cycle collector, which may let the
        # sockets warn as unclosed (with filterwarnings = error: tests pass, exit 1).
        messages = self.messages
        self.client.on_message = lambda _c, _u, m: messages.put(
            (m.topic, bytes(m.payload), bool(m.retain))
        )
        self.client.on_subscribe = lambda *_: subscribed.set()
        self.client.connect(broker.host, broker.port)
        self.client.subscribe(
            [
                (f"beacons/{site}/tracks", 0),
                (f"beacons/{site}/track/+", 0),
                (f"beacons/{site}/event/+", 1),
            ]
        )
        self.client.loop_start()
        assert subscribed.wait(WAIT_S)

    def drain(self) -> list[tuple[str, bytes, bool]]:
        out = []
        while True:
            try:
                out.append(self.messages.get_nowait())
            except queue.Empty:
                return out

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


def run_into_ledger(hub: HubProcess, gws: Gateways, seconds: float) -> set[tuple[str, int]]:
    """The gateways publish for `seconds`; returns their batches once the hub's ledger has
    them all (each batch's tick ran and was stored)."""
    gws.run_for(seconds)
    gws.settle()
    published = {(p.gw, p.seq) for p in gws.published}
    wait_until(
        "every batch in the ledger",
        lambda: hub.sql("SELECT count(*) FROM batches")[0][0] >= len(published),
    )
    return published


def test_every_fix_reaches_sqlite_and_influxdb(
    tmp_path: Path, broker: Mosquitto, influx_db: tuple[InfluxDB, str]
) -> None:
    influx, db = influx_db
    site = unique_site()
    path = site_file(tmp_path, site)
    hub = HubProcess(
        tmp_path / "hub",
        broker,
        [path],
        influx_url=influx.url,
        influx_db=db,
        extra={"engine.lost_after_s": 3.0},
    )
    hub.start()
    listener = Listener(broker, site)
    gws = Gateways(broker, path)
    try:
        published = run_into_ledger(hub, gws, 6)
        # Silence: every beacon is lost after lost_after_s, and its retained track cleared.
        wait_until(
            "beacon_lost for every beacon",
            lambda: (
                hub.sql("SELECT count(DISTINCT beacon) FROM events WHERE type = 'beacon_lost'")[0][
                    0
                ]
                == len(gws.beacon_ids)
            ),
        )
        assert hub.stop() == 0
    finally:
        gws.close()
        hub.close()
    counts = totals(hub)
    assert counts["batches"] == len(published)
    assert counts["rejected"] == 0
    ledger = hub.sql("SELECT gateway, seq, samples, accepted FROM batches")
    assert sorted((g, s) for g, s, _, _ in ledger) == sorted(published)
    assert sum(r[2] for r in ledger) == gws.samples
    assert sum(r[3] for r in ledger) == gws.samples  # live traffic: nothing late

    # Every fix the engine produced, in SQLite and in InfluxDB, with the documented schema.
    _check_influx(hub, influx, db, site, counts)
    _check_mqtt(broker, listener, site, gws, counts)


def test_a_deadband_stores_the_moves_and_counts_what_it_left_out(
    tmp_path: Path, broker: Mosquitto, influx_db: tuple[InfluxDB, str]
) -> None:
    """stores.deadband_m: both stores hold the same thinned history, every beacon's first fix
    and a fix at least every heartbeat; stored plus thinned is every fix the engine made."""
    influx, db = influx_db
    site = unique_site()
    path = site_file(tmp_path, site)
    heartbeat_s, tick_s = 2.0, 0.5
    hub = HubProcess(
        tmp_path / "hub",
        broker,
        [path],
        influx_url=influx.url,
        influx_db=db,
        extra={"stores.deadband_m": 1.0, "stores.heartbeat_s": heartbeat_s},
    )
    hub.start()
    gws = Gateways(broker, path)
    try:
        published = run_into_ledger(hub, gws, 8)
        assert hub.stop() == 0
    finally:
        gws.close()
        hub.close()
    counts = totals(hub)
    assert counts["batches"] == len(published)
    stored = hub.sql("SELECT beacon, t FROM fixes WHERE site = ? ORDER BY beacon, t", site)
    assert 0 < counts["thinned"] < counts["fixes"]
    assert len(stored) + counts["thinned"] == counts["fixes"]
    rows = influx.rows(f"SELECT count(x) FROM fix WHERE site = '{site}'", db)
    assert rows[0]["count"] == len(stored)
    first_tick = hub.sql("SELECT min(t) FROM fixes WHERE site = ?", site)[0][0]
    by_beacon: dict[str, list[float]] = {}
    for beacon, t in stored:
        by_beacon.setdefault(beacon, []).append(t)
    assert set(by_beacon) == set(gws.beacon_ids)
    for times in by_beacon.values():
        # heard every tick: a stored fix at least every heartbeat (on the tick grid)
        gaps = [b - a for a, b in itertools.pairwise(times)]
        assert max(gaps, default=0.0) <= heartbeat_s + tick_s + 1e-6
        assert times[0] - first_tick <= tick_s * 4  # its first fix, within the first ticks


def _check_influx(
    hub: HubProcess, influx: InfluxDB, db: str, site: str, counts: dict[str, int]
) -> None:
    """Every fix the engine produced, in SQLite and in InfluxDB, with the documented schema."""
    n_sqlite = hub.sql("SELECT count(*) FROM fixes WHERE site = ?", site)[0][0]
    assert n_sqlite == counts["fixes"] > 0
    rows = influx.rows(f"SELECT count(x) FROM fix WHERE site = '{site}'", db)
    assert rows[0]["count"] == counts["fixes"]
    tag_keys = {r["tagKey"] for r in influx.rows("SHOW TAG KEYS FROM fix", db)}
    assert {"site", "beacon", "kind"} <= tag_keys
    field_keys = {
        r["fieldKey"]: r["fieldType"] for r in influx.rows("SHOW FIELD KEYS FROM fix", db)
    }
    assert field_keys == {
        "x": "float",
        "y": "float",
        "level": "integer",
        "accuracy_m": "float",
        "speed_m_s": "float",
        "zone": "string",
        "gateways": "string",
    }
    sq = sorted(hub.sql("SELECT beacon, t, x FROM fixes WHERE site = ?", site))
    iq = sorted(
        (r["beacon"], r["time"] / 1e9, r["x"])
        for r in influx.rows(f"SELECT beacon, x FROM fix WHERE site = '{site}'", db)
    )
    assert [(b, round(t, 3)) for b, t, _ in sq] == [(b, round(t, 3)) for b, t, _ in iq]
    assert [x for *_, x in sq] == pytest.approx([x for *_, x in iq])
    n_events = influx.rows(f"SELECT count(data) FROM event WHERE site = '{site}'", db)
    assert n_events[0]["count"] == counts["events"]


def _check_mqtt(
    broker: Mosquitto, listener: Listener, site: str, gws: Gateways, counts: dict[str, int]
) -> None:
    """One tracks message per tick, retained tracks, events, cleared tracks."""
    # MQTT outputs: one tracks message per tick, retained tracks, events, cleared tracks.
    messages = listener.drain()
    listener.close()
    tracks = [decode_tracks(p) for t, p, _ in messages if t.endswith("/tracks")]
    assert sum(len(m.beacons) for m in tracks) == counts["fixes"]
    assert len({m.t for m in tracks}) == len(tracks)
    track_msgs = [(t, p) for t, p, _ in messages if "/track/" in t]
    fixes = [decode_fix(p) for _, p in track_msgs if p]
    assert {f.beacon for _, f in fixes} == set(gws.beacon_ids)
    cleared = {t.rsplit("/", 1)[1] for t, p in track_msgs if not p}
    assert cleared == set(gws.beacon_ids)
    events = [decode_event(p) for t, p, _ in messages if "/event/" in t]
    assert len(events) == counts["events"]
    # Nothing retained is left for a newcomer: every beacon was lost and its track cleared.
    late = Listener(broker, site)
    try:
        late.client.publish(f"beacons/{site}/tracks", b"{}", qos=1).wait_for_publish(WAIT_S)
        wait_until("the marker", lambda: not late.messages.empty())
        assert [m for m in late.drain() if "/track/" in m[0]] == []
    finally:
        late.close()


def test_assets_label_the_tracks(tmp_path: Path, broker: Mosquitto) -> None:
    site = unique_site()
    path = site_file(tmp_path, site)
    hub = HubProcess(tmp_path / "hub", broker, [path])
    gws = Gateways(broker, path, beacons=3)
    csv_path = tmp_path / "assets.csv"
    csv_path.write_text(
        "beacon,label,kind\n" + "".join(f"{b},A-{i},asset\n" for i, b in enumerate(gws.beacon_ids))
    )
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "beacon_hub.cli",
            "assets",
            "import",
            str(csv_path),
            "--config",
            str(hub.config_path),
        ],
        capture_output=True,
        text=True,
        check=False,
        cwd=hub.folder,
    )
    assert done.returncode == 0, done.stderr
    hub.start()
    try:
        gws.run_for(3)
        gws.settle()
        wait_until(
            "labelled fixes",
            lambda: (
                hub.sql("SELECT count(DISTINCT label) FROM fixes WHERE label IS NOT NULL")[0][0]
                == 3
            ),
        )
        assert hub.stop() == 0
    finally:
        gws.close()
        hub.close()
    seen = hub.sql("SELECT label, last_seen FROM assets ORDER BY label")
    assert [r[0] for r in seen] == ["A-0", "A-1", "A-2"]
    assert all(r[1] is not None for r in seen)


def test_simulator_through_mosquitto_into_both_stores(
    tmp_path: Path, broker: Mosquitto, influx_db: tuple[InfluxDB, str]
) -> None:
    """`beacon-sim run --broker` (real time) -> hub -> SQLite and InfluxDB, counted."""
    influx, db = influx_db
    site = unique_site()
    path = site_file(tmp_path, site)
    hub = HubProcess(tmp_path / "hub", broker, [path], influx_url=influx.url, influx_db=db)
    hub.start()
    try:
        sim = subprocess.run(
            [
                sys.executable,
                "-m",
                "simulator.cli",
                "run",
                "--site",
                str(path),
                "--duration",
                "6",
                "--seed",
                "3",
                "--speed",
                "1",
                "--broker",
                broker.url,
            ],
            capture_output=True,
            text=True,
            check=False,
            timeout=120,
        )
        assert sim.returncode == 0, sim.stderr
        found = re.search(r"([0-9]+) readings in ([0-9]+) batches", sim.stderr)
        assert found, sim.stderr
        readings, batches = int(found[1]), int(found[2])
        wait_until(
            "every simulated batch in the ledger",
            lambda: hub.sql("SELECT count(*) FROM batches")[0][0] >= batches,
            hub=hub,
        )
        # the residuals have moved accuracy_m's factor off the prior's 1
        factor = hub.metric_sum("beacon_hub_accuracy_factor", site=site)
        assert 0.05 < factor < 20.0
        assert factor != 1.0
        assert hub.stop() == 0
    finally:
        hub.close()
    counts = totals(hub)
    assert counts["batches"] == batches
    assert hub.sql("SELECT sum(samples), sum(accepted) FROM batches")[0] == (readings, readings)
    _check_influx(hub, influx, db, site, counts)


def test_a_round_in_step_gets_its_own_tick_and_one_out_of_step_does_not_hold_it(
    tmp_path: Path, broker: Mosquitto
) -> None:
    """Gateways that close their windows on whole seconds (gateway/daemon.py) are fixed in the
    tick of their round, a straggler among them included; a gateway out of step with the grid
    joins the next tick instead of holding every tick up until its batch comes."""
    site = unique_site()
    path = site_file(tmp_path, site)
    hub = HubProcess(tmp_path / "hub", broker, [path], extra={"engine.tick_interval_s": 1.0})
    gws = Gateways(broker, path, beacons=6)
    (*in_step, straggler), (odd, ox, oy) = gws.gws[:-1], gws.gws[-1]
    sent: dict[tuple[str, int], float] = {}

    def publish(gw: str, gx: float, gy: float, at: float) -> None:
        time.sleep(max(0.0, at - time.time()))
        batch = gws.batch(gw, gx, gy, time.time())
        gws.client.publish(readings_topic(site, gw), encode_batch(batch), qos=1)
        sent[gw, batch.seq] = batch.sent

    hub.start()
    try:
        second = math.floor(time.time()) + 1.0
        for k in range(8):
            for gw, gx, gy in in_step:
                publish(gw, gx, gy, second + k)
            publish(*straggler, second + k + 0.15)  # slow Wi-Fi, a busy gateway
            publish(odd, ox, oy, second + k + 0.6)  # its clock is not synchronised
        wait_until(
            "every batch in the ledger",
            lambda: hub.sql("SELECT count(*) FROM batches")[0][0] >= len(sent),
        )
        rows = hub.sql("SELECT gateway, seq, tick_t FROM batches")
        assert hub.stop() == 0
    finally:
        gws.close()
        hub.close()
    taken = {(g, int(q)): float(t) for g, q, t in rows}
    rounds: dict[str, list[float]] = {
        gw: [] for gw, _, _ in gws.gws
    }  # per gateway: tick minus the round's second
    for (gw, seq), at in sent.items():
        if seq >= 2:  # the first rounds teach the hub who is in step
            rounds[gw].append(taken[gw, seq] - math.floor(at))
    in_step_ids = [gw for gw, _, _ in [*in_step, straggler]]
    assert all(rounds[gw] == [0.0] * 6 for gw in in_step_ids), rounds
    assert rounds[odd] == [1.0] * 6, rounds
