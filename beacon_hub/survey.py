"""Survey: record a calibration walk or a point survey from the live gateways, for `calibrate`.

`beacon-hub calibrate` needs readings of a tag and where the tag was (truth). A real floor has
no robot to say where: the surveyor carries one tag, this command records from the broker what
the site's gateways hear of it, and takes the positions from the surveyor's Enter key.

- points (the default): at each point, from a `--points` file or typed as `x y [level]`, the
  surveyor sets the tag down (on a pole or a cart at the height the tags will have), presses
  Enter and steps away; after `settle_s` the tag's readings for `dwell_s` are kept, and the
  truth is the point. Static shadowing does not average out (radiomap.py), so more points beat
  longer dwells: a point every 1.5 m (PLAN_SPACING_M).
- walk (`walk: true`): the surveyor walks the `--points` in order at an even pace and presses
  Enter as the tag passes each; the truth is interpolated between the marks (a step off at
  1 m/s is 0.1 m a tenth of a second late). With rows 1 m apart (WALK_SPACING_M) the best
  survey measured, in less time than points 1.5 m apart.

Clocks. Readings carry their gateway's clock, the marks this machine's. A gateway's offset is the
least (arrival - sent) over its batches (a batch is published as it is sent, so that least is
the clock offset plus the quickest delivery), taken afresh after each reboot (a new `boot`) and
each step of its clock (NTP on a Pi, which has no real-time clock: CLOCK_STEP_S); every reading
is written in this machine's clock. A batch held up on the way (a backlog sent at connect,
Wi-Fi retries) followed by a prompt one drops (arrival - sent) just as a step forward does; what
tells them apart is the gateway's own clock: across a step its sent times jump ahead of its
cadence (one batch per `batching.window_s`), after a hold they keep to it (CADENCE_GAPS).

Threads. paho's network thread decodes each readings batch and keeps the survey tag's samples
under `SurveyRecorder._lock`, the one place the threads meet; the main thread (prompts, progress,
files) reads through the recorder's methods. A tag's samples are few, so nothing is queued or
dropped; a batch that does not decode is counted and said at the end.
"""

from __future__ import annotations

import bisect
import logging
import math
import secrets
import statistics
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any

import numpy as np
import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from pydantic import BaseModel, ConfigDict, Field

from beacon_hub.broker_settings import BrokerSettings, RefusalLog, connect_failure, paho_logger
from beacon_hub.csvfiles import (
    POINTS,
    READINGS,
    TRUTH,
    CsvWriter,
    Reading,
    SurveyPoint,
    TruthPoint,
    listed,
    read_numbered,
)
from beacon_hub.errors import BeaconHubError, WireError
from beacon_hub.floorplan import WALKWAY, FloorPlan, points_in_polygon
from beacon_hub.radiomap import SURVEY_BANDWIDTH_M
from beacon_hub.site import Site
from beacon_hub.wire import ReadingBatch, decode_batch, parse_topic, readings_subscription

__all__ = [
    "PLAN_SPACING_M",
    "WALK_SPACING_M",
    "Dwell",
    "SurveyConfig",
    "SurveyError",
    "SurveyRecorder",
    "check_points",
    "dwell_truth",
    "load_points",
    "next_calibrate",
    "plan_points",
    "run_survey",
    "walk_truth",
    "write_points",
]

log = logging.getLogger("beacon_hub.survey")

CONNECT_TIMEOUT_S = 15.0
"""How long the command waits for the broker before it gives up: paho's first retries of a
broker still starting come within a few seconds."""
PROGRESS_EVERY_S = 5.0
"""A progress line this often during a dwell: often enough to see a tag that is not heard."""
SILENT_WARN_S = 5.0
"""No sample of the tag for this long while recording: said at once (a tag off, another id).
A 1 Hz tag heard by one gateway still gives five samples in it."""
ARRIVAL_SPREAD_S = 10.0
"""How far out of time order the tag's samples can be stored: a gateway's batch spans its 1 s
window and gateways publish unsynchronised; 10 s leaves room for a broker's short hiccup."""
LAST_BATCH_MAX_S = 10.0
"""After the last dwell or mark, wait until every gateway has sent a batch that ends after it,
at most this long: a gateway sends a batch every `batching.window_s` (1 s by default, up to 60),
published as it is sent. A fixed 1.5 s wait lost the end of the last dwell from gateways set to
a longer window; one that went quiet holds the survey this long, and is named."""
LAST_BATCH_POLL_S = 0.1
"""How often that wait looks."""
CLOCK_STEP_S = 1.0
"""A batch whose (arrival - sent) is this far below the least seen since its gateway's boot or
last step, and whose send time is this far ahead of the gateway's cadence since the batch before
it, says the gateway's clock was stepped forward; the same drop with the send time on cadence
says the batches before it were held up on the way (CADENCE_GAPS). A clock stepped back shows
as a send time earlier than the batch before it. A smaller step forward goes unseen and moves
the samples before it by less than a third of `settle_s`."""
CADENCE_GAPS = 8
"""A gateway's cadence (seconds of its clock from one batch to the next) is the median over its
latest this many gaps between batches in seq order: it sends on its `batching.window_s` grid,
so a few say it, and the median sets aside the odd batch taken early (a full window) or late
(a window in which nothing was heard sends nothing). A judgement, not a measurement."""
CADENCE_MIN_GAPS = 3
"""Gaps needed before the cadence is trusted: three, so that one odd gap cannot set the median.
A drop in (arrival - sent) seen before then (the first batch seen was held up, or the clock
stepped right after it) counts as a step until then, and is judged once they are in: three
batches later, long before the readings are written at the survey's end."""
WALK_MAX_SPEED_M_S = 2.5
"""Faster between two marks than a brisk walk (1.4 m/s typical, 2.5 a jog): an Enter was
probably missed or pressed twice; said, not refused."""


class SurveyError(BeaconHubError):
    """A survey that cannot start or be written: names the option, file or point."""


class SurveyConfig(BaseModel):
    """`beacon-hub survey`'s settings (YAML `--config`, env BEACON_HUB_SURVEY__*, `--set`)."""

    model_config = ConfigDict(extra="forbid")

    broker: BrokerSettings = BrokerSettings()
    walk: bool = False
    """Walk the points pressing Enter at each, instead of holding the tag at each one."""
    dwell_s: Annotated[float, Field(gt=0, le=3600)] = 10.0
    """Seconds of readings kept at each point: 50 samples per gateway of a tag advertising 5
    times a second (give the survey tag its fastest rate). Simulated store, points 1.5 m apart
    (README, What a survey gives): 10 s 0.57 / 2.28 m median / p90 in 87 minutes, 30 s 0.50 /
    1.82 m in 218; a tag at 1 Hz 0.67 / 3.72 m at 10 s, 0.49 / 1.99 m at 30 s: hold it 30 s."""
    settle_s: Annotated[float, Field(ge=0, le=600)] = 3.0
    """Seconds after Enter that are not kept: the surveyor sets the tag down and steps away (a
    body next to the tag takes 5-15 dB off the paths behind it)."""
    truth_step_s: Annotated[float, Field(gt=0, le=2)] = 0.5
    """Spacing of the truth rows; `calibrate` never interpolates across more than 2 s."""
    tag_height_m: Annotated[float | None, Field(ge=0, le=100)] = None
    """The tag's height above its level's floor, written as the truth's z (a point's own z
    wins); unset: `calibrate` takes the beacon kind's height (1 m if it has none)."""


@dataclass(frozen=True)
class Dwell:
    """The tag at `point` from `start` to `end` (this machine's clock, Unix s)."""

    point: SurveyPoint
    start: float
    end: float


Clock = tuple[str, str, int]
"""(gateway, boot, k): the k-th stretch of one gateway's clock in that boot, between steps (or
drops not yet judged: SurveyRecorder._merged)."""


@dataclass(frozen=True)
class _Drop:
    """(arrival - sent) fell by more than CLOCK_STEP_S from stretch `before` to the next: the
    clock stepped forward, or the batches before were held up on the way. `sent_s` and `seqs`:
    how far the send time and seq moved between the two batches either side."""

    before: int
    sent_s: float
    seqs: int


@dataclass
class _ClockState:
    """Where one boot of one gateway stands: the first seq of each stretch of its clock (the
    k-th from `starts[k]`), the seq and send time of its latest batch in seq order, its recent
    gaps per batch (CADENCE_GAPS), and the drops not judged yet."""

    starts: list[int]
    seq: int = -1
    sent: float = -math.inf
    gaps: deque[float] = field(default_factory=lambda: deque(maxlen=CADENCE_GAPS))
    drops: list[_Drop] = field(default_factory=list)


@dataclass
class SurveyRecorder:
    """The survey tag's samples, as paho's thread hands them over (module docstring)."""

    beacon: str
    gateways: frozenset[str]
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)
    _samples: list[tuple[float, str, float, float | None, Clock]] = field(default_factory=list)
    """(gateway time, gateway, rssi, tx power, the clock that stamped it), in arrival order."""
    _offsets: dict[Clock, float] = field(default_factory=dict)
    """Per stretch of a gateway's clock, the least (arrival - sent) seen: this machine's clock
    minus the gateway's, plus the quickest delivery. A stretch merged into the next has its
    offset there (`_offset`)."""
    _merged: dict[Clock, Clock] = field(default_factory=dict)
    """A stretch opened at a drop that the cadence then showed to be a hold, not a step: the
    stretch before it is the same clock, merged into it."""
    _clocks: dict[tuple[str, str], _ClockState] = field(default_factory=dict)
    _seen: set[tuple[str, str, int]] = field(default_factory=set)
    """(gateway, boot, seq) of every batch taken: one delivered twice is dropped, as the hub
    drops it (DESIGN.md, the readings batch)."""
    _last_arrival: float = -math.inf
    _latest_sent: dict[Clock, float] = field(default_factory=dict)
    """Per stretch, the latest send time of its batches (the gateway's clock): in this machine's
    clock, what the gateway heard up to then has arrived (LAST_BATCH_MAX_S)."""
    batches: int = 0
    undecodable: int = 0
    foreign: int = 0
    """Batches from gateways the site file does not name."""
    duplicates: int = 0
    """Batches delivered again (a gateway re-sends one whose PUBACK it lost), not kept twice."""

    # -- paho's thread

    def on_payload(self, topic: str, payload: bytes, arrival: float) -> None:
        try:
            parse_topic(topic)
            batch = decode_batch(payload)
        except WireError:
            with self._lock:
                self.undecodable += 1
            return
        self.add(batch, arrival)

    def add(self, batch: ReadingBatch, arrival: float) -> None:
        mine = [i for i, b in enumerate(batch.b) if batch.beacons[b] == self.beacon]
        with self._lock:
            if batch.gw not in self.gateways:
                self.foreign += 1
                return
            if (batch.gw, batch.boot, batch.seq) in self._seen:
                self.duplicates += 1
                return
            self._seen.add((batch.gw, batch.boot, batch.seq))
            self.batches += 1
            clock = self._stretch(batch, arrival)
            root = self._root(clock)
            self._offsets[root] = min(self._offsets.get(root, math.inf), arrival - batch.sent)
            self._latest_sent[clock] = max(self._latest_sent.get(clock, -math.inf), batch.sent)
            for i in mine:
                t = batch.sent - batch.dt_ms[i] / 1000.0
                self._samples.append((t, batch.gw, batch.rssi[i], batch.tx[i], clock))
            if mine:
                self._last_arrival = arrival

    def _stretch(self, batch: ReadingBatch, arrival: float) -> Clock:
        """The stretch of its gateway's clock that `batch` was sent in (under the lock)."""
        state = self._clocks.get((batch.gw, batch.boot))
        if state is None:
            state = self._clocks[(batch.gw, batch.boot)] = _ClockState(starts=[batch.seq])
        if batch.seq < state.seq:
            # Overtaken on the way by later batches: held up, which only raises its (arrival -
            # sent), so it says nothing of a step; it was sent in the stretch its seq is in.
            k = max(0, bisect.bisect_right(state.starts, batch.seq) - 1)
            return (batch.gw, batch.boot, k)
        current = (batch.gw, batch.boot, len(state.starts) - 1)
        least = self._offsets.get(self._root(current), math.inf)
        sent_s, seqs = batch.sent - state.sent, batch.seq - state.seq
        if batch.sent < state.sent:
            # No hold makes a later batch sent earlier: the clock was stepped back.
            state.starts.append(batch.seq)
        elif arrival - batch.sent < least - CLOCK_STEP_S:
            # A step forward, or the batches before held up: a new stretch for now, the two
            # told apart by the cadence (_judge_drops).
            state.starts.append(batch.seq)
            state.drops.append(_Drop(len(state.starts) - 2, sent_s, seqs))
        elif math.isfinite(sent_s):
            state.gaps.append(sent_s / seqs)
        state.seq, state.sent = batch.seq, batch.sent
        self._judge_drops(batch.gw, batch.boot, state)
        return (batch.gw, batch.boot, len(state.starts) - 1)

    def _judge_drops(self, gw: str, boot: str, state: _ClockState) -> None:
        """Once the cadence is known, each drop is a step if the send time across it ran ahead
        of the cadence by more than CLOCK_STEP_S (the clock jumped), else a hold: the stretch
        before it is the same clock, and its samples take the offset of the one after."""
        if not state.drops or len(state.gaps) < CADENCE_MIN_GAPS:
            return
        cadence_s = statistics.median(state.gaps)
        for drop in state.drops:  # in stretch order, so a run of holds merges into the last
            if drop.sent_s - cadence_s * drop.seqs <= CLOCK_STEP_S:
                before, after = (gw, boot, drop.before), (gw, boot, drop.before + 1)
                self._merged[before] = after
                root = self._root(after)
                self._offsets[root] = min(self._offsets[root], self._offsets[before])
        state.drops.clear()

    def _root(self, clock: Clock) -> Clock:
        """The stretch whose offset `clock`'s samples take: itself, or the one it was merged
        into (under the lock)."""
        while clock in self._merged:
            clock = self._merged[clock]
        return clock

    def _offset_table(self) -> dict[Clock, float]:
        """Every stretch's offset, merged ones resolved (under the lock)."""
        return {clock: self._offsets[self._root(clock)] for clock in self._offsets}

    # -- the main thread

    def heard_since(self, t: float) -> tuple[int, int]:
        """(samples, gateways) of the tag heard at or after `t` (this machine's clock)."""
        samples, gateways = 0, set()
        with self._lock:
            offsets = self._offset_table()
            # newest first; batches arrive in about time order, so past t by more than a
            # batch's span nothing later can follow
            for ts, gw, _r, _tx, clock in reversed(self._samples):
                local = ts + offsets[clock]
                if local >= t:
                    samples += 1
                    gateways.add(gw)
                elif local < t - ARRIVAL_SPREAD_S:
                    break
        return samples, len(gateways)

    def behind(self, t: float) -> list[str]:
        """Gateways heard during the survey whose latest batch ends before `t` (this machine's
        clock): they may still hold samples from before it."""
        with self._lock:
            ends: dict[str, float] = {}
            for clock, sent in self._latest_sent.items():
                end = sent + self._offsets[self._root(clock)]
                ends[clock[0]] = max(ends.get(clock[0], -math.inf), end)
        return sorted(gw for gw, end in ends.items() if end < t)

    def last_heard(self) -> float:
        """Arrival time of the latest batch that held the tag (-inf: never)."""
        with self._lock:
            return self._last_arrival

    def readings(self, windows: Sequence[tuple[float, float]]) -> list[Reading]:
        """The tag's samples inside any of `windows` ((start, end) in this machine's clock, in
        time order, not overlapping), in time order."""
        with self._lock:
            offsets = self._offset_table()
            samples = list(self._samples)
        # windows come in time order and do not overlap (dwells, or one walk): the last one
        # starting at or before t is the only one that can hold it
        starts = [lo for lo, _ in windows]
        out = []
        for ts, gw, rssi, tx, clock in samples:
            t = ts + offsets[clock]
            k = bisect.bisect_right(starts, t) - 1
            if k >= 0 and t <= windows[k][1]:
                out.append(Reading(t=t, gateway=gw, beacon=self.beacon, rssi=rssi, tx_power=tx))
        out.sort(key=lambda r: r.t)
        return out


def load_points(path: Path, site: Site) -> list[SurveyPoint]:
    """A points file, checked against the site (check_points)."""
    numbered = list(read_numbered(POINTS, path))
    if not numbered:
        raise SurveyError(f"{path}: no points; expected rows of x,y[,z,level,name]")
    points = [p for _, p in numbered]
    check_points(points, site, str(path), lines=[line for line, _ in numbered])
    return points


PLAN_SPACING_M = 1.5
"""Default spacing of planned points: static shadowing decorrelates over about 1.5 m
(radiomap.py). Measured on the simulated store's test day (README, What a survey gives),
calibrated with the survey kernel: points 1.5 m apart held 10 s 0.57 / 2.28 m median / p90,
zone 94 %; 2.5 m apart 1.00 / 6.74 m, 83 % (30 s each: 0.83 / 4.18 m)."""
WALK_SPACING_M = 1.0
"""Default spacing for a walk (`site points --walk`): its evidence is a line, not a spot, so the
rows want to be closer than the shadowing's 1.5 m. Same measurement, a tag at 5 Hz walked at
0.6 m/s: rows 1.5 m apart 0.64 / 4.00 m in 22 minutes, 1.25 m 0.54 / 1.87 m in 26, 1 m
0.49 / 1.65 m and zone 95 % in 34 (Enter marks off by 0.3 s: 0.51 / 1.70 m, 0.6 s: 0.53 /
1.92 m), 0.75 m 0.51 / 1.55 m in 43: 1 m, where the gain levels off."""
PLAN_CLEARANCE_M = 0.5
"""A planned point stays this far from shelves and walls: room to stand a tag on a pole."""


def plan_points(site: Site, spacing_m: float = PLAN_SPACING_M) -> list[SurveyPoint]:
    """Points every `spacing_m` over the walkable floor of each level (off obstacles, at least
    PLAN_CLEARANCE_M from them and from the outline), row by row, each row walked the other
    way from the last (a serpentine: the shortest way through a grid)."""
    plan = FloorPlan(site)
    multi = len(site.levels) > 1
    out: list[SurveyPoint] = []
    for level in site.levels:
        outline = np.asarray(level.outline, dtype=np.float64)
        lo, hi = outline.min(axis=0), outline.max(axis=0)
        xs = np.arange(lo[0] + spacing_m / 2, hi[0], spacing_m)
        ys = np.arange(lo[1] + spacing_m / 2, hi[1], spacing_m)
        for row, y in enumerate(ys):
            xy = np.c_[xs, np.full(xs.shape, y)]
            ok = plan.allowed(level.level, xy, WALKWAY) & (
                plan.clearance_m(level.level, xy, WALKWAY) >= PLAN_CLEARANCE_M
            )
            chosen = xy[ok] if row % 2 == 0 else xy[ok][::-1]
            for x, yy in chosen:
                n = len(out) + 1
                out.append(
                    SurveyPoint(
                        x=round(float(x), 2),
                        y=round(float(yy), 2),
                        level=level.level if multi else None,
                        name=f"l{level.level}-{n:03d}" if multi else f"p{n:03d}",
                    )
                )
    return out


def write_points(points: Sequence[SurveyPoint], path: Path) -> None:
    with CsvWriter(POINTS, path) as w:
        w.write_all(points)


def check_points(
    points: Sequence[SurveyPoint], site: Site, where: str, lines: Sequence[int] | None = None
) -> None:
    """Each point on a level of the site and inside its outline: a point off the floor is a
    typo (x and y swapped, feet for metres) that would teach the map a wrong place. A point
    without a level is on the site's only level (plan_points leaves it out there), or on level
    0 of a site of several."""
    for i, p in enumerate(points):
        at = f"{where}:{lines[i]}" if lines is not None else where
        number = site.level_number(p.level)
        try:
            level = site.level(number)
        except KeyError:
            levels = ", ".join(str(lv.level) for lv in site.levels)
            msg = f"{at}: level {number} is not one of the site's levels ({levels})"
            raise SurveyError(msg) from None
        if not points_in_polygon(np.array([[p.x, p.y]]), level.outline)[0]:
            msg = f"{at}: ({p.x:g}, {p.y:g}) is outside level {number}'s outline in the site file"
            raise SurveyError(msg)


def dwell_truth(
    beacon: str, dwells: Iterable[Dwell], step_s: float, height_m: float | None
) -> list[TruthPoint]:
    """Truth rows every `step_s` through each dwell, at its point."""
    rows = []
    for d in dwells:
        steps = math.floor((d.end - d.start) / step_s + 1e-9)
        times = [min(d.start + k * step_s, d.end) for k in range(steps + 1)]
        if times[-1] < d.end:
            times.append(d.end)
        p = d.point
        rows += [_truth(beacon, t, p, x=p.x, y=p.y, height_m=height_m) for t in times]
    return rows


def walk_truth(
    beacon: str,
    points: Sequence[SurveyPoint],
    marks: Sequence[float],
    step_s: float,
    height_m: float | None,
) -> list[TruthPoint]:
    """Truth rows every `step_s` from the first mark to the last, the tag moving in a straight
    line at even speed from each point to the next (marks[i]: when it passed points[i])."""
    rows: list[TruthPoint] = []
    for i in range(len(marks) - 1):
        a, b = points[i], points[i + 1]
        t0, t1 = marks[i], marks[i + 1]
        n = max(1, math.ceil((t1 - t0) / step_s - 1e-9))
        for k in range(n):
            f = k / n
            t = t0 + f * (t1 - t0)
            x, y = a.x + f * (b.x - a.x), a.y + f * (b.y - a.y)
            rows.append(_truth(beacon, t, a, x=x, y=y, height_m=height_m))
    if marks:
        last = points[len(marks) - 1]
        rows.append(_truth(beacon, marks[-1], last, x=last.x, y=last.y, height_m=height_m))
    return rows


def _truth(
    beacon: str, t: float, p: SurveyPoint, *, x: float, y: float, height_m: float | None
) -> TruthPoint:
    return TruthPoint(
        t=t, beacon=beacon, x=x, y=y, z=p.z if p.z is not None else height_m, level=p.level
    )


# ------------------------------------------------------------------------------ the command

Ask = Callable[[str], str]
Say = Callable[[str], None]


@dataclass
class _Session:
    site: Site
    beacon: str
    cfg: SurveyConfig
    ask: Ask
    say: Say
    clock: Callable[[], float]
    sleep: Callable[[float], None]
    recorder: SurveyRecorder = field(init=False)

    def __post_init__(self) -> None:
        self.recorder = SurveyRecorder(self.beacon, frozenset(g.id for g in self.site.gateways))

    def record(self, index: int, total: int | None, point: SurveyPoint) -> Dwell:
        """Hold the tag at `point`: settle, then `dwell_s` of readings, with progress."""
        cfg = self.cfg
        start = self.clock() + cfg.settle_s
        end = start + cfg.dwell_s
        label = _label(index, total, point)
        next_progress = start + PROGRESS_EVERY_S
        warned = False
        try:
            if cfg.settle_s:
                self.say(f"  step away: recording starts in {cfg.settle_s:g} s")
                self.sleep(cfg.settle_s)
            while (now := self.clock()) < end:
                self.sleep(min(0.25, end - now))
                now = self.clock()
                if now - max(self.recorder.last_heard(), start) >= SILENT_WARN_S and not warned:
                    warned = True
                    self.say(
                        f"  nothing heard of {self.beacon} for {SILENT_WARN_S:g} s: is the tag"
                        " on, and is it the one given to --beacon?"
                    )
                if now >= next_progress and now < end:
                    next_progress += PROGRESS_EVERY_S
                    samples, gws = self.recorder.heard_since(start)
                    self.say(f"  {end - now:4.0f} s left: {samples} samples from {gws} gateways")
        except KeyboardInterrupt:
            end = self.clock()
            self.say(f"{label}: interrupted; kept {max(0.0, end - start):.0f} s of it")
            raise _Interrupted(Dwell(point, start, end)) from None
        samples, gws = self.recorder.heard_since(start)
        self.say(f"{label}: done, {samples} samples from {gws} gateways")
        return Dwell(point, start, end)


class _Interrupted(Exception):  # noqa: N818  # control flow, not an error a user sees
    """Ctrl-C during a dwell: the part recorded so far."""

    def __init__(self, dwell: Dwell) -> None:
        super().__init__("interrupted")
        self.dwell = dwell


def _label(index: int, total: int | None, p: SurveyPoint) -> str:
    where = f"({p.x:g}, {p.y:g}" + (f", level {p.level}" if p.level is not None else "") + ")"
    name = f" {p.name}" if p.name else ""
    return f"point {index}{f'/{total}' if total else ''}{name} {where}"


def _typed_point(text: str) -> SurveyPoint:
    parts = text.replace(",", " ").split()
    if len(parts) not in (2, 3):
        raise ValueError("type x y, or x y level (metres, in the site file's frame)")
    try:
        x, y = float(parts[0]), float(parts[1])
        level = int(parts[2]) if len(parts) == 3 else None
    except ValueError:
        raise ValueError("x and y are numbers (metres), level a whole number") from None
    if not (math.isfinite(x) and math.isfinite(y)):
        raise ValueError("x and y are finite numbers")
    return SurveyPoint(x=x, y=y, level=level)


def _points_survey(s: _Session, points: Sequence[SurveyPoint] | None) -> list[Dwell]:
    dwells: list[Dwell] = []
    total = len(points) if points is not None else None
    index = 0
    while True:
        index += 1
        if points is not None:
            if index > len(points):
                return dwells
            point = points[index - 1]
            label = _label(index, total, point)
            try:
                answer = s.ask(f"{label}: put the tag there and press Enter (s: skip, q: finish) ")
            except (EOFError, KeyboardInterrupt):
                return dwells
            if answer.strip().lower() == "q":
                return dwells
            if answer.strip().lower() == "s":
                continue
        else:
            try:
                answer = s.ask(
                    f"point {index}: x y [level] where the tag is (Enter alone: finish) "
                )
            except (EOFError, KeyboardInterrupt):
                return dwells
            if not answer.strip():
                return dwells
            try:
                point = _typed_point(answer)
                check_points([point], s.site, f"point {index}")
            except (ValueError, SurveyError) as e:
                s.say(f"  {e}")
                index -= 1
                continue
        try:
            dwells.append(s.record(index, total, point))
        except _Interrupted as stop:
            if stop.dwell.end > stop.dwell.start:
                dwells.append(stop.dwell)
            return dwells


def _walk_survey(
    s: _Session, points: Sequence[SurveyPoint]
) -> tuple[list[SurveyPoint], list[float]]:
    """The walk's marks, and the point of each: a pause (`p`) marks its point twice, as the
    surveyor stops there and as they walk on, so the truth stands still in between instead of
    slowing the walk to the next point (a shopper in the aisle, a phone call)."""
    visited: list[SurveyPoint] = []
    marks: list[float] = []
    for i, point in enumerate(points, start=1):
        label = _label(i, len(points), point)
        verb = "press Enter as the tag passes it" if i > 1 else "press Enter as you set off"
        try:
            answer = s.ask(f"{label}: {verb} (p: stopping here; q: finish) ").strip().lower()
        except (EOFError, KeyboardInterrupt):
            break
        if answer == "q":
            break
        now = s.clock()
        if marks:
            prev = visited[-1]
            speed = math.hypot(point.x - prev.x, point.y - prev.y) / max(now - marks[-1], 1e-9)
            if speed > WALK_MAX_SPEED_M_S:
                s.say(
                    f"  {speed:.1f} m/s since the last point: an Enter missed or pressed twice?"
                    " (q and survey again from here if so)"
                )
            _say_if_silent(s, since=marks[0], now=now)
        visited.append(point)
        marks.append(now)
        if answer != "p":
            continue
        try:
            s.ask(f"{label}: paused; press Enter as you walk on (Ctrl-C: finish) ")
        except (EOFError, KeyboardInterrupt):
            break
        visited.append(point)
        marks.append(s.clock())
    return visited, marks


def _wait_for_last_batches(s: _Session, end: float) -> None:
    """Until every gateway heard during the survey has sent a batch ending after `end`, at
    most LAST_BATCH_MAX_S (a gateway gone quiet is named)."""
    deadline = s.clock() + LAST_BATCH_MAX_S
    try:
        while (late := s.recorder.behind(end)) and s.clock() < deadline:
            s.sleep(LAST_BATCH_POLL_S)
    except KeyboardInterrupt:
        # A second Ctrl-C right after the one that ended the survey: what was recorded is
        # written all the same, short of the batches still on their way.
        s.say("not waiting for the last batches: writing what has arrived")
        return
    if late:
        s.say(
            f"no batch since the end of the survey from {listed(late)} within"
            f" {LAST_BATCH_MAX_S:g} s: what they heard last is not in"
        )


def _say_if_silent(s: _Session, *, since: float, now: float) -> None:
    """A walk has no progress lines between its Enters: a tag gone quiet (a flat battery, the
    wrong id) is said at the next one, not found after half an hour of walking."""
    quiet = now - max(s.recorder.last_heard(), since)
    if quiet >= SILENT_WARN_S:
        s.say(
            f"  nothing heard of {s.beacon} for {quiet:.0f} s: is the tag on, and is it the one"
            " given to --beacon?"
        )


def run_survey(
    site: Site,
    beacon: str,
    out_dir: Path,
    cfg: SurveyConfig,
    points: Sequence[SurveyPoint] | None = None,
    *,
    ask: Ask = input,
    say: Say = print,
    clock: Callable[[], float] = time.time,
    sleep: Callable[[float], None] = time.sleep,
) -> dict[str, Any]:
    """The interactive survey: connect, record, write `out_dir`/{readings,truth,points}.csv.
    Returns a summary (printed by the CLI as JSON)."""
    if cfg.walk and (points is None or len(points) < 2):
        raise SurveyError("a walk needs --points with two points or more, in walking order")
    out_dir.mkdir(parents=True, exist_ok=True)
    files = {name: out_dir / f"{name}.csv" for name in ("readings", "truth", "points")}
    taken = [str(p) for p in files.values() if p.exists()]
    if taken:
        msg = f"--out {out_dir} already holds a survey ({', '.join(taken)}): give another folder"
        raise SurveyError(msg)
    session = _Session(site, beacon, cfg, ask, say, clock, sleep)
    client = _connect(cfg.broker, site, session.recorder)
    try:
        if cfg.walk and points is not None:
            passed, marks = _walk_survey(session, points)
            windows = [(marks[0], marks[-1])] if len(marks) >= 2 else []
            truth = walk_truth(beacon, passed, marks, cfg.truth_step_s, cfg.tag_height_m)
            # a pause marks its point twice: once in the points written and counted
            visited = [p for k, p in enumerate(passed) if k == 0 or p is not passed[k - 1]]
        else:
            dwells = _points_survey(session, points)
            visited = [d.point for d in dwells]
            windows = [(d.start, d.end) for d in dwells]
            truth = dwell_truth(beacon, dwells, cfg.truth_step_s, cfg.tag_height_m)
        if windows:
            _wait_for_last_batches(session, windows[-1][1])
        else:
            # a walk's single mark spans no time: nothing to keep, no point with a truth
            truth, visited = [], []
    finally:
        client.loop_stop()
        client.disconnect()
    readings = session.recorder.readings(windows)
    _write(files, readings, truth, visited)
    return _summary(
        session.recorder, site, files=files, readings=readings, points=visited, windows=windows
    )


def _connect(broker: BrokerSettings, site: Site, recorder: SurveyRecorder) -> mqtt.Client:
    """A clean session at QoS 0: the survey watches, it takes nothing from the hub's queue."""
    client = mqtt.Client(
        CallbackAPIVersion.VERSION2,
        client_id=f"beacon-hub-survey-{secrets.token_hex(4)}",
        protocol=mqtt.MQTTv311,
        clean_session=True,
    )
    client.enable_logger(paho_logger("beacon_hub.survey.paho"))
    broker.secure(client)
    subscribed = threading.Event()
    refused: list[str] = []
    refusals = RefusalLog(log)
    topic = readings_subscription(site.id)

    def on_connect(c: mqtt.Client, _u: Any, _f: Any, reason: Any, _p: Any) -> None:
        if reason.is_failure:
            refused.append(str(reason))
            return
        c.subscribe(topic, qos=0)

    def on_connect_fail(_c: mqtt.Client, _u: Any) -> None:
        reason = connect_failure()
        refused.append(reason)
        refusals.error(reason, "cannot connect to %s:%d: %s", broker.host, broker.port)

    def on_subscribe(_c: mqtt.Client, _u: Any, _m: int, reasons: Any, _p: Any) -> None:
        if reasons and reasons[0].is_failure:
            refused.append(f"the broker refused the subscription to {topic} (its ACL?)")
            return
        subscribed.set()

    def on_message(_c: mqtt.Client, _u: Any, msg: mqtt.MQTTMessage) -> None:
        recorder.on_payload(msg.topic, bytes(msg.payload), time.time())

    client.on_connect = on_connect
    client.on_connect_fail = on_connect_fail
    client.on_subscribe = on_subscribe
    client.on_message = on_message
    client.connect_async(broker.host, broker.port, keepalive=broker.keepalive_s)
    client.loop_start()
    if not subscribed.wait(CONNECT_TIMEOUT_S):
        client.loop_stop()
        client.disconnect()
        why = refused[-1] if refused else "no answer"
        msg = f"broker {broker.url}: not subscribed after {CONNECT_TIMEOUT_S:g} s: {why}"
        raise SurveyError(msg)
    return client


def _write(
    files: dict[str, Path],
    readings: Sequence[Reading],
    truth: Sequence[TruthPoint],
    points: Sequence[SurveyPoint],
) -> None:
    optional = ("tx_power",) if any(r.tx_power is not None for r in readings) else ()
    with CsvWriter(READINGS, files["readings"], optional=optional) as w:
        w.write_all(readings)
    with CsvWriter(TRUTH, files["truth"], optional=("z", "level")) as w:
        w.write_all(truth)
    write_points(points, files["points"])


def next_calibrate(site_file: Path, site: Site, summary: dict[str, Any]) -> str:
    """The `calibrate` command for what a survey wrote: the survey's map kernel, and in a
    warehouse `--plan-losses`, which keeps the racks' losses in the plan and out of the
    per-gateway fits (README, Accuracy: (F) 0.41 m with it, 4.49 m without)."""
    racks = " --plan-losses" if site.kind == "warehouse" else ""
    return (
        f"beacon-hub calibrate --site {site_file} --readings {summary['readings_file']}"
        f" --truth {summary['truth_file']} --out calibration.yaml"
        f" --map-bandwidth-m {SURVEY_BANDWIDTH_M:g}{racks}"
    )


def _summary(
    recorder: SurveyRecorder,
    site: Site,
    *,
    files: dict[str, Path],
    readings: Sequence[Reading],
    points: Sequence[SurveyPoint],
    windows: Sequence[tuple[float, float]],
) -> dict[str, Any]:
    per_gateway = {g.id: 0 for g in site.gateways}
    for r in readings:
        per_gateway[r.gateway] += 1
    return {
        "points": len(points),
        "seconds": round(sum(hi - lo for lo, hi in windows), 1),
        "readings": len(readings),
        "readings_per_gateway": per_gateway,
        "gateways_not_hearing": [g for g, n in per_gateway.items() if n == 0],
        "batches": recorder.batches,
        "undecodable_batches": recorder.undecodable,
        "foreign_batches": recorder.foreign,
        "duplicate_batches": recorder.duplicates,
        "readings_file": str(files["readings"]),
        "truth_file": str(files["truth"]),
        "points_file": str(files["points"]),
    }
