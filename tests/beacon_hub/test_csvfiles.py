"""CSV files of DESIGN.md: round trips, and bad rows named by file, line and column; a file
written whole or not at all."""

import contextlib
import io
import stat
import tempfile
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from beacon_hub.csvfiles import (
    EVENTS,
    FIXES,
    READINGS,
    TRUTH,
    CsvWriter,
    EventRow,
    OutputFile,
    Reading,
    TruthPoint,
    read_events,
    read_fixes,
    read_readings,
    read_truth,
)
from beacon_hub.errors import CsvError
from beacon_hub.wire import Fix

B = "ibeacon:e2c56db5-dffb-48d2-b060-d0f5a71096e0:1:2"


def test_readings_round_trip(tmp_path: Path) -> None:
    rows = [
        Reading(t=1_700_000_000.125, gateway="gw-1", beacon=B, rssi=-71.25, tx_power=-59.0),
        Reading(t=1_700_000_000.5, gateway="gw-2", beacon=B, rssi=-80.0),
    ]
    path = tmp_path / "r.csv"
    with CsvWriter(READINGS, path) as out:
        assert out.write_all(rows) == 2
    assert path.read_text().splitlines()[0] == "t,gateway,beacon,rssi,tx_power"
    assert list(read_readings(path)) == rows


def test_truth_and_fixes_round_trip(tmp_path: Path) -> None:
    truth = [
        TruthPoint(t=1.5, beacon=B, x=1.25, y=-3.0, z=1.0, level=0, zone="aisle-1"),
        TruthPoint(t=2.0, beacon=B, x=0.0, y=0.0),
    ]
    with CsvWriter(TRUTH, tmp_path / "t.csv") as out:
        out.write_all(truth)
    assert list(read_truth(tmp_path / "t.csv")) == truth
    fixes = [
        Fix(t=1.0, beacon=B, x=1.0, y=2.0, accuracy_m=1.5, zone=None, gateways=("gw-1", "gw-2"))
    ]
    buffer = io.StringIO()
    with CsvWriter(FIXES, buffer) as out:
        out.write_all(fixes)
    (tmp_path / "f.csv").write_text(buffer.getvalue())
    assert list(read_fixes(tmp_path / "f.csv")) == fixes


def test_only_required_columns_are_enough(tmp_path: Path) -> None:
    path = tmp_path / "r.csv"
    path.write_text(f"beacon,rssi,t,gateway\n{B},-60,10.5,gw-1\n")
    assert list(read_readings(path)) == [Reading(t=10.5, gateway="gw-1", beacon=B, rssi=-60.0)]


def test_events_round_trip_and_an_unknown_type_is_located(tmp_path: Path) -> None:
    rows = [EventRow(12.5, B, "zone_enter", "bay-a01-01"), EventRow(13.0, B, "pallet_moved")]
    path = tmp_path / "e.csv"
    with CsvWriter(EVENTS, path) as out:
        out.write_all(rows)
    assert list(read_events(path)) == rows
    path.write_text(f"t,beacon,type\n1,{B},zone_enter\n2,{B},teleported\n")
    with pytest.raises(CsvError, match=r"e.csv:3: column type: expected one of zone_enter"):
        list(read_events(path))


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("", "empty file"),
        ("t,gateway,beacon\n", "missing column(s) rssi"),
        ("t,gateway,beacon,rssi,txpower\n", "unknown column(s) txpower"),
        (f"t,gateway,beacon,rssi\n1,gw-1,{B},loud\n", "r.csv:2: column rssi: expected a number"),
        (f"t,gateway,beacon,rssi\n1,gw-1,{B},-60\n2,gw-1,{B},-300\n", "r.csv:3: column rssi"),
        (f"t,gateway,beacon,rssi\n1,GW1,{B},-60\n", "column gateway"),
        (f"t,gateway,beacon,rssi\n1,gw-1,{B.upper()},-60\n", "canonical (lowercase) beacon id"),
        (f"t,gateway,beacon,rssi\n1,gw-1,{B}\n", "r.csv:2: 3 cells; the header has 4"),
        (f"t,gateway,beacon,rssi\nnan,gw-1,{B},-60\n", "column t: expected a finite number"),
    ],
)
def test_bad_rows_are_located(tmp_path: Path, content: str, message: str) -> None:
    path = tmp_path / "r.csv"
    path.write_text(content)
    with pytest.raises(CsvError) as info:
        list(read_readings(path))
    assert message in str(info.value)


def test_missing_and_binary_files(tmp_path: Path) -> None:
    with pytest.raises(CsvError, match="cannot open"):
        list(read_readings(tmp_path / "nope.csv"))
    path = tmp_path / "bin.csv"
    path.write_bytes(b"\xff\xfe\x00garbage")
    with pytest.raises(CsvError):
        list(read_readings(path))


@given(st.binary(max_size=300))
def test_any_bytes_read_or_raise_csv_error(payload: bytes) -> None:
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "r.csv"
        path.write_bytes(b"t,gateway,beacon,rssi\n" + payload)
        with contextlib.suppress(CsvError):
            list(read_readings(path))


def test_a_byte_order_mark_is_skipped(tmp_path: Path) -> None:
    """Excel's "CSV UTF-8" starts with U+FEFF, which once became part of the first column name
    (`unknown column(s) \\ufefft`)."""
    path = tmp_path / "r.csv"
    path.write_bytes(f"\ufefft,gateway,beacon,rssi\n10.5,gw-1,{B},-60\n".encode())
    assert list(read_readings(path)) == [Reading(t=10.5, gateway="gw-1", beacon=B, rssi=-60.0)]
    path.write_bytes(f"\ufefft,beacon,x,y\n1,{B},2,3\n".encode())
    assert list(read_truth(path)) == [TruthPoint(t=1.0, beacon=B, x=2.0, y=3.0)]


def test_a_failed_write_leaves_the_earlier_file_and_nothing_else(tmp_path: Path) -> None:
    path = tmp_path / "f.csv"
    path.write_text("earlier\n")
    row = Reading(t=1.0, gateway="gw-1", beacon=B, rssi=-60.0)

    def fail_half_way() -> None:
        with CsvWriter(READINGS, path) as out:
            out.write_all([row] * 1000)
            raise RuntimeError("the run failed half-way")

    with pytest.raises(RuntimeError):
        fail_half_way()
    assert path.read_text() == "earlier\n"
    assert sorted(tmp_path.iterdir()) == [path]
    with CsvWriter(READINGS, path) as out:
        out.write(row)
    assert list(read_readings(path)) == [row]
    assert sorted(tmp_path.iterdir()) == [path]


def test_a_rewritten_file_keeps_its_mode_and_a_new_one_gets_open_s(tmp_path: Path) -> None:
    kept = tmp_path / "kept.csv"
    kept.write_text("earlier\n")
    kept.chmod(0o640)
    with CsvWriter(READINGS, kept):
        pass
    assert stat.S_IMODE(kept.stat().st_mode) == 0o640
    with (tmp_path / "by_open.csv").open("w"):
        pass
    with CsvWriter(READINGS, tmp_path / "new.csv"):
        pass
    assert (tmp_path / "new.csv").stat().st_mode == (tmp_path / "by_open.csv").stat().st_mode


def test_an_output_file_names_the_path_it_cannot_write(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError) as info:
        OutputFile(tmp_path / "nodir" / "f.csv")
    assert info.value.filename == str(tmp_path / "nodir" / "f.csv")
    with pytest.raises(IsADirectoryError) as directory:
        OutputFile(tmp_path)
    assert directory.value.filename == str(tmp_path)
    assert list(tmp_path.iterdir()) == []
