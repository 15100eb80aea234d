"""scripts/survey_accuracy.py's one piece of its own: what of a simulated survey it keeps as
`beacon-hub survey` would (the rest is the CLIs, tested where they live)."""

from __future__ import annotations

import csv
from pathlib import Path

from tests.scripts.loading import load_script

TAG = "eddystone:a4c1f8e27d3b5096e1c8:000000000001"
REF = "ibeacon:9f4c2e18-6b3a-4d57-8e91-0c7a5b3d2f64:1:1"


def test_keeps_the_survey_tag_and_with_points_only_where_it_stands(tmp_path: Path) -> None:
    truth, readings = tmp_path / "t.csv", tmp_path / "r.csv"
    track = [(0.0, 1, 1), (0.5, 1, 1), (1.0, 1, 1), (1.5, 2, 1), (2.0, 3, 1), (2.5, 3, 1),
             (3.0, 3, 1), (3.5, 3, 1)]  # fmt: skip
    with truth.open("w") as fh:
        fh.write("t,beacon,x,y,z,level,zone\n")
        for t, x, y in track:
            fh.write(f"{t},{TAG},{x},{y},1.0,0,\n{t},{REF},5.6,9.5,1.5,0,\n")
    readings.write_text(f"t,gateway,beacon,rssi\n0.2,gw-01,{TAG},-70\n0.3,gw-01,{REF},-60\n")
    script = load_script("survey_accuracy")
    out = (tmp_path / "tt.csv", tmp_path / "rr.csv")
    tag, rows = script._tag_only(truth, readings, out, standing=True)
    assert tag == TAG
    with out[0].open() as fh:
        kept = [(float(r["t"]), float(r["x"])) for r in csv.DictReader(fh)]
    # standing: the rows whose neighbours are at the same place (the walk 1 -> 3 left out)
    assert kept == [(0.5, 1.0), (2.5, 3.0), (3.0, 3.0)]
    assert rows == 3
    assert REF not in out[1].read_text()
    assert TAG in out[1].read_text()
    _, walked = script._tag_only(truth, readings, out, standing=False)
    assert walked == len(track)


def test_a_marked_walk_is_rebuilt_from_its_passes_and_its_marks_errors(tmp_path: Path) -> None:
    """A walk's truth as the survey's walk mode makes it: the passes found on the simulated
    track, off by the surveyor's error, and straight lines between them."""
    script = load_script("survey_accuracy")
    points = tmp_path / "p.csv"
    points.write_text("x,y\n1,1\n3,1\n3,2\n9,9\n")  # the last one never reached
    truth = tmp_path / "t.csv"
    # 0.5 m/s along y = 1, then up x = 3: at (3, 1) at t = 4 s, at (3, 2) at t = 6 s
    track = [(0.5 * k, min(1 + 0.25 * k, 3.0), 1 + max(0.0, 0.25 * (k - 8))) for k in range(13)]
    with truth.open("w") as fh:
        fh.write("t,beacon,x,y,z,level,zone\n")
        for t, x, y in track:
            fh.write(f"{100 + t},{TAG},{x},{y},1.2,0,\n{100 + t},{REF},5,5,1.5,0,\n")
    pts = list(script.read_points(points))
    exact = script._passes([(100 + t, x, y) for t, x, y in track], pts)
    assert exact == [100.0, 104.0, 106.0]  # the third from the segment's projection
    rows = script._marked_walk(truth, points, TAG, 0.0, seed=1)
    with truth.open() as fh:
        rebuilt = [
            (float(r["t"]), float(r["x"]), float(r["y"]), r["z"]) for r in csv.DictReader(fh)
        ]
    assert rows == len(rebuilt)
    assert rebuilt[0] == (100.0, 1.0, 1.0, "1.2")
    assert rebuilt[-1] == (106.0, 3.0, 2.0, "1.2")
    assert (102.0, 2.0, 1.0, "1.2") in rebuilt  # straight, at even speed
    truth.write_text(
        "t,beacon,x,y,z,level,zone\n"
        + "".join(f"{100 + t},{TAG},{x},{y},1.2,0,\n" for t, x, y in track)
    )
    script._marked_walk(truth, points, TAG, 0.5, seed=1)
    with truth.open() as fh:
        marked = [float(r["t"]) for r in csv.DictReader(fh)]
    assert marked != [r[0] for r in rebuilt]  # off by the marks' errors
    assert marked == sorted(marked)  # and never out of order
