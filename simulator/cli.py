"""`beacon-sim`: the simulator's command line."""

from __future__ import annotations

import argparse
import math
import sys
import time
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import cast

from beacon_hub.commands import EXIT_OK, dispatch, new_parser
from beacon_hub.errors import BeaconHubError
from beacon_hub.site import Site, load_site

__all__ = ["DEFAULT_START_S", "main", "parse_speed"]

PROG = "beacon-sim"

DEFAULT_START_S = 1_735_689_600.0
"""2025-01-01T00:00:00Z: where a file-only run's clock starts unless --start says otherwise, so
the same seed writes the same bytes. A broker run starts at the current time (a live hub
compares batch send times with its own clock)."""

SCENARIOS = ("store", "warehouse", "companion", "tracked", "survey")


def parse_speed(text: str) -> float:
    """`--speed`: a factor over real time, or `max` for as fast as possible (infinity)."""
    if text == "max":
        return float("inf")
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected a factor such as 10, or max; got {text!r}"
        ) from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"speed must be positive, got {text!r}")
    return value


def _interval(text: str) -> tuple[str, float]:
    kind, sep, value = text.partition("=")
    if not sep or kind not in ("cart", "pallet", "reference", "asset"):
        raise argparse.ArgumentTypeError(f"expected KIND=SECONDS with a beacon kind, got {text!r}")
    try:
        seconds = float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: {value!r} is not a number") from None
    if not 0.02 <= seconds <= 10.24:
        raise argparse.ArgumentTypeError(
            f"{text!r}: BLE advertising intervals are 20 ms to 10.24 s"
        )
    return kind, seconds


def _survey(args: argparse.Namespace, site: Site, scenario: str | None) -> dict[str, object]:
    """The population's changes for --scenario survey: its --points as one walk."""
    from beacon_hub.survey import load_points  # noqa: PLC0415
    from simulator.agents import Walk  # noqa: PLC0415

    if (scenario == "survey") != (args.points is not None):
        raise BeaconHubError("--scenario survey and --points go together")
    if args.points is None:
        return {}
    points = tuple((p.x, p.y) for p in load_points(args.points, site))
    changes: dict[str, object] = {"walks": (Walk("survey", points, 1),)}
    if args.dwell_s is not None:  # else PopulationConfig's, survey's own default
        if not 0 < args.dwell_s < math.inf:
            raise BeaconHubError(f"--dwell-s must be a positive number, got {args.dwell_s:g}")
        changes["dwell_s"] = args.dwell_s
    return changes


def _run(args: argparse.Namespace) -> int:
    # numpy and the engine load only for `run`, so `--help` stays instant
    from simulator.publisher import MqttPublisher  # noqa: PLC0415
    from simulator.radio import COMPANION_RADIO, REALISTIC_RADIO  # noqa: PLC0415
    from simulator.scenario import (  # noqa: PLC0415
        ReadingsCsv,
        RunOptions,
        ScenarioName,
        Simulation,
        Sink,
        TruthCsv,
        default_population,
        run,
    )

    if not (args.broker or args.out or args.truth):
        raise BeaconHubError("nothing to do: give --broker, --out and/or --truth")
    if not 0 < args.duration < math.inf:
        raise BeaconHubError(
            f"--duration must be a positive number of seconds, got {args.duration:g}"
        )
    if not 0 <= args.tag_power_sd_db < math.inf:
        raise BeaconHubError(f"--tag-power-sd-db must be 0 or more, got {args.tag_power_sd_db:g}")
    if not 0 <= args.field_change <= 1:
        raise BeaconHubError(f"--field-change must be from 0 to 1, got {args.field_change:g}")
    if not 0 <= args.heading_db < math.inf:
        raise BeaconHubError(f"--heading-db must be 0 or more, got {args.heading_db:g}")
    if not 0 <= args.burst_loss <= 1:
        raise BeaconHubError(f"--burst-loss must be from 0 to 1, got {args.burst_loss:g}")
    for option, seed in (("--seed", args.seed), ("--building-seed", args.building_seed)):
        if seed is not None and seed < 0:
            raise BeaconHubError(f"{option} must be 0 or more, got {seed}")
    site = load_site(args.site)
    scenario = cast(ScenarioName | None, args.scenario)
    population = default_population(site, scenario)
    changes: dict[str, object] = {
        key: getattr(args, key)
        for key in ("carts", "shoppers_per_hour", "pallets", "forklifts", "moves_per_hour")
        if getattr(args, key) is not None
    }
    if args.advert_interval:
        changes["advert_interval_s"] = dict(args.advert_interval)
    changes.update(_survey(args, site, scenario))
    population = replace(population, **changes)  # type: ignore[arg-type]
    # the room harness's walks have its radio; a survey walks the site's own building
    radio = COMPANION_RADIO if population.walks and scenario != "survey" else REALISTIC_RADIO
    if args.heading_db or args.burst_loss:
        radio = radio.with_(heading_sd_db=args.heading_db, burst_loss=args.burst_loss)
    wall_start: float | None = None
    if args.start is not None:
        start = args.start
    elif args.broker:
        start = math.floor(time.time())
        # Window [t0, t1) goes out when the wall clock reaches t1, as gateway/daemon.py closes
        # its windows on whole seconds: the hub then ticks as soon as a round is in.
        wall_start = time.monotonic() - (time.time() - start)
    else:
        start = DEFAULT_START_S
    options = RunOptions(
        duration_s=args.duration,
        seed=args.seed,
        start_s=start,
        population=population,
        radio=radio,
        building_seed=args.building_seed,
        tag_power_sd_db=args.tag_power_sd_db,
        announce_tx=not args.no_announce,
        field_change=args.field_change,
    )
    try:
        sim = Simulation(site, options)
    except ValueError as e:
        raise BeaconHubError(f"{args.site}: {e}") from e
    sinks: list[Sink] = []
    if args.out:
        sinks.append(ReadingsCsv(args.out))
    if args.truth:
        sinks.append(TruthCsv(args.truth))
    if args.broker:
        sinks.append(MqttPublisher(args.broker, sim))
    counts = run(sim, sinks, speed=args.speed, wall_start_s=wall_start)
    print(
        f"{PROG}: {site.id}: {len(sim.beacon_ids)} beacons, {len(sim.gateway_ids)} gateways, "
        f"{counts['simulated_s']:.0f} s simulated in {counts['wall_s']:.1f} s, "
        f"{counts['readings']:.0f} readings in {counts['batches']:.0f} batches",
        file=sys.stderr,
    )
    return EXIT_OK


def main(argv: Sequence[str] | None = None) -> int:
    parser = new_parser(PROG, "Simulated gateways: a site, moving beacons and a realistic radio.")
    verbs = parser.add_subparsers(title="commands", metavar="COMMAND")
    run = verbs.add_parser("run", help="simulate, to a broker and/or files")
    run.add_argument("--site", type=Path, required=True, metavar="S.yaml")
    run.add_argument("--duration", type=float, required=True, metavar="S", help="seconds")
    run.add_argument("--seed", type=int, required=True, metavar="N")
    run.add_argument(
        "--building-seed",
        type=int,
        metavar="N",
        help="draw the building's radio from N, not --seed (a survey and a later run share it)",
    )
    run.add_argument("--speed", type=parse_speed, default=1.0, metavar="X|max")
    run.add_argument("--broker", metavar="URL", help="publish batches, e.g. mqtt://127.0.0.1")
    run.add_argument("--out", type=Path, metavar="R.csv", help="write readings")
    run.add_argument("--truth", type=Path, metavar="T.csv", help="write ground truth")
    extra = run.add_argument_group("scenario (defaults follow the site's kind)")
    extra.add_argument(
        "--scenario",
        choices=SCENARIOS,
        help="store: carts; warehouse: pallets and forklifts; companion / tracked: the room "
        "harness's walks, one sample a second or walked at 0.6 m/s with 5 adverts/s; survey: "
        "one tag walked to each of --points and held there --dwell-s, 5 adverts/s",
    )
    extra.add_argument(
        "--points",
        type=Path,
        metavar="P.csv",
        help="survey: the points to stand the tag at (beacon-hub site points), in order",
    )
    extra.add_argument(
        "--dwell-s", type=float, metavar="S", help="survey: seconds at a point (survey's: 10)"
    )
    extra.add_argument("--carts", type=int, metavar="N", help="cart tags in the store (60)")
    extra.add_argument("--shoppers-per-hour", type=float, metavar="R", help="arrivals (240)")
    extra.add_argument("--pallets", type=int, metavar="N", help="pallet tags (600)")
    extra.add_argument("--forklifts", type=int, metavar="N", help="tagged forklifts (3)")
    extra.add_argument("--moves-per-hour", type=float, metavar="R", help="pallet moves (60)")
    extra.add_argument(
        "--advert-interval",
        type=_interval,
        action="append",
        metavar="KIND=S",
        help="advertising interval of a beacon kind, e.g. pallet=0.5 (repeatable)",
    )
    extra.add_argument(
        "--tag-power-sd-db",
        type=float,
        default=0.0,
        metavar="SD",
        help="each tag transmits N(0, SD) dB off what it announces (mixed models; 0)",
    )
    extra.add_argument(
        "--field-change",
        type=float,
        default=0.0,
        metavar="F",
        help="share of the building's static shadowing drawn anew: the --building-seed "
        "building on another day, its survey aged (0; the real flat's: 0.15-0.3)",
    )
    extra.add_argument(
        "--heading-db",
        type=float,
        default=0.0,
        metavar="SD",
        help="each tag's gain towards a gateway varies with its heading, SD dB over a full "
        "turn (its antenna pattern; 0; the real flat's: 2)",
    )
    extra.add_argument(
        "--burst-loss",
        type=float,
        default=0.0,
        metavar="P",
        help="a share P of adverts is lost at most gateways at once (bodies, busy radios, "
        "Wi-Fi bursts), besides the independent losses (0; the real flat's: 0.13)",
    )
    extra.add_argument(
        "--no-announce",
        action="store_true",
        help="tags announce no tx power (plain adverts; the hub then learns it, tx_offset)",
    )
    extra.add_argument(
        "--start", type=float, metavar="UNIX_S", help="simulated start time (see docs)"
    )
    run.set_defaults(handler=_run)
    return dispatch(parser, argv)


if __name__ == "__main__":
    sys.exit(main())
