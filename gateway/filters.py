"""Which beacons a gateway publishes: allow-lists by UUID, namespace and id pattern; RSSI floor.

With no allow-list configured every iBeacon, Eddystone and AltBeacon frame passes; with any,
a frame passes when one of them matches. Devices that send none of these frames are never
published, except addresses listed for MAC tracking (privacy: phones and other people's devices
stay on the Pi).
"""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Iterable
from typing import Final

from beacon_hub.ids import mac_id
from gateway.frames import Frame

__all__ = ["BeaconFilter"]

_DECISION_CACHE_MAX: Final = 8192
"""Decisions remembered per beacon id; the same bound reasoning as the frame cache."""


def _hex(value: str) -> str:
    return value.replace("-", "").lower()


class BeaconFilter:
    """Decides, per frame and per advertisement, whether it becomes a published sample."""

    __slots__ = ("_decided", "_groups", "_macs", "_open", "_pattern", "min_rssi_dbm")

    def __init__(
        self,
        *,
        uuids: Iterable[str] = (),
        namespaces: Iterable[str] = (),
        id_patterns: Iterable[str] = (),
        min_rssi_dbm: float = -127.0,
        track_macs: Iterable[str] = (),
    ) -> None:
        self._groups = frozenset(_hex(u) for u in (*uuids, *namespaces))
        patterns = [fnmatch.translate(p.lower()) for p in id_patterns]
        self._pattern = re.compile("|".join(patterns)) if patterns else None
        self._open = not self._groups and self._pattern is None
        self._macs = {a.upper().replace("-", ":"): mac_id(a) for a in track_macs}
        self._decided: dict[str, bool] = {}
        self.min_rssi_dbm = min_rssi_dbm

    def allows(self, frame: Frame) -> bool:
        if self._open:
            return True
        try:
            return self._decided[frame.beacon]
        except KeyError:
            pass
        ok = frame.group in self._groups or (
            self._pattern is not None and self._pattern.match(frame.beacon) is not None
        )
        if len(self._decided) >= _DECISION_CACHE_MAX:
            self._decided.clear()
        self._decided[frame.beacon] = ok
        return ok

    def mac_beacon(self, address: str) -> str | None:
        """The `mac:` id of an address the config lists for MAC tracking, else None."""
        if not self._macs:
            return None
        return self._macs.get(address.upper())
