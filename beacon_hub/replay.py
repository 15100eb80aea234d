"""Replay: the engine over a readings CSV, in data time, writing a fixes CSV.

Readings are sorted by time and fed tick by tick, exactly as the live service feeds them
(ingest, then tick), so a recording replays the same fixes the hub produced. `--no-tracking`
gives one fix per sample instant (every distinct reading time) from multilateration alone, the
mode that published harnesses score.
"""

from __future__ import annotations

import dataclasses
import logging
import sys
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from numpy.typing import NDArray

from beacon_hub.calibration import Calibration
from beacon_hub.csvfiles import (
    EVENTS,
    FIXES,
    CsvWriter,
    EventRow,
    Reading,
    TruthPoint,
    listed,
    read_readings,
)
from beacon_hub.engine import Engine, EngineConfig, Readings, TickResult
from beacon_hub.errors import BeaconHubError
from beacon_hub.evaluation import EvaluationError, evaluate_truth
from beacon_hub.site import Site

__all__ = [
    "EngineReplay",
    "ReplayStats",
    "check_recording",
    "path_loss_accuracy_scale",
    "read_sorted",
    "replay",
]

log = logging.getLogger(__name__)

SAMPLE_INSTANT_S = 0.05
"""--no-tracking: readings within 50 ms belong to one sample instant (the dataset bins at 1/3 s)."""
ACCURACY_QUANTILE = 0.68
"""accuracy_m is a 68 % radius (the share of a 2-D normal within its 1-sigma-equivalent circle
that the engine's radius_68_m aims at)."""
MIN_SCALE_FIXES = 30
"""Fewer scored fixes do not pin a 68th percentile: its standard error is about 10 points."""
PROGRESS_READINGS = 200_000
"""A progress line per this many readings read: about one a second (1.2 M rows take 7 s)."""


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


class EngineReplay:
    """The engine over readings in memory (sorted by time), fed exactly as the live service
    feeds it: `ticks()` yields one result per tick; `engine` holds its counts afterwards."""

    def __init__(
        self,
        site: Site,
        rows: list[Reading],
        *,
        config: EngineConfig | None = None,
        calibration: Calibration | None = None,
    ) -> None:
        if not rows:
            raise BeaconHubError("no readings")
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
        self.rows = rows
        self.tick_at = tick_at
        self.engine = Engine(site, config, calibration)

    def ticks(self, *, progress: bool = False) -> Iterator[TickResult]:
        pos = fixes = 0
        last_report = time.monotonic()
        rows = self.rows
        for k, t in enumerate(self.tick_at):
            end = pos
            while end < len(rows) and rows[end].t <= t:
                end += 1
            for chunk in _chunks(rows[pos:end]):
                self.engine.ingest(chunk)
            pos = end
            result = self.engine.tick(t)
            fixes += len(result.fixes)
            yield result
            if progress and time.monotonic() - last_report > 2.0:
                last_report = time.monotonic()
                print(f"replay: tick {k + 1}/{len(self.tick_at)}, {fixes} fixes", file=sys.stderr)


def read_sorted(path: Path, *, progress: bool = False) -> list[Reading]:
    """The readings of a CSV file sorted by time (stable: rows of one time keep file order),
    with a progress line on stderr every PROGRESS_READINGS rows when `progress`."""
    rows: list[Reading] = []
    for count, reading in enumerate(read_readings(path), 1):
        rows.append(reading)
        if progress and count % PROGRESS_READINGS == 0:
            print(f"replay: {count} readings read", file=sys.stderr)
    rows.sort(key=lambda r: r.t)
    return rows


def check_recording(
    site: Site, rows: Sequence[Reading], where: Path | str, warn: Callable[[str], None]
) -> None:
    """BeaconHubError when no reading comes from a gateway of the site (the wrong site or
    recording: every fix would be missing); a warning naming the gateways that are not the
    site's, and one counting rows repeated exactly. Neither changes what the engine gets."""
    if not rows:
        raise BeaconHubError(f"{where}: no readings; the file has a header and no rows")
    known = {g.id for g in site.gateways}
    per_gateway = Counter(r.gateway for r in rows)
    unknown = {g: n for g, n in sorted(per_gateway.items()) if g not in known}
    if len(unknown) == len(per_gateway):
        raise BeaconHubError(
            f"{where}: none of its gateways is in site {site.id}: the readings come from "
            f"{listed(unknown)}; the site has {listed(g.id for g in site.gateways)}"
        )
    if unknown:
        warn(
            f"{where}: {sum(unknown.values())} readings from gateways that are not in site "
            f"{site.id} are left out: " + listed(f"{g} ({n} readings)" for g, n in unknown.items())
        )
    repeated = len(rows) - len(set(rows))
    if repeated:
        warn(
            f"{where}: {repeated} rows repeat an earlier row exactly (t, gateway, beacon, rssi "
            "and tx_power); they are used as recorded"
        )


def replay(
    site: Site,
    readings_path: Path,
    out_path: Path,
    *,
    config: EngineConfig | None = None,
    calibration: Calibration | None = None,
    progress: bool = True,
    events_path: Path | None = None,
    warn: Callable[[str], None] = log.warning,
) -> ReplayStats:
    """Run the engine over the readings at `readings_path`, writing its fixes to `out_path` and,
    with `events_path`, its events (zone changes, pallet_moved, ...) there. The outputs appear
    whole when the run ends, or not at all (csvfiles.OutputFile). `warn` hears of readings
    from gateways the site does not have and of repeated rows (check_recording)."""
    started = time.monotonic()
    rows = read_sorted(readings_path, progress=progress)
    check_recording(site, rows, readings_path, warn)
    run = EngineReplay(site, rows, config=config, calibration=calibration)
    fixes = events = 0
    with ExitStack() as files:
        out = files.enter_context(CsvWriter(FIXES, out_path))
        ev_out = (
            None if events_path is None else files.enter_context(CsvWriter(EVENTS, events_path))
        )
        for result in run.ticks(progress=progress):
            out.write_all(result.fixes.fixes())
            if ev_out is not None:
                ev_out.write_all(EventRow(e.t, e.beacon, e.type, e.zone) for e in result.events)
            fixes += len(result.fixes)
            events += len(result.events)
    counts = run.engine.counts
    return ReplayStats(
        readings=len(rows),
        ticks=len(run.tick_at),
        fixes=fixes,
        events=events,
        late=counts.late,
        unknown_gateway=counts.unknown_gateway,
        seconds=time.monotonic() - started,
    )


def path_loss_accuracy_scale(
    site: Site,
    walks: Sequence[tuple[Sequence[Reading], Sequence[TruthPoint]]],
    calibration: Calibration,
    *,
    tracking: bool,
    progress: bool = False,
) -> float | None:
    """The factor that makes accuracy_m a 68 % radius when the engine places by the
    calibration's path loss alone, with tracking on or off: the 68th percentile of error /
    accuracy_m over the calibration walk replayed so (the engine's defaults otherwise). None
    when fewer than MIN_SCALE_FIXES fixes meet the truth.

    Only for path loss: its few parameters per gateway barely learn the walk they are fitted
    on, so the walk scores like new data (flat-calib2021, one fix per sample: 0.73 on the
    calibration walk, 0.74 on the robot route). A map learns the walk's own field and would
    understate its error there. Tracking on and off each get their own: the simulated store's
    walk asks 0.90 tracked and 1.21 one fix per tick."""
    config = EngineConfig(use_map=False, tracking=tracking)
    plain = dataclasses.replace(calibration, path_loss_accuracy_scale={})
    ratios: list[NDArray[np.float64]] = []
    for readings, truth in walks:
        if not readings:
            continue
        run = EngineReplay(
            site, sorted(readings, key=lambda r: r.t), config=config, calibration=plain
        )
        fixes = [fix for result in run.ticks(progress=progress) for fix in result.fixes.fixes()]
        try:
            scored = evaluate_truth(fixes, truth)
        except EvaluationError:
            continue
        ratios.append(scored.errors_m / np.maximum(scored.accuracy_m, 1e-9))
    ratio = np.concatenate(ratios) if ratios else np.zeros(0)
    if ratio.shape[0] < MIN_SCALE_FIXES:
        return None
    return float(np.quantile(ratio, ACCURACY_QUANTILE))
