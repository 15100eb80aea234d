"""Canonical beacon ids: one physical beacon, one id, everywhere."""

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from beacon_hub.errors import IdError, WireError
from beacon_hub.ids import (
    altbeacon_id,
    canonical_beacon_id,
    check_name_id,
    eddystone_id,
    ibeacon_id,
    is_beacon_id,
    is_name_id,
    mac_id,
    parse_beacon_id,
)
from beacon_hub.wire import decode_batch

UUID = "e2c56db5-dffb-48d2-b060-d0f5a71096e0"


def test_ibeacon_from_bytes_and_strings_agree() -> None:
    raw = bytes.fromhex(UUID.replace("-", ""))
    assert ibeacon_id(raw, 1, 65535) == f"ibeacon:{UUID}:1:65535"
    assert ibeacon_id(UUID.upper(), 1, 65535) == f"ibeacon:{UUID}:1:65535"


def test_parse_canonicalises_case_and_leading_zeros() -> None:
    parsed = parse_beacon_id(f"iBeacon:{UUID.upper()}:007:0")
    assert str(parsed) == f"ibeacon:{UUID}:7:0"
    assert parsed.kind == "ibeacon"
    assert canonical_beacon_id("MAC:AA:BB:CC:DD:EE:FF") == "mac:aa:bb:cc:dd:ee:ff"


@pytest.mark.parametrize(
    "text",
    [
        f"ibeacon:{UUID}:65536:0",
        f"ibeacon:{UUID}:1",
        f"ibeacon:{UUID[:-1]}:1:2",
        "eddystone:00112233445566778899:aabbccddeef",
        "altbeacon:00:1:2",
        "mac:aa:bb:cc:dd:ee",
        "bluetooth:aa",
        "",
        "x" * 500,
    ],
)
def test_bad_ids_are_refused(text: str) -> None:
    assert not is_beacon_id(text)
    with pytest.raises(IdError):
        parse_beacon_id(text)


# Decimal digits that are not ASCII: Arabic-Indic one, Devanagari five, fullwidth nine.
_NOT_ASCII_DIGITS = ("\u0661", "\u096b", "\uff19")


@pytest.mark.parametrize("digit", _NOT_ASCII_DIGITS)
@pytest.mark.parametrize(
    "template",
    [
        f"ibeacon:{UUID}:1{{d}}:2",
        f"ibeacon:{UUID}:1:{{d}}",
        "altbeacon:" + "ab" * 16 + ":{d}:7",
        f"ibeacon:{UUID}:6553{{d}}:0",
    ],
)
def test_only_ascii_digits_make_an_id(template: str, digit: str) -> None:
    text = template.format(d=digit)
    assert not is_beacon_id(text)
    with pytest.raises(IdError):
        canonical_beacon_id(text)
    with pytest.raises(IdError):
        parse_beacon_id(text)
    # The hub's wire decoder takes beacon ids from gateways with the same check.
    batch = {"v": 1, "gw": "gw-01", "boot": "0badc0de", "seq": 1, "sent": 1.7e9}
    batch |= {"beacons": [text], "b": [0], "dt_ms": [0.0], "rssi": [-70.0], "tx": [None]}
    with pytest.raises(WireError, match="canonical beacon id"):
        decode_batch(json.dumps(batch).encode())


@given(st.text(alphabet=st.sampled_from("0123456789:" + "".join(_NOT_ASCII_DIGITS)), max_size=12))
def test_every_id_is_beacon_id_accepts_is_its_own_canonical_form(tail: str) -> None:
    text = f"ibeacon:{UUID}:{tail}"
    if is_beacon_id(text):
        assert text.isascii()
        assert str(parse_beacon_id(text)) == text


def test_builders_check_sizes() -> None:
    assert eddystone_id(bytes(10), bytes(range(6))) == "eddystone:" + "00" * 10 + ":000102030405"
    assert altbeacon_id(bytes(range(16)), 0, 9) == f"altbeacon:{bytes(range(16)).hex()}:0:9"
    assert mac_id("AA-BB-CC-DD-EE-01") == "mac:aa:bb:cc:dd:ee:01"
    with pytest.raises(IdError):
        eddystone_id(bytes(9), bytes(6))
    with pytest.raises(IdError):
        ibeacon_id(bytes(16), 70000, 0)
    with pytest.raises(IdError):
        altbeacon_id(bytes(15), 0, 0)


@given(
    uuid=st.binary(min_size=16, max_size=16),
    major=st.integers(0, 65535),
    minor=st.integers(0, 65535),
)
def test_ibeacon_ids_round_trip(uuid: bytes, major: int, minor: int) -> None:
    text = ibeacon_id(uuid, major, minor)
    assert is_beacon_id(text)
    assert str(parse_beacon_id(text)) == text
    assert canonical_beacon_id(text.upper()) == text


@given(st.text(max_size=100))
def test_any_text_parses_or_raises_id_error(text: str) -> None:
    try:
        parsed = parse_beacon_id(text)
    except IdError:
        return
    assert is_beacon_id(str(parsed))


def test_name_ids_follow_design_pattern() -> None:
    assert is_name_id("gw-01")
    assert is_name_id("a")
    assert is_name_id("store_7")
    for bad in ("", "-gw", "GW", "gw 1", "a" * 64, "gw/1", "gw+", 7):
        assert not is_name_id(bad)
    with pytest.raises(IdError, match="gateway id"):
        check_name_id("GW", "gateway id")
