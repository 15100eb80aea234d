"""The offline buffer: encoded batches waiting for the broker, bounded, oldest dropped first.

Policy: when full, the OLDEST batch is dropped and its samples counted, because the hub wants
the freshest positions first and a gateway back from a long outage should not spend minutes
replaying stale ones. (paho's own queue is unbounded by default and, when bounded, refuses the
newest: we never let it hold more than `inflight` batches.) Batches leave in the order they
came in.

`MemoryBuffer` is a deque; `DiskBuffer` keeps one file per batch in a folder, so a restart
(power loss, upgrade, kill -9) does not lose what it holds: a file is deleted only by `release`,
which the publisher calls on the batch's PUBACK. Only batches the broker cannot take at once
come here (publisher.py decides); one the broker acknowledges promptly never touches the disk,
because writing a small file costs an SD card about 60 KiB of writes (docs/gateway.md).

Batches the publisher handed to paho straight from memory are older than everything queued
here. When the connection drops or the process stops before their PUBACK, `save_in_flight`
writes them (and renames the files of any others paho holds) to a second set of names,
`NNN.inflight`, which a restart reads before the queued `NNN.batch` files, so order holds.

When the folder refuses writes (disk full, remounted read-only), `DiskBuffer` keeps new batches
in memory under the same bound and goes back to the disk once that overflow has drained; the
trouble is logged once per episode, never once per batch.
"""

from __future__ import annotations

import contextlib
import logging
import os
import zlib
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Final, Protocol

__all__ = ["Buffered", "DiskBuffer", "MemoryBuffer", "OfflineBuffer"]

log = logging.getLogger(__name__)

_SUFFIX: Final = ".batch"
"""A queued batch: the only kind of file before in-flight files had names of their own."""
_SENT_SUFFIX: Final = ".inflight"
"""A batch paho held unacknowledged when the connection dropped or the process stopped: older
than every queued batch, so a restart reads these first."""


@dataclass(frozen=True, slots=True)
class Buffered:
    """One encoded readings batch and the number of samples in it (for the counters).

    `ticket` names its disk file (None: only memory holds it); see `release`."""

    payload: bytes
    samples: int
    ticket: int | None = None


class OfflineBuffer(Protocol):
    max_batches: int
    dropped_batches: int
    dropped_samples: int

    def __len__(self) -> int: ...
    def append(self, item: Buffered) -> None: ...
    def popleft(self) -> Buffered: ...
    def release(self, item: Buffered) -> None:
        """The broker acknowledged `item` (taken with `popleft`): forget it for good."""
        ...

    def in_memory(self) -> tuple[int, int]:
        """(batches, samples) waiting here that only memory holds: what a stop loses."""
        ...

    def save_in_flight(self, items: list[Buffered]) -> list[Buffered]:
        """`items` are in paho's hands unacknowledged, in the order they were sent, and the
        connection dropped or the process stops: keep them where a restart reads them first,
        in that order. Returns them with the tickets that now name their files (an item that
        could not be written comes back as it was)."""
        ...


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

    def release(self, item: Buffered) -> None:
        pass

    def in_memory(self) -> tuple[int, int]:
        return len(self._items), sum(item.samples for item in self._items)

    def save_in_flight(self, items: list[Buffered]) -> list[Buffered]:
        return items


def _header(item: Buffered) -> bytes:
    """`samples length crc32` of the payload: a torn or truncated file is recognised."""
    return b"%d %d %08x\n" % (item.samples, len(item.payload), zlib.crc32(item.payload))


def _parse(raw: bytes) -> tuple[Buffered | None, int]:
    """(the batch, or None if the file is damaged; the sample count its header claims)."""
    head, newline, payload = raw.partition(b"\n")
    fields = head.split()
    samples = int(fields[0]) if fields and fields[0].isdigit() else 0
    if not newline:
        return None, samples
    if len(fields) == 1 and fields[0].isdigit():  # written before checksums (one release back)
        return (Buffered(payload, samples) if payload else None), samples
    if len(fields) != 3 or not fields[1].isdigit():
        return None, samples
    try:
        crc = int(fields[2], 16)
    except ValueError:
        return None, samples
    if int(fields[1]) != len(payload) or zlib.crc32(payload) != crc or not payload:
        return None, samples
    return Buffered(payload, samples), samples


def _numbers(folder: Path, suffix: str) -> list[int]:
    """The counters of the files in `folder` with `suffix`, lowest first."""
    return sorted(int(p.stem) for p in folder.glob(f"*{suffix}") if p.stem.isdigit())


class DiskBuffer:
    """At most `max_batches` batches in `folder`, one file each, named by a counter so order
    survives restarts; see the module docstring for acknowledgement, in-flight files and a
    failing disk. Both kinds of file share the counter; a restart reads the in-flight ones
    first, then the queued ones, each in counter order.

    Each file is written to a temporary name, fsync'd and renamed (and the folder fsync'd), so
    a power cut leaves either the whole batch or none of it. The first line of a file is
    `samples length crc32`; a file that does not match it is deleted, logged and counted as
    dropped instead of being published.

    Raises OSError if `folder` cannot be created or cleaned of stale temporary files (a
    read-only file system): the daemon then runs with a `MemoryBuffer`.
    """

    def __init__(self, folder: Path, max_batches: int) -> None:
        self.folder = folder
        self.max_batches = max_batches
        self.dropped_batches = 0
        self.dropped_samples = 0
        folder.mkdir(parents=True, exist_ok=True)
        for stale in folder.glob("*.tmp"):
            stale.unlink(missing_ok=True)
        sent = _numbers(folder, _SENT_SUFFIX)
        self._sent = set(sent)
        """Numbers whose file has the in-flight name; the others are queued files."""
        self._names: deque[int] = deque(sent + _numbers(folder, _SUFFIX))
        self._next = max(self._names, default=-1) + 1
        self._overflow: deque[Buffered] = deque()
        """Batches the disk refused; all newer than every file, so they leave after them."""
        self._trouble: str | None = None
        """The disk error of the current episode (logged once); None while the disk works."""
        while len(self._names) > max_batches:  # the bound may have shrunk since the last run
            self._drop_oldest()

    def __len__(self) -> int:
        return len(self._names) + len(self._overflow)

    def _path(self, number: int) -> Path:
        return self.folder / f"{number:020d}{_SENT_SUFFIX if number in self._sent else _SUFFIX}"

    def append(self, item: Buffered) -> None:
        if len(self) >= self.max_batches:
            self._drop_oldest()
        if not self._overflow:  # order: nothing goes to disk while older batches wait in memory
            try:
                self._write(item)
            except OSError as e:
                self._disk_failed("cannot write to", e)
            else:
                self._disk_works()
                return
        self._overflow.append(item)

    def _write(self, item: Buffered) -> None:
        number = self._next
        self._next += 1
        self._write_file(item, self._path(number))
        self._names.append(number)
        self._fsync_folder()

    def _write_file(self, item: Buffered, path: Path) -> None:
        """`item` in `path`, whole or not at all; the caller fsyncs the folder."""
        tmp = path.with_suffix(".tmp")
        try:
            with tmp.open("wb") as f:
                f.write(_header(item))
                f.write(item.payload)
                f.flush()
                os.fsync(f.fileno())
            tmp.replace(path)
        except OSError:
            with contextlib.suppress(OSError):
                tmp.unlink(missing_ok=True)
            raise

    def save_in_flight(self, items: list[Buffered]) -> list[Buffered]:
        """Each item gets an in-flight file numbered above the one before it: one from memory
        is written, one already on disk renamed (a rename writes no batch data again), one
        already in order keeps its file. New numbers come from the shared counter, so they are
        above every queued file's too, which is why the in-flight names must load first."""
        saved: list[Buffered] = []
        last = -1
        changed = False
        for item in items:
            if item.ticket is not None and item.ticket in self._sent and item.ticket > last:
                saved.append(item)
                last = item.ticket
                continue
            number = self._next
            self._next += 1
            path = self.folder / f"{number:020d}{_SENT_SUFFIX}"
            try:
                if item.ticket is None:
                    self._write_file(item, path)
                else:
                    self._path(item.ticket).replace(path)
            except OSError as e:
                self._disk_failed("cannot write to", e)
                saved.append(item)  # still only in memory (or in its old file): said at stop
                continue
            self._disk_works()
            if item.ticket is not None:
                self._sent.discard(item.ticket)
            self._sent.add(number)
            saved.append(Buffered(item.payload, item.samples, ticket=number))
            last = number
            changed = True
        if changed:
            self._fsync_folder()
        return saved

    def _fsync_folder(self) -> None:
        """Make the rename durable; some file systems cannot fsync a folder, which is no error."""
        with contextlib.suppress(OSError):
            fd = os.open(self.folder, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)

    def popleft(self) -> Buffered:
        """The oldest batch; its file stays until `release`. A damaged or unreadable file comes
        back as an empty payload (counted as dropped), which the caller skips."""
        if not self._names:
            return self._overflow.popleft()
        number = self._names.popleft()
        path = self._path(number)
        try:
            raw = path.read_bytes()
        except FileNotFoundError:
            return Buffered(b"", 0)  # removed under us
        except OSError as e:
            raw = b""
            self._disk_failed("cannot read from", e)
        item, samples = _parse(raw)
        if item is None:
            log.error(
                "buffered batch %s is damaged (%d bytes); deleted, counted as dropped",
                path,
                len(raw),
            )
            self.dropped_batches += 1
            self.dropped_samples += samples
            self._unlink(number)
            return Buffered(b"", 0)
        return Buffered(item.payload, item.samples, ticket=number)

    def release(self, item: Buffered) -> None:
        if item.ticket is not None:
            self._unlink(item.ticket)

    def in_memory(self) -> tuple[int, int]:
        """The batches the disk refused (its files stay for the next start)."""
        return len(self._overflow), sum(item.samples for item in self._overflow)

    def _unlink(self, number: int) -> None:
        """A file that cannot be deleted stays behind: it was already taken out of the queue,
        so it is not sent again in this run (after a restart, once: a duplicate the hub drops)."""
        try:
            self._path(number).unlink(missing_ok=True)
        except OSError as e:
            self._disk_failed("cannot delete from", e)
        else:
            self._sent.discard(number)

    def _disk_failed(self, what: str, error: OSError) -> None:
        if self._trouble is None:
            log.error(
                "%s the buffer folder %s (%s); keeping batches in memory until it recovers",
                what,
                self.folder,
                error.strerror or error,
            )
        self._trouble = str(error)

    def _disk_works(self) -> None:
        if self._trouble is not None:
            log.warning("the buffer folder %s takes writes again", self.folder)
            self._trouble = None

    def _drop_oldest(self) -> None:
        self.dropped_batches += 1
        if not self._names:
            self.dropped_samples += self._overflow.popleft().samples
            return
        number = self._names.popleft()
        path = self._path(number)
        with contextlib.suppress(OSError):
            self.dropped_samples += _parse(path.read_bytes())[1]
        self._unlink(number)
