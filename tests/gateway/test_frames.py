"""Frame parsers: golden byte vectors from the specifications, and fuzzing of every field.

Vectors are written as the bytes BlueZ hands bleak: manufacturer data without its company id,
service data without its UUID.
"""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.frames import (
    APPLE_COMPANY_ID,
    EDDYSTONE_SERVICE_UUID,
    Frame,
    FrameError,
    FrameParser,
    TelemetryFrame,
    parse_altbeacon,
    parse_eddystone,
    parse_ibeacon,
)

# Apple's AirLocate sample UUID, major 1, minor 2, measured power -59 dBm (0xC5).
IBEACON = bytes.fromhex("0215 e2c56db5dffb48d2b060d0f5a71096e0 0001 0002 c5")
# Eddystone-UID (google/eddystone eddystone-uid): type 00, tx at 0 m -18 dBm (0xEE), namespace,
# instance, two reserved bytes.
EDDYSTONE_UID = bytes.fromhex("00 ee edd1ebeac04e5defa017 0123456789ab 0000")
# Eddystone-TLM (google/eddystone tlm-plain.md): 20 00, 3000 mV, 24.5 degC (0x1880 in 8.8),
# 1024 adverts, 10000 x 0.1 s.
EDDYSTONE_TLM = bytes.fromhex("20 00 0bb8 1880 00000400 00002710")
# AltBeacon spec example (github.com/AltBeacon/spec), company 0x0118 (Radius Networks):
# BE AC, 20-byte id, reference RSSI -59 (0xC5), reserved 00.
ALTBEACON = bytes.fromhex("beac 2f234454cf6d4a0fadf2f4911ba9ffa6 0001 0002 c5 00")


def test_ibeacon_golden() -> None:
    assert parse_ibeacon(IBEACON) == Frame(
        "ibeacon:e2c56db5-dffb-48d2-b060-d0f5a71096e0:1:2",
        -59.0,
        "e2c56db5dffb48d2b060d0f5a71096e0",
    )


def test_ibeacon_major_minor_are_big_endian_unsigned() -> None:
    raw = bytes.fromhex("0215 83256b7478d043a4826905f9dc8a44ba ffff 8000 7f")
    frame = parse_ibeacon(raw)
    assert frame is not None
    assert frame.beacon == "ibeacon:83256b74-78d0-43a4-8269-05f9dc8a44ba:65535:32768"
    assert frame.tx_1m_dbm == 127.0


def test_other_apple_frames_are_not_beacons() -> None:
    assert parse_ibeacon(bytes.fromhex("1005031c0e9d61")) is None  # Nearby Info of an iPhone
    assert parse_ibeacon(b"") is None


def test_eddystone_uid_golden_converts_tx_to_1m() -> None:
    assert parse_eddystone(EDDYSTONE_UID) == Frame(
        "eddystone:edd1ebeac04e5defa017:0123456789ab", -18.0 - 41.0, "edd1ebeac04e5defa017"
    )
    # Real beacons often leave out the two reserved bytes.
    assert parse_eddystone(EDDYSTONE_UID[:18]) == parse_eddystone(EDDYSTONE_UID)


def test_eddystone_tlm_golden() -> None:
    assert parse_eddystone(EDDYSTONE_TLM) == TelemetryFrame(
        battery_mv=3000, temperature_c=24.5, adv_count=1024, uptime_s=1000.0
    )


@pytest.mark.parametrize(
    ("raw_temp", "expected"),
    [("8000", None), ("ff00", -1.0), ("0100", 1.0), ("0080", 0.5), ("e680", -25.5)],
)
def test_tlm_temperature_is_signed_8_8_with_0x8000_unsupported(
    raw_temp: str, expected: float | None
) -> None:
    raw = bytes.fromhex(f"20 00 0000 {raw_temp} 00000000 00000000")
    frame = parse_eddystone(raw)
    assert isinstance(frame, TelemetryFrame)
    assert frame.temperature_c == expected
    assert frame.battery_mv is None  # 0 mV means "not measured" in the spec


def test_encrypted_tlm_url_and_eid_are_ignored() -> None:
    assert parse_eddystone(bytes.fromhex("2001") + bytes(16)) is None  # encrypted TLM
    assert parse_eddystone(bytes.fromhex("10ee03676f6f676c6507")) is None  # URL
    assert parse_eddystone(bytes.fromhex("30ee") + bytes(8)) is None  # EID


def test_altbeacon_golden() -> None:
    assert parse_altbeacon(ALTBEACON) == Frame(
        "altbeacon:2f234454cf6d4a0fadf2f4911ba9ffa6:1:2",
        -59.0,
        "2f234454cf6d4a0fadf2f4911ba9ffa6",
    )


@pytest.mark.parametrize(
    ("parse", "vector"),
    [
        (parse_ibeacon, IBEACON),
        (parse_altbeacon, ALTBEACON),
        (parse_eddystone, EDDYSTONE_UID),
        (parse_eddystone, EDDYSTONE_TLM),
    ],
)
def test_every_truncation_and_extension_is_refused_or_ignored(parse: object, vector: bytes) -> None:
    """Each length around the real one: a frame only at a valid length, else None or FrameError."""
    assert callable(parse)
    for n in range(len(vector) + 8):
        raw = (vector + bytes(8))[:n]
        try:
            result = parse(raw)
        except FrameError:
            continue
        if result is not None and raw != vector:
            # only the optional reserved bytes of Eddystone-UID may be missing or extra
            assert vector is EDDYSTONE_UID
            assert 18 <= n <= 31


def test_parser_reads_a_whole_advertisement() -> None:
    parser = FrameParser()
    frames, tlm, bad = parser.frames(
        {APPLE_COMPANY_ID: IBEACON, 0x0118: ALTBEACON, 0x0059: b"\x01\x02"},
        {EDDYSTONE_SERVICE_UUID: EDDYSTONE_UID, "0000180f-0000-1000-8000-00805f9b34fb": b"\x64"},
    )
    assert [f.beacon.split(":")[0] for f in frames] == ["ibeacon", "altbeacon", "eddystone"]
    assert tlm is None
    assert bad == 0
    # A malformed field costs only itself.
    frames, tlm, bad = parser.frames({APPLE_COMPANY_ID: IBEACON[:-1], 0x0118: ALTBEACON}, {})
    assert [f.beacon.split(":")[0] for f in frames] == ["altbeacon"]
    assert bad == 1


# --- fuzzing: each field of each frame replaced by arbitrary bytes of arbitrary length


def _fields(vector: bytes, cuts: list[int]) -> list[bytes]:
    bounds = [0, *cuts, len(vector)]
    return [vector[a:b] for a, b in itertools.pairwise(bounds)]


FRAMES = {
    "ibeacon": (parse_ibeacon, _fields(IBEACON, [2, 18, 20, 22])),
    "altbeacon": (parse_altbeacon, _fields(ALTBEACON, [2, 18, 20, 22, 23])),
    "eddystone-uid": (parse_eddystone, _fields(EDDYSTONE_UID, [1, 2, 12, 18])),
    "eddystone-tlm": (parse_eddystone, _fields(EDDYSTONE_TLM, [1, 2, 4, 6, 10])),
}


@pytest.mark.parametrize("name", sorted(FRAMES))
@settings(max_examples=300, deadline=None)
@given(data=st.data())
def test_random_bytes_in_any_field_raise_only_frame_error(name: str, data: st.DataObject) -> None:
    parse, fields = FRAMES[name]
    index = data.draw(st.integers(0, len(fields) - 1), label="field")
    fields = list(fields)
    fields[index] = data.draw(st.binary(max_size=40), label="value")
    raw = b"".join(fields)
    try:
        result = parse(raw)
    except FrameError:
        return
    if result is not None and len(raw) == len(b"".join(FRAMES[name][1])) and index > 0:
        # same layout, different field value: still a frame with a canonical id
        assert isinstance(result, Frame | TelemetryFrame)


@settings(max_examples=500, deadline=None)
@given(
    mfg=st.dictionaries(st.integers(0, 0xFFFF), st.binary(max_size=40), max_size=4),
    eddy=st.one_of(st.none(), st.binary(max_size=40)),
)
def test_any_advertisement_parses_without_raising(
    mfg: dict[int, bytes], eddy: bytes | None
) -> None:
    svc = {} if eddy is None else {EDDYSTONE_SERVICE_UUID: eddy}
    frames, _tlm, bad = FrameParser().frames(mfg, svc)
    assert bad <= len(mfg) + 1
    for frame in frames:
        assert frame.beacon.split(":")[0] in ("ibeacon", "altbeacon", "eddystone")
