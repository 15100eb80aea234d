"""How well *any* estimator can do in the room harness: the Bayes bound beside the engine.

    python scripts/room_harness_bound.py [--seeds 1 2 3] [--work DIR] [--json]

The harness (config/room.yaml, simulator/radio.py COMPANION_RADIO) draws every sample from a
known law: the path-loss model plus Gaussian noise of the site's shadowing_db, and on a tenth
of the samples a dip of multipath_dip_db. Knowing that law exactly, which no deployed engine
does, the best a position estimate can do is the posterior over the floor:

- one fix per sample (README, A): the posterior mean of one sample's four readings under a
  uniform prior on the floor: the estimate of least mean squared error from that sample alone;
- tracked (B): a forward grid filter fed every reading at its own time, the belief spread
  between readings as a random walk of RANDOM_WALK_M_PER_SQRT_S, its mean at each of the
  engine's fix times. Not a strict bound (a filter that knows the walking speed and the
  routes could do better), but the reference for what reading-by-reading Bayes gets.

For each seed it records both harness scenarios with `beacon-sim run`, replays them with
`beacon-hub replay` exactly as the README does, writes the bound's fixes as a fixes CSV, and
scores both with `beacon-hub eval` over the README's windows. Prints a markdown table; with
--json, one JSON object as the last line.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray
from scipy import ndimage

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # runs from a plain checkout too

from beacon_hub.csvfiles import FIXES, CsvWriter, Reading, read_fixes, read_readings  # noqa: E402
from beacon_hub.evaluation import zones_at  # noqa: E402
from beacon_hub.pathloss import mean_rssi_dbm  # noqa: E402
from beacon_hub.site import Site, load_site  # noqa: E402
from beacon_hub.wire import Fix  # noqa: E402
from simulator.radio import COMPANION_RADIO  # noqa: E402

SITE = ROOT / "config" / "room.yaml"
DURATION_S = 200
WALKS: dict[str, tuple[float, float]] = {
    "through the partition": (0.0, 62.0),
    "through the door": (62.0, 183.0),
}
"""The harness's two walks as `eval --window-s` spans (README, Accuracy)."""
GRID_STEP_M = 0.05
"""A tenth of the harness's errors (~0.5 m): finer changes the medians by under a centimetre."""
RANDOM_WALK_M_PER_SQRT_S = 0.6
"""Spread of the tracked filter's belief between readings: a walker at the harness's 0.6 m/s.
On seed 1, 0.35 gave 0.47 / 0.81 m (median / p95), 0.5 0.41 / 0.78, 0.8 0.40 / 0.82."""

F64 = NDArray[np.float64]


class Floor:
    """The site's floor on a grid, and each gateway's expected RSSI at every cell."""

    def __init__(self, site: Site) -> None:
        outline = np.asarray(site.levels[0].outline)
        lo, hi = outline.min(axis=0), outline.max(axis=0)
        xs = np.arange(lo[0], hi[0] + GRID_STEP_M / 2, GRID_STEP_M)
        ys = np.arange(lo[1], hi[1] + GRID_STEP_M / 2, GRID_STEP_M)
        self.x, self.y = np.meshgrid(xs, ys)
        height = site.beacon_kinds[0].height_m
        self.mean_dbm = {
            gw.id: mean_rssi_dbm(
                np.sqrt((self.x - gw.x) ** 2 + (self.y - gw.y) ** 2 + (gw.z - height) ** 2),
                site.radio.ref_rssi_1m_dbm,
                site.radio.path_loss_exponent,
            )
            for gw in site.gateways
        }
        self.sd_db = site.radio.shadowing_db

    def log_likelihood(self, gateway: str, rssi_dbm: float) -> F64:
        """The harness's law: N(0, sd) with probability 1 - p, N(-dip, sd) with p."""
        radio = COMPANION_RADIO
        z = (rssi_dbm - self.mean_dbm[gateway]) / self.sd_db
        dip = radio.multipath_dip_db / self.sd_db
        p = radio.multipath_probability
        return np.asarray(
            np.log((1 - p) * np.exp(-0.5 * z**2) + p * np.exp(-0.5 * (z + dip) ** 2)),
            dtype=np.float64,
        )

    def mean(self, log_post: F64) -> tuple[float, float, F64]:
        """Posterior mean (x, y) and the normalised posterior."""
        post = np.exp(log_post - log_post.max())
        post /= post.sum()
        return float((post * self.x).sum()), float((post * self.y).sum()), post


def _fix(site: Site, t: float, beacon: str, x: float, y: float) -> Fix:
    zone = zones_at(np.array([[x, y]]), np.zeros(1, dtype=np.int64), site.zones)[0]
    return Fix(t=t, beacon=beacon, x=x, y=y, accuracy_m=0.0, zone=zone)


def one_sample_bound(site: Site, readings: Sequence[Reading]) -> Iterator[Fix]:
    """The posterior mean of each sample (readings sharing a time) alone."""
    floor = Floor(site)
    samples: dict[tuple[float, str], list[Reading]] = {}
    for r in readings:
        samples.setdefault((r.t, r.beacon), []).append(r)
    for (t, beacon), rs in sorted(samples.items()):
        log_post = sum(floor.log_likelihood(r.gateway, r.rssi) for r in rs)
        x, y, _ = floor.mean(np.asarray(log_post))
        yield _fix(site, t, beacon, x, y)


def tracked_bound(
    site: Site, readings: Sequence[Reading], fix_times: Sequence[float]
) -> Iterator[Fix]:
    """The forward grid filter's mean at each fix time (one beacon, as in the harness)."""
    floor = Floor(site)
    ordered = sorted(readings, key=lambda r: r.t)
    beacon = ordered[0].beacon
    log_post = np.zeros_like(floor.x)
    last_t = ordered[0].t
    times = iter(sorted(fix_times))
    nxt = next(times, None)
    for r in [*ordered, None]:
        while nxt is not None and (r is None or nxt < r.t):
            x, y, _ = floor.mean(log_post)
            yield _fix(site, nxt, beacon, x, y)
            nxt = next(times, None)
        if r is None:
            return
        if r.t > last_t:
            _, _, post = floor.mean(log_post)
            sigma = RANDOM_WALK_M_PER_SQRT_S * np.sqrt(r.t - last_t) / GRID_STEP_M
            spread = ndimage.gaussian_filter(post, sigma, mode="constant")
            log_post = np.log(np.maximum(spread, 1e-300))
            last_t = r.t
        log_post = log_post + floor.log_likelihood(r.gateway, r.rssi)


def _run(args: list[str]) -> str:
    result = subprocess.run(args, capture_output=True, text=True, check=False, timeout=600)
    if result.returncode != 0:
        raise SystemExit(f"{' '.join(args)} failed:\n{result.stderr}")
    return result.stdout


def _write_fixes(path: Path, fixes: Iterator[Fix]) -> None:
    with CsvWriter(FIXES, path) as out:
        for f in fixes:
            out.write(f)


def _eval(fixes: Path, truth: Path, window: tuple[float, float] | None) -> dict[str, Any]:
    args = [sys.executable, "-m", "beacon_hub.cli", "eval", "--fixes", str(fixes)]
    args += ["--truth", str(truth), "--site", str(SITE)]
    if window is not None:
        args += ["--window-s", str(window[0]), str(window[1])]
    summary: dict[str, Any] = json.loads(_run(args))
    return summary


ENGINE_RUNS: tuple[tuple[str, str, list[str]], ...] = (
    ("companion", "companion", ["--no-tracking", "--set", "solver=grid"]),
    ("tracked", "tracked", []),
    (
        "tracked, grid, a tick per advert",
        "tracked",
        ["--set", "solver=grid", "--set", "tick_interval_s=0.2", "--set", "window_s=0.2"],
    ),
)
"""(row label, harness scenario, replay flags): the README's (A), its (B) with the defaults,
and (B) as a site of a few tags can afford it (the likelihood over the floor, a tick per
advert)."""


def measure(seed: int, work: Path) -> dict[str, dict[str, float]]:
    """{row: {"median_m", "p95_m", "wrong_room", "within_accuracy"}} for the engine and the
    bound, both modes."""
    site = load_site(SITE)
    sim = [sys.executable, "-m", "simulator.cli", "run", "--site", str(SITE)]
    hub = [sys.executable, "-m", "beacon_hub.cli", "replay", "--site", str(SITE)]
    out: dict[str, dict[str, float]] = {}
    recorded: set[str] = set()
    for n, (label, scenario, engine_flags) in enumerate(ENGINE_RUNS):
        rec, truth = work / f"{scenario}{seed}_r.csv", work / f"{scenario}{seed}_t.csv"
        if scenario not in recorded:
            args = ["--scenario", scenario, "--duration", str(DURATION_S), "--seed", str(seed)]
            _run([*sim, *args, "--speed", "max", "--out", str(rec), "--truth", str(truth)])
            recorded.add(scenario)
        engine, bound = work / f"run{n}-{seed}_f.csv", work / f"run{n}-{seed}_b.csv"
        _run([*hub, "--readings", str(rec), "--out", str(engine), *engine_flags])
        readings = list(read_readings(rec))
        if scenario == "companion":
            _write_fixes(bound, one_sample_bound(site, readings))
            windows: dict[str, tuple[float, float] | None] = dict(WALKS)
        else:
            times = [f.t for f in read_fixes(engine)]
            _write_fixes(bound, tracked_bound(site, readings, times))
            windows = {"both walks": None}
        for who, path in (("engine", engine), ("bound", bound)):
            for walk, window in windows.items():
                s = _eval(path, truth, window)
                wrong = 1.0 - s["zone_accuracy"] if s.get("zone_accuracy") is not None else None
                out[f"{label}, {walk}, {who}"] = {
                    "median_m": s["median_m"],
                    "p95_m": s["p95_m"],
                    "wrong_room": wrong if wrong is not None else float("nan"),
                    "within_accuracy": s["within_accuracy"],
                }
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[1])
    parser.add_argument("--work", type=Path, help="keep the recordings here (default: temp)")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    results: dict[int, dict[str, dict[str, float]]] = {}
    with tempfile.TemporaryDirectory(prefix="room-bound-") as tmp:
        work = args.work or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        for i, seed in enumerate(args.seeds, 1):
            print(f"seed {seed} ({i}/{len(args.seeds)}) ...", file=sys.stderr)
            results[seed] = measure(seed, work)
    print("| seed | scenario, walk | engine median / p95 (m) | Bayes bound median / p95 (m) |")
    print("|---|---|---|---|")
    for seed, rows in results.items():
        for key in rows:
            if key.endswith(", engine"):
                what = key.removesuffix(", engine")
                e, b = rows[key], rows[f"{what}, bound"]
                print(
                    f"| {seed} | {what} | {e['median_m']:.2f} / {e['p95_m']:.2f} "
                    f"| {b['median_m']:.2f} / {b['p95_m']:.2f} |"
                )
    if args.json:
        print(json.dumps({str(k): v for k, v in results.items()}))


if __name__ == "__main__":
    main()
