"""The asset registry: beacon id <-> label ("P-1042") <-> kind, battery from Eddystone TLM,
last seen (DESIGN.md, Assets).

Loaded from CSV (`beacon,label,kind`) or YAML (a list of `{beacon, label, kind}`), imported into
the hub's SQLite database with `beacon-hub assets import FILE.csv`, and kept there with what the
hub learns (battery, temperature, last seen). Outputs put the label on `track/{beacon}` and in
the stores; the dashboard reads the same table.
"""

from __future__ import annotations

import re
import sqlite3
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, field_validator

from beacon_hub.config_loader import read_yaml, validate_located
from beacon_hub.csvfiles import CsvTable, read_table
from beacon_hub.errors import ConfigError, CsvError
from beacon_hub.ids import is_beacon_id
from beacon_hub.site import BEACON_KINDS
from beacon_hub.wire import Telemetry

__all__ = ["ASSET_CSV", "CONTROL_CHARS", "Asset", "AssetRegistry", "import_assets", "read_assets"]

LABEL_MAX_CHARS = 64
LABEL_REFUSED = "text without control characters (newline, tab, ...)"
"""A label goes into MQTT payloads, the dashboard and InfluxDB's line protocol, where a newline
ends a point: refused at import rather than mangled on the way out."""

MAX_ASSETS = 200_000
"""Beacons the registry learns about from telemetry without being imported: a chain's largest
site has ~20,000; the bound stops a stream of invented ids from growing memory without end."""


CONTROL_CHARS = re.compile(r"[\x00-\x1f\x7f-\x9f]")
"""C0 and C1 control characters. (`str.isprintable` would also refuse a no-break space and
other invisible characters, which a label may hold.)"""


def _label_ok(label: str) -> bool:
    return CONTROL_CHARS.search(label) is None


@dataclass(frozen=True, slots=True)
class Asset:
    beacon: str
    label: str | None = None
    kind: str | None = None
    battery_mv: int | None = None
    temperature_c: float | None = None
    last_seen: float | None = None


def _parse_asset(c: object) -> Asset:
    from beacon_hub.csvfiles import _Cells  # noqa: PLC0415  # the CSV row accessor

    assert isinstance(c, _Cells)  # noqa: S101  # read_table hands us its row type
    label = c.row.get("label", "").strip() or None
    if label is not None and len(label) > LABEL_MAX_CHARS:
        raise c.error("label", f"at most {LABEL_MAX_CHARS} characters")
    if label is not None and not _label_ok(label):
        raise c.error("label", LABEL_REFUSED)
    kind = c.row.get("kind", "").strip() or None
    if kind is not None and kind not in BEACON_KINDS:
        raise c.error("kind", " or ".join(BEACON_KINDS))
    return Asset(beacon=c.beacon("beacon"), label=label, kind=kind)


def _format_asset(a: Asset) -> dict[str, str]:
    return {"beacon": a.beacon, "label": a.label or "", "kind": a.kind or ""}


ASSET_CSV: CsvTable[Asset] = CsvTable(
    name="assets",
    required=("beacon",),
    optional=("label", "kind"),
    parse=_parse_asset,
    format=_format_asset,
)


class _AssetItem(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    beacon: str
    label: Annotated[str, Field(min_length=1, max_length=LABEL_MAX_CHARS)] | None = None
    kind: str | None = None

    @field_validator("beacon")
    @classmethod
    def _beacon(cls, value: str) -> str:
        if not is_beacon_id(value):
            raise ValueError(
                "expected a canonical beacon id such as ibeacon:{uuid}:{major}:{minor}"
            )
        return value

    @field_validator("label")
    @classmethod
    def _label(cls, value: str | None) -> str | None:
        if value is not None and not _label_ok(value):
            raise ValueError(f"expected {LABEL_REFUSED}")
        return value

    @field_validator("kind")
    @classmethod
    def _kind(cls, value: str | None) -> str | None:
        if value is not None and value not in BEACON_KINDS:
            raise ValueError(f"expected one of {', '.join(BEACON_KINDS)}")
        return value


class _AssetFile(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    assets: list[_AssetItem]


def read_assets(path: Path) -> list[Asset]:
    """Assets from a CSV or YAML file; CsvError/ConfigError name the file and line."""
    if path.suffix.lower() in (".yaml", ".yml"):
        doc = validate_located(_AssetFile, read_yaml(path))
        assets = [Asset(a.beacon, a.label, a.kind) for a in doc.assets]
    else:
        assets = list(read_table(ASSET_CSV, path))
    _check_unique(assets, str(path))
    return assets


def _check_unique(assets: Sequence[Asset], where: str) -> None:
    seen: dict[str, str] = {}
    beacons: set[str] = set()
    for a in assets:
        if a.beacon in beacons:
            raise CsvError(f"{where}: beacon {a.beacon} is listed twice")
        beacons.add(a.beacon)
        if a.label is not None:
            if a.label in seen:
                raise CsvError(
                    f"{where}: label {a.label!r} is given to {seen[a.label]} and {a.beacon}"
                )
            seen[a.label] = a.beacon


def import_assets(db: sqlite3.Connection, assets: Iterable[Asset]) -> int:
    """Insert or update label and kind (battery and last seen are kept); returns the count."""
    rows = [(a.beacon, a.label, a.kind) for a in assets]
    try:
        db.execute("BEGIN")
        # A label moving to another beacon: free it first, so UNIQUE(label) holds.
        db.executemany(
            "UPDATE assets SET label = NULL WHERE label = ? AND beacon != ?",
            [(r[1], r[0]) for r in rows if r[1] is not None],
        )
        db.executemany(
            "INSERT INTO assets (beacon, label, kind) VALUES (?, ?, ?) "
            "ON CONFLICT (beacon) DO UPDATE SET label = excluded.label, kind = excluded.kind",
            rows,
        )
        db.execute("COMMIT")
    except sqlite3.Error as e:
        db.execute("ROLLBACK")
        raise ConfigError("assets", [f"cannot import assets: {e}"]) from e
    return len(rows)


class AssetRegistry:
    """In-memory view for the service thread, saved back to SQLite now and then."""

    def __init__(self, assets: Iterable[Asset] = ()) -> None:
        self._by_beacon: dict[str, Asset] = {a.beacon: a for a in assets}
        self._by_label: dict[str, str] = {
            a.label: a.beacon for a in self._by_beacon.values() if a.label is not None
        }
        self._dirty: set[str] = set()

    @classmethod
    def from_db(cls, db: sqlite3.Connection) -> AssetRegistry:
        rows = db.execute(
            "SELECT beacon, label, kind, battery_mv, temperature_c, last_seen FROM assets"
        )
        return cls(Asset(*r) for r in rows)

    def __len__(self) -> int:
        return len(self._by_beacon)

    def __iter__(self) -> Iterator[Asset]:
        return iter(self._by_beacon.values())

    def get(self, beacon: str) -> Asset | None:
        return self._by_beacon.get(beacon)

    def by_label(self, label: str) -> Asset | None:
        beacon = self._by_label.get(label)
        return None if beacon is None else self._by_beacon.get(beacon)

    def label(self, beacon: str) -> str | None:
        a = self._by_beacon.get(beacon)
        return None if a is None else a.label

    def labels(self, beacons: Sequence[str]) -> list[str | None]:
        get = self._by_beacon.get
        return [None if (a := get(b)) is None else a.label for b in beacons]

    def add(self, assets: Iterable[Asset]) -> None:
        for a in assets:
            old = self._by_beacon.get(a.beacon)
            if old is not None:
                a = replace(old, label=a.label, kind=a.kind)  # noqa: PLW2901
            self._by_beacon[a.beacon] = a
            if a.label is not None:
                self._by_label[a.label] = a.beacon
            self._dirty.add(a.beacon)

    def telemetry(self, tlm: Iterable[Telemetry]) -> None:
        for t in tlm:
            old = self._by_beacon.get(t.beacon)
            if old is None:
                if len(self._by_beacon) >= MAX_ASSETS:
                    continue
                old = Asset(t.beacon)
            self._by_beacon[t.beacon] = replace(
                old,
                battery_mv=t.battery_mv if t.battery_mv is not None else old.battery_mv,
                temperature_c=t.temperature_c if t.temperature_c is not None else old.temperature_c,
            )
            self._dirty.add(t.beacon)

    def seen(self, beacons: Iterable[str], t: float) -> None:
        """Beacons with a fix at tick t. Only registered beacons are remembered: a hostile
        stream of ids must not grow the registry."""
        for b in beacons:
            a = self._by_beacon.get(b)
            if a is not None:
                self._by_beacon[b] = replace(a, last_seen=t)
                self._dirty.add(b)

    def save_job(self) -> Callable[[sqlite3.Connection], None]:
        """A snapshot of what changed, to be saved on the SQLite writer thread."""
        snapshot = AssetRegistry(self._by_beacon[b] for b in self._dirty)
        snapshot._dirty = set(snapshot._by_beacon)
        self._dirty.clear()

        def job(db: sqlite3.Connection) -> None:
            snapshot.save(db)

        return job

    def save(self, db: sqlite3.Connection) -> int:
        """Write battery, temperature and last seen of what changed; returns rows written."""
        if not self._dirty:
            return 0
        rows = [
            (a.beacon, a.kind, a.battery_mv, a.temperature_c, a.last_seen)
            for b in self._dirty
            if (a := self._by_beacon[b]) is not None
        ]
        db.execute("BEGIN")
        try:
            db.executemany(
                "INSERT INTO assets (beacon, kind, battery_mv, temperature_c, last_seen) "
                "VALUES (?, ?, ?, ?, ?) ON CONFLICT (beacon) DO UPDATE SET "
                "battery_mv = excluded.battery_mv, temperature_c = excluded.temperature_c, "
                "last_seen = excluded.last_seen",
                rows,
            )
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")  # the writer's next transaction must be able to begin
            raise
        self._dirty.clear()
        return len(rows)
