"""The scanner seam and the watchdog: what reaches BleakScanner, and recovery from BlueZ errors
and from a scan that silently stops delivering."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path
from typing import Any, ClassVar

import pytest
from bleak.args.bluez import OrPattern
from bleak.assigned_numbers import AdvertisementDataType
from bleak.backends.device import BLEDevice
from bleak.backends.scanner import AdvertisementData
from bleak.exc import (
    BleakBluetoothNotAvailableError,
    BleakBluetoothNotAvailableReason,
    BleakDBusError,
    BleakError,
)

from beacon_hub.errors import ConfigError
from gateway.config import ScannerConfig
from gateway.frames import APPLE_COMPANY_ID
from gateway.scanner import DetectionCallback, load_replay, make_scanner_factory
from gateway.watchdog import NoRadioError, ScanSupervisor
from tests.gateway.test_frames import IBEACON

TIMEOUT_S = 10.0
"""Fail-safe for awaiting an event; the events come within milliseconds."""

ADVERT = AdvertisementData(
    local_name=None,
    manufacturer_data={APPLE_COMPANY_ID: IBEACON},
    service_data={},
    service_uuids=[],
    tx_power=None,
    rssi=-60,
    platform_data=(),
)
DEVICE = BLEDevice("C3:00:00:00:00:01", None, None)


class RecordingScanner:
    """Stands in for BleakScanner: records its constructor arguments."""

    made: ClassVar[list[dict[str, Any]]] = []

    def __init__(self, **kwargs: Any) -> None:
        RecordingScanner.made.append(kwargs)

    async def start(self) -> None:
        pass

    async def stop(self) -> None:
        pass


def _kwargs_for(config: ScannerConfig) -> dict[str, Any]:
    RecordingScanner.made = []

    def callback(_d: BLEDevice, _a: AdvertisementData) -> None:
        pass

    make_scanner_factory(config, RecordingScanner)(callback)
    (kwargs,) = RecordingScanner.made
    assert kwargs.pop("detection_callback") is callback
    return kwargs


def test_default_is_continuous_active_scanning_with_duplicates_reported() -> None:
    assert _kwargs_for(ScannerConfig()) == {
        "scanning_mode": "active",
        "bluez": {"filters": {"DuplicateData": True, "RSSI": -127}},
    }


def test_adapter_goes_inside_bluez_args() -> None:
    kwargs = _kwargs_for(ScannerConfig(adapter="hci1"))
    assert kwargs["bluez"]["adapter"] == "hci1"
    assert "adapter" not in kwargs  # deprecated as a keyword in bleak 3


def test_passive_mode_uses_or_patterns_for_our_frame_types() -> None:
    kwargs = _kwargs_for(ScannerConfig(mode="passive", adapter="hci0"))
    assert kwargs == {
        "scanning_mode": "passive",
        "bluez": {
            "adapter": "hci0",
            "or_patterns": [
                OrPattern(0, AdvertisementDataType.MANUFACTURER_SPECIFIC_DATA, b"\x4c\x00\x02\x15"),
                OrPattern(0, AdvertisementDataType.SERVICE_DATA_UUID16, b"\xaa\xfe"),
                OrPattern(2, AdvertisementDataType.MANUFACTURER_SPECIFIC_DATA, b"\xbe\xac"),
            ],
        },
    }


def test_real_bleak_scanner_accepts_the_arguments() -> None:
    """Constructing BleakScanner needs no D-Bus; it validates the arguments we pass."""
    for config in (ScannerConfig(), ScannerConfig(mode="passive", adapter="hci0")):
        scanner = make_scanner_factory(config)(lambda _d, _a: None)
        assert type(scanner).__name__ == "BleakScanner"


def test_replay_file_errors_name_the_line(tmp_path: Path) -> None:
    path = tmp_path / "r.jsonl"
    path.write_text('{"address": "AA:BB:CC:DD:EE:FF", "rssi": -60}\n{"address": "x"}\n')
    with pytest.raises(ConfigError, match=r"r\.jsonl:2"):
        load_replay(path, 0.1)


@pytest.mark.parametrize(
    ("line", "reason"),
    [
        ('{"address": "AA:BB:CC:DD:EE:FF", "rssi": 1e999}', "not a replay record"),  # inf
        ('{"address": "AA:BB:CC:DD:EE:FF", "rssi": -Infinity}', "not a replay record"),
        ("[" * 100_000 + "]" * 100_000, "nested too deeply"),
        ('{"address": "A", "rssi": -60, "manufacturer_data": [1]}', "not a replay record"),
    ],
    ids=["overflow", "infinity", "deep", "mfg-list"],
)
def test_any_bad_replay_line_is_a_config_error_naming_it(
    tmp_path: Path, line: str, reason: str
) -> None:
    path = tmp_path / "r.jsonl"
    path.write_text(f'{{"address": "AA:BB:CC:DD:EE:FF", "rssi": -60}}\n{line}\n')
    with pytest.raises(ConfigError) as info:
        load_replay(path, 0.1)
    assert f"{path}:2: {reason}" in str(info.value)


def test_a_replay_path_with_a_nul_is_a_config_error_naming_it(tmp_path: Path) -> None:
    path = tmp_path / "r\0.jsonl"
    with pytest.raises(ConfigError) as info:
        load_replay(path, 0.1)
    assert f"{str(path)!r}: cannot read replay file" in str(info.value)


# --- the supervisor and its watchdog


class Script:
    """Fake scanners whose behaviour per start attempt is scripted by the test."""

    def __init__(self, behaviours: list[Callable[[DetectionCallback], Any]]) -> None:
        self.behaviours = behaviours
        self.attempts = 0
        self.stops = 0
        self.delivering = asyncio.Event()

    def factory(self, callback: DetectionCallback) -> Any:
        script = self
        behaviour = self.behaviours[min(self.attempts, len(self.behaviours) - 1)]
        self.attempts += 1

        class Fake:
            async def start(self) -> None:
                behaviour(callback)
                if behaviour is deliver:
                    script.delivering.set()

            async def stop(self) -> None:
                script.stops += 1

        return Fake()


def deliver(callback: DetectionCallback) -> None:
    callback(DEVICE, ADVERT)


def fail_with(error: Exception) -> Callable[[DetectionCallback], Any]:
    def behaviour(_callback: DetectionCallback) -> None:
        raise error

    return behaviour


def go_silent(callback: DetectionCallback) -> None:
    callback(DEVICE, ADVERT)  # one advertisement, then nothing: a stalled discovery


FAST = ScannerConfig(watchdog_silence_s=0.05, backoff_initial_s=0.001, backoff_max_s=0.002)


async def _until_delivering(script: Script, supervisor: ScanSupervisor) -> None:
    task = asyncio.create_task(supervisor.run())
    try:
        await asyncio.wait_for(script.delivering.wait(), TIMEOUT_S)
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task


@pytest.mark.parametrize(
    "error",
    [
        BleakDBusError("org.bluez.Error.InProgress", ["Operation already in progress"]),
        BleakDBusError("org.bluez.Error.NotReady", ["Resource Not Ready"]),
        BleakDBusError("org.bluez.Error.Failed", ["Failed"]),
        BleakBluetoothNotAvailableError("off", BleakBluetoothNotAvailableReason.POWERED_OFF),
    ],
    ids=["InProgress", "NotReady", "Failed", "powered-off"],
)
def test_bluez_errors_are_retried_with_backoff_and_power_cycle(error: Exception) -> None:
    heard: list[str] = []
    cycled: list[str | None] = []

    async def power_cycle(adapter: str | None) -> None:
        cycled.append(adapter)

    script = Script([fail_with(error), fail_with(error), fail_with(error), deliver])
    config = FAST.model_copy(update={"power_cycle_after_failures": 2, "adapter": "hci0"})
    supervisor = ScanSupervisor(
        script.factory, lambda d, _a: heard.append(d.address), config, power_cycle=power_cycle
    )
    asyncio.run(_until_delivering(script, supervisor))
    assert script.attempts == 4
    assert supervisor.restarts == 3
    assert cycled == ["hci0"]  # after the 2nd failure in a row
    assert heard == [DEVICE.address]


def test_a_scan_that_stops_delivering_is_restarted() -> None:
    heard: list[str] = []
    script = Script([go_silent, go_silent, deliver])
    supervisor = ScanSupervisor(script.factory, lambda d, _a: heard.append(d.address), FAST)
    asyncio.run(_until_delivering(script, supervisor))
    assert script.attempts == 3
    assert script.stops >= 2  # each silent scanner was stopped before the next started
    assert supervisor.restarts == 2
    assert len(heard) == 3


@pytest.mark.parametrize(
    "error",
    [
        BleakBluetoothNotAvailableError("none", BleakBluetoothNotAvailableReason.NO_BLUETOOTH),
        BleakError("adapter 'hci1' not found"),
        FileNotFoundError(2, "No such file or directory"),
        BleakBluetoothNotAvailableError("no", BleakBluetoothNotAvailableReason.DENIED_BY_SYSTEM),
    ],
    ids=["no-adapter", "adapter-not-found", "no-dbus", "denied"],
)
def test_no_radio_at_all_is_one_clear_fatal_error(error: Exception) -> None:
    script = Script([fail_with(error)])
    supervisor = ScanSupervisor(script.factory, lambda _d, _a: None, FAST)
    with pytest.raises(NoRadioError) as info:
        asyncio.run(supervisor.run())
    assert script.attempts == 1
    assert str(info.value)  # one line a field engineer can act on
    assert info.value.__cause__ is error


def test_an_adapter_that_vanishes_after_scanning_is_waited_for() -> None:
    gone = BleakError("adapter 'hci0' not found")
    script = Script([go_silent, fail_with(gone), fail_with(gone), deliver])
    supervisor = ScanSupervisor(script.factory, lambda _d, _a: None, FAST)
    asyncio.run(_until_delivering(script, supervisor))
    assert script.attempts == 4
