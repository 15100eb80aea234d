"""Replay: the engine over a readings CSV, in data time, writing a fixes CSV.

Readings are sorted by time and fed tick by tick, exactly as the live service feeds them
(ingest, then tick), so a recording replays the same fixes the hub produced. `--no-tracking`
gives one fix per sample instant (every distinct reading time) from multilateration alone, the
mode that published harnesses score.
"""

from __future__ import annotations

import sys
import time
from collections import defaultdict
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from beacon_hub.calibration import Calibration
from beacon_hub.csvfiles import EVENTS, FIXES, CsvWriter, EventRow, Reading, read_readings
from beacon_hub.engine import Engine, EngineConfig, Readings
from beacon_hub.errors import BeaconHubError
from beacon_hub.site import Site

__all__ = ["ReplayStats", "replay"]

SAMPLE_INSTANT_S = 0.05
"""--no-tracking: readings within 50 ms belong to one sample instant (the dataset bins at 1/3 s)."""


@dataclass
class ReplayStats:
    readings: int
    ticks: int
    fixes: int
    events: int
    late: int
    unknown_gateway: int
    seconds: float


def _chunks(rows: list[Reading]) -> list[Readings]:
    by_gw: dict[str, list[Reading]] = defaultdict(list)
    for r in rows:
        by_gw[r.gateway].append(r)
    out = []
    for gw, items in by_gw.items():
        beacons = sorted({r.beacon for r in items})
        index = {b: i for i, b in enumerate(beacons)}
        out.append(
            Readings(
                gateway=gw,
                beacons=beacons,
                b=np.array([index[r.beacon] for r in items], dtype=np.int64),
                t=np.array([r.t for r in items]),
                rssi=np.array([r.rssi for r in items]),
                tx=np.array([np.nan if r.tx_power is None else r.tx_power for r in items]),
            )
        )
    return out


def _sample_instants(rows: list[Reading]) -> list[float] | None:
    """Tracking off: a tick just after each sample instant (readings within SAMPLE_INSTANT_S of
    each other), so every sample gets its own fix, as a harness scores it. None when the
    readings do not come in instants: many beacons advertising at random run together into
    "instants" that hold a beacon-gateway pair more than once. Those get a fix per tick from
    the window instead."""
    times = np.array([r.t for r in rows])
    instant = np.cumsum(np.r_[True, np.diff(times) > SAMPLE_INSTANT_S / 2]) - 1
    pairs: dict[tuple[str, str], int] = {}
    pair = np.array([pairs.setdefault((r.beacon, r.gateway), len(pairs)) for r in rows])
    keys = instant * len(pairs) + pair
    if np.unique(keys).shape[0] < keys.shape[0]:
        return None
    last = np.r_[np.flatnonzero(np.diff(instant)), instant.shape[0] - 1]
    return [float(t) for t in times[last]]


def replay(
    site: Site,
    readings_path: Path,
    out_path: Path,
    *,
    config: EngineConfig | None = None,
    calibration: Calibration | None = None,
    progress: bool = True,
    events_path: Path | None = None,
) -> ReplayStats:
    """Run the engine over the readings at `readings_path`, writing its fixes to `out_path` and,
    with `events_path`, its events (zone changes, pallet_moved, ...) there."""
    started = time.monotonic()
    rows = sorted(read_readings(readings_path), key=lambda r: r.t)
    if not rows:
        raise BeaconHubError(f"{readings_path}: no readings")
    config = config or EngineConfig()
    tick_at: list[float] | None = None
    if not config.tracking:
        tick_at = _sample_instants(rows)
        if tick_at is not None:
            config = config.model_copy(update={"window_s": SAMPLE_INSTANT_S})
    if tick_at is None:
        step = config.tick_interval_s
        t0 = rows[0].t
        n_ticks = int(np.floor((rows[-1].t - t0) / step)) + 1
        tick_at = [t0 + step * (k + 1) for k in range(n_ticks)]
    engine = Engine(site, config, calibration)
    fixes = events = 0
    pos = 0
    total = len(tick_at)
    last_report = time.monotonic()
    with ExitStack() as files:
        out = files.enter_context(CsvWriter(FIXES, out_path))
        ev_out = (
            None if events_path is None else files.enter_context(CsvWriter(EVENTS, events_path))
        )
        for k, t in enumerate(tick_at):
            end = pos
            while end < len(rows) and rows[end].t <= t:
                end += 1
            for chunk in _chunks(rows[pos:end]):
                engine.ingest(chunk)
            pos = end
            result = engine.tick(t)
            out.write_all(result.fixes.fixes())
            if ev_out is not None:
                ev_out.write_all(EventRow(e.t, e.beacon, e.type, e.zone) for e in result.events)
            fixes += len(result.fixes)
            events += len(result.events)
            if progress and time.monotonic() - last_report > 2.0:
                last_report = time.monotonic()
                print(f"replay: tick {k + 1}/{total}, {fixes} fixes", file=sys.stderr)
    counts = engine.counts
    return ReplayStats(
        readings=len(rows),
        ticks=total,
        fixes=fixes,
        events=events,
        late=counts.late,
        unknown_gateway=counts.unknown_gateway,
        seconds=time.monotonic() - started,
    )
