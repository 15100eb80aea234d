"""What a survey an installer can do is worth: the simulated store (E)'s test day (or with
`--site warehouse` the warehouse (F)'s), calibrated from a survey of one tag (`beacon-hub site
points`, what `beacon-hub survey` records) against the README's calibration from 300 s of its
beacons at known places (60 carts; 600 pallets at their bays), in one run.

    python scripts/survey_accuracy.py [--site store|warehouse] [--work DIR] [--spacing-m M ...]
        [--dwell-s S ...] [--map-bandwidth-m M ...] [--tag-interval-s S] [--mark-sd-s S] [--json]

Runs the installed CLIs as subprocesses: `beacon-sim run` of the test day (seed 1; the store's
120 s, the warehouse's 180 s) and its calibration day (seed 2, 300 s, building seed 1: the
README's commands), `beacon-hub calibrate` of that (the warehouse with `--plan-losses`, as
(F)); then per spacing and dwell `beacon-hub site points` and `beacon-sim run --scenario
survey` (the building of seed 1, one tag walked at 0.6 m/s to each point and held there; with
--dwell-s 0 walked through them), of which it keeps what `beacon-hub survey` writes (the
tag's readings, and its truth while it stands: a points survey leaves the walk between points
out; a walk's truth is the simulated one, or with --mark-sd-s rebuilt as the survey's walk mode
does from Enter marks that late or early), `beacon-hub calibrate` with each --map-bandwidth-m
(0.4 and 0.8); and for every calibration `beacon-hub replay` and `eval --kind cart` (`pallet`:
parked 60 s, their bay) of the test day, as surveyed and with 15 % of its field changed. Prints
a markdown table; with --json, one JSON object as the last line.
"""

from __future__ import annotations

import argparse
import csv
import itertools
import json
import math
import random
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from beacon_hub.csvfiles import TRUTH, CsvWriter, SurveyPoint, read_points
from beacon_hub.survey import walk_truth

ROOT = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class Building:
    """A README scenario a survey stands in for: its site, its test day, what is scored, and
    the calibration the README gives it."""

    site: Path
    test_s: int
    kind: str
    """`eval --kind`: the beacons scored."""
    baseline: str
    """The README's calibration of it: 300 s of its beacons at known places (seed 2)."""
    fit: tuple[str, ...] = ()
    """`calibrate` options the README gives it (besides the map kernel)."""
    figures: tuple[str, str, str] = ("median_m", "p90_m", "zone_accuracy_outside_band")
    """eval's median, p90 and share-right figures for the table (in the JSON as median_m,
    p90_m and zone_accuracy: for the warehouse, parked pallets' and the right or a neighbouring
    bay's share)."""


BUILDINGS = {
    "store": Building(ROOT / "config" / "store.yaml", 120, "cart", "60 carts, 300 s"),
    # (F): parked pallets, their bay, and the racks' losses kept in the plan
    "warehouse": Building(
        ROOT / "config" / "warehouse.yaml",
        180,
        "pallet",
        "600 pallets at their bays, 300 s",
        ("--plan-losses",),
        ("still_median_m", "still_p90_m", "bay_or_neighbour_accuracy"),
    ),
}
HUB = [sys.executable, "-m", "beacon_hub.cli"]
SIM = [sys.executable, "-m", "simulator.cli"]
WALK_SPEED_M_S = 0.6
"""The simulated surveyor's pace between points (simulator.agents.PopulationConfig's)."""
SURVEY_TAG_INTERVAL_S = 0.2
"""The simulated survey tag advertises 5 times a second (simulator.agents' walker), a survey
tag set to its fastest rate; `--tag-interval-s 1` is a beacon left at the usual 1 Hz."""
WALK_DWELL_S = 0.01
"""A walk survey (--dwell-s 0): the simulated tag stops this long at each point, which is not
stopping; the survey's walk mode keeps the whole route."""
TRUTH_INTERVAL_S = 0.5
"""beacon-sim's truth row spacing (simulator.scenario.TRUTH_INTERVAL_S)."""
PASS_NEAR_M = 0.35
"""A simulated walk passes a point where one of its truth rows comes this close: the rows are
0.3 m apart at the walker's 0.6 m/s."""


def _day(b: Building) -> list[str]:
    return ["--site", str(b.site), "--building-seed", "1", "--speed", "max"]


def _run(args: list[str]) -> str:
    result = subprocess.run(args, capture_output=True, text=True, check=False, timeout=3600)
    if result.returncode != 0:
        raise SystemExit(f"{' '.join(args)} failed:\n{result.stderr}")
    return result.stdout


def _say(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def _tag_only(
    truth: Path, readings: Path, tag_out: tuple[Path, Path], *, standing: bool
) -> tuple[str, int]:
    """The survey tag's readings, and its truth rows (standing: only where it stands, the same
    place as the rows before and after): what `beacon-hub survey` keeps of a points survey and
    of a walk. Returns the tag and its truth rows."""
    with truth.open() as fh:
        rows = list(csv.DictReader(fh))
    tags = {r["beacon"] for r in rows if r["beacon"].startswith("eddystone:")}
    if len(tags) != 1:
        raise SystemExit(f"{truth}: expected one survey tag, found {sorted(tags)}")
    (tag,) = tags
    mine = [r for r in rows if r["beacon"] == tag]
    keep = mine
    if standing:
        keep = [
            r
            for a, r, b in zip(mine, mine[1:], mine[2:], strict=False)
            if (a["x"], a["y"]) == (r["x"], r["y"]) == (b["x"], b["y"])
        ]
    truth_out, readings_out = tag_out
    with truth_out.open("w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(rows[0]), lineterminator="\n")
        w.writeheader()
        w.writerows(keep)
    with readings.open() as src, readings_out.open("w", newline="") as fh:
        reader = csv.DictReader(src)
        w = csv.DictWriter(fh, fieldnames=list(reader.fieldnames or []), lineterminator="\n")
        w.writeheader()
        w.writerows(r for r in reader if r["beacon"] == tag)
    return tag, len(keep)


def _passes(truth: list[tuple[float, float, float]], points: list[SurveyPoint]) -> list[float]:
    """When the simulated walk passed each point, in order, as far as it got (the route's time
    leaves out its turns, so the last few points are not reached): the nearest place to the
    point on the truth's polyline, near the first row within PASS_NEAR_M after the last pass."""
    marks: list[float] = []
    i = 0
    for p in points:
        near = (
            k for k in range(i, len(truth)) if math.dist(truth[k][1:], (p.x, p.y)) < PASS_NEAR_M
        )
        j = next(near, None)
        if j is None:
            break
        best = (math.inf, truth[j][0])
        for a, b in itertools.pairwise(truth[max(i, j - 1) : j + 2]):
            (ta, xa, ya), (tb, xb, yb) = a, b
            dx, dy = xb - xa, yb - ya
            span = dx * dx + dy * dy
            u = 0.0 if span == 0 else min(1.0, max(0.0, ((p.x - xa) * dx + (p.y - ya) * dy) / span))
            d = math.dist((xa + u * dx, ya + u * dy), (p.x, p.y))
            best = min(best, (d, ta + u * (tb - ta)))
        marks.append(max(best[1], marks[-1] if marks else -math.inf))
        i = j
    return marks


def _marked_walk(truth: Path, points: Path, tag: str, mark_sd_s: float, seed: int) -> int:
    """Rewrite a simulated walk's truth as `beacon-hub survey --walk` makes it: straight lines
    at even speed between the marks, each mark the true pass plus a surveyor's error drawn
    from a normal distribution of `mark_sd_s` (seeded). Returns the truth rows."""
    with truth.open() as fh:
        rows = [r for r in csv.DictReader(fh) if r["beacon"] == tag]
    track = [(float(r["t"]), float(r["x"]), float(r["y"])) for r in rows]
    height = float(rows[0]["z"]) if rows and rows[0]["z"] else None
    plan = list(read_points(points))
    rng = random.Random(seed)
    marks: list[float] = []
    for t in _passes(track, plan):
        # An Enter is never before the one it follows (the survey would take it as a new mark)
        marks.append(max(t + rng.gauss(0.0, mark_sd_s), marks[-1] + 0.01 if marks else -math.inf))
    out = walk_truth(tag, plan[: len(marks)], marks, TRUTH_INTERVAL_S, height)
    with CsvWriter(TRUTH, truth) as w:
        w.write_all(out)
    return len(out)


def _score(work: Path, cal: Path, label: str, b: Building) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for day in ("surveyed", "changed"):
        fixes = work / f"f_{label}_{day}.csv"
        _run(
            [
                *HUB,
                "replay",
                "--site",
                str(b.site),
                "--readings",
                str(work / f"test_{day}_r.csv"),
                "--out",
                str(fixes),
                "--calibration",
                str(cal),
            ]
        )
        ev = json.loads(
            _run(
                [
                    *HUB,
                    "eval",
                    "--fixes",
                    str(fixes),
                    "--truth",
                    str(work / f"test_{day}_t.csv"),
                    "--site",
                    str(b.site),
                    "--kind",
                    b.kind,
                ]
            )
        )
        median, p90, right = b.figures
        out[day] = {
            "median_m": ev[median],
            "p90_m": ev[p90],
            "zone_accuracy": ev[right],
            "within_accuracy": ev["within_accuracy"],
        }
    return out


@dataclass(frozen=True)
class Plan:
    building: Building
    duration_s: float
    """The route once: it starts at the first point."""
    bandwidths: list[float]
    tag_interval_s: float = SURVEY_TAG_INTERVAL_S
    mark_sd_s: float | None = None
    """A walk's truth from Enter marks this far off (standard deviation); None: the simulated
    truth itself."""


def _survey(
    work: Path, points: Path, spacing: float, dwell: float, plan: Plan
) -> dict[str, dict[str, Any]]:
    """Simulate the survey, keep what `beacon-hub survey` keeps, calibrate from it with each
    map bandwidth and score each calibration."""
    duration, bandwidths, b = plan.duration_s, plan.bandwidths, plan.building
    walk = dwell == 0
    tag = "" if plan.tag_interval_s == SURVEY_TAG_INTERVAL_S else f"_{plan.tag_interval_s:g}s-tag"
    marked = walk and plan.mark_sd_s is not None
    if marked:
        tag += f"_marks-{plan.mark_sd_s:g}s"
    label = f"survey_{spacing:g}m_{'walk' if walk else f'{dwell:g}s'}{tag}"
    _say(label)
    r, t = work / f"{label}_r.csv", work / f"{label}_t.csv"
    sim = ["--scenario", "survey", "--points", str(points), "--seed", "3"]
    if plan.tag_interval_s != SURVEY_TAG_INTERVAL_S:  # the walker is the survey's one `asset`
        sim += ["--advert-interval", f"asset={plan.tag_interval_s:g}"]
    sim += ["--dwell-s", f"{WALK_DWELL_S if walk else dwell:g}", "--duration", f"{duration:.0f}"]
    _run([*SIM, "run", *_day(b), *sim, "--out", str(r), "--truth", str(t)])
    tag_t, tag_r = work / f"{label}_tag_t.csv", work / f"{label}_tag_r.csv"
    tag_id, rows = _tag_only(t, r, (tag_t, tag_r), standing=not walk)
    if marked:
        rows = _marked_walk(tag_t, points, tag_id, plan.mark_sd_s or 0.0, seed=3)
    what = (
        f"walk through the points, {spacing:g} m apart"
        if walk
        else f"survey, {spacing:g} m, {dwell:g} s a point"
    )
    if plan.tag_interval_s != SURVEY_TAG_INTERVAL_S:
        what += f", a tag advertising every {plan.tag_interval_s:g} s"
    if marked:
        what += f", Enter marks off by {plan.mark_sd_s:g} s (SD)"
    out = {}
    for bw in bandwidths:
        cal = work / f"cal-{label}-{bw:g}.yaml"
        fit = ["--readings", str(tag_r), "--truth", str(tag_t), "--out", str(cal)]
        _run(
            [*HUB, "calibrate", "--site", str(b.site), *fit, *b.fit, "--map-bandwidth-m", f"{bw:g}"]
        )
        out[f"{what}, map kernel {bw:g} m"] = {
            "tag_seconds": round(rows * TRUTH_INTERVAL_S),
            "minutes": round(duration / 60),
            **_score(work, cal, f"{label}-{bw:g}", b),
        }
    return out


def measure(
    work: Path,
    spacings: list[float],
    dwells: list[float],
    bandwidths: list[float],
    tag_interval_s: float = SURVEY_TAG_INTERVAL_S,
    *,
    mark_sd_s: float | None = None,
    building: Building = BUILDINGS["store"],
) -> dict[str, Any]:
    b = building
    _say(f"test days: {b.test_s} s, as surveyed and with 15 % of the field changed")
    for day, extra in (("surveyed", []), ("changed", ["--field-change", "0.15"])):
        _run(
            [
                *SIM,
                "run",
                *_day(b),
                "--duration",
                str(b.test_s),
                "--seed",
                "1",
                *extra,
                "--out",
                str(work / f"test_{day}_r.csv"),
                "--truth",
                str(work / f"test_{day}_t.csv"),
            ]
        )
    _say(f"the README's calibration: {b.baseline} (seed 2)")
    _run(
        [
            *SIM,
            "run",
            *_day(b),
            "--duration",
            "300",
            "--seed",
            "2",
            "--out",
            str(work / "cal_r.csv"),
            "--truth",
            str(work / "cal_t.csv"),
        ]
    )
    _run(
        [
            *HUB,
            "calibrate",
            "--site",
            str(b.site),
            "--readings",
            str(work / "cal_r.csv"),
            "--truth",
            str(work / "cal_t.csv"),
            "--out",
            str(work / "cal-carts.yaml"),
            *b.fit,
        ]
    )
    results: dict[str, Any] = {
        b.baseline: {"minutes": 5, **_score(work, work / "cal-carts.yaml", "carts", b)}
    }
    for spacing in spacings:
        points = work / f"points_{spacing:g}.csv"
        _run(
            [
                *HUB,
                "site",
                "points",
                str(b.site),
                "--out",
                str(points),
                "--spacing-m",
                f"{spacing:g}",
            ]
        )
        with points.open() as fh:
            xy = [(float(r["x"]), float(r["y"])) for r in csv.DictReader(fh)]
        n = len(xy)
        walked_m = sum(math.dist(p, q) for p, q in itertools.pairwise(xy))
        for dwell in dwells:
            route = Plan(
                b, n * dwell + walked_m / WALK_SPEED_M_S, bandwidths, tag_interval_s, mark_sd_s
            )
            for name, result in _survey(work, points, spacing, dwell, route).items():
                results[name] = {"points": n, **result}
    return results


def _table(results: dict[str, Any], b: Building) -> str:
    what = (
        "median / p90 (m), zone"
        if b.kind == "cart"
        else "parked 60 s: median / p90 (m), right or neighbouring bay"
    )
    lines = [
        f"| calibration | minutes | test day: {what}, within | 15 % changed |",
        "| --- | --- | --- | --- |",
    ]
    for name, r in results.items():
        cells = []
        for day in ("surveyed", "changed"):
            d = r[day]
            zone = "-" if d["zone_accuracy"] is None else f"{100 * d['zone_accuracy']:.0f} %"
            within = f"{100 * d['within_accuracy']:.0f} %"
            cells.append(f"{d['median_m']:.2f} / {d['p90_m']:.2f}, {zone}, {within}")
        minutes = r.get("minutes", "-")
        lines.append(f"| {name} | {minutes} | {cells[0]} | {cells[1]} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--work", type=Path, help="keep the files here (default: a temp dir)")
    parser.add_argument("--spacing-m", type=float, action="append", help="repeatable (2.5)")
    parser.add_argument(
        "--dwell-s", type=float, action="append", help="repeatable (30); 0: a walk survey"
    )
    parser.add_argument(
        "--map-bandwidth-m", type=float, action="append", help="repeatable (0.4 and 0.8)"
    )
    parser.add_argument(
        "--tag-interval-s",
        type=float,
        default=SURVEY_TAG_INTERVAL_S,
        help="the survey tag's advertising interval (0.2; most beacons: 1)",
    )
    parser.add_argument(
        "--mark-sd-s",
        type=float,
        help="a walk's truth from the surveyor's Enter marks, off by this much (SD, seconds)",
    )
    parser.add_argument(
        "--site",
        choices=sorted(BUILDINGS),
        default="store",
        help="the README's store (E) or warehouse (F), their test days and calibrations",
    )
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    building = BUILDINGS[args.site]
    spacings = args.spacing_m or [2.5]
    dwells = args.dwell_s or [30.0]
    with tempfile.TemporaryDirectory() as tmp:
        work = args.work or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        bandwidths = args.map_bandwidth_m or [0.4, 0.8]
        results = measure(
            work,
            spacings,
            dwells,
            bandwidths,
            args.tag_interval_s,
            mark_sd_s=args.mark_sd_s,
            building=building,
        )
    print(_table(results, building))
    if args.json:
        print(json.dumps(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
