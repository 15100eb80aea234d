"""`beacon-hub`: the hub's command line (DESIGN.md, Command line)."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from beacon_hub.commands import (
    EXIT_OK,
    add_set_option,
    check_outputs,
    dispatch,
    new_parser,
    overrides_from,
)

__all__ = ["build_parser", "main"]

PROG = "beacon-hub"


def _warn(message: str) -> None:
    """A problem that does not stop the command: on stderr, once, beside its errors' format."""
    print(f"{PROG}: warning: {message}", file=sys.stderr)


def build_parser() -> argparse.ArgumentParser:
    parser = new_parser(PROG, "BLE beacon hub: positions, zones and events from gateway readings.")
    verbs = parser.add_subparsers(title="commands", metavar="COMMAND")

    demo = verbs.add_parser("demo", help="everything on one machine, no servers installed")
    demo.add_argument("--duration", type=float, metavar="S", help="stop after S seconds")
    add_set_option(demo, example="http.port=0")
    demo.set_defaults(handler=_demo)

    site = verbs.add_parser("site", help="site files").add_subparsers(
        title="site commands", metavar="COMMAND"
    )
    check = site.add_parser("check", help="validate a site file and summarise it")
    check.add_argument("file", type=Path, metavar="SITE.yaml")
    check.add_argument("--json", action="store_true", help="print the summary as JSON")
    check.set_defaults(handler=_site_check)
    points = site.add_parser("points", help="plan survey points over a site's walkable floor")
    points.add_argument("file", type=Path, metavar="SITE.yaml")
    points.add_argument("--out", type=Path, required=True, metavar="P.csv")
    points.add_argument(
        "--spacing-m",
        type=float,
        metavar="M",
        help="between points (survey.PLAN_SPACING_M: 1.5; with --walk WALK_SPACING_M: 1.0)",
    )
    points.add_argument(
        "--walk", action="store_true", help="for `survey --walk`: rows closer together"
    )
    points.set_defaults(handler=_site_points)

    run = verbs.add_parser("run", help="the live hub")
    run.add_argument(
        "--site",
        type=Path,
        action="append",
        metavar="S.yaml",
        help="repeatable; or sites: in HUB.yaml",
    )
    run.add_argument("--broker", metavar="URL", help="e.g. mqtt://127.0.0.1:1883")
    run.add_argument("--config", type=Path, metavar="HUB.yaml")
    run.add_argument("--log-level", default="INFO", choices=("DEBUG", "INFO", "WARNING", "ERROR"))
    add_set_option(run)
    run.set_defaults(handler=_run)

    _add_engine_verbs(verbs)

    assets = verbs.add_parser("assets", help="the asset registry").add_subparsers(
        title="assets commands", metavar="COMMAND"
    )
    imp = assets.add_parser("import", help="import beacon labels and kinds from CSV")
    imp.add_argument("file", type=Path, metavar="FILE.csv")
    imp.add_argument("--config", type=Path, metavar="HUB.yaml", help="where the hub's SQLite is")
    imp.add_argument("--db", type=Path, metavar="HUB.sqlite", help="the hub's SQLite file")
    imp.set_defaults(handler=_assets_import)

    erase = verbs.add_parser("erase", help="remove a shopper's data from the stores")
    erase.add_argument("beacon", metavar="BEACON")
    erase.add_argument("--config", type=Path, metavar="HUB.yaml", help="the hub's stores and key")
    erase.add_argument(
        "--site",
        type=Path,
        action="append",
        metavar="S.yaml",
        help="repeatable; or sites: in HUB.yaml",
    )
    erase.add_argument(
        "--vacuum",
        action="store_true",
        help="rewrite the SQLite file so no stale copy of the id stays (holds its lock meanwhile)",
    )
    add_set_option(erase)
    erase.set_defaults(handler=_erase)

    provision = verbs.add_parser("provision", help="broker credentials and configs").add_subparsers(
        title="provision commands", metavar="COMMAND"
    )
    for who in ("gateway", "hub"):
        p = provision.add_parser(who, help=f"credentials, ACL entry and config for a {who}")
        p.add_argument(
            "--site", required=True, action="append", metavar="SITE", help="hub: repeatable"
        )
        p.add_argument("--id", required=True, metavar="ID")
        p.add_argument("--out", type=Path, metavar="DIR", help="default ./provision/{user}")
        p.add_argument("--broker", metavar="URL", help="default mqtts://{this host}:8883")
        p.add_argument("--ca", type=Path, metavar="DIR", help="site CA (created if empty)")
        p.add_argument("--install-dir", type=Path, metavar="DIR", help="paths in the config")
        p.add_argument("--force", action="store_true", help="rotate existing credentials")
        p.set_defaults(handler=_provision, role=who)
    return parser


def _provision(args: argparse.Namespace) -> int:
    from beacon_hub import provision  # noqa: PLC0415  # keeps --help fast
    from beacon_hub.errors import BeaconHubError  # noqa: PLC0415

    sites = [s.strip() for arg in args.site for s in arg.split(",") if s.strip()]
    common: dict[str, Any] = {"broker_url": args.broker, "ca_dir": args.ca, "force": args.force}
    if args.install_dir is not None:
        common["install_dir"] = args.install_dir
    if args.role == "gateway":
        if len(sites) != 1:
            raise BeaconHubError("provision gateway: a gateway belongs to exactly one --site")
        user = provision.gateway_username(sites[0], args.id)
        out = args.out or Path("provision") / user
        done = provision.provision_gateway(sites[0], args.id, out, **common)
    else:
        user = provision.hub_username(args.id)
        out = args.out or Path("provision") / user
        done = provision.provision_hub(args.id, sites, out, **common)
    # Paths only: the password stays in its 0600 file.
    if done.created_ca:
        print(f"created site CA in {args.ca} (keep ca.key off the devices)", file=sys.stderr)
    print(f"provision {args.role}: broker user {done.username}", file=sys.stderr)
    print(f"  append to the broker's password_file: {done.broker_passwd}", file=sys.stderr)
    print(f"  append to the broker's acl_file:      {done.broker_acl}", file=sys.stderr)
    print(f"  copy to the {args.role}: {done.config.parent}/", file=sys.stderr)
    for path in done.files:
        print(f"    {path}", file=sys.stderr)
    return EXIT_OK


def _demo(args: argparse.Namespace) -> int:
    from beacon_hub.demo import load_demo_config, run_demo  # noqa: PLC0415  # keeps --help fast

    return run_demo(load_demo_config(overrides_from(args.overrides)), duration_s=args.duration)


def _run(args: argparse.Namespace) -> int:
    import logging  # noqa: PLC0415

    from beacon_hub.hubconfig import load_hub_config  # noqa: PLC0415  # numpy: keeps --help fast
    from beacon_hub.service import run_hub  # noqa: PLC0415

    overrides = overrides_from(args.overrides)
    if args.broker:
        overrides["broker.url"] = args.broker
    cfg = load_hub_config(args.config, sites=args.site, overrides=overrides)
    logging.basicConfig(
        level=args.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    return run_hub(cfg)


def _assets_import(args: argparse.Namespace) -> int:
    from beacon_hub.errors import BeaconHubError  # noqa: PLC0415
    from beacon_hub.hubconfig import SqliteConfig, load_hub_config  # noqa: PLC0415
    from beacon_hub.registry import import_assets, read_assets  # noqa: PLC0415
    from beacon_hub.stores import open_sqlite  # noqa: PLC0415

    if args.db is not None and args.config is not None:
        raise BeaconHubError("give --db or --config, not both")
    if args.db is not None:
        path = args.db
    elif args.config is not None:
        path = load_hub_config(args.config).stores.sqlite.path
    else:
        path = SqliteConfig().path
    assets = read_assets(args.file)
    db = open_sqlite(path)
    try:
        count = import_assets(db, assets)
    finally:
        db.close()
    print(f"assets import: {count} assets from {args.file} -> {path}", file=sys.stderr)
    return EXIT_OK


def _erase(args: argparse.Namespace) -> int:
    """Remove a shopper's rows under its id and its pseudonym from SQLite and InfluxDB."""
    from beacon_hub.hubconfig import load_hub_config  # noqa: PLC0415
    from beacon_hub.ids import canonical_beacon_id  # noqa: PLC0415
    from beacon_hub.privacy import (  # noqa: PLC0415
        erase_influx,
        erase_key,
        erase_sqlite,
        open_erase_sqlite,
        pseudonym,
        settle_erase,
    )
    from beacon_hub.stores import EVENT_MEASUREMENT, FIX_MEASUREMENT  # noqa: PLC0415

    overrides = overrides_from(args.overrides)
    cfg = load_hub_config(args.config, sites=args.site, overrides=overrides)
    beacon = canonical_beacon_id(args.beacon)
    ids = [beacon]
    # The existing database and key, or a message: a new key would erase another pseudonym.
    db = open_erase_sqlite(cfg.stores.sqlite.path)
    try:
        if not beacon.startswith("anon:"):
            ids.append(pseudonym(erase_key(cfg.privacy, cfg.stores.sqlite.path), beacon))
        print(f"erase: {' and '.join(ids)}")
        removed = erase_sqlite(db, ids)
        for table, count in removed.items():
            print(f"sqlite {cfg.stores.sqlite.path}: {table}: {count} rows")
        for line in settle_erase(db, cfg.stores.sqlite.path, ids, vacuum=args.vacuum):
            print(line)
    finally:
        db.close()
    if cfg.stores.influx is not None:
        lines = erase_influx(cfg.stores.influx, ids, (FIX_MEASUREMENT, EVENT_MEASUREMENT))
        for line in lines or ["influxdb: nothing stored"]:
            print(line)
    return EXIT_OK


def _add_engine_verbs(verbs: Any) -> None:
    """replay, calibrate, eval: the engine over recorded data."""
    replay = verbs.add_parser("replay", help="run the engine over a recording")
    replay.add_argument("--site", type=Path, required=True, metavar="S.yaml")
    replay.add_argument("--readings", type=Path, required=True, metavar="R.csv")
    replay.add_argument("--out", type=Path, required=True, metavar="F.csv")
    replay.add_argument("--calibration", type=Path, metavar="C.yaml")
    replay.add_argument(
        "--no-tracking",
        action="store_true",
        help="tracking off: one fix per sample instant (one tag), else per tick",
    )
    replay.add_argument("--no-map", action="store_true", help="path loss only, ignore the map")
    replay.add_argument(
        "--events",
        type=Path,
        metavar="E.csv",
        help="also write the engine's events (eval --events)",
    )
    replay.add_argument(
        "--config", type=Path, metavar="HUB.yaml", help="engine settings: its engine: section"
    )
    add_set_option(replay, example="solver=grid")
    replay.set_defaults(handler=_replay)

    calibrate = verbs.add_parser("calibrate", help="fit the radio model from a walk or survey")
    calibrate.add_argument("--site", type=Path, required=True, metavar="S.yaml")
    calibrate.add_argument(
        "--readings",
        type=Path,
        required=True,
        action="append",
        metavar="R.csv",
        help="a walk's readings; repeat with --truth for more walks (other days, other aisles)",
    )
    calibrate.add_argument(
        "--truth",
        type=Path,
        required=True,
        action="append",
        metavar="T.csv",
        help="where the tags were: one per --readings, in the same order",
    )
    calibrate.add_argument("--out", type=Path, required=True, metavar="C.yaml")
    calibrate.add_argument("--no-map", action="store_true", help="fit path loss only")
    calibrate.add_argument(
        "--plan-losses",
        action="store_true",
        help="take the site file's walls and obstacles out before fitting (the engine then "
        "expects them)",
    )
    calibrate.add_argument(
        "--map-bandwidth-m",
        type=float,
        default=0.4,
        metavar="M",
        help="the map's kernel: 0.4 (default) for a dense calibration (a robot, many tags), "
        "0.8 for a one-tag survey (beacon-hub survey)",
    )
    calibrate.set_defaults(handler=_calibrate)

    survey = verbs.add_parser(
        "survey", help="record a calibration survey of one tag from the live gateways"
    )
    survey.add_argument("--site", type=Path, required=True, metavar="S.yaml")
    survey.add_argument("--beacon", required=True, metavar="BEACON", help="the survey tag's id")
    survey.add_argument(
        "--out", type=Path, required=True, metavar="DIR", help="readings.csv, truth.csv, points.csv"
    )
    survey.add_argument(
        "--points",
        type=Path,
        metavar="P.csv",
        help="x,y[,z,level,name] in visiting order; without it, each point is typed",
    )
    survey.add_argument(
        "--walk",
        action="store_true",
        help="walk the points (`site points --walk`), Enter at each (else hold at each)",
    )
    survey.add_argument("--broker", metavar="URL", help="e.g. mqtt://127.0.0.1:1883")
    survey.add_argument("--config", type=Path, metavar="SURVEY.yaml", help="or a survey: section")
    add_set_option(survey, example="dwell_s=20")
    survey.set_defaults(handler=_survey)

    evaluate = verbs.add_parser("eval", help="error statistics of fixes against truth")
    evaluate.add_argument("--fixes", type=Path, action="append", required=True, metavar="F.csv")
    reference = evaluate.add_mutually_exclusive_group(required=True)
    reference.add_argument("--truth", type=Path, metavar="T.csv")
    reference.add_argument("--path", type=Path, metavar="P.csv")
    evaluate.add_argument("--site", type=Path, metavar="S.yaml")
    evaluate.add_argument("--report", type=Path, metavar="DIR")
    _eval_options(evaluate)


def _engine_config(args: argparse.Namespace) -> Any:
    from beacon_hub.config_loader import load_model  # noqa: PLC0415  # keeps --help fast
    from beacon_hub.engine import EngineConfig  # noqa: PLC0415

    overrides = overrides_from(args.overrides)
    if args.no_tracking:
        overrides["tracking"] = False
    if args.no_map:
        overrides["use_map"] = False
    return load_model(
        EngineConfig,
        path=args.config,
        env_prefix="BEACON_HUB_ENGINE",
        overrides=overrides,
        section="engine",
    )


def _replay(args: argparse.Namespace) -> int:
    from beacon_hub.calibration import load_calibration  # noqa: PLC0415  # numpy: keeps --help fast
    from beacon_hub.replay import replay  # noqa: PLC0415
    from beacon_hub.site import load_site  # noqa: PLC0415

    check_outputs(
        [("--out", args.out), ("--events", args.events)],
        inputs=[
            ("--site", args.site),
            ("--readings", args.readings),
            ("--calibration", args.calibration),
            ("--config", args.config),
        ],
    )
    site = load_site(args.site)
    calibration = load_calibration(args.calibration, site, warn=_warn) if args.calibration else None
    stats = replay(
        site,
        args.readings,
        args.out,
        config=_engine_config(args),
        calibration=calibration,
        events_path=args.events,
        warn=_warn,
    )
    print(
        f"replay: {stats.readings} readings, {stats.ticks} ticks, {stats.fixes} fixes, "
        f"{stats.events} events ({stats.late} late, {stats.unknown_gateway} from unknown "
        f"gateways) in {stats.seconds:.1f} s -> {args.out}",
        file=sys.stderr,
    )
    return EXIT_OK


def _survey(args: argparse.Namespace) -> int:
    import json  # noqa: PLC0415

    from beacon_hub.config_loader import load_model  # noqa: PLC0415  # numpy: keeps --help fast
    from beacon_hub.errors import BeaconHubError  # noqa: PLC0415
    from beacon_hub.ids import canonical_beacon_id  # noqa: PLC0415
    from beacon_hub.site import load_site  # noqa: PLC0415
    from beacon_hub.survey import (  # noqa: PLC0415
        SurveyConfig,
        load_points,
        next_calibrate,
        run_survey,
    )

    # Before the broker and the walk: a survey must not end in a folder it cannot write.
    check_outputs([], directories=[("--out", args.out)])
    if args.points is not None and args.points.resolve() == (args.out / "points.csv").resolve():
        # The natural place for a plan, and where the survey writes the points it visited:
        # refused as "already holds a survey" before, which sent people looking for one.
        raise BeaconHubError(
            f"--points {args.points} is in --out {args.out}, where the survey writes its own "
            "points.csv (the points visited): keep the plan under another name, e.g. plan.csv"
        )
    overrides = overrides_from(args.overrides)
    if args.broker:
        overrides["broker.url"] = args.broker
    if args.walk:
        overrides["walk"] = True
    cfg = load_model(
        SurveyConfig,
        path=args.config,
        env_prefix="BEACON_HUB_SURVEY",
        overrides=overrides,
        section="survey",
    )
    site = load_site(args.site)
    beacon = canonical_beacon_id(args.beacon)
    points = None if args.points is None else load_points(args.points, site)
    summary = run_survey(site, beacon, args.out, cfg, points)
    print(json.dumps(summary, indent=2))
    if summary["points"]:
        print(f"next: {next_calibrate(args.site, site, summary)}", file=sys.stderr)
    return EXIT_OK


def _calibrate(args: argparse.Namespace) -> int:
    from beacon_hub.calibration import (  # noqa: PLC0415  # numpy: keeps --help fast
        fit_calibration,
        path_loss_mode,
        save_calibration,
    )
    from beacon_hub.csvfiles import read_readings, read_truth  # noqa: PLC0415
    from beacon_hub.errors import BeaconHubError  # noqa: PLC0415
    from beacon_hub.radiomap import MAP_BANDWIDTH_RANGE_M  # noqa: PLC0415
    from beacon_hub.replay import path_loss_accuracy_scale  # noqa: PLC0415
    from beacon_hub.site import load_site  # noqa: PLC0415

    lo, hi = MAP_BANDWIDTH_RANGE_M
    if not lo <= args.map_bandwidth_m <= hi:
        raise BeaconHubError(
            f"calibrate: --map-bandwidth-m {args.map_bandwidth_m:g}: expected {lo:g} to {hi:g} m"
        )
    if len(args.readings) != len(args.truth):
        raise BeaconHubError(
            f"calibrate: {len(args.readings)} --readings but {len(args.truth)} --truth: give "
            "one truth file per readings file, in the same order"
        )
    check_outputs(
        [("--out", args.out)],
        inputs=[
            ("--site", args.site),
            *(("--readings", r) for r in args.readings),
            *(("--truth", t) for t in args.truth),
        ],
    )
    site = load_site(args.site)
    walks = []
    for r, t in zip(args.readings, args.truth, strict=True):
        readings = list(read_readings(r))
        repeated = len(readings) - len(set(readings))
        if repeated:
            _warn(
                f"{r}: {repeated} rows repeat an earlier row exactly (t, gateway, beacon, rssi "
                "and tx_power); they are fitted as recorded"
            )
        walks.append((readings, list(read_truth(t))))
    calibration = fit_calibration(
        site,
        walks,
        with_map=not args.no_map,
        plan_losses=args.plan_losses,
        map_bandwidth_m=args.map_bandwidth_m,
        progress=True,
        names=[(str(r), str(t)) for r, t in zip(args.readings, args.truth, strict=True)],
        warn=_warn,
    )
    for tracking in (True, False):
        mode = path_loss_mode(tracking)
        print(
            f"calibrate: replaying the walks on path loss alone ({mode}) to size accuracy_m",
            file=sys.stderr,
        )
        scale = path_loss_accuracy_scale(site, walks, calibration, tracking=tracking, progress=True)
        if scale is not None:
            calibration.path_loss_accuracy_scale[mode] = scale
    save_calibration(calibration, args.out)
    print(
        json.dumps(
            {
                gw: {
                    "ref_rssi_1m_dbm": round(f.ref_rssi_1m_dbm, 2),
                    "path_loss_exponent": round(f.path_loss_exponent, 3),
                    "shadowing_db": round(f.shadowing_db, 2),
                    "residual_after_map_db": round(f.residual_after_map_db, 2),
                    "samples": f.samples,
                }
                for gw, f in calibration.gateways.items()
            },
            indent=1,
        )
    )
    scales = calibration.path_loss_accuracy_scale
    sized = ", ".join(f"{k} x {v:.3f}" for k, v in scales.items()) or "not (too few fixes)"
    print(
        f"calibrate: {len(calibration.gateways)} gateways, accuracy_m on path loss alone "
        f"sized {sized} -> {args.out}",
        file=sys.stderr,
    )
    return EXIT_OK


def _site_check(args: argparse.Namespace) -> int:
    from beacon_hub.site import load_site, site_summary  # noqa: PLC0415  # keeps --help fast

    summary = site_summary(load_site(args.file))
    if args.json:
        print(json.dumps(summary, indent=2))
    else:
        print(f"{args.file}: OK")
        print(_format_summary(summary))
    return EXIT_OK


def _site_points(args: argparse.Namespace) -> int:
    from beacon_hub.errors import BeaconHubError  # noqa: PLC0415
    from beacon_hub.site import load_site  # noqa: PLC0415  # keeps --help fast
    from beacon_hub.survey import (  # noqa: PLC0415
        PLAN_CLEARANCE_M,
        PLAN_SPACING_M,
        WALK_SPACING_M,
        plan_points,
        write_points,
    )

    spacing = args.spacing_m
    if spacing is None:
        spacing = WALK_SPACING_M if args.walk else PLAN_SPACING_M
    if not 0.5 <= spacing <= 50.0:
        raise BeaconHubError(f"--spacing-m {spacing:g}: expected 0.5 to 50 metres")
    check_outputs([("--out", args.out)], inputs=[("SITE.yaml", args.file)])
    site = load_site(args.file)
    points = plan_points(site, spacing)
    # A level too small or too crowded for a point clear of its edges gets none: said, or the
    # survey would leave that floor out without a word.
    planned = {site.level_number(p.level) for p in points}
    for level in site.levels:
        if level.level not in planned:
            message = (
                f"{args.file}: no point fits the walkable floor of level {level.level} at "
                f"--spacing-m {spacing:g}, {PLAN_CLEARANCE_M:g} m clear of obstacles and the "
                "outline: give a smaller --spacing-m or add its points to the file by hand"
            )
            if not points:
                raise BeaconHubError(message)
            _warn(message)
    write_points(points, args.out)
    print(f"site points: {len(points)} points -> {args.out}", file=sys.stderr)
    return EXIT_OK


def _eval_options(evaluate: argparse.ArgumentParser) -> None:
    evaluate.add_argument("--label", action="append", default=[], help="a name per --fixes")
    evaluate.add_argument(
        "--band-m", type=float, default=1.0, metavar="M", help="zone-edge band (default 1 m)"
    )
    evaluate.add_argument(
        "--events",
        type=Path,
        metavar="E.csv",
        help="score the pallet_moved events of replay --events against the truth's departures",
    )
    evaluate.add_argument(
        "--kind",
        metavar="KIND",
        help="score only beacons of this kind (cart, pallet, ...: the site's beacon_kinds)",
    )
    evaluate.add_argument(
        "--window-s",
        type=float,
        nargs=2,
        metavar=("START", "END"),
        help="score only fixes from START to before END seconds after the truth's first row",
    )
    evaluate.set_defaults(handler=_eval)


def _eval(args: argparse.Namespace) -> int:
    from beacon_hub.evaluation import run_eval  # noqa: PLC0415  # numpy: keeps --help fast

    check_outputs([], directories=[("--report", args.report)])
    result = run_eval(
        args.fixes,
        truth_path=args.truth,
        path_path=args.path,
        site_path=args.site,
        report_dir=args.report,
        band_m=args.band_m,
        labels=args.label,
        kind=args.kind,
        events_path=args.events,
        window_s=tuple(args.window_s) if args.window_s else None,
    )
    print(json.dumps(result, indent=2))
    return EXIT_OK


def _format_summary(s: dict[str, Any]) -> str:
    spacing = s["gateway_spacing_m"]
    height = s["gateway_height_m"]
    zones = ", ".join(f"{n} {kind}" for kind, n in s["zones_by_kind"].items()) or "none"
    kinds = ", ".join(f"{k} at {h:g} m" for k, h in s["beacon_kinds"].items()) or "none"
    rows = [
        ("site", f"{s['site']} ({s['kind']}) {s['name']}".rstrip()),
        ("floor", f"{s['area_m2']:g} m2 on {s['levels']} level(s)"),
        (
            "gateways",
            (
                f"{s['gateways']}, {s['gateways_per_100m2']:g} per 100 m2, nearest-neighbour "
                f"spacing {spacing['min']}-{spacing['max']} m (median {spacing['median']}), "
                f"mounted {height['min']:g}-{height['max']:g} m"
            ),
        ),
        ("zones", f"{s['zones']}: {zones}"),
        ("obstacles", f"{s['obstacles']}, walls {s['walls']}"),
        (
            "references",
            f"{s['reference_beacons']} beacons, {s['reference_beacons_per_50m2']:g} per 50 m2",
        ),
        ("beacon kinds", kinds),
    ]
    return "\n".join(f"  {name:<13}{value}" for name, value in rows)


def main(argv: Sequence[str] | None = None) -> int:
    return dispatch(build_parser(), argv)


if __name__ == "__main__":
    sys.exit(main())
