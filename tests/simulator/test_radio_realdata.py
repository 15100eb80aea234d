"""The radio's defaults come from real data, and the simulator reproduces that data's statistics.

First the dataset itself must show the figures simulator/radio.py is built on (so a changed
dataset or fit fails here, not silently in the model). Then the robot's own route through the
flat is simulated with the per-anchor fits as the site's radio, binned into the dataset's 1/3 s
bins, and the same statistics must come out within the stated tolerances.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from beacon_hub.site import Site, validate_site_data
from simulator.radio import FLAT_BURST_LOSS, REALISTIC_RADIO, RadioConfig, RadioModel
from tests.simulator.flatdata import TAG_HEIGHT_M, Flat, RadioStats, load_flat, radio_stats

BIN_S = 1 / 3
"""The dataset's preprocessing averages RSSI into 1/3 s bins."""
ADVERT_INTERVAL_S = 0.25
"""About 1.3 packets per heard bin, as the dataset's share of non-integer (averaged) bins shows."""
ADV_DELAY_MAX_S = 0.010
"""advDelay: 0-10 ms random delay added to each advertising event (Bluetooth Core spec)."""


@pytest.fixture(scope="module")
def flat() -> Flat:
    return load_flat()


@pytest.fixture(scope="module")
def real(flat: Flat) -> RadioStats:
    return radio_stats(flat.t_s, flat.xy, flat.rssi, flat.anchors)


def test_dataset_shows_the_figures_the_defaults_are_built_on(real: RadioStats) -> None:
    assert real.pooled_sd_db == pytest.approx(6.6, abs=0.1)
    assert real.residual_sd_db.min() == pytest.approx(5.1, abs=0.1)
    assert real.residual_sd_db.max() == pytest.approx(7.7, abs=0.1)
    assert real.exponent.min() == pytest.approx(1.5, abs=0.1)
    assert real.exponent.max() == pytest.approx(3.1, abs=0.1)
    # static part: sqrt(revisit correlation) of the total spread is about 4.5 dB
    assert real.revisit_corr == pytest.approx(0.46, abs=0.03)
    assert np.sqrt(real.revisit_corr) * real.pooled_sd_db == pytest.approx(4.5, abs=0.2)
    corr = real.corr_by_distance
    assert corr[(0.5, 1.0)] == pytest.approx(0.34, abs=0.03)
    # issue 3 said 0.12 for 1-2 m; the same method measures 0.15 (pooled over anchors: 0.19)
    assert corr[(1.0, 2.0)] == pytest.approx(0.15, abs=0.03)
    assert abs(corr[(2.0, 3.0)]) < 0.05


def _flat_site(flat: Flat, real: RadioStats) -> Site:
    gateways: list[dict[str, Any]] = [
        {
            "id": f"anchor-{k + 1}",
            "x": float(a[0]),
            "y": float(a[1]),
            "z": float(a[2]),
            "radio": {
                "ref_rssi_1m_dbm": float(real.ref_rssi_1m_dbm[k]),
                "path_loss_exponent": float(real.exponent[k]),
                "shadowing_db": float(real.residual_sd_db[k]),
            },
        }
        for k, a in enumerate(flat.anchors)
    ]
    doc = {
        "id": "flat-calib2021",
        "kind": "lab",
        "levels": [{"outline": [list(p) for p in flat.outline]}],
        "gateways": gateways,
    }
    return validate_site_data(doc, "flat-calib2021 (test)")


def simulate_binned(
    flat: Flat, site: Site, seed: int, radio: RadioConfig = REALISTIC_RADIO
) -> np.ndarray:
    """Simulated RSSI of the robot's own route, averaged into the dataset's bins (NaN: none)."""
    rng = np.random.default_rng(seed)
    model = RadioModel(site, radio, rng)
    start, end = flat.t_s[0], flat.t_s[-1]
    times = np.arange(start, end, ADVERT_INTERVAL_S)
    times += rng.uniform(0.0, ADV_DELAY_MAX_S, times.size)
    row = np.clip(np.searchsorted(flat.t_s, times), 1, flat.t_s.size - 1)
    row -= times - flat.t_s[row - 1] < flat.t_s[row] - times
    keep = np.abs(times - flat.t_s[row]) <= BIN_S / 2  # drops the 87-minute gap
    times, row = times[keep], row[keep]
    xyz = np.column_stack(
        [
            np.interp(times, flat.t_s, flat.xy[:, 0]),
            np.interp(times, flat.t_s, flat.xy[:, 1]),
            np.full(times.size, TAG_HEIGHT_M),
        ]
    )
    mean = model.mean_dbm(xyz, np.zeros(times.size, dtype=np.int64))
    # slow fading advanced bin by bin, as the scenario loop advances it window by window
    slow = model.new_slow_state(1, rng)
    link = np.empty_like(mean)
    bounds = np.flatnonzero(np.diff(row)) + 1
    last_t = times[0]
    for chunk in np.split(np.arange(times.size), bounds):
        model.step_slow(slow, float(times[chunk[0]] - last_t), rng)
        last_t = times[chunk[0]]
        link[chunk] = mean[chunk] + slow
    rssi = model.packets(link, rng)
    total = np.zeros((flat.t_s.size, model.n_gateways))
    count = np.zeros_like(total)
    heard = ~np.isnan(rssi)
    np.add.at(total, row, np.where(heard, rssi, 0.0))
    np.add.at(count, row, heard)
    with np.errstate(invalid="ignore"):
        return np.where(count > 0, total / count, np.nan)


SEEDS = (1, 2, 3)
"""One realisation of a 1.5 m field over a 51 m2 flat is a small sample (per-seed spread of the
correlations is about 0.05): the comparison averages three seeds."""


def test_simulated_route_reproduces_the_real_statistics(flat: Flat, real: RadioStats) -> None:
    site = _flat_site(flat, real)
    runs = [
        radio_stats(flat.t_s, flat.xy, simulate_binned(flat, site, seed), flat.anchors)
        for seed in SEEDS
    ]
    pooled = np.mean([s.pooled_sd_db for s in runs])
    assert pooled == pytest.approx(real.pooled_sd_db, abs=0.5)
    sd = np.mean([s.residual_sd_db for s in runs], axis=0)
    np.testing.assert_allclose(sd, real.residual_sd_db, atol=1.5)  # per-anchor field luck
    revisit = np.mean([s.revisit_corr for s in runs])
    assert revisit == pytest.approx(real.revisit_corr, abs=0.08)
    by_distance = {
        b: float(np.mean([s.corr_by_distance[b] for s in runs])) for b in real.corr_by_distance
    }
    for band, value in real.corr_by_distance.items():
        assert by_distance[band] == pytest.approx(value, abs=0.08), band
    # correlation falls with distance, as in the real flat
    c = [float(revisit), *by_distance.values()]
    assert c == sorted(c, reverse=True)
    # the fit recovers the configured anchors on average (a field realisation biases each run)
    exponent = np.mean([s.exponent for s in runs], axis=0)
    assert np.median(np.abs(exponent - real.exponent)) < 0.6
    for s in runs:
        assert np.all(s.missing < 0.2)


def test_burst_loss_brings_the_real_flats_misses_to_the_simulated_copy(
    flat: Flat, real: RadioStats
) -> None:
    """The independent losses leave the robot's route with 3.5 % of its bins missing and 0.2 % of
    its rows missing 3 or more of the 6 anchors at once, against 9.5 % and 9.1 % real; bursts
    of FLAT_BURST_LOSS of the adverts, most gateways each, give both back."""
    site = _flat_site(flat, real)

    def misses(rssi: np.ndarray) -> tuple[float, float]:
        missing = np.isnan(rssi)
        return float(missing.mean()), float(np.mean(missing.sum(axis=1) >= 3))

    real_bins, real_rows = misses(flat.rssi)
    assert real_bins == pytest.approx(0.095, abs=0.002)
    assert real_rows == pytest.approx(0.091, abs=0.002)
    radio = REALISTIC_RADIO.with_(burst_loss=FLAT_BURST_LOSS)
    plain = np.mean([misses(simulate_binned(flat, site, seed)) for seed in SEEDS], axis=0)
    bursty = np.mean([misses(simulate_binned(flat, site, seed, radio)) for seed in SEEDS], axis=0)
    assert plain[1] < 0.01
    assert bursty[0] == pytest.approx(real_bins, abs=0.01)
    assert bursty[1] == pytest.approx(real_rows, abs=0.01)
