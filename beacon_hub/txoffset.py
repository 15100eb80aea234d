"""A beacon's transmit power, learnt from its own fixes where nothing else says it.

Ranging assumes the site's ref_rssi_1m_dbm, or what the beacon announces (an iBeacon's
measured power, Eddystone's tx power). A beacon that announces nothing and is weaker than the
site assumes is placed as if every gateway were farther: a generic -59 dBm on flat-calib2021,
whose tag is 11.6 dB stronger than that, put the robot 3.54 m off (median, tracked) instead
of the 2.38 m of the fitted reference (1.94 m with the power learnt: docs/accuracy.md).
That is the "calibration pain" of ESPresense's per-device `rssi@1m` and Bermuda's per-device
reference power, set by hand.

Heard by three gateways or more, an offset common to all of a beacon's gateways is
observable together with its position. After each tick's fix, the beacon's residuals
(reading - predicted, Huber-weighted, inverse-variance) have a mean that says how far its
offset is off; a scalar Kalman filter per beacon (a random walk) accumulates that mean into
the offset the next tick ranges with. The fix is least squares given the offset and the
offset is the mean residual given the fix, so the fixed point is the joint least-squares fit
of both (coordinate descent over ticks).
"""

from __future__ import annotations

import numpy as np
from numpy.typing import NDArray

__all__ = [
    "TX_OFFSET_DRIFT_DB2_S",
    "TX_OFFSET_FLOOR_MAX_DBM",
    "TX_OFFSET_FLOOR_SD",
    "TX_OFFSET_LIMIT_DB",
    "TX_OFFSET_MIN_GATEWAYS",
    "TX_OFFSET_PRIOR_SD_DB",
    "TxOffsets",
]

F64 = NDArray[np.float64]
I64 = NDArray[np.int64]

TX_OFFSET_PRIOR_SD_DB = 10.0
"""Spread of a beacon's power about the site's reference before any fix: 1 m RSSI of common
tags spans tens of dB over their models and power settings (a generic iBeacon's advertised
default -59 dBm, flat-calib2021's tag -47.4); 10 dB lets the data move it that far within a
few ticks."""
TX_OFFSET_DRIFT_DB2_S = 0.01
"""Random-walk variance a second (dB^2 / s): a battery sagging, a tag turned in its holder.
With a tick's mean residual spread of about 8 dB^2 (7 dB shadowing over 6 gateways) the
filter settles at a gain of about 0.035 a tick: a time constant of half a minute, long enough
to average a walker's static field over several places."""
TX_OFFSET_LIMIT_DB = 30.0
"""No beacon is this far from the site's reference: beyond it the fit is in a wrong basin."""
TX_OFFSET_MIN_GATEWAYS = 3
"""With fewer, the offset and the position are not separable (two readings, three unknowns)."""

TX_OFFSET_FLOOR_SD = 2.5
"""A gateway's reading counts only where the fix predicts it (moved by the beacon's mean
residual) this many of its spreads above the gateway's floor: nearer the floor, what is heard
is what fading lifted over it, and it leans high. On the simulated store (C) with its carts
silent about their power and all at the site's reference, learning cost 3.26 -> 3.75 m
(median) with every gateway counted, 3.26 -> 3.36 m with this cut (docs/accuracy.md); 6 spreads
left too few gateways to learn from."""
TX_OFFSET_FLOOR_MAX_DBM = -95.0
"""The floor counts no higher than this: BLE receivers hear down to -95..-100 dBm (ESP32's
datasheet: -97 dBm at 1 Mbps). A gateway's floor learnt from few beacons (ReceiverFloors: the
weakest it has reported) is where they were, not where its hearing ends: on flat-calib2021,
one tag, the floors cut most readings and the tag learnt nothing for two minutes."""


class TxOffsets:
    """Per beacon (engine index): the learnt offset (dB, added to the beacon's reference), its
    variance and the data time of its last update."""

    def __init__(self) -> None:
        self.offset_db = np.zeros(0)
        self.var_db2 = np.zeros(0)
        self.t = np.zeros(0)

    def ensure(self, capacity: int) -> None:
        grow = capacity - self.offset_db.shape[0]
        if grow <= 0:
            return
        self.offset_db = np.r_[self.offset_db, np.zeros(grow)]
        self.var_db2 = np.r_[self.var_db2, np.full(grow, TX_OFFSET_PRIOR_SD_DB**2)]
        self.t = np.r_[self.t, np.full(grow, np.nan)]

    def compact(self, keep: I64) -> None:
        """Keep only the beacons `keep` (ascending), renumbered 0, 1, ... in that order
        (Engine.compact), then ensure() the capacity."""
        self.offset_db, self.var_db2 = self.offset_db[keep], self.var_db2[keep]
        self.t = self.t[keep]

    def update(self, t: float, beacons: I64, mean_residual_db: F64, residual_var_db2: F64) -> None:
        """One Kalman step per beacon: `mean_residual_db` (the tick's mean residual at its fix,
        ranged with the current offset) measures the offset's error with `residual_var_db2`.
        Non-finite rows are skipped."""
        ok = np.isfinite(mean_residual_db) & np.isfinite(residual_var_db2)
        b = beacons[ok]
        if b.shape[0] == 0:
            return
        dt = np.where(np.isnan(self.t[b]), 0.0, np.maximum(t - self.t[b], 0.0))
        var = self.var_db2[b] + TX_OFFSET_DRIFT_DB2_S * dt
        gain = var / (var + residual_var_db2[ok])
        self.offset_db[b] = np.clip(
            self.offset_db[b] + gain * mean_residual_db[ok], -TX_OFFSET_LIMIT_DB, TX_OFFSET_LIMIT_DB
        )
        self.var_db2[b] = (1.0 - gain) * var
        self.t[b] = t
