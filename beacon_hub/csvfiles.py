"""The CSV files of DESIGN.md: readings, truth and fixes.

Header row first; columns in any order; times are Unix seconds, positions metres. Readers stream
rows and refuse bad input with `CsvError` naming the file, the line and the column; writers
stream too, so a long simulation or replay never holds a file in memory.

    readings  t,gateway,beacon,rssi[,tx_power]
    truth     t,beacon,x,y[,z,level,zone]
    fixes     t,beacon,x,y,accuracy_m,zone,gateways[,level]
"""

from __future__ import annotations

import csv
import math
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import IO, Generic, TypeVar

from beacon_hub.errors import CsvError, IdError
from beacon_hub.ids import is_beacon_id, is_name_id, parse_beacon_id
from beacon_hub.wire import EVENT_TYPES, Fix

__all__ = [
    "EVENTS",
    "FIXES",
    "READINGS",
    "TRUTH",
    "CsvTable",
    "CsvWriter",
    "EventRow",
    "Reading",
    "TruthPoint",
    "read_events",
    "read_fixes",
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


EVENTS: CsvTable[EventRow] = CsvTable(
    "events", ("t", "beacon", "type"), ("zone",), _parse_event, _format_event
)


def read_table(table: CsvTable[R], path: Path | str) -> Iterator[R]:
    """Stream the records of a CSV file of kind `table`, checking the header first."""
    where = str(path)
    try:
        # Closed by the `with` below; opened here so a missing file fails before the first row.
        handle = Path(path).open(newline="", encoding="utf-8")  # noqa: SIM115
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
                yield table.parse(_Cells(where, reader.line_num, cells))
        except csv.Error as e:
            raise CsvError(f"{where}:{reader.line_num}: not valid CSV: {e}") from e
        except UnicodeDecodeError as e:
            raise CsvError(f"{where}: not UTF-8 text ({e.reason} at byte {e.start})") from e


def _check_header(table: CsvTable[R], header: Sequence[str], where: str) -> None:
    allowed = (*table.required, *table.optional)
    missing = [c for c in table.required if c not in header]
    unknown = [c for c in header if c not in allowed]
    doubled = sorted({c for c in header if header.count(c) > 1})
    if missing or unknown or doubled:
        problems = []
        if missing:
            problems.append(f"missing column(s) {', '.join(missing)}")
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


def read_fixes(path: Path | str) -> Iterator[Fix]:
    return read_table(FIXES, path)


class CsvWriter(Generic[R]):
    """Streams records of one kind to a CSV file; use as a context manager.

    Optional columns are written only when named in `optional` (all of them by default).
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
        self._own = isinstance(target, Path | str)
        self._handle: IO[str]
        if isinstance(target, Path | str):
            # Held open across write() calls and closed by close() / __exit__.
            self._handle = Path(target).open("w", newline="", encoding="utf-8")  # noqa: SIM115
        else:
            self._handle = target
        self._writer = csv.DictWriter(
            self._handle, fieldnames=columns, extrasaction="ignore", lineterminator="\n"
        )
        self._writer.writeheader()
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
        if self._own:
            self._handle.close()
        else:
            self._handle.flush()

    def __enter__(self) -> CsvWriter[R]:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


def read_events(path: Path | str) -> Iterator[EventRow]:
    return read_table(EVENTS, path)
