"""Fixtures that start real servers (DESIGN.md, Testing: real servers, not mocks).

One Mosquitto and one InfluxDB serve the whole session: each starts in well under a second, but
tests stay independent by using their own site ids and databases. A test that needs to stop,
kill or reconfigure a server starts its own from `tests.servers` rather than disturbing these.
A missing binary fails the fixture with the install command; nothing is skipped, so a green run
always means the integration tests ran.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest
from hypothesis import HealthCheck, settings

from tests.servers import InfluxDB, Mosquitto

# No timing thresholds in tests (README, Standards), Hypothesis' included: its default 200 ms
# deadline per example and its too_slow health check failed property tests on this 2-core
# machine while a benchmark ran beside them (test_privacy's consent payloads, 2026-12-07).
settings.register_profile("beacon-hub", deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.load_profile("beacon-hub")


@pytest.fixture(scope="session")
def mosquitto(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mosquitto]:
    server = Mosquitto(tmp_path_factory.mktemp("mosquitto"))
    try:
        server.start()
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def influxdb(tmp_path_factory: pytest.TempPathFactory) -> Iterator[InfluxDB]:
    server = InfluxDB(tmp_path_factory.mktemp("influxdb"))
    try:
        server.start()
        yield server
    finally:
        server.stop()


@pytest.fixture
def influx_db(influxdb: InfluxDB) -> tuple[InfluxDB, str]:
    """A fresh database on the session's InfluxDB.

    It is not dropped afterwards: it costs nothing until the session ends, and it is still
    there to inspect while debugging a failed test.
    """
    name = f"test_{uuid.uuid4().hex[:12]}"
    influxdb.create_database(name)
    return influxdb, name
