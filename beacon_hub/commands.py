"""Command-line plumbing shared by `beacon-hub`, `beacon-gateway` and `beacon-sim`.

Light on purpose (argparse only): the gateway's CLI imports it on a Pi Zero.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from beacon_hub import __version__
from beacon_hub.config_loader import parse_override
from beacon_hub.errors import BeaconHubError

__all__ = [
    "EXIT_ERROR",
    "EXIT_INTERRUPTED",
    "EXIT_OK",
    "Handler",
    "add_set_option",
    "check_outputs",
    "dispatch",
    "new_parser",
    "overrides_from",
]

EXIT_OK = 0
EXIT_ERROR = 1
"""Bad input (config, CSV, site file), a file that cannot be read or written, or a failed check;
the message says where and what."""
EXIT_INTERRUPTED = 130
"""Ctrl-C (128 + SIGINT, as a shell reports it); outputs written whole are left as they were."""

Handler = Callable[[argparse.Namespace], int]


def new_parser(prog: str, description: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=prog, description=description)
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    return parser


def add_set_option(
    parser: argparse.ArgumentParser, example: str = "broker.url=mqtt://10.0.0.5"
) -> None:
    """`--set key.path=value`, repeatable: overrides any config key without a flag per key;
    `example` is one the program takes."""
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help=f"override a config key, e.g. --set {example} (repeatable)",
    )


def overrides_from(pairs: Sequence[str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise BeaconHubError(f"--set {pair!r}: expected KEY=VALUE, e.g. broker.url=mqtt://host")
        out[key.strip()] = parse_override(value, f"command line --set {key.strip()}")
    return out


Option = tuple[str, Path | None]
"""A command-line option and the path given to it (None: not given), e.g. ("--out", path)."""


def check_outputs(
    outputs: Sequence[Option],
    inputs: Sequence[Option] = (),
    directories: Sequence[Option] = (),
) -> None:
    """Refuse, before any work, output files (`outputs`) and output directories (`directories`)
    that cannot be written, and an output that is one of the `inputs` or another output: a
    long run must not end in a traceback, overwrite what it read, or lose one of two outputs
    written to one file. BeaconHubError names the option and the path."""
    given = [(option, path) for option, path in outputs if path is not None]
    for option, path in given:
        _check_output_file(option, path)
    for option, directory in directories:
        if directory is not None:
            _check_output_directory(option, directory)
    for k, (option, path) in enumerate(given):
        for in_option, in_path in inputs:
            if in_path is not None and _same_file(path, in_path):
                raise BeaconHubError(
                    f"{option} {path} is the file given to {in_option} ({in_path}): writing it "
                    "would destroy the input; give the output another name"
                )
        for other_option, other_path in given[k + 1 :]:
            if _same_file(path, other_path):
                raise BeaconHubError(
                    f"{option} {path} and {other_option} {other_path} are the same file: one "
                    "would overwrite the other; give each its own name"
                )


def _same_file(a: Path, b: Path) -> bool:
    """Whether two paths name one regular file (or would): /dev/null twice is no clash."""
    if any(p.exists() and not p.is_file() for p in (a, b)):
        return False
    try:
        return a.samefile(b)
    except OSError:  # one of them does not exist (yet): compare where they would be
        return a.resolve() == b.resolve()


def _check_output_file(option: str, path: Path) -> None:
    if path.is_dir():
        raise BeaconHubError(f"{option} {path}: is a directory; expected a file name")
    if path.exists() and not path.is_file():
        return  # /dev/null, a FIFO: written in place
    if path.exists() and not os.access(path, os.W_OK):
        raise BeaconHubError(f"{option} {path}: the file is read-only")
    _check_writable_directory(option, path, path.parent)


def _check_output_directory(option: str, path: Path) -> None:
    if path.exists() and not path.is_dir():
        raise BeaconHubError(f"{option} {path}: exists and is not a directory")
    existing = path
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent  # created with its parents: they must be creatable
    _check_writable_directory(option, path, existing)


def _check_writable_directory(option: str, path: Path, directory: Path) -> None:
    if not directory.exists():
        raise BeaconHubError(f"{option} {path}: the directory {directory} does not exist")
    if not directory.is_dir():
        raise BeaconHubError(f"{option} {path}: {directory} is not a directory")
    try:
        # What writing will do: create a file there. os.access does not know a read-only mount.
        fd, probe = tempfile.mkstemp(prefix=".beacon-hub-", suffix=".probe", dir=directory)
    except OSError as e:
        raise BeaconHubError(f"{option} {path}: cannot write in {directory}: {e.strerror}") from e
    os.close(fd)
    Path(probe).unlink()


def dispatch(parser: argparse.ArgumentParser, argv: Sequence[str] | None) -> int:
    """Parse, run the chosen handler, and turn bad input into a message and an exit status:
    our own errors and files that cannot be read or written exit 1, Ctrl-C 130."""
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
    except OSError as e:
        where = f"{e.filename}: " if e.filename is not None else ""
        print(f"{parser.prog}: {where}{e.strerror or e}", file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:
        print(f"{parser.prog}: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
