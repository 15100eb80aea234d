"""The asset registry's files: a label that would break an output is refused where it is written."""

from __future__ import annotations

from pathlib import Path

import pytest

from beacon_hub.errors import ConfigError, CsvError
from beacon_hub.registry import read_assets

BEACON = "mac:aa:bb:cc:dd:ee:01"


@pytest.mark.parametrize("label", ["Rack A\\nBay 3", "Tab\\there", "Bell\\x07"])
def test_a_yaml_label_with_a_control_character_is_refused_with_file_and_line(
    tmp_path: Path, label: str
) -> None:
    path = tmp_path / "assets.yaml"
    path.write_text(f'assets:\n  - beacon: "{BEACON}"\n    label: "{label}"\n    kind: pallet\n')
    with pytest.raises(ConfigError) as raised:
        read_assets(path)
    assert f"{path}:3: assets[0].label" in str(raised.value)
    assert "control characters" in str(raised.value)


def test_a_csv_label_with_a_newline_is_refused_with_file_and_line(tmp_path: Path) -> None:
    path = tmp_path / "assets.csv"
    path.write_text(f'beacon,label,kind\n{BEACON},"Rack A\nBay 3",pallet\n')
    with pytest.raises(CsvError, match=r"assets\.csv:\d+: column label: expected text without"):
        read_assets(path)


def test_printable_labels_are_kept_as_written(tmp_path: Path) -> None:
    path = tmp_path / "assets.yaml"
    path.write_text(f'assets:\n  - {{beacon: "{BEACON}", label: "Łódź P-1\u00a0€ \\"x\\""}}\n')
    assert read_assets(path)[0].label == 'Łódź P-1\u00a0€ "x"'
