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

from beacon_hub.engine import FixTable
from beacon_hub.thinning import LastFixes
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

    The last published fix lives in thinning.LastFixes, so that a tick tests 10,000 beacons
    for a change at once and loops in Python only over those it publishes.
    """

    def __init__(self, site: str, publish: Publish, refresh_s: float) -> None:
        self.site = site
        self.refresh_s = refresh_s
        self._publish = publish
        self._last = LastFixes()
        """The last published fix per beacon; forgotten when the beacon is lost, and when it
        was published `refresh_s` ago or more (its next fix is published as a refresh anyway,
        so nothing published changes): only beacons published within `refresh_s` (at most an
        hour, hubconfig) are remembered, also those whose `beacon_lost` never comes here
        (privacy.py withholds it once a shopper's consent has ended)."""
        self.counts = OutputCounts()
        self._tracks_topic = tracks_topic(site)

    def _send(self, topic: str, payload: bytes, qos: int, retain: bool) -> None:
        if not self._publish(topic, payload, qos, retain):
            self.counts.refused += 1

    def tick(
        self,
        t: float,
        table: FixTable,
        events: Sequence[Event],
        labels: Sequence[str | None],
        *,
        ended: Sequence[str] = (),
    ) -> None:
        """One tick's outputs; `ended`: shoppers (pseudonyms) whose consent ended, whose
        retained tracks are cleared (Privacy.ended)."""
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
        last = self._last
        slots = last.slots(table.beacons)
        xs, ys = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
        zones = np.empty(n, dtype=object)
        zones[:] = table.zones
        # DESIGN.md's "change": a zone change, the refresh interval, or a move beyond half the
        # accuracy since the last published fix (a never-published beacon has last_t NaN).
        unchanged = (
            (t - last.t[slots] < self.refresh_s)
            & (last.zone[slots] == zones)
            & (
                np.hypot(xs - last.x[slots], ys - last.y[slots])
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
            last.t[k], last.x[k], last.y[k], last.zone[k] = t, x[i], y[i], zone
            self.counts.track += 1
        for e in events:
            self._send(event_topic(self.site, e.type), encode_event(e), 1, False)
            self.counts.events += 1
            if e.type == "beacon_lost":
                self.clear(e.beacon)
        for beacon in ended:
            self.clear(beacon)
        last.expire(t, self.refresh_s)

    def clear(self, beacon: str) -> None:
        """Remove the beacon's retained track: it was lost, or (privacy.py) its shopper's
        consent ended, after which no fix and no beacon_lost of it comes here any more."""
        # An empty retained message removes the retained track (MQTT 3.1.1, 3.3.1.3).
        self._send(track_topic(self.site, beacon), b"", 1, True)
        self._last.forget(beacon)
        self.counts.cleared += 1
