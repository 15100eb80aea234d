"""The engine core: exact on noise-free data, indifferent to gateway order, honest when lost,
its residual factor judged on windows of the default length whatever its own."""

import math
from typing import Any, Literal

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from numpy.typing import NDArray

from beacon_hub.calibration import Calibration, GatewayFit
from beacon_hub.engine import (
    _PER_BEACON_FILL,
    COMPACT_MIN_SLOTS,
    RESIDUAL_FIT_BEACONS,
    RESIDUAL_FIT_MIN_WINDOW_S,
    RESIDUAL_FIT_SAMPLES,
    RESIDUAL_FIT_WINDOW_S,
    Engine,
    EngineConfig,
    Readings,
)
from beacon_hub.floorplan import FLOOR
from beacon_hub.multilateration import Geometry, solve
from beacon_hub.obstruction import body_shadowed
from beacon_hub.pathloss import mean_rssi_dbm
from beacon_hub.radiomap import RadioMap
from beacon_hub.residuals import RESIDUAL_WINDOW_S
from beacon_hub.site import Site, validate_site_data

TAG = "ibeacon:e2c56db5-dffb-48d2-b060-d0f5a71096e0:1:7"
PALLET = "ibeacon:e2c56db5-dffb-48d2-b060-d0f5a71096e0:2:9"


def room_site(**changes: Any) -> Site:
    data: dict[str, Any] = {
        "id": "room",
        "kind": "lab",
        "radio": {"ref_rssi_1m_dbm": -59.0, "path_loss_exponent": 2.0, "shadowing_db": 4.0},
        "levels": [{"outline": [[0, 0], [20, 0], [20, 12], [0, 12]]}],
        "gateways": [
            {"id": f"g{i}", "x": x, "y": y, "z": 3.0}
            for i, (x, y) in enumerate([(0, 0), (20, 0), (20, 12), (0, 12), (10, 6)])
        ],
        "beacon_kinds": [
            {
                "kind": "cart",
                "match": ["ibeacon:e2c56db5-dffb-48d2-b060-d0f5a71096e0:1:*"],
                "height_m": 1.0,
            },
            {
                "kind": "pallet",
                "match": ["ibeacon:e2c56db5-dffb-48d2-b060-d0f5a71096e0:2:*"],
                "height_m": 1.0,
            },
        ],
        "zones": [
            {"id": "left", "kind": "aisle", "polygon": [[0, 0], [10, 0], [10, 12], [0, 12]]},
            {"id": "right", "kind": "aisle", "polygon": [[10, 0], [20, 0], [20, 12], [10, 12]]},
        ],
    }
    data.update(changes)
    return validate_site_data(data, "room")


def exact_readings(site: Site, beacon: str, xy: tuple[float, float], t: float) -> list[Readings]:
    out = []
    for g in site.gateways:
        d = np.sqrt((g.x - xy[0]) ** 2 + (g.y - xy[1]) ** 2 + (g.z - 1.0) ** 2)
        rssi = float(mean_rssi_dbm(d, -59.0, 2.0))
        out.append(
            Readings(
                g.id, [beacon], np.array([0]), np.array([t]), np.array([rssi]), np.array([np.nan])
            )
        )
    return out


@settings(max_examples=60, deadline=None)
@given(st.floats(1.0, 19.0), st.floats(1.0, 11.0))
def test_noise_free_readings_give_the_exact_position(x: float, y: float) -> None:
    site = room_site()
    engine = Engine(site, EngineConfig(tracking=False))
    for r in exact_readings(site, TAG, (x, y), 10.0):
        engine.ingest(r)
    fixes = engine.tick(10.5).fixes
    assert fixes.beacons == [TAG]
    assert abs(fixes.x[0] - x) < 0.05
    assert abs(fixes.y[0] - y) < 0.05


def test_permuting_gateways_changes_nothing() -> None:
    rng = np.random.default_rng(3)
    b, k = 50, 6
    gw_xy = rng.uniform(0, 30, (b, k, 2))
    rssi = rng.uniform(-90, -50, (b, k))
    geo = Geometry(
        gw=np.zeros((b, k), dtype=np.intp),
        gw_xy=gw_xy,
        dz_m=np.full((b, k), 2.0),
        ref_dbm=np.full((b, k), -59.0),
        exponent=np.full((b, k), 2.2),
        rssi_dbm=rssi,
        sd_db=np.full((b, k), 5.0),
        mask=np.ones((b, k), dtype=bool),
    )
    perm = rng.permutation(k)
    shuffled = Geometry(
        geo.gw,
        gw_xy[:, perm],
        geo.dz_m,
        geo.ref_dbm,
        geo.exponent,
        rssi[:, perm],
        geo.sd_db,
        geo.mask,
    )
    a, c = solve(geo), solve(shuffled)
    np.testing.assert_allclose(a.xy, c.xy, atol=1e-9)
    np.testing.assert_allclose(a.cov, c.cov, atol=1e-9)


def test_a_changing_announced_power_is_the_newest_whatever_the_batch_order() -> None:
    """A tag that steps its tx power within a tick: three gateways heard it announce -59 dBm
    at t, two -75 dBm a moment later. The newest announcement counts, however the gateways'
    batches are ordered (the last ingested counted: 0.4 m and 6 m of accuracy_m apart)."""
    site = room_site()
    out: dict[str, tuple[float, float, float]] = {}
    for order in ("forward", "reversed"):
        engine = Engine(site, EngineConfig(tracking=False))
        batches = []
        for i, g in enumerate(site.gateways):
            tx, t = (-59.0, 10.0) if i < 3 else (-75.0, 10.2)
            d = math.dist((g.x, g.y, g.z), (8.0, 5.0, 1.0))
            rssi = float(mean_rssi_dbm(d, tx, 2.0))
            one = (np.array([0]), np.array([t]), np.array([rssi]), np.array([tx]))
            batches.append(Readings(g.id, [TAG], *one))
        for r in batches if order == "forward" else batches[::-1]:
            engine.ingest(r)
        fixes = engine.tick(10.5).fixes
        out[order] = (float(fixes.x[0]), float(fixes.y[0]), float(fixes.accuracy_m[0]))
        assert engine._offset_db[0] == -75.0 - site.radio.ref_rssi_1m_dbm
    assert out["forward"] == out["reversed"]


def test_a_calibrated_map_uses_the_far_gateways_too() -> None:
    """Without a calibrated map the 10 strongest gateways place a beacon; with one, every
    gateway that hears it (up to 32): far gateways' weak readings rule out rival places."""
    grid = [(x, y) for x in (0.0, 5.0, 10.0, 15.0, 20.0) for y in (0.0, 4.0, 8.0, 12.0)]
    site = room_site(
        gateways=[{"id": f"g{i}", "x": x, "y": y, "z": 3.0} for i, (x, y) in enumerate(grid)]
    )
    gateways = tuple(g.id for g in site.gateways)
    fit = GatewayFit(-59.0, 2.0, 4.0, 3.0, 100)
    calibration = Calibration(
        site.id, dict.fromkeys(gateways, fit), RadioMap.for_site(site, gateways)
    )
    used = {}
    for name, cal in (("uncalibrated", None), ("calibrated", calibration)):
        engine = Engine(site, EngineConfig(tracking=False), cal)
        for r in exact_readings(site, TAG, (6.0, 5.0), 10.0):
            engine.ingest(r)
        fixes = engine.tick(10.5).fixes
        used[name] = len(fixes.gateways(0))
        assert abs(fixes.x[0] - 6.0) < 0.3
        assert abs(fixes.y[0] - 5.0) < 0.3
    assert used == {"uncalibrated": 10, "calibrated": 20}


def test_one_fix_per_sample_with_a_map_stays_on_a_concave_floor() -> None:
    """The grid's fix is its likelihood's mean: readings that fit both arms of a U-shaped room
    put that mean in the notch between them, off the floor (13.35, 4.48), unless projected."""
    u_shape = [[0, 0], [20, 0], [20, 12], [14, 12], [14, 4], [6, 4], [6, 12], [0, 12]]
    corners = [(3, 11), (17, 11), (10, 1), (3, 5), (17, 5)]
    site = room_site(
        levels=[{"outline": u_shape}],
        zones=[],
        gateways=[{"id": f"g{i}", "x": x, "y": y, "z": 3.0} for i, (x, y) in enumerate(corners)],
    )
    gateways = tuple(g.id for g in site.gateways)
    fit = GatewayFit(-59.0, 2.0, 4.0, 3.0, 100)
    calibration = Calibration(
        site.id, dict.fromkeys(gateways, fit), RadioMap.for_site(site, gateways)
    )
    engine = Engine(site, EngineConfig(tracking=False), calibration)
    for g, rssi in zip(gateways, (-80.0, -70.0, -70.0, -70.0, -70.0), strict=True):
        one = (np.array([0]), np.array([10.0]), np.array([rssi]), np.array([np.nan]))
        engine.ingest(Readings(g, [TAG], *one))
    fixes = engine.tick(10.5).fixes
    xy = np.array([[fixes.x[0], fixes.y[0]]])
    assert engine.plan.allowed(0, xy, FLOOR)[0], xy


@pytest.mark.parametrize("unheard", [0, 8])
def test_a_gateway_that_does_not_hear_a_beacon_rules_out_places_beside_it(unheard: int) -> None:
    """Two gateways hear the tag at (10, 10) and cannot tell it from its mirror (10, 2) across
    their line; a third beside the mirror is up (it hears a pallet at -77 dBm, its floor so
    far) but not the tag: there it would read -67 dBm, by the truth -79 (below its floor). With
    the map likelihood weighing unheard gateways the fix is on the true side; without, the
    mirror keeps its weight."""
    site = room_site(
        gateways=[
            {"id": "g0", "x": 0.0, "y": 6.0, "z": 3.0},
            {"id": "g1", "x": 20.0, "y": 6.0, "z": 3.0},
            {"id": "g2", "x": 10.0, "y": 0.5, "z": 3.0},
        ]
    )
    gateways = tuple(g.id for g in site.gateways)
    fit = GatewayFit(-59.0, 2.0, 4.0, 3.0, 100)
    calibration = Calibration(
        site.id, dict.fromkeys(gateways, fit), RadioMap.for_site(site, gateways)
    )
    engine = Engine(site, EngineConfig(tracking=False, unheard_gateways=unheard), calibration)
    heard = {r.gateway: r for r in exact_readings(site, TAG, (10.0, 10.0), 10.0)}
    engine.ingest(heard["g0"])
    engine.ingest(heard["g1"])
    engine.ingest(
        next(r for r in exact_readings(site, PALLET, (18.0, 1.0), 10.0) if r.gateway == "g2")
    )
    fixes = engine.tick(10.5).fixes
    y = fixes.y[fixes.beacons.index(TAG)]
    if unheard:
        assert y > 7.5, y  # 7.9: the two gateways leave the basin long across their line
    else:
        assert y < 6.5, y  # 6.0: both mirrors


def _one_fix(
    site: Site, calibration: Calibration | None, tracking: bool
) -> tuple[float, float, float]:
    # tx power not learnt: only the calibration differs (test_txoffset.py learns it)
    engine = Engine(site, EngineConfig(tracking=tracking, tx_offset="none"), calibration)
    fixes = None
    for t in (10.0, 11.0, 12.0):
        for r in exact_readings(site, TAG, (6.0, 5.0), t):
            engine.ingest(r)
        fixes = engine.tick(t + 0.5).fixes
    assert fixes is not None
    return float(fixes.x[0]), float(fixes.y[0]), float(fixes.accuracy_m[0])


@pytest.mark.parametrize("tracking", [False, True])
def test_a_gateway_no_calibration_fitted_widens_the_accuracy_not_the_fix(tracking: bool) -> None:
    """Without a fit a gateway also carries the static field a fit would absorb: a bias, so
    accuracy_m widens while the position (and the tracker's weights) stay as they were."""
    site = room_site()
    fit = GatewayFit(-59.0, 2.0, 4.0, 3.0, 100)
    calibration = Calibration(site.id, {g.id: fit for g in site.gateways}, None)
    x0, y0, fitted = _one_fix(site, calibration, tracking)
    x1, y1, unfitted = _one_fix(site, None, tracking)
    assert (x1, y1) == pytest.approx((x0, y0), abs=1e-9)
    assert unfitted > 1.1 * fitted


def test_reference_beacons_alone_do_not_narrow_the_accuracy() -> None:
    """A map learnt from a few reference beacons corrects the field near them only: the
    static spread elsewhere, and accuracy_m, stay what they are without references."""
    plain = room_site()
    with_reference = room_site(
        reference_beacons=[{"beacon": PALLET, "x": 18.0, "y": 10.0, "z": 1.0}]
    )
    assert _one_fix(with_reference, None, True)[2] == pytest.approx(_one_fix(plain, None, True)[2])


def test_a_beacon_barely_heard_gets_a_large_accuracy_not_a_crash() -> None:
    site = room_site()
    engine = Engine(site, EngineConfig(tracking=False))
    g = site.gateways[0]
    engine.ingest(
        Readings(g.id, [TAG], np.array([0]), np.array([1.0]), np.array([-99.0]), np.array([np.nan]))
    )
    fixes = engine.tick(1.5).fixes
    assert len(fixes) == 1
    assert fixes.accuracy_m[0] > 10.0
    assert np.isfinite(fixes.x[0])


def test_an_engine_resuming_after_stored_ticks_counts_older_readings_late() -> None:
    """A restarted hub's engine took readings from before its predecessor's last tick as
    accepted, though no tick of its own would ever hold them."""
    engine = Engine(room_site())
    engine.resume(100.0)
    counts = engine.ingest(
        Readings(
            "g0",
            [TAG],
            np.array([0, 0]),
            np.array([-20.0, 99.0]),
            np.array([-60.0, -60.0]),
            np.full(2, np.nan),
        )
    )
    assert (counts.accepted, counts.late) == (1, 1)
    engine.resume(50.0)  # never back
    assert engine.watermark == 100.0


def test_late_and_impossible_readings_are_counted_and_dropped() -> None:
    site = room_site()
    engine = Engine(site)
    engine.tick(100.0)
    counts = engine.ingest(
        Readings(
            "g0",
            [TAG],
            np.array([0, 0, 0]),
            np.array([97.0, 99.0, 100.5]),
            np.array([-60.0, -60.0, 30.0]),
            np.full(3, np.nan),
        )
    )
    assert (counts.accepted, counts.late, counts.impossible_rssi) == (1, 1, 1)
    unknown = engine.ingest(
        Readings(
            "nope", [TAG], np.array([0]), np.array([100.0]), np.array([-60.0]), np.array([np.nan])
        )
    )
    assert unknown.unknown_gateway == 1
    assert engine.counts.accepted == 1


def test_zone_events_and_lost_beacon() -> None:
    site = room_site()
    engine = Engine(site, EngineConfig(min_dwell_s=2.0, lost_after_s=10.0))
    events = []
    t = 0.0
    for step in range(40):
        t = float(step)
        x = 5.0 if step < 20 else 15.0
        for r in exact_readings(site, TAG, (x, 6.0), t - 0.5):
            engine.ingest(r)
        events += engine.tick(t).events
    for step in range(40, 60):
        events += engine.tick(float(step)).events
    kinds = [(e.type, e.zone) for e in events]
    assert kinds[0] == ("zone_enter", "left")
    assert ("zone_exit", "left") in kinds
    assert ("zone_enter", "right") in kinds
    assert kinds.count(("zone_enter", "right")) == 1
    assert kinds[-1][0] == "beacon_lost"
    assert sum(1 for k in kinds if k[0] == "beacon_lost") == 1


def test_a_track_that_restarts_elsewhere_settles_before_its_zone_changes() -> None:
    """A tag teleported from left to right: its track refuses 3 fixes, restarts at t = 23
    and the zone follows min_dwell_s after (25); with zone_settle_s, not before 23 + 5."""

    def entered_right(settle_s: float) -> float:
        site = room_site()
        config = EngineConfig(min_dwell_s=2.0, min_dwell_accuracy_m=0.0, zone_settle_s=settle_s)
        engine = Engine(site, config)
        for step in range(40):
            for r in exact_readings(site, TAG, (5.0 if step < 20 else 15.0, 6.0), step - 0.5):
                engine.ingest(r)
            for e in engine.tick(float(step)).events:
                if (e.type, e.zone) == ("zone_enter", "right"):
                    return e.t
        raise AssertionError("never entered right")

    assert entered_right(0.0) == 25.0
    assert entered_right(5.0) == 28.0


def test_parked_pallet_that_moves_fires_pallet_moved() -> None:
    site = room_site()
    engine = Engine(site, EngineConfig(parked_after_s=20.0, moved_m=2.5))
    events = []
    for step in range(120):
        x = 4.0 if step < 60 else 16.0
        for r in exact_readings(site, PALLET, (x, 6.0), step - 0.5):
            engine.ingest(r)
        events += engine.tick(float(step)).events
    moved = [e for e in events if e.type == "pallet_moved"]
    assert len(moved) == 1
    assert moved[0].data["from_x"] == pytest.approx(4.0, abs=0.5)


def test_a_parked_pallet_whose_fix_strays_has_not_moved() -> None:
    """A pallet standing still for 5 minutes, heard with 9 dB of noise per sample by 3 of the
    gateways: its fix strays metres from where it parked, but its readings keep fitting that
    spot, so no pallet_moved."""
    site = room_site()
    spot = (5.0, 4.0)
    heard = site.gateways[:3]
    rng = np.random.default_rng(11)
    engine = Engine(site, EngineConfig(parked_after_s=20.0, moved_m=2.5))
    events, strays = [], []
    for step in range(300):
        for g in heard:
            t = step - rng.uniform(0.05, 0.95, 3)
            d = np.sqrt((g.x - spot[0]) ** 2 + (g.y - spot[1]) ** 2 + (g.z - 1.0) ** 2)
            rssi = mean_rssi_dbm(d, -59.0, 2.0) + rng.normal(0.0, 9.0, 3)
            engine.ingest(
                Readings(g.id, [PALLET], np.zeros(3, dtype=np.int64), t, rssi, np.full(3, np.nan))
            )
        result = engine.tick(float(step))
        events += result.events
        strays.append(np.hypot(result.fixes.x[0] - spot[0], result.fixes.y[0] - spot[1]))
    assert max(strays[30:]) > 2.5 + 1.0  # it did stray past moved_m from the spot
    assert [e for e in events if e.type == "pallet_moved"] == []


@pytest.mark.parametrize("solver", ["auto", "grid"])
def test_plan_losses_explain_a_wall(solver: Literal["auto", "grid"]) -> None:
    """Readings through a 10 dB wall: expecting the wall puts the beacon where it is, and the
    grid searches from where the wall-aware least squares starts, not the plan-blind one."""
    site = room_site(
        levels=[
            {
                "outline": [[0, 0], [20, 0], [20, 12], [0, 12]],
                "walls": [{"start": [10, 0], "end": [10, 12], "loss_db": 10.0}],
            }
        ]
    )
    from beacon_hub.obstruction import LevelObstructions  # noqa: PLC0415

    wall = LevelObstructions.of(site.levels[0])
    gw = np.array([[g.x, g.y, g.z] for g in site.gateways])
    errors = {}
    for plan_losses in (True, False):
        config = EngineConfig(tracking=False, plan_losses=plan_losses, solver=solver)
        engine = Engine(site, config)
        point = np.array([[4.0, 7.0, 1.0]])
        d = np.sqrt(((point - gw) ** 2).sum(axis=1))
        rssi = mean_rssi_dbm(d, -59.0, 2.0) - wall.loss_db(point, gw)[0]
        for g, r in zip(site.gateways, rssi, strict=True):
            engine.ingest(
                Readings(
                    g.id, [TAG], np.array([0]), np.array([1.0]), np.array([r]), np.array([np.nan])
                )
            )
        fixes = engine.tick(1.5).fixes
        errors[plan_losses] = float(np.hypot(fixes.x[0] - 4.0, fixes.y[0] - 7.0))
    # The grid's posterior mean over one sample's wide likelihood leans to the room's middle
    # (0.41 m); started from the plan-blind least squares it searched around 1.6 m off (0.73).
    assert errors[True] < (0.5 if solver == "grid" else 0.3)
    assert errors[False] > 2 * errors[True]


def test_an_extrapolation_across_the_wall_is_pulled_back_onto_the_floor() -> None:
    """_floor_mean: a spread that reaches past the wall at x = 20 m yields the mean of its part
    on the floor (inside, nearer the wall than the middle); a spread clear of every edge, or
    one on no level's plan, is left where it is."""
    engine = Engine(room_site())
    xy = np.array([[20.3, 6.0], [10.0, 6.0], [10.0, 6.0]])
    cov = np.array([np.eye(2) * 0.5**2] * 3)
    level = np.array([0, 0, 7])
    area = np.full(3, FLOOR, dtype=np.int8)
    out = engine._floor_mean(level, xy, cov, area)
    assert 19.0 < out[0, 0] < 20.0
    assert out[0, 1] == pytest.approx(6.0, abs=1e-9)
    np.testing.assert_array_equal(out[1], xy[1])  # skipped: its disc is clear of the walls
    np.testing.assert_allclose(out[2], xy[2], rtol=0, atol=1e-9)


def rack_site() -> Site:
    """room_site with a rack row along x 2..4 (two bays) and an aisle x 4..8 beside it."""
    return room_site(
        levels=[
            {
                "outline": [[0, 0], [20, 0], [20, 12], [0, 12]],
                "obstacles": [
                    {
                        "id": "rack",
                        "kind": "rack",
                        "loss_db": 0.0,
                        "polygon": [[2, 1], [4, 1], [4, 11], [2, 11]],
                    }
                ],
            }
        ],
        zones=[
            {"id": "bay-1", "kind": "bay", "polygon": [[2, 1], [4, 1], [4, 6], [2, 6]]},
            {"id": "bay-2", "kind": "bay", "polygon": [[2, 6], [4, 6], [4, 11], [2, 11]]},
            {"id": "aisle", "kind": "aisle", "polygon": [[4, 0], [8, 0], [8, 12], [4, 12]]},
        ],
    )


@pytest.mark.parametrize("solver", ["nlls", "grid"])
def test_a_still_pallet_is_kept_out_of_the_aisle(solver: str) -> None:
    """Readings that put a pallet 0.6 m into the aisle: a still pallet is stored, so it is
    shown at the face of the rack beside it; with no traffic zones it stays where the
    readings put it, and a cart there stays in the aisle either way."""
    site = rack_site()
    spot = (4.6, 3.0)
    out: dict[tuple[str, bool], tuple[float, float, str | None]] = {}
    for beacon in (PALLET, TAG):
        for keep_out in (True, False):
            traffic = ("aisle", "corridor") if keep_out else ()
            engine = Engine(site, EngineConfig(solver=solver, traffic_zones=traffic))  # type: ignore[arg-type]
            for step in range(10):
                for r in exact_readings(site, beacon, spot, step - 0.5):
                    engine.ingest(r)
                fixes = engine.tick(float(step)).fixes
            out[beacon, keep_out] = (float(fixes.x[0]), float(fixes.y[0]), fixes.zones[0])
    x, y, zone = out[PALLET, True]
    assert zone == "bay-1"
    tolerance_m = 0.2 if solver == "nlls" else 0.5  # the grid's lattice, without a map
    assert 3.8 < x < 4.0
    assert y == pytest.approx(3.0, abs=tolerance_m)
    x, y, zone = out[PALLET, False]
    assert zone == "aisle"
    assert np.hypot(x - spot[0], y - spot[1]) < tolerance_m
    for keep_out in (True, False):
        assert out[TAG, keep_out][2] == "aisle"


def test_a_zone_that_overrides_the_height_is_heeded() -> None:
    """A pallet on a 5 m beam under 8 m gateways, in a zone whose heights_m says so: once the
    engine has placed it in that zone it ranges from 5 m, and noise-free readings give its
    position; assuming the kind's 1 m instead puts it well off."""
    gateways = [
        {"id": f"g{i}", "x": x, "y": y, "z": 8.0}
        for i, (x, y) in enumerate([(0, 0), (20, 0), (20, 12), (0, 12), (10, 6)])
    ]
    spot, z = (6.0, 4.0), 5.0
    errors = {}
    for override in (True, False):
        zone: dict[str, Any] = {
            "id": "reserve",
            "kind": "bay",
            "polygon": [[2, 2], [10, 2], [10, 8], [2, 8]],
        }
        if override:
            zone["heights_m"] = {"pallet": z}
        site = room_site(gateways=gateways, zones=[zone])
        # a learnt tx power would absorb part of the wrong height's loss (test_txoffset.py)
        engine = Engine(site, EngineConfig(tracking=False, tx_offset="none"))
        for step in range(4):
            for g in site.gateways:
                d = float(np.sqrt((g.x - spot[0]) ** 2 + (g.y - spot[1]) ** 2 + (g.z - z) ** 2))
                rssi = float(mean_rssi_dbm(d, -59.0, 2.0))
                engine.ingest(
                    Readings(
                        g.id,
                        [PALLET],
                        np.array([0]),
                        np.array([step - 0.5]),
                        np.array([rssi]),
                        np.array([np.nan]),
                    )
                )
            fixes = engine.tick(float(step)).fixes
        assert fixes.zones[0] == "reserve"
        errors[override] = float(np.hypot(fixes.x[0] - spot[0], fixes.y[0] - spot[1]))
    assert errors[True] < 0.05
    assert errors[False] > 10 * errors[True]


def _cart_walks_then_stands(site: Site, body_until_s: float) -> tuple[Engine, list[float]]:
    """A cart walks east along y = 4 at 1 m/s from x = 2 to 10, then stands; until
    `body_until_s` its shopper is behind it (6 dB off the paths body_shadowed gives), then
    gone. Exact readings otherwise; returns the engine and each standing tick's error. The
    tag's tx power is not learnt: it would absorb part of the body's loss while it walks."""
    engine = Engine(site, EngineConfig(tx_offset="none"))
    errors = []
    gw_xyz = np.array([[g.x, g.y, g.z] for g in site.gateways])
    for k in range(30):
        t = float(k)
        xy = np.array([min(2.0 + t, 10.0), 4.0])
        d = np.sqrt(((gw_xyz[:, :2] - xy) ** 2).sum(axis=1) + (gw_xyz[:, 2] - 1.0) ** 2)
        behind = body_shadowed(gw_xyz[:, :2] - xy, gw_xyz[:, 2] - 1.0, np.float64(1.0), 0.0)
        rssi = mean_rssi_dbm(d, -59.0, 2.0) - np.where(behind & (t < body_until_s), 6.0, 0.0)
        for g, r in zip(site.gateways, rssi, strict=True):
            engine.ingest(
                Readings(
                    g.id, [TAG], np.array([0]), np.array([t]), np.array([r]), np.array([np.nan])
                )
            )
        fixes = engine.tick(t + 0.5).fixes
        if t >= 10.0:
            errors.append(float(np.hypot(fixes.x[0] - xy[0], fixes.y[0] - xy[1])))
    return engine, errors


def test_a_shopper_behind_a_cart_is_expected_until_the_readings_say_they_left() -> None:
    """With the cart kind's body_loss_db the engine expects the shopper on the side the cart
    came from (the two western gateways here): standing, its fix is nearer than an engine's
    that does not; once the readings lose the body, the evidence for it turns negative and
    the fix, pulled west by the first body-less windows, comes back."""
    kinds = room_site().model_dump()["beacon_kinds"]
    kinds[0]["body_loss_db"] = 6.0
    aware = room_site(beacon_kinds=kinds)
    _, plain = _cart_walks_then_stands(room_site(), body_until_s=30.0)
    _, expecting = _cart_walks_then_stands(aware, body_until_s=30.0)
    assert max(expecting[5:]) < 0.5 * min(plain[5:]), (expecting, plain)
    engine, left = _cart_walks_then_stands(aware, body_until_s=18.0)
    assert engine._body_nats[engine.beacon_index(TAG)] < 0
    assert left[-1] < 0.8 * max(left), left


def test_the_residual_fit_window_is_the_default_engine_s() -> None:
    default = EngineConfig()
    assert default.window_s == RESIDUAL_FIT_WINDOW_S
    assert default.window_samples == RESIDUAL_FIT_SAMPLES
    assert default.tick_interval_s == RESIDUAL_FIT_MIN_WINDOW_S


def test_a_short_window_still_sees_a_site_without_a_static_field() -> None:
    """Pallets read with fresh noise on every advert (no static field: a lab, the room
    harness): the residual factor narrows accuracy_m. With a tick and window of 0.2 s, one
    sample a gateway cannot tell that apart from fading, so the factor is taken on windows of
    the default's length (RESIDUAL_FIT_WINDOW_S) and says what the default engine says."""
    site = room_site()
    rng = np.random.default_rng(3)
    spots = [(4.0, 3.0), (15.0, 9.0), (9.0, 5.0), (17.0, 2.0)]
    beacons = [f"ibeacon:e2c56db5-dffb-48d2-b060-d0f5a71096e0:2:{i}" for i in range(len(spots))]
    short = Engine(site, EngineConfig(tick_interval_s=0.2, window_s=0.2))
    default = Engine(site, EngineConfig())
    for step in range(300):  # 60 s of adverts at 5 Hz
        t = 0.2 * step
        for g in site.gateways:
            d = np.hypot(
                np.array([s[0] for s in spots]) - g.x, np.array([s[1] for s in spots]) - g.y
            )
            rssi = mean_rssi_dbm(np.sqrt(d**2 + (g.z - 1.0) ** 2), -59.0, 2.0)
            rssi = rssi + rng.normal(0.0, site.radio.shadowing_db, rssi.shape)
            batch = Readings(
                g.id,
                beacons,
                np.arange(len(beacons)),
                np.full(len(beacons), t - 0.01),
                rssi,
                np.full(len(beacons), np.nan),
            )
            short.ingest(batch)
            default.ingest(batch)
        short.tick(t)
        if step % 5 == 0:
            default.tick(t)
    assert default.residuals.factor() < 0.8
    assert abs(short.residuals.factor() - default.residuals.factor()) < 0.15


def test_a_large_site_fits_its_residuals_on_a_turning_share_of_the_beacons() -> None:
    """With 3.5 x RESIDUAL_FIT_BEACONS beacons, each tick's extra least-squares fit (a window
    shorter than RESIDUAL_FIT_WINDOW_S) takes a quarter of them, and four ticks take each
    beacon once: the factor is a running median, and fitting all doubled the bench's tick."""
    site = room_site()
    rng = np.random.default_rng(8)
    n = int(3.5 * RESIDUAL_FIT_BEACONS)
    spots = rng.uniform(1.0, 17.0, (n, 2))
    beacons = [f"ibeacon:e2c56db5-dffb-48d2-b060-d0f5a71096e0:3:{i}" for i in range(n)]
    engine = Engine(site, EngineConfig(tick_interval_s=0.5, window_s=0.5))
    seen: list[float] = []
    for step in range(12):
        t = 0.5 * step
        for g in site.gateways:
            d = np.hypot(spots[:, 0] - g.x, spots[:, 1] - g.y)
            rssi = mean_rssi_dbm(np.sqrt(d**2 + (g.z - 1.0) ** 2), -59.0, 2.0)
            engine.ingest(
                Readings(
                    g.id,
                    beacons,
                    np.arange(n),
                    np.full(n, t - 0.01),
                    rssi + rng.normal(0.0, 3.0, n),
                    np.full(n, np.nan),
                )
            )
        # what the counts keep of the ticks before, after forgetting over this tick's 0.5 s
        kept = float(engine.residuals.counts.sum()) * math.exp(-0.5 / RESIDUAL_WINDOW_S)
        assert len(engine.tick(t).fixes) == n
        seen.append(float(engine.residuals.counts.sum()) - kept)
    # each of the last four ticks (their windows full) a quarter, one share after the other
    assert seen[-4:] == pytest.approx([n / 4] * 4, abs=1.0)


# ---------------------------------------------------------------- forgetting (forget_after_s)

NEVER = 1e12
"""forget_after_s that no test reaches: forgetting off."""


def _ids(major: int, count: int, start: int = 0) -> list[str]:
    return [
        f"ibeacon:e2c56db5-dffb-48d2-b060-d0f5a71096e0:{major}:{i}"
        for i in range(start, start + count)
    ]


def _heard(
    site: Site,
    spots: dict[str, tuple[float, float]],
    t: float,
    rng: np.random.Generator | None = None,
    ref_dbm: float = -59.0,
) -> list[Readings]:
    """One batch per gateway: every beacon at its spot, one sample at t (whole dBm, as HCI
    reports, with 4 dB of noise when `rng` is given)."""
    names = list(spots)
    xy = np.array([spots[b] for b in names]).reshape(-1, 2)
    out = []
    for g in site.gateways:
        d = np.sqrt((xy[:, 0] - g.x) ** 2 + (xy[:, 1] - g.y) ** 2 + (g.z - 1.0) ** 2)
        rssi = mean_rssi_dbm(d, ref_dbm, 2.0)
        if rng is not None:
            rssi = rssi + rng.normal(0.0, 4.0, rssi.shape)
        n = len(names)
        out.append(
            Readings(g.id, names, np.arange(n), np.full(n, t), np.round(rssi), np.full(n, np.nan))
        )
    return out


def _per_beacon(engine: Engine) -> dict[str, NDArray[Any]]:
    """Every per-beacon array by name: the engine's own and its parts'."""
    arrays = {name: getattr(engine, name) for name in _PER_BEACON_FILL}
    for part in ("tracks", "zones", "rivals", "tx_offsets", "parked"):
        if getattr(engine, part) is None:
            continue
        for name, value in vars(getattr(engine, part)).items():
            if isinstance(value, np.ndarray) and name not in _NOT_PER_BEACON:
                arrays[f"{part}.{name}"] = value
    if engine.parked is not None:
        # a still spell's sums live in a pool row of their own (basins.ParkedEvidence.row):
        # each beacon's, zeros without a spell
        ev = engine.parked
        held = ev.row >= 0
        for name, pool in (("total", ev.total), ("recent", ev.recent)):
            rows = np.zeros((held.shape[0], pool.shape[1]), dtype=pool.dtype)
            rows[held] = pool[ev.row[held]]
            arrays[f"parked.{name}"] = rows
    return arrays


_NOT_PER_BEACON = {"offsets", "_offsets_sq", "_names", "_levels", "row", "total", "recent", "_free"}
"""Arrays of the engine's parts that are not one row per beacon: candidates, zones' names and
levels, the still spells' pool and their row numbers (which compaction renumbers)."""


def _capacities(engine: Engine) -> set[int]:
    """Rows of every per-beacon array: one per slot, whatever compaction did."""
    return {value.shape[0] for value in _per_beacon(engine).values()}


def _same_rows(a: Engine, rows_a: list[int], b: Engine, rows_b: list[int], skip: str = "") -> None:
    arrays_b = _per_beacon(b)
    for name, value in _per_beacon(a).items():
        if name != skip:
            nan = value.dtype.kind == "f"
            assert np.array_equal(value[rows_a], arrays_b[name][rows_b], equal_nan=nan), name


def _passing_recording(site: Site, beacons: int, seconds: int, tick_s: float) -> list[Any]:
    """Pallets standing and carts walking, with noise; every third beacon falls silent at a
    fifth of the run for good (interleaved: the ones that stay are renumbered by different
    amounts), and a few new ones arrive at half of it. Per tick, (t, batches)."""
    rng = np.random.default_rng(5)
    names = [b for pair in zip(_ids(2, beacons), _ids(1, beacons), strict=True) for b in pair]
    names = names[:beacons]
    late = _ids(2, 3, start=beacons)
    spots = {b: (rng.uniform(1.0, 19.0), rng.uniform(1.0, 11.0)) for b in names + late}
    out = []
    for k in range(int(seconds / tick_s)):
        t = k * tick_s
        here = {}
        for i, b in enumerate(names + late):
            if (b in late and t < seconds / 2) or (i % 3 == 1 and t >= seconds / 5):
                continue
            x, y = spots[b]
            if ":1:" in b:  # a cart walks to and fro
                x = 10.0 + 8.0 * math.sin(t / 7.0 + i)
            here[b] = (x, y)
        out.append((t, _heard(site, here, t - 0.1 * tick_s, rng)))
    return out


def _table(fixes: Any) -> tuple[Any, ...]:
    return (
        fixes.beacons,
        fixes.x.tolist(),
        fixes.y.tolist(),
        fixes.accuracy_m.tolist(),
        fixes.level.tolist(),
        fixes.zones,
        fixes.kinds,
        fixes.speed_m_s.tolist(),
        fixes.gateway_slots.tolist(),
        fixes.gateway_mask.tolist(),
    )


@pytest.mark.parametrize(
    ("config", "beacons", "seconds"),
    [
        # the grid: rival searches and still pallets' sums, taken in turns
        (EngineConfig(solver="grid", basin_checks_per_tick=1, lost_after_s=3.0), 9, 60),
        # more than RESIDUAL_FIT_BEACONS with a short window: the residual fit's turning share
        (EngineConfig(tick_interval_s=0.5, window_s=0.5, lost_after_s=2.0), 800, 12),
    ],
    ids=["grid", "residual-share"],
)
def test_forgetting_changes_nothing_for_the_beacons_that_stay(
    config: EngineConfig, beacons: int, seconds: int
) -> None:
    """The same recording with forgetting on (compacted after every tick) and off: beacons
    that went silent for good are forgotten and the others renumbered, and every fix and event
    is the same, to the bit. Turns (whose rival is searched, which still pallet adds its
    window, which share fits the residuals) go by the order first heard, not the slot."""
    site = room_site()
    recording = _passing_recording(site, beacons, seconds, config.tick_interval_s)
    on = Engine(site, config.model_copy(update={"forget_after_s": 2.0}))
    off = Engine(site, config.model_copy(update={"forget_after_s": NEVER}))
    for t, batches in recording:
        for batch in batches:
            on.ingest(batch)
            off.ingest(batch)
        a, b = on.tick(t + config.tick_interval_s / 2), off.tick(t + config.tick_interval_s / 2)
        on.compact()
        assert _table(a.fixes) == _table(b.fixes)
        assert a.events == b.events
        assert _capacities(on) == {on.tracks.capacity}
        # and what they carry to the next tick, rival and still spell included
        ids = list(on._beacon_index)
        _same_rows(on, [on.beacon_index(i) for i in ids], off, [off.beacon_index(i) for i in ids])
    assert len(on.beacon_ids) < len(off.beacon_ids) - beacons // 4  # it did forget


def test_waves_of_passing_beacons_leave_memory_bounded() -> None:
    """Waves of new ids (a hostile dongle's random ones, pallets through a dock), each heard
    for two seconds and then silent for good: the slots and the arrays' capacity stop growing
    once the first waves are forgotten; without forgetting they grow with every wave."""
    site = room_site()
    wave, waves = 40, 48
    engines = {
        forget: Engine(site, EngineConfig(lost_after_s=3.0, forget_after_s=forget))
        for forget in (5.0, NEVER)
    }
    capacity: dict[float, list[int]] = {forget: [] for forget in engines}
    slots: dict[float, list[int]] = {forget: [] for forget in engines}
    rng = np.random.default_rng(2)
    t = 0.0
    for w in range(waves):
        spots = {b: (rng.uniform(1, 19), rng.uniform(1, 11)) for b in _ids(4, wave, w * wave)}
        for k in range(6):
            t += 1.0
            for engine in engines.values():
                if k < 2:
                    for batch in _heard(site, spots, t - 0.5):
                        engine.ingest(batch)
                engine.tick(t)
                assert _capacities(engine) == {engine.tracks.capacity}
        for forget, engine in engines.items():
            capacity[forget].append(engine.tracks.capacity)
            slots[forget].append(len(engine.beacon_ids))
    half = waves // 2
    assert capacity[5.0][half:] == [capacity[5.0][half]] * (waves - half)
    assert max(slots[5.0][half:]) <= max(slots[5.0][:half])
    assert max(slots[5.0]) < 2 * COMPACT_MIN_SLOTS + wave
    assert slots[NEVER][-1] == wave * waves  # every id ever heard
    assert capacity[NEVER][-1] >= 4 * capacity[5.0][-1]


@pytest.mark.parametrize("compacted", [False, True])
def test_a_forgotten_beacon_heard_again_starts_as_a_new_one(compacted: bool) -> None:
    """A tag 8 dB weaker than the site's reference, which it does not announce: the engine
    learns the offset. Lost and then forgotten, it comes back (its old slot reclaimed or still
    idle): every per-beacon row it has is a never-heard beacon's, and its first fix is the one
    an engine that never heard it gives. Not forgotten (only lost), it keeps what it learnt."""
    site = room_site()
    spot = {TAG: (6.0, 5.0)}
    back = 100.0

    def returning(forget_after_s: float) -> Engine:
        engine = Engine(site, EngineConfig(lost_after_s=5.0, forget_after_s=forget_after_s))
        for step in range(30):
            for batch in _heard(site, spot, step - 0.5, ref_dbm=-67.0):
                engine.ingest(batch)
            engine.tick(float(step))
        for step in range(30, int(back)):
            engine.tick(float(step))
        if compacted:
            engine.compact()
        return engine

    fresh, forgot, kept = Engine(site), returning(10.0), returning(NEVER)
    assert kept.tx_offsets.offset_db[kept.beacon_index(TAG)] < -4.0  # learnt over 30 s
    assert forgot.beacon_ids == ([] if compacted else [TAG])  # an idle slot, no longer its
    for engine in (fresh, forgot, kept):
        for batch in _heard(site, spot, back - 0.5, ref_dbm=-67.0):
            engine.ingest(batch)
    assert forgot.beacon_index(TAG) == (0 if compacted else 1)
    # its turn is the next serial: the only row that differs from a new engine's
    _same_rows(forgot, [forgot.beacon_index(TAG)], fresh, [fresh.beacon_index(TAG)], "_serial")
    results = {
        name: e.tick(back) for name, e in (("fresh", fresh), ("forgot", forgot), ("kept", kept))
    }
    xy = {name: (r.fixes.x[0], r.fixes.y[0]) for name, r in results.items()}
    assert xy["forgot"] == xy["fresh"]
    assert xy["kept"] != xy["fresh"]
    assert [e.type for e in results["forgot"].events] == ["zone_enter"]


def test_a_beacon_that_changes_level_is_placed_and_zoned_on_its_new_level() -> None:
    """A mezzanine above part of the ground floor: a tag carried up is placed by the
    mezzanine's gateways at once (the ground floor's track, moved up, put it 7 m off) and
    enters the mezzanine's zone after the minimum dwell (the ground floor's zone, whose edge
    passes 0.3 m from it in the plan, kept it by hysteresis)."""
    ground = [[0, 0], [30, 0], [30, 20], [0, 20]]
    mezzanine = [[5, 5], [15, 5], [15, 12], [5, 12]]
    site = room_site(
        levels=[{"level": 0, "outline": ground}, {"level": 1, "outline": mezzanine}],
        gateways=[{"id": f"a{i}", "x": x, "y": y, "z": 3.0} for i, (x, y) in enumerate(ground)]
        + [
            {"id": f"b{i}", "x": x, "y": y, "z": 3.0, "level": 1}
            for i, (x, y) in enumerate(mezzanine)
        ],
        zones=[
            {"id": "west", "kind": "room", "polygon": [[0, 0], [8.3, 0], [8.3, 20], [0, 20]]},
            {"id": "mezzanine", "kind": "room", "polygon": mezzanine, "level": 1},
        ],
    )
    engine = Engine(site, EngineConfig())
    fixes = []
    for k in range(16):
        level, xy = (0, (4.0, 15.0)) if k < 8 else (1, (8.0, 10.0))
        for r in exact_readings(site, TAG, xy, 100.0 + k):
            if site.gateways[[g.id for g in site.gateways].index(r.gateway)].level == level:
                engine.ingest(r)
        fixes.append(engine.tick(100.5 + k).fixes)
    up = fixes[8]
    assert (int(up.level[0]), up.zones[0]) == (1, "west")  # the dwell rule holds it 2 s
    assert math.dist((up.x[0], up.y[0]), (8.0, 10.0)) < 0.5
    assert [f.zones[0] for f in fixes[11:]] == ["mezzanine"] * 5
