"""The three programs answer --help and say plainly which verbs a later issue brings."""

import subprocess
import sys

import pytest

from beacon_hub.commands import EXIT_NOT_YET

PROGRAMS = {
    "beacon-hub": "beacon_hub.cli",
    "beacon-gateway": "gateway.cli",
    "beacon-sim": "simulator.cli",
}


def run(module: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", module, *args],
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )


@pytest.mark.parametrize("module", PROGRAMS.values())
def test_help(module: str) -> None:
    result = run(module, "--help")
    assert result.returncode == 0
    assert "run" in result.stdout


def test_hub_lists_every_design_verb() -> None:
    out = run("beacon_hub.cli", "--help").stdout
    for verb in (
        "demo",
        "site",
        "run",
        "replay",
        "calibrate",
        "eval",
        "assets",
        "erase",
        "provision",
    ):
        assert verb in out


@pytest.mark.parametrize(
    ("module", "args"),
    [
        ("beacon_hub.cli", ["erase", "ibeacon:e2c56db5-dffb-48d2-b060-d0f5a71096e0:1:2"]),
        ("beacon_hub.cli", ["demo", "--duration", "5"]),
    ],
)
def test_verbs_of_later_issues_say_so(module: str, args: list[str]) -> None:
    result = run(module, *args)
    assert result.returncode == EXIT_NOT_YET
    assert "not implemented yet" in result.stderr
    assert "issue #" in result.stderr


def test_bad_speed_is_a_usage_error() -> None:
    result = run(
        "simulator.cli", "run", "--site", "s", "--duration", "1", "--seed", "1", "--speed", "fast"
    )
    assert result.returncode == 2
    assert "expected a factor" in result.stderr
