"""The gateway daemon's clock: windows close on whole multiples of the wall clock."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import math
import time

from bleak.backends.device import BLEDevice
from bleak.backends.scanner import AdvertisementData

from beacon_hub.wire import decode_heartbeat
from gateway.config import GatewayConfig
from gateway.daemon import Gateway
from gateway.frames import APPLE_COMPANY_ID, EDDYSTONE_SERVICE_UUID

WINDOW_S = 0.2


def test_windows_close_on_the_wall_clock_grid_once_each() -> None:
    """So gateways whose clocks NTP keeps in step send together just after each second, and the
    hub can tick as soon as the round is in (beacon_hub/service.py)."""
    calls: list[float] = []

    async def scenario() -> None:
        task = asyncio.create_task(
            Gateway._on_clock_grid(WINDOW_S, lambda: calls.append(time.time()))
        )
        await asyncio.sleep(8.5 * WINDOW_S)
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task

    asyncio.run(scenario())
    slots = [math.floor(t / WINDOW_S + 1e-6) for t in calls]
    late = [t - slot * WINDOW_S for t, slot in zip(calls, slots, strict=True)]
    assert len(calls) >= 6
    assert all(b > a for a, b in itertools.pairwise(slots)), slots  # never twice a slot
    # Just after the multiple (asyncio's wake-up), never a random phase of the start time.
    assert max(late) < 0.4 * WINDOW_S, late


def test_the_heartbeat_counts_malformed_frames_and_the_hub_reads_them() -> None:
    gateway = Gateway(GatewayConfig(gateway_id="gw-1", site="s1"), power_cycle_adapter=None)
    truncated = AdvertisementData(
        local_name=None,
        manufacturer_data={APPLE_COMPANY_ID: bytes.fromhex("0215e2c56db5")},  # iBeacon, cut
        service_data={EDDYSTONE_SERVICE_UUID: b"\x00"},  # Eddystone-UID, cut
        service_uuids=[EDDYSTONE_SERVICE_UUID],
        tx_power=None,
        rssi=-60,
        platform_data=(),
    )
    gateway.pipeline.on_advertisement(BLEDevice("C3:00:00:00:00:01", None, None), truncated)
    payload = gateway.heartbeat()
    assert payload["malformed_frames"] == 2
    assert payload["adverts_seen"] == 1
    heartbeat = decode_heartbeat(json.dumps(payload).encode())
    assert (heartbeat.gw, heartbeat.adverts_seen, heartbeat.malformed_frames) == ("gw-1", 1, 2)
