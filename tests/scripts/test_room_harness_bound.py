"""The room harness's Bayes bound: a reference that must stay below the engine, and the figure
that shows which of issue #4's harness goals no estimator can reach (README, Accuracy)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from beacon_hub.csvfiles import Reading
from beacon_hub.site import load_site
from tests.scripts.loading import load_script

bound = load_script("room_harness_bound")


@pytest.fixture(scope="module")
def seed_1(tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict[str, float]]:
    out: dict[str, dict[str, float]] = bound.measure(1, tmp_path_factory.mktemp("room"))
    return out


def test_the_bound_is_below_the_engine(seed_1: dict[str, dict[str, float]]) -> None:
    """The posterior mean under the harness's own law beats any estimator on average; on one
    seed a median could tie, so a centimetre of slack (seed 1: 0.63 vs 0.65, 0.77 vs 0.80,
    tracked 0.39 vs 0.50)."""
    for what in (
        "companion, through the partition",
        "companion, through the door",
        "tracked, both walks",
    ):
        assert seed_1[f"{what}, bound"]["median_m"] <= seed_1[f"{what}, engine"]["median_m"] + 0.01


def test_the_one_sample_median_goal_is_beyond_the_bound(
    seed_1: dict[str, dict[str, float]],
) -> None:
    """Issue #4 asks 0.58 m on each walk; the bound on the walk through the door is higher,
    so the goal is out of reach of any one-sample estimator on this rebuild of the harness."""
    assert seed_1["companion, through the door, bound"]["median_m"] > 0.58


def test_the_engine_s_accuracy_is_honest_on_the_harness(
    seed_1: dict[str, dict[str, float]],
) -> None:
    """The harness has no static field; the residuals' factor finds that out (README: 98 % of
    tracked true positions within accuracy_m before it, 75 % with it). One fix per sample,
    per walk 77 and 74 %: the first walk's early fixes still lean on the radio's prior."""
    assert 0.60 <= seed_1["tracked, both walks, engine"]["within_accuracy"] <= 0.76
    for walk in ("through the partition", "through the door"):
        assert 0.60 <= seed_1[f"companion, {walk}, engine"]["within_accuracy"] <= 0.80


def test_noise_free_samples_give_the_true_position() -> None:
    site = load_site(Path(bound.SITE))
    floor = bound.Floor(site)
    beacon = "ibeacon:e5b9a3c0-2f47-4d1e-9a6b-7c3d1f0e8a52:1:1"
    row, col = 30, 50  # (2.5, 1.5) on the 0.05 m grid
    readings = [
        Reading(
            t=1.0, gateway=gw.id, beacon=beacon, rssi=float(floor.mean_dbm[gw.id][row, col]),
            tx_power=None,
        )
        for gw in site.gateways
    ]  # fmt: skip
    (fix,) = bound.one_sample_bound(site, readings)
    # The posterior mean of one sample is spread by 2.5 dB of noise: near, not on, the truth.
    assert np.hypot(fix.x - 2.5, fix.y - 1.5) < 0.15
    assert fix.zone == "living"
