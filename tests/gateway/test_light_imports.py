"""The gateway runs on a Pi Zero: importing it and the wire contract pulls in nothing heavy."""

import json
import subprocess
import sys

HEAVY = ["numpy", "scipy", "filterpy", "influxdb_client", "matplotlib", "prometheus_client"]


def test_gateway_and_wire_import_nothing_heavy() -> None:
    code = (
        "import json, sys\n"
        "import gateway, gateway.cli, beacon_hub, beacon_hub.wire, beacon_hub.ids\n"
        "import beacon_hub.csvfiles, beacon_hub.config_loader\n"
        f"print(json.dumps([m for m in {HEAVY!r} if m in sys.modules]))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    )
    assert json.loads(result.stdout) == []


def test_the_check_itself_can_fail() -> None:
    code = (
        f"import json, sys, numpy\nprint(json.dumps([m for m in {HEAVY!r} if m in sys.modules]))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    )
    assert "numpy" in json.loads(result.stdout)
