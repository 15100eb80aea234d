"""survey.py's parts without a broker: points, truth rows, the recorder's clocks and bad input."""

from __future__ import annotations

import itertools
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import yaml
from hypothesis import given
from hypothesis import strategies as st

from beacon_hub.cli import main
from beacon_hub.csvfiles import SurveyPoint
from beacon_hub.errors import CsvError
from beacon_hub.floorplan import WALKWAY, FloorPlan, points_in_polygon
from beacon_hub.site import load_site
from beacon_hub.survey import (
    PLAN_SPACING_M,
    WALK_SPACING_M,
    Dwell,
    SurveyConfig,
    SurveyError,
    SurveyRecorder,
    _Session,  # the walk's prompts, without a broker
    _walk_survey,
    check_points,
    dwell_truth,
    load_points,
    next_calibrate,
    plan_points,
    walk_truth,
)
from beacon_hub.wire import ReadingBatch, encode_batch

ROOT = Path(__file__).resolve().parents[2]
STORE = load_site(ROOT / "config" / "store.yaml")
TAG = "ibeacon:3d1a7b52-8c4e-4f0a-9b6d-2e5f8a1c7d40:1:1"
OTHER = "ibeacon:3d1a7b52-8c4e-4f0a-9b6d-2e5f8a1c7d40:1:2"
TOPIC = "beacons/store-1/gateway/gw-01/readings"


def _batch(gw: str, sent: float, seq: int = 0, boot: str = "00aa11bb") -> ReadingBatch:
    return ReadingBatch(
        gw=gw,
        boot=boot,
        seq=seq,
        sent=sent,
        beacons=(TAG, OTHER),
        b=(0, 1, 0),
        dt_ms=(900.0, 500.0, 100.0),
        rssi=(-70.0, -80.0, -71.0),
        tx=(-59.0, None, -59.0),
    )


def test_points_file_errors_name_the_line(tmp_path: Path) -> None:
    bad = tmp_path / "p.csv"
    bad.write_text("x,y\n1,2\n3,north\n")
    with pytest.raises(CsvError, match=r"p.csv:3: column y: expected a number"):
        load_points(bad, STORE)
    bad.write_text("x,y,level\n1,2,3\n")
    with pytest.raises(SurveyError, match=r"p.csv:2: level 3 is not one of the site's levels"):
        load_points(bad, STORE)
    # blank lines between groups of points: the error names the line in the file, not the index
    bad.write_text("x,y\n1,2\n\n\n45,5\n")
    with pytest.raises(SurveyError, match=r"p.csv:5: \(45, 5\) is outside level 0's outline"):
        load_points(bad, STORE)
    bad.write_text("x,y\n")
    with pytest.raises(SurveyError, match="no points"):
        load_points(bad, STORE)
    bad.write_text("x,y,z,name\n1,2,1.1,door\n")
    assert load_points(bad, STORE) == [SurveyPoint(x=1.0, y=2.0, z=1.1, name="door")]


def test_dwell_truth_spans_each_dwell_at_its_point() -> None:
    a, b = SurveyPoint(x=1.0, y=2.0), SurveyPoint(x=3.0, y=4.0, z=0.4, level=0)
    rows = dwell_truth(TAG, [Dwell(a, 100.0, 101.2), Dwell(b, 110.0, 111.0)], 0.5, 1.3)
    assert [r.t for r in rows] == [100.0, 100.5, 101.0, 101.2, 110.0, 110.5, 111.0]
    assert {(r.x, r.y, r.z) for r in rows[:4]} == {(1.0, 2.0, 1.3)}
    assert {(r.x, r.y, r.z, r.level) for r in rows[4:]} == {(3.0, 4.0, 0.4, 0)}  # its own z


@given(
    st.lists(st.floats(0.2, 20.0), min_size=1, max_size=6),
    st.floats(0.1, 2.0),
)
def test_walk_truth_never_leaves_a_gap_and_passes_each_point_at_its_mark(
    gaps: list[float], step: float
) -> None:
    points = [SurveyPoint(x=float(i), y=float(i % 2)) for i in range(len(gaps) + 1)]
    marks = [1000.0]
    for g in gaps:
        marks.append(marks[-1] + g)
    rows = walk_truth(TAG, points, marks, step, None)
    times = [r.t for r in rows]
    assert times == sorted(times)
    assert max(b - a for a, b in itertools.pairwise(times)) <= step + 1e-9
    for p, m in zip(points, marks, strict=True):
        at = [r for r in rows if abs(r.t - m) < 1e-9]
        assert at
        assert (at[0].x, at[0].y) == pytest.approx((p.x, p.y))


def test_recorder_keeps_the_tag_in_this_machines_clock() -> None:
    rec = SurveyRecorder(TAG, frozenset({"gw-01", "gw-02"}))
    # gw-01's clock is 10 s behind; its batches arrive 0.30 s and 0.05 s after they are sent
    rec.add(_batch("gw-01", 1000.0, 0), arrival=1010.30)
    rec.add(_batch("gw-01", 1001.0, 1), arrival=1011.05)
    rec.add(_batch("gw-02", 1011.0, 0), arrival=1011.02)
    rec.add(_batch("gw-09", 1011.0, 0), arrival=1011.02)  # not in the site file
    got = rec.readings([(0.0, 1e10)])
    assert [(r.gateway, round(r.t, 2)) for r in got] == [
        ("gw-01", 1009.15),
        ("gw-01", 1009.95),
        ("gw-02", 1010.12),
        ("gw-01", 1010.15),
        ("gw-02", 1010.92),
        ("gw-01", 1010.95),
    ]
    assert {r.beacon for r in got} == {TAG}
    assert [r.tx_power for r in got] == [-59.0] * 6
    assert rec.foreign == 1
    assert rec.batches == 3
    assert len(rec.readings([(1010.0, 1010.5)])) == 2
    assert rec.heard_since(1010.5) == (2, 2)


@given(st.binary(max_size=300))
def test_recorder_counts_what_does_not_decode(payload: bytes) -> None:
    rec = SurveyRecorder(TAG, frozenset({"gw-01"}))
    rec.on_payload(TOPIC, payload, 5.0)
    rec.on_payload("not/our/topic", encode_batch(_batch("gw-01", 1.0)), 5.0)
    assert rec.undecodable + rec.batches == 2
    assert rec.undecodable >= 1


def test_planned_points_cover_the_walkable_floor_off_the_shelves() -> None:
    points = plan_points(STORE, 2.5)
    check_points(points, STORE, "plan")  # on the floor
    plan = FloorPlan(STORE)
    xy = np.array([(p.x, p.y) for p in points])
    assert plan.allowed(0, xy, WALKWAY).all()
    assert not any(points_in_polygon(xy, o.polygon).any() for o in STORE.levels[0].obstacles)
    # every walkable 2.5 m cell of the 40 x 32 m store has a point: at least half the floor is
    # shelving-free aisles
    assert 0.5 * 40 * 32 / 2.5**2 <= len(points) <= 40 * 32 / 2.5**2
    assert len({p.name for p in points}) == len(points)
    # a serpentine: no jump back across the floor between one row and the next
    steps = np.hypot(*np.diff(xy, axis=0).T)
    assert np.median(steps) == pytest.approx(2.5)
    assert steps.max() < 40.0


def test_site_points_writes_the_plan_survey_reads(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "p.csv"
    site = str(ROOT / "config" / "store.yaml")
    assert main(["site", "points", site, "--out", str(out), "--spacing-m", "4"]) == 0
    assert load_points(out, STORE) == plan_points(STORE, 4.0)
    assert f"-> {out}" in capsys.readouterr().err
    assert main(["site", "points", site, "--out", str(out), "--spacing-m", "0"]) == 1
    assert "--spacing-m 0: expected 0.5 to 50 metres" in capsys.readouterr().err
    # the defaults: a points survey 1.5 m apart, a walk's rows 1 m apart (fewer points as
    # the spacing grows: the walk's plan is the denser)
    assert main(["site", "points", site, "--out", str(out)]) == 0
    assert load_points(out, STORE) == plan_points(STORE, PLAN_SPACING_M)
    walk = tmp_path / "w.csv"
    assert main(["site", "points", site, "--out", str(walk), "--walk"]) == 0
    assert load_points(walk, STORE) == plan_points(STORE, WALK_SPACING_M)
    assert len(load_points(walk, STORE)) > len(load_points(out, STORE))


def test_recorder_follows_a_gateway_clock_stepped_mid_survey() -> None:
    """A Pi has no real-time clock: NTP steps it when it reaches its server, forward or back,
    often after the gateway has started sending. Samples before and after a step each keep the
    offset of the clock they were sent with, so every one lands at its time in this machine's."""
    rec = SurveyRecorder(TAG, frozenset({"gw-01"}))
    # each batch arrives 0.05 s after it is sent, one in ten held up 3 s on the way (a broker's
    # hiccup is no step); the clock 7 s behind, stepped forward to the right time at seq 10,
    # then stepped 5 s back at seq 20
    for seq in range(30):
        behind_s = 7.0 if seq < 10 else 0.0 if seq < 20 else 5.0
        held_s = 3.0 if seq % 10 == 5 else 0.0
        rec.add(_batch("gw-01", 1000.0 + seq - behind_s, seq), arrival=1000.05 + seq + held_s)
    got = [round(r.t, 2) for r in rec.readings([(0.0, 1e10)])]
    # the tag's samples are taken 0.9 s and 0.1 s before each batch is sent
    assert got == sorted(round(1000.05 + s - dt, 2) for s in range(30) for dt in (0.9, 0.1))


def test_recorder_keeps_a_batch_delivered_twice_once() -> None:
    """A gateway re-sends a batch whose PUBACK it lost (paho's DUP, or from its disk buffer
    after a restart) and the broker forwards it again: its samples are one set of readings, not
    two, as the hub drops it by (gateway, boot, seq)."""
    rec = SurveyRecorder(TAG, frozenset({"gw-01"}))
    rec.add(_batch("gw-01", 1000.0, 0), arrival=1000.05)
    rec.add(_batch("gw-01", 1001.0, 1), arrival=1001.05)
    rec.add(_batch("gw-01", 1000.0, 0), arrival=1004.0)  # re-sent after a reconnect
    rec.add(_batch("gw-01", 1000.0, 0, boot="11cc22dd"), arrival=1005.0)  # a reboot: new batch
    assert len(rec.readings([(0.0, 1e10)])) == 6
    assert (rec.batches, rec.duplicates) == (3, 1)


def _store_on_level(tmp_path: Path, level: int) -> Path:
    """The example store with its one level (and everything on it) numbered `level`."""
    doc = yaml.safe_load((ROOT / "config" / "store.yaml").read_text())
    doc["levels"][0]["level"] = level
    for key in ("gateways", "reference_beacons", "zones"):
        for item in doc.get(key) or []:
            item["level"] = level
    path = tmp_path / f"store-level-{level}.yaml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


def test_a_point_without_a_level_is_on_a_one_level_sites_level(tmp_path: Path) -> None:
    """`site points` leaves the level out on a site of one level; a site whose one level is
    numbered 1 (the first floor of a building) must take that plan, and a typed `x y`."""
    path = _store_on_level(tmp_path, 1)
    out = tmp_path / "p.csv"
    assert main(["site", "points", str(path), "--out", str(out), "--spacing-m", "4"]) == 0
    site = load_site(path)
    assert len(load_points(out, site)) == len(plan_points(site, 4.0))
    check_points([SurveyPoint(x=5.0, y=5.0)], site, "point 1")
    with pytest.raises(SurveyError, match=r"point 1: level 0 is not one of the site's levels"):
        check_points([SurveyPoint(x=5.0, y=5.0, level=0)], site, "point 1")


def test_site_points_says_which_level_no_point_fits(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A level too small for a point 0.5 m clear of its outline (a 1 x 1 m mezzanine) gets no
    point: said by level, and a plan with no point at all is refused, not written empty for
    survey to refuse later."""
    doc = yaml.safe_load((ROOT / "config" / "store.yaml").read_text())
    doc["levels"].append(
        {"level": 1, "name": "Mezzanine", "outline": [[0, 0], [1, 0], [1, 1], [0, 1]]}
    )
    two = tmp_path / "two.yaml"
    two.write_text(yaml.safe_dump(doc, sort_keys=False))
    out = tmp_path / "p.csv"
    assert main(["site", "points", str(two), "--out", str(out), "--spacing-m", "4"]) == 0
    err = capsys.readouterr().err
    assert f"warning: {two}: no point fits the walkable floor of level 1 at --spacing-m 4" in err
    assert "level 0" not in err

    doc["levels"] = doc["levels"][1:]
    doc["levels"][0]["level"] = 0
    doc["gateways"] = [dict(doc["gateways"][0], x=0.5, y=0.5)]
    doc["reference_beacons"], doc["zones"] = [], []
    tiny = tmp_path / "tiny.yaml"
    tiny.write_text(yaml.safe_dump(doc, sort_keys=False))
    empty = tmp_path / "empty.csv"
    assert main(["site", "points", str(tiny), "--out", str(empty)]) == 1
    err = capsys.readouterr().err
    assert f"{tiny}: no point fits the walkable floor of level 0 at --spacing-m 1.5" in err
    assert not empty.exists()


def test_survey_names_out_when_it_is_not_a_folder(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`--out` is a folder; a file there (the points file given by mistake) is refused before
    the broker is asked, naming the option and what it expected."""
    taken = tmp_path / "points.csv"
    taken.write_text("x,y\n5,5\n")
    site = str(ROOT / "config" / "store.yaml")
    args = ["survey", "--site", site, "--beacon", TAG, "--out", str(taken)]
    assert main([*args, "--broker", "mqtt://127.0.0.1:9"]) == 1
    assert f"--out {taken}: exists and is not a directory" in capsys.readouterr().err
    assert taken.read_text() == "x,y\n5,5\n"
    # the plan kept where the survey writes its own points.csv: said so, the plan untouched
    folder = tmp_path / "survey"
    folder.mkdir()
    plan = folder / "points.csv"
    plan.write_text("x,y\n5,5\n")
    args = ["survey", "--site", site, "--beacon", TAG, "--out", str(folder), "--points", str(plan)]
    assert main([*args, "--broker", "mqtt://127.0.0.1:9"]) == 1
    err = capsys.readouterr().err
    assert f"--points {plan} is in --out {folder}, where the survey writes its own" in err
    assert plan.read_text() == "x,y\n5,5\n"


def test_a_points_file_with_a_spreadsheets_empty_columns_says_so(tmp_path: Path) -> None:
    """A spreadsheet that once had something in columns C and D writes them back empty
    (`x,y,,`): the message names the empty header cells by position, not `unknown column(s) , `."""
    path = tmp_path / "p.csv"
    path.write_text("x,y,,\n5,5,,\n")
    with pytest.raises(CsvError) as info:
        load_points(path, STORE)
    assert "p.csv:1: not a survey points file: empty header cells in columns 3, 4;" in str(
        info.value
    )
    assert "unknown column(s) ," not in str(info.value)


def test_a_walk_paused_at_a_point_stands_there_and_a_silent_tag_is_said() -> None:
    """`p` at a point: the surveyor stops there (a shopper in the aisle); the truth stands at
    it until the Enter that walks on, instead of crawling to the next point. A tag heard by
    nobody is said at the next Enter: a walk has no progress lines of its own."""
    a, b, c = SurveyPoint(x=5.0, y=5.0), SurveyPoint(x=7.0, y=5.0), SurveyPoint(x=7.0, y=9.0)
    answers = iter(["", "p", "", ""])
    times = iter([100.0, 103.0, 110.0, 116.0])
    said: list[str] = []
    session = _Session(
        STORE, TAG, SurveyConfig(walk=True), lambda _p: next(answers), said.append,
        lambda: next(times), lambda _s: None,
    )  # fmt: skip
    visited, marks = _walk_survey(session, [a, b, c])
    assert visited == [a, b, b, c]
    assert marks == [100.0, 103.0, 110.0, 116.0]
    truth = walk_truth(TAG, visited, marks, 0.5, 1.2)
    assert {(r.x, r.y) for r in truth if 103.0 <= r.t <= 110.0} == {(7.0, 5.0)}
    assert [s for s in said if "nothing heard" in s] == [
        f"  nothing heard of {TAG} for 16 s: is the tag on, and is it the one given to --beacon?"
    ]  # at c only: at b the walk was 3 s old


def test_the_next_calibrate_keeps_a_warehouses_racks_in_the_plan() -> None:
    """The printed command: the survey's kernel, and --plan-losses in a warehouse (README,
    Accuracy (F): its racks folded into the per-gateway fits, the calibration helps little)."""
    summary = {"readings_file": "s/readings.csv", "truth_file": "s/truth.csv"}
    store = next_calibrate(Path("store.yaml"), STORE, summary)
    assert store == (
        "beacon-hub calibrate --site store.yaml --readings s/readings.csv --truth s/truth.csv"
        " --out calibration.yaml --map-bandwidth-m 0.8"
    )
    warehouse = load_site(ROOT / "config" / "warehouse.yaml")
    assert next_calibrate(Path("w.yaml"), warehouse, summary).endswith(
        "--map-bandwidth-m 0.8 --plan-losses"
    )


def test_the_recorder_knows_which_gateways_may_still_hold_samples() -> None:
    """The survey's last wait: a gateway batching every 3 s (`batching.window_s`) is behind
    the survey's end until a batch sent after it arrives; a fixed 1.5 s wait lost its last
    samples."""
    rec = SurveyRecorder(TAG, frozenset({"gw-01", "gw-02"}))
    rec.add(_batch("gw-01", 100.0, seq=0), arrival=100.05)
    rec.add(_batch("gw-02", 100.0, seq=0), arrival=100.05)
    assert rec.behind(100.5) == ["gw-01", "gw-02"]
    rec.add(_batch("gw-02", 101.0, seq=1), arrival=101.05)
    assert rec.behind(100.5) == ["gw-01"]
    rec.add(_batch("gw-01", 103.0, seq=1), arrival=103.05)
    assert rec.behind(100.5) == []
    assert rec.behind(104.0) == ["gw-01", "gw-02"]


def _placement_errors(
    window_s: float,
    held_s: dict[int, float],
    *,
    behind_s: Callable[[int], float] = lambda _seq: 7.0,
    in_order: bool = True,
    n: int = 12,
) -> list[float]:
    """Seconds each of the tag's samples lands from when it was heard, for a gateway whose
    clock is `behind_s(seq)` behind that sends a batch every `window_s` on its grid, each
    delivered 0.05 s after it is sent but batch k held up `held_s[k]` more on the way. In order:
    a batch sent while one is held waits behind it (one TCP stream); else it overtakes it."""
    rec = SurveyRecorder(TAG, frozenset({"gw-01"}))
    arrivals: list[float] = []
    for seq in range(n):
        arrival = 1000.0 + seq * window_s + 0.05 + held_s.get(seq, 0.0)
        arrivals.append(max(arrival, arrivals[-1] + 0.01) if arrivals and in_order else arrival)
    for seq in sorted(range(n), key=lambda k: arrivals[k]):
        true_sent = 1000.0 + seq * window_s
        # the tag heard 0.9 s and 0.1 s before the batch is sent: -1xx and -2xx dBm, xx its seq
        rssi = (-100.0 - seq, -80.0, -200.0 - seq)
        batch = replace(_batch("gw-01", true_sent - behind_s(seq), seq), rssi=rssi)
        rec.add(batch, arrival=arrivals[seq])
    got = rec.readings([(0.0, 1e10)])
    assert len(got) == 2 * n
    heard = {-100.0 - s: 1000.0 + s * window_s - 0.9 for s in range(n)}
    heard |= {-200.0 - s: 1000.0 + s * window_s - 0.1 for s in range(n)}
    return [r.t - heard[r.rssi] for r in got]


@pytest.mark.parametrize(
    ("window_s", "held_s"),
    [
        (2.0, {0: 3.0}),  # the first batch seen held 3 s (Wi-Fi retries), the next on time
        (2.0, {k: 10.0 - 2.0 * k for k in range(5)}),  # a backlog sent at connect
        (5.0, {0: 4.0}),  # a gateway batching every 5 s
    ],
)
def test_a_first_batch_held_up_on_the_way_is_no_clock_step(
    window_s: float, held_s: dict[int, float]
) -> None:
    """A gateway's first batches seen are delivered late (a backlog sent as it connects, a
    broker's queue, Wi-Fi retries) and the next ones promptly: their (arrival - sent) drops by
    more than CLOCK_STEP_S, as after a clock stepped forward, but the sent times keep to the
    gateway's cadence. Their samples keep the gateway's one offset, not one wrong by the hold
    (seconds of a walk, metres)."""
    errors = _placement_errors(window_s, held_s)
    # every sample lands the quickest delivery (0.05 s) after it was heard
    assert max(errors) == pytest.approx(0.05, abs=1e-6)
    assert min(errors) == pytest.approx(0.05, abs=1e-6)


def test_a_batch_held_up_across_a_clock_step_keeps_the_clock_it_was_sent_with() -> None:
    """The clock stepped 5 s back at seq 10, and seq 9, sent before the step, held up 3 s on
    the way so that it arrives after seqs 10 and 11: it belongs to the stretch before the step
    by its seq, and is no step of its own (one was taken for one, and every batch after it
    landed 1.95 s early)."""
    errors = _placement_errors(
        1.0, {9: 3.0}, behind_s=lambda seq: 0.0 if seq < 10 else 5.0, in_order=False, n=20
    )
    assert max(errors) == pytest.approx(0.05, abs=1e-6)
    assert min(errors) == pytest.approx(0.05, abs=1e-6)


@pytest.mark.parametrize("window_s", [1.0, 2.0, 5.0])
def test_a_clock_stepped_right_after_the_first_batch_seen_is_still_a_step(
    window_s: float,
) -> None:
    """What tells a held batch from a step: across a step forward the sent times jump ahead of
    the gateway's cadence, and the first batch seen keeps the clock it was sent with even
    when no cadence is known yet at the step (it is learnt from the batches after it)."""
    errors = _placement_errors(window_s, {}, behind_s=lambda seq: 7.0 if seq == 0 else 0.0)
    assert max(errors) == pytest.approx(0.05, abs=1e-6)
    assert min(errors) == pytest.approx(0.05, abs=1e-6)
