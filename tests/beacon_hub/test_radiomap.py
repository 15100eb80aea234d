"""The radio map in a calibration file: what `calibrate` writes, `replay` and the hub read back
to 0.1 dB, files written as YAML lists before still read, and a damaged file a clear error;
the path-loss accuracy scale beside it."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml
from hypothesis import event, given, settings
from hypothesis import strategies as st

from beacon_hub.calibration import Calibration, GatewayFit, load_calibration, save_calibration
from beacon_hub.engine import Engine, EngineConfig
from beacon_hub.errors import ConfigError
from beacon_hub.radiomap import RadioMap
from beacon_hub.site import Site, load_site
from tests.beacon_hub.test_engine import TAG, exact_readings, room_site

ROOT = Path(__file__).resolve().parents[2]


def calibrated(site: Site) -> Calibration:
    gateways = tuple(g.id for g in site.gateways)
    radio_map = RadioMap.for_site(site, gateways)
    rng = np.random.default_rng(3)
    xy = rng.uniform(0.5, 5.0, (600, 2))
    radio_map.observe(rng.integers(0, len(gateways), 600), xy, rng.normal(0.0, 4.0, 600))
    fit = GatewayFit(-59.0, 2.0, 4.0, 3.0, 100)
    return Calibration(site.id, dict.fromkeys(gateways, fit), radio_map)


def test_the_map_reads_back_to_a_tenth(tmp_path: Path) -> None:
    site = load_site(ROOT / "config" / "room.yaml")
    cal = calibrated(site)
    assert cal.radio_map is not None
    save_calibration(cal, tmp_path / "cal.yaml")
    back = load_calibration(tmp_path / "cal.yaml", site).radio_map
    assert back is not None
    np.testing.assert_allclose(back.sum_r, cal.radio_map.sum_r, rtol=0, atol=0.05 + 1e-9)
    np.testing.assert_allclose(back.sum_w, cal.radio_map.sum_w, rtol=0, atol=0.05 + 1e-9)
    assert np.abs(cal.radio_map.sum_r).max() > 1.0  # the map has learnt something to compare


def test_a_map_written_as_lists_reads_the_same() -> None:
    site = load_site(ROOT / "config" / "room.yaml")
    radio_map = calibrated(site).radio_map
    assert radio_map is not None
    data = radio_map.to_dict()
    as_lists = {
        **data,
        "gateways": {
            gw: {k: [float(v) for v in text.split()] for k, text in entry.items()}
            for gw, entry in data["gateways"].items()
        },
    }
    a = RadioMap.from_dict(data, radio_map.gateways)
    b = RadioMap.from_dict(as_lists, radio_map.gateways)
    np.testing.assert_array_equal(a.sum_r, b.sum_r)
    np.testing.assert_array_equal(a.sum_w, b.sum_w)


def test_a_damaged_map_names_the_file(tmp_path: Path) -> None:
    site = load_site(ROOT / "config" / "room.yaml")
    save_calibration(calibrated(site), tmp_path / "cal.yaml")
    text = (tmp_path / "cal.yaml").read_text()
    head, sep, tail = text.partition("sum_w: ")
    assert sep
    (tmp_path / "cal.yaml").write_text(head + sep + "0.0 zero " + tail)
    place = r"radio_map\.gateways\.node-living-sw\.sum_w"
    with pytest.raises(ConfigError, match=rf"cal\.yaml:\d+: {place}: expected numbers separated"):
        load_calibration(tmp_path / "cal.yaml", site)


def test_the_path_loss_accuracy_scales_read_back(tmp_path: Path) -> None:
    site = load_site(ROOT / "config" / "room.yaml")
    scales = {"tracking": 0.6684, "no_tracking": 1.2}
    cal = dataclasses.replace(calibrated(site), path_loss_accuracy_scale=scales)
    save_calibration(cal, tmp_path / "cal.yaml")
    back = load_calibration(tmp_path / "cal.yaml", site).path_loss_accuracy_scale
    assert back == {"tracking": 0.668, "no_tracking": 1.2}
    save_calibration(calibrated(site), tmp_path / "none.yaml")
    assert load_calibration(tmp_path / "none.yaml", site).path_loss_accuracy_scale == {}


@pytest.mark.parametrize(
    ("bad", "says"),
    [
        ("0.7", ": expected a mapping of keys"),
        ("{walking: 0.7}", ".walking: unknown key; allowed: no_tracking, tracking"),
        ("{tracking: -0.5}", ".tracking: -0.5 (float) is out of range: must be greater than 0"),
        ("{tracking: 0}", ".tracking: 0 (int) is out of range"),
        ("{no_tracking: x}", ".no_tracking: expected a number, got 'x'"),
        ("{tracking: true}", ".tracking: expected a number, got True"),
        ("{tracking: .inf}", ".tracking: Input should be a finite number"),
        ("{tracking: 1" + "0" * 400 + "}", ".tracking: expected a number"),
    ],
)
def test_a_bad_path_loss_accuracy_scale_names_the_key(tmp_path: Path, bad: str, says: str) -> None:
    site = load_site(ROOT / "config" / "room.yaml")
    save_calibration(calibrated(site), tmp_path / "cal.yaml")
    text = (tmp_path / "cal.yaml").read_text()
    (tmp_path / "cal.yaml").write_text(text + f"path_loss_accuracy_scale: {bad}\n")
    with pytest.raises(ConfigError) as info:
        load_calibration(tmp_path / "cal.yaml", site)
    [problem] = info.value.problems
    assert re.match(rf".*cal\.yaml:\d+: path_loss_accuracy_scale{re.escape(says)}", problem), (
        problem
    )


MINIMAL_MAP = {
    "origin": [0.0, 0.0],
    "resolution_m": 1.0,
    "bandwidth_m": 0.4,
    "prior_weight": 5.0,
    "shape": [2, 2],
    "gateways": {"g0": {"sum_r": "0.0 1.0 -1.0 0.5", "sum_w": "1.0 2.0 0.0 3.0"}},
}


def _with_map(tmp_path: Path, radio_map: dict[str, Any]) -> Path:
    gateways = {
        f"g{i}": {
            "ref_rssi_1m_dbm": -59.0,
            "path_loss_exponent": 2.0,
            "shadowing_db": 4.0,
            "residual_after_map_db": 3.0,
            "samples": 100,
        }
        for i in range(5)
    }
    path = tmp_path / "cal.yaml"
    doc = {"site": "room", "gateways": gateways, "radio_map": radio_map}
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


def _tick(site: Site, calibration: Calibration) -> None:
    """The engine takes the calibration in and places a tag with it (tracking on and off)."""
    for tracking in (True, False):
        engine = Engine(site, EngineConfig(tracking=tracking), calibration)
        for t in (10.0, 11.0):
            for readings in exact_readings(site, TAG, (5.0, 5.0), t):
                engine.ingest(readings)
            fixes = engine.tick(t + 0.5).fixes
        assert np.isfinite(fixes.x).all()
        assert np.isfinite(fixes.y).all()


def _grid(n: int, value: str = "0.0") -> str:
    return " ".join([value] * n)


@pytest.mark.parametrize(
    ("change", "place", "says"),
    [
        # the audit's map that loaded, then failed the engine's tick (IndexError in _bilinear)
        ({"shape": [1, 1], "gateways": {}}, "shape[0]", "must be greater than or equal to 2"),
        ({"shape": [0, 0], "gateways": {}}, "shape[0]", "must be greater than or equal to 2"),
        ({"shape": [float("inf"), 1]}, "shape[0]", "expected an integer"),
        ({"shape": [1000, 1000], "gateways": {}}, "shape", "1,000,000 cells; a map may have"),
        ({"shape": [2, 2, 2]}, "shape", "at most 2 items"),
        ({"origin": [0.0]}, "origin[1]", "required, but missing"),
        ({"origin": [float("nan"), 0.0]}, "origin[0]", "finite number"),
        ({"resolution_m": float("nan")}, "resolution_m", "finite number"),
        ({"resolution_m": 0.0}, "resolution_m", "greater than or equal to 0.01"),
        ({"bandwidth_m": 100.0}, "bandwidth_m", "400 cells of resolution_m 0.25 m; at most 8"),
        ({"prior_weight": -1.0}, "prior_weight", "must be greater than 0"),
        ({"prior_weight": "5"}, "prior_weight", "expected a number"),
        ({"gateways": {"g0": {"sum_r": "nan 0 0 0", "sum_w": _grid(4)}}}, "gateways.g0.sum_r",
         "value 1 is nan; expected finite numbers"),
        ({"gateways": {"g0": {"sum_r": [1.0, 10**400, 0, 0], "sum_w": _grid(4)}}},
         "gateways.g0.sum_r", "expected a list of numbers"),
        ({"gateways": {"g0": {"sum_r": _grid(3), "sum_w": _grid(4)}}}, "gateways.g0.sum_r",
         "3 values; expected 4 (shape 2 x 2)"),
        ({"gateways": {"g0": {"sum_r": _grid(4), "sum_w": "1 1 -1 1"}}}, "gateways.g0.sum_w",
         "value 3 is -1; evidence cannot be negative"),
        ({"gateways": {"g0": {"sum_r": "0 0 0 1000", "sum_w": _grid(4)}}}, "gateways.g0.sum_r",
         "a correction of 200 dB; at most 150"),
        ({"gateways": {"g0": {"sum_r": _grid(4)}}}, "gateways.g0.sum_w", "required, but missing"),
        ({"gateways": {"g0": {"sum_r": 5, "sum_w": _grid(4)}}}, "gateways.g0.sum_r",
         "expected a string of numbers, got int"),
    ],
)  # fmt: skip
def test_a_bad_map_is_refused_at_load_naming_the_place(
    tmp_path: Path, change: dict[str, Any], place: str, says: str
) -> None:
    site = room_site()
    radio_map = {**MINIMAL_MAP, "resolution_m": 0.25, **change}
    with pytest.raises(ConfigError) as info:
        load_calibration(_with_map(tmp_path, radio_map), site)
    line = next((p for p in info.value.problems if f": radio_map.{place}: " in p), None)
    assert line is not None, info.value.problems
    assert re.match(r".*cal\.yaml:\d+: ", line), line
    assert says in line


def test_the_smallest_map_that_loads_places_without_error(tmp_path: Path) -> None:
    """A map of 2 x 2 cells, the fewest a bilinear lookup reads, and one with no gateway."""
    site = room_site()
    for radio_map in (MINIMAL_MAP, {**MINIMAL_MAP, "gateways": {}}):
        _tick(site, load_calibration(_with_map(tmp_path, radio_map), site))


WILD_FLOATS = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from([0.0, -1.0, 1e-300, 0.01, 149.0, 1e6, 1e300]),
)


@st.composite
def radio_map_sections(draw: st.DrawFn) -> dict[str, Any]:
    """A valid 2 x 3 map with up to two of its values drawn from anywhere."""
    wild = draw(st.sets(st.sampled_from(["origin", "scalars", "shape", "grids"]), max_size=2))
    shape = [2, 3]
    if "shape" in wild:
        shape = draw(
            st.one_of(
                st.sampled_from([[1, 1], [1, 3], [3, 1], [0, 0], [2, 2], [], [2], [2, 2, 2]]),
                st.lists(st.integers(-1, 4), min_size=2, max_size=2),
            )
        )
    cells = max(shape[0] * shape[1], 0) if len(shape) == 2 else 6
    values = WILD_FLOATS if "grids" in wild else st.floats(-20, 20)
    weights = WILD_FLOATS if "grids" in wild else st.floats(0, 50)
    scalars = {"resolution_m": 1.0, "bandwidth_m": 0.4, "prior_weight": 5.0}
    if "scalars" in wild:
        scalars[draw(st.sampled_from(sorted(scalars)))] = draw(WILD_FLOATS)
    origin = [0.0, 0.0]
    if "origin" in wild:
        origin = draw(st.lists(WILD_FLOATS, min_size=0, max_size=3))
    return {
        "origin": origin,
        **scalars,
        "shape": shape,
        "gateways": {
            "g1": {
                "sum_r": " ".join(
                    map(repr, draw(st.lists(values, min_size=cells, max_size=cells)))
                ),
                "sum_w": draw(st.lists(weights, min_size=cells, max_size=cells)),
            },
        },
    }


@settings(max_examples=100, deadline=None)
@given(radio_map=radio_map_sections())
def test_any_map_is_refused_at_load_or_places(
    tmp_path_factory: pytest.TempPathFactory, radio_map: dict[str, Any]
) -> None:
    """What load_calibration accepts, the engine places with: no failure later, at a tick."""
    site = room_site()
    path = _with_map(tmp_path_factory.mktemp("map"), radio_map)
    try:
        calibration = load_calibration(path, site)
    except ConfigError:
        event("refused")
        return
    event("loaded")
    _tick(site, calibration)


def test_a_correction_over_nearly_no_evidence_is_refused_not_overflowed(tmp_path: Path) -> None:
    """Found by the property above: |sum_r| / (sum_w + prior_weight) overflowed to inf (a
    RuntimeWarning, not the ConfigError that names the value) for a prior_weight of 1e-300."""
    radio_map = {
        "origin": [0.0, 0.0],
        "resolution_m": 1.0,
        "bandwidth_m": 0.4,
        "prior_weight": 1e-300,
        "shape": [2, 3],
        "gateways": {"g1": {"sum_r": "0.0 0.0 0.0 0.0 0.0 179769314.0", "sum_w": [0.0] * 6}},
    }
    with pytest.raises(
        ConfigError, match=r"value 6 \(1\.79769e\+08\) makes a correction of inf dB"
    ):
        load_calibration(_with_map(tmp_path, radio_map), room_site())


def test_two_maps_of_one_site_and_grid_step_but_other_extents_get_their_own_plan_losses() -> None:
    """The plan's losses are cached per map grid; two grids at one origin and step but of other
    extents shared an entry, and the second map's set_base raised ValueError on its shape."""
    site = room_site()
    gateways = tuple(g.id for g in site.gateways)
    small = RadioMap.empty(gateways, (0.0, 0.0), (4.0, 4.0), resolution_m=0.5)
    large = RadioMap.empty(gateways, (0.0, 0.0), (8.0, 6.0), resolution_m=0.5)
    small.with_plan_losses(site, 1.0)
    large.with_plan_losses(site, 1.0)
    assert small.sum_r.shape != large.sum_r.shape
