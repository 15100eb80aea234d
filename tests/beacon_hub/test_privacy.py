"""Consent, pseudonyms, retention and erasure (docs/privacy.md)."""

from __future__ import annotations

import json
import os
import sqlite3
import stat
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pytest
import yaml
from hypothesis import given
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry
from pydantic import SecretStr

from beacon_hub import cli, privacy
from beacon_hub.consent import (
    Consent,
    ConsentRegistry,
    ConsentStore,
    consent_topic,
    decode_consent,
    encode_consent,
    read_consent_file,
)
from beacon_hub.engine import FixTable
from beacon_hub.errors import ConfigError, WireError
from beacon_hub.health import Metrics
from beacon_hub.hubconfig import HubConfig, PrivacyConfig
from beacon_hub.ids import is_beacon_id
from beacon_hub.privacy import (
    Privacy,
    Retention,
    count_copies,
    load_key,
    pseudonym,
    retention_job,
)
from beacon_hub.site import load_site
from beacon_hub.stores import SqliteStore, TickRecord, fix_points
from beacon_hub.wire import (
    Event,
    TracksMessage,
    decode_tracks,
    encode_fix,
    encode_tracks,
    track_topic,
)
from tests.servers import InfluxDB

ROOT = Path(__file__).resolve().parents[2]
T0 = 1_700_000_000.0
CART = "ibeacon:3d1a7b52-8c4e-4f0a-9b6d-2e5f8a1c7d40:1:{}"
"""config/store.yaml's cart kind matches this uuid."""
ASSET = "eddystone:a4c1f8e27d3b5096e1c8:00000000000{}"
KEY = b"k" * 32


def _table(beacons: list[str], kinds: list[str | None], t: float = T0) -> FixTable:
    n = len(beacons)
    return FixTable(
        t=t,
        beacons=beacons,
        x=np.arange(n, dtype=np.float64),
        y=np.arange(n, dtype=np.float64) * 2,
        accuracy_m=np.full(n, 2.0),
        level=np.zeros(n, dtype=np.int64),
        zones=[f"z{i}" for i in range(n)],
        kinds=kinds,
        speed_m_s=np.zeros(n),
        gateway_slots=np.tile(np.arange(n, dtype=np.intp)[:, None], (1, 2)),
        gateway_mask=np.ones((n, 2), dtype=bool),
        gateway_ids=tuple(f"gw-{i}" for i in range(max(n, 1))),
    )


def _privacy(consent: ConsentRegistry, key: bytes = KEY) -> tuple[Privacy, CollectorRegistry]:
    site = load_site(ROOT / "config" / "store.yaml")
    registry = CollectorRegistry()
    return Privacy({site.id: site}, consent, key, registry=registry), registry


def test_pseudonyms_are_stable_per_key_and_differ_across_keys() -> None:
    a, b = CART.format(1), CART.format(2)
    p = pseudonym(KEY, a)
    assert p == pseudonym(KEY, a)
    assert p != pseudonym(KEY, b)
    assert p != pseudonym(b"other key, also long enough", a)
    assert p.startswith("anon:")
    assert len(p) == 5 + 16
    assert is_beacon_id(p)
    track_topic("s", p)  # a pseudonym passes every output's id check


def test_key_file_is_created_private_once_and_reused(tmp_path: Path) -> None:
    db = tmp_path / "hub.sqlite"
    key = load_key(PrivacyConfig(), db)
    path = tmp_path / "hub.sqlite.privacy-key"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert load_key(PrivacyConfig(), db) == key
    assert load_key(PrivacyConfig(key=SecretStr("x" * 20)), db) == b"x" * 20


def test_apply_drops_shoppers_without_consent_and_pseudonymises_the_others() -> None:
    consent = ConsentRegistry({CART.format(1): Consent(True)})
    privacy, registry = _privacy(consent)
    beacons = [CART.format(0), CART.format(1), ASSET.format(1), CART.format(2)]
    kinds: list[str | None] = ["cart", "cart", "asset", "cart"]
    events = [
        Event("zone_enter", T0, "store-demo", b, "aisle-1")
        for b in (*beacons, "mac:aa:bb:cc:dd:ee:ff")
    ]
    table, out = privacy.apply("store-demo", _table(beacons, kinds), events)
    anon = pseudonym(KEY, CART.format(1))
    assert table.beacons == [anon, ASSET.format(1)]
    # Columns stay aligned with the rows kept (rows 1 and 2 of the input).
    assert table.x.tolist() == [1.0, 2.0]
    assert table.zones == ["z1", "z2"]
    assert table.gateways(0) == ("gw-1", "gw-1")
    assert table.kinds == ["cart", "asset"]
    assert [e.beacon for e in out] == [anon, ASSET.format(1), "mac:aa:bb:cc:dd:ee:ff"]
    assert {e.beacon for e in privacy.withheld} == {CART.format(0), CART.format(2)}
    got = registry.get_sample_value(
        "beacon_hub_privacy_withheld_fixes_total", {"site": "store-demo"}
    )
    assert got == 2
    # Nothing of a withheld shopper reaches the MQTT payloads.
    text = b"".join(encode_fix(f, "store-demo") for f in table.fixes()).decode()
    assert CART.format(0) not in text
    assert CART.format(1) not in text
    assert privacy.kind_of("store-demo", anon) == "cart"


def test_consent_expires_in_data_time_and_revocation_applies_next_tick() -> None:
    consent = ConsentRegistry({CART.format(1): Consent(True, 0.0, T0 + 10)})
    privacy, _ = _privacy(consent)
    one = [CART.format(1)]
    assert len(privacy.apply("store-demo", _table(one, ["cart"], T0), [])[0]) == 1
    assert len(privacy.apply("store-demo", _table(one, ["cart"], T0 + 10), [])[0]) == 0


def test_a_shopper_whose_consent_ends_is_named_once_so_its_retained_track_is_cleared() -> None:
    """Once consent ends (expired or revoked), none of the shopper's fixes nor its beacon_lost
    goes out, so nothing else would clear its retained `track/{pseudonym}`."""
    expiring, silent, staying = CART.format(1), CART.format(2), CART.format(3)
    consent = ConsentRegistry(
        {expiring: Consent(True, 0.0, T0 + 10), silent: Consent(True), staying: Consent(True)}
    )
    privacy, _ = _privacy(consent)
    carts = [expiring, silent, staying]
    privacy.apply("store-demo", _table(carts, ["cart"] * 3, T0), [])
    assert privacy.ended == []
    privacy.apply("store-demo", _table(carts, ["cart"] * 3, T0 + 10), [])
    assert privacy.ended == [pseudonym(KEY, expiring)]  # its grant expired
    privacy.apply("store-demo", _table([staying], ["cart"], T0 + 11), [])
    assert privacy.ended == []  # named once
    consent.apply(silent, Consent(False, T0 + 12))  # revoked while not heard
    lost = [Event("beacon_lost", T0 + 40, "store-demo", b, None) for b in (silent, staying)]
    _, out = privacy.apply("store-demo", _table([], [], T0 + 40), lost)
    assert privacy.ended == [pseudonym(KEY, silent)]  # its beacon_lost is withheld
    assert [e.beacon for e in out] == [pseudonym(KEY, staying)]  # clears its own track
    privacy.apply("store-demo", _table([], [], T0 + 41), [])
    assert privacy.ended == []


def test_warehouse_tables_pass_through_untouched() -> None:
    privacy, _ = _privacy(ConsentRegistry())
    table = _table([ASSET.format(1)], ["pallet"])
    assert privacy.apply("store-demo", table, [])[0] is table


def test_a_tick_of_ten_thousand_fixes_keeps_its_columns() -> None:
    n = 10_000
    beacons = [CART.format(i) for i in range(n)]
    consent = ConsentRegistry({b: Consent(True) for b in beacons[::2]})
    privacy, _ = _privacy(consent)
    table, _ = privacy.apply("store-demo", _table(beacons, ["cart"] * n), [])
    assert len(table) == n // 2
    assert table.x.tolist() == list(map(float, range(0, n, 2)))
    msg = TracksMessage(
        "s",
        T0,
        tuple(table.beacons),
        (0.0,) * len(table),
        (0.0,) * len(table),
        (0,) * len(table),
        (1.0,) * len(table),
        (None,) * len(table),
    )
    assert decode_tracks(encode_tracks(msg)).beacons == tuple(table.beacons)


def test_registry_newest_decision_wins_and_grant_publishes_retained() -> None:
    sent: list[tuple[str, bytes, int, bool]] = []

    def publish(topic: str, payload: bytes, qos: int, retain: bool) -> bool:
        sent.append((topic, payload, qos, retain))
        return True

    now = [T0]
    consent = ConsentRegistry(publish=publish, sites=["s1", "s2"], clock=lambda: now[0])
    privacy, _ = _privacy(consent)
    beacon = CART.format(7)
    assert consent.grant(beacon) == privacy.pseudonym(beacon)
    assert consent.has_consent(beacon)
    assert [(t, q, r) for t, _, q, r in sent] == [
        (consent_topic("s1", beacon), 1, True),
        (consent_topic("s2", beacon), 1, True),
    ]
    assert decode_consent(sent[0][1]) == Consent(True, T0)
    # An older decision arriving late (the broker's retained copy) changes nothing.
    assert not consent.apply(beacon, Consent(False, T0 - 5))
    assert consent.has_consent(beacon)
    now[0] = T0 + 1
    consent.revoke(beacon)
    assert not consent.has_consent(beacon)


def test_consent_files_csv_and_yaml(tmp_path: Path) -> None:
    csv_path = tmp_path / "c.csv"
    csv_path.write_text(
        f"beacon,expires\n{CART.format(1).upper()},\n{CART.format(2)},2030-01-01T00:00:00Z\n"
    )
    got = read_consent_file(csv_path)
    assert got[CART.format(1)] == Consent(True, 0.0, None)
    assert got[CART.format(2)].expires == 1893456000.0
    csv_path.write_bytes(b"\xef\xbb\xbf" + csv_path.read_bytes())  # as Excel saves it
    assert read_consent_file(csv_path) == got
    yaml_path = tmp_path / "c.yaml"
    yaml_path.write_text(yaml.safe_dump([CART.format(3), {"beacon": CART.format(4), "expires": 5}]))
    assert read_consent_file(yaml_path) == {
        CART.format(3): Consent(True),
        CART.format(4): Consent(True, 0.0, 5.0),
    }
    bad = tmp_path / "bad.csv"
    bad.write_text(f"beacon\n{CART.format(1)}\nnot-an-id\n")
    with pytest.raises(ConfigError, match=r"bad\.csv:3"):
        read_consent_file(bad)
    for never in ("nan", "1e400", "-inf"):
        bad.write_text(f"beacon,expires\n{CART.format(1)},{never}\n")
        with pytest.raises(ConfigError, match=r"bad\.csv:2.*not a finite time"):
            read_consent_file(bad)


def test_consent_payloads_round_trip_and_refuse_with_reasons() -> None:
    c = Consent(True, T0, T0 + 60)
    assert decode_consent(encode_consent(c)) == c
    assert decode_consent(b'{"v":1,"consent":false,"who":"app"}') == Consent(False)
    for raw, why in (
        (b'{"v":2,"consent":true}', "version"),
        (b'{"v":1,"consent":"yes"}', "true or false"),
        (b'{"v":1,"consent":true,"expires":-1}', "expires"),
        (b"[1]", "object"),
        (b"\xff", "UTF-8"),
        (b"x" * 5000, "exceeds"),
    ):
        with pytest.raises(WireError, match=why):
            decode_consent(raw)


@given(
    st.one_of(
        st.binary(max_size=300),
        st.dictionaries(
            st.sampled_from(["v", "consent", "t", "expires", "x"]),
            st.one_of(st.none(), st.booleans(), st.integers(), st.floats(), st.text(max_size=5)),
        ).map(lambda d: json.dumps(d).encode()),
    )
)
def test_any_consent_payload_decodes_or_is_refused(raw: bytes) -> None:
    try:
        c = decode_consent(raw)
    except WireError:
        return
    assert isinstance(c.consent, bool)
    assert c.expires is None or 0 <= c.expires <= 1e11


PALLET = "ibeacon:5e0b9c3a-71d4-4f86-a2e9-c48d16b7f035:1:{}"
"""config/warehouse.yaml's pallet kind matches this uuid."""
DAY_S = 86_400


def _retention(shopper_days: float | None, kind_days: dict[str, float | None]) -> Retention:
    cfg = HubConfig.model_validate(
        {
            "sites": [{"site": str(ROOT / "config" / "store.yaml")}],
            "privacy": {"retention_days": shopper_days},
            "stores": {"retention_days": kind_days},
        }
    )
    sites = {
        s.id: s for s in (load_site(ROOT / "config" / f) for f in ("store.yaml", "warehouse.yaml"))
    }
    return Retention.from_config(cfg, sites)


def test_retention_classes_and_their_days() -> None:
    r = _retention(30, {"pallet": 365, "default": 90})
    assert r.classes == ["shoppers", "pallet", "reference", "asset", "other"]
    assert [r.days_of(c) for c in r.classes] == [30, 365, 90, 90, 90]
    assert r.class_of("cart", CART.format(1)) == "shoppers"
    assert r.class_of(None, "anon:0123456789abcdef") == "shoppers"
    assert r.class_of("pallet", PALLET.format(1)) == "pallet"
    assert r.class_of(None, "mac:aa:bb:cc:dd:ee:ff") == "other"
    warehouse = load_site(ROOT / "config" / "warehouse.yaml").id
    assert r.class_of_beacon(warehouse, PALLET.format(7)) == "pallet"
    assert r.policy("shoppers") == "beacon_hub_shoppers"
    assert _retention(None, {}).days_of("pallet") is None  # nothing configured: keep all


def test_retention_config_refuses_a_shopper_kind_or_an_unknown_kind() -> None:
    with pytest.raises(ValueError, match=r"cart is a shopper kind"):
        _retention(30, {"cart": 10})
    with pytest.raises(ValueError, match=r"expected a beacon kind"):
        _retention(30, {"palet": 10})


def test_retention_job_prunes_old_shoppers_and_keeps_pallet_history(tmp_path: Path) -> None:
    """Shoppers kept 2 days, pallets 365 (default: forever); rows 3 days old and new."""
    store = SqliteStore(tmp_path / "hub.sqlite", Metrics())
    key = load_key(PrivacyConfig(), tmp_path / "hub.sqlite")
    shopper, pallet, other = pseudonym(key, CART.format(1)), PALLET.format(1), ASSET.format(1)
    now = T0 + 3 * DAY_S
    warehouse = load_site(ROOT / "config" / "warehouse.yaml").id
    for site, beacon, kind in (
        ("s", shopper, "cart"),
        (warehouse, pallet, "pallet"),
        ("s", other, None),
    ):
        for t in (T0, now):
            ev = [Event("zone_enter", t, site, beacon, "z0")]
            rec = TickRecord(site, t, _table([beacon], [kind], t), ev, [None])
            store.commit(rec, (), ())
    retention_job(_retention(2, {"pallet": 365}), now)(store.db)

    def rows(table: str) -> set[tuple[str, float]]:
        return {(r[0], r[1]) for r in store.db.execute(f"SELECT beacon, t FROM {table}")}

    kept = {(shopper, now), (pallet, T0), (pallet, now), (other, T0), (other, now)}
    assert rows("fixes") == kept
    assert rows("events") == kept
    assert rows("latest") == {(shopper, now), (pallet, now), (other, now)}
    retention_job(_retention(2, {"default": 1}), now)(store.db)  # `default` reaches the rest
    assert rows("fixes") == {(shopper, now), (pallet, now), (other, now)}
    store.close()


def test_erase_removes_a_shopper_from_sqlite_and_influxdb_1_6(
    tmp_path: Path, influx_db: tuple[InfluxDB, str]
) -> None:
    server, name = influx_db
    db_path = tmp_path / "hub.sqlite"
    key = load_key(PrivacyConfig(), db_path)
    shopper, other = CART.format(5), ASSET.format(2)
    anon = pseudonym(key, shopper)
    store = SqliteStore(db_path, Metrics())
    lines: list[str] = []
    for i, b in enumerate((shopper, anon, other)):
        t = T0 + i
        ev = [Event("zone_enter", t, "s", b, "aisle-1")]
        rec = TickRecord("s", t, _table([b], ["cart"], t), ev, [None])
        store.commit(rec, (), ())
        lines.extend(fix_points(rec))
    store.close()
    server.write(name, "\n".join(lines), precision="ms")
    cfg = {
        "sites": [{"site": str(ROOT / "config" / "store.yaml")}],
        "stores": {
            "sqlite": {"path": str(db_path)},
            "influx": {"version": 1, "url": server.url, "database": name},
        },
    }
    (tmp_path / "hub.yaml").write_text(yaml.safe_dump(cfg))
    out = subprocess.run(
        [sys.executable, "-m", "beacon_hub.cli", "erase", shopper, "--config", "hub.yaml"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        check=False,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    assert out.returncode == 0, out.stderr
    assert "fixes: 2 rows" in out.stdout
    assert "events: 2 rows" in out.stdout
    assert out.stdout.count("dropped series") == 4  # fix and event, under id and pseudonym
    db = sqlite3.connect(db_path)
    for table in ("fixes", "events", "latest"):
        left = {r[0] for r in db.execute(f"SELECT beacon FROM {table}")}
        assert left == {other}, table
    db.close()
    for m in ("fix", "event"):
        assert {r["beacon"] for r in server.rows(f'SELECT * FROM "{m}"', name)} == {other}


def _erase(capsys: pytest.CaptureFixture[str], beacon: str, db_path: Path) -> tuple[int, str]:
    site = str(ROOT / "config" / "store.yaml")
    status = cli.main(["erase", beacon, "--site", site, "--set", f"stores.sqlite.path={db_path}"])
    return status, capsys.readouterr().err


def test_erase_refuses_a_database_that_is_not_there_and_creates_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A typo in the path once created a database and a new privacy key, and erased the
    pseudonym under that new key: another shopper's, or nobody's."""
    typo = tmp_path / "typo" / "hub.sqlite"
    status, err = _erase(capsys, CART.format(5), typo)
    assert status == 1
    assert err == (
        f"beacon-hub: {typo}: no such SQLite database (stores.sqlite.path); erase works on the "
        "hub's existing database\n"
    )
    assert list(tmp_path.iterdir()) == []


def test_erase_refuses_a_missing_privacy_key_and_creates_none(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    db_path = tmp_path / "hub.sqlite"
    SqliteStore(db_path, Metrics()).close()
    files = sorted(tmp_path.iterdir())
    status, err = _erase(capsys, CART.format(5), db_path)
    assert status == 1
    assert f"privacy key file {db_path}.privacy-key: no such file" in err
    assert sorted(tmp_path.iterdir()) == files
    load_key(PrivacyConfig(), db_path)  # the hub's own start makes it; then erase goes ahead
    status, err = _erase(capsys, CART.format(5), db_path)
    assert status == 0, err


def _copies(folder: Path, *ids: str, besides: str = "") -> dict[str, int]:
    """Each file's count of these ids' bytes, read as a forensic tool would, less those that are
    the start of `besides`, a longer id that is stored (each of its copies holds one)."""

    def count(b: bytes) -> int:
        return sum(b.count(i.encode()) for i in ids) - (b.count(besides.encode()) if besides else 0)

    return {f.name: count(f.read_bytes()) for f in folder.iterdir()}


@pytest.mark.parametrize("vacuum", [False, True])
def test_erase_leaves_no_copy_in_the_write_ahead_log_of_a_running_hub_and_vacuum_none_at_all(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], vacuum: bool
) -> None:
    """Deleting the rows left the pages as they were in the hub's write-ahead log until some
    later checkpoint: 16,143 copies of the id and its pseudonym in it, and a few in the pages'
    unused space after the hub stopped (secure_delete was on)."""
    db_path = tmp_path / "hub.sqlite"
    key = load_key(PrivacyConfig(), db_path)
    shopper, longer, other = CART.format(5), CART.format(50), ASSET.format(2)
    anon = pseudonym(key, shopper)
    store = SqliteStore(db_path, Metrics())  # the running hub's connection, open throughout
    consent = ConsentRegistry(store=ConsentStore(store.db, store.submit))
    consent.attach(lambda beacon: pseudonym(key, beacon))
    consent.apply(shopper, Consent(True, T0))  # stored by pseudonym
    for i in range(200):
        for b in (shopper, anon, other, longer):
            t = T0 + i
            ev = [Event("zone_enter", t, "s", b, "aisle-1")]
            store.commit(TickRecord("s", t, _table([b], ["cart"], t), ev, [None]), (), ())
    assert _copies(tmp_path, shopper, anon, besides=longer)["hub.sqlite-wal"] > 0
    site = str(ROOT / "config" / "store.yaml")
    args = ["erase", shopper, "--site", site, "--set", f"stores.sqlite.path={db_path}"]
    assert cli.main([*args, "--vacuum"] if vacuum else args) == 0
    out = capsys.readouterr().out
    copies = _copies(tmp_path, shopper, anon, besides=longer)
    assert copies.get("hub.sqlite-wal", 0) == 0
    # The pseudonym's tombstone holds one copy, on purpose (privacy.ERASURE_KEEP_S).
    assert store.db.execute("SELECT beacon FROM erasures").fetchall() == [(anon,)]
    assert "the pseudonym stays in its tombstone (table erasures) for 2 to 3 h" in out
    left = copies["hub.sqlite"] - 1
    if vacuum:
        assert left == 0
        assert f"sqlite {db_path}: rewritten (VACUUM)\n" in out
    # Said as it is: the count is what a read of the file finds.
    assert left == 0 or f"sqlite {db_path}: {left} stale copies of the id remain" in out
    assert (left == 0) == (f"sqlite {db_path}: no copy of the id left in the file\n" in out)
    assert "consent: 1 rows" in out
    rows = {r[0] for r in store.db.execute("SELECT beacon FROM fixes")}
    assert rows == {other, longer}  # the others' rows are untouched
    store.close()


@given(
    st.lists(st.sampled_from([b"ab", b"xyz", b"ibeacon:1", b"-", b"a"]), max_size=60),
    st.integers(1, 7),
)
def test_count_copies_counts_across_the_reads_pieces(parts: list[bytes], chunk: int) -> None:
    data = b"".join(parts)
    ids = ["xyz", "ibeacon:1", "ab"]
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "f"
        path.write_bytes(data)
        with pytest.MonkeyPatch.context() as mp:
            mp.setattr(privacy, "SCAN_CHUNK_BYTES", chunk)
            assert count_copies(path, ids) == sum(data.count(i.encode()) for i in ids)
