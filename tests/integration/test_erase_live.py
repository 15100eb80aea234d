"""`beacon-hub erase` while the hub runs through an InfluxDB outage (docs/privacy.md, Erasure):
the erased shopper's data does not come back from the hub's memory, spill or SQLite writer, and
no other beacon's point is lost. A real hub process, a real Mosquitto, a real InfluxDB 1.6
stopped and started again."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import yaml

from beacon_hub import cli
from beacon_hub.hubconfig import PrivacyConfig
from beacon_hub.privacy import load_key, pseudonym
from tests.integration.hubkit import Gateways, HubProcess, site_file, unique_site, wait_until
from tests.integration.test_hub_resilience import ledger, published, sending
from tests.servers import InfluxDB, InfluxError, Mosquitto

pytestmark = pytest.mark.integration

DB = "beacons"


def _times(server: InfluxDB, measurement: str, beacon: str) -> list[float]:
    """The times (s) of a beacon's points in every retention policy the hub writes."""
    q = (
        f'SELECT * FROM "{measurement}", "beacon_hub_shoppers"."{measurement}"'
        f" WHERE beacon = '{beacon}'"
    )
    try:
        rows = server.rows(q, DB)
    except InfluxError as e:  # before the hub's first write made its policies
        if "retention policy not found" not in str(e):
            raise
        return []
    return sorted(r["time"] / 1e9 for r in rows)


def _two_shoppers(
    tmp_path: Path, mosquitto: Mosquitto, influx_url: str, db: str, **extra: object
) -> tuple[Gateways, str, str, HubProcess]:
    """Gateways hearing two carts, both with consent, and a hub (not started) that stores them in
    SQLite and InfluxDB: (gateways, the shopper to erase, the other one, hub)."""
    path = site_file(tmp_path, unique_site())
    gws = Gateways(mosquitto, path, beacons=2)
    shopper, other = gws.beacon_ids
    consent = tmp_path / "consent.yaml"
    consent.write_text(yaml.safe_dump([shopper, other]))
    hub = HubProcess(
        tmp_path / "hub",
        mosquitto,
        [path],
        influx_url=influx_url,
        influx_db=db,
        extra={
            "privacy.shopper_kinds": ["cart"],
            "privacy.consent_file": str(consent),
            **extra,
        },
    )
    return gws, shopper, other, hub


def test_erase_with_the_hub_running_through_an_influxdb_outage(
    tmp_path: Path, mosquitto: Mosquitto
) -> None:
    influx = InfluxDB(tmp_path / "influx")
    influx.start()
    influx.create_database(DB)
    # shoppers in a retention policy of their own: the writer's DELETE reaches it
    extra = {"privacy.retention_days": 30}
    gws, shopper, other, hub = _two_shoppers(tmp_path, mosquitto, influx.url, DB, **extra)
    spill = hub.folder / "spill"
    try:
        hub.start()
        key = load_key(PrivacyConfig(), hub.db_path)
        gone, kept = pseudonym(key, shopper), pseudonym(key, other)
        with sending(gws):
            wait_until(
                "both shoppers in InfluxDB",
                lambda: bool(_times(influx, "fix", gone) and _times(influx, "fix", kept)),
                hub=hub,
            )
            influx.stop()
            t_down = time.time()

            def spilled(beacon: str) -> bool:
                return any(beacon in f.read_text() for f in spill.glob("*.lp"))

            wait_until("both shoppers in the spill", lambda: spilled(gone) and spilled(kept))
            t_erase = time.time()  # every tick at or before it is the erased shopper's past
            status = cli.main(["erase", shopper, "--config", str(hub.config_path)])
            assert status != 0  # InfluxDB is down: its part fails, said on stderr
            wait_until(
                "two more ticks stored",
                lambda: hub.sql("SELECT max(t) FROM fixes")[0][0] > t_erase + 1.0,
                hub=hub,
            )
        influx.start()
        wait_until(
            "the spill replayed",
            lambda: hub.metric_sum("beacon_hub_store_backlog", store="influx_v1") == 0,
            hub=hub,
        )
        assert hub.stop() == 0
        back_sql = hub.sql("SELECT count(*) FROM fixes WHERE beacon = ? AND t <= ?", gone, t_erase)
        back_influx = [t for t in _times(influx, "fix", gone) if t <= t_erase]
        stored = {t for (t,) in hub.sql("SELECT t FROM fixes WHERE beacon = ?", kept)}
        lost = sorted(stored - set(_times(influx, "fix", kept)))
        events_back = [t for t in _times(influx, "event", gone) if t <= t_erase]
        found = {
            "erased fixes in SQLite": back_sql[0][0],
            "erased fixes in InfluxDB": len(back_influx),
            "erased events in InfluxDB": len(events_back),
            "other shopper's fixes not in InfluxDB": len(lost),
            "spill files left": len(list(spill.glob("*.lp"))),
        }
        print(found, {"erased fixes of the outage back": sum(t > t_down for t in back_influx)})
        assert found == dict.fromkeys(found, 0)
        assert "spilled points lost" not in hub.log()  # main: the files erase wrote anew
    finally:
        gws.close()
        hub.close()
        influx.stop()


def test_erase_while_the_hub_is_stopped_keeps_its_backlog_from_coming_back(
    tmp_path: Path, mosquitto: Mosquitto, influx_db: tuple[InfluxDB, str]
) -> None:
    """What the documented workaround did (stop the hub, erase, start it): the broker queued the
    gateways' batches for the stopped hub's session, and the restarted hub ticked them, dated
    before the erasure, into SQLite and InfluxDB."""
    server, name = influx_db
    gws, shopper, other, hub = _two_shoppers(tmp_path, mosquitto, server.url, name)
    try:
        hub.start()
        key = load_key(PrivacyConfig(), hub.db_path)
        gone, kept = pseudonym(key, shopper), pseudonym(key, other)

        def stored(beacon: str) -> int:
            return int(hub.sql("SELECT count(*) FROM fixes WHERE beacon = ?", beacon)[0][0])

        with sending(gws):
            wait_until("both shoppers stored", lambda: stored(gone) > 0 and stored(kept) > 0)
        assert hub.stop() == 0
        queued = gws.rounds + 3
        with sending(gws):  # queued by the broker for the hub's session
            wait_until("3 rounds sent while the hub is down", lambda: gws.rounds >= queued)
        t_erase = time.time()
        assert cli.main(["erase", shopper, "--config", str(hub.config_path)]) == 0
        before = stored(kept)
        hub.start()
        want = published(gws)
        wait_until("the backlog ticked", lambda: set(ledger(hub)) >= set(want), hub=hub)
        wait_until("the other shopper's backlog stored", lambda: stored(kept) > before, hub=hub)
        assert hub.stop() == 0
        back_sql = hub.sql("SELECT count(*) FROM fixes WHERE beacon = ? AND t <= ?", gone, t_erase)
        rows = server.rows(f"SELECT x FROM fix WHERE beacon = '{gone}'", name)
        back_influx = [r for r in rows if r["time"] / 1e9 <= t_erase]
        found = {"erased fixes in SQLite": back_sql[0][0], "in InfluxDB": len(back_influx)}
        assert found == dict.fromkeys(found, 0)
    finally:
        gws.close()
        hub.close()
