"""Site files: the examples validate; broken copies fail with the file, line and path."""

import copy
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import given
from hypothesis import strategies as st

from beacon_hub.errors import ConfigError
from beacon_hub.geometry import polygon_area_m2, self_intersection
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
