"""Replay: the engine over a readings CSV, in data time, writing a fixes CSV.

Readings are sorted by time and fed tick by tick, exactly as the live service feeds them
(ingest, then tick), so a recording replays the same fixes the hub produced. `--no-tracking`
gives one fix per sample instant (every distinct reading time) from multilateration alone, the
mode that published harnesses score.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import sys
import time
from array import array
from collections.abc import Callable, Iterable, Iterator, Sequence
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
    "ReadingTable",
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


@dataclass(frozen=True)
class ReadingTable:
    """Readings as columns: gateway and beacon as codes into their name lists, tx NaN where a
    reading announces none. A replay holds its whole recording, and as Reading objects it took
    305 bytes a reading (traced: an hour of the simulated warehouse, 11 million readings, 3.4
    GB); as columns it takes 32 (564,706 readings of (F): 164 -> 17 MB held, 169 -> 40 MB at
    the peak, read as fast)."""

    t: NDArray[np.float64]
    gateway: NDArray[np.int32]
    beacon: NDArray[np.int32]
    rssi: NDArray[np.float64]
    tx: NDArray[np.float64]
    gateways: list[str]
    beacons: list[str]

    def __len__(self) -> int:
        return int(self.t.shape[0])

    @classmethod
    def of(cls, rows: Iterable[Reading], *, progress: bool = False) -> ReadingTable:
        """The rows in their order, with a progress line on stderr every PROGRESS_READINGS rows
        when `progress`."""
        t, rssi, tx = array("d"), array("d"), array("d")
        gateway, beacon = array("i"), array("i")
        gateways: dict[str, int] = {}
        beacons: dict[str, int] = {}
        for count, r in enumerate(rows, 1):
            t.append(r.t)
            gateway.append(gateways.setdefault(r.gateway, len(gateways)))
            beacon.append(beacons.setdefault(r.beacon, len(beacons)))
            rssi.append(r.rssi)
            tx.append(np.nan if r.tx_power is None else r.tx_power)
            if progress and count % PROGRESS_READINGS == 0:
                print(f"replay: {count} readings read", file=sys.stderr)
        return cls(
            t=np.frombuffer(t, dtype=np.float64),
            gateway=np.frombuffer(gateway, dtype=np.int32),
            beacon=np.frombuffer(beacon, dtype=np.int32),
            rssi=np.frombuffer(rssi, dtype=np.float64),
            tx=np.frombuffer(tx, dtype=np.float64),
            gateways=list(gateways),
            beacons=list(beacons),
        )

    def sorted_by_time(self) -> ReadingTable:
        """Stable: rows of one time keep their order."""
        order = np.argsort(self.t, kind="stable")
        return dataclasses.replace(
            self,
            t=self.t[order],
            gateway=self.gateway[order],
            beacon=self.beacon[order],
            rssi=self.rssi[order],
            tx=self.tx[order],
        )

    def repeated(self) -> int:
        """Rows that repeat an earlier row exactly (t, gateway, beacon, rssi and tx)."""
        no_tx = np.isnan(self.tx)
        keys = np.rec.fromarrays(
            [self.t, self.gateway, self.beacon, self.rssi, np.where(no_tx, 0.0, self.tx), no_tx]
        )
        return len(self) - int(np.unique(keys).shape[0])

    @functools.cached_property
    def _names_sorted(self) -> list[str]:
        return sorted(self.beacons)

    @functools.cached_property
    def _beacon_rank(self) -> NDArray[np.intp]:
        """Each beacon code's place among the beacon names sorted."""
        rank = np.empty(len(self.beacons), dtype=np.intp)
        rank[sorted(range(len(self.beacons)), key=self.beacons.__getitem__)] = np.arange(
            len(self.beacons)
        )
        return rank

    def chunks(self, start: int, end: int) -> list[Readings]:
        """Rows start..end as the live service gets them: one Readings per gateway (in the
        order they first appear), its beacons sorted by name, its samples in row order."""
        gw = self.gateway[start:end]
        codes, first = np.unique(gw, return_index=True)
        names_sorted = self._names_sorted
        out = []
        for code in codes[np.argsort(first)]:
            rows = start + np.flatnonzero(gw == code)
            rank = self._beacon_rank[self.beacon[rows]]
            present = np.unique(rank)
            out.append(
                Readings(
                    gateway=self.gateways[int(code)],
                    beacons=[names_sorted[k] for k in present],
                    b=np.searchsorted(present, rank).astype(np.int64),
                    t=self.t[rows],
                    rssi=self.rssi[rows],
                    tx=self.tx[rows],
                )
            )
        return out


def read_sorted(path: Path, *, progress: bool = False) -> ReadingTable:
    """The readings of a CSV file sorted by time (stable: rows of one time keep file order),
    with a progress line on stderr every PROGRESS_READINGS rows when `progress`."""
    return ReadingTable.of(read_readings(path), progress=progress).sorted_by_time()


def _sample_instants(rows: ReadingTable) -> list[float] | None:
    """Tracking off: a tick just after each sample instant (readings within SAMPLE_INSTANT_S of
    each other), so every sample gets its own fix, as a harness scores it. None when the
    readings do not come in instants: many beacons advertising at random run together into
    "instants" that hold a beacon-gateway pair more than once. Those get a fix per tick from
    the window instead."""
    times = rows.t
    instant = np.cumsum(np.r_[True, np.diff(times) > SAMPLE_INSTANT_S / 2]) - 1
    pair = rows.beacon.astype(np.int64) * max(len(rows.gateways), 1) + rows.gateway
    keys = instant * len(rows.beacons) * max(len(rows.gateways), 1) + pair
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
        rows: ReadingTable | Sequence[Reading],
        *,
        config: EngineConfig | None = None,
        calibration: Calibration | None = None,
    ) -> None:
        if not isinstance(rows, ReadingTable):
            rows = ReadingTable.of(rows)
        if not len(rows):
            raise BeaconHubError("no readings")
        config = config or EngineConfig()
        tick_at: list[float] | None = None
        if not config.tracking:
            tick_at = _sample_instants(rows)
            if tick_at is not None:
                config = config.model_copy(update={"window_s": SAMPLE_INSTANT_S})
        if tick_at is None:
            step = config.tick_interval_s
            t0 = float(rows.t[0])
            n_ticks = int(np.floor((float(rows.t[-1]) - t0) / step)) + 1
            tick_at = [t0 + step * (k + 1) for k in range(n_ticks)]
        self.rows = rows
        self.tick_at = tick_at
        self.engine = Engine(site, config, calibration)

    def ticks(self, *, progress: bool = False) -> Iterator[TickResult]:
        pos = fixes = 0
        last_report = time.monotonic()
        rows = self.rows
        for k, t in enumerate(self.tick_at):
            end = max(pos, int(np.searchsorted(rows.t, t, side="right")))
            for chunk in rows.chunks(pos, end):
                self.engine.ingest(chunk)
            pos = end
            result = self.engine.tick(t)
            fixes += len(result.fixes)
            yield result
            if progress and time.monotonic() - last_report > 2.0:
                last_report = time.monotonic()
                print(f"replay: tick {k + 1}/{len(self.tick_at)}, {fixes} fixes", file=sys.stderr)


def check_recording(
    site: Site, rows: ReadingTable, where: Path | str, warn: Callable[[str], None]
) -> None:
    """BeaconHubError when no reading comes from a gateway of the site (the wrong site or
    recording: every fix would be missing); a warning naming the gateways that are not the
    site's, and one counting rows repeated exactly. Neither changes what the engine gets."""
    if not len(rows):
        raise BeaconHubError(f"{where}: no readings; the file has a header and no rows")
    known = {g.id for g in site.gateways}
    counts = np.bincount(rows.gateway, minlength=len(rows.gateways))
    per_gateway = {g: int(n) for g, n in zip(rows.gateways, counts, strict=True)}
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
    repeated = rows.repeated()
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
