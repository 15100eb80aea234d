"""The three programs answer --help and list every DESIGN.md verb."""

import subprocess
import sys

import pytest

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


def test_bad_speed_is_a_usage_error() -> None:
    result = run(
        "simulator.cli", "run", "--site", "s", "--duration", "1", "--seed", "1", "--speed", "fast"
    )
    assert result.returncode == 2
    assert "expected a factor" in result.stderr
