"""The scanner seam: what makes a scanner, and the two sources behind it.

`bluez` is bleak's `BleakScanner`, continuous, with the arguments `bleak_scanner_kwargs` builds
from the config (the tests assert exactly these). `replay` plays a JSON-lines file of
advertisements through the same callback with bleak's own `BLEDevice` and `AdvertisementData`
objects: for tests and demos where there is no radio. Both satisfy `Scanner`.

Why these bleak arguments:
- active scanning with the BlueZ discovery filter `DuplicateData: True`: without it BlueZ reports
  a device again only when its RSSI moves by 8 dB or more, and bleak sets it to False unless told,
  so a beacon would be heard a few times a minute instead of at its advertising rate;
- `RSSI: -127` sets a discovery filter that keeps every advertisement (we filter ourselves);
- passive scanning (opt-in) needs BlueZ advertisement monitor or-patterns, one per frame type.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, Protocol

from bleak import BleakScanner
from bleak.args.bluez import OrPattern
from bleak.assigned_numbers import AdvertisementDataType
from bleak.backends.device import BLEDevice
from bleak.backends.scanner import AdvertisementData

from beacon_hub.errors import ConfigError
from gateway.config import ScannerConfig

__all__ = [
    "PASSIVE_OR_PATTERNS",
    "DetectionCallback",
    "ReplayRecord",
    "ReplayScanner",
    "Scanner",
    "ScannerFactory",
    "bleak_scanner_kwargs",
    "load_replay",
    "make_scanner_factory",
]

log = logging.getLogger(__name__)

DetectionCallback = Callable[[BLEDevice, AdvertisementData], None]

PASSIVE_OR_PATTERNS: Final = (
    # iBeacon: manufacturer data starting with Apple's company id (little-endian) and 02 15.
    OrPattern(0, AdvertisementDataType.MANUFACTURER_SPECIFIC_DATA, b"\x4c\x00\x02\x15"),
    # Eddystone: 16-bit service data for UUID 0xFEAA (little-endian on air).
    OrPattern(0, AdvertisementDataType.SERVICE_DATA_UUID16, b"\xaa\xfe"),
    # AltBeacon: any company id, then the beacon code BE AC at offset 2.
    OrPattern(2, AdvertisementDataType.MANUFACTURER_SPECIFIC_DATA, b"\xbe\xac"),
)
"""BlueZ reports only advertisements matching one of these in passive mode."""

_REPLAY_MAX_LINES: Final = 100_000
_SIG_BASE_UUID: Final = "-0000-1000-8000-00805f9b34fb"


class Scanner(Protocol):
    """What the supervisor needs from a scanner: bleak's BleakScanner fits as is."""

    async def start(self) -> None: ...
    async def stop(self) -> None: ...


ScannerFactory = Callable[[DetectionCallback], Scanner]
"""Makes a fresh scanner delivering to the callback; the supervisor makes one per (re)start."""


def bleak_scanner_kwargs(config: ScannerConfig) -> dict[str, Any]:
    """The keyword arguments for `BleakScanner` besides the callback."""
    bluez: dict[str, Any] = {}
    if config.adapter is not None:
        # bleak 3 takes the adapter inside `bluez`; its `adapter=` keyword is deprecated.
        bluez["adapter"] = config.adapter
    if config.mode == "active":
        bluez["filters"] = {"DuplicateData": True, "RSSI": config.rssi_floor_dbm}
    else:
        bluez["or_patterns"] = list(PASSIVE_OR_PATTERNS)
    return {"scanning_mode": config.mode, "bluez": bluez}


def make_scanner_factory(
    config: ScannerConfig, scanner_class: Callable[..., Scanner] | None = None
) -> ScannerFactory:
    """The factory for the configured source. `scanner_class` replaces `BleakScanner` (tests)."""
    if config.source == "replay":
        assert config.replay_file is not None  # noqa: S101  # the config validator ensures it
        records = load_replay(config.replay_file, config.replay_interval_s)
        return lambda callback: ReplayScanner(records, callback, loop=config.replay_loop)
    cls: Callable[..., Scanner] = BleakScanner if scanner_class is None else scanner_class
    kwargs = bleak_scanner_kwargs(config)
    return lambda callback: cls(detection_callback=callback, **kwargs)


@dataclass(frozen=True, slots=True)
class ReplayRecord:
    device: BLEDevice
    advertisement: AdvertisementData
    delay_s: float


def _service_key(key: str) -> str:
    key = key.lower()
    if len(key) == 4:
        return f"0000{key}{_SIG_BASE_UUID}"
    return key


def load_replay(path: Path, default_delay_s: float) -> list[ReplayRecord]:
    """Read a replay file; ConfigError naming the line for anything malformed.

    Each line: {"address": "AA:BB:CC:DD:EE:FF", "rssi": -60,
    "manufacturer_data": {"76": "0215..."}, "service_data": {"feaa": "00..."},
    "local_name": "...", "delay_s": 0.1}; company ids decimal or "0x004c".
    """
    source = str(path) if str(path).isprintable() else repr(str(path))
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, ValueError) as e:  # ValueError: not UTF-8, or a NUL in the path
        raise ConfigError(source, [f"{source}: cannot read replay file: {e}"]) from e
    if len(lines) > _REPLAY_MAX_LINES:
        raise ConfigError(source, [f"{source}: more than {_REPLAY_MAX_LINES} lines"])
    records: list[ReplayRecord] = []
    for number, line in enumerate(lines, start=1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        try:
            records.append(_record(json.loads(line), default_delay_s))
        except RecursionError as e:
            raise ConfigError(source, [f"{source}:{number}: nested too deeply"]) from e
        except (ArithmeticError, AttributeError, LookupError, TypeError, ValueError) as e:
            # ArithmeticError: int() of an infinite rssi (1e999) overflows
            raise ConfigError(source, [f"{source}:{number}: not a replay record: {e}"]) from e
    if not records:
        raise ConfigError(source, [f"{source}: no advertisements in the replay file"])
    return records


def _record(obj: Any, default_delay_s: float) -> ReplayRecord:
    if not isinstance(obj, dict):
        raise TypeError("expected a JSON object")
    address = str(obj["address"])
    rssi = int(obj["rssi"])
    mfg = {int(str(k), 0): bytes.fromhex(v) for k, v in obj.get("manufacturer_data", {}).items()}
    svc = {_service_key(str(k)): bytes.fromhex(v) for k, v in obj.get("service_data", {}).items()}
    delay = float(obj.get("delay_s", default_delay_s))
    if not 0.0 <= delay <= 3600.0:
        raise ValueError(f"delay_s {delay} is not 0..3600")
    name = obj.get("local_name")
    adv = AdvertisementData(
        local_name=None if name is None else str(name),
        manufacturer_data=mfg,
        service_data=svc,
        service_uuids=list(svc),
        tx_power=None,
        rssi=rssi,
        platform_data=(),
    )
    return ReplayRecord(BLEDevice(address, adv.local_name, None), adv, delay)


class ReplayScanner:
    """Plays records through the detection callback, like a radio would, until stopped."""

    def __init__(
        self, records: list[ReplayRecord], callback: DetectionCallback, *, loop: bool = True
    ) -> None:
        self._records = records
        self._callback = callback
        self._loop = loop
        self._task: asyncio.Task[None] | None = None  # strong reference: see asyncio docs

    async def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._play(), name="replay-scanner")

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _play(self) -> None:
        while True:
            for record in self._records:
                self._callback(record.device, record.advertisement)
                await asyncio.sleep(record.delay_s)
            if not self._loop:
                return
