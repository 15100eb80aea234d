"""Site files: the examples validate; broken copies fail with the file, line and path."""

import copy
import math
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import given
from hypothesis import strategies as st

from beacon_hub import site as site_module
from beacon_hub.errors import ConfigError
from beacon_hub.floorplan import FloorPlan
from beacon_hub.geometry import (
    _segments_overlap,
    point_segment_distance_m,
    polygon_area_m2,
    segments_cross,
    self_intersection,
)
from beacon_hub.site import load_site, site_summary, validate_site_data

CONFIG = Path(__file__).resolve().parents[2] / "config"
EXAMPLES = [CONFIG / "store.yaml", CONFIG / "warehouse.yaml"]


def site_check(path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "beacon_hub.cli", "site", "check", str(path)],
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_example_sites_pass_site_check(path: Path) -> None:
    result = site_check(path)
    assert result.returncode == 0, result.stderr
    assert "OK" in result.stdout
    assert "gateways" in result.stdout


def minimal() -> dict[str, Any]:
    return {
        "id": "mini",
        "kind": "store",
        "levels": [{"outline": [[0, 0], [10, 0], [10, 8], [0, 8]]}],
        "gateways": [
            {"id": "gw-1", "x": 1.0, "y": 1.0, "z": 3.0},
            {"id": "gw-2", "x": 9.0, "y": 7.0, "z": 3.0, "radio": {"path_loss_exponent": 3.0}},
        ],
        "beacon_kinds": [
            {
                "kind": "cart",
                "match": ["ibeacon:e2c56db5-dffb-48d2-b060-d0f5a71096e0:1:*"],
                "height_m": 1.0,
            }
        ],
        "zones": [{"id": "a", "kind": "aisle", "polygon": [[1, 1], [4, 1], [4, 7], [1, 7]]}],
    }


def test_minimal_site_and_helpers() -> None:
    site = validate_site_data(minimal(), "mini")
    assert site.gateway_radio(site.gateways[1]).path_loss_exponent == 3.0
    assert site.gateway_radio(site.gateways[1]).ref_rssi_1m_dbm == site.radio.ref_rssi_1m_dbm
    assert site.kind_of("ibeacon:e2c56db5-dffb-48d2-b060-d0f5a71096e0:1:77").kind == "cart"  # type: ignore[union-attr]
    assert site.kind_of("ibeacon:e2c56db5-dffb-48d2-b060-d0f5a71096e0:2:77") is None
    summary = site_summary(site)
    assert summary["area_m2"] == 80.0
    assert summary["gateways_per_100m2"] == 2.5


def broken_copy(tmp_path: Path, source: Path, edit: Any) -> Path:
    data = yaml.safe_load(source.read_text())
    edit(data)
    out = tmp_path / f"broken-{source.name}"
    out.write_text(yaml.safe_dump(data, sort_keys=False))
    return out


def _duplicate_gateway(data: dict[str, Any]) -> None:
    data["gateways"][3]["id"] = data["gateways"][0]["id"]


def _zone_outside(data: dict[str, Any]) -> None:
    data["zones"][2]["polygon"] = [[x + 500.0, y] for x, y in data["zones"][2]["polygon"]]


def _string_for_number(data: dict[str, Any]) -> None:
    data["gateways"][3]["x"] = "twelve"


def _unknown_key(data: dict[str, Any]) -> None:
    data["gateways"][1]["heigth"] = 3.0


def _gateway_off_floor(data: dict[str, Any]) -> None:
    data["gateways"][2]["y"] = -40.0


def _bowtie_zone(data: dict[str, Any]) -> None:
    data["zones"][1]["polygon"] = [[1, 1], [3, 3], [3, 1], [1, 3]]


def _bad_id(data: dict[str, Any]) -> None:
    data["zones"][0]["id"] = "Aisle 1"


@pytest.mark.parametrize("source", EXAMPLES, ids=lambda p: p.name)
@pytest.mark.parametrize(
    ("edit", "place", "words"),
    [
        (_duplicate_gateway, "gateways[3].id", "duplicate gateway id"),
        (_zone_outside, "zones[2].polygon", "outside the outline"),
        (_string_for_number, "gateways[3].x", "expected a number, got 'twelve'"),
        (_unknown_key, "gateways[1].heigth", "unknown key; allowed: id, level"),
        (_gateway_off_floor, "gateways[2]", "outside the outline"),
        (_bowtie_zone, "zones[1].polygon", "self-intersecting"),
        (_bad_id, "zones[0].id", "does not match"),
    ],
)
def test_broken_copies_name_the_place(
    tmp_path: Path, source: Path, edit: Any, place: str, words: str
) -> None:
    broken = broken_copy(tmp_path, source, edit)
    result = site_check(broken)
    assert result.returncode == 1
    line = next((ln for ln in result.stderr.splitlines() if f": {place}:" in ln), None)
    assert line is not None, result.stderr
    assert words in line
    # file:line: names the file and a line number inside it
    assert f"{broken}:" in line
    assert line.split(f"{broken}:", 1)[1].split(":", 1)[0].isdigit()


def test_yaml_errors_and_duplicate_keys_are_located(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("id: x\nkind: store\n  levels: [\n")
    with pytest.raises(ConfigError, match=r"bad.yaml:\d+:\d+: not valid YAML"):
        load_site(bad)
    dup = tmp_path / "dup.yaml"
    dup.write_text("id: x\nkind: store\nid: y\n")
    with pytest.raises(ConfigError, match=r"dup.yaml:3: id: key given twice"):
        load_site(dup)
    with pytest.raises(ConfigError, match="cannot read"):
        load_site(tmp_path / "missing.yaml")


def test_every_problem_is_reported_at_once() -> None:
    data = minimal()
    data["gateways"][0]["z"] = "high"
    data["gateways"][1]["x"] = None
    data["zones"][0]["kind"] = "aisel"
    with pytest.raises(ConfigError) as info:
        validate_site_data(data, "mini")
    assert len(info.value.problems) == 3
    assert any("zones[0].kind" in p and "'aisle'" in p for p in info.value.problems)


def test_references_zone_heights_and_levels_are_checked() -> None:
    data = minimal()
    data["reference_beacons"] = [
        {
            "beacon": "IBEACON:E2C56DB5-DFFB-48D2-B060-D0F5A71096E0:9:01",
            "x": 5.0,
            "y": 4.0,
            "z": 2.0,
        },
        {
            "beacon": "ibeacon:e2c56db5-dffb-48d2-b060-d0f5a71096e0:9:1",
            "x": 50.0,
            "y": 4.0,
            "z": 2.0,
        },
    ]
    data["zones"][0]["level"] = 3
    with pytest.raises(ConfigError) as info:
        validate_site_data(copy.deepcopy(data), "mini")
    text = "\n".join(info.value.problems)
    assert "reference_beacons[1].beacon: duplicate beacon" in text
    assert "reference_beacons[1]: reference beacon at (50, 4) is outside" in text
    assert "zones[0].level: no level 3" in text


@given(
    st.lists(
        st.tuples(st.floats(-50, 50, allow_nan=False), st.floats(-50, 50, allow_nan=False)),
        min_size=3,
        max_size=8,
    )
)
def test_any_polygon_validates_or_is_refused_with_a_reason(
    points: list[tuple[float, float]],
) -> None:
    data = minimal()
    data["levels"][0]["outline"] = [[-100, -100], [100, -100], [100, 100], [-100, 100]]
    data["zones"][0]["polygon"] = [list(p) for p in points]
    try:
        site = validate_site_data(data, "mini")
    except ConfigError as e:
        problems = e.problems
    else:
        problems = []
    if problems:
        assert all("zones[0].polygon" in p for p in problems)
        return
    polygon = list(site.zones[0].polygon)
    assert self_intersection(polygon) is None
    assert polygon_area_m2(polygon) > 0


def _polygon_edit(key: str, polygon: list[list[float]]) -> Any:
    def edit(data: dict[str, Any]) -> None:
        if key == "zones":
            data["zones"][0]["polygon"] = polygon
        elif key == "obstacles":
            data["levels"][0]["obstacles"] = [
                {"id": "o", "kind": "shelf", "loss_db": 5.0, "polygon": polygon}
            ]
        else:
            data["levels"][0]["outline"] = polygon

    return edit


def _set(*path: str | int, value: Any) -> Any:
    def edit(data: dict[str, Any]) -> None:
        node: Any = data
        for key in path[:-1]:
            node = node[key]
        node[path[-1]] = value

    return edit


def _circle(corners: int, radius: float) -> list[list[float]]:
    return [
        [radius * math.cos(2 * math.pi * i / corners), radius * math.sin(2 * math.pi * i / corners)]
        for i in range(corners)
    ]


INF = float("inf")


@pytest.mark.parametrize(
    ("edit", "place", "words"),
    [
        # the audit's OverflowError at geometry.py (math.ceil(inf)), for zones and obstacles
        (_polygon_edit("zones", [[1, 1], [INF, 1], [2, 2]]), "zones[0].polygon[1][0]",
         "finite number"),
        (_polygon_edit("obstacles", [[1, 1], [INF, 1], [2, 2]]),
         "levels[0].obstacles[0].polygon[1][0]", "finite number"),
        (_set("gateways", 0, "x", value=float("nan")), "gateways[0].x", "finite number"),
        (_set("gateways", 0, "y", value=-20_000.0), "gateways[0].y",
         "out of range: must be greater than or equal to -10000"),
        (_polygon_edit("outline", [[0, 0], [1e5, 0], [1e5, 1e5], [0, 1e5]]),
         "levels[0].outline[1][0]", "out of range: must be less than or equal to 10000"),
        (_set("timezone", value="America"), "timezone", "not an IANA time zone"),
        (_set("timezone", value="a" * 300), "timezone", "not an IANA time zone"),
        (_polygon_edit("outline", _circle(1001, 5.0)), "levels[0].outline",
         "at most 1000 items"),
        # the engine's floor grid would have taken 74 GiB (MemoryError in Engine(site))
        (_polygon_edit("outline", [[0, 0], [9999, 0], [9999, 9999], [0, 9999]]),
         "levels[0].outline", "spanning 9999 x 9999 m would have 10,002,000,100 cells"),
        (_set("levels", value=[
            {"level": 0, "outline": [[0, 0], [300, 0], [300, 300], [0, 300]]},
            {"level": 1, "outline": [[0, 0], [300, 0], [300, 300], [0, 300]]},
        ]), "levels[1].outline", "levels[0..1] together would have 18,240,800 cells"),
    ],
)  # fmt: skip
def test_out_of_bounds_values_name_file_line_and_place(
    tmp_path: Path, edit: Any, place: str, words: str
) -> None:
    data = minimal()
    edit(data)
    path = tmp_path / "site.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    with pytest.raises(ConfigError) as info:
        load_site(path)
    line = next((p for p in info.value.problems if f": {place}: " in p), None)
    assert line is not None, info.value.problems
    assert words in line
    assert re.match(rf"{re.escape(str(path))}:\d+: ", line), line


def test_the_floor_grid_limit_counts_the_cells_the_engine_allocates(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    for source in EXAMPLES:
        data = yaml.safe_load(source.read_text())
        engine_cells = sum(
            g.floor.size for g in FloorPlan(validate_site_data(data, "x")).levels.values()
        )
        monkeypatch.setattr(site_module, "MAX_FLOOR_GRID_CELLS", engine_cells - 1)
        with pytest.raises(ConfigError, match=f"would have {engine_cells:,} cells"):
            validate_site_data(data, "x")
        monkeypatch.undo()


@pytest.mark.parametrize(
    "shape",
    [
        # a round hall of the most corners allowed, with a zone along its wall
        {"outline": _circle(1000, 190.0), "zone": _circle(1000, 189.9)},
        # a 20 km strip, the widest the coordinates allow, with a zone drawn on its outline
        {
            "outline": [[-9999, 0], [9999, 0], [9999, 5], [-9999, 5]],
            "zone": [[-9999, 0], [9999, 0], [9999, 5], [-9999, 5]],
        },
        # a comb of 1,000 corners whose edges' boxes all overlap (no sweep shortcut)
        {
            "outline": [
                *([i * 0.3, 0.0] if k == 0 else [i * 0.3 + 300, 300.0]
                  for i in range(499) for k in (0, 1)),
                [149.4 + 300, -1.0], [0.0, -1.0],
            ],
        },
    ],
    ids=["round-hall", "strip", "comb"],
)  # fmt: skip
def test_the_largest_polygons_allowed_validate_in_seconds(shape: dict[str, Any]) -> None:
    data = minimal()
    data["levels"][0]["outline"] = shape["outline"]
    x, y = shape["outline"][0]
    data["gateways"] = [{"id": "gw-1", "x": float(x), "y": float(y), "z": 3.0}]
    data["zones"] = (
        [{"id": "z", "kind": "aisle", "polygon": shape["zone"]}] if "zone" in shape else []
    )
    start = time.perf_counter()
    validate_site_data(data, "big")
    assert time.perf_counter() - start < 10.0  # 0.2, 0.7 and 1.2 s measured


def _first_failing_pair(poly: list[tuple[float, float]]) -> tuple[int, int] | None:
    """self_intersection's definition: every pair of edges tested, in order."""
    n = len(poly)
    for i in range(n):
        a, b = poly[i], poly[(i + 1) % n]
        for j in range(i + 1, n):
            c, d = poly[j], poly[(j + 1) % n]
            if j == i + 1 or (i == 0 and j == n - 1):
                if _segments_overlap(a, b, c, d):
                    return (i, j)
            elif (
                segments_cross(a, b, c, d)
                or _segments_overlap(a, b, c, d)
                or point_segment_distance_m(c, a, b) < 1e-9
                or point_segment_distance_m(a, c, d) < 1e-9
            ):
                return (i, j)
    return None


@given(
    st.lists(
        st.tuples(
            st.one_of(st.integers(0, 4).map(float), st.floats(-50, 50)),
            st.one_of(st.integers(0, 4).map(float), st.floats(-50, 50)),
        ),
        min_size=3,
        max_size=12,
    )
)
def test_self_intersection_reports_the_pair_testing_every_pair_would(
    points: list[tuple[float, float]],
) -> None:
    """Only edges whose boxes come close are tested: the first failing pair is the same."""
    assert self_intersection(points) == _first_failing_pair(points)
