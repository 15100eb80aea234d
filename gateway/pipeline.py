"""One advertisement in: parse frames, filter, add samples to the current batch.

`Pipeline.on_advertisement` is the detection callback bleak calls (through the scanner
supervisor) on the event loop's thread, so it needs no lock. It does no I/O and never raises
for anything a radio can send: malformed frames are counted, not thrown.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final

from beacon_hub.wire import RSSI_MAX_DBM, RSSI_MIN_DBM, ReadingBatch
from gateway.batching import Batcher
from gateway.filters import BeaconFilter
from gateway.frames import FrameParser

if TYPE_CHECKING:
    from bleak.backends.device import BLEDevice
    from bleak.backends.scanner import AdvertisementData

__all__ = ["Pipeline", "PipelineCounters"]

_TLM_OWNERS_MAX: Final = 4096
"""Addresses remembered to tie Eddystone-TLM frames to the UID the same device sent."""


@dataclass(slots=True)
class PipelineCounters:
    adverts_seen: int = 0
    """Every advertisement the scanner reported, beacon or not."""
    samples: int = 0
    """Samples added to batches (one advertisement may carry two frames)."""
    malformed: int = 0
    """Fields that claimed a frame type but did not fit its layout."""
    below_rssi: int = 0
    """Advertisements dropped for their RSSI: below the floor, outside the HCI range, or none
    reported."""
    telemetry: int = 0


class Pipeline:
    """Frames -> filter -> batcher. `on_full` is called when the batch must be taken early."""

    __slots__ = (
        "_tlm_owner",
        "batcher",
        "counters",
        "filter",
        "monotonic",
        "on_full",
        "parser",
    )

    def __init__(
        self,
        batcher: Batcher,
        beacon_filter: BeaconFilter,
        *,
        parser: FrameParser | None = None,
        monotonic: Callable[[], float] = time.monotonic,
        on_full: Callable[[], None] | None = None,
    ) -> None:
        self.batcher = batcher
        self.filter = beacon_filter
        self.parser = parser or FrameParser()
        self.monotonic = monotonic
        self.on_full = on_full
        self.counters = PipelineCounters()
        self._tlm_owner: dict[str, str] = {}

    def on_advertisement(self, device: BLEDevice, adv: AdvertisementData) -> None:
        counters = self.counters
        counters.adverts_seen += 1
        rssi: object = adv.rssi  # typed int by bleak, but a backend may report None
        # BlueZ reports 127 for "not available" (HCI); anything outside the HCI range is noise.
        if (
            not isinstance(rssi, int | float)
            or not RSSI_MIN_DBM <= rssi <= RSSI_MAX_DBM
            or rssi < self.filter.min_rssi_dbm
        ):
            counters.below_rssi += 1
            return
        rssi_dbm = float(rssi)
        frames, telemetry, bad = self.parser.frames(adv.manufacturer_data, adv.service_data)
        counters.malformed += bad
        now = self.monotonic()
        for frame in frames:
            if self.filter.allows(frame):
                self._add(frame.beacon, now, rssi_dbm, frame.tx_1m_dbm)
                if frame.beacon.startswith("eddystone:"):
                    self._remember_owner(device.address, frame.beacon)
        if not frames:
            beacon = self.filter.mac_beacon(device.address)
            if beacon is not None:
                self._add(beacon, now, rssi_dbm, None)
        if telemetry is not None:
            owner = self._tlm_owner.get(device.address)
            if owner is not None:  # TLM before any UID from that device: nothing to tie it to
                self.batcher.add_telemetry(telemetry.for_beacon(owner))
                counters.telemetry += 1
                self._take_if_full()

    def _add(self, beacon: str, now: float, rssi_dbm: float, tx_1m_dbm: float | None) -> None:
        self.batcher.add(beacon, now, rssi_dbm, tx_1m_dbm)
        self.counters.samples += 1
        self._take_if_full()

    def _take_if_full(self) -> None:
        """Checked after every sample, not once per advertisement: one advertisement may carry
        many frames (an extended advertisement has room for dozens, and BlueZ may keep
        manufacturer data a device sent earlier), which together could pass a limit."""
        if self.batcher.full and self.on_full is not None:
            self.on_full()

    def _remember_owner(self, address: str, beacon: str) -> None:
        owners = self._tlm_owner
        if owners.get(address) != beacon:
            if len(owners) >= _TLM_OWNERS_MAX:
                owners.clear()
            owners[address] = beacon

    def take(self, sent: float) -> ReadingBatch | None:
        """Close the current window (see `Batcher.take`)."""
        return self.batcher.take(sent, self.monotonic())
