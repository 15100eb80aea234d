"""A beacon's tx power learnt with its position: the filter, the residual it feeds on, and the
engine that uses it only where nothing else says the beacon's power."""

from __future__ import annotations

import math
from typing import Literal

import numpy as np
import pytest

from beacon_hub.calibration import Calibration, GatewayFit
from beacon_hub.engine import Engine, EngineConfig, Readings
from beacon_hub.multilateration import Geometry, mean_residual_db
from beacon_hub.pathloss import mean_rssi_dbm
from beacon_hub.site import Site
from beacon_hub.txoffset import (
    TX_OFFSET_LIMIT_DB,
    TX_OFFSET_PRIOR_SD_DB,
    TxOffsets,
)
from tests.beacon_hub.test_engine import TAG, room_site

STRONGER_DB = 10.0
"""The tag is this much stronger than the site's -59 dBm (a tag at -49 dBm at 1 m)."""
SPOT = (6.0, 5.0)


def test_a_steady_residual_is_learnt_and_its_variance_shrinks() -> None:
    offsets = TxOffsets()
    offsets.ensure(3)
    assert offsets.var_db2[0] == TX_OFFSET_PRIOR_SD_DB**2
    beacons = np.array([0, 2])
    for k in range(200):
        # what is left of a 6 dB offset after what has been learnt
        residual = 6.0 - offsets.offset_db[beacons]
        offsets.update(float(k), beacons, residual, np.full(2, 8.0))
    assert offsets.offset_db[[0, 2]] == pytest.approx([6.0, 6.0], abs=1e-3)
    assert offsets.offset_db[1] == 0.0  # never measured
    assert offsets.var_db2[0] < 1.0


def test_no_measurement_changes_nothing_and_no_offset_runs_away() -> None:
    offsets = TxOffsets()
    offsets.ensure(2)
    offsets.update(1.0, np.array([0, 1]), np.array([np.nan, 500.0]), np.array([1.0, 1e-6]))
    assert offsets.offset_db[0] == 0.0
    assert offsets.var_db2[0] == TX_OFFSET_PRIOR_SD_DB**2
    assert offsets.offset_db[1] == TX_OFFSET_LIMIT_DB


def _geometry(xy: tuple[float, float], offset_db: float, heard: int) -> Geometry:
    gws = np.array([[0.0, 0.0], [20.0, 0.0], [20.0, 12.0], [0.0, 12.0], [10.0, 6.0]])
    d = np.sqrt(((gws - np.array(xy)) ** 2).sum(axis=1) + 4.0)
    shape = (1, gws.shape[0])
    return Geometry(
        gw=np.arange(gws.shape[0])[None, :],
        gw_xy=gws[None],
        dz_m=np.full(shape, 2.0),
        ref_dbm=np.full(shape, -59.0),
        exponent=np.full(shape, 2.0),
        rssi_dbm=(mean_rssi_dbm(d, -59.0 + offset_db, 2.0))[None, :],
        sd_db=np.full(shape, 4.0),
        mask=(np.arange(gws.shape[0]) < heard)[None, :],
    )


def test_the_mean_residual_at_the_true_spot_is_the_offset() -> None:
    mean, var = mean_residual_db(_geometry(SPOT, -3.0, 5), np.array([SPOT]), None, 3)
    assert mean[0] == pytest.approx(-3.0)
    assert var[0] == pytest.approx(16.0 / 5)  # five readings of 4 dB
    # beyond Huber's k every reading counts less, alike: the same mean, less certain
    mean, var = mean_residual_db(_geometry(SPOT, -7.5, 5), np.array([SPOT]), None, 3)
    assert mean[0] == pytest.approx(-7.5)
    assert var[0] == pytest.approx(16.0 / 5 * 7.5 / 4.0 / 1.5)
    mean, var = mean_residual_db(_geometry(SPOT, -7.5, 2), np.array([SPOT]), None, 3)
    assert math.isnan(mean[0])
    assert math.isnan(var[0])


def test_gateways_predicted_near_their_floor_do_not_count() -> None:
    """Far gateways hear only what fading lifted over their floor: their readings lean high.
    Cut on the prediction (moved by the mean residual, so a tag far from the site's reference
    keeps its near gateways), the mean is the near gateways' own."""
    xy = (3.0, 3.0)  # near gateways 0 and 4 (and 3), far from 1 and 2
    for offset_db in (0.0, 10.0):
        geo = _geometry(xy, offset_db, 5)
        geo.rssi_dbm[0, 1:3] += 6.0  # the far two, censored
        at = np.array([xy])
        predicted = geo.rssi_dbm[0] - offset_db - np.r_[0.0, 6.0, 6.0, 0.0, 0.0]
        everything, _ = mean_residual_db(geo, at, None, 3)
        assert everything[0] > offset_db + 1.0
        # between the far and the near, as the cut sees them (moved by the mean residual)
        above = np.full((1, 5), (predicted[1] + predicted[3]) / 2 + everything[0])
        mean, var = mean_residual_db(geo, at, None, 3, above_dbm=above)
        assert mean[0] == pytest.approx(offset_db)
        # three readings of 4 dB, each weighed down alike beyond Huber's k (1.5 sd)
        assert var[0] == pytest.approx(16.0 / 3 * max(1.0, offset_db / 4.0 / 1.5))
        # fewer than three clear of the floor: nothing to say
        mean, _ = mean_residual_db(geo, at, None, 3, above_dbm=above + 100.0)
        assert math.isnan(mean[0])


def _readings(site: Site, t: float, *, announce: bool) -> list[Readings]:
    out = []
    for g in site.gateways:
        d = math.sqrt((g.x - SPOT[0]) ** 2 + (g.y - SPOT[1]) ** 2 + (g.z - 1.0) ** 2)
        rssi = float(mean_rssi_dbm(d, -59.0 + STRONGER_DB, 2.0))
        tx = -59.0 + STRONGER_DB if announce else np.nan
        out.append(
            Readings(g.id, [TAG], np.array([0]), np.array([t]), np.array([rssi]), np.array([tx]))
        )
    return out


def _run(
    tx_offset: Literal["auto", "unannounced", "all", "none"],
    *,
    tracking: bool = True,
    announce: bool = False,
    calibration: Calibration | None = None,
    ticks: int = 90,
) -> tuple[float, float]:
    """(distance of the last fix from the spot, the learnt offset) after `ticks` seconds."""
    site = room_site()
    engine = Engine(site, EngineConfig(tracking=tracking, tx_offset=tx_offset), calibration)
    fixes = None
    for k in range(ticks):
        t = 10.0 + k
        for r in _readings(site, t, announce=announce):
            engine.ingest(r)
        fixes = engine.tick(t + 0.5).fixes
    assert fixes is not None
    error = math.hypot(fixes.x[0] - SPOT[0], fixes.y[0] - SPOT[1])
    return error, float(engine.tx_offsets.offset_db[engine.beacon_index(TAG)])


@pytest.mark.parametrize("tracking", [True, False])
def test_a_tag_stronger_than_the_site_assumes_is_placed_once_its_power_is_learnt(
    tracking: bool,
) -> None:
    error, learnt = _run("auto", tracking=tracking)
    assert learnt == pytest.approx(STRONGER_DB, abs=0.2)
    assert error < 0.1
    error, learnt = _run("none", tracking=tracking)
    assert learnt == 0.0
    assert error > 1.0


def test_what_a_beacon_announces_is_not_second_guessed_unless_asked() -> None:
    error, learnt = _run("auto", announce=True)
    assert (error, learnt) == pytest.approx((0.0, 0.0), abs=0.05)
    # asked to, it learns on top of what it announces: nothing to learn here
    error, learnt = _run("all", announce=True)
    assert learnt == pytest.approx(0.0, abs=0.2)
    assert error < 0.1


def test_a_calibration_measured_the_power_so_auto_learns_none() -> None:
    """The calibration walk fitted the gateways with the tag's own power (here its 10 dB
    are in each gateway's reference): nothing left to learn, and auto does not try."""
    site = room_site()
    fit = GatewayFit(-59.0 + STRONGER_DB, 2.0, 4.0, 3.0, 100)
    calibration = Calibration(site.id, {g.id: fit for g in site.gateways}, None)
    error, learnt = _run("auto", calibration=calibration, ticks=10)
    assert learnt == 0.0
    assert error < 0.1
    _, learnt = _run("unannounced", calibration=calibration, ticks=10)
    assert learnt != 0.0  # asked to, it does (and finds almost nothing)
    assert abs(learnt) < 0.5
