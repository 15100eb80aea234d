"""10,000 malformed or hostile payloads interleaved with good traffic: the hub stays up, the good
traffic is processed, every bad payload is counted, and each is forwarded to the dead-letter
topic (issue #5, Checked by)."""

from __future__ import annotations

import json
import random
import threading
import time
import uuid
from dataclasses import replace
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from paho.mqtt.enums import CallbackAPIVersion

from beacon_hub.wire import encode_batch, readings_topic
from tests.integration.hubkit import (
    WAIT_S,
    Gateways,
    HubProcess,
    shipped_broker,
    site_file,
    unique_site,
    wait_until,
)

pytestmark = pytest.mark.integration

TOTAL_BAD = 10_000
DEAD_LETTER = "dead-letter"

JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda inner: (
        st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=8), inner, max_size=5)
    ),
    max_leaves=20,
)
BATCH_KEYS = ("v", "gw", "boot", "seq", "sent", "beacons", "b", "dt_ms", "rssi", "tx", "tlm")


def _hypothesis_payloads(n_each: int) -> list[bytes]:
    """Arbitrary bytes, arbitrary JSON, and batch-shaped objects with arbitrary values."""
    out: list[bytes] = []
    common = settings(
        max_examples=n_each,
        database=None,
        derandomize=True,
        deadline=None,
        suppress_health_check=list(HealthCheck),
    )

    @common
    @given(st.binary(max_size=2000))
    def raw(b: bytes) -> None:
        out.append(b)

    @common
    @given(JSON)
    def any_json(v: Any) -> None:
        out.append(json.dumps(v).encode())

    @common
    @given(st.fixed_dictionaries(dict.fromkeys(BATCH_KEYS, JSON)))
    def batch_shaped(d: dict[str, Any]) -> None:
        d["v"] = 1
        out.append(json.dumps(d).encode())

    raw()
    any_json()
    batch_shaped()
    return out


def _wrong_types(good: dict[str, Any], rng: random.Random) -> bytes:
    d = dict(good)
    key = rng.choice(["seq", "sent", "b", "rssi", "dt_ms", "beacons", "boot", "gw", "v", "tx"])
    d[key] = rng.choice(
        ["x", -1, 1e300, None, [None], [[1]], {"a": 1}, ["ibeacon:bad"], 2**70, True, [99999]]
    )
    if key == "tx" and d[key] is None:
        d["b"] = [10**6]
    return json.dumps(d).encode()


def test_hostile_payloads_are_counted_and_good_traffic_flows(tmp_path: Path) -> None:  # noqa: PLR0915  # one scenario, step by step
    broker = shipped_broker(tmp_path / "mq")
    broker.start()
    site = unique_site()
    path = site_file(tmp_path, site)
    hub = HubProcess(
        tmp_path / "hub", broker, [path], extra={"ingest.dead_letter_topic": DEAD_LETTER}
    )
    hub.start()
    gws = Gateways(broker, path, beacons=6)
    dead: list[str] = []
    lock = threading.Lock()
    sink = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"dl-{uuid.uuid4().hex[:6]}")

    def on_dead(_c: Any, _u: Any, m: mqtt.MQTTMessage) -> None:
        with lock:
            dead.append(m.topic)

    subscribed = threading.Event()
    sink.on_message = on_dead
    sink.on_subscribe = lambda *_: subscribed.set()
    sink.connect(broker.host, broker.port)
    sink.subscribe(f"{DEAD_LETTER}/#", qos=1)
    sink.loop_start()
    assert subscribed.wait(WAIT_S)
    rng = random.Random(5)
    try:
        gws.send_round()
        gws.settle()
        first = _first_round(gws)
        gw_ids = [g for g, _, _ in gws.gws]
        bad: list[tuple[str, bytes]] = []
        topic = readings_topic(site, gw_ids[0])
        bad += [(topic, p) for p in _hypothesis_payloads(1200)]
        bad += [
            (topic, bytes(rng.getrandbits(8) for _ in range(rng.randint(0, 300))))
            for _ in range(1500)
        ]
        bad += [(topic, b'{"v":1,"pad":"' + b"x" * 1_050_000 + b'"}') for _ in range(3)]
        bad += [(topic, b"[" * 100_000 + b"]" * 100_000) for _ in range(100)]
        bad += [(topic, b'{"v":1,"gw":' * 5000) for _ in range(100)]
        good_obj = json.loads(first[0][1])
        bad += [(readings_topic(site, gw_ids[1]), _wrong_types(good_obj, rng)) for _ in range(1500)]
        unknown = replace(gws.batch(gw_ids[0], 1.0, 1.0, time.time()), gw="gw-99")
        gws.seqs[gw_ids[0]] -= 1  # that batch was not gw-01's
        bad += [(readings_topic(site, "gw-99"), encode_batch(unknown)) for _ in range(400)]
        bad += [(readings_topic(site, gw_ids[2]), encode_batch(unknown)) for _ in range(300)]
        bad += [(f"beacons/{site}/gateway/GW-1/readings", first[0][1]) for _ in range(200)]
        bad += [(t, p) for t, p in first for _ in range(40)]  # replayed (boot, seq): 800
        future_rounds = 10
        n_regular = TOTAL_BAD - future_rounds * len(gw_ids)
        while len(bad) < n_regular:  # hypothesis stops early once it has seen a small space
            bad.append((topic, rng.randbytes(rng.randint(0, 300))))
        rng.shuffle(bad)
        del bad[n_regular:]
        # Interleave: good rounds, a share of the bad, and now and then a batch from the future
        # (never two in a row from one gateway, so no clock relearning is provoked).
        chunk = n_regular // future_rounds
        for r in range(future_rounds):
            gws.send_round()
            for t, p in bad[r * chunk : (r + 1) * chunk]:
                gws.client.publish(t, p, qos=1)
            for gw, gx, gy in gws.gws:
                ahead = gws.batch(gw, gx, gy, time.time() + 3600)
                gws.client.publish(readings_topic(site, gw), encode_batch(ahead), qos=1)
            gws.send_round()
        gws.settle()
        want = {(p.gw, p.seq) for p in gws.published}
        wait_until(
            "every bad payload counted",
            lambda: hub.metric_sum("beacon_hub_rejected_batches_total") >= TOTAL_BAD,
            hub=hub,
        )
        wait_until(
            "the good traffic stored",
            lambda: {(g, s) for g, s in hub.sql("SELECT gateway, seq FROM batches")} >= want,
            hub=hub,
        )
        wait_until("every dead letter", lambda: len(dead) >= TOTAL_BAD)
        assert hub.metric_sum("beacon_hub_rejected_batches_total") == TOTAL_BAD
        assert hub.metric_sum("beacon_hub_batches_total") == len(want)
        reasons = {
            key.split('reason="')[1].split('"')[0]
            for key, v in hub.metrics().items()
            if key.startswith("beacon_hub_rejected_batches_total") and v
        }
        assert {
            "not_utf8",
            "not_json",
            "oversized",
            "too_deep",
            "bad_field",
            "unknown_gateway",
            "gateway_mismatch",
            "bad_topic",
            "duplicate",
            "future",
        } <= reasons
        assert hub.metric_sum("beacon_hub_rejected_batches_total", reason="future") == (
            future_rounds * len(gw_ids)
        )
        assert hub.metric_sum("beacon_hub_rejected_batches_total", reason="duplicate") == 800
        with lock:
            assert len(dead) == TOTAL_BAD
        assert hub.stop() == 0
        assert sorted(hub.sql("SELECT gateway, seq FROM batches")) == sorted(want)
    finally:
        sink.loop_stop()
        sink.disconnect()
        gws.close()
        hub.close()
        broker.stop()


def _first_round(gws: Gateways) -> list[tuple[str, bytes]]:
    """The first round's payloads again, for replaying: same (boot, seq) as published."""
    saved_rng = gws.rng.getstate()
    out = []
    for gw, gx, gy in gws.gws:
        seq = gws.seqs[gw]
        gws.seqs[gw] = 0
        out.append(
            (readings_topic(gws.site_id, gw), encode_batch(gws.batch(gw, gx, gy, time.time() - 5)))
        )
        gws.seqs[gw] = seq
    gws.rng.setstate(saved_rng)
    return out
