"""`beacon-hub demo` as a child process, as a user runs it, with each output pipe read by its own
thread.

One reader per pipe matters: `communicate()` after SIGINT reads stdout beside a thread that is
already iterating it, and either takes lines from it (test_demo lost its "demo: stopped" line
once in four under load) or closes the pipe under it (the dashboard test's reader raised
"I/O operation on closed file" in CI). Reading stderr all along also keeps a chatty child from
blocking on a full pipe.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import threading
from collections.abc import Callable
from pathlib import Path

__all__ = ["DemoProcess", "demo_command"]

ROOT = Path(__file__).resolve().parents[1]


def demo_command(data_dir: Path, *extra: str) -> list[str]:
    """The demo on a free HTTP port, its data in `data_dir`. The engine's plan-loss radio map is
    off: it takes ~12 s to build for the warehouse, and these tests are about the demo's
    plumbing, not accuracy."""
    return [
        sys.executable,
        "-m",
        "beacon_hub.cli",
        "demo",
        "--set",
        "http.port=0",
        "--set",
        f"data_dir={data_dir}",
        "--set",
        "engine.plan_losses=false",
        *extra,
    ]


class DemoProcess:
    """A running demo; `on_line` sees each stdout line (without its newline) as it comes."""

    def __init__(self, command: list[str], on_line: Callable[[str], None]) -> None:
        self.proc = subprocess.Popen(  # our own CLI
            command,
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        self._out: list[str] = []
        self._err: list[str] = []
        self._readers = [
            threading.Thread(target=self._read_stdout, args=(on_line,), daemon=True),
            threading.Thread(target=self._read_stderr, daemon=True),
        ]
        for reader in self._readers:
            reader.start()

    def _read_stdout(self, on_line: Callable[[str], None]) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self._out.append(line)
            on_line(line.rstrip("\n"))

    def _read_stderr(self) -> None:
        assert self.proc.stderr is not None
        self._err.extend(self.proc.stderr)

    @property
    def stdout(self) -> str:
        return "".join(self._out)

    @property
    def stderr(self) -> str:
        return "".join(self._err)

    def interrupt(self, timeout_s: float) -> int:
        """Ctrl-C (SIGINT), wait for the exit and the end of both pipes; kill if it hangs.
        Returns the exit code."""
        try:
            self.proc.send_signal(signal.SIGINT)
            self.proc.wait(timeout=timeout_s)
        finally:
            self.close()
        return self.proc.returncode

    def close(self) -> None:
        """Kill the demo if it still runs; idempotent."""
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        for reader in self._readers:
            reader.join(10)
        # Closing a pipe under a live reader is the failure this class exists to avoid.
        if any(reader.is_alive() for reader in self._readers):
            raise AssertionError("the demo's output is still open after it exited (a child left?)")
        for pipe in (self.proc.stdout, self.proc.stderr):
            if pipe is not None:
                pipe.close()
