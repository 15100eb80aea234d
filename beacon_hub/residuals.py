"""How well a site's fixes explain their readings, live: a factor on accuracy_m.

The engine's spreads (the radio's shadowing_db, its static share) are a prior taken from a real
building. A site can be quieter (a lab, the companion harness, which draws no static field at
all: 80 % and 98 % of true positions within accuracy_m) or rougher. The readings say which:
after each tick's fixes, every beacon heard by 3 gateways or more leaves a reduced chi-square
(multilateration.reduced_chi2: squared standardized residuals per degree of freedom). Their
running median, m, says how much the prior over- or understates the spread, and accuracy_m is
multiplied by RESIDUAL_TO_ERROR * sqrt(m). Positions and the tracker are left alone.

What it cannot see: a fix in the wrong basin that explains its readings well (the simulated
warehouse without calibration, (D): the factor there is 0.98; 55 % stayed within until
multilateration.MAP_SLOPE_CAP_DB_M, 68 % since).
"""

from __future__ import annotations

import math

import numpy as np
from numpy.typing import NDArray

__all__ = [
    "PRIOR_FIXES",
    "RESIDUAL_TO_ERROR",
    "RESIDUAL_WINDOW_S",
    "ResidualSpread",
]

F64 = NDArray[np.float64]

RESIDUAL_TO_ERROR = 0.85
"""accuracy_m's factor per sqrt(median reduced chi-square): the median over nine recordings of
the 68th percentile of error / accuracy_m over sqrt(m). Measured 2026-12-07 (0.89 on
2026-12-06, before the map-slope cap of multilateration.MAP_SLOPE_CAP_DB_M and other changes
of that day): flat-calib2021's robot, map tracked 0.85 and one fix per sample 0.88, not
calibrated tracked 0.88 and one fix per sample 0.86; the companion harness (A) 0.79 and (B)
0.81; the simulated store (C) 0.74 and (E) 0.83; the warehouse (F) 0.85. Below 1 because a
residual also holds what does not move a fix: an offset common to all of a beacon's gateways
(a body, the beacon's own tx power)."""
RESIDUAL_WINDOW_S = 300.0
"""The running median forgets with this time constant (data time): long enough that a
site's quiet minute does not shrink every circle, short enough to follow a day's crowds."""
PRIOR_FIXES = 10.0
"""Until this much evidence (fixes, decayed) the factor leans towards the prior's (1 / the
factor's constant, i.e. accuracy_m as the model says): a handful of fixes do not set a median."""
_EDGES = np.linspace(-3.0, 3.0, 241)
"""log10 of reduced chi-square, 0.025 decades a bin: a median to within 3 %."""


class ResidualSpread:
    """The decayed histogram of reduced chi-square over a site's fixes, and the factor it gives."""

    def __init__(self) -> None:
        self.counts = np.zeros(_EDGES.shape[0] - 1)
        self.t: float | None = None

    def observe(self, t: float, chi2: F64) -> None:
        if self.t is not None and t > self.t:
            self.counts *= math.exp(-(t - self.t) / RESIDUAL_WINDOW_S)
        self.t = t if self.t is None else max(self.t, t)
        good = chi2[np.isfinite(chi2) & (chi2 > 0.0)]
        if good.shape[0]:
            bins = np.clip(np.searchsorted(_EDGES, np.log10(good)) - 1, 0, self.counts.shape[0] - 1)
            self.counts += np.bincount(bins, minlength=self.counts.shape[0])

    def median(self) -> float | None:
        """The running median reduced chi-square (None: nothing seen)."""
        total = float(self.counts.sum())
        if total <= 0.0:
            return None
        cum = np.cumsum(self.counts)
        k = int(np.searchsorted(cum, total / 2.0))
        below = cum[k - 1] if k > 0 else 0.0
        share = (total / 2.0 - below) / max(float(self.counts[k]), 1e-12)
        return float(10.0 ** (_EDGES[k] + share * (_EDGES[k + 1] - _EDGES[k])))

    def factor(self) -> float:
        """What multiplies accuracy_m: RESIDUAL_TO_ERROR * sqrt(median), leaning on 1 (the
        model's own spread) while there is little evidence (PRIOR_FIXES)."""
        m = self.median()
        if m is None:
            return 1.0
        return self._leaning(math.log(RESIDUAL_TO_ERROR * math.sqrt(m)))

    def spread_ratio(self) -> float:
        """The residuals' spread over the one the model gives them: sqrt(median), leaning on 1
        while there is little evidence (PRIOR_FIXES)."""
        m = self.median()
        if m is None:
            return 1.0
        return self._leaning(math.log(math.sqrt(m)))

    def _leaning(self, measured_log: float) -> float:
        n = float(self.counts.sum())
        return math.exp(measured_log * n / (n + PRIOR_FIXES))
