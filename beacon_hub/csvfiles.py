"""The CSV files of DESIGN.md: readings, truth and fixes.

Header row first; columns in any order; times are Unix seconds, positions metres. Readers stream
rows and refuse bad input with `CsvError` naming the file, the line and the column; a UTF-8 byte
order mark (Excel's "CSV UTF-8") is skipped. Writers stream too, so a long simulation or replay
never holds a file in memory, through `OutputFile`: a file appears whole or not at all.

    readings  t,gateway,beacon,rssi[,tx_power]
    truth     t,beacon,x,y[,z,level,zone]
    fixes     t,beacon,x,y,accuracy_m,zone,gateways[,level]
    points    x,y[,z,level,name]   (survey points, in the order to visit them)
"""

from __future__ import annotations

import contextlib
import csv
import errno
import math
import os
import secrets
import stat
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import IO, Any, Generic, TypeVar

from beacon_hub.errors import CsvError, IdError
from beacon_hub.ids import is_beacon_id, is_name_id, parse_beacon_id
from beacon_hub.wire import EVENT_TYPES, Fix

__all__ = [
    "EVENTS",
    "FIXES",
    "POINTS",
    "READINGS",
    "TRUTH",
    "CsvTable",
    "CsvWriter",
    "EventRow",
    "OutputFile",
    "Reading",
    "SurveyPoint",
    "TruthPoint",
    "listed",
    "read_events",
    "read_fixes",
    "read_points",
    "read_readings",
    "read_truth",
]


@dataclass(frozen=True, slots=True)
class Reading:
    """One RSSI sample: `beacon` heard by `gateway` at time `t` (Unix s) with `rssi` dBm."""

    t: float
    gateway: str
    beacon: str
    rssi: float
    tx_power: float | None = None
    """Announced RSSI at 1 m (dBm), when the beacon sends one."""


@dataclass(frozen=True, slots=True)
class TruthPoint:
    """Where a beacon really was at time `t`."""

    t: float
    beacon: str
    x: float
    y: float
    z: float | None = None
    level: int | None = None
    zone: str | None = None


@dataclass(frozen=True, slots=True)
class SurveyPoint:
    """A place on the floor where a survey holds its tag (`beacon-hub survey --points`)."""

    x: float
    y: float
    z: float | None = None
    level: int | None = None
    name: str | None = None


@dataclass(frozen=True, slots=True)
class EventRow:
    """An engine event as `replay --events` writes it (the MQTT event without its data)."""

    t: float
    beacon: str
    type: str
    zone: str | None = None


R = TypeVar("R")


@dataclass(frozen=True)
class CsvTable(Generic[R]):
    """A file kind: its columns and how a row maps to a record and back."""

    name: str
    required: tuple[str, ...]
    optional: tuple[str, ...]
    parse: Callable[[_Cells], R]
    format: Callable[[R], dict[str, str]]


class _Cells:
    """Typed access to one row's cells, raising CsvError that names file, line and column."""

    __slots__ = ("line", "path", "row")

    def __init__(self, path: str, line: int, row: dict[str, str]) -> None:
        self.path, self.line, self.row = path, line, row

    def error(self, column: str, expected: str) -> CsvError:
        value = self.row.get(column, "")
        return CsvError(
            f"{self.path}:{self.line}: column {column}: expected {expected}, got {value!r:.60}"
        )

    def number(self, column: str, lo: float = -math.inf, hi: float = math.inf) -> float:
        text = self.row.get(column, "")
        try:
            value = float(text)
        except ValueError:
            raise self.error(column, "a number") from None
        if not math.isfinite(value) or not lo <= value <= hi:
            raise self.error(column, f"a finite number in {lo:g}..{hi:g}")
        return value

    def opt_number(self, column: str, lo: float = -math.inf, hi: float = math.inf) -> float | None:
        return None if self.row.get(column, "") == "" else self.number(column, lo, hi)

    def opt_int(self, column: str) -> int | None:
        text = self.row.get(column, "")
        if text == "":
            return None
        try:
            return int(text)
        except ValueError:
            raise self.error(column, "an integer") from None

    def name(self, column: str) -> str:
        text = self.row.get(column, "")
        if not is_name_id(text):
            raise self.error(column, "an id matching ^[a-z0-9][a-z0-9_-]{0,62}$")
        return text

    def opt_name(self, column: str) -> str | None:
        return None if self.row.get(column, "") == "" else self.name(column)

    def beacon(self, column: str) -> str:
        text = self.row.get(column, "")
        if is_beacon_id(text):
            return text
        try:
            canonical = str(parse_beacon_id(text))
        except IdError:
            raise self.error(
                column, "a canonical beacon id such as ibeacon:{uuid}:{major}:{minor}"
            ) from None
        raise self.error(column, f"the canonical (lowercase) beacon id {canonical!r}")

    def names(self, column: str) -> tuple[str, ...]:
        text = self.row.get(column, "")
        if text == "":
            return ()
        parts = tuple(text.split(";"))
        if not all(is_name_id(p) for p in parts):
            raise self.error(column, "gateway ids joined by ';'")
        return parts


def _fmt(value: float, decimals: int) -> str:
    """Fixed decimals without trailing zeros: 12.5 not 12.500, -60 not -60.000."""
    text = f"{value:.{decimals}f}"
    if "." in text:
        text = text.rstrip("0").rstrip(".")
    return "0" if text == "-0" else text


def _opt(value: float | None, decimals: int) -> str:
    return "" if value is None else _fmt(value, decimals)


RSSI_LIMITS_DBM = (-127.0, 20.0)  # Bluetooth Core spec, HCI LE Advertising Report
_TIME_LIMITS_S = (0.0, 1e11)


def _parse_reading(c: _Cells) -> Reading:
    return Reading(
        t=c.number("t", *_TIME_LIMITS_S),
        gateway=c.name("gateway"),
        beacon=c.beacon("beacon"),
        rssi=c.number("rssi", *RSSI_LIMITS_DBM),
        tx_power=c.opt_number("tx_power", *RSSI_LIMITS_DBM),
    )


def _format_reading(r: Reading) -> dict[str, str]:
    return {
        "t": _fmt(r.t, 3),
        "gateway": r.gateway,
        "beacon": r.beacon,
        "rssi": _fmt(r.rssi, 2),
        "tx_power": _opt(r.tx_power, 1),
    }


def _parse_truth(c: _Cells) -> TruthPoint:
    return TruthPoint(
        t=c.number("t", *_TIME_LIMITS_S),
        beacon=c.beacon("beacon"),
        x=c.number("x"),
        y=c.number("y"),
        z=c.opt_number("z"),
        level=c.opt_int("level"),
        zone=c.opt_name("zone"),
    )


def _format_truth(p: TruthPoint) -> dict[str, str]:
    return {
        "t": _fmt(p.t, 3),
        "beacon": p.beacon,
        "x": _fmt(p.x, 3),
        "y": _fmt(p.y, 3),
        "z": _opt(p.z, 3),
        "level": "" if p.level is None else str(p.level),
        "zone": p.zone or "",
    }


def _parse_fix(c: _Cells) -> Fix:
    level = c.opt_int("level")
    return Fix(
        t=c.number("t", *_TIME_LIMITS_S),
        beacon=c.beacon("beacon"),
        x=c.number("x"),
        y=c.number("y"),
        accuracy_m=c.number("accuracy_m", 0.0),
        zone=c.opt_name("zone"),
        gateways=c.names("gateways"),
        level=0 if level is None else level,
    )


def _format_fix(f: Fix) -> dict[str, str]:
    return {
        "t": _fmt(f.t, 3),
        "beacon": f.beacon,
        "x": _fmt(f.x, 3),
        "y": _fmt(f.y, 3),
        "accuracy_m": _fmt(f.accuracy_m, 3),
        "zone": f.zone or "",
        "gateways": ";".join(f.gateways),
        "level": str(f.level),
    }


def _parse_event(c: _Cells) -> EventRow:
    kind = c.row.get("type", "")
    if kind not in EVENT_TYPES:
        raise c.error("type", "one of " + ", ".join(EVENT_TYPES))
    return EventRow(
        t=c.number("t", *_TIME_LIMITS_S),
        beacon=c.beacon("beacon"),
        type=kind,
        zone=c.opt_name("zone"),
    )


def _format_event(e: EventRow) -> dict[str, str]:
    return {"t": _fmt(e.t, 3), "beacon": e.beacon, "type": e.type, "zone": e.zone or ""}


READINGS: CsvTable[Reading] = CsvTable(
    "readings", ("t", "gateway", "beacon", "rssi"), ("tx_power",), _parse_reading, _format_reading
)
TRUTH: CsvTable[TruthPoint] = CsvTable(
    "truth", ("t", "beacon", "x", "y"), ("z", "level", "zone"), _parse_truth, _format_truth
)
FIXES: CsvTable[Fix] = CsvTable(
    "fixes",
    ("t", "beacon", "x", "y", "accuracy_m", "zone", "gateways"),
    ("level",),
    _parse_fix,
    _format_fix,
)


def _parse_point(c: _Cells) -> SurveyPoint:
    return SurveyPoint(
        x=c.number("x"),
        y=c.number("y"),
        z=c.opt_number("z", 0.0, 100.0),
        level=c.opt_int("level"),
        name=c.row.get("name", "").strip() or None,
    )


def _format_point(p: SurveyPoint) -> dict[str, str]:
    return {
        "x": _fmt(p.x, 3),
        "y": _fmt(p.y, 3),
        "z": _opt(p.z, 3),
        "level": "" if p.level is None else str(p.level),
        "name": p.name or "",
    }


POINTS: CsvTable[SurveyPoint] = CsvTable(
    "survey points", ("x", "y"), ("z", "level", "name"), _parse_point, _format_point
)
EVENTS: CsvTable[EventRow] = CsvTable(
    "events", ("t", "beacon", "type"), ("zone",), _parse_event, _format_event
)


def read_table(table: CsvTable[R], path: Path | str) -> Iterator[R]:
    """Stream the records of a CSV file of kind `table`, checking the header first."""
    return (record for _, record in read_numbered(table, path))


def read_numbered(table: CsvTable[R], path: Path | str) -> Iterator[tuple[int, R]]:
    """`read_table` with each record's line in the file, for checks made after reading
    (a blank or quoted multi-line row makes the line differ from the record's index)."""
    where = str(path)
    try:
        # Closed by the `with` below; opened here so a missing file fails before the first row.
        handle = Path(path).open(newline="", encoding="utf-8-sig")  # noqa: SIM115
    except OSError as e:
        raise CsvError(f"{where}: cannot open: {e.strerror or e}") from e
    with handle:
        reader = csv.reader(handle)
        try:
            header = next(reader, None)
            if header is None:
                raise CsvError(
                    f"{where}: empty file; expected a header row {','.join(table.required)}"
                )
            header = [h.strip() for h in header]
            _check_header(table, header, where)
            width = len(header)
            for row in reader:
                if not row:
                    continue
                if len(row) != width:
                    raise CsvError(
                        f"{where}:{reader.line_num}: {len(row)} cells; the header has {width}"
                    )
                cells = dict(zip(header, row, strict=True))
                yield reader.line_num, table.parse(_Cells(where, reader.line_num, cells))
        except csv.Error as e:
            raise CsvError(f"{where}:{reader.line_num}: not valid CSV: {e}") from e
        except UnicodeDecodeError as e:
            raise CsvError(f"{where}: not UTF-8 text ({e.reason} at byte {e.start})") from e


def _check_header(table: CsvTable[R], header: Sequence[str], where: str) -> None:
    allowed = (*table.required, *table.optional)
    missing = [c for c in table.required if c not in header]
    # A spreadsheet writes back columns that once held something as empty cells (`x,y,,`):
    # named by position, since an empty name reads as nothing in the list of unknown ones.
    empty = [str(k) for k, c in enumerate(header, start=1) if c == ""]
    unknown = [c for c in header if c not in allowed and c != ""]
    doubled = sorted({c for c in header if header.count(c) > 1 and c != ""})
    if missing or empty or unknown or doubled:
        problems = []
        if missing:
            problems.append(f"missing column(s) {', '.join(missing)}")
        if empty:
            plural = "s" if len(empty) > 1 else ""
            problems.append(f"empty header cell{plural} in column{plural} {', '.join(empty)}")
        if unknown:
            problems.append(f"unknown column(s) {', '.join(unknown)}")
        if doubled:
            problems.append(f"repeated column(s) {', '.join(doubled)}")
        raise CsvError(
            f"{where}:1: not a {table.name} file: {'; '.join(problems)}; "
            f"expected {','.join(table.required)}"
            + (f" and optionally {','.join(table.optional)}" if table.optional else "")
        )


def read_readings(path: Path | str) -> Iterator[Reading]:
    return read_table(READINGS, path)


def read_truth(path: Path | str) -> Iterator[TruthPoint]:
    return read_table(TRUTH, path)


def read_points(path: Path | str) -> Iterator[SurveyPoint]:
    return read_table(POINTS, path)


def read_fixes(path: Path | str) -> Iterator[Fix]:
    return read_table(FIXES, path)


def listed(names: Iterable[str], limit: int = 12) -> str:
    """Ids for a message, comma-separated, the first `limit` of them and how many more."""
    items = list(names)
    if not items:
        return "none"
    more = len(items) - limit
    return ", ".join(items[:limit]) + (f" and {more} more" if more > 0 else "")


def _named(e: OSError, path: Path | str) -> OSError:
    """`e` again, naming `path` (the user's name of it) instead of a temporary file."""
    return OSError(e.errno, e.strerror or str(e), str(path))


class OutputFile:
    """A file that appears whole or not at all: written to a temporary file beside `path`,
    which `commit` renames over `path` and `discard` removes. An interrupted or failed run so
    leaves the earlier file as it was, never a truncated one that looks finished.

    As a context manager it gives the open handle and commits when the block ends without an
    exception. An existing file keeps its permissions; one that is read-only is refused as
    `open(path, "w")` would refuse it. What exists and is not a regular file (/dev/null, a
    FIFO) is written in place. OSError names `path`, never the temporary file.
    """

    def __init__(
        self, path: Path | str, *, binary: bool = False, newline: str | None = None
    ) -> None:
        self.path = Path(path)
        target = Path(os.path.realpath(self.path)) if self.path.is_symlink() else self.path
        self._target = target
        self._temp: Path | None = None
        try:
            st: os.stat_result | None = target.stat()
        except FileNotFoundError:
            st = None
        except OSError as e:
            raise _named(e, self.path) from e
        text: dict[str, Any] = {} if binary else {"encoding": "utf-8", "newline": newline}
        mode = "wb" if binary else "w"
        if st is not None and stat.S_ISDIR(st.st_mode):
            raise IsADirectoryError(errno.EISDIR, os.strerror(errno.EISDIR), str(self.path))
        if st is not None and not stat.S_ISREG(st.st_mode):
            try:
                self.handle: IO[Any] = target.open(mode, **text)
            except OSError as e:
                raise _named(e, self.path) from e
            return
        if st is not None and not os.access(target, os.W_OK):
            raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(self.path))
        fd = self._create_temp(st)
        try:
            self.handle = os.fdopen(fd, mode, **text)
        except BaseException:
            os.close(fd)
            self._remove_temp()
            raise

    def _create_temp(self, st: os.stat_result | None) -> int:
        """A new file beside the target: the target's mode, or what `open` gives a new one."""
        while True:
            temp = self._target.with_name(f".{self._target.name}.{secrets.token_hex(4)}.tmp")
            try:
                fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
            except FileExistsError:
                continue
            except OSError as e:
                raise _named(e, self.path) from e
            self._temp = temp
            if st is not None:
                os.fchmod(fd, stat.S_IMODE(st.st_mode))
            return fd

    def _remove_temp(self) -> None:
        if self._temp is not None:
            with contextlib.suppress(FileNotFoundError):
                self._temp.unlink()
            self._temp = None

    def commit(self) -> None:
        """Close and put the file in place; on failure nothing is left but the earlier file."""
        try:
            self.handle.close()
            if self._temp is not None:
                self._temp.replace(self._target)
                self._temp = None
        except OSError as e:
            self.discard()
            raise _named(e, self.path) from e

    def discard(self) -> None:
        """Close and remove the temporary file: the earlier file, if any, stays as it was."""
        with contextlib.suppress(OSError):
            self.handle.close()
        self._remove_temp()

    def __enter__(self) -> IO[Any]:
        return self.handle

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if exc_type is None:
            self.commit()
        else:
            self.discard()


class CsvWriter(Generic[R]):
    """Streams records of one kind to a CSV file; use as a context manager.

    Optional columns are written only when named in `optional` (all of them by default). A
    file named by its path is an `OutputFile`: it replaces the earlier file when the writer
    closes, and leaves that alone when the `with` block ends in an exception (or `discard`).
    """

    def __init__(
        self,
        table: CsvTable[R],
        target: Path | str | IO[str],
        optional: Iterable[str] | None = None,
    ) -> None:
        columns = (*table.required, *(table.optional if optional is None else tuple(optional)))
        unknown = [c for c in columns if c not in (*table.required, *table.optional)]
        if unknown:
            raise ValueError(f"{table.name} has no column(s) {', '.join(unknown)}")
        self._table = table
        self._file: OutputFile | None = None
        self._handle: IO[str]
        if isinstance(target, Path | str):
            self._file = OutputFile(target, newline="")
            self._handle = self._file.handle
        else:
            self._handle = target
        self._writer = csv.DictWriter(
            self._handle, fieldnames=columns, extrasaction="ignore", lineterminator="\n"
        )
        try:
            self._writer.writeheader()
        except BaseException:
            self.discard()
            raise
        self.rows = 0

    def write(self, record: R) -> None:
        self._writer.writerow(self._table.format(record))
        self.rows += 1

    def write_all(self, records: Iterable[R]) -> int:
        fmt = self._table.format
        before = self.rows
        for record in records:
            self._writer.writerow(fmt(record))
            self.rows += 1
        return self.rows - before

    def close(self) -> None:
        """Finish the file: put it in place (a path) or flush it (a handle, left open)."""
        if self._file is not None:
            self._file.commit()
        else:
            self._handle.flush()

    def discard(self) -> None:
        """Give the file up: the earlier file at the path, if any, stays as it was."""
        if self._file is not None:
            self._file.discard()

    def __enter__(self) -> CsvWriter[R]:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if exc_type is None or self._file is None:
            self.close()  # a handle is flushed either way, as it always was
        else:
            self.discard()


def read_events(path: Path | str) -> Iterator[EventRow]:
    return read_table(EVENTS, path)
