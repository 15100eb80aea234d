"""The gateway daemon's clock: windows close on whole multiples of the wall clock."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import math
import time
import types

import pytest
from bleak.backends.device import BLEDevice
from bleak.backends.scanner import AdvertisementData

from beacon_hub.wire import decode_heartbeat
from gateway import daemon
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


@pytest.mark.parametrize("step_s", [-3600.0, -0.7 * WINDOW_S, +3600.0])
def test_a_clock_step_while_a_window_closes_delays_batching_by_one_window_at_most(
    monkeypatch: pytest.MonkeyPatch, step_s: float
) -> None:
    """NTP steps the clock while flush() runs, after the next multiple was worked out. On a fake
    clock that only moves when the grid sleeps (or is stepped), so nothing here depends on the
    machine's speed."""
    clock = types.SimpleNamespace(wall=1000.05, slept=0.0)

    async def fake_sleep(seconds: float) -> None:
        clock.wall += seconds
        clock.slept += seconds
        await asyncio.sleep(0)

    monkeypatch.setattr(daemon, "time", types.SimpleNamespace(time=lambda: clock.wall))
    monkeypatch.setattr(daemon, "asyncio", types.SimpleNamespace(sleep=fake_sleep))
    calls: list[tuple[float, float]] = []  # (time slept so far, wall clock)

    def action() -> None:
        calls.append((clock.slept, clock.wall))
        if len(calls) == 2:
            clock.wall += step_s

    async def scenario() -> None:
        task = asyncio.create_task(Gateway._on_clock_grid(WINDOW_S, action))
        while len(calls) < 6:
            await asyncio.sleep(0)
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task

    asyncio.run(scenario())
    gaps = [b[0] - a[0] for a, b in itertools.pairwise(calls)]
    assert max(gaps) <= 1.5 * WINDOW_S + 1e-9, gaps  # the old code slept out the whole step
    slots = [round(wall / WINDOW_S, 6) for _, wall in calls]
    assert all(s == round(s) for s in slots), slots  # back on the grid at once
    assert all(b > a for a, b in itertools.pairwise(slots[2:])), slots  # and never twice a slot
