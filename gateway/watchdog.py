"""Keeps a scan running for months: restarts it on silence, retries BlueZ errors with backoff.

Why a watchdog: a stalled BlueZ discovery reports no error, it just stops delivering (the
"scanning silently stops after hours" reports of ESPresense and Theengs users). Any
advertisement, beacon or not, proves the scan alive; after `watchdog_silence_s` without one the
scanner is stopped and a fresh one started.

Errors when starting a scan, and what they mean:
- BlueZ's InProgress, NotReady, Failed, Busy, a D-Bus timeout, an adapter that vanished, an
  adapter powered off: transient. Retried with exponential backoff; optionally the adapter is
  power-cycled after N failures in a row.
- No adapter, no BlueZ on D-Bus, no system D-Bus, before any scan ever ran: nothing to heal.
  `NoRadioError` with one clear message; the CLI exits with EXIT_NO_RADIO. (Once a scan has run,
  the same errors mean "adapter gone for now" and are retried: a USB dongle re-enumerates.)
- Permission denied by D-Bus policy: `NoRadioError` as well; a retry cannot fix it.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Final

from bleak.backends.device import BLEDevice
from bleak.backends.scanner import AdvertisementData
from bleak.exc import (
    BleakBluetoothNotAvailableError,
    BleakBluetoothNotAvailableReason,
    BleakDBusError,
    BleakError,
)

from beacon_hub.errors import BeaconHubError
from gateway.config import ScannerConfig
from gateway.scanner import DetectionCallback, Scanner, ScannerFactory

__all__ = ["RETRYABLE_BLUEZ_ERRORS", "NoRadioError", "ScanSupervisor", "classify_start_error"]

log = logging.getLogger(__name__)

RETRYABLE_BLUEZ_ERRORS: Final = frozenset(
    {
        "org.bluez.Error.InProgress",  # a discovery start/stop is still under way
        "org.bluez.Error.NotReady",  # adapter powering up, or bluetoothd restarting
        "org.bluez.Error.Failed",  # controller refused (often cured by a power cycle)
        "org.bluez.Error.Busy",
        "org.freedesktop.DBus.Error.NoReply",  # bluetoothd too busy to answer in time
    }
)
"""D-Bus error names (BlueZ doc/org.bluez.Adapter.rst) a later attempt can get past."""

_NO_RADIO_DBUS: Final = frozenset(
    {
        "org.freedesktop.DBus.Error.ServiceUnknown",  # bluetoothd is not running
        "org.freedesktop.DBus.Error.UnknownObject",  # the adapter's object path is gone
    }
)


class NoRadioError(BeaconHubError):
    """No Bluetooth radio to scan with, or no permission to use it: retrying cannot help."""


def classify_start_error(error: BaseException, ever_started: bool) -> str:
    """`retry` or `fatal` for an exception raised by `Scanner.start`."""
    if isinstance(error, BleakBluetoothNotAvailableError):
        reason = error.reason
        if reason in (
            BleakBluetoothNotAvailableReason.DENIED_BY_SYSTEM,
            BleakBluetoothNotAvailableReason.DENIED_BY_USER,
            BleakBluetoothNotAvailableReason.DENIED_BY_UNKNOWN,
        ):
            return "fatal"
        if reason == BleakBluetoothNotAvailableReason.POWERED_OFF:
            return "retry"
        return "retry" if ever_started else "fatal"
    if isinstance(error, BleakDBusError):
        if error.dbus_error in RETRYABLE_BLUEZ_ERRORS:
            return "retry"
        if error.dbus_error in _NO_RADIO_DBUS:
            return "retry" if ever_started else "fatal"
        return "retry"
    if isinstance(error, BleakError) and "not found" in str(error):
        return "retry" if ever_started else "fatal"  # "adapter 'hci1' not found"
    if isinstance(error, FileNotFoundError | ConnectionRefusedError | PermissionError):
        return "retry" if ever_started else "fatal"  # the system D-Bus socket
    return "retry"


def _explain(error: BaseException, adapter: str | None) -> str:
    which = adapter or "the default adapter"
    if isinstance(error, BleakBluetoothNotAvailableError):
        return f"no usable Bluetooth radio ({which}): {error.args[0]}"
    if isinstance(error, FileNotFoundError | ConnectionRefusedError):
        return (
            "cannot reach BlueZ: the system D-Bus socket is missing or refused "
            "(is dbus running, and bluetoothd?)"
        )
    if isinstance(error, PermissionError):
        return "not allowed to use the system D-Bus; add the user to the `bluetooth` group"
    if isinstance(error, BleakDBusError) and error.dbus_error in _NO_RADIO_DBUS:
        return f"BlueZ has no {which}, or bluetoothd is not running ({error.dbus_error})"
    return f"cannot scan with {which}: {error}"


class ScanSupervisor:
    """Runs scanners made by `factory`, forwarding every advertisement to `sink`."""

    def __init__(
        self,
        factory: ScannerFactory,
        sink: DetectionCallback,
        config: ScannerConfig,
        *,
        power_cycle: Callable[[str | None], Awaitable[None]] | None = None,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.factory = factory
        self.sink = sink
        self.config = config
        self.power_cycle = power_cycle
        self.monotonic = monotonic
        self.restarts = 0
        """Starts after the first: after an error or a silence."""
        self.failures_in_row = 0
        self.power_cycles = 0
        self.ever_started = False
        self.running = asyncio.Event()
        self._last_advert = 0.0
        self._attempts = 0

    def _on_advert(self, device: BLEDevice, adv: AdvertisementData) -> None:
        self._last_advert = self.monotonic()
        self.sink(device, adv)

    def backoff_s(self) -> float:
        exponent = max(0, self.failures_in_row - 1)
        return float(min(self.config.backoff_initial_s * 2.0**exponent, self.config.backoff_max_s))

    async def run(self) -> None:
        """Scan until cancelled. Raises NoRadioError when there is nothing to scan with."""
        while True:
            scanner = self.factory(self._on_advert)
            if self._attempts:
                self.restarts += 1
            self._attempts += 1
            try:
                await scanner.start()
            except asyncio.CancelledError:
                raise
            except Exception as e:  # noqa: BLE001  # every start error is classified below
                await self._failed(scanner, e)
                continue
            self.ever_started = True
            self.failures_in_row = 0
            self.running.set()
            log.info("scanning (%s, %s)", self.config.mode, self.config.adapter or "default")
            try:
                await self._watch()
            finally:
                self.running.clear()
                await self._stop_quietly(scanner)
            log.warning(
                "no advertisement for %g s: restarting the scan", self.config.watchdog_silence_s
            )

    async def _watch(self) -> None:
        """Return once no advertisement arrived for `watchdog_silence_s`."""
        silence = self.config.watchdog_silence_s
        self._last_advert = self.monotonic()
        while True:
            remaining = self._last_advert + silence - self.monotonic()
            if remaining <= 0:
                return
            await asyncio.sleep(remaining)

    async def _failed(self, scanner: Scanner, error: Exception) -> None:
        if classify_start_error(error, self.ever_started) == "fatal":
            raise NoRadioError(_explain(error, self.config.adapter)) from error
        self.failures_in_row += 1
        delay = self.backoff_s()
        log.warning(
            "scan start failed (%d in a row): %s; retrying in %g s",
            self.failures_in_row,
            _explain(error, self.config.adapter),
            delay,
        )
        await self._stop_quietly(scanner)
        threshold = self.config.power_cycle_after_failures
        if (
            threshold is not None
            and self.power_cycle is not None
            and self.failures_in_row % threshold == 0
        ):
            self.power_cycles += 1
            log.warning("power-cycling %s", self.config.adapter or "hci0")
            try:
                await self.power_cycle(self.config.adapter)
            except Exception as e:  # noqa: BLE001  # a failed power cycle is one more retry
                log.warning("power cycle failed: %s", e)
        await asyncio.sleep(delay)

    @staticmethod
    async def _stop_quietly(scanner: Scanner) -> None:
        """Stop a scanner that may be half-started; its errors change nothing now."""
        try:
            await scanner.stop()
        except asyncio.CancelledError:
            raise
        except Exception as e:  # noqa: BLE001  # InProgress etc. on stop: the next start copes
            log.debug("stopping the scanner raised %r", e)
