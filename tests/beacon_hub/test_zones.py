"""Zone rules on their own: minimum dwell by fix accuracy, and settling after a track jumped."""

import numpy as np

from beacon_hub.floorplan import FloorPlan
from beacon_hub.zones import ZoneParams, ZoneTracker
from tests.beacon_hub.test_engine import room_site

LEFT, RIGHT = (5.0, 6.0), (15.0, 6.0)
"""The middles of room_site's zones "left" and "right" (10 m wide each)."""
ONE = np.array([0])


def run(
    params: ZoneParams,
    path: list[tuple[float, float]],
    *,
    accuracy_m: float | list[float] = 0.5,
    jump_at: float | None = None,
) -> list[tuple[float, str, str]]:
    """One beacon through `path` (one fix a second from t = 0, with `accuracy_m`, or each with
    its own); its track jumps at `jump_at`. Returns (t, type, zone) of the zone_enter and
    zone_exit events."""
    accuracies = accuracy_m if isinstance(accuracy_m, list) else [accuracy_m] * len(path)
    zones = ZoneTracker(FloorPlan(room_site()), params)
    events = []
    for step, xy in enumerate(path):
        t = float(step)
        if t == jump_at:
            zones.hold(ONE, t)
        accuracy = np.array([accuracies[step]])
        got = zones.update(ONE, t, np.zeros(1, dtype=np.int64), np.array([xy]), accuracy)
        events += [(e.t, e.type, e.zone) for e in got if e.type in ("zone_enter", "zone_exit")]
    return events


def test_a_jump_and_back_within_settle_s_is_no_visit() -> None:
    """A standing cart's track jumps to the next zone for 4 s and comes back: with the jump
    held for settle_s, nothing but the first entry; without, an exit and two entries."""
    path = [LEFT] * 10 + [RIGHT] * 4 + [LEFT] * 10
    held = run(ZoneParams(min_dwell_s=2.0, settle_s=5.0), path, jump_at=10.0)
    assert held == [(0.0, "zone_enter", "left")]
    loose = run(ZoneParams(min_dwell_s=2.0, settle_s=5.0), path)
    assert [e[1:] for e in loose] == [
        ("zone_enter", "left"),
        ("zone_exit", "left"),
        ("zone_enter", "right"),
        ("zone_exit", "right"),
        ("zone_enter", "left"),
    ]


def test_a_jump_that_stays_changes_the_zone_once_settled() -> None:
    path = [LEFT] * 10 + [RIGHT] * 10
    assert run(ZoneParams(min_dwell_s=2.0, settle_s=5.0), path, jump_at=10.0)[-1] == (
        15.0,
        "zone_enter",
        "right",
    )
    assert run(ZoneParams(min_dwell_s=2.0), path, jump_at=10.0)[-1] == (12.0, "zone_enter", "right")


def test_a_less_certain_fix_must_stay_longer_in_the_new_zone() -> None:
    """min_dwell_s holds up to min_dwell_accuracy_m; a fix three times as uncertain needs
    three times as long, and a short excursion of such fixes is no visit at all."""
    params = ZoneParams(min_dwell_s=2.0, min_dwell_accuracy_m=1.5)
    move = [LEFT] * 5 + [RIGHT] * 10
    assert run(params, move, accuracy_m=1.0)[-1] == (7.0, "zone_enter", "right")
    assert run(params, move, accuracy_m=4.5)[-1] == (11.0, "zone_enter", "right")
    excursion = [LEFT] * 5 + [RIGHT] * 4 + [LEFT] * 5
    known_then_vague = [1.0] * 5 + [4.5] * 9
    assert run(params, excursion, accuracy_m=known_then_vague) == [(0.0, "zone_enter", "left")]
    assert len(run(params, excursion, accuracy_m=1.0)) == 5


def test_a_vague_first_fix_enters_no_zone_until_the_fixes_hold_there() -> None:
    """A hub's first tick after a start may hold one gateway's batch: a proximity fix at that
    gateway, tens of metres wide. It entered that gateway's zone at once (and a promotion rule
    there fired); now it is a candidate like any change, and the certain fixes that follow
    decide. A certain first fix still enters at once."""
    params = ZoneParams(min_dwell_s=2.0, min_dwell_accuracy_m=1.5)
    path = [RIGHT] + [LEFT] * 6
    assert run(params, path, accuracy_m=[60.0] + [0.5] * 6) == [(3.0, "zone_enter", "left")]
    assert run(params, path, accuracy_m=0.5) == [
        (0.0, "zone_enter", "right"),
        (3.0, "zone_exit", "right"),
        (3.0, "zone_enter", "left"),
    ]
    # Vague fixes that stay in one zone enter it, after the dwell their accuracy asks; a
    # first fix less vague than FIRST_FIX_VAGUE_M enters at once.
    assert run(params, [RIGHT] * 45, accuracy_m=30.0) == [(40.0, "zone_enter", "right")]
    assert run(params, [RIGHT] * 8, accuracy_m=3.0) == [(0.0, "zone_enter", "right")]


def test_a_beacon_of_a_kind_with_its_own_rules_changes_zone_sooner() -> None:
    """Two beacons walk the same path across the edge at x = 10; the one whose kind says 0.3 m
    and no dwell enters the next zone when its fix is 0.3 m past the edge, the other 0.6 m past
    it and 2 s later, as the params say."""
    zones = ZoneTracker(FloorPlan(room_site()), ZoneParams(hysteresis_m=0.6, min_dwell_s=2.0))
    both = np.array([0, 1])
    zones.ensure(2)
    zones.set_rules(1, hysteresis_m=0.3, min_dwell_s=0.0)
    entered: dict[int, float] = {}
    for step, x in enumerate([9.0, 9.5, 10.2, 10.4, 10.7, 11.0, 11.5, 12.0, 12.5]):
        xy = np.array([[x, 6.0], [x, 6.0]])
        for e in zones.update(both, float(step), np.zeros(2, dtype=np.int64), xy):
            if e.type == "zone_enter" and e.zone == "right":
                entered[e.beacon] = x
    assert entered == {1: 10.4, 0: 11.5}  # 0: past 0.6 m at 10.7, then 2 s
