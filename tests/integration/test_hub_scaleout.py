"""Scale-out (DESIGN.md, Scale): two hub processes, each owning two sites, on one broker; every
reading is handled exactly once, by the hub that owns its site (issue #5, Checked by)."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest

from tests.integration.hubkit import (
    Gateways,
    HubProcess,
    shipped_broker,
    site_file,
    unique_site,
    wait_until,
)
from tests.integration.test_hub_pipeline import totals

pytestmark = pytest.mark.integration


def test_two_hubs_split_four_sites_and_handle_each_batch_once(tmp_path: Path) -> None:
    broker = shipped_broker(tmp_path / "mq")
    broker.start()
    sites = [unique_site() for _ in range(4)]
    paths = [
        site_file(tmp_path, s, "store.yaml" if i % 2 == 0 else "warehouse.yaml")
        for i, s in enumerate(sites)
    ]
    hubs = [
        HubProcess(tmp_path / "hub-a", broker, paths[:2], client_id="beacon-hub-a"),
        HubProcess(tmp_path / "hub-b", broker, paths[2:], client_id="beacon-hub-b"),
    ]
    gateways = [Gateways(broker, p, beacons=6, seed=i) for i, p in enumerate(paths)]
    try:
        for hub in hubs:
            hub.start()
        for _ in range(4):
            for g in gateways:
                g.send_round()
        for g in gateways:
            g.settle()
        want = Counter((g.site_id, p.gw, p.boot, p.seq) for g in gateways for p in g.published)
        for hub, owned in zip(hubs, (sites[:2], sites[2:]), strict=True):
            n = sum(v for k, v in want.items() if k[0] in owned)

            def has_its_share(h: HubProcess = hub, n: int = n) -> bool:
                stored: int = h.sql("SELECT count(*) FROM batches")[0][0]
                return stored >= n

            wait_until("the hub's share in its ledger", has_its_share, hub=hub)
        for hub in hubs:
            assert hub.stop() == 0
        got = Counter(
            row for hub in hubs for row in hub.sql("SELECT site, gateway, boot, seq FROM batches")
        )
        assert got == want  # every batch once, none twice, none lost
        for hub, owned in zip(hubs, (sites[:2], sites[2:]), strict=True):
            assert {r[0] for r in hub.sql("SELECT DISTINCT site FROM batches")} == set(owned)
            assert totals(hub)["rejected"] == 0
        samples = sum(g.samples for g in gateways)
        handled = sum(hub.sql("SELECT sum(samples) FROM batches")[0][0] for hub in hubs)
        assert handled == samples
    finally:
        for g in gateways:
            g.close()
        for hub in hubs:
            hub.close()
        broker.stop()
