"""The MQTT contract of DESIGN.md: topics and versioned JSON payloads.

Gateway, simulator and hub all import this module, so it imports nothing heavy. Encoders take our
own records; decoders take untrusted bytes and either return a record or raise `WireError` with
a reason (never KeyError, IndexError, UnicodeError, RecursionError, ...). Decoders check
structure and types; per-reading plausibility (RSSI range, readings from the future) is the
hub's job, because one bad reading must not cost the other readings of its batch.

Unknown keys in a payload are ignored, so v1 can gain optional fields without breaking readers.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, cast

from beacon_hub.errors import WireError
from beacon_hub.ids import check_name_id, is_beacon_id, is_name_id

__all__ = [
    "EVENT_TYPES",
    "MAX_BATCH_BEACONS",
    "MAX_BATCH_BYTES",
    "MAX_BATCH_SAMPLES",
    "MAX_DT_MS",
    "RSSI_MAX_DBM",
    "RSSI_MIN_DBM",
    "TOPIC_ROOT",
    "WIRE_VERSION",
    "Event",
    "Fix",
    "GatewayStatus",
    "Heartbeat",
    "Promotion",
    "ReadingBatch",
    "Telemetry",
    "Topic",
    "TopicKind",
    "TracksMessage",
    "decode_batch",
    "decode_event",
    "decode_fix",
    "decode_heartbeat",
    "decode_promotion",
    "decode_status",
    "decode_tracks",
    "encode_batch",
    "encode_event",
    "encode_fix",
    "encode_heartbeat",
    "encode_promotion",
    "encode_status",
    "encode_tracks",
    "event_topic",
    "events_subscription",
    "heartbeat_topic",
    "parse_topic",
    "promotion_topic",
    "readings_subscription",
    "readings_topic",
    "status_topic",
    "track_topic",
    "tracks_topic",
]

WIRE_VERSION = 1
TOPIC_ROOT = "beacons"

MAX_BATCH_BYTES = 1_048_576
"""Largest readings payload accepted: EMQX's default max_packet_size is 1 MiB, and a gateway
hearing 500 beacons at 10 adverts/s sends about 100 KiB per 1 s batch."""
MAX_BATCH_SAMPLES = 100_000
"""Samples in one batch; at about 10 bytes per sample this is what 1 MiB can hold."""
MAX_BATCH_BEACONS = 10_000
MAX_DT_MS = 3_600_000.0
"""A sample may be at most one hour older than its batch's send time (an offline gateway
buffers batches whole, so a sample never waits that long inside one batch)."""
MAX_PAYLOAD_BYTES = 262_144
"""Other payloads (status, fix, event, ...) are small; a columnar `tracks` message is bounded by
MAX_BATCH_BYTES instead."""

RSSI_MIN_DBM = -127.0
RSSI_MAX_DBM = 20.0
"""Bluetooth Core spec, HCI LE Advertising Report: RSSI is -127..+20 dBm (127 = not available)."""

EVENT_TYPES = ("zone_enter", "zone_exit", "dwell", "pallet_moved", "beacon_lost")
"""Event types the hub publishes today; consumers must tolerate others (matching the id pattern)."""

_BOOT = re.compile(r"^[0-9a-f]{4,32}$")
_MAX_SEQ = 2**63 - 1

# ---------------------------------------------------------------------------------------------
# Topics

TopicKind = Literal["readings", "status", "heartbeat", "track", "tracks", "event", "promotion"]


@dataclass(frozen=True, slots=True)
class Topic:
    """A parsed topic. `subject` is the gateway, beacon or event type; None for `tracks`."""

    site: str
    kind: TopicKind
    subject: str | None


def readings_topic(site: str, gw: str) -> str:
    return f"{TOPIC_ROOT}/{_site(site)}/gateway/{_gw(gw)}/readings"


def status_topic(site: str, gw: str) -> str:
    return f"{TOPIC_ROOT}/{_site(site)}/gateway/{_gw(gw)}/status"


def heartbeat_topic(site: str, gw: str) -> str:
    return f"{TOPIC_ROOT}/{_site(site)}/gateway/{_gw(gw)}/heartbeat"


def track_topic(site: str, beacon: str) -> str:
    return f"{TOPIC_ROOT}/{_site(site)}/track/{_beacon(beacon)}"


def tracks_topic(site: str) -> str:
    return f"{TOPIC_ROOT}/{_site(site)}/tracks"


def event_topic(site: str, event_type: str) -> str:
    return f"{TOPIC_ROOT}/{_site(site)}/event/{check_name_id(event_type, 'event type')}"


def promotion_topic(site: str, beacon: str) -> str:
    return f"{TOPIC_ROOT}/{_site(site)}/promotion/{_beacon(beacon)}"


def readings_subscription(site: str) -> str:
    """The filter a hub subscribes to for one site's readings."""
    return f"{TOPIC_ROOT}/{_site(site)}/gateway/+/readings"


def events_subscription(site: str) -> str:
    return f"{TOPIC_ROOT}/{_site(site)}/event/+"


def parse_topic(topic: str) -> Topic:
    """Take a topic of DESIGN.md apart; WireError for anything else."""
    if not isinstance(topic, str) or len(topic) > 512:
        raise WireError(f"topic {topic!r:.80} is not a beacon-hub topic")
    parts = topic.split("/")
    if len(parts) < 3 or parts[0] != TOPIC_ROOT or not is_name_id(parts[1]):
        raise WireError(f"topic {topic!r} is not under {TOPIC_ROOT}/{{site}}/")
    site, rest = parts[1], parts[2:]
    if len(rest) == 3 and rest[0] == "gateway" and rest[2] in ("readings", "status", "heartbeat"):
        if not is_name_id(rest[1]):
            raise WireError(f"topic {topic!r}: gateway id {rest[1]!r} is not valid")
        return Topic(site, cast(TopicKind, rest[2]), rest[1])
    if rest == ["tracks"]:
        return Topic(site, "tracks", None)
    if len(rest) == 2 and rest[0] in ("track", "promotion"):
        if not is_beacon_id(rest[1]):
            raise WireError(f"topic {topic!r}: {rest[1]!r} is not a canonical beacon id")
        return Topic(site, cast(TopicKind, rest[0]), rest[1])
    if len(rest) == 2 and rest[0] == "event":
        if not is_name_id(rest[1]):
            raise WireError(f"topic {topic!r}: event type {rest[1]!r} is not valid")
        return Topic(site, "event", rest[1])
    raise WireError(f"topic {topic!r} is not one of DESIGN.md's topics")


def _site(site: str) -> str:
    return check_name_id(site, "site id")


def _gw(gw: str) -> str:
    return check_name_id(gw, "gateway id")


def _beacon(beacon: str) -> str:
    if not is_beacon_id(beacon):
        raise WireError(f"{beacon!r} is not a canonical beacon id")
    return beacon


# ---------------------------------------------------------------------------------------------
# Readings batch (gateway -> hub)


@dataclass(frozen=True, slots=True)
class Telemetry:
    """Eddystone-TLM of one beacon, carried in a batch for the asset registry."""

    beacon: str
    battery_mv: int | None = None
    temperature_c: float | None = None
    adv_count: int | None = None
    uptime_s: float | None = None


@dataclass(frozen=True, slots=True)
class ReadingBatch:
    """One gateway batch, columnar as on the wire.

    Sample i was heard from beacon `beacons[b[i]]`, `dt_ms[i]` milliseconds before `sent` (the
    gateway's clock), with `rssi[i]` dBm and announced tx power `tx[i]` (dBm at 1 m) or None.
    """

    gw: str
    boot: str
    seq: int
    sent: float
    beacons: tuple[str, ...]
    b: tuple[int, ...]
    dt_ms: tuple[float, ...]
    rssi: tuple[float, ...]
    tx: tuple[float | None, ...]
    tlm: tuple[Telemetry, ...] = ()

    def __len__(self) -> int:
        return len(self.b)


def encode_batch(batch: ReadingBatch) -> bytes:
    n = len(batch.b)
    if not (len(batch.dt_ms) == len(batch.rssi) == len(batch.tx) == n):
        raise WireError("batch columns b, dt_ms, rssi and tx differ in length")
    obj: dict[str, Any] = {
        "v": WIRE_VERSION,
        "gw": batch.gw,
        "boot": batch.boot,
        "seq": batch.seq,
        "sent": batch.sent,
        "beacons": list(batch.beacons),
        "b": list(batch.b),
        "dt_ms": list(batch.dt_ms),
        "rssi": list(batch.rssi),
    }
    if any(x is not None for x in batch.tx):
        obj["tx"] = list(batch.tx)
    if batch.tlm:
        index = {beacon: i for i, beacon in enumerate(batch.beacons)}
        obj["tlm"] = [_encode_tlm(t, index) for t in batch.tlm]
    return _dumps(obj)


def decode_batch(raw: bytes | bytearray) -> ReadingBatch:
    """Decode a readings payload from a gateway (untrusted)."""
    obj = _load(raw, "readings batch", MAX_BATCH_BYTES)
    gw = _name(obj, "gw")
    boot = _str(obj, "boot")
    if _BOOT.fullmatch(boot) is None:
        raise WireError(f"boot must be 4-32 lowercase hex digits, got {boot!r:.40}")
    seq = _int(obj, "seq", 0, _MAX_SEQ)
    sent = _num(obj, "sent", 0.0, 1e11)
    beacons = _list(obj, "beacons", MAX_BATCH_BEACONS)
    for i, beacon in enumerate(beacons):
        if not is_beacon_id(beacon):
            raise WireError(f"beacons[{i}] = {beacon!r:.60} is not a canonical beacon id")
    b = _list(obj, "b", MAX_BATCH_SAMPLES)
    n = len(b)
    nb = len(beacons)
    for i, idx in enumerate(b):
        if type(idx) is not int or not 0 <= idx < nb:
            raise WireError(f"b[{i}] = {idx!r:.40} is not an index into beacons (0..{nb - 1})")
    dt_ms = _column(obj, "dt_ms", n, 0.0, MAX_DT_MS)
    rssi = _column(obj, "rssi", n, -1000.0, 1000.0)
    tx: tuple[float | None, ...]
    if obj.get("tx") is None:
        tx = (None,) * n
    else:
        tx = _column(obj, "tx", n, -1000.0, 1000.0, nullable=True)
    tlm: tuple[Telemetry, ...] = ()
    if obj.get("tlm") is not None:
        tlm = tuple(_decode_tlm(item, i, beacons) for i, item in enumerate(_list(obj, "tlm", nb)))
    return ReadingBatch(
        gw=gw,
        boot=boot,
        seq=seq,
        sent=sent,
        beacons=tuple(beacons),
        b=tuple(b),
        dt_ms=dt_ms,  # type: ignore[arg-type]  # non-nullable column holds no None
        rssi=rssi,  # type: ignore[arg-type]  # non-nullable column holds no None
        tx=tx,
        tlm=tlm,
    )


def _encode_tlm(t: Telemetry, index: Mapping[str, int]) -> dict[str, Any]:
    if t.beacon not in index:
        raise WireError(f"telemetry for {t.beacon} whose beacon is not in the batch")
    out: dict[str, Any] = {"b": index[t.beacon]}
    for key in ("battery_mv", "temperature_c", "adv_count", "uptime_s"):
        value = getattr(t, key)
        if value is not None:
            out[key] = value
    return out


def _decode_tlm(item: object, i: int, beacons: Sequence[object]) -> Telemetry:
    if not isinstance(item, dict):
        raise WireError(f"tlm[{i}] must be an object")
    where = f"tlm[{i}]."
    idx = _int(item, "b", 0, len(beacons) - 1, where)
    return Telemetry(
        beacon=cast(str, beacons[idx]),
        battery_mv=_opt_int(item, "battery_mv", 0, 100_000, where),
        temperature_c=_opt_num(item, "temperature_c", -128.0, 128.0, where),
        adv_count=_opt_int(item, "adv_count", 0, 2**32 - 1, where),
        uptime_s=_opt_num(item, "uptime_s", 0.0, 2**32, where),
    )


# ---------------------------------------------------------------------------------------------
# Gateway status and heartbeat


@dataclass(frozen=True, slots=True)
class GatewayStatus:
    """Retained `status`; the gateway's last will carries state `offline`."""

    gw: str
    state: Literal["online", "offline"]
    t: float
    boot: str | None = None
    version: str | None = None


def encode_status(status: GatewayStatus) -> bytes:
    obj: dict[str, Any] = {"v": WIRE_VERSION, "gw": status.gw, "state": status.state, "t": status.t}
    if status.boot is not None:
        obj["boot"] = status.boot
    if status.version is not None:
        obj["version"] = status.version
    return _dumps(obj)


def decode_status(raw: bytes | bytearray) -> GatewayStatus:
    obj = _load(raw, "gateway status", MAX_PAYLOAD_BYTES)
    state = _str(obj, "state")
    if state not in ("online", "offline"):
        raise WireError(f"state must be 'online' or 'offline', got {state!r:.40}")
    return GatewayStatus(
        gw=_name(obj, "gw"),
        state=cast(Literal["online", "offline"], state),
        t=_num(obj, "t", 0.0, 1e11),
        boot=_opt_str(obj, "boot"),
        version=_opt_str(obj, "version"),
    )


@dataclass(frozen=True, slots=True)
class Heartbeat:
    """Gateway counters, published every heartbeat interval (QoS 0)."""

    gw: str
    boot: str
    t: float
    uptime_s: float
    adverts_seen: int
    adverts_published: int
    adverts_dropped: int
    queue_depth: int
    scanner_restarts: int
    adverts_per_s: float
    version: str
    cpu_temp_c: float | None = None
    samples_per_s: float | None = None
    """Samples batched per second; with beacons_heard it gives the RSSI rate per beacon."""
    beacons_heard: int | None = None
    """Distinct beacons in the batches since the last heartbeat."""
    malformed_frames: int | None = None
    """Beacon frames since the gateway started that could not be decoded (a broken or hostile
    advertiser nearby)."""


_HEARTBEAT_COUNTERS = (
    "adverts_seen",
    "adverts_published",
    "adverts_dropped",
    "queue_depth",
    "scanner_restarts",
)


def encode_heartbeat(hb: Heartbeat) -> bytes:
    obj: dict[str, Any] = {"v": WIRE_VERSION}
    for key in Heartbeat.__dataclass_fields__:
        value = getattr(hb, key)
        if value is not None:
            obj[key] = value
    return _dumps(obj)


def decode_heartbeat(raw: bytes | bytearray) -> Heartbeat:
    obj = _load(raw, "heartbeat", MAX_PAYLOAD_BYTES)
    counters = {key: _int(obj, key, 0, 2**63 - 1) for key in _HEARTBEAT_COUNTERS}
    return Heartbeat(
        gw=_name(obj, "gw"),
        boot=_str(obj, "boot"),
        t=_num(obj, "t", 0.0, 1e11),
        uptime_s=_num(obj, "uptime_s", 0.0, 1e10),
        adverts_per_s=_num(obj, "adverts_per_s", 0.0, 1e9),
        version=_str(obj, "version"),
        cpu_temp_c=_opt_num(obj, "cpu_temp_c", -100.0, 200.0),
        samples_per_s=_opt_num(obj, "samples_per_s", 0.0, 1e9),
        beacons_heard=_opt_int(obj, "beacons_heard", 0, 10_000_000),
        malformed_frames=_opt_int(obj, "malformed_frames", 0, 2**63 - 1),
        **counters,
    )


# ---------------------------------------------------------------------------------------------
# Hub outputs


@dataclass(frozen=True, slots=True)
class Fix:
    """One beacon's estimated position at a tick, as in the fixes CSV and `track/{beacon}`.

    `accuracy_m` is the radius that holds the true position 68 % of the time.
    """

    t: float
    beacon: str
    x: float
    y: float
    accuracy_m: float
    zone: str | None = None
    gateways: tuple[str, ...] = ()
    level: int = 0
    label: str | None = None
    kind: str | None = None


def encode_fix(fix: Fix, site: str) -> bytes:
    obj: dict[str, Any] = {
        "v": WIRE_VERSION,
        "site": site,
        "t": fix.t,
        "beacon": fix.beacon,
        "x": fix.x,
        "y": fix.y,
        "level": fix.level,
        "accuracy_m": fix.accuracy_m,
        "zone": fix.zone,
        "gateways": list(fix.gateways),
    }
    if fix.label is not None:
        obj["label"] = fix.label
    if fix.kind is not None:
        obj["kind"] = fix.kind
    return _dumps(obj)


def decode_fix(raw: bytes | bytearray) -> tuple[str, Fix]:
    """Decode a `track/{beacon}` payload into (site, fix)."""
    obj = _load(raw, "track", MAX_PAYLOAD_BYTES)
    gateways = _list(obj, "gateways", 1000)
    for i, gw in enumerate(gateways):
        if not is_name_id(gw):
            raise WireError(f"gateways[{i}] = {gw!r:.40} is not a gateway id")
    fix = Fix(
        t=_num(obj, "t", 0.0, 1e11),
        beacon=_beacon_field(obj, "beacon"),
        x=_num(obj, "x", -1e6, 1e6),
        y=_num(obj, "y", -1e6, 1e6),
        accuracy_m=_num(obj, "accuracy_m", 0.0, 1e6),
        zone=_opt_name(obj, "zone"),
        gateways=tuple(cast(list[str], gateways)),
        level=_int(obj, "level", -1000, 1000),
        label=_opt_str(obj, "label"),
        kind=_opt_str(obj, "kind"),
    )
    return _name(obj, "site"), fix


@dataclass(frozen=True, slots=True)
class TracksMessage:
    """Every fix of one tick of one site, columnar (`tracks`)."""

    site: str
    t: float
    beacons: tuple[str, ...]
    x: tuple[float, ...]
    y: tuple[float, ...]
    level: tuple[int, ...]
    accuracy_m: tuple[float, ...]
    zone: tuple[str | None, ...]

    @classmethod
    def from_fixes(cls, site: str, t: float, fixes: Sequence[Fix]) -> TracksMessage:
        return cls(
            site=site,
            t=t,
            beacons=tuple(f.beacon for f in fixes),
            x=tuple(f.x for f in fixes),
            y=tuple(f.y for f in fixes),
            level=tuple(f.level for f in fixes),
            accuracy_m=tuple(f.accuracy_m for f in fixes),
            zone=tuple(f.zone for f in fixes),
        )


def encode_tracks(msg: TracksMessage) -> bytes:
    return _dumps(
        {
            "v": WIRE_VERSION,
            "site": msg.site,
            "t": msg.t,
            "beacon": list(msg.beacons),
            "x": list(msg.x),
            "y": list(msg.y),
            "level": list(msg.level),
            "accuracy_m": list(msg.accuracy_m),
            "zone": list(msg.zone),
        }
    )


def decode_tracks(raw: bytes | bytearray) -> TracksMessage:
    obj = _load(raw, "tracks", MAX_BATCH_BYTES)
    beacons = _list(obj, "beacon", MAX_BATCH_SAMPLES)
    for i, beacon in enumerate(beacons):
        if not is_beacon_id(beacon):
            raise WireError(f"beacon[{i}] = {beacon!r:.60} is not a canonical beacon id")
    n = len(beacons)
    levels = _list(obj, "level", n)
    if len(levels) != n or any(type(v) is not int for v in levels):
        raise WireError(f"level must be {n} integers")
    zones = _list(obj, "zone", n)
    if len(zones) != n or any(z is not None and not is_name_id(z) for z in zones):
        raise WireError(f"zone must be {n} zone ids or nulls")
    return TracksMessage(
        site=_name(obj, "site"),
        t=_num(obj, "t", 0.0, 1e11),
        beacons=tuple(beacons),
        x=_column(obj, "x", n, -1e6, 1e6),  # type: ignore[arg-type]  # not nullable
        y=_column(obj, "y", n, -1e6, 1e6),  # type: ignore[arg-type]  # not nullable
        level=tuple(levels),
        accuracy_m=_column(obj, "accuracy_m", n, 0.0, 1e6),  # type: ignore[arg-type]  # not nullable
        zone=tuple(zones),
    )


@dataclass(frozen=True, slots=True)
class Event:
    """Something that happened to a beacon: zone_enter, zone_exit, dwell, pallet_moved, ..."""

    type: str
    t: float
    site: str
    beacon: str
    zone: str | None = None
    data: Mapping[str, Any] = field(default_factory=dict)


def encode_event(event: Event) -> bytes:
    return _dumps(
        {
            "v": WIRE_VERSION,
            "type": event.type,
            "t": event.t,
            "site": event.site,
            "beacon": event.beacon,
            "zone": event.zone,
            "data": dict(event.data),
        }
    )


def decode_event(raw: bytes | bytearray) -> Event:
    obj = _load(raw, "event", MAX_PAYLOAD_BYTES)
    data = obj.get("data", {})
    if not isinstance(data, dict):
        raise WireError("data must be an object")
    return Event(
        type=_name(obj, "type"),
        t=_num(obj, "t", 0.0, 1e11),
        site=_name(obj, "site"),
        beacon=_beacon_field(obj, "beacon"),
        zone=_opt_name(obj, "zone"),
        data=data,
    )


@dataclass(frozen=True, slots=True)
class Promotion:
    """A promotion triggered for a (pseudonymised) shopper, with the rule that fired."""

    t: float
    site: str
    beacon: str
    rule: str
    zone: str | None = None
    offer: Mapping[str, Any] = field(default_factory=dict)


def encode_promotion(promo: Promotion) -> bytes:
    return _dumps(
        {
            "v": WIRE_VERSION,
            "t": promo.t,
            "site": promo.site,
            "beacon": promo.beacon,
            "rule": promo.rule,
            "zone": promo.zone,
            "offer": dict(promo.offer),
        }
    )


def decode_promotion(raw: bytes | bytearray) -> Promotion:
    obj = _load(raw, "promotion", MAX_PAYLOAD_BYTES)
    offer = obj.get("offer", {})
    if not isinstance(offer, dict):
        raise WireError("offer must be an object")
    return Promotion(
        t=_num(obj, "t", 0.0, 1e11),
        site=_name(obj, "site"),
        beacon=_beacon_field(obj, "beacon"),
        rule=_name(obj, "rule"),
        zone=_opt_name(obj, "zone"),
        offer=offer,
    )


# ---------------------------------------------------------------------------------------------
# JSON plumbing: every failure becomes a WireError that says which field and why.


def _dumps(obj: Mapping[str, Any]) -> bytes:
    try:
        return json.dumps(obj, separators=(",", ":"), allow_nan=False).encode()
    except ValueError as e:
        raise WireError(f"cannot encode: {e}") from e


def _reject_constant(name: str) -> float:
    raise WireError(f"{name} is not a number JSON allows")


def _load(raw: bytes | bytearray, what: str, max_bytes: int) -> dict[str, Any]:
    if not isinstance(raw, bytes | bytearray):
        raise WireError(f"{what} must be bytes, got {type(raw).__name__}")
    if len(raw) > max_bytes:
        raise WireError(f"{what} of {len(raw)} bytes exceeds {max_bytes}")
    try:
        text = bytes(raw).decode("utf-8")
        obj = json.loads(text, parse_constant=_reject_constant)
    except WireError as e:
        raise WireError(f"{what}: {e}") from e
    except UnicodeDecodeError as e:
        raise WireError(f"{what} is not UTF-8 ({e.reason} at byte {e.start})") from e
    except ValueError as e:  # JSONDecodeError, and int() beyond 4300 digits
        raise WireError(f"{what} is not valid JSON: {e}") from e
    except RecursionError as e:
        raise WireError(f"{what} is nested too deeply") from e
    if not isinstance(obj, dict):
        raise WireError(f"{what} must be a JSON object, got {type(obj).__name__}")
    version = obj.get("v")
    if type(version) is not int or version != WIRE_VERSION:
        raise WireError(f"{what}: unsupported version v={version!r:.20}; this hub reads v=1")
    return obj


def _missing(where: str, key: str, expected: str) -> WireError:
    return WireError(f"{where}{key} is missing; expected {expected}")


def _str(obj: Mapping[str, Any], key: str, where: str = "") -> str:
    value = obj.get(key)
    if value is None:
        raise _missing(where, key, "a string")
    if not isinstance(value, str) or len(value) > 256:
        raise WireError(f"{where}{key} must be a string of at most 256 characters")
    return value


def _opt_str(obj: Mapping[str, Any], key: str) -> str | None:
    return None if obj.get(key) is None else _str(obj, key)


def _name(obj: Mapping[str, Any], key: str) -> str:
    value = _str(obj, key)
    if not is_name_id(value):
        raise WireError(f"{key} = {value!r:.70} does not match ^[a-z0-9][a-z0-9_-]{{0,62}}$")
    return value


def _opt_name(obj: Mapping[str, Any], key: str) -> str | None:
    return None if obj.get(key) is None else _name(obj, key)


def _beacon_field(obj: Mapping[str, Any], key: str) -> str:
    value = _str(obj, key)
    if not is_beacon_id(value):
        raise WireError(f"{key} = {value!r:.70} is not a canonical beacon id")
    return value


def _int(obj: Mapping[str, Any], key: str, lo: int, hi: int, where: str = "") -> int:
    value = obj.get(key)
    if value is None:
        raise _missing(where, key, f"an integer {lo}..{hi}")
    if type(value) is not int or not lo <= value <= hi:
        raise WireError(f"{where}{key} = {value!r:.40} is not an integer {lo}..{hi}")
    return value


def _opt_int(obj: Mapping[str, Any], key: str, lo: int, hi: int, where: str = "") -> int | None:
    return None if obj.get(key) is None else _int(obj, key, lo, hi, where)


def _is_number(value: object) -> bool:
    kind = type(value)
    return (kind is float and math.isfinite(cast(float, value))) or kind is int


def _num(obj: Mapping[str, Any], key: str, lo: float, hi: float, where: str = "") -> float:
    value = obj.get(key)
    if value is None:
        raise _missing(where, key, f"a number {lo:g}..{hi:g}")
    if not _is_number(value) or not lo <= value <= hi:
        raise WireError(f"{where}{key} = {value!r:.40} is not a number {lo:g}..{hi:g}")
    return float(value)


def _opt_num(
    obj: Mapping[str, Any], key: str, lo: float, hi: float, where: str = ""
) -> float | None:
    return None if obj.get(key) is None else _num(obj, key, lo, hi, where)


def _list(obj: Mapping[str, Any], key: str, max_len: int) -> list[Any]:
    value = obj.get(key)
    if value is None:
        raise _missing("", key, "an array")
    if not isinstance(value, list):
        raise WireError(f"{key} must be an array, got {type(value).__name__}")
    if len(value) > max_len:
        raise WireError(f"{key} has {len(value)} entries, more than the {max_len} allowed")
    return value


def _column(
    obj: Mapping[str, Any],
    key: str,
    n: int,
    lo: float,
    hi: float,
    *,
    nullable: bool = False,
) -> tuple[float | None, ...]:
    values = _list(obj, key, MAX_BATCH_SAMPLES)
    if len(values) != n:
        raise WireError(f"{key} has {len(values)} entries; expected {n}, one per sample")
    out: list[float | None] = []
    append = out.append
    for i, value in enumerate(values):
        if value is None and nullable:
            append(None)
        elif _is_number(value) and lo <= value <= hi:
            append(float(value))
        else:
            kind = "a number or null" if nullable else "a number"
            raise WireError(f"{key}[{i}] = {value!r:.40} is not {kind} {lo:g}..{hi:g}")
    return tuple(out)
