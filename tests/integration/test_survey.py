"""`beacon-hub survey` against a real Mosquitto: gateways publish real batches of a tag that the
test moves from point to point, the survey records it, and `calibrate` takes what it wrote."""

from __future__ import annotations

import contextlib
import io
import math
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml

from beacon_hub.cli import main
from beacon_hub.csvfiles import Reading, SurveyPoint, TruthPoint, read_readings, read_truth
from beacon_hub.site import Site, load_site
from beacon_hub.survey import LAST_BATCH_POLL_S, SurveyConfig, SurveyError, run_survey
from tests.integration.hubkit import Gateways, site_file, unique_site
from tests.servers import Mosquitto

POINTS = [(5.0, 5.0), (20.0, 16.0), (35.0, 27.0), (10.0, 25.0), (30.0, 6.0)]
"""Survey points spread over the example store (40 x 32 m), off its shelves."""
GATEWAY_CLOCK_S = -7.0
"""The gateways' clocks 7 s behind this machine's: the readings must still meet the truth."""


@contextlib.contextmanager
def _sending(mosquitto: Mosquitto, site: Path) -> Iterator[Gateways]:
    """The site's gateways publishing a round a second, their clocks GATEWAY_CLOCK_S off."""
    gws = Gateways(mosquitto, site, beacons=2, samples_per_beacon=2, seed=5)
    gws.clock_s = GATEWAY_CLOCK_S
    stop = threading.Event()
    sender = threading.Thread(target=gws.run_for, args=(3600.0, stop), daemon=True)
    sender.start()
    try:
        yield gws
    finally:
        stop.set()
        sender.join()
        gws.close()


def test_point_survey_records_the_tag_at_its_points_and_calibrate_fits_it(
    mosquitto: Mosquitto, tmp_path: Path
) -> None:
    path = site_file(tmp_path, unique_site())
    site = load_site(path)
    with _sending(mosquitto, path) as gws:
        summary, cfg, moved_at = _survey_points(site, gws, tmp_path / "survey", mosquitto)
    tag, other = gws.beacon_ids
    assert summary["points"] == len(POINTS)
    assert summary["undecodable_batches"] == 0
    survey = tmp_path / "survey"
    truth = list(read_truth(survey / "truth.csv"))
    readings = list(read_readings(survey / "readings.csv"))
    assert {t.beacon for t in truth} == {r.beacon for r in readings} == {tag}
    assert other not in (survey / "readings.csv").read_text()
    assert all(t.z == pytest.approx(1.2) for t in truth)
    assert summary["readings"] == len(readings)
    assert summary["gateways_not_hearing"] == []
    _check_dwells(truth, readings, cfg, moved_at)
    _check_rssi(truth, readings, site)
    _check_calibrate(path, survey, tmp_path / "cal.yaml")


def _survey_points(
    site: Site, gws: Gateways, out: Path, mosquitto: Mosquitto
) -> tuple[dict[str, Any], SurveyConfig, list[float]]:
    """The points survey of gws' first beacon, moved to each of POINTS at its prompt."""
    moved_at: list[float] = []

    def ask(prompt: str) -> str:
        # The synthetic gateways compute a batch's RSSI when they send it, up to 1 s after
        # its first sample: let the last dwell's batches go before the tag moves.
        time.sleep(1.5)
        index = len(moved_at)
        gws.spots[0] = POINTS[index]
        moved_at.append(time.time())
        assert f"point {index + 1}/{len(POINTS)}" in prompt
        return ""

    cfg = SurveyConfig.model_validate(
        {"broker": {"url": mosquitto.url}, "dwell_s": 3.0, "settle_s": 1.0, "tag_height_m": 1.2}
    )
    points = [SurveyPoint(x=x, y=y) for x, y in POINTS]
    summary = run_survey(site, gws.beacon_ids[0], out, cfg, points, ask=ask, say=lambda _s: None)
    return summary, cfg, moved_at


def _check_dwells(
    truth: list[TruthPoint], readings: list[Reading], cfg: SurveyConfig, moved_at: list[float]
) -> None:
    """Every reading lies within a dwell, in this machine's clock (7 s off, none would), and
    each dwell holds its point's samples: 3 s x 2 samples/s x 20 gateways, give or take the
    round at each edge."""
    t_truth = np.array([t.t for t in truth])
    xy_truth = np.array([(t.x, t.y) for t in truth])
    for r in readings:
        assert np.min(np.abs(t_truth - r.t)) <= cfg.truth_step_s
    for k, (x, y) in enumerate(POINTS):
        at = np.flatnonzero((xy_truth[:, 0] == x) & (xy_truth[:, 1] == y))
        lo, hi = t_truth[at].min(), t_truth[at].max()
        assert hi - lo == pytest.approx(cfg.dwell_s, abs=0.01)
        assert lo >= moved_at[k] + cfg.settle_s - 0.01
        n = sum(lo <= r.t <= hi for r in readings)
        assert 4 * 20 <= n <= 8 * 20, (k, n)


def _check_rssi(truth: list[TruthPoint], readings: list[Reading], site: Site) -> None:
    """The RSSI written is what the gateways sent for the tag where the test put it: the path
    loss of hubkit.Gateways, -59 - 22 log10(d), with 3 dB of noise."""
    t_truth = np.array([t.t for t in truth])
    gw_xy = {g.id: (g.x, g.y) for g in site.gateways}
    residuals = []
    for r in readings:
        p = truth[int(np.argmin(np.abs(t_truth - r.t)))]
        gx, gy = gw_xy[r.gateway]
        d = max(math.hypot(p.x - gx, p.y - gy, 1.5), 0.5)
        residuals.append(r.rssi - (-59.0 - 22.0 * math.log10(d)))
    assert abs(np.mean(residuals)) < 1.0
    assert 2.0 < np.std(residuals) < 4.0


def _check_calibrate(site: Path, survey: Path, out: Path) -> None:
    """`calibrate` takes the files as written and gives the survey's model back, within what 5
    points of 3 dB noise can say."""
    readings, truth = str(survey / "readings.csv"), str(survey / "truth.csv")
    args = ["--readings", readings, "--truth", truth, "--out", str(out), "--no-map"]
    assert main(["calibrate", "--site", str(site), *args]) == 0
    fits = yaml.safe_load(out.read_text())["gateways"]
    assert len(fits) == 20

    def median(key: str) -> float:
        return float(np.median([f[key] for f in fits.values()]))

    assert median("ref_rssi_1m_dbm") == pytest.approx(-59, abs=3)
    assert median("path_loss_exponent") == pytest.approx(2.2, abs=0.4)
    assert median("shadowing_db") == pytest.approx(3.0, abs=1.0)


def test_walk_interpolates_between_the_marks(mosquitto: Mosquitto, tmp_path: Path) -> None:
    path = site_file(tmp_path, unique_site())
    site = load_site(path)
    marks: list[float] = []

    def ask(_prompt: str) -> str:
        time.sleep(2.0)
        marks.append(time.time())
        return ""

    cfg = SurveyConfig.model_validate({"broker": {"url": mosquitto.url}, "walk": True})
    points = [SurveyPoint(x=5.0, y=5.0), SurveyPoint(x=7.0, y=5.0), SurveyPoint(x=7.0, y=9.0)]
    with _sending(mosquitto, path) as gws:
        summary = run_survey(
            site, gws.beacon_ids[0], tmp_path / "walk", cfg, points, ask=ask, say=lambda _s: None
        )
    truth = list(read_truth(tmp_path / "walk" / "truth.csv"))
    readings = list(read_readings(tmp_path / "walk" / "readings.csv"))
    assert summary["points"] == 3
    assert truth[0].t == pytest.approx(marks[0], abs=0.05)
    assert truth[-1].t == pytest.approx(marks[-1], abs=0.05)
    assert (truth[-1].x, truth[-1].y) == (7.0, 9.0)
    # half way between the first two marks, half way between their points
    mid = (marks[0] + marks[1]) / 2
    t = np.array([p.t for p in truth])
    x = np.interp(mid, t, [p.x for p in truth])
    assert x == pytest.approx(6.0, abs=0.3)
    assert readings
    assert all(marks[0] - 0.01 <= r.t <= marks[-1] + 0.01 for r in readings)


def test_an_unreachable_broker_is_named(tmp_path: Path) -> None:
    site = load_site(site_file(tmp_path, unique_site()))
    cfg = SurveyConfig.model_validate({"broker": {"url": "mqtt://127.0.0.1:9"}})
    with pytest.raises(SurveyError, match=r"mqtt://127.0.0.1:9: not subscribed .*refused"):
        run_survey(site, "ibeacon:3d1a7b52-8c4e-4f0a-9b6d-2e5f8a1c7d40:1:1", tmp_path / "s", cfg)
    assert not (tmp_path / "s" / "readings.csv").exists()


def test_the_cli_refuses_a_point_off_the_floor_naming_its_line(tmp_path: Path) -> None:
    path = site_file(tmp_path, unique_site())
    points = tmp_path / "points.csv"
    points.write_text("x,y,name\n5,5,door\n45,5,outside\n")
    done = subprocess.run(
        [sys.executable, "-m", "beacon_hub.cli", "survey", "--site", str(path), "--beacon",
         "ibeacon:3D1A7B52-8C4E-4F0A-9B6D-2E5F8A1C7D40:1:1", "--out", str(tmp_path / "s"),
         "--points", str(points), "--broker", "mqtt://127.0.0.1:9"],
        capture_output=True, text=True, check=False, timeout=60,
    )  # fmt: skip
    assert done.returncode == 1
    assert f"{points}:3: (45, 5) is outside level 0's outline" in done.stderr


def test_ctrl_c_while_waiting_for_the_last_batches_still_writes_the_survey(
    mosquitto: Mosquitto, tmp_path: Path
) -> None:
    """Ctrl-C ends a dwell, and a second one often follows at once: it lands in the wait for
    the last batches, which must not throw away what was recorded (docs: written either way)."""
    path = site_file(tmp_path, unique_site())
    site = load_site(path)
    said: list[str] = []

    def sleep(seconds: float) -> None:
        if seconds == LAST_BATCH_POLL_S:  # the gateways are heard: the wait polls
            raise KeyboardInterrupt
        time.sleep(seconds)

    # 2.5 s: the gateways send a round a second, so some are heard before the dwell ends and
    # the wait for their next batch polls (with none heard there is nothing to wait for)
    cfg = SurveyConfig.model_validate(
        {"broker": {"url": mosquitto.url}, "dwell_s": 2.5, "settle_s": 0.0}
    )
    tag = "ibeacon:3d1a7b52-8c4e-4f0a-9b6d-2e5f8a1c7d40:1:1"
    out = tmp_path / "s"
    points = [SurveyPoint(x=5.0, y=5.0)]
    try:
        with _sending(mosquitto, path):
            summary = run_survey(
                site, tag, out, cfg, points, ask=lambda _p: "", say=said.append, sleep=sleep
            )
    except KeyboardInterrupt:
        pytest.fail("the Ctrl-C left the survey unwritten")
    assert summary["points"] == 1
    assert {(t.x, t.y) for t in read_truth(out / "truth.csv")} == {(5.0, 5.0)}
    assert (out / "readings.csv").exists()
    assert any("not waiting" in s for s in said)


def test_a_walk_ended_after_its_first_mark_records_no_point(
    mosquitto: Mosquitto, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """One mark spans no time: no truth, so no point either, and no `calibrate` to run next
    (it refuses a truth file without rows)."""
    path = site_file(tmp_path, unique_site())
    points = tmp_path / "points.csv"
    points.write_text("x,y\n5,5\n7,5\n")
    out = tmp_path / "walk"
    tag = "ibeacon:3d1a7b52-8c4e-4f0a-9b6d-2e5f8a1c7d40:1:1"
    args = ["survey", "--site", str(path), "--beacon", tag, "--out", str(out),
            "--points", str(points), "--walk", "--broker", mosquitto.url]  # fmt: skip
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr("sys.stdin", io.StringIO("\nq\n"))  # Enter at the first point, then q
        assert main(args) == 0
    captured = capsys.readouterr()
    assert '"points": 0' in captured.out
    assert "next: beacon-hub calibrate" not in captured.err
    assert list(read_truth(out / "truth.csv")) == []
    assert (out / "points.csv").read_text().splitlines()[1:] == []
