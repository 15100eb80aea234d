"""Beacon frames from the fields of one advertisement: iBeacon, Eddystone UID/TLM, AltBeacon.

Input is what BlueZ (through bleak's `AdvertisementData`) already split out of the radio packet:
manufacturer data keyed by company id (payload without the id) and service data keyed by UUID.
Every parser checks the length before it indexes and raises only `FrameError`; anything that is
not one of our frame types is not an error, it is simply not a beacon (phones, headphones ...).

Sources of the layouts:
- iBeacon: Apple "Proximity Beacon Specification" r1: company 0x004C, type 0x02, length 0x15,
  16-byte proximity UUID, major and minor (big-endian), measured power at 1 m (int8).
- Eddystone: github.com/google/eddystone, service UUID 0xFEAA. UID (0x00): tx power at 0 m
  (int8), 10-byte namespace, 6-byte instance, 2 reserved bytes. TLM (0x20) version 0x00:
  battery mV, temperature 8.8 fixed point (0x8000 = unsupported), ADV_CNT, SEC_CNT (0.1 s),
  all big-endian.
- AltBeacon: github.com/AltBeacon/spec: any company id, code 0xBEAC, 20-byte beacon id,
  reference RSSI at 1 m (int8), 1 reserved byte. DESIGN.md's id uses the first 16 bytes as the
  id and the last 4 as major and minor.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Final

from beacon_hub.errors import WireError
from beacon_hub.ids import altbeacon_id, eddystone_id, ibeacon_id
from beacon_hub.wire import Telemetry

__all__ = [
    "APPLE_COMPANY_ID",
    "EDDYSTONE_SERVICE_UUID",
    "EDDYSTONE_TX_0M_TO_1M_DB",
    "Frame",
    "FrameError",
    "FrameParser",
    "TelemetryFrame",
    "parse_altbeacon",
    "parse_eddystone",
    "parse_ibeacon",
]

APPLE_COMPANY_ID: Final = 0x004C
"""Bluetooth SIG company identifier of Apple, under which iBeacon frames are sent."""
EDDYSTONE_SERVICE_UUID: Final = "0000feaa-0000-1000-8000-00805f9b34fb"
"""Eddystone's 16-bit service UUID 0xFEAA in the 128-bit form BlueZ and bleak use as key."""
EDDYSTONE_TX_0M_TO_1M_DB: Final = -41.0
"""Eddystone announces tx power at 0 m; the Eddystone spec's ranging note says signal loses
41 dB over the first metre, and DESIGN.md states tx power at 1 m everywhere."""

_IBEACON_PREFIX: Final = b"\x02\x15"
_IBEACON_LEN: Final = 23  # 02 15 + uuid 16 + major 2 + minor 2 + power 1
_ALTBEACON_CODE: Final = b"\xbe\xac"
_ALTBEACON_LEN: Final = 24  # be ac + id 20 + ref rssi 1 + reserved 1
_EDDYSTONE_UID: Final = 0x00
_EDDYSTONE_TLM: Final = 0x20
_EDDYSTONE_UID_MIN_LEN: Final = 18  # type + tx + namespace 10 + instance 6; the 2 RFU bytes are
# often left out by real beacons, so they are optional here
_EDDYSTONE_TLM_LEN: Final = 14
_TLM_TEMP_UNSUPPORTED: Final = 0x8000
_MAX_PAYLOAD_BYTES: Final = 31
"""A legacy advertisement carries 31 bytes of data in all; longer fields cannot be ours."""


class FrameError(WireError):
    """Bytes that claim to be one of our frame types but do not fit its layout."""


@dataclass(frozen=True, slots=True)
class Frame:
    """A beacon identified by one frame: canonical id and tx power (dBm at 1 m) if announced."""

    beacon: str
    tx_1m_dbm: float | None
    group: str
    """What allow-lists match besides the id: the iBeacon or AltBeacon UUID (32 hex) or the
    Eddystone namespace (20 hex)."""


@dataclass(frozen=True, slots=True)
class TelemetryFrame:
    """An Eddystone-TLM frame; it names no beacon, the device address ties it to one."""

    battery_mv: int | None
    temperature_c: float | None
    adv_count: int
    uptime_s: float

    def for_beacon(self, beacon: str) -> Telemetry:
        return Telemetry(
            beacon=beacon,
            battery_mv=self.battery_mv,
            temperature_c=self.temperature_c,
            adv_count=self.adv_count,
            uptime_s=self.uptime_s,
        )


def _int8(byte: int) -> int:
    return byte - 256 if byte > 127 else byte


def parse_ibeacon(payload: bytes) -> Frame | None:
    """Apple manufacturer data -> iBeacon frame; None for Apple's other frame types."""
    n = len(payload)
    if n < 2 or payload[:2] != _IBEACON_PREFIX:
        return None  # AirDrop, Find My, Handoff ...: Apple devices that are not beacons
    if n != _IBEACON_LEN:
        raise FrameError(f"iBeacon frame of {n} bytes; the layout has {_IBEACON_LEN}")
    major = (payload[18] << 8) | payload[19]
    minor = (payload[20] << 8) | payload[21]
    uuid = payload[2:18]
    return Frame(ibeacon_id(uuid, major, minor), float(_int8(payload[22])), uuid.hex())


def parse_altbeacon(payload: bytes) -> Frame | None:
    """Manufacturer data of any company -> AltBeacon frame, or None without the 0xBEAC code."""
    n = len(payload)
    if n < 2 or payload[:2] != _ALTBEACON_CODE:
        return None
    if n != _ALTBEACON_LEN:
        raise FrameError(f"AltBeacon frame of {n} bytes; the layout has {_ALTBEACON_LEN}")
    ident = payload[2:18]
    major = (payload[18] << 8) | payload[19]
    minor = (payload[20] << 8) | payload[21]
    return Frame(altbeacon_id(ident, major, minor), float(_int8(payload[22])), ident.hex())


def parse_eddystone(payload: bytes) -> Frame | TelemetryFrame | None:
    """Eddystone service data -> UID or TLM frame; None for URL, EID and encrypted TLM."""
    n = len(payload)
    if n == 0:
        raise FrameError("empty Eddystone service data")
    if n > _MAX_PAYLOAD_BYTES:
        raise FrameError(f"Eddystone service data of {n} bytes exceeds {_MAX_PAYLOAD_BYTES}")
    kind = payload[0]
    if kind == _EDDYSTONE_UID:
        if n < _EDDYSTONE_UID_MIN_LEN:
            raise FrameError(f"Eddystone-UID of {n} bytes; at least {_EDDYSTONE_UID_MIN_LEN}")
        namespace = payload[2:12]
        tx_1m = _int8(payload[1]) + EDDYSTONE_TX_0M_TO_1M_DB
        return Frame(eddystone_id(namespace, payload[12:18]), tx_1m, namespace.hex())
    if kind == _EDDYSTONE_TLM:
        if n < 2:
            raise FrameError("Eddystone-TLM without a version byte")
        if payload[1] != 0x00:
            return None  # version 0x01 is encrypted TLM: nothing we can read
        if n != _EDDYSTONE_TLM_LEN:
            raise FrameError(f"Eddystone-TLM of {n} bytes; the layout has {_EDDYSTONE_TLM_LEN}")
        vbatt = (payload[2] << 8) | payload[3]
        raw_temp = (payload[4] << 8) | payload[5]
        temperature: float | None = None
        if raw_temp != _TLM_TEMP_UNSUPPORTED:
            signed = raw_temp - 0x10000 if raw_temp & 0x8000 else raw_temp
            temperature = signed / 256.0
        return TelemetryFrame(
            battery_mv=vbatt or None,  # the spec: 0 when the beacon cannot measure it
            temperature_c=temperature,
            adv_count=int.from_bytes(payload[6:10], "big"),
            uptime_s=int.from_bytes(payload[10:14], "big") / 10.0,
        )
    return None


_CACHE_MAX_ENTRIES: Final = 4096
"""Distinct payloads remembered. A store has hundreds of beacons, each with a fixed payload, so
nearly every advertisement is a cache hit; the bound keeps a flood of random payloads (a
rotating-payload device, or a fuzzer) from growing memory."""


class FrameParser:
    """Parses one advertisement's fields, remembering results per distinct payload.

    Beacons repeat the same bytes several times a second; re-building the id string each time
    would cost most of the gateway's CPU. The cache is cleared when full (cheaper than LRU
    bookkeeping on every hit, and a hit rate near 100 % returns within a second).
    """

    __slots__ = ("_eddy", "_mfg")

    def __init__(self) -> None:
        self._mfg: dict[tuple[int, bytes], Frame | None] = {}
        self._eddy: dict[bytes, Frame | TelemetryFrame | None] = {}

    def manufacturer(self, company: int, payload: bytes) -> Frame | None:
        """iBeacon or AltBeacon from one manufacturer data entry; FrameError if malformed."""
        key = (company, payload)
        try:
            return self._mfg[key]
        except KeyError:
            pass
        frame = parse_ibeacon(payload) if company == APPLE_COMPANY_ID else None
        if frame is None:
            frame = parse_altbeacon(payload)
        if len(self._mfg) >= _CACHE_MAX_ENTRIES:
            self._mfg.clear()
        self._mfg[key] = frame
        return frame

    def eddystone(self, payload: bytes) -> Frame | TelemetryFrame | None:
        """Eddystone UID or TLM from the 0xFEAA service data; FrameError if malformed."""
        try:
            return self._eddy[payload]
        except KeyError:
            pass
        frame = parse_eddystone(payload)
        if len(self._eddy) >= _CACHE_MAX_ENTRIES:
            self._eddy.clear()
        self._eddy[payload] = frame
        return frame

    def frames(
        self, manufacturer_data: Mapping[int, bytes], service_data: Mapping[str, bytes]
    ) -> tuple[list[Frame], TelemetryFrame | None, int]:
        """All beacon frames of one advertisement, its telemetry, and how many fields were bad.

        A malformed field costs only itself: the advertisement's other fields still count.
        """
        found: list[Frame] = []
        telemetry: TelemetryFrame | None = None
        bad = 0
        for company, payload in manufacturer_data.items():
            try:
                frame = self.manufacturer(company, bytes(payload))
            except FrameError:
                bad += 1
                continue
            if frame is not None:
                found.append(frame)
        eddy = service_data.get(EDDYSTONE_SERVICE_UUID)
        if eddy is not None:
            try:
                parsed = self.eddystone(bytes(eddy))
            except FrameError:
                bad += 1
            else:
                if isinstance(parsed, Frame):
                    found.append(parsed)
                elif parsed is not None:
                    telemetry = parsed
        return found, telemetry, bad
