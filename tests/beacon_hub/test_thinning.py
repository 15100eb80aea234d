"""The stores' deadband: what it keeps, what it may leave out."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from beacon_hub.engine import FixTable
from beacon_hub.thinning import COMPACT_MIN_SLOTS, FixThinner, LastFixes

T0 = 1_735_689_600.0
A, B = "ibeacon:00000000-0000-0000-0000-000000000001:1:1", "eddystone:00000000000000000001:1"


def table(
    t: float,
    beacons: list[str],
    xy: list[tuple[float, float]],
    zones: list[str | None] | None = None,
    levels: list[int] | None = None,
) -> FixTable:
    n = len(beacons)
    return FixTable(
        t=t,
        beacons=beacons,
        x=np.array([p[0] for p in xy], dtype=np.float64),
        y=np.array([p[1] for p in xy], dtype=np.float64),
        accuracy_m=np.arange(1.0, n + 1.0),
        level=np.array(levels or [0] * n, dtype=np.int64),
        zones=zones or [None] * n,
        kinds=["pallet"] * n,
        speed_m_s=np.zeros(n),
        gateway_slots=np.arange(n, dtype=np.intp)[:, None],
        gateway_mask=np.ones((n, 1), dtype=bool),
        gateway_ids=tuple(f"gw-{i}" for i in range(n)),
    )


def test_a_deadband_of_zero_keeps_every_fix() -> None:
    thinner = FixThinner(0.0, 60.0)
    for k in range(3):
        rows = thinner.keep(table(T0 + k, [A, B], [(1.0, 1.0), (2.0, 2.0)]))
        assert rows.tolist() == [0, 1]


def test_a_parked_beacon_is_stored_first_then_at_each_heartbeat() -> None:
    thinner = FixThinner(0.5, 10.0)
    rng = np.random.default_rng(3)
    stored = []
    for k in range(31):
        jitter = rng.uniform(-0.15, 0.15, 2)
        if thinner.keep(table(T0 + k, [A], [(5.0 + jitter[0], 7.0 + jitter[1])])).size:
            stored.append(k)
    assert stored == [0, 10, 20, 30]


def test_a_slow_drift_is_stored_once_it_adds_up_to_the_deadband() -> None:
    """Measured from the last stored fix, not the previous one: 0.125 m a tick is stored every
    fourth tick with a 0.5 m deadband, never lost as four small steps."""
    thinner = FixThinner(0.5, 3600.0)
    stored = [k for k in range(21) if thinner.keep(table(T0 + k, [A], [(0.125 * k, 0.0)])).size]
    assert stored == [0, 4, 8, 12, 16, 20]


def test_zone_and_level_changes_are_stored_however_small_the_move() -> None:
    thinner = FixThinner(1.0, 3600.0)
    assert thinner.keep(table(T0, [A, B], [(0, 0), (9, 9)], ["bay-1", None], [0, 0])).size == 2
    rows = thinner.keep(table(T0 + 1, [A, B], [(0.1, 0), (9, 9)], ["bay-2", None], [0, 0]))
    assert rows.tolist() == [0]
    rows = thinner.keep(table(T0 + 2, [A, B], [(0.1, 0), (9, 9)], ["bay-2", None], [0, 1]))
    assert rows.tolist() == [1]
    rows = thinner.keep(table(T0 + 3, [A, B], [(0.1, 0), (9, 9)], ["bay-2", None], [0, 1]))
    assert rows.tolist() == []


def test_selected_rows_keep_their_columns_together() -> None:
    full = table(T0, [A, B], [(1.0, 2.0), (3.0, 4.0)], ["bay-1", "bay-2"], [0, 1])
    one = full.select(np.array([1], dtype=np.intp))
    assert one.beacons == [B]
    assert (one.x.tolist(), one.y.tolist(), one.level.tolist()) == ([3.0], [4.0], [1])
    assert one.zones == ["bay-2"]
    assert one.accuracy_m.tolist() == [2.0]
    assert one.gateways(0) == ("gw-1",)


@settings(max_examples=60, deadline=None)
@given(
    steps=st.lists(
        st.tuples(st.floats(-0.6, 0.6), st.floats(-0.6, 0.6), st.sampled_from(["z1", "z2", None])),
        min_size=1,
        max_size=60,
    ),
    deadband=st.floats(0.05, 2.0),
    heartbeat=st.integers(1, 20),
)
def test_every_left_out_fix_stood_within_the_deadband_of_the_last_stored_one(
    steps: list[tuple[float, float, str | None]], deadband: float, heartbeat: int
) -> None:
    thinner = FixThinner(deadband, float(heartbeat))
    x = y = 0.0
    last: tuple[float, float, float, str | None] | None = None
    for k, (dx, dy, zone) in enumerate(steps):
        x, y = x + dx, y + dy
        kept = thinner.keep(table(T0 + k, [A], [(x, y)], [zone])).size == 1
        if last is None:
            assert kept  # a beacon's first fix is always stored
        elif not kept:
            assert np.hypot(x - last[1], y - last[2]) < deadband
            assert zone == last[3]
            assert T0 + k - last[0] < heartbeat
        if kept:
            last = (T0 + k, x, y, zone)


def _reference_keep(
    last: dict[str, tuple[float, float, float, int, str | None]],
    tab: FixTable,
    deadband: float,
    heartbeat: float,
) -> list[int]:
    """The thinning rule one beacon at a time, remembering every beacon for ever."""
    rows = []
    for i, b in enumerate(tab.beacons):
        x, y, lv, zone = float(tab.x[i]), float(tab.y[i]), int(tab.level[i]), tab.zones[i]
        held = last.get(b)
        if (
            held is None
            or not tab.t - held[0] < heartbeat
            or held[4] != zone
            or held[3] != lv
            or not np.hypot(x - held[1], y - held[2]) < deadband
        ):
            rows.append(i)
            last[b] = (tab.t, x, y, lv, zone)
    return rows


def test_beacons_that_come_and_go_are_forgotten_and_what_is_stored_does_not_change() -> None:
    """Waves of new ids, each heard for a while and then never again, among beacons that stay
    or come back after gaps: the thinner remembers only what stored within the heartbeat, its
    arrays shrink back, and it stores exactly what remembering every beacon for ever does."""
    deadband, heartbeat = 0.5, 20.0
    thinner = FixThinner(deadband, heartbeat)
    reference: dict[str, tuple[float, float, float, int, str | None]] = {}
    rng = np.random.default_rng(11)
    stay = [f"eddystone:{k:020d}:1" for k in range(50)]
    sizes = []
    for k in range(600):
        wave = [f"ibeacon:00000000-0000-0000-0000-{k // 30:012d}:{j}:1" for j in range(400)]
        back = [b for b in stay if rng.random() < 0.7]
        # away for 9, 19, 20 or 25 ticks at a time: back before, at and after the heartbeat
        back += [f"eddystone:{p:020d}:2" for p in (9, 19, 20, 25) if (k // p) % 2 == 0]
        beacons = back + wave
        n = len(beacons)
        xy = rng.uniform(0.0, 0.6, (n, 2))
        zones = [("z1", "z2", None)[z] for z in rng.integers(0, 3, n)] if k % 7 == 0 else None
        tab = table(T0 + k, beacons, [(a, b) for a, b in xy], zones)
        assert thinner.keep(tab).tolist() == _reference_keep(reference, tab, deadband, heartbeat)
        sizes.append((len(thinner.last), thinner.last.t.shape[0]))
    # 20 waves of 400 ids (8,054 in all); held: the ids stored in the last heartbeat (400 of
    # the current wave, one before it, the 54 that stay) and forgotten slots not yet reclaimed
    assert len(reference) == 8_054
    assert max(s for s, _ in sizes[100:]) <= 3 * (2 * 400 + 54)
    assert max(c for _, c in sizes[100:]) <= 4_096


def test_forgotten_slots_are_reclaimed_keeping_the_others() -> None:
    last = LastFixes()
    for wave in range(50):
        beacons = [f"{wave}-{j}" for j in range(100)] + [A, B]
        k = last.slots(beacons)
        last.t[k], last.x[k] = 1.0 * wave, np.arange(102.0)
        last.zone[k[-2:]] = ["bay-1", "bay-2"]
        for b in beacons[:100]:
            last.forget(b)
    assert len(last) <= 2 * COMPACT_MIN_SLOTS + 102
    assert last.t.shape[0] <= 4 * COMPACT_MIN_SLOTS
    k = last.slots([A, B])
    assert last.t[k].tolist() == [49.0, 49.0]
    assert last.x[k].tolist() == [100.0, 101.0]
    assert last.zone[k].tolist() == ["bay-1", "bay-2"]
