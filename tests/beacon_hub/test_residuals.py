"""The residual spread: a running median of reduced chi-square, and the factor it puts on
accuracy_m, live, so a site quieter or rougher than the radio prior gets honest circles."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from beacon_hub.csvfiles import Reading, TruthPoint
from beacon_hub.engine import EngineConfig
from beacon_hub.evaluation import evaluate_truth
from beacon_hub.pathloss import mean_rssi_dbm
from beacon_hub.replay import EngineReplay
from beacon_hub.residuals import (
    PRIOR_FIXES,
    RESIDUAL_TO_ERROR,
    RESIDUAL_WINDOW_S,
    ResidualSpread,
)
from tests.beacon_hub.test_replay import EXPONENT, GATEWAYS, REF_DBM, T0, beacon, square


def test_nothing_seen_leaves_accuracy_as_the_model_says() -> None:
    spread = ResidualSpread()
    assert spread.median() is None
    assert spread.factor() == 1.0
    spread.observe(T0, np.array([np.nan, -1.0, 0.0]))
    assert spread.factor() == 1.0


@settings(max_examples=40, deadline=None)
@given(st.floats(0.05, 20.0), st.integers(1, 6))
def test_the_median_is_the_data_s_within_3_percent(scale: float, seed: int) -> None:
    chi2 = scale * np.random.default_rng(seed).chisquare(4, 2000) / 4.0
    spread = ResidualSpread()
    spread.observe(T0, chi2)
    assert spread.median() == pytest.approx(float(np.median(chi2)), rel=0.03)
    # 2,000 fixes outweigh the prior's PRIOR_FIXES
    expected = RESIDUAL_TO_ERROR * np.sqrt(np.median(chi2))
    assert spread.factor() == pytest.approx(expected, rel=0.04)


def test_few_fixes_lean_on_the_prior() -> None:
    spread = ResidualSpread()
    spread.observe(T0, np.full(int(PRIOR_FIXES), 0.25))
    measured = RESIDUAL_TO_ERROR * 0.5
    assert measured < spread.factor() < 1.0
    assert spread.factor() == pytest.approx(measured**0.5, rel=0.03)


def test_old_evidence_is_forgotten() -> None:
    """An hour of a quiet site, then a rough one: after a few windows the rough one rules."""
    spread = ResidualSpread()
    for k in range(360):
        spread.observe(T0 + 10.0 * k, np.full(20, 0.3))
    assert spread.median() == pytest.approx(0.3, rel=0.03)
    t1 = T0 + 3600.0
    for k in range(int(4 * RESIDUAL_WINDOW_S / 10.0)):
        spread.observe(t1 + 10.0 * k, np.full(20, 3.0))
    assert spread.median() == pytest.approx(3.0, rel=0.03)


def test_a_quiet_site_gets_honest_circles() -> None:
    """A tag walking the square through 1.5 dB of fading and no static field, where the site's
    radio prior expects the real building's 6.6 dB: the residuals shrink accuracy_m until about
    68 % of true positions fall within it (all of them would without)."""
    rng = np.random.default_rng(5)
    rows, truth = [], []
    for k in range(900):
        t = T0 + k / 3.0
        angle = 2.0 * np.pi * k / 300.0
        x, y = 5.0 + 3.5 * np.cos(angle), 5.0 + 3.0 * np.sin(angle)
        truth.append(TruthPoint(t, beacon(1), float(x), float(y)))
        for g, (gx, gy) in GATEWAYS.items():
            d = max(float(np.hypot(x - gx, y - gy)), 0.1)
            rssi = mean_rssi_dbm(d, REF_DBM, EXPONENT) + rng.normal(0.0, 1.5)
            rows.append(Reading(t, g, beacon(1), float(rssi)))
    run = EngineReplay(square(), rows, config=EngineConfig(tracking=False))
    fixes = [f for result in run.ticks() for f in result.fixes.fixes()]
    scored = evaluate_truth(fixes[300:], truth)
    assert run.engine.residuals.factor() < 0.5
    assert 0.60 <= scored.summary["within_accuracy"] <= 0.76
    unscaled = scored.accuracy_m / run.engine.residuals.factor()
    assert float(np.mean(scored.errors_m <= unscaled)) > 0.95
