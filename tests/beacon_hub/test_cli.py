"""The three programs answer --help and list every DESIGN.md verb; bad command lines (outputs
that cannot be written, an output that is an input, Ctrl-C) end in one message and exit 1 or
130, never a traceback or a damaged file."""

import argparse
import errno
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from beacon_hub import cli, replay
from beacon_hub.commands import dispatch
from beacon_hub.csvfiles import READINGS, TRUTH, CsvWriter
from beacon_hub.engine import TickResult
from tests.beacon_hub.test_replay import SQUARE, noisy_walk

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


@pytest.fixture
def walk(tmp_path: Path) -> tuple[Path, Path, Path]:
    """The square lab's site file, and a walk's readings and truth files in tmp_path."""
    site = tmp_path / "square.yaml"
    site.write_text(yaml.safe_dump(SQUARE))
    rows, truth = noisy_walk(1)
    with CsvWriter(READINGS, tmp_path / "r.csv") as out:
        out.write_all(rows)
    with CsvWriter(TRUTH, tmp_path / "t.csv") as out:
        out.write_all(truth)
    return site, tmp_path / "r.csv", tmp_path / "t.csv"


def hub(capsys: pytest.CaptureFixture[str], *args: str | Path) -> tuple[int, str]:
    """`beacon-hub ARGS` through its entry point: the exit status and stderr."""
    status = cli.main([str(a) for a in args])
    return status, capsys.readouterr().err


def test_an_output_in_a_missing_directory_is_refused_without_a_traceback(
    walk: tuple[Path, Path, Path], tmp_path: Path
) -> None:
    site, readings, _ = walk
    result = run(
        "beacon_hub.cli", "replay", "--site", str(site), "--readings", str(readings),
        "--out", str(tmp_path / "nodir" / "f.csv"),
    )  # fmt: skip
    assert result.returncode == 1
    assert result.stderr == (
        f"beacon-hub: --out {tmp_path / 'nodir' / 'f.csv'}: the directory "
        f"{tmp_path / 'nodir'} does not exist\n"
    )


def test_outputs_that_cannot_be_written_are_refused_before_the_work(
    walk: tuple[Path, Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Each refused before reading a row: calibrate would have fitted for minutes first."""
    site, readings, truth = walk
    a_file = tmp_path / "afile"
    a_file.write_text("")
    good = tmp_path / "f.csv"
    good.write_text("old\n")
    engine: list[str | Path] = ["--site", site, "--readings", readings]
    cases: list[tuple[list[str | Path], str]] = [
        (["replay", *engine, "--out", tmp_path / "no" / "f.csv"], "the directory"),
        (["replay", *engine, "--out", good, "--events", tmp_path / "no" / "e.csv"], "--events"),
        (["replay", *engine, "--out", a_file / "f.csv"], f"{a_file} is not a directory"),
        (["replay", *engine, "--out", tmp_path], "is a directory; expected a file name"),
        (
            ["calibrate", *engine, "--truth", truth, "--out", tmp_path / "no" / "c.yaml"],
            "--out",
        ),
        (["eval", "--fixes", good, "--truth", truth, "--report", a_file], "is not a directory"),
    ]
    for args, says in cases:
        status, err = hub(capsys, *args)
        assert status == 1, args
        assert says in err, err
        assert "readings" not in err.replace(str(readings), ""), err  # no work was done
    assert good.read_text() == "old\n"


def test_dispatch_turns_os_errors_and_ctrl_c_into_a_message(
    capsys: pytest.CaptureFixture[str],
) -> None:
    def failing(exc: BaseException) -> argparse.ArgumentParser:
        def handler(_args: argparse.Namespace) -> int:
            raise exc

        parser = argparse.ArgumentParser(prog="prog")
        parser.set_defaults(handler=handler)
        return parser

    denied = PermissionError(errno.EACCES, os.strerror(errno.EACCES), "ro/f.csv")
    assert dispatch(failing(denied), []) == 1
    assert capsys.readouterr().err == "prog: ro/f.csv: Permission denied\n"
    assert dispatch(failing(KeyboardInterrupt()), []) == 130
    assert capsys.readouterr().err == "prog: interrupted\n"


def test_an_output_that_is_an_input_or_the_other_output_is_refused(
    walk: tuple[Path, Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    site, readings, truth = walk
    before = readings.read_bytes(), truth.read_bytes()
    link = tmp_path / "link"
    link.symlink_to(tmp_path)  # another name for the same directory
    status, err = hub(capsys, "replay", "--site", site, "--readings", readings, "--out", readings)
    assert status == 1
    assert f"--out {readings} is the file given to --readings" in err
    status, err = hub(
        capsys, "calibrate", "--site", site, "--readings", readings, "--truth", truth,
        "--out", link / "t.csv",
    )  # fmt: skip
    assert status == 1
    assert "is the file given to --truth" in err
    assert (readings.read_bytes(), truth.read_bytes()) == before
    out = tmp_path / "f.csv"
    status, err = hub(
        capsys, "replay", "--site", site, "--readings", readings,
        "--out", out, "--events", link / "f.csv",
    )  # fmt: skip
    assert status == 1
    assert "--out" in err
    assert "--events" in err
    assert "are the same file" in err
    assert not out.exists()


def test_an_interrupted_replay_says_so_and_leaves_the_earlier_outputs(
    walk: tuple[Path, Path, Path],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Ctrl-C after some ticks were written: exit 130 with a message, and the fixes and events
    of the run before untouched, no partial file beside them."""
    site, readings, _ = walk
    ticks = replay.EngineReplay.ticks

    def interrupted(self: replay.EngineReplay, *, progress: bool = False) -> Iterator[TickResult]:
        for k, result in enumerate(ticks(self, progress=progress)):
            if k == 5:
                raise KeyboardInterrupt
            yield result

    monkeypatch.setattr(replay.EngineReplay, "ticks", interrupted)
    out, events = tmp_path / "f.csv", tmp_path / "e.csv"
    out.write_text("earlier fixes\n")
    events.write_text("earlier events\n")
    files = sorted(tmp_path.iterdir())
    status, err = hub(
        capsys, "replay", "--site", site, "--readings", readings, "--out", out, "--events", events
    )
    assert status == 130
    assert err.endswith("beacon-hub: interrupted\n")
    assert out.read_text() == "earlier fixes\n"
    assert events.read_text() == "earlier events\n"
    assert sorted(tmp_path.iterdir()) == files
