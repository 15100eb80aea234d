"""The radio map in a calibration file: what `calibrate` writes, `replay` and the hub read back
to 0.1 dB, files written as YAML lists before still read, and a damaged file a clear error;
the path-loss accuracy scale beside it."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest

from beacon_hub.calibration import Calibration, GatewayFit, load_calibration, save_calibration
from beacon_hub.errors import ConfigError
from beacon_hub.radiomap import RadioMap
from beacon_hub.site import Site, load_site

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
    with pytest.raises(ConfigError, match=r"cal\.yaml: not a calibration file"):
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
        ("0.7", "expected a mapping"),
        ("{walking: 0.7}", "'walking' is not one of"),
        ("{tracking: -0.5}", "tracking: expected a positive number"),
        ("{tracking: 0}", "tracking: expected a positive number"),
        ("{no_tracking: x}", "no_tracking: expected a positive number"),
        ("{tracking: true}", "tracking: expected a positive number"),
        ("{tracking: .inf}", "tracking: expected a positive number"),
    ],
)
def test_a_bad_path_loss_accuracy_scale_names_the_key(tmp_path: Path, bad: str, says: str) -> None:
    site = load_site(ROOT / "config" / "room.yaml")
    save_calibration(calibrated(site), tmp_path / "cal.yaml")
    text = (tmp_path / "cal.yaml").read_text()
    (tmp_path / "cal.yaml").write_text(text + f"path_loss_accuracy_scale: {bad}\n")
    with pytest.raises(ConfigError, match=rf"cal\.yaml: path_loss_accuracy_scale: {says}"):
        load_calibration(tmp_path / "cal.yaml", site)
