"""`beacon-sim`: the simulator's command line."""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path

from beacon_hub.commands import dispatch, new_parser, not_yet

__all__ = ["main", "parse_speed"]

PROG = "beacon-sim"


def parse_speed(text: str) -> float:
    """`--speed`: a factor over real time, or `max` for as fast as possible (infinity)."""
    import argparse  # noqa: PLC0415  # only for the error type

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


def main(argv: Sequence[str] | None = None) -> int:
    parser = new_parser(PROG, "Simulated gateways: a site, moving beacons and a realistic radio.")
    verbs = parser.add_subparsers(title="commands", metavar="COMMAND")
    run = verbs.add_parser("run", help="simulate, to a broker and/or files")
    run.add_argument("--site", type=Path, required=True, metavar="S.yaml")
    run.add_argument("--duration", type=float, required=True, metavar="S", help="seconds")
    run.add_argument("--seed", type=int, required=True, metavar="N")
    run.add_argument("--speed", type=parse_speed, default=1.0, metavar="X|max")
    run.add_argument("--broker", metavar="URL", help="publish batches, e.g. mqtt://127.0.0.1")
    run.add_argument("--out", type=Path, metavar="R.csv", help="write readings")
    run.add_argument("--truth", type=Path, metavar="T.csv", help="write ground truth")
    run.set_defaults(handler=not_yet(PROG, "run", "issue #3 (simulator)"))
    return dispatch(parser, argv)


if __name__ == "__main__":
    sys.exit(main())
