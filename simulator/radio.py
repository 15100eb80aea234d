"""The simulator's radio: what RSSI each gateway reports for each advertisement, or none.

    rssi = log-distance mean (beacon_hub.pathloss, per-gateway ref RSSI and exponent)
         - wall and obstacle losses on the straight path (2-D crossings, 3-D height check)
         - floor loss per level between beacon and gateway
         - body loss when the shopper stands between the cart tag and the gateway
         + static shadowing S_g(x, y): a Gaussian random field per gateway, fixed in space
         + slow fading: an Ornstein-Uhlenbeck process per (beacon, gateway) link
         + per-channel offset of the gateway (37 / 38 / 39) and fast fading per packet
         - an optional multipath dip on a fraction of packets (the companion harness's model)
         + an optional tag antenna pattern: a gain by the tag's heading towards the gateway

then the receiver keeps a packet with a probability that falls to zero at its sensitivity (and,
optionally, loses a share of adverts at many gateways at once), and reports whole dBm. All of it
is numpy over (packets x gateways); nothing loops per reading.

The split of the spread into static / slow / fast, the correlation length and the time constant
are fitted to the real dataset ../shared/datasets/flat-calib2021:
tests/simulator/test_radio_realdata.py measures its statistics and checks that the simulator
reproduces them. Each gateway's `shadowing_db` from the site scales all three parts, so a
noisier dock gateway is noisier in every part.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, replace

import numpy as np
from numpy.typing import NDArray

from beacon_hub.obstruction import LevelObstructions, body_shadowed
from beacon_hub.pathloss import mean_rssi_dbm
from beacon_hub.site import Level, Site

__all__ = [
    "BLE_CHANNELS",
    "BURST_GATEWAY_DROP",
    "COMPANION_RADIO",
    "DATASET_SHADOWING_DB",
    "FLAT_BURST_LOSS",
    "FLAT_HEADING_SD_DB",
    "REALISTIC_RADIO",
    "RadioConfig",
    "RadioModel",
]

FloatArray = NDArray[np.float64]
IntArray = NDArray[np.int64]
BoolArray = NDArray[np.bool_]

BLE_CHANNELS = (37, 38, 39)
"""BLE advertising channels (2402, 2426, 2480 MHz); a scanner hears each advert on one of them."""

DATASET_SHADOWING_DB = 6.6
"""Residual spread after a per-anchor log-distance fit on flat-calib2021 (1/3 s bins), pooled
over the 6 anchors (5.1-7.7 dB by anchor). The ratios below split a gateway's `shadowing_db` the
way this total splits on that dataset."""

STATIC_SD_RATIO = 5.9 / DATASET_SHADOWING_DB
"""Static field 5.9 dB. What the dataset shows is 4.5 dB: the same spot revisited more than a
minute later keeps a residual correlation of 0.468 (mean over anchors), sqrt(0.468) * 6.6 dB.
But a per-anchor fit over a 51 m2 flat absorbs part of a field correlated over 1.5 m, so the
field must be stronger to measure as 4.5 dB after the fit: 5.9 dB reproduces it (see below)."""

SLOW_SD_RATIO = 3.3 / DATASET_SHADOWING_DB
"""Slow part 3.3 dB: consecutive 1/3 s bins at the same spot correlate at 0.72 on the dataset,
0.25 above the static part, and that excess decays to about 0.07 after 10 s."""

FAST_SD_RATIO = 3.5 / DATASET_SHADOWING_DB
"""Fast fading 3.5 dB per packet: the rest of the variance of a 1/3 s bin, taken as averaging
about 1.3 packets (79 % of the dataset's bins are non-integer averages). The raw per-packet
spread is then 7.7 dB after a fit, the top of the 4.5-7.7 dB seen per receiver in real halls.
(The audit of 2026-12-07 found a bin to be about one advert heard by two crossed antennas, the
mW mean of two whole-dBm values: the bins still match, a single receiver is noisier;
docs/simulator.md, What it does not model.)"""

CORRELATION_LENGTH_M = 1.5
"""Gaussian correlation exp(-r^2 / 2 L^2) of the static field. On flat-calib2021 residual pairs
more than 60 s apart correlate at 0.47 (< 0.25 m), 0.35 (0.5-1 m), 0.15 (1-2 m), 0.01 (2-3 m);
simulating the robot's own route with L = 1.5 m and these four values gives, over 8 seeds,
0.44, 0.35, 0.14, -0.04 and a pooled spread of 6.7 dB (tests/simulator/test_radio_realdata.py)."""

SLOW_FADING_TAU_S = 5.0
"""Time constant of the slow part (people and doors moving): with 5 s the simulated bins
correlate at 0.72 / 0.58 / 0.33 after 1/3 / 3 / 10 s, the dataset's 0.72 / 0.58 / 0.33."""

CHANNEL_OFFSET_SD_DB = 1.0
"""Per-gateway gain difference between channels 37/38/39 (antenna match across 2402-2480 MHz);
a small, assumed value: a few dB between channels is reported per link, most of which is
frequency-selective fading already inside the fast part."""

BODY_LOSS_DB = 6.0
"""A shopper between the cart tag and the gateway: 2.4 GHz body shadowing is 5-15 dB in
wearable measurements; the path often grazes the body, so 6 dB."""

FLOOR_LOSS_DB = 15.0
"""Loss of one concrete floor slab at 2.4 GHz (ITU-R P.1238 floor penetration, 10-20 dB)."""

SENSITIVITY_DBM = -100.0
"""Receiver floor: a Raspberry Pi's CYW43455 and an ESP32 report nothing much below -100 dBm
(BLE 1M PHY sensitivity about -97 dBm typical, -100 at best)."""
LOSS_50_DBM = -96.0
"""RSSI at which half the packets of an advert are lost to bit errors near the floor."""
LOSS_SLOPE_DB = 1.5
"""Width of the logistic fall of reception near the floor (a few dB from all to nothing)."""
BASE_LOSS = 0.05
"""Packets lost at any strength (scan window switching channels, collisions); flat-calib2021
misses 4-15 % of its 1/3 s bins per anchor, mostly where the RSSI is low."""

RSSI_MIN_DBM = -127.0
RSSI_MAX_DBM = 20.0
"""HCI LE Advertising Report range (Bluetooth Core spec)."""

BURST_GATEWAY_DROP = 0.7
"""With burst loss on, the chance that each gateway misses an advert caught in a burst (a body
over the tag, the tag's radio busy, a Wi-Fi burst): most gateways at once, not all. An assumed
value; with it, a burst share near FLAT_BURST_LOSS puts flat-calib2021's 9 % of rows with 3 or
more of its 6 anchors missing at once into a simulated copy of the flat (test_radio_realdata)."""

FLAT_HEADING_SD_DB = 2.0
"""Heading term that matches flat-calib2021: at one spot its RSSI varies 1.6-3.4 dB a reading
with the tag's orientation (audit of 2026-12-07, docs/simulator.md). Not a default; the
`beacon-sim run --heading-db` value to use for a site like it."""

FLAT_BURST_LOSS = 0.13
"""Burst share that matches flat-calib2021: with BURST_GATEWAY_DROP, rows with 3 or more of the
6 anchors missing at once go from 0.2 % to 8.8 % (real: 9.1 %) and missing bins from 3.5 % to
9.8 % (real: 9.5 %) on the robot's route simulated and binned as the dataset is, 1.3 adverts a
bin (tests/simulator/test_radio_realdata.py, seeds 1-3; 0.12: 8.1 and 9.3 %, 0.14: 9.3 and
10.2 %). Not a default; `beacon-sim run --burst-loss`."""

FIELD_CELL_M = 0.25
"""Grid step of the static field, a sixth of the correlation length, interpolated bilinearly."""
FIELD_MAX_CELLS = 400_000
"""Per gateway and level; a larger floor gets a coarser grid (still fine for L = 1 m up to
about 160 x 160 m)."""


@dataclass(frozen=True, slots=True)
class RadioConfig:
    """The radio's parameters beyond the site's per-gateway ref RSSI, exponent and spread."""

    static_sd_ratio: float = STATIC_SD_RATIO
    slow_sd_ratio: float = SLOW_SD_RATIO
    fast_sd_ratio: float = FAST_SD_RATIO
    correlation_length_m: float = CORRELATION_LENGTH_M
    slow_fading_tau_s: float = SLOW_FADING_TAU_S
    channel_offset_sd_db: float = CHANNEL_OFFSET_SD_DB
    multipath_probability: float = 0.0
    multipath_dip_db: float = 6.0
    body_loss_db: float = BODY_LOSS_DB
    floor_loss_db: float = FLOOR_LOSS_DB
    obstructions: bool = True
    sensitivity_dbm: float = SENSITIVITY_DBM
    loss_50_dbm: float = LOSS_50_DBM
    loss_slope_db: float = LOSS_SLOPE_DB
    base_loss: float = BASE_LOSS
    integer_rssi: bool = True
    """Report whole dBm as HCI does; the companion harness works in floats."""
    clock_offset_sd_s: float = 0.0
    """Spread of each gateway's clock error (0: NTP-synchronised gateways)."""
    clock_drift_sd_ppm: float = 0.0
    """Spread of each gateway's clock rate error; a Pi without NTP drifts tens of ppm."""
    heading_sd_db: float = 0.0
    """Tag antenna pattern (RadioModel.heading_gain_db): the spread, over a full turn of the
    tag, of its gain towards a gateway. 0: every tag radiates alike in every direction."""
    burst_loss: float = 0.0
    """Share of adverts caught in a burst, lost at each gateway with BURST_GATEWAY_DROP, on top
    of the independent losses. 0: every packet is lost or kept on its own."""
    burst_gateway_drop: float = BURST_GATEWAY_DROP

    def with_(self, **changes: float | bool) -> RadioConfig:
        return replace(self, **changes)  # type: ignore[arg-type]


REALISTIC_RADIO = RadioConfig()
COMPANION_RADIO = RadioConfig(
    static_sd_ratio=0.0,
    slow_sd_ratio=0.0,
    fast_sd_ratio=1.0,
    channel_offset_sd_db=0.0,
    multipath_probability=0.10,
    multipath_dip_db=6.0,
    body_loss_db=0.0,
    sensitivity_dbm=RSSI_MIN_DBM,
    loss_50_dbm=-1000.0,
    base_loss=0.0,
    integer_rssi=False,
)
"""ESPresense-companion's accuracy harness (docs/accuracy.md): Gaussian sigma = the site's
shadowing_db (2.5 dB in config/room.yaml), 10 % of samples take a -6 dB multipath hit, every
station hears every sample, no walls, no static field."""


@dataclass(frozen=True, slots=True)
class _LevelGeometry:
    obstructions: LevelObstructions
    field_origin: tuple[float, float]
    field_cell_m: float
    field: NDArray[np.float32]  # (G, ny, nx) unit-variance static field per gateway


def _level_geometry(
    level: Level, n_gateways: int, config: RadioConfig, rng: np.random.Generator
) -> _LevelGeometry:
    outline = np.array(level.outline, dtype=np.float64)
    margin = 2.0 * config.correlation_length_m
    lo = outline.min(axis=0) - margin
    hi = outline.max(axis=0) + margin
    cell = max(FIELD_CELL_M, math.sqrt(float(np.prod(hi - lo)) / FIELD_MAX_CELLS))
    nx, ny = (math.ceil(v / cell) + 2 for v in hi - lo)
    field = _gaussian_fields(n_gateways, ny, nx, config.correlation_length_m / cell, rng)
    return _LevelGeometry(
        obstructions=LevelObstructions.of(level),
        field_origin=(float(lo[0]), float(lo[1])),
        field_cell_m=cell,
        field=field,
    )


class RadioModel:
    """One site's radio, with its random fields fixed by `rng` at construction.

    Positions are (x, y, z) in site metres with z above the floor of the point's level.
    """

    def __init__(self, site: Site, config: RadioConfig, rng: np.random.Generator) -> None:
        self.site = site
        self.config = config
        gateways = site.gateways
        self.gateway_ids: tuple[str, ...] = tuple(gw.id for gw in gateways)
        elevation = {lv.level: lv.elevation_m for lv in site.levels}
        radios = [site.gateway_radio(gw) for gw in gateways]
        self.gateway_xyz = np.array(
            [(gw.x, gw.y, gw.z + elevation[gw.level]) for gw in gateways], dtype=np.float64
        )
        self.gateway_level = np.array([gw.level for gw in gateways], dtype=np.int64)
        self.ref_rssi_1m_dbm = np.array([r.ref_rssi_1m_dbm for r in radios])
        self.exponent = np.array([r.path_loss_exponent for r in radios])
        spread = np.array([r.shadowing_db for r in radios])
        self.static_sd_db = spread * config.static_sd_ratio
        self.slow_sd_db = spread * config.slow_sd_ratio
        self.fast_sd_db = spread * config.fast_sd_ratio
        self._elevation = elevation
        self._level_index = {lv.level: i for i, lv in enumerate(site.levels)}
        self._levels = {
            lv.level: _level_geometry(lv, len(gateways), config, rng) for lv in site.levels
        }
        self.channel_offset_db = rng.normal(
            0.0, config.channel_offset_sd_db, (len(gateways), len(BLE_CHANNELS))
        )
        self.channel_offset_db -= self.channel_offset_db.mean(axis=1, keepdims=True)
        self.clock_offset_s = rng.normal(0.0, config.clock_offset_sd_s, len(gateways))
        self.clock_drift_ppm = rng.normal(0.0, config.clock_drift_sd_ppm, len(gateways))

    def change_static_field(self, share: float, rng: np.random.Generator) -> None:
        """The same building on another day: a `share` of each static shadowing field's
        variance drawn anew from `rng` (stock, furniture, doors, people moved), the rest kept
        (field <- sqrt(1 - share) field + sqrt(share) new). The fields stay of unit variance,
        so the site's shadowing spread is what it was; only what a survey learnt of it ages."""
        if not 0.0 <= share <= 1.0:
            msg = f"a share of the static field from 0 to 1, got {share:g}"
            raise ValueError(msg)
        keep, new = math.sqrt(1.0 - share), math.sqrt(share)
        for lv in self.site.levels:
            geo = self._levels[lv.level]
            other = _level_geometry(lv, self.n_gateways, self.config, rng).field
            geo.field[...] = keep * geo.field + new * other

    @property
    def n_gateways(self) -> int:
        return len(self.gateway_ids)

    # -- deterministic part of a link --------------------------------------------------------

    def mean_dbm(self, xyz: FloatArray, level: IntArray) -> FloatArray:
        """(N, G) expected RSSI: path loss, obstructions and static shadowing, no fading."""
        xyz = np.asarray(xyz, dtype=np.float64).reshape(-1, 3)
        level = np.broadcast_to(np.asarray(level, dtype=np.int64), (xyz.shape[0],))
        absolute = xyz.copy()
        absolute[:, 2] += np.array([self._elevation[int(v)] for v in level]) if len(level) else 0
        delta = absolute[:, None, :] - self.gateway_xyz[None, :, :]
        distance = np.sqrt(np.sum(delta * delta, axis=2))
        mean = mean_rssi_dbm(distance, self.ref_rssi_1m_dbm, self.exponent)
        mean -= self.obstruction_db(xyz, level)
        mean += self.static_shadowing_db(xyz, level)
        return mean

    def static_shadowing_db(self, xyz: FloatArray, level: IntArray) -> FloatArray:
        """(N, G) value of each gateway's static field at the points (bilinear on its grid)."""
        out = np.zeros((xyz.shape[0], self.n_gateways))
        if not self.config.static_sd_ratio:
            return out
        for number, geo in self._levels.items():
            rows = np.flatnonzero(level == number)
            if rows.size == 0:
                continue
            fx = (xyz[rows, 0] - geo.field_origin[0]) / geo.field_cell_m
            fy = (xyz[rows, 1] - geo.field_origin[1]) / geo.field_cell_m
            ny, nx = geo.field.shape[1:]
            fx = np.clip(fx, 0.0, nx - 1.000001)
            fy = np.clip(fy, 0.0, ny - 1.000001)
            ix, iy = fx.astype(np.int64), fy.astype(np.int64)
            wx, wy = fx - ix, fy - iy
            f = geo.field
            value = (
                f[:, iy, ix] * ((1 - wx) * (1 - wy))
                + f[:, iy, ix + 1] * (wx * (1 - wy))
                + f[:, iy + 1, ix] * ((1 - wx) * wy)
                + f[:, iy + 1, ix + 1] * (wx * wy)
            )
            out[rows] = value.T * self.static_sd_db
        return out

    def obstruction_db(self, xyz: FloatArray, level: IntArray) -> FloatArray:
        """(N, G) loss of walls and obstacles on the straight path, plus floors between levels.

        A wall costs its loss per crossing; an obstacle costs its loss once if the path crosses
        its outline below its top (the path's height where it crosses is interpolated).
        """
        n = xyz.shape[0]
        out = np.zeros((n, self.n_gateways))
        gw_index = np.array([self._level_index[int(v)] for v in self.gateway_level])
        pt_index = np.array([self._level_index[int(v)] for v in level], dtype=np.int64)
        if n:
            out += self.config.floor_loss_db * np.abs(pt_index[:, None] - gw_index[None, :])
        if not self.config.obstructions:
            return out
        for number, geo in self._levels.items():
            rows = np.flatnonzero(level == number)
            cols = np.flatnonzero(self.gateway_level == number)
            if rows.size == 0 or cols.size == 0:
                continue
            out[np.ix_(rows, cols)] += geo.obstructions.loss_db(xyz[rows], self.gateway_xyz[cols])
        return out

    def body_loss_db(self, xyz: FloatArray, heading_rad: FloatArray, body: BoolArray) -> FloatArray:
        """(N, G) loss where a person half a metre behind the tag (against its heading) stands
        in the path to the gateway, below head height."""
        out = np.zeros((xyz.shape[0], self.n_gateways))
        if not self.config.body_loss_db or not np.any(body):
            return out
        rows = np.flatnonzero(body)
        p = xyz[rows]
        shadowed = body_shadowed(
            self.gateway_xyz[None, :, :2] - p[:, None, :2],
            self.gateway_xyz[None, :, 2] - p[:, None, 2],
            p[:, None, 2],
            heading_rad[rows][:, None],
        )
        out[rows] = np.where(shadowed, self.config.body_loss_db, 0.0)
        return out

    def new_heading_patterns(self, n_tags: int, rng: np.random.Generator) -> FloatArray:
        """(n, 4) antenna patterns of n tags for heading_gain_db: the amplitudes of a first and
        a second harmonic of the heading and their phases. Each tag has its own mix and
        orientation, the same spread: a1^2 + a2^2 = 2 heading_sd_db^2, so the gain's spread
        over a full turn is heading_sd_db whatever the mix."""
        mix = rng.uniform(0.0, math.pi / 2.0, n_tags)
        phase = rng.uniform(0.0, 2.0 * math.pi, (n_tags, 2))
        scale = math.sqrt(2.0) * self.config.heading_sd_db
        return np.column_stack([scale * np.cos(mix), scale * np.sin(mix), phase])

    def heading_gain_db(
        self, xyz: FloatArray, heading_rad: FloatArray, pattern: FloatArray
    ) -> FloatArray:
        """(N, G) gain of each point's tag towards each gateway: its pattern (one row of
        new_heading_patterns per point) at the angle between its heading and the gateway's
        bearing. Smooth in the angle (two harmonics: a tag's small antenna and the ground plane
        or body behind it have one or two broad lobes), so a tag standing still keeps its gain
        and a turning one changes it as it turns."""
        out = np.zeros((xyz.shape[0], self.n_gateways))
        if not self.config.heading_sd_db or xyz.shape[0] == 0:
            return out
        bearing = np.arctan2(
            self.gateway_xyz[None, :, 1] - xyz[:, None, 1],
            self.gateway_xyz[None, :, 0] - xyz[:, None, 0],
        )
        angle = np.asarray(heading_rad, dtype=np.float64)[:, None] - bearing
        out += pattern[:, 0, None] * np.cos(angle + pattern[:, 2, None])
        out += pattern[:, 1, None] * np.cos(2.0 * angle + pattern[:, 3, None])
        return out

    # -- random part -------------------------------------------------------------------------

    def new_slow_state(self, n_links: int, rng: np.random.Generator) -> FloatArray:
        """(n, G) slow fading drawn from its stationary distribution."""
        return rng.standard_normal((n_links, self.n_gateways)) * self.slow_sd_db

    def step_slow(self, state: FloatArray, dt_s: float, rng: np.random.Generator) -> None:
        """Advance the Ornstein-Uhlenbeck slow fading of every link by dt_s, in place."""
        if not self.config.slow_sd_ratio or state.size == 0:
            return
        a = math.exp(-dt_s / self.config.slow_fading_tau_s)
        state *= a
        state += rng.standard_normal(state.shape) * (math.sqrt(1.0 - a * a) * self.slow_sd_db)

    def receive_probability(self, rssi_dbm: FloatArray) -> FloatArray:
        """Chance that a packet arriving at this strength is reported (0 below the floor)."""
        c = self.config
        rssi = np.asarray(rssi_dbm, dtype=np.float64)
        z = np.clip((rssi - c.loss_50_dbm) / c.loss_slope_db, -60.0, 60.0)
        p = (1.0 - c.base_loss) / (1.0 + np.exp(-z))
        return np.asarray(np.where(rssi >= c.sensitivity_dbm, p, 0.0))

    def packets(
        self,
        link_dbm: FloatArray,
        rng: np.random.Generator,
        burst_rng: np.random.Generator | None = None,
    ) -> FloatArray:
        """(P, G) reported RSSI of P adverts whose per-link level (mean, slow fading, body loss
        already added) is `link_dbm`; NaN where the gateway did not report the packet. Burst
        losses are drawn from `burst_rng` (else `rng`) after everything else, so a run with them
        reports a subset of the same readings as one without."""
        p, g = link_dbm.shape
        channel = rng.integers(0, len(BLE_CHANNELS), p)
        rssi = link_dbm + self.channel_offset_db[:, channel].T
        rssi += rng.standard_normal((p, g)) * self.fast_sd_db
        c = self.config
        if c.multipath_probability:
            rssi -= (rng.random((p, g)) < c.multipath_probability) * c.multipath_dip_db
        if c.integer_rssi:
            rssi = np.rint(rssi)
        rssi = np.clip(rssi, RSSI_MIN_DBM, RSSI_MAX_DBM)
        kept = rng.random((p, g)) < self.receive_probability(rssi)
        if c.burst_loss:
            kept &= ~self.burst_lost(p, rng if burst_rng is None else burst_rng)
        return np.where(kept, rssi, np.nan)

    def burst_lost(self, n_adverts: int, rng: np.random.Generator) -> BoolArray:
        """(P, G) True where an advert caught in a burst is lost: a `burst_loss` share of the
        adverts, each lost at every gateway with `burst_gateway_drop` independently. A body
        over the tag, its radio busy or a Wi-Fi burst take an advert from several gateways at
        once, which independent losses almost never do (docs/simulator.md)."""
        c = self.config
        out = np.zeros((n_adverts, self.n_gateways), dtype=bool)
        rows = np.flatnonzero(rng.random(n_adverts) < c.burst_loss)
        out[rows] = rng.random((rows.size, self.n_gateways)) < c.burst_gateway_drop
        return out

    def gateway_clock(self, t: FloatArray | float, start_s: float) -> FloatArray:
        """(..., G) what each gateway's clock reads at true time t."""
        tt = np.asarray(t, dtype=np.float64)[..., None]
        return np.asarray(tt + self.clock_offset_s + self.clock_drift_ppm * 1e-6 * (tt - start_s))

    def gateway_index(self, ids: Sequence[str]) -> IntArray:
        lookup = {gid: i for i, gid in enumerate(self.gateway_ids)}
        return np.array([lookup[i] for i in ids], dtype=np.int64)


def _gaussian_fields(
    count: int, ny: int, nx: int, length_cells: float, rng: np.random.Generator
) -> NDArray[np.float32]:
    """`count` unit-variance Gaussian random fields on a periodic ny x nx grid with correlation
    exp(-r^2 / 2 L^2): white noise convolved (by FFT) with a Gaussian kernel of sd L / sqrt(2),
    divided by the kernel's root sum of squares."""
    s = length_cells / math.sqrt(2.0)
    dy = np.minimum(np.arange(ny), ny - np.arange(ny))[:, None]
    dx = np.minimum(np.arange(nx), nx - np.arange(nx))[None, :]
    kernel = np.exp(-(dx * dx + dy * dy) / (2.0 * s * s))
    kernel /= np.sqrt(np.sum(kernel * kernel))
    transfer = np.fft.rfft2(kernel)
    noise = rng.standard_normal((count, ny, nx))
    return np.fft.irfft2(np.fft.rfft2(noise) * transfer, s=(ny, nx)).astype(np.float32)
