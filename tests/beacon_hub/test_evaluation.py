"""`beacon-hub eval`: crafted fixes with known errors give exactly the known figures."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from beacon_hub.csvfiles import EVENTS, FIXES, TRUTH, CsvWriter, EventRow, TruthPoint
from beacon_hub.errors import BeaconHubError
from beacon_hub.evaluation import (
    EvaluationError,
    error_statistics,
    evaluate_path,
    evaluate_truth,
    neighbour_zones,
    pallet_moves,
    path_distance_m,
    read_path,
    run_eval,
    write_path,
    zone_flaps,
)
from beacon_hub.site import Site, validate_site_data
from beacon_hub.wire import Fix

B1 = "ibeacon:e2c56db5-dffb-48d2-b060-d0f5a71096e0:1:1"
B2 = "ibeacon:e2c56db5-dffb-48d2-b060-d0f5a71096e0:1:2"
T0 = 1_700_000_000.0


def fix(
    t: float,
    x: float,
    y: float,
    *,
    accuracy_m: float = 1.0,
    zone: str | None = None,
    beacon: str = B1,
    heard: int = 0,
) -> Fix:
    gateways = tuple(f"g{i}" for i in range(heard))
    return Fix(t=t, beacon=beacon, x=x, y=y, accuracy_m=accuracy_m, zone=zone, gateways=gateways)


def still_truth(beacon: str = B1, seconds: int = 20, zone: str | None = None) -> list[TruthPoint]:
    """The beacon stands at the origin, one sample a second."""
    return [TruthPoint(T0 + s, beacon, 0.0, 0.0, zone=zone) for s in range(seconds + 1)]


def two_rooms() -> Site:
    """Two 4 m x 4 m rooms side by side: west x 0..4, east x 4..8."""
    return validate_site_data(
        {
            "id": "two-rooms",
            "kind": "lab",
            "levels": [{"outline": [[0.0, 0.0], [8.0, 0.0], [8.0, 4.0], [0.0, 4.0]]}],
            "gateways": [{"id": "g1", "x": 1.0, "y": 1.0, "z": 2.0}],
            "zones": [
                {
                    "id": "west",
                    "kind": "room",
                    "polygon": [[0.0, 0.0], [4.0, 0.0], [4.0, 4.0], [0.0, 4.0]],
                },
                {
                    "id": "east",
                    "kind": "room",
                    "polygon": [[4.0, 0.0], [8.0, 0.0], [8.0, 4.0], [4.0, 4.0]],
                },
            ],
        },
        "two-rooms",
    )


# --- error statistics ------------------------------------------------------------------------


def test_errors_zero_to_nine_give_exact_statistics() -> None:
    fixes = [fix(T0 + i, float(i), 0.0) for i in range(10)]
    s = evaluate_truth(fixes, still_truth()).summary
    assert s["scored"] == 10
    assert s["median_m"] == pytest.approx(4.5)
    assert s["p90_m"] == pytest.approx(8.1)
    assert s["p95_m"] == pytest.approx(8.55)
    assert s["mean_m"] == pytest.approx(4.5)
    assert s["max_m"] == pytest.approx(9.0)
    assert s["beacons"] == 1


def test_truth_is_interpolated_in_time() -> None:
    truth = [TruthPoint(T0, B1, 0.0, 0.0), TruthPoint(T0 + 2.0, B1, 4.0, 0.0)]
    # At T0 + 0.5 the truth is at (1, 0): a fix at (1, 3) is 3 m off.
    s = evaluate_truth([fix(T0 + 0.5, 1.0, 3.0)], truth).summary
    assert s["median_m"] == pytest.approx(3.0)


def test_fixes_outside_the_truth_span_or_without_truth_are_counted_not_scored() -> None:
    truth = still_truth(seconds=10)
    fixes = [
        fix(T0 - 1.0, 0.0, 0.0),
        fix(T0 + 5.0, 3.0, 4.0),
        fix(T0 + 11.0, 0.0, 0.0),
        fix(T0 + 5.0, 0.0, 0.0, beacon=B2),
    ]
    s = evaluate_truth(fixes, truth).summary
    assert (s["fixes"], s["scored"]) == (4, 1)
    assert s["unscored_outside_span"] == 2
    assert s["unscored_no_truth"] == 1
    assert s["median_m"] == pytest.approx(5.0)
    assert (s["beacons"], s["beacons_scored"]) == (2, 1)


def test_a_gap_in_the_truth_is_not_interpolated_across() -> None:
    truth = [TruthPoint(T0, B1, 0.0, 0.0), TruthPoint(T0 + 600.0, B1, 0.0, 0.0)]
    fixes = [fix(T0, 1.0, 0.0), fix(T0 + 300.0, 1.0, 0.0)]
    s = evaluate_truth(fixes, truth).summary
    assert (s["scored"], s["unscored_truth_gap"]) == (1, 1)


def test_no_overlap_is_an_error() -> None:
    with pytest.raises(EvaluationError, match="no fix overlaps"):
        evaluate_truth([fix(T0 + 100.0, 0.0, 0.0)], still_truth(seconds=10))


@given(
    st.lists(st.floats(0.0, 100.0), min_size=1, max_size=50),
    st.floats(-1e3, 1e3),
    st.floats(-1e3, 1e3),
)
@settings(max_examples=50, deadline=None)
def test_statistics_do_not_depend_on_where_the_site_is(
    errors: list[float], dx: float, dy: float
) -> None:
    fixes = [fix(T0 + i * 0.01, e + dx, dy) for i, e in enumerate(errors)]
    truth = [TruthPoint(T0, B1, dx, dy), TruthPoint(T0 + 1.0, B1, dx, dy)]
    s = evaluate_truth(fixes, truth).summary
    expected = error_statistics(np.asarray(errors))
    for key, value in expected.items():
        assert s[key] == pytest.approx(value, abs=1e-6)
    assert s["median_m"] <= s["p90_m"] <= s["p95_m"] <= s["max_m"]


# --- within_accuracy -------------------------------------------------------------------------


def test_within_accuracy_counts_fixes_whose_radius_holds_the_truth() -> None:
    # Errors 1, 2, 3, 4 m against radii 2, 2, 2, 5 m: the 1, 2 (on the edge) and 4 m ones hold it.
    fixes = [
        fix(T0 + 1, 1.0, 0.0, accuracy_m=2.0),
        fix(T0 + 2, 0.0, 2.0, accuracy_m=2.0),
        fix(T0 + 3, 3.0, 0.0, accuracy_m=2.0),
        fix(T0 + 4, 0.0, 4.0, accuracy_m=5.0),
    ]
    assert evaluate_truth(fixes, still_truth()).summary["within_accuracy"] == pytest.approx(0.75)


def test_errors_by_the_gateways_that_heard_the_beacon() -> None:
    # heard by 1 (errors 4, 6 m), 2 (3 m), 5 and 6 (1, 2 m), 9 (0.5 m); radius 2.5 m throughout
    cases = [(1, 4.0), (1, 6.0), (2, 3.0), (5, 1.0), (6, 2.0), (9, 0.5)]
    fixes = [
        fix(T0 + 1 + i, error, 0.0, accuracy_m=2.5, heard=heard)
        for i, (heard, error) in enumerate(cases)
    ]
    groups = evaluate_truth(fixes, still_truth()).summary["by_gateways"]
    assert groups == {
        "1": {"fixes": 2, "median_m": 5.0, "p90_m": 5.8, "within_accuracy": 0.0},
        "2": {"fixes": 1, "median_m": 3.0, "p90_m": 3.0, "within_accuracy": 0.0},
        "4-6": {"fixes": 2, "median_m": 1.5, "p90_m": 1.9, "within_accuracy": 1.0},
        "7+": {"fixes": 1, "median_m": 0.5, "p90_m": 0.5, "within_accuracy": 1.0},
    }
    # a fixes file that names no gateways has nothing to group by
    unnamed = [fix(T0 + 1, 1.0, 0.0), fix(T0 + 2, 2.0, 0.0)]
    assert evaluate_truth(unnamed, still_truth()).summary["by_gateways"] is None


@given(st.lists(st.floats(0.0, 50.0), min_size=1, max_size=30), st.floats(0.0, 60.0))
@settings(max_examples=50, deadline=None)
def test_within_accuracy_is_the_share_of_errors_inside_a_common_radius(
    errors: list[float], radius: float
) -> None:
    fixes = [fix(T0 + i * 0.1, e, 0.0, accuracy_m=radius) for i, e in enumerate(errors)]
    s = evaluate_truth(fixes, still_truth()).summary
    assert s["within_accuracy"] == pytest.approx(np.mean(np.asarray(errors) <= radius))


# --- path scoring ----------------------------------------------------------------------------

L_PATH = np.asarray([[0.0, 0.0, 4.0, 0.0], [4.0, 0.0, 4.0, 3.0]])
"""An L: east along y = 0 to x = 4, then north to y = 3."""


def test_points_on_the_path_score_zero_and_off_it_their_distance() -> None:
    points = np.asarray(
        [
            [0.0, 0.0],  # start
            [2.0, 0.0],  # on the first leg
            [4.0, 1.5],  # on the second leg
            [2.0, 1.0],  # 1 m off the first leg (2 m off the second)
            [6.0, 3.0],  # 2 m east of the end of the second leg
            [-3.0, -4.0],  # 5 m from the start, beyond the end of the segment
            [5.0, -1.0],  # beyond the corner: sqrt(2) from (4, 0)
        ]
    )
    d = path_distance_m(points, L_PATH)
    assert d == pytest.approx([0.0, 0.0, 0.0, 1.0, 2.0, 5.0, math.sqrt(2.0)])


def test_path_mode_summary() -> None:
    fixes = [fix(T0 + i, 2.0, float(i), accuracy_m=1.5) for i in range(4)]  # 0, 1, 2, 3 m off
    s = evaluate_path(fixes, L_PATH).summary
    assert s["mode"] == "path"
    assert s["median_m"] == pytest.approx(1.5)
    assert s["max_m"] == pytest.approx(2.0)  # (2, 3) is 2 m from the second leg
    assert s["within_accuracy"] == pytest.approx(0.5)
    assert s["latency_s"] is None
    assert s["coverage"] is None
    assert s["zone_accuracy"] is None


def test_a_zero_length_segment_is_a_point() -> None:
    d = path_distance_m(np.asarray([[3.0, 4.0]]), np.asarray([[0.0, 0.0, 0.0, 0.0]]))
    assert d == pytest.approx([5.0])


@given(
    st.lists(
        st.tuples(*(st.floats(-50.0, 50.0) for _ in range(4))),
        min_size=1,
        max_size=8,
    ),
    st.tuples(st.floats(-50.0, 50.0), st.floats(-50.0, 50.0)),
)
@settings(max_examples=100, deadline=None)
def test_path_distance_is_at_most_the_distance_to_any_segment_end(
    segments: list[tuple[float, float, float, float]], point: tuple[float, float]
) -> None:
    seg = np.asarray(segments)
    d = float(path_distance_m(np.asarray([point]), seg)[0])
    ends = np.concatenate([seg[:, 0:2], seg[:, 2:4]])
    assert d >= 0.0
    assert d <= float(np.min(np.hypot(*(ends - np.asarray(point)).T))) + 1e-9


def test_path_file_round_trip_and_refusal(tmp_path: Path) -> None:
    target = tmp_path / "p.csv"
    write_path(target, L_PATH.tolist())
    assert read_path(target) == pytest.approx(L_PATH)
    target.write_text("x0,y0,x1,y1\n1.46,6.24,0.28, 6.24\n", encoding="utf-8")
    assert read_path(target) == pytest.approx(np.asarray([[1.46, 6.24, 0.28, 6.24]]))
    target.write_text("x0,y0,x1,y1\n1,2,three,4\n", encoding="utf-8")
    with pytest.raises(EvaluationError, match=r"p\.csv:2: column x1"):
        read_path(target)
    target.write_text("a,b\n1,2\n", encoding="utf-8")
    with pytest.raises(EvaluationError, match=r"p\.csv:1: not a path file"):
        read_path(target)
    target.write_bytes("\ufeffx0,y0,x1,y1\n0,0,4,0\n".encode())  # Excel's UTF-8 mark
    assert read_path(target) == pytest.approx(L_PATH[:1])


@pytest.mark.parametrize("rows", ["1,1,1,1\n", "1,1,1,1\n1,1,1,1\n", "1,1,1,1\n2,5,2,5\n"])
def test_a_path_without_length_is_refused(tmp_path: Path, rows: str) -> None:
    """One point, or points only: every fix was scored against a point and accepted."""
    target = tmp_path / "p.csv"
    target.write_text("x0,y0,x1,y1\n" + rows, encoding="utf-8")
    with pytest.raises(EvaluationError, match=r"p\.csv: the path has no length"):
        read_path(target)
    target.write_text("x0,y0,x1,y1\n" + rows + "1,1,1,2\n", encoding="utf-8")
    assert read_path(target).shape[0] == rows.count("\n") + 1


# --- zones -----------------------------------------------------------------------------------


def test_zone_flaps_on_a_crafted_sequence() -> None:
    # west x3 | east for 4 s | west | east for 20 s | west, then a lone blip to None and back.
    zones = ["west", "west", "west", "east", "east", "west", "east", "west", None, "west"]
    times = [0.0, 1.0, 2.0, 3.0, 5.0, 7.0, 8.0, 28.0, 29.0, 30.0]
    flaps, hours = zone_flaps(np.asarray(times) + T0, [B1] * len(zones), zones)
    # Flaps: east (3 -> 7 s, 4 s), and None (29 -> 30 s). The west run 7 -> 8 s sits between two
    # east runs and lasted 1 s: a flap too. east 8 -> 28 s lasted 20 s: not a flap.
    assert flaps == 3
    assert hours == pytest.approx(30.0 / 3600.0)


def test_moving_on_or_coming_back_late_is_not_a_flap() -> None:
    zones = ["a", "b", "c", "c", "d", "c"]  # d lasted 11 s before c again
    flaps, _ = zone_flaps(np.asarray([0.0, 1.0, 2.0, 3.0, 4.0, 15.0]), [B1] * 6, zones)
    assert flaps == 0


def test_flaps_are_counted_per_beacon_in_time_order() -> None:
    # Interleaved and shuffled beacons: each beacon alone goes a, b, a within 2 s.
    t = np.asarray([2.0, 0.0, 1.0, 0.5, 1.5, 2.5])
    beacons = [B1, B1, B1, B2, B2, B2]
    zones = ["a", "a", "b", "x", "y", "x"]
    flaps, hours = zone_flaps(t, beacons, zones)
    assert flaps == 2
    assert hours == pytest.approx(4.0 / 3600.0)


def test_zone_accuracy_from_the_truth_zone_column() -> None:
    truth = still_truth(zone="west")
    fixes = [fix(T0 + i, 0.0, 0.0, zone=z) for i, z in enumerate(["west", "west", "east", None])]
    s = evaluate_truth(fixes, truth).summary
    assert s["zone_source"] == "truth"
    assert s["zone_accuracy"] == pytest.approx(0.5)
    assert s["zone_accuracy_outside_band"] is None


def test_zone_accuracy_from_the_site_with_a_band_at_zone_edges() -> None:
    # The beacon walks east along y = 2 from x = 0.5 to x = 7.5, 1 m a second.
    truth = [TruthPoint(T0 + s, B1, 0.5 + s, 2.0) for s in range(8)]
    # Fixes call the zone by x < 4: right everywhere except at x = 3.5 (says east) and 4.5 (west).
    calls = ["west", "west", "west", "east", "west", "east", "east", "east"]
    fixes = [fix(T0 + s, 0.5 + s, 2.0, zone=z) for s, z in enumerate(calls)]
    s = evaluate_truth(fixes, truth, two_rooms(), band_m=1.0).summary
    assert s["zone_source"] == "site"
    assert s["zone_accuracy"] == pytest.approx(6 / 8)
    # Within 1 m of an edge: x = 0.5, 3.5, 4.5, 7.5 (outer walls are zone edges too), y = 2 is
    # 2 m from the north and south edges. Outside the band: x = 1.5, 2.5, 5.5, 6.5, all right.
    assert s["zone_scored_outside_band"] == 4
    assert s["zone_accuracy_outside_band"] == pytest.approx(1.0)
    assert s["zone_flaps"] == 2  # east at 3.5 (1 s) between west runs, and west at 4.5 likewise


def test_zone_accuracy_is_null_without_zones() -> None:
    s = evaluate_truth([fix(T0, 0.0, 0.0, zone="west")], still_truth()).summary
    assert s["zone_source"] is None
    assert s["zone_accuracy"] is None


# --- standing still: settled errors, bays, flaps while still --------------------------------


def rack() -> Site:
    """Three 1.2 x 2.7 m bays in a row (a1, a2, a3) and one across a 3.3 m aisle (b1)."""

    def bay(zone_id: str, x0: float, y0: float) -> dict[str, object]:
        return {
            "id": zone_id,
            "kind": "bay",
            "polygon": [[x0, y0], [x0 + 1.2, y0], [x0 + 1.2, y0 + 2.7], [x0, y0 + 2.7]],
        }

    return validate_site_data(
        {
            "id": "rack",
            "kind": "warehouse",
            "levels": [{"outline": [[0.0, 0.0], [10.0, 0.0], [10.0, 10.0], [0.0, 10.0]]}],
            "gateways": [{"id": "g1", "x": 1.0, "y": 1.0, "z": 6.0}],
            "zones": [
                bay("a1", 0.0, 0.0),
                bay("a2", 0.0, 2.7),
                bay("a3", 0.0, 5.4),
                bay("b1", 4.5, 0.0),
            ],
        },
        "rack",
    )


def test_neighbour_bays_share_an_edge() -> None:
    near = neighbour_zones(list(rack().zones))
    assert near == {"a1": {"a1", "a2"}, "a2": {"a1", "a2", "a3"}, "a3": {"a2", "a3"}, "b1": {"b1"}}


def test_still_scores_count_only_settled_fixes_and_bays() -> None:
    """A pallet drives for 10 s, then stands in bay a2 for 100 s: only fixes 60 s or more into
    the stop are settled; their bay calls score right (a2), neighbour (a1, a3) or wrong (b1)."""
    truth = [TruthPoint(T0 + s, B1, 0.6, 4.0 + s * 0.5, zone=None) for s in range(-10, 0)]
    truth += [TruthPoint(T0 + s, B1, 0.6, 4.0, zone="a2") for s in range(101)]
    calls = {61: ("a2", 0.1), 70: ("a1", 1.0), 80: ("a3", 2.0), 90: ("b1", 5.0)}
    fixes = [fix(T0 + s, 0.6, 4.0, zone="a2") for s in (-5, 30, 59)]
    fixes += [fix(T0 + s, 0.6 + e, 4.0, zone=z) for s, (z, e) in calls.items()]
    s = evaluate_truth(fixes, truth, rack()).summary
    assert s["still_scored"] == 4
    assert s["still_median_m"] == pytest.approx(1.5)
    assert s["bay_scored"] == 4
    assert s["bay_accuracy"] == pytest.approx(0.25)
    assert s["bay_or_neighbour_accuracy"] == pytest.approx(0.75)
    assert s["still_within_accuracy"] == pytest.approx(0.5)


def test_flaps_while_still_ignore_moving_spells() -> None:
    """The same excursion counts as a flap while the beacon stands, not while it walks."""
    walk = [TruthPoint(T0 + s, B1, s * 1.0, 1.0) for s in range(21)]
    stand = [TruthPoint(T0 + 21 + s, B1, 20.0, 1.0) for s in range(21)]
    zones = ["A", "B", "A", "A"]
    fixes = [fix(T0 + 2 + s, s * 1.0, 1.0, zone=z) for s, z in enumerate(zones)]
    fixes += [fix(T0 + 30 + s, 20.0, 1.0, zone=z) for s, z in enumerate(zones)]
    s = evaluate_truth(fixes, walk + stand).summary
    assert s["zone_flaps"] == 2
    assert s["still_zone_flaps"] == 1


# --- latency and coverage --------------------------------------------------------------------


def test_latency_recovers_a_known_lag() -> None:
    # Truth walks east at 1 m/s for 60 s; the fixes show where it was 2 s earlier.
    truth = [TruthPoint(T0 + s, B1, float(s), 0.0) for s in range(61)]
    fixes = [fix(T0 + s, float(s) - 2.0, 0.0) for s in range(61)]
    s = evaluate_truth(fixes, truth).summary
    assert s["latency_s"] == pytest.approx(2.0)
    assert s["latency_beacons"] == 1
    assert s["median_m"] == pytest.approx(2.0)


def test_latency_is_null_when_nothing_moves() -> None:
    fixes = [fix(T0 + s, 0.0, 0.0) for s in range(20)]
    s = evaluate_truth(fixes, still_truth()).summary
    assert s["latency_s"] is None
    assert s["latency_beacons"] == 0


def test_coverage_is_the_share_of_truth_samples_with_a_fix_nearby() -> None:
    truth = still_truth(seconds=9)  # 10 samples, T0 .. T0 + 9
    fixes = [fix(T0 + s, 0.0, 0.0) for s in (0.0, 0.5, 1.0)]  # covers T0, T0 + 1, T0 + 2
    assert evaluate_truth(fixes, truth).summary["coverage"] == pytest.approx(0.3)


# --- files and the command line --------------------------------------------------------------


def write_fixes(target: Path, fixes: Sequence[Fix]) -> Path:
    with CsvWriter(FIXES, target) as w:
        w.write_all(fixes)
    return target


def write_truth(target: Path, truth: Sequence[TruthPoint]) -> Path:
    with CsvWriter(TRUTH, target) as w:
        w.write_all(truth)
    return target


def test_run_eval_names_the_file_it_cannot_read(tmp_path: Path) -> None:
    truth = write_truth(tmp_path / "t.csv", still_truth())
    with pytest.raises(BeaconHubError, match=r"missing\.csv"):
        run_eval([tmp_path / "missing.csv"], truth_path=truth)
    bad = tmp_path / "bad.csv"
    bad.write_text("t,beacon\n1,2\n", encoding="utf-8")
    with pytest.raises(BeaconHubError, match=r"bad\.csv:1: not a fixes file"):
        run_eval([bad], truth_path=truth)
    late = write_fixes(tmp_path / "late.csv", [fix(T0 + 999.0, 0.0, 0.0)])
    with pytest.raises(EvaluationError, match=r"late\.csv against .*t\.csv: no fix overlaps"):
        run_eval([late], truth_path=truth)


SITE_WITH_KINDS = """\
id: kinds
kind: store
levels:
  - outline: [[0, 0], [10, 0], [10, 10], [0, 10]]
gateways:
  - {id: g1, x: 1, y: 1, z: 2}
beacon_kinds:
  - {kind: reference, match: ["ibeacon:e2c56db5-dffb-48d2-b060-d0f5a71096e0:1:2"], height_m: 2}
  - {kind: cart, match: ["ibeacon:*"], height_m: 1}
"""


def test_a_fixes_file_without_rows_is_named_and_said_so(tmp_path: Path) -> None:
    truth = write_truth(tmp_path / "t.csv", still_truth())
    empty = write_fixes(tmp_path / "f.csv", [])
    with pytest.raises(EvaluationError) as info:
        run_eval([empty], truth_path=truth)
    assert str(info.value) == f"{empty}: no fixes; the file has a header and no rows"


def test_run_eval_scores_one_kind(tmp_path: Path) -> None:
    """--kind cart leaves the reference beacon (B2, 3 m off) out; the cart (B1) is 1 m off."""
    site = tmp_path / "site.yaml"
    site.write_text(SITE_WITH_KINDS, encoding="utf-8")
    truth = write_truth(tmp_path / "t.csv", still_truth(B1) + still_truth(B2))
    fixes = [fix(T0 + s, 1.0, 0.0) for s in range(5)]
    fixes += [fix(T0 + s, 3.0, 0.0, beacon=B2) for s in range(5)]
    path = write_fixes(tmp_path / "f.csv", fixes)
    every = run_eval([path], truth_path=truth, site_path=site)
    carts = run_eval([path], truth_path=truth, site_path=site, kind="cart")
    assert every["median_m"] == pytest.approx(2.0)
    assert carts["median_m"] == pytest.approx(1.0)
    assert (carts["kind"], carts["beacons"], every["kind"]) == ("cart", 1, None)
    # the cart's truth T0 .. T0 + 20 has fixes near T0 .. T0 + 5; the reference beacon's
    # truth is not the carts' to cover (counted, 6 of 42)
    assert carts["coverage"] == every["coverage"] == round(6 / 21, 4)
    with pytest.raises(EvaluationError, match=r"--kind pallet: .*site\.yaml has no beacons"):
        run_eval([path], truth_path=truth, site_path=site, kind="pallet")
    with pytest.raises(EvaluationError, match=r"--kind cart: needs --site"):
        run_eval([path], truth_path=truth, kind="cart")


def test_run_eval_scores_a_window_of_the_recording(tmp_path: Path) -> None:
    """--window-s 0 5 scores the first five seconds (fixes 1 m off) and leaves the 3 m-off
    rest out; the window counts from the truth's first row, not the first fix."""
    truth = write_truth(tmp_path / "t.csv", still_truth(seconds=10))
    fixes = [fix(T0 + s, 1.0 if s < 5 else 3.0, 0.0) for s in range(1, 10)]
    path = write_fixes(tmp_path / "f.csv", fixes)
    assert run_eval([path], truth_path=truth)["median_m"] == pytest.approx(3.0)
    first = run_eval([path], truth_path=truth, window_s=(0.0, 5.0))
    assert (first["fixes"], first["median_m"]) == (4, pytest.approx(1.0))
    # coverage counts the window's truth, T0 .. T0 + 4: each has a fix within 1 s (all the
    # truth, T0 .. T0 + 10, would have 6)
    assert first["coverage"] == pytest.approx(1.0)
    with pytest.raises(EvaluationError, match=r"--window-s 5 2: expected 0 <= START < END"):
        run_eval([path], truth_path=truth, window_s=(5.0, 2.0))
    with pytest.raises(EvaluationError, match=r"f\.csv: no fixes in --window-s"):
        run_eval([path], truth_path=truth, window_s=(50.0, 60.0))
    with pytest.raises(EvaluationError, match=r"--window-s: give it with --truth"):
        run_eval([path], path_path=truth, window_s=(0.0, 5.0))


def run_cli(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "beacon_hub.cli", "eval", *map(str, args)],
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )


SUMMARY_KEYS = {
    "fixes",
    "beacons",
    "median_m",
    "p90_m",
    "p95_m",
    "mean_m",
    "max_m",
    "within_accuracy",
    "zone_accuracy",
    "zone_accuracy_outside_band",
    "zone_flaps_per_beacon_hour",
    "latency_s",
    "coverage",
}


def test_cli_prints_json_and_writes_the_report(tmp_path: Path) -> None:
    truth = write_truth(tmp_path / "truth.csv", still_truth())
    fixes = write_fixes(tmp_path / "fixes.csv", [fix(T0 + i, float(i), 0.0) for i in range(10)])
    report = tmp_path / "report"
    result = run_cli("--fixes", fixes, "--truth", truth, "--report", report)
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)
    assert summary.keys() >= SUMMARY_KEYS
    assert summary["median_m"] == pytest.approx(4.5)
    png = (report / "cdf.png").read_bytes()
    assert png.startswith(b"\x89PNG\r\n\x1a\n")
    assert len(png) > 1000
    assert json.loads((report / "summary.json").read_text(encoding="utf-8")) == summary


def test_cli_compares_several_fix_files_in_one_picture(tmp_path: Path) -> None:
    segments = tmp_path / "path.csv"
    write_path(segments, L_PATH.tolist())
    good = write_fixes(tmp_path / "good.csv", [fix(T0 + i, float(i), 0.1) for i in range(4)])
    bad = write_fixes(tmp_path / "bad.csv", [fix(T0 + i, float(i), 2.0) for i in range(4)])
    report = tmp_path / "report"
    result = run_cli(
        "--fixes", good, "--fixes", bad, "--label", "tuned", "--label", "raw",
        "--path", segments, "--report", report,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    runs = json.loads(result.stdout)["runs"]
    assert [r["label"] for r in runs] == ["tuned", "raw"]
    assert runs[0]["median_m"] == pytest.approx(0.1)
    assert runs[1]["median_m"] == pytest.approx(2.0)
    assert (report / "cdf.png").stat().st_size > 1000


def test_cli_scores_a_window(tmp_path: Path) -> None:
    truth = write_truth(tmp_path / "truth.csv", still_truth())
    fixes = write_fixes(tmp_path / "fixes.csv", [fix(T0 + i, float(i), 0.0) for i in range(10)])
    result = run_cli("--fixes", fixes, "--truth", truth, "--window-s", "2", "5")
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)
    assert (summary["fixes"], summary["median_m"]) == (3, pytest.approx(3.0))


def test_cli_exits_1_naming_the_missing_file(tmp_path: Path) -> None:
    truth = write_truth(tmp_path / "truth.csv", still_truth())
    result = run_cli("--fixes", tmp_path / "nope.csv", "--truth", truth)
    assert result.returncode == 1
    assert "nope.csv" in result.stderr
    assert result.stdout == ""


def test_a_report_replaces_the_last_one_whole(tmp_path: Path) -> None:
    truth = write_truth(tmp_path / "truth.csv", still_truth())
    fixes = write_fixes(tmp_path / "fixes.csv", [fix(T0 + i, float(i), 0.0) for i in range(10)])
    report = tmp_path / "report"
    report.mkdir()
    (report / "summary.json").write_text("the last report\n")
    result = run_cli("--fixes", fixes, "--truth", truth, "--report", report)
    assert result.returncode == 0, result.stderr
    assert json.loads((report / "summary.json").read_text()) == json.loads(result.stdout)
    assert sorted(p.name for p in report.iterdir()) == ["cdf.png", "summary.json"]


def test_evaluation_imports_no_matplotlib() -> None:
    code = "import sys, beacon_hub.evaluation; print('matplotlib' in sys.modules)"
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    )
    assert out.stdout.strip() == "False"


def test_every_summary_has_the_same_keys() -> None:
    truth_mode = evaluate_truth([fix(T0, 0.0, 0.0)], still_truth()).summary
    with_site = evaluate_truth([fix(T0, 1.0, 1.0)], still_truth(), two_rooms()).summary
    path_mode = evaluate_path([fix(T0, 0.0, 0.0)], L_PATH).summary
    assert truth_mode.keys() == with_site.keys() == path_mode.keys()
    assert truth_mode.keys() >= SUMMARY_KEYS


def carried(beacon: str, still_s: int, x0: float = 0.0) -> list[TruthPoint]:
    """Stands at (x0, 0) for still_s seconds, then is carried along x at 2 m/s for 20 s."""
    return [
        TruthPoint(T0 + s, beacon, x0 + (0.0 if s <= still_s else 2.0 * (s - still_s)), 0.0)
        for s in range(still_s + 21)
    ]


def test_pallet_moved_events_are_scored_against_departures(tmp_path: Path) -> None:
    """B1 stood 100 s and left: found by an event 12 s later. B2 left after only 30 s
    standing: no departure, so its event is false, as is B1's second one, and B3, which stood
    90 s, left unreported (missed). A still beacon's truth gives no departure."""
    b3 = "ibeacon:e2c56db5-dffb-48d2-b060-d0f5a71096e0:1:3"
    b4 = "ibeacon:e2c56db5-dffb-48d2-b060-d0f5a71096e0:1:4"
    truth = carried(B1, 100) + carried(B2, 30, 50.0) + carried(b3, 90, 90.0) + still_truth(b4, 200)
    events = [
        EventRow(T0 + 112.0, B1, "pallet_moved"),
        EventRow(T0 + 118.0, B1, "pallet_moved"),
        EventRow(T0 + 35.0, B2, "pallet_moved"),
        EventRow(T0 + 50.0, b4, "zone_enter", "bay-1"),
    ]
    moves = pallet_moves(truth, events)
    assert moves == {
        "moves_departed": 2,
        "moves_reported": 3,
        "moves_found": 1,
        "moves_false": 2,
        "moves_delay_median_s": pytest.approx(11.0),
    }
    assert pallet_moves(truth, events, {B2})["moves_false"] == 1
    # through run_eval: the events file goes with one fixes file of the same replay
    fixes_path, truth_path, events_path = (tmp_path / n for n in ("f.csv", "t.csv", "e.csv"))
    with CsvWriter(FIXES, fixes_path) as out:
        out.write_all([fix(T0 + s, 0.0, 0.0) for s in range(20)])
    with CsvWriter(TRUTH, truth_path) as out:
        out.write_all(truth)
    with CsvWriter(EVENTS, events_path) as out:
        out.write_all(events)
    summary = run_eval([fixes_path], truth_path=truth_path, events_path=events_path)
    assert summary["moves_found"] == 1
    with pytest.raises(EvaluationError, match="--events"):
        run_eval([fixes_path, fixes_path], truth_path=truth_path, events_path=events_path)


def test_truth_without_a_level_is_on_a_one_level_sites_own_level() -> None:
    """A survey's truth leaves the level empty on a site of one level (`site points` plans it
    so); numbered 1, that level's zones still score it (they were looked for on level 0)."""
    data = two_rooms().model_dump(mode="json", exclude_defaults=True)
    data["levels"][0]["level"] = 1
    for part in (*data["gateways"], *data["zones"]):
        part["level"] = 1
    upstairs = validate_site_data(data, "upstairs")
    truth = [TruthPoint(T0 + s, B1, 0.5 + s, 2.0) for s in range(8)]
    calls = ["west", "west", "west", "east", "west", "east", "east", "east"]
    fixes = [fix(T0 + s, 0.5 + s, 2.0, zone=z) for s, z in enumerate(calls)]
    ground = evaluate_truth(fixes, truth, two_rooms(), band_m=1.0).summary
    s = evaluate_truth(fixes, truth, upstairs, band_m=1.0).summary
    assert s["zone_source"] == "site"
    assert s["zone_accuracy"] == pytest.approx(6 / 8) == ground["zone_accuracy"]
    assert s["zone_accuracy_outside_band"] == pytest.approx(1.0)
