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
