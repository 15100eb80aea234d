"""`beacon-gateway`: the Pi daemon's command line."""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path

from beacon_hub.commands import add_set_option, dispatch, new_parser, not_yet

__all__ = ["main"]

PROG = "beacon-gateway"


def main(argv: Sequence[str] | None = None) -> int:
    parser = new_parser(PROG, "BLE gateway: scan beacons with bleak and publish batches over MQTT.")
    verbs = parser.add_subparsers(title="commands", metavar="COMMAND")
    run = verbs.add_parser("run", help="scan and publish until stopped")
    run.add_argument("--config", type=Path, required=True, metavar="G.yaml")
    add_set_option(run)
    run.set_defaults(handler=not_yet(PROG, "run", "issue #6 (gateway daemon)"))
    return dispatch(parser, argv)


if __name__ == "__main__":
    sys.exit(main())
