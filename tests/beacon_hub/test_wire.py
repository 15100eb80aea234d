"""The wire contract: untrusted bytes decode to a record or raise WireError, nothing else."""

import contextlib
import json
import math
from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from beacon_hub import wire
from beacon_hub.errors import WireError
from beacon_hub.wire import (
    Event,
    Fix,
    GatewayStatus,
    Heartbeat,
    Promotion,
    ReadingBatch,
    Telemetry,
    TracksMessage,
)

UUID = "e2c56db5-dffb-48d2-b060-d0f5a71096e0"
B1 = f"ibeacon:{UUID}:1:2"
B2 = "eddystone:00112233445566778899:aabbccddeeff"

DECODERS: list[Callable[[bytes], Any]] = [
    wire.decode_batch,
    wire.decode_status,
    wire.decode_heartbeat,
    wire.decode_fix,
    wire.decode_tracks,
    wire.decode_event,
    wire.decode_promotion,
]

# The wire decoder meets the most hostile input of the project: CI runs >= 2,000 examples each.
MANY = settings(max_examples=2000, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def batch(**changes: Any) -> ReadingBatch:
    base = ReadingBatch(
        gw="gw-01",
        boot="0badc0de",
        seq=41,
        sent=1_700_000_000.25,
        beacons=(B1, B2),
        b=(0, 1, 0),
        dt_ms=(900.0, 12.0, 0.0),
        rssi=(-71.0, -80.5, -69.0),
        tx=(-59.0, None, -59.0),
        tlm=(Telemetry(beacon=B2, battery_mv=2950, temperature_c=21.5, adv_count=7, uptime_s=3.5),),
    )
    return ReadingBatch(**{**{f: getattr(base, f) for f in base.__dataclass_fields__}, **changes})


def raw(**changes: Any) -> bytes:
    obj = json.loads(wire.encode_batch(batch()))
    obj.update(changes)
    return json.dumps(obj).encode()


def test_batch_round_trip_keeps_every_column() -> None:
    b = batch()
    assert wire.decode_batch(wire.encode_batch(b)) == b


def test_batch_without_tx_decodes_to_nones() -> None:
    b = batch(tx=(None, None, None), tlm=())
    encoded = wire.encode_batch(b)
    assert b'"tx"' not in encoded
    assert wire.decode_batch(encoded).tx == (None, None, None)


@pytest.mark.parametrize(
    ("changes", "reason"),
    [
        ({"v": 2}, "version"),
        ({"v": True}, "version"),
        ({"gw": "GW 1"}, "gw"),
        ({"boot": "xyz"}, "boot"),
        ({"seq": -1}, "seq"),
        ({"seq": 1.5}, "seq"),
        ({"sent": "now"}, "sent"),
        ({"beacons": ["ibeacon:nope"]}, "beacons"),
        ({"b": [0, 1, 2]}, "b"),
        ({"b": [0, True, 0]}, "b"),
        ({"dt_ms": [1, 2]}, "dt_ms"),
        ({"dt_ms": [-1, 0, 0]}, "dt_ms"),
        ({"rssi": [-70, "x", -70]}, "rssi"),
        ({"tx": [None, None]}, "tx"),
        ({"tlm": [{"b": 9}]}, "tlm"),
        ({"tlm": "x"}, "tlm"),
    ],
)
def test_batch_refusals_name_the_field(changes: dict[str, Any], reason: str) -> None:
    with pytest.raises(WireError, match=reason):
        wire.decode_batch(raw(**changes))


def test_hostile_shapes_are_refused() -> None:
    for payload in (
        b"[" * 100_000 + b"]" * 100_000,
        b'{"v":1,"x":' + b"[" * 5000 + b"]" * 5000 + b"}",
        b"\xff\xfe",
        b'{"v":1e999}',
        b'{"v":NaN}',
        b'{"v":1,"seq":' + b"9" * 5000 + b"}",
        b" " * (wire.MAX_BATCH_BYTES + 1),
        b"null",
        b"",
    ):
        for decode in DECODERS:
            with pytest.raises(WireError):
                decode(payload)


def test_infinite_numbers_are_refused() -> None:
    with pytest.raises(WireError, match="rssi"):
        wire.decode_batch(raw(rssi=[-70, -70, 1e999]).replace(b"Infinity", b"1e999"))


@MANY
@given(st.binary(max_size=4096))
def test_any_bytes_decode_or_refuse(payload: bytes) -> None:
    for decode in DECODERS:
        with contextlib.suppress(WireError):
            decode(payload)


JSON = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=5) | st.dictionaries(st.text(max_size=8), children, max_size=5)
    ),
    max_leaves=30,
)
FIELDS = st.sampled_from(
    ["v", "gw", "boot", "seq", "sent", "beacons", "b", "dt_ms", "rssi", "tx", "tlm"]
)


@MANY
@given(st.dictionaries(FIELDS, JSON, max_size=6))
def test_valid_batch_with_random_fields_decodes_or_refuses(changes: dict[str, Any]) -> None:
    try:
        decoded = wire.decode_batch(raw(**changes))
    except WireError:
        return
    assert len(decoded.dt_ms) == len(decoded.rssi) == len(decoded.tx) == len(decoded.b)
    assert all(0 <= i < len(decoded.beacons) for i in decoded.b)
    assert all(math.isfinite(x) for x in decoded.rssi)


@MANY
@given(JSON)
def test_any_json_decodes_or_refuses(value: Any) -> None:
    payload = json.dumps(value).encode()
    for decode in DECODERS:
        with contextlib.suppress(WireError):
            decode(payload)


SAMPLES = st.lists(
    st.tuples(
        st.integers(0, 2),
        st.floats(0, 60_000, allow_nan=False),
        st.floats(-127, 20, allow_nan=False),
        st.none() | st.floats(-100, 20, allow_nan=False),
    ),
    max_size=50,
)


@MANY
@given(SAMPLES, st.integers(0, 2**63 - 1), st.floats(0, 4e9, allow_nan=False))
def test_batch_round_trip(
    samples: list[tuple[int, float, float, float | None]], seq: int, sent: float
) -> None:
    beacons = (B1, B2, f"mac:aa:bb:cc:dd:ee:0{seq % 10}")
    b = ReadingBatch(
        gw="gw-1",
        boot="abcd",
        seq=seq,
        sent=sent,
        beacons=beacons,
        b=tuple(s[0] for s in samples),
        dt_ms=tuple(s[1] for s in samples),
        rssi=tuple(s[2] for s in samples),
        tx=tuple(s[3] for s in samples),
    )
    assert wire.decode_batch(wire.encode_batch(b)) == b


def test_other_payloads_round_trip() -> None:
    status = GatewayStatus(gw="gw-1", state="offline", t=1.5, boot="abcd", version="0.1.0")
    assert wire.decode_status(wire.encode_status(status)) == status
    hb = Heartbeat(
        gw="gw-1",
        boot="abcd",
        t=10.0,
        uptime_s=3600.0,
        adverts_seen=100,
        adverts_published=98,
        adverts_dropped=2,
        queue_depth=0,
        scanner_restarts=1,
        adverts_per_s=12.5,
        version="0.1.0",
        cpu_temp_c=51.2,
        samples_per_s=40.0,
        beacons_heard=12,
    )
    assert wire.decode_heartbeat(wire.encode_heartbeat(hb)) == hb
    fix = Fix(
        t=5.0, beacon=B1, x=1.5, y=-2.0, accuracy_m=1.2, zone="aisle-3", gateways=("gw-1", "gw-2")
    )
    assert wire.decode_fix(wire.encode_fix(fix, "store-1")) == ("store-1", fix)
    tracks = TracksMessage.from_fixes(
        "store-1", 5.0, [fix, Fix(t=5.0, beacon=B2, x=0, y=0, accuracy_m=9)]
    )
    assert wire.decode_tracks(wire.encode_tracks(tracks)) == tracks
    event = Event(
        type="zone_enter", t=5.0, site="store-1", beacon=B1, zone="aisle-3", data={"dwell_s": 3}
    )
    assert wire.decode_event(wire.encode_event(event)) == event
    promo = Promotion(
        t=5.0, site="store-1", beacon=B1, rule="coffee-endcap", zone="endcap-2", offer={"sku": "x"}
    )
    assert wire.decode_promotion(wire.encode_promotion(promo)) == promo


def test_topics_build_and_parse() -> None:
    assert wire.readings_topic("store-1", "gw-01") == "beacons/store-1/gateway/gw-01/readings"
    assert wire.parse_topic("beacons/store-1/gateway/gw-01/heartbeat") == wire.Topic(
        "store-1", "heartbeat", "gw-01"
    )
    assert wire.parse_topic(wire.track_topic("s", B1)) == wire.Topic("s", "track", B1)
    assert wire.parse_topic(wire.tracks_topic("s")) == wire.Topic("s", "tracks", None)
    assert wire.parse_topic(wire.event_topic("s", "zone_exit")) == wire.Topic(
        "s", "event", "zone_exit"
    )
    assert wire.parse_topic(wire.promotion_topic("s", B2)) == wire.Topic("s", "promotion", B2)
    assert wire.readings_subscription("s") == "beacons/s/gateway/+/readings"
    for bad in (
        "beacons/S/tracks",
        "other/s/tracks",
        "beacons/s/track/nope",
        "beacons/s/gateway/g/x",
    ):
        with pytest.raises(WireError):
            wire.parse_topic(bad)
    with pytest.raises(WireError):
        wire.readings_topic("s", "GW/1")


@given(st.text(max_size=200))
def test_any_topic_parses_or_refuses(topic: str) -> None:
    with contextlib.suppress(WireError):
        wire.parse_topic(topic)
