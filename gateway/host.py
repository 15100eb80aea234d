"""What the gateway asks of its host: systemd notifications and the CPU temperature.

sd_notify is a datagram to `$NOTIFY_SOCKET` (systemd's sd_notify(3) protocol); writing it here
spares the Pi a dependency. Outside systemd the variable is unset and every call is a no-op.
"""

from __future__ import annotations

import contextlib
import os
import socket
from collections.abc import Mapping
from pathlib import Path
from typing import Final

__all__ = ["SystemdNotifier", "cpu_temp_c"]

CPU_THERMAL_ZONE: Final = Path("/sys/class/thermal/thermal_zone0/temp")
"""Raspberry Pi OS exposes the SoC temperature here, in millidegrees Celsius."""


def cpu_temp_c(path: Path = CPU_THERMAL_ZONE) -> float | None:
    """SoC temperature, or None where the host does not expose it (containers, PCs)."""
    try:
        return round(int(path.read_text().strip()) / 1000.0, 1)
    except (OSError, ValueError):
        return None


class SystemdNotifier:
    """READY=1, WATCHDOG=1, STOPPING=1 to systemd, when run as a `Type=notify` service."""

    def __init__(self, environ: Mapping[str, str] | None = None) -> None:
        env = os.environ if environ is None else environ
        address = env.get("NOTIFY_SOCKET", "")
        # An abstract socket is written with a leading '@' (sd_notify(3)).
        self._address = "\0" + address[1:] if address.startswith("@") else address
        usec = env.get("WATCHDOG_USEC", "")
        self.watchdog_interval_s: float | None = None
        if usec.isdigit() and int(usec) > 0 and self._address:
            # sd_watchdog_enabled(3): ping at half the configured WatchdogSec.
            self.watchdog_interval_s = int(usec) / 1e6 / 2.0

    @property
    def enabled(self) -> bool:
        return bool(self._address)

    def notify(self, state: str) -> None:
        if not self._address:
            return
        # A lost notification must not take the gateway down; systemd will say so itself.
        with (
            contextlib.suppress(OSError),
            socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock,
        ):
            sock.sendto(state.encode(), self._address)
