"""The gateway daemon's clock: windows close on whole multiples of the wall clock."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import math
import time

from gateway.daemon import Gateway

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
