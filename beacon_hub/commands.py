"""Command-line plumbing shared by `beacon-hub`, `beacon-gateway` and `beacon-sim`.

Light on purpose (argparse only): the gateway's CLI imports it on a Pi Zero.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from typing import Any

from beacon_hub import __version__
from beacon_hub.config_loader import parse_override
from beacon_hub.errors import BeaconHubError

__all__ = [
    "EXIT_ERROR",
    "EXIT_OK",
    "Handler",
    "add_set_option",
    "dispatch",
    "new_parser",
    "overrides_from",
]

EXIT_OK = 0
EXIT_ERROR = 1
"""Bad input (config, CSV, site file) or a failed check; the message says where and what."""

Handler = Callable[[argparse.Namespace], int]


def new_parser(prog: str, description: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=prog, description=description)
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    return parser


def add_set_option(parser: argparse.ArgumentParser) -> None:
    """`--set key.path=value`, repeatable: overrides any config key without a flag per key."""
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config key, e.g. --set broker.url=mqtt://10.0.0.5 (repeatable)",
    )


def overrides_from(pairs: Sequence[str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise BeaconHubError(f"--set {pair!r}: expected KEY=VALUE, e.g. broker.url=mqtt://host")
        out[key.strip()] = parse_override(value, f"command line --set {key.strip()}")
    return out


def dispatch(parser: argparse.ArgumentParser, argv: Sequence[str] | None) -> int:
    """Parse, run the chosen handler, and turn our own errors into a message and exit 1."""
    args = parser.parse_args(argv)
    handler: Handler | None = getattr(args, "handler", None)
    if handler is None:
        parser.print_help(sys.stderr)
        return EXIT_ERROR
    try:
        return handler(args)
    except BeaconHubError as e:
        print(f"{parser.prog}: {e}", file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:
        return 130
