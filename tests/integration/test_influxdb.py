"""Fixes written as influxdb-client line protocol through InfluxDB 1.x's v1 `/write` path.

Debian ships InfluxDB 1.6 (no v2 API), so this is the write path that runs against a real
server here; the line protocol is built by the same `Point` the v2 path uses (DESIGN.md).
"""

from __future__ import annotations

import pytest
from influxdb_client.client.write.point import Point

from tests.servers import InfluxDB, InfluxError

pytestmark = pytest.mark.integration

T0_NS = 1_700_000_000_123_456_789
"""Nanosecond times with all digits set, so a precision loss anywhere would show."""

BEACON = "ibeacon:e2c56db5-dffb-48d2-b060-d0f5a71096e0:1:2"
OTHER = "mac:aa:bb:cc:dd:ee:ff"


def _fix(beacon: str, i: int, zone: str | None) -> str:
    """One fix's line protocol, built like the hub builds it (`Point.from_dict`)."""
    tags = {"site": "store-7", "beacon": beacon}
    if zone is not None:
        tags["zone"] = zone
    fields = {
        "x": 1.25 + i / 3,  # thirds are not exact binary fractions: tests float round trip
        "y": 40.0 - i * 0.1,
        "accuracy_m": 0.75 + i,
    }
    point = Point.from_dict(
        {"measurement": "fix", "tags": tags, "fields": fields, "time": T0_NS + i * 1_000_000_001}
    )
    line: str = point.to_line_protocol()  # nanoseconds, Point's default precision
    return line


def test_fixes_read_back_exactly(influx_db: tuple[InfluxDB, str]) -> None:
    server, db = influx_db
    zones = ["entrance", "aisle-3", None, "checkout_2"]
    mine = [_fix(BEACON, i, zone) for i, zone in enumerate(zones)]
    others = [_fix(OTHER, i, "entrance") for i in range(3)]
    server.write(db, "\n".join(mine + others))

    # S608 is a SQL-injection rule; these InfluxQL queries are built from the test's constants.
    where = f"WHERE beacon = '{BEACON}'"
    select = f"SELECT x, y, accuracy_m, zone, site FROM fix {where} ORDER BY time"
    rows = server.rows(select, db)
    count = server.rows(f"SELECT count(x) FROM fix {where}", db)

    assert count[0]["count"] == len(mine)
    assert rows == [
        {
            "time": T0_NS + i * 1_000_000_001,
            "x": 1.25 + i / 3,
            "y": 40.0 - i * 0.1,
            "accuracy_m": 0.75 + i,
            "zone": zone,  # a tag never written reads back as null
            "site": "store-7",
        }
        for i, zone in enumerate(zones)
    ]


def test_malformed_line_protocol_is_refused_with_400(influx_db: tuple[InfluxDB, str]) -> None:
    server, db = influx_db
    with pytest.raises(InfluxError) as refused:
        server.write(db, "fix,site=store-7,beacon=x x=")
    assert refused.value.status == 400
    assert "missing field value" in refused.value.message
    assert server.rows("SELECT * FROM fix", db) == []
