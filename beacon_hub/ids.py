"""Canonical ids of DESIGN.md: beacons, sites, gateways, zones.

Beacon ids are hex lowercase and decimal without leading zeros, so that one physical beacon has
exactly one id everywhere (topics, CSV files, stores):

    ibeacon:{8-4-4-4-12 uuid}:{major}:{minor}
    eddystone:{20 hex namespace}:{12 hex instance}
    altbeacon:{32 hex}:{major}:{minor}
    mac:aa:bb:cc:dd:ee:ff

Imports nothing heavy: the gateway uses it on a Pi Zero.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

from beacon_hub.errors import IdError

__all__ = [
    "NAME_ID_PATTERN",
    "BeaconId",
    "BeaconIdKind",
    "altbeacon_id",
    "canonical_beacon_id",
    "check_name_id",
    "eddystone_id",
    "ibeacon_id",
    "is_beacon_id",
    "is_name_id",
    "mac_id",
    "parse_beacon_id",
]

BeaconIdKind = Literal["ibeacon", "eddystone", "altbeacon", "mac", "anon"]

NAME_ID_PATTERN = r"^[a-z0-9][a-z0-9_-]{0,62}$"
"""Site, gateway, zone and other name ids (DESIGN.md): safe in MQTT topics, file names, tags."""

_NAME_ID = re.compile(NAME_ID_PATTERN)

# 0..65535 in decimal without leading zeros, in the regex itself so one fullmatch validates an id.
# [0-9], never \d: in a str pattern \d matches every Unicode decimal digit ("1\u0661" would pass
# as canonical, though int() reads it as 11 and parse_beacon_id refuses it).
_U16 = r"(?:6553[0-5]|655[0-2][0-9]|65[0-4][0-9]{2}|6[0-4][0-9]{3}|[1-5][0-9]{4}|[1-9][0-9]{0,3}|0)"
_UUID = r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}"
_CANONICAL = re.compile(
    rf"ibeacon:{_UUID}:{_U16}:{_U16}"
    rf"|eddystone:[0-9a-f]{{20}}:[0-9a-f]{{12}}"
    rf"|altbeacon:[0-9a-f]{{32}}:{_U16}:{_U16}"
    r"|mac:[0-9a-f]{2}(?::[0-9a-f]{2}){5}"
    r"|anon:[0-9a-f]{16}"  # a shopper's pseudonym (privacy.py), in every hub output
)
_MAX_ID_CHARS = 80  # the longest canonical id (altbeacon) is 54 characters

_EXAMPLES = (
    "expected one of ibeacon:{uuid 8-4-4-4-12}:{major}:{minor}, "
    "eddystone:{20 hex}:{12 hex}, altbeacon:{32 hex}:{major}:{minor}, mac:aa:bb:cc:dd:ee:ff"
)


@dataclass(frozen=True, slots=True)
class BeaconId:
    """A beacon id taken apart. `str(b)` gives the canonical form."""

    kind: BeaconIdKind
    parts: tuple[str, ...]

    def __str__(self) -> str:
        return ":".join((self.kind, *self.parts))


def is_beacon_id(text: object) -> bool:
    """True when `text` is a beacon id in canonical form (fast path for decoders)."""
    return (
        isinstance(text, str)
        and len(text) <= _MAX_ID_CHARS
        and _CANONICAL.fullmatch(text) is not None
    )


def parse_beacon_id(text: str) -> BeaconId:
    """Parse a beacon id, accepting upper case hex and leading zeros, and canonicalise it."""
    if not isinstance(text, str):
        raise IdError(f"beacon id must be a string, got {type(text).__name__}")
    if len(text) > _MAX_ID_CHARS:
        raise IdError(f"beacon id of {len(text)} characters is too long; {_EXAMPLES}")
    raw = text.strip().lower()
    kind, _, rest = raw.partition(":")
    if kind == "ibeacon":
        uuid, major, minor = _split3(rest, text)
        candidate = f"ibeacon:{uuid}:{_u16(major, text)}:{_u16(minor, text)}"
    elif kind == "altbeacon":
        ident, major, minor = _split3(rest, text)
        candidate = f"altbeacon:{ident}:{_u16(major, text)}:{_u16(minor, text)}"
    else:
        candidate = raw
    if _CANONICAL.fullmatch(candidate) is None:
        raise IdError(f"{text!r} is not a beacon id; {_EXAMPLES}")
    head, *parts = candidate.split(":")
    if head == "mac":
        parts = [":".join(parts)]
    return BeaconId(kind=_KINDS[head], parts=tuple(parts))


def canonical_beacon_id(text: str) -> str:
    """The canonical form of a beacon id given in any accepted spelling."""
    if is_beacon_id(text):
        return text
    return str(parse_beacon_id(text))


def ibeacon_id(uuid: bytes | str, major: int, minor: int) -> str:
    """iBeacon id from its 16-byte proximity UUID (bytes or any UUID spelling), major, minor."""
    hex32 = uuid.hex() if isinstance(uuid, bytes) else uuid.replace("-", "").lower()
    if len(hex32) != 32 or not _is_hex(hex32):
        raise IdError(f"iBeacon UUID must be 16 bytes, got {uuid!r}")
    dashed = f"{hex32[:8]}-{hex32[8:12]}-{hex32[12:16]}-{hex32[16:20]}-{hex32[20:]}"
    return f"ibeacon:{dashed}:{_check_u16(major, 'major')}:{_check_u16(minor, 'minor')}"


def eddystone_id(namespace: bytes, instance: bytes) -> str:
    """Eddystone-UID id from its 10-byte namespace and 6-byte instance."""
    if len(namespace) != 10 or len(instance) != 6:
        raise IdError(
            f"Eddystone-UID needs a 10-byte namespace and a 6-byte instance, "
            f"got {len(namespace)} and {len(instance)}"
        )
    return f"eddystone:{namespace.hex()}:{instance.hex()}"


def altbeacon_id(ident: bytes, major: int, minor: int) -> str:
    """AltBeacon id from the first 16 bytes of its beacon id and the two 16-bit fields after."""
    if len(ident) != 16:
        raise IdError(f"AltBeacon id needs 16 bytes before major and minor, got {len(ident)}")
    return f"altbeacon:{ident.hex()}:{_check_u16(major, 'major')}:{_check_u16(minor, 'minor')}"


def mac_id(address: str) -> str:
    """Id of a device tracked by its Bluetooth address (only for addresses a config allows)."""
    return canonical_beacon_id(f"mac:{address.replace('-', ':')}")


def is_name_id(text: object) -> bool:
    """True for a site, gateway or zone id matching DESIGN.md's pattern."""
    return isinstance(text, str) and _NAME_ID.fullmatch(text) is not None


def check_name_id(text: object, what: str) -> str:
    """Return `text` if it is a valid name id, else raise IdError naming `what`."""
    if not is_name_id(text):
        raise IdError(
            f"{what} {text!r} must match {NAME_ID_PATTERN} "
            "(lowercase letters, digits, '-' and '_', at most 63 characters)"
        )
    return str(text)


_KINDS: dict[str, BeaconIdKind] = {
    "ibeacon": "ibeacon",
    "eddystone": "eddystone",
    "altbeacon": "altbeacon",
    "mac": "mac",
    "anon": "anon",
}


def _split3(rest: str, original: str) -> tuple[str, str, str]:
    parts = rest.split(":")
    if len(parts) != 3:
        raise IdError(f"{original!r} is not a beacon id; {_EXAMPLES}")
    return parts[0], parts[1], parts[2]


def _u16(decimal: str, original: str) -> str:
    if not decimal.isascii() or not decimal.isdigit() or len(decimal) > 6:
        raise IdError(f"{original!r}: major and minor must be decimal numbers 0..65535")
    return str(_check_u16(int(decimal), "major/minor"))


def _check_u16(value: int, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= 0xFFFF:
        raise IdError(f"{what} must be an integer 0..65535, got {value!r}")
    return value


def _is_hex(text: str) -> bool:
    return all(c in "0123456789abcdef" for c in text)
