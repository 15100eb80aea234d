"""MQTT out (DESIGN.md, Contracts): per tick one columnar `tracks`, `track/{beacon}` retained on
change or every `track_refresh_s`, events on `event/{type}`; `beacon_lost` clears the beacon's
retained track (an empty retained payload deletes it at the broker).

"Change" is DESIGN.md's: moved more than accuracy_m / 2 since the last published fix, or a zone
change. QoS as in the contract table: tracks and track 0, events 1.

Coordinates go out rounded to the millimetre and accuracy to the centimetre: the digits beyond
are noise and cost a third of the `tracks` payload. A tick whose `tracks` message would exceed
`MAX_BATCH_BYTES` (about 10,000 beacons of one site) is sent as several consecutive `tracks`
messages with the same `t`, each within the limit every consumer and broker accepts.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

from beacon_hub.engine import FixTable
from beacon_hub.wire import (
    MAX_BATCH_BYTES,
    Event,
    Fix,
    TracksMessage,
    encode_event,
    encode_fix,
    encode_tracks,
    event_topic,
    track_topic,
    tracks_topic,
)

__all__ = ["OutputCounts", "SiteOutputs"]

MM_DECIMALS = 3
CM_DECIMALS = 2

INITIAL_SLOTS = 256
"""Beacons remembered before the arrays first grow (they double as needed)."""

Publish = Callable[[str, bytes, int, bool], bool]
"""(topic, payload, qos, retain) -> False if the client refused it."""


@dataclass(slots=True)
class OutputCounts:
    tracks: int = 0
    track: int = 0
    events: int = 0
    cleared: int = 0
    refused: int = 0


class SiteOutputs:
    """What one site publishes; remembers the last published fix per beacon.

    The last published fix lives in arrays indexed by a slot per beacon, so that a tick tests
    10,000 beacons for a change at once and loops in Python only over those it publishes.
    """

    def __init__(self, site: str, publish: Publish, refresh_s: float) -> None:
        self.site = site
        self.refresh_s = refresh_s
        self._publish = publish
        self._slot: dict[str, int] = {}
        self._last_t = np.full(INITIAL_SLOTS, np.nan)
        """When the beacon's track was last published; NaN: never, or cleared since."""
        self._last_x = np.zeros(INITIAL_SLOTS)
        self._last_y = np.zeros(INITIAL_SLOTS)
        self._last_zone = np.full(INITIAL_SLOTS, None, dtype=object)
        self.counts = OutputCounts()
        self._tracks_topic = tracks_topic(site)

    def _slots(self, beacons: Sequence[str]) -> NDArray[np.intp]:
        slot = self._slot
        # a new beacon gets the next slot
        slots = np.fromiter(
            (slot.setdefault(b, len(slot)) for b in beacons), dtype=np.intp, count=len(beacons)
        )
        if len(slot) > self._last_t.shape[0]:
            grow = max(len(slot), 2 * self._last_t.shape[0]) - self._last_t.shape[0]
            self._last_t = np.r_[self._last_t, np.full(grow, np.nan)]
            self._last_x = np.r_[self._last_x, np.zeros(grow)]
            self._last_y = np.r_[self._last_y, np.zeros(grow)]
            self._last_zone = np.r_[self._last_zone, np.full(grow, None, dtype=object)]
        return slots

    def _send(self, topic: str, payload: bytes, qos: int, retain: bool) -> None:
        if not self._publish(topic, payload, qos, retain):
            self.counts.refused += 1

    def tick(
        self,
        t: float,
        table: FixTable,
        events: Sequence[Event],
        labels: Sequence[str | None],
    ) -> None:
        n = len(table)
        x = table.x.round(MM_DECIMALS).tolist()
        y = table.y.round(MM_DECIMALS).tolist()
        acc = table.accuracy_m.round(CM_DECIMALS).tolist()
        level = table.level.tolist()
        # Most ticks fit in one message; estimate the parts from the first few entries so a
        # big tick is not encoded twice.
        sample = min(n, 64)
        head = len(
            encode_tracks(
                TracksMessage(
                    site=self.site,
                    t=t,
                    beacons=tuple(table.beacons[:sample]),
                    x=tuple(x[:sample]),
                    y=tuple(y[:sample]),
                    level=tuple(level[:sample]),
                    accuracy_m=tuple(acc[:sample]),
                    zone=tuple(table.zones[:sample]),
                )
            )
        )
        parts = max(1, math.ceil(head * n / max(sample, 1) / (0.9 * MAX_BATCH_BYTES)))
        while True:
            size = math.ceil(n / parts) if n else 0
            payloads = [
                encode_tracks(
                    TracksMessage(
                        site=self.site,
                        t=t,
                        beacons=tuple(table.beacons[a : a + size]),
                        x=tuple(x[a : a + size]),
                        y=tuple(y[a : a + size]),
                        level=tuple(level[a : a + size]),
                        accuracy_m=tuple(acc[a : a + size]),
                        zone=tuple(table.zones[a : a + size]),
                    )
                )
                for a in (range(0, n, size) if n else [0])
            ]
            biggest = max(len(p) for p in payloads)
            if biggest <= MAX_BATCH_BYTES or size <= 1:
                break
            parts = math.ceil(parts * biggest / (0.9 * MAX_BATCH_BYTES))
        for payload in payloads:
            self._send(self._tracks_topic, payload, 0, False)
            self.counts.tracks += 1
        slots = self._slots(table.beacons)
        xs, ys = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
        zones = np.empty(n, dtype=object)
        zones[:] = table.zones
        # DESIGN.md's "change": a zone change, the refresh interval, or a move beyond half the
        # accuracy since the last published fix (a never-published beacon has last_t NaN).
        unchanged = (
            (t - self._last_t[slots] < self.refresh_s)
            & (self._last_zone[slots] == zones)
            & (
                np.hypot(xs - self._last_x[slots], ys - self._last_y[slots])
                <= np.asarray(acc, dtype=np.float64) / 2
            )
        )
        for i in np.flatnonzero(~unchanged).tolist():
            beacon, zone = table.beacons[i], table.zones[i]
            fix = Fix(
                t=t,
                beacon=beacon,
                x=x[i],
                y=y[i],
                accuracy_m=acc[i],
                zone=zone,
                gateways=table.gateways(i),
                level=level[i],
                label=labels[i],
                kind=table.kinds[i],
            )
            self._send(track_topic(self.site, beacon), encode_fix(fix, self.site), 0, True)
            k = slots[i]
            self._last_t[k], self._last_x[k], self._last_y[k] = t, x[i], y[i]
            self._last_zone[k] = zone
            self.counts.track += 1
        for e in events:
            self._send(event_topic(self.site, e.type), encode_event(e), 1, False)
            self.counts.events += 1
            if e.type == "beacon_lost":
                # An empty retained message removes the retained track (MQTT 3.1.1, 3.3.1.3).
                self._send(track_topic(self.site, e.beacon), b"", 1, True)
                k_lost = self._slot.get(e.beacon)
                if k_lost is not None:
                    self._last_t[k_lost] = np.nan
                self.counts.cleared += 1
