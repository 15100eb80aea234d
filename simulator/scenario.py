"""The run loop: a site, its population and its radio, stepped one batch window at a time.

Each window (1 s, as gateways batch) yields the readings every gateway heard, as the columnar
`ReadingBatch` a gateway publishes (boot id, seq, offsets from its own clock), plus the ground
truth of every beacon every 0.5 s. Sinks take windows: a readings CSV, a truth CSV, an MQTT
publisher. The same windows feed all of them, so a CSV run and a broker run of the same seed
carry the same readings.

Scenarios by site kind: a store gets carts and shoppers, a warehouse pallets and forklifts, a lab
(config/room.yaml) a walker on the ESPresense-companion harness's two walks.
"""

from __future__ import annotations

import math
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Literal, Protocol

import numpy as np
from numpy.typing import NDArray

from beacon_hub.csvfiles import READINGS, TRUTH
from beacon_hub.site import Site
from beacon_hub.wire import ReadingBatch
from simulator.agents import Beacon, PopulationConfig, Walk, build_population, points_in_polygon
from simulator.radio import REALISTIC_RADIO, RadioConfig, RadioModel

__all__ = [
    "BATCH_INTERVAL_S",
    "ROOM_WALKS",
    "TRUTH_INTERVAL_S",
    "TX_AT_1M_DBM",
    "RunOptions",
    "Simulation",
    "Sink",
    "Window",
    "default_population",
    "run",
]

FloatArray = NDArray[np.float64]
IntArray = NDArray[np.int64]

BATCH_INTERVAL_S = 1.0
"""Gateways publish one batch per second (DESIGN.md: a batch per gateway per window)."""
TRUTH_INTERVAL_S = 0.5
"""Ground truth of every beacon at least this often (issue 3)."""
TX_AT_1M_DBM = -59.0
"""Measured power every simulated tag announces: the iBeacon default (Apple). The gateway's
own ref RSSI in the site is what the radio really delivers at 1 m."""
PROGRESS_EVERY_S = 5.0
"""Wall-clock seconds between progress lines on stderr."""

ROOM_WALKS = (
    Walk("diagonal_walk", ((0.5, 0.5), (5.5, 3.5)), 60),
    Walk("living_to_bedroom", ((2.0, 2.0), (5.5, 2.0)), 120),
)
"""The ESPresense-companion harness's two tracks in its 6 x 4 m room (docs/accuracy.md): corner
to corner (61 samples), and through the living-room/bedroom wall at x = 4 m (121 samples)."""

ScenarioName = Literal["store", "warehouse", "companion", "tracked", "survey"]


def default_population(site: Site, scenario: ScenarioName | None = None) -> PopulationConfig:
    """What a site's kind simulates unless the command line says otherwise."""
    name = scenario or {"store": "store", "warehouse": "warehouse", "lab": "companion"}[site.kind]
    if name == "store":
        return PopulationConfig(carts=60, shoppers_per_hour=240.0)
    if name == "warehouse":
        return PopulationConfig(pallets=600, forklifts=3, moves_per_hour=60.0)
    if name == "survey":  # the points come from the command line (beacon-sim run --points)
        return PopulationConfig(walk_mode=name)
    return PopulationConfig(walks=ROOM_WALKS, walk_mode=name)


@dataclass(frozen=True)
class RunOptions:
    duration_s: float
    seed: int
    start_s: float
    """Simulated time of the first window (Unix s)."""
    population: PopulationConfig
    radio: RadioConfig = REALISTIC_RADIO
    batch_interval_s: float = BATCH_INTERVAL_S
    truth_interval_s: float = TRUTH_INTERVAL_S
    building_seed: int | None = None
    """Draws the building's radio (static shadowing fields, channel offsets, gateway clocks)
    apart from the run: a survey walk and a later day with other shoppers share one building.
    None: the run's seed, so a seed alone still fixes everything."""
    tag_power_sd_db: float = 0.0
    """Each tag transmits this far (dB, normal, drawn from the run's seed) from what it
    announces: a fleet of mixed models and power settings. 0: exactly what it announces."""
    announce_tx: bool = True
    """Tags announce their power (TX_AT_1M_DBM); False: plain adverts that say nothing."""
    field_change: float = 0.0
    """Share (0-1) of the building's static shadowing drawn anew from a stream of the run's
    seed of its own: the building of `building_seed` on another day. A survey learns the field
    of its day; the real flat-calib2021's static residuals kept a correlation of only 0.83-0.85
    between its recordings of one afternoon (audit of 2026-12-07, docs/simulator.md), a share
    of 0.15-0.3 changed. 0: the building exactly as surveyed."""


@dataclass
class Window:
    """One batch window's output. Reading columns are aligned; `t_s` is the gateway's clock
    (what a hub reconstructs as sent - dt_ms / 1000)."""

    t0_s: float
    t1_s: float
    batches: list[ReadingBatch]
    reading_t_s: FloatArray
    reading_gateway: IntArray
    reading_beacon: IntArray
    reading_rssi: FloatArray
    truth_t_s: FloatArray
    truth_beacon: IntArray
    truth_xyz: FloatArray
    truth_zone: IntArray  # index into Simulation.zone_ids, -1 outside every zone


class Sink(Protocol):
    def write(self, sim: Simulation, window: Window) -> None: ...
    def close(self) -> None: ...


@dataclass
class _Cache:
    """Per-beacon deterministic link state, valid while the beacon stands still."""

    end_s: FloatArray
    xyz: FloatArray
    mean: FloatArray
    zone: IntArray
    valid: NDArray[np.bool_] = field(default_factory=lambda: np.zeros(0, dtype=bool))


class Simulation:
    def __init__(self, site: Site, options: RunOptions) -> None:
        self.site = site
        self.options = options
        # a child seed's stream depends on its index alone: a fifth (the tags' powers, drawn
        # only with tag_power_sd_db), a sixth (field_change), a seventh (the tags' antenna
        # patterns, only with heading_sd_db) and an eighth (burst losses, only with burst_loss)
        # leave the others as they were
        seeds = np.random.SeedSequence(options.seed).spawn(8)
        radio_rng, pop_rng, self._rng, boot_rng = (np.random.default_rng(s) for s in seeds[:4])
        if options.building_seed is not None:
            # the radio stream exactly as a run with that seed draws it
            radio_rng = np.random.default_rng(
                np.random.SeedSequence(options.building_seed).spawn(4)[0]
            )
        self.radio = RadioModel(site, options.radio, radio_rng)
        if options.field_change > 0:
            self.radio.change_static_field(options.field_change, np.random.default_rng(seeds[5]))
        self.population = build_population(site, options.population, pop_rng, options.start_s)
        self.gateway_ids = self.radio.gateway_ids
        self.boots = [f"{int(boot_rng.integers(2**32)):08x}" for _ in self.gateway_ids]
        self.seq = [0] * len(self.gateway_ids)
        self.zone_ids: tuple[str, ...] = tuple(z.id for z in site.zones)
        self._zone_level = np.array([z.level for z in site.zones], dtype=np.int64)
        self._beacons: list[Beacon] = self.population.beacons
        n = len(self._beacons)
        self.beacon_ids: tuple[str, ...] = tuple(b.id for b in self._beacons)
        self.beacon_level = np.array([b.level for b in self._beacons], dtype=np.int64)
        interval = np.array([b.interval_s for b in self._beacons])
        self._interval = interval
        self._delay = np.array([b.adv_delay_max_s for b in self._beacons])
        # each tag starts at a random phase of its interval (companion: on the half second)
        phase = np.where(self._delay > 0, self._rng.random(n), 0.5)
        self._next_adv = options.start_s + phase * interval
        self._slow = self.radio.new_slow_state(n, self._rng)
        self._power_db = np.zeros(n)
        if options.tag_power_sd_db > 0:
            power_rng = np.random.default_rng(seeds[4])
            self._power_db = power_rng.normal(0.0, options.tag_power_sd_db, n)
        # (n, 4) antenna pattern of every tag (RadioModel.heading_gain_db); all zero without
        self._pattern = np.zeros((n, 4))
        if options.radio.heading_sd_db > 0:
            self._pattern = self.radio.new_heading_patterns(n, np.random.default_rng(seeds[6]))
        self._burst_rng = np.random.default_rng(seeds[7])
        self.announced_tx_dbm = TX_AT_1M_DBM if options.announce_tx else None
        """What every tag's adverts say of its power (None: nothing)."""
        g = self.radio.n_gateways
        self._cache = _Cache(
            end_s=np.full(n, np.nan),
            xyz=np.zeros((n, 3)),
            mean=np.zeros((n, g)),
            zone=np.full(n, -1, dtype=np.int64),
            valid=np.zeros(n, dtype=bool),
        )
        self._t = options.start_s

    # -- one window --------------------------------------------------------------------------

    def zone_of(self, xyz: FloatArray, level: IntArray) -> IntArray:
        out = np.full(xyz.shape[0], -1, dtype=np.int64)
        for i, zone in enumerate(self.site.zones):
            todo = (out < 0) & (level == self._zone_level[i])
            if not np.any(todo):
                continue
            rows = np.flatnonzero(todo)
            hit = points_in_polygon(xyz[rows, 0], xyz[rows, 1], zone.polygon)
            out[rows[hit]] = i
        return out

    def step(self) -> Window:
        opts = self.options
        t0 = self._t
        t1 = t0 + opts.batch_interval_s
        self._t = t1
        pop = self.population
        pop.advance(t1 + opts.batch_interval_s)
        beacons = self._beacons
        n = len(beacons)
        end = np.array([b.track.end_s for b in beacons])
        static = end <= t0
        cache = self._cache
        refresh = np.flatnonzero(static & ~(cache.valid & (cache.end_s == end)))
        if refresh.size:
            cache.xyz[refresh] = [beacons[i].track.last() for i in refresh]
            cache.mean[refresh] = self.radio.mean_dbm(
                cache.xyz[refresh], self.beacon_level[refresh]
            ) + self.radio.heading_gain_db(
                cache.xyz[refresh],
                np.array([beacons[i].track.heading[-1] for i in refresh]),
                self._pattern[refresh],
            )
            cache.zone[refresh] = self.zone_of(cache.xyz[refresh], self.beacon_level[refresh])
            cache.end_s[refresh] = end[refresh]
            cache.valid[refresh] = True
        movers = np.flatnonzero(~static)
        cache.valid[movers] = False

        # adverts in [t0, t1): vectorised over beacons, a few rounds for the fastest interval
        adv_t: list[FloatArray] = []
        adv_b: list[IntArray] = []
        nxt = self._next_adv
        while True:
            due = np.flatnonzero(nxt < t1)
            if due.size == 0:
                break
            adv_t.append(nxt[due].copy())
            adv_b.append(due)
            nxt[due] += self._interval[due] + self._rng.random(due.size) * self._delay[due]
        times = np.concatenate(adv_t) if adv_t else np.zeros(0)
        who = np.concatenate(adv_b) if adv_b else np.zeros(0, dtype=np.int64)
        order = np.lexsort((who, times))
        times, who = times[order], who[order]

        self.radio.step_slow(self._slow, opts.batch_interval_s, self._rng)
        link = cache.mean[who] + self._slow[who]
        truth_times = np.arange(t0, t1 - 1e-9, opts.truth_interval_s)
        truth_xyz = np.repeat(cache.xyz[None, :, :], truth_times.size, axis=0)
        truth_zone = np.repeat(cache.zone[None, :], truth_times.size, axis=0)
        if movers.size:
            self._movers(
                movers=movers,
                times=times,
                who=who,
                link=link,
                truth_times=truth_times,
                truth_xyz=truth_xyz,
                truth_zone=truth_zone,
                t0=t0,
            )
        rssi = self.radio.packets(link + self._power_db[who, None], self._rng, self._burst_rng)
        return self._window(
            t0=t0,
            t1=t1,
            times=times,
            who=who,
            rssi=rssi,
            truth_times=truth_times,
            truth_xyz=truth_xyz,
            truth_zone=truth_zone,
            n=n,
        )

    def _movers(
        self,
        *,
        movers: IntArray,
        times: FloatArray,
        who: IntArray,
        link: FloatArray,
        truth_times: FloatArray,
        truth_xyz: FloatArray,
        truth_zone: IntArray,
        t0: float,
    ) -> None:
        """Fill in link levels and truth of the beacons that move in this window, in place.

        Loops over moving beacons (not readings): each one's adverts in the window are
        interpolated on its track in one call."""
        beacons = self._beacons
        rows = np.flatnonzero(np.isin(who, movers))
        xyz = np.zeros((rows.size, 3))
        heading = np.zeros(rows.size)
        body = np.zeros(rows.size, dtype=bool)
        for i in movers:
            sel = np.flatnonzero(who[rows] == i)
            track = beacons[i].track
            if sel.size:
                xyz[sel], heading[sel], body[sel] = track.at(times[rows[sel]])
            p, _, _ = track.at(truth_times)
            truth_xyz[:, i, :] = p
            track.prune(t0)
        level = self.beacon_level[who[rows]]
        link[rows] = (
            self.radio.mean_dbm(xyz, level)
            - self.radio.body_loss_db(xyz, heading, body)
            + self.radio.heading_gain_db(xyz, heading, self._pattern[who[rows]])
            + self._slow[who[rows]]
        )
        flat = truth_xyz[:, movers, :].reshape(-1, 3)
        lv = np.tile(self.beacon_level[movers], truth_times.size)
        truth_zone[:, movers] = self.zone_of(flat, lv).reshape(truth_times.size, -1)

    def _window(
        self,
        *,
        t0: float,
        t1: float,
        times: FloatArray,
        who: IntArray,
        rssi: FloatArray,
        truth_times: FloatArray,
        truth_xyz: FloatArray,
        truth_zone: IntArray,
        n: int,
    ) -> Window:
        sent = np.round(self.radio.gateway_clock(t1, self.options.start_s), 3)  # (G,)
        drift = 1.0 + self.radio.clock_drift_ppm * 1e-6
        batches: list[ReadingBatch] = []
        cols: list[tuple[FloatArray, IntArray, IntArray, FloatArray]] = []
        for g, gw in enumerate(self.gateway_ids):
            heard = np.flatnonzero(~np.isnan(rssi[:, g]))
            if heard.size == 0:
                continue
            dt_ms = np.rint((t1 - times[heard]) * drift[g] * 1000.0)
            ids, b = np.unique(who[heard], return_inverse=True)
            values = rssi[heard, g]
            batches.append(
                ReadingBatch(
                    gw=gw,
                    boot=self.boots[g],
                    seq=self.seq[g],
                    sent=float(sent[g]),
                    beacons=tuple(self.beacon_ids[i] for i in ids),
                    b=tuple(b.tolist()),
                    dt_ms=tuple(dt_ms.tolist()),
                    rssi=tuple(values.tolist()),
                    tx=(self.announced_tx_dbm,) * heard.size,
                )
            )
            self.seq[g] += 1
            cols.append((sent[g] - dt_ms / 1000.0, np.full(heard.size, g), who[heard], values))
        k = truth_times.size
        return Window(
            t0_s=t0,
            t1_s=t1,
            batches=batches,
            reading_t_s=np.concatenate([c[0] for c in cols]) if cols else np.zeros(0),
            reading_gateway=np.concatenate([c[1] for c in cols]) if cols else np.zeros(0, np.int64),
            reading_beacon=np.concatenate([c[2] for c in cols]) if cols else np.zeros(0, np.int64),
            reading_rssi=np.concatenate([c[3] for c in cols]) if cols else np.zeros(0),
            truth_t_s=np.repeat(truth_times, n),
            truth_beacon=np.tile(np.arange(n), k),
            truth_xyz=truth_xyz.reshape(-1, 3),
            truth_zone=truth_zone.reshape(-1),
        )

    def windows(self) -> Iterator[Window]:
        count = math.ceil(self.options.duration_s / self.options.batch_interval_s - 1e-9)
        for _ in range(count):
            yield self.step()


def run(
    sim: Simulation,
    sinks: Sequence[Sink],
    speed: float = math.inf,
    progress: IO[str] | None = sys.stderr,
    wall_start_s: float | None = None,
) -> dict[str, float]:
    """Drive `sim` to its end, pacing windows at `speed` x real time; returns counters."""
    wall0 = time.monotonic() if wall_start_s is None else wall_start_s
    last_report = wall0
    readings = batches = 0
    start = sim.options.start_s
    for window in sim.windows():
        if math.isfinite(speed):
            due = wall0 + (window.t1_s - start) / speed
            delay = due - time.monotonic()
            if delay > 0:
                time.sleep(delay)
        for sink in sinks:
            sink.write(sim, window)
        readings += window.reading_t_s.size
        batches += len(window.batches)
        now = time.monotonic()
        if progress is not None and now - last_report >= PROGRESS_EVERY_S:
            last_report = now
            done = window.t1_s - start
            progress.write(
                f"beacon-sim: {done:.0f}/{sim.options.duration_s:.0f} s simulated, "
                f"{done / max(now - wall0, 1e-9):.1f}x real time, {readings} readings\n"
            )
            progress.flush()
    for sink in sinks:
        sink.close()
    wall = time.monotonic() - wall0
    return {
        "simulated_s": sim.options.duration_s,
        "wall_s": wall,
        "readings": float(readings),
        "batches": float(batches),
    }


# ---------------------------------------------------------------------------------------------
# Sinks


def _fmt3(values: FloatArray) -> list[str]:
    return [f"{v:.3f}" for v in values.tolist()]


class ReadingsCsv:
    """`t,gateway,beacon,rssi,tx_power` (DESIGN.md readings file), written a window at a time."""

    def __init__(self, path: Path) -> None:
        self._handle = path.open("w", encoding="utf-8", newline="")
        self._handle.write(",".join((*READINGS.required, *READINGS.optional)) + "\n")
        self.rows = 0

    def write(self, sim: Simulation, window: Window) -> None:
        if window.reading_t_s.size == 0:
            return
        gw, beacon = sim.gateway_ids, sim.beacon_ids
        tx = "" if sim.announced_tx_dbm is None else f"{sim.announced_tx_dbm:g}"
        integer = sim.options.radio.integer_rssi
        rssi = [f"{v:.0f}" if integer else f"{v:.2f}" for v in window.reading_rssi.tolist()]
        lines = [
            f"{t},{gw[g]},{beacon[b]},{r},{tx}\n"
            for t, g, b, r in zip(
                _fmt3(window.reading_t_s),
                window.reading_gateway.tolist(),
                window.reading_beacon.tolist(),
                rssi,
                strict=True,
            )
        ]
        self._handle.write("".join(lines))
        self.rows += len(lines)

    def close(self) -> None:
        self._handle.close()


class TruthCsv:
    """`t,beacon,x,y,z,level,zone` (DESIGN.md truth file) for every beacon every 0.5 s."""

    def __init__(self, path: Path) -> None:
        self._handle = path.open("w", encoding="utf-8", newline="")
        self._handle.write(",".join((*TRUTH.required, *TRUTH.optional)) + "\n")
        self.rows = 0

    def write(self, sim: Simulation, window: Window) -> None:
        ids, zones = sim.beacon_ids, (*sim.zone_ids, "")
        level = sim.beacon_level.tolist()
        xyz = window.truth_xyz
        lines = [
            f"{t},{ids[b]},{x},{y},{z},{level[b]},{zones[zi]}\n"
            for t, b, x, y, z, zi in zip(
                _fmt3(window.truth_t_s),
                window.truth_beacon.tolist(),
                _fmt3(xyz[:, 0]),
                _fmt3(xyz[:, 1]),
                _fmt3(xyz[:, 2]),
                window.truth_zone.tolist(),
                strict=True,
            )
        ]
        self._handle.write("".join(lines))
        self.rows += len(lines)

    def close(self) -> None:
        self._handle.close()
