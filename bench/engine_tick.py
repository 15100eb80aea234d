"""One engine tick for 10,000 beacons heard by 8 gateways each, against scipy per beacon.

    python bench/engine_tick.py [--quick] [--map]

The same synthetic tick (a 100 x 100 m hall, gateways on a 10 m grid, beacons at random with
log-normal shadowing) is solved three ways in one run:
- the engine's whole tick (conditioning, multilateration, tracking, zones), path-loss mode;
- the engine's vectorised multilateration alone;
- the baseline: `scipy.optimize.least_squares` (soft-L1 loss) called once per beacon.
The ratio is baseline time over the engine's whole tick. With --map, the whole tick is also
timed with a calibrated radio map, where the engine solves the likelihood over a grid per beacon
(`tick_with_map_ms`; no baseline), and again once every beacon (all pallets, standing) has stood
long enough for its windows to be summed as well (`tick_with_map_still_ms`,
basins.ParkedEvidence). The last line is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import numpy as np
from numpy.typing import NDArray
from scipy.optimize import least_squares

from beacon_hub.basins import PARKED_BEGIN_S, PARKED_EVERY_TICKS, PARKED_MIN_WINDOWS
from beacon_hub.calibration import Calibration, GatewayFit
from beacon_hub.engine import Engine, EngineConfig, Readings
from beacon_hub.multilateration import Geometry, reduced_chi2, solve
from beacon_hub.pathloss import mean_rssi_dbm
from beacon_hub.radiomap import RadioMap
from beacon_hub.residuals import ResidualSpread
from beacon_hub.site import Site, validate_site_data

SIDE_M = 100.0
SPACING_M = 10.0
GATEWAYS_PER_BEACON = 8
REF_DBM, EXPONENT, SHADOWING_DB = -59.0, 2.2, 6.0


def hall() -> dict[str, object]:
    coords = np.arange(SPACING_M / 2, SIDE_M, SPACING_M)
    gateways = [
        {"id": f"g{i:03d}", "x": float(x), "y": float(y), "z": 6.0}
        for i, (x, y) in enumerate((x, y) for x in coords for y in coords)
    ]
    return {
        "id": "bench-hall",
        "kind": "warehouse",
        "radio": {
            "ref_rssi_1m_dbm": REF_DBM,
            "path_loss_exponent": EXPONENT,
            "shadowing_db": SHADOWING_DB,
        },
        "levels": [{"outline": [[0, 0], [SIDE_M, 0], [SIDE_M, SIDE_M], [0, SIDE_M]]}],
        "gateways": gateways,
        "beacon_kinds": [{"kind": "pallet", "match": ["ibeacon:*"], "height_m": 1.0}],
        "zones": [
            {
                "id": f"z{i}",
                "kind": "bay",
                "polygon": [[x, y], [x + 10, y], [x + 10, y + 10], [x, y + 10]],
            }
            for i, (x, y) in enumerate((x, y) for x in range(0, 100, 10) for y in range(0, 100, 10))
        ],
    }


F64 = NDArray[np.float64]


def calibration(site: Site, rng: np.random.Generator) -> Calibration:
    """A calibrated radio map as a survey would leave it: per gateway, 2,000 residuals of a
    smooth 4 dB field over the hall, so that the engine solves the map likelihood (grid)."""
    gw_ids = tuple(g.id for g in site.gateways)
    radio_map = RadioMap.for_site(site, gw_ids)
    xy = rng.uniform(0, SIDE_M, (len(gw_ids) * 2_000, 2))
    gw = np.repeat(np.arange(len(gw_ids)), 2_000)
    phase = rng.uniform(0, 2 * np.pi, (len(gw_ids), 2))[gw]
    field = 4.0 * np.sin(xy[:, 0] / 3.0 + phase[:, 0]) * np.cos(xy[:, 1] / 3.0 + phase[:, 1])
    radio_map.observe(gw, xy, field + rng.normal(0, 2.0, field.shape))
    fit = GatewayFit(REF_DBM, EXPONENT, SHADOWING_DB, SHADOWING_DB * 0.7, 2_000)
    return Calibration(site.id, dict.fromkeys(gw_ids, fit), radio_map)


def time_engine(
    site: Site,
    rssi: F64,
    nearest: NDArray[np.intp],
    repeats: int,
    cal: Calibration | None = None,
    *,
    settle_ticks: int = 0,
) -> tuple[float, float, int]:
    """Median and best seconds of a steady-state tick, and the number of fixes it produced;
    path loss only, or with a calibrated map (`cal`); after `settle_ticks` untimed ticks (the
    bench's beacons are pallets standing still: after PARKED_BEGIN_S their windows are summed
    too, basins.ParkedEvidence)."""
    n = rssi.shape[0]
    beacons = [f"ibeacon:00000000-0000-0000-0000-{i:012x}:1:1" for i in range(n)]
    engine = Engine(site, EngineConfig(use_map=cal is not None, window_s=1.0), cal)
    per_gw: dict[int, list[int]] = {}
    for b in range(n):
        for k in range(GATEWAYS_PER_BEACON):
            per_gw.setdefault(int(nearest[b, k]), []).append(b * GATEWAYS_PER_BEACON + k)

    def ingest(t: float) -> None:
        # as a gateway batch: each gateway lists only the beacons it heard
        for g, flat in per_gw.items():
            flat_a = np.asarray(flat)
            heard = flat_a // GATEWAYS_PER_BEACON
            engine.ingest(
                Readings(
                    gateway=site.gateways[g].id,
                    beacons=[beacons[i] for i in heard],
                    b=np.arange(heard.shape[0]),
                    t=np.full(flat_a.shape[0], t - 0.5),
                    rssi=rssi.reshape(-1)[flat_a],
                    tx=np.full(flat_a.shape[0], np.nan),
                )
            )

    ingest(0.0)
    engine.tick(0.0)  # the first tick starts the tracks; the steady state is what we time
    for k in range(1, settle_ticks + 1):
        ingest(float(k))
        engine.tick(float(k))
    times = []
    fixes = 0
    for k in range(settle_ticks + 1, settle_ticks + repeats + 1):
        ingest(float(k))
        start = time.perf_counter()
        fixes = len(engine.tick(float(k)).fixes)
        times.append(time.perf_counter() - start)
    return float(np.median(times)), min(times), fixes


def time_baseline(gw_xy: F64, rssi: F64, nearest: NDArray[np.intp], m: int) -> tuple[float, F64]:
    """scipy.optimize.least_squares per beacon on the first m beacons: seconds and positions."""
    xy = np.empty((m, 2))
    start = time.perf_counter()
    for b in range(m):
        g = gw_xy[nearest[b]]
        r = rssi[b]

        def residual(p: F64, g: F64 = g, r: F64 = r) -> F64:
            dist = np.sqrt(((p - g) ** 2).sum(axis=1) + 25.0)
            return (r - mean_rssi_dbm(dist, REF_DBM, EXPONENT)) / SHADOWING_DB

        xy[b] = least_squares(residual, g.mean(axis=0), loss="soft_l1").x
    return time.perf_counter() - start, xy


def time_map(
    site: Site, rssi: F64, nearest: NDArray[np.intp], rng: np.random.Generator
) -> dict[str, float]:
    """--map: the whole tick with a calibrated radio map, fresh and once every pallet has stood
    long enough for its windows to be summed too; printed, and returned for the JSON line."""
    map_s, map_best_s, _ = time_engine(site, rssi, nearest, 3, calibration(site, rng))
    print(
        f"  whole tick with a map, median of 3 {1000 * map_s:5.1f} ms   "
        f"best {1000 * map_best_s:.1f} ms"
    )
    settle = int(PARKED_BEGIN_S) + 2 * PARKED_MIN_WINDOWS * PARKED_EVERY_TICKS
    still_s, still_best_s, _ = time_engine(
        site, rssi, nearest, 3, calibration(site, rng), settle_ticks=settle
    )
    print(
        f"  ... all pallets still {settle} s      {1000 * still_s:5.1f} ms   "
        f"best {1000 * still_best_s:.1f} ms (their windows summed too)"
    )
    return {
        "tick_with_map_ms": round(1000 * map_s, 1),
        "tick_with_map_still_ms": round(1000 * still_s, 1),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="1,000 beacons, fewer repeats")
    parser.add_argument("--beacons", type=int, default=10_000)
    parser.add_argument(
        "--map",
        action="store_true",
        help="also time a tick with a calibrated radio map (the likelihood over a grid)",
    )
    args = parser.parse_args()
    n = 1_000 if args.quick else args.beacons
    rng = np.random.default_rng(1)
    site = validate_site_data(hall(), "bench")
    gw_xy = np.array([[g.x, g.y] for g in site.gateways])
    truth = rng.uniform(2, SIDE_M - 2, (n, 2))
    d_plan = np.linalg.norm(truth[:, None, :] - gw_xy[None], axis=2)
    nearest = np.argsort(d_plan, axis=1)[:, :GATEWAYS_PER_BEACON]
    d = np.sqrt(np.take_along_axis(d_plan, nearest, axis=1) ** 2 + 5.0**2)
    rssi = mean_rssi_dbm(d, REF_DBM, EXPONENT) + rng.normal(0, SHADOWING_DB, d.shape)

    # 15 ticks: this shared 2-core machine's speed wanders by a third from minute to minute
    repeats = 3 if args.quick else 15
    tick_s, best_s, fixes = time_engine(site, rssi, nearest, repeats)
    if fixes != n:
        print(f"the engine produced {fixes} fixes for {n} beacons", file=sys.stderr)
        return 1
    geo = Geometry(
        gw=nearest.astype(np.intp),
        gw_xy=gw_xy[nearest],
        dz_m=np.full(d.shape, 5.0),
        ref_dbm=np.full(d.shape, REF_DBM),
        exponent=np.full(d.shape, EXPONENT),
        rssi_dbm=rssi,
        sd_db=np.full(d.shape, SHADOWING_DB),
        mask=np.ones(d.shape, dtype=bool),
    )
    start = time.perf_counter()
    sol = solve(geo)
    solve_s = time.perf_counter() - start
    start = time.perf_counter()
    spread = ResidualSpread()
    spread.observe(0.0, reduced_chi2(geo, sol.xy, None))
    spread.factor()
    residuals_s = time.perf_counter() - start
    m = min(n, 300 if args.quick else 1000)
    base_s, base_xy = time_baseline(gw_xy, rssi, nearest, m)
    baseline_s = base_s * n / m
    err_engine = float(np.median(np.linalg.norm(sol.xy - truth, axis=1)))
    err_base = float(np.median(np.linalg.norm(base_xy - truth[:m], axis=1)))
    ratio = baseline_s / tick_s
    print(f"engine tick, {n:,} beacons x {GATEWAYS_PER_BEACON} gateways ({os.cpu_count()} cores)")
    print(
        f"  whole tick, median of {repeats:<2}     {1000 * tick_s:9.1f} ms   "
        f"best {1000 * best_s:.1f} ms"
    )
    print(
        f"  multilateration alone          {1000 * solve_s:9.1f} ms   "
        f"median error {err_engine:.2f} m"
    )
    print(
        f"  scipy least_squares per beacon {1000 * baseline_s:9.1f} ms   median error "
        f"{err_base:.2f} m (timed on {m}, scaled to {n})"
    )
    print(
        f"  residuals (accuracy's factor)  {1000 * residuals_s:9.1f} ms   "
        f"factor {spread.factor():.2f} (the bench draws the site's own spread)"
    )
    print(f"  ratio (baseline / whole tick)  {ratio:9.1f}")
    summary = {
        "beacons": n,
        "gateways_per_beacon": GATEWAYS_PER_BEACON,
        "tick_ms": round(1000 * tick_s, 2),
        "residuals_ms": round(1000 * residuals_s, 2),
        "tick_best_ms": round(1000 * best_s, 2),
        "multilateration_ms": round(1000 * solve_s, 2),
        "baseline_ms": round(1000 * baseline_s, 1),
        "ratio": round(ratio, 1),
        "median_error_m": round(err_engine, 3),
        "baseline_median_error_m": round(err_base, 3),
    }
    if args.map:
        summary.update(time_map(site, rssi, nearest, rng))
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
