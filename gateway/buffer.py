"""The offline buffer: encoded batches waiting for the broker, bounded, oldest dropped first.

Policy: when full, the OLDEST batch is dropped and its samples counted, because the hub wants
the freshest positions first and a gateway back from a long outage should not spend minutes
replaying stale ones. (paho's own queue is unbounded by default and, when bounded, refuses the
newest: we never let it hold more than `inflight` batches.) Batches leave in the order they
came in.

`MemoryBuffer` is a deque; `DiskBuffer` keeps one file per batch in a folder, so a restart
(power loss, upgrade) does not lose what the broker has not yet acknowledged.
"""

from __future__ import annotations

import contextlib
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Final, Protocol

__all__ = ["Buffered", "DiskBuffer", "MemoryBuffer", "OfflineBuffer"]

_SUFFIX: Final = ".batch"


@dataclass(frozen=True, slots=True)
class Buffered:
    """One encoded readings batch and the number of samples in it (for the counters)."""

    payload: bytes
    samples: int


class OfflineBuffer(Protocol):
    max_batches: int
    dropped_batches: int
    dropped_samples: int

    def __len__(self) -> int: ...
    def append(self, item: Buffered) -> None: ...
    def popleft(self) -> Buffered: ...


class MemoryBuffer:
    """At most `max_batches` in memory."""

    def __init__(self, max_batches: int) -> None:
        self.max_batches = max_batches
        self.dropped_batches = 0
        self.dropped_samples = 0
        self._items: deque[Buffered] = deque()

    def __len__(self) -> int:
        return len(self._items)

    def append(self, item: Buffered) -> None:
        if len(self._items) >= self.max_batches:
            oldest = self._items.popleft()
            self.dropped_batches += 1
            self.dropped_samples += oldest.samples
        self._items.append(item)

    def popleft(self) -> Buffered:
        return self._items.popleft()


class DiskBuffer:
    """At most `max_batches` files in `folder`, named by a counter so order survives restarts.

    Each file is written to a temporary name and renamed, so a power cut leaves either the whole
    batch or none of it. The sample count is the first line of the file.
    """

    def __init__(self, folder: Path, max_batches: int) -> None:
        self.folder = folder
        self.max_batches = max_batches
        self.dropped_batches = 0
        self.dropped_samples = 0
        folder.mkdir(parents=True, exist_ok=True)
        for stale in folder.glob("*.tmp"):
            stale.unlink(missing_ok=True)
        self._names: deque[int] = deque(
            sorted(int(p.stem) for p in folder.glob(f"*{_SUFFIX}") if p.stem.isdigit())
        )
        self._next = (self._names[-1] + 1) if self._names else 0
        while len(self._names) > max_batches:  # the bound may have shrunk since the last run
            self._drop_oldest()

    def __len__(self) -> int:
        return len(self._names)

    def _path(self, number: int) -> Path:
        return self.folder / f"{number:020d}{_SUFFIX}"

    def append(self, item: Buffered) -> None:
        if len(self._names) >= self.max_batches:
            self._drop_oldest()
        number = self._next
        self._next += 1
        tmp = self.folder / f"{number:020d}.tmp"
        with tmp.open("wb") as f:
            f.write(b"%d\n" % item.samples)
            f.write(item.payload)
        tmp.replace(self._path(number))
        self._names.append(number)

    def popleft(self) -> Buffered:
        number = self._names.popleft()
        path = self._path(number)
        try:
            raw = path.read_bytes()
        except OSError:
            return Buffered(b"", 0)  # removed under us; the caller skips empty payloads
        path.unlink(missing_ok=True)
        head, _, payload = raw.partition(b"\n")
        samples = int(head) if head.isdigit() else 0
        return Buffered(payload, samples)

    def _drop_oldest(self) -> None:
        number = self._names.popleft()
        path = self._path(number)
        with contextlib.suppress(OSError):
            head = path.read_bytes().partition(b"\n")[0]
            self.dropped_samples += int(head) if head.isdigit() else 0
        self.dropped_batches += 1
        with contextlib.suppress(OSError):
            path.unlink()
