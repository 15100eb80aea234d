"""LiveState units: occupancy, idle at docks, lost beacons, gateway health (batches, status,
heartbeats, and the Ingestor's decoding of the latter two), the occupancy
sampling and the stream queues' newest-wins policy across the thread boundary."""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Sequence
from typing import Any

import numpy as np
import pytest

from beacon_hub import livestate
from beacon_hub.engine import FixTable
from beacon_hub.health import Metrics
from beacon_hub.hubconfig import BrokerConfig, HttpConfig, IngestConfig
from beacon_hub.ingest import (
    Accepted,
    ConsentUpdate,
    GatewayUpdate,
    HeartbeatUpdate,
    Inbound,
    Ingestor,
    MqttLink,
    Rejected,
    StatusUpdate,
    gateway_subscriptions,
)
from beacon_hub.livestate import NO_KIND, LiveState, SiteSnapshot, zone_occupancy
from beacon_hub.registry import Asset, AssetRegistry
from beacon_hub.site import Site, validate_site_data
from beacon_hub.wire import (
    Event,
    GatewayStatus,
    Heartbeat,
    ReadingBatch,
    Telemetry,
    encode_batch,
    encode_heartbeat,
    encode_status,
    heartbeat_topic,
    readings_topic,
    status_topic,
)

P1 = "ibeacon:e2c56db5-dffb-48d2-b060-d0f5a71096e0:2:1"
P2 = "ibeacon:e2c56db5-dffb-48d2-b060-d0f5a71096e0:2:2"
C1 = "ibeacon:e2c56db5-dffb-48d2-b060-d0f5a71096e0:1:1"


def dock_site() -> Site:
    data: dict[str, Any] = {
        "id": "yard",
        "kind": "warehouse",
        "levels": [{"outline": [[0, 0], [20, 0], [20, 12], [0, 12]]}],
        "gateways": [
            {"id": "g0", "x": 0, "y": 0, "z": 3.0},
            {"id": "g1", "x": 20, "y": 12, "z": 3.0},
        ],
        "zones": [
            {"id": "dock-a", "kind": "dock", "polygon": [[0, 0], [10, 0], [10, 12], [0, 12]]},
            {"id": "bay-a", "kind": "bay", "polygon": [[10, 0], [20, 0], [20, 12], [10, 12]]},
        ],
    }
    return validate_site_data(data, "yard")


def table(t: float, rows: Sequence[tuple[str, str | None, str | None]]) -> FixTable:
    """(beacon, zone, kind) rows at (1, 1)."""
    n = len(rows)
    return FixTable(
        t=t,
        beacons=[r[0] for r in rows],
        x=np.ones(n),
        y=np.ones(n),
        accuracy_m=np.full(n, 1.5),
        level=np.zeros(n, dtype=np.int64),
        zones=[r[1] for r in rows],
        kinds=[r[2] for r in rows],
        speed_m_s=np.zeros(n),
        gateway_slots=np.zeros((n, 1), dtype=np.intp),
        gateway_mask=np.ones((n, 1), dtype=bool),
        gateway_ids=("g0",),
    )


def feed(
    live: LiveState,
    t: float,
    rows: Sequence[tuple[str, str | None, str | None]],
    events: list[Event] | None = None,
) -> SiteSnapshot:
    tab = table(t, rows)
    return live.tick("yard", t, tab, events or [], [None] * len(rows), zone_occupancy(tab))


def test_zone_occupancy_counts_by_zone_and_kind() -> None:
    occ = zone_occupancy(
        table(
            0.0,
            [
                (P1, "dock-a", "pallet"),
                (P2, "dock-a", "pallet"),
                (C1, "dock-a", None),
                ("x", None, "cart"),
            ],
        )
    )
    assert occ == {"dock-a": {"pallet": 2, NO_KIND: 1}}


def test_pallets_idle_at_a_dock_past_the_threshold() -> None:
    live = LiveState([dock_site()], HttpConfig(idle_at_dock_s=60.0))
    rows = [(P1, "dock-a", "pallet"), (P2, "bay-a", "pallet"), (C1, "dock-a", "cart")]
    assert feed(live, 1000.0, rows).alerts["idle"] == []
    assert feed(live, 1059.0, rows).alerts["idle"] == []
    idle = feed(live, 1060.0, rows).alerts["idle"]
    assert [(p["beacon"], p["idle_s"]) for p in idle] == [(P1, 60.0)]
    # Moving out and back starts the clock again, and counts as a move.
    feed(live, 1061.0, [(P1, "bay-a", "pallet")])
    snap = feed(live, 1062.0, rows)
    assert snap.alerts["idle"] == []
    assert snap.positions[0]["last_move"] == 1062.0


def test_a_tick_says_how_long_after_its_data_time_it_ran() -> None:
    """lag_s: the hub's clock when the tick ran minus its data time, in the stream's tick and
    in /positions (the dashboard shows `behind` from 5 s); never negative."""
    now = [1000.4]
    live = LiveState([dock_site()], HttpConfig(), clock=lambda: now[0])
    rows = [(P1, "dock-a", "pallet")]
    assert feed(live, 1000.0, rows).lag_s == 0.4
    now[0] = 1012.0  # catching up: the tick of 1001.0 runs 11 s late
    snap = feed(live, 1001.0, rows)
    assert json.loads(snap.json())["lag_s"] == 11.0
    assert json.loads(snap.json("positions"))["lag_s"] == 11.0
    now[0] = 1001.5  # a gateway clock ahead of the hub's: not early, just on time
    assert feed(live, 1002.0, rows).lag_s == 0.0


def test_lost_beacons_listed_until_heard_again() -> None:
    reg = AssetRegistry([Asset(P1, "P-1", "pallet")])
    live = LiveState([dock_site()], HttpConfig(), reg)
    feed(live, 10.0, [(P1, "bay-a", "pallet")])
    lost = Event("beacon_lost", 45.0, "yard", P1, None, {"last_heard": 14.5})
    snap = feed(live, 45.0, [], [lost])
    assert [(b["beacon"], b["label"], b["zone"], b["last_heard"]) for b in snap.alerts["lost"]] == [
        (P1, "P-1", "bay-a", 14.5)
    ]
    assert feed(live, 46.0, [(P1, "bay-a", "pallet")]).alerts["lost"] == []


def test_low_batteries_from_the_registry() -> None:
    reg = AssetRegistry([Asset(P1, "P-1", "pallet"), Asset(P2, "P-2", "pallet")])
    reg.telemetry([Telemetry(P1, battery_mv=2300), Telemetry(P2, battery_mv=2900)])
    live = LiveState([dock_site()], HttpConfig(low_battery_mv=2500), reg)
    low = feed(live, 1.0, []).alerts["low_battery"]
    assert [(b["label"], b["battery_mv"]) for b in low] == [("P-1", 2300)]


def _accept(ing: Ingestor, seq: int, arrival: float) -> Accepted:
    batch = ReadingBatch(
        "g0", "0123456789abcdef", seq, arrival - 0.25, (P1,), (0,), (10.0,), (-70.0,), (None,)
    )
    res = ing.handle(Inbound(arrival, readings_topic("yard", "g0"), encode_batch(batch), 0, 0))
    assert isinstance(res, Accepted)
    return res


def test_gateway_health_loss_skew_and_offline() -> None:
    now = [1000.0]
    live = LiveState([dock_site()], HttpConfig(gateway_offline_after_s=15.0), clock=lambda: now[0])
    ing = Ingestor({"yard": frozenset({"g0", "g1"})}, IngestConfig(), Metrics())
    for seq, arrival in ((1, 998.0), (2, 999.0), (4, 1000.0)):  # seq 3 never came
        live.gateway_batch(_accept(ing, seq, arrival), arrival)
    gws = {g["id"]: g for g in feed(live, 1000.0, []).gateways}
    assert gws["g0"]["state"] == "online"
    assert gws["g0"]["batches"] == 3
    assert gws["g0"]["lost"] == 1
    assert gws["g0"]["loss_rate"] == 0.25
    assert gws["g0"]["clock_skew_s"] == 0.25
    assert gws["g1"]["state"] == "offline"
    assert gws["g1"]["last_batch"] is None
    now[0] = 1016.0
    assert {g["state"] for g in feed(live, 1016.0, []).gateways} == {"offline"}


def test_occupancy_is_sampled_every_interval_of_hub_time() -> None:
    got: list[tuple[str, float, dict[str, dict[str, int]]]] = []
    live = LiveState(
        [dock_site()],
        HttpConfig(occupancy_sample_s=10.0),
        occupancy_sink=lambda s, t, o: got.append((s, t, o)),
    )
    for t in range(100, 125):
        feed(live, float(t), [(P1, "dock-a", "pallet")])
    assert [t for _, t, _ in got] == [100.0, 110.0, 120.0]
    assert got[0] == ("yard", 100.0, {"dock-a": {"pallet": 1}})


def test_a_slow_stream_gets_the_newest_snapshot_only() -> None:
    """Ticks from another thread (as the service's) while the stream reads nothing: its queue
    holds one snapshot, the newest; none is lost track of, none piles up."""
    live = LiveState([dock_site()], HttpConfig())

    async def scenario() -> tuple[int, int, bool]:
        live.attach(asyncio.get_running_loop())
        q = live.subscribe("yard")
        assert q.empty()  # no tick yet

        def service() -> None:
            for t in range(5):
                feed(live, float(t), [(P1, "dock-a", "pallet")])

        thread = threading.Thread(target=service)
        thread.start()
        while thread.is_alive():
            await asyncio.sleep(0.01)
        thread.join()
        await asyncio.sleep(0)  # let the last call_soon_threadsafe callbacks run
        await asyncio.sleep(0)
        size = q.qsize()
        snap = q.get_nowait()
        live.close_streams()
        end = q.get_nowait()
        live.unsubscribe("yard", q)
        live.attach(None)
        assert snap is not None
        return size, snap.version, end is None

    size, version, ended = asyncio.run(scenario())
    assert size == 1
    assert version == 5
    assert ended
    assert live.stream_count() == 0


# ----------------------------------------------------------- gateway status and heartbeat

BOOT = "0123456789abcdef"
NEW_BOOT = "fedcba9876543210"


def _report(
    ing: Ingestor, kind: str, payload: bytes, arrival: float, gw: str = "g0"
) -> GatewayUpdate | Rejected:
    topic = status_topic("yard", gw) if kind == "status" else heartbeat_topic("yard", gw)
    res = ing.handle(Inbound(arrival, topic, payload, 7, 1 if kind == "status" else 0))
    assert not isinstance(res, Accepted | ConsentUpdate)
    return res


def _status(state: str, t: float = 990.0, boot: str = BOOT, gw: str = "g0") -> bytes:
    return encode_status(GatewayStatus(gw, state, t, boot, "1.2.3"))  # type: ignore[arg-type]


def _heartbeat(t: float, boot: str = BOOT, gw: str = "g0", dropped: int = 4) -> bytes:
    return encode_heartbeat(
        Heartbeat(gw, boot, t, 60.0, 1200, 1190, dropped, 3, 1, 20.0, "1.2.3", 51.5)
    )


def _world() -> tuple[list[float], LiveState, Ingestor, Metrics]:
    now = [1000.0]
    metrics = Metrics()
    live = LiveState(
        [dock_site()],
        HttpConfig(gateway_offline_after_s=15.0),
        clock=lambda: now[0],
        metrics=metrics,
    )
    ing = Ingestor({"yard": frozenset({"g0", "g1"})}, IngestConfig(), metrics)
    return now, live, ing, metrics


def _apply(live: LiveState, res: GatewayUpdate | Rejected, arrival: float) -> None:
    assert isinstance(res, StatusUpdate | HeartbeatUpdate), res
    live.gateway_update(res, arrival)


def _gw(live: LiveState, gw: str = "g0") -> dict[str, Any]:
    view = live.gateways("yard")
    assert view is not None
    return next(g for g in view["gateways"] if g["id"] == gw)


def test_status_and_heartbeat_make_the_gateway_online_and_clean_offline_shows_at_once() -> None:
    now, live, ing, metrics = _world()
    assert _gw(live)["offline_reason"] == "never_heard"  # before any tick: the site's gateways
    _apply(live, _report(ing, "status", _status("online"), 999.0), 999.0)
    g = _gw(live)
    # The gateway says online, but nothing of it arrived yet: not online on its word alone.
    assert (g["status"], g["state"], g["offline_reason"]) == ("online", "offline", "never_heard")
    _apply(live, _report(ing, "heartbeat", _heartbeat(999.5), 1000.0), 1000.0)
    g = _gw(live)
    assert (g["state"], g["offline_reason"], g["last_heartbeat"]) == ("online", None, 1000.0)
    assert g["last_batch"] is None
    assert (g["boot"], g["version"], g["status_t"]) == (BOOT, "1.2.3", 990.0)
    hb = g["heartbeat"]
    assert (hb["adverts_seen"], hb["adverts_published"], hb["adverts_dropped"]) == (1200, 1190, 4)
    assert (hb["queue_depth"], hb["scanner_restarts"], hb["uptime_s"]) == (3, 1, 60.0)
    assert hb["cpu_temp_c"] == 51.5
    # Exported for Prometheus too.
    sample = metrics.registry.get_sample_value
    assert sample("beacon_hub_gateway_online", {"site": "yard", "gateway": "g0"}) == 1.0
    assert sample("beacon_hub_gateway_status_online", {"site": "yard", "gateway": "g0"}) == 1.0
    labels = {"site": "yard", "gateway": "g0", "counter": "adverts_dropped"}
    assert sample("beacon_hub_gateway_reported", labels) == 4.0
    assert (
        sample("beacon_hub_gateway_heartbeat_timestamp_seconds", {"site": "yard", "gateway": "g0"})
        == 1000.0
    )
    # A clean shutdown (or the last will): offline at once, no tick, no timeout.
    now[0] = 1001.0
    _apply(live, _report(ing, "status", _status("offline", 1000.5), 1001.0), 1001.0)
    g = _gw(live)
    assert (g["state"], g["offline_reason"], g["status"]) == ("offline", "status", "offline")
    assert sample("beacon_hub_gateway_online", {"site": "yard", "gateway": "g0"}) == 0.0
    assert sample("beacon_hub_gateway_status_online", {"site": "yard", "gateway": "g0"}) == 0.0
    # The next tick agrees, and the stream's snapshot carries the same fields.
    snap = feed(live, 1001.0, [])
    assert snap.gateways[0]["offline_reason"] == "status"
    assert _gw(live) == snap.gateways[0]


def test_offline_status_holds_against_late_batches_of_its_boot_not_against_a_new_boot() -> None:
    now, live, ing, _ = _world()
    live.gateway_batch(_accept(ing, 1, 999.0), 999.0)
    _apply(live, _report(ing, "status", _status("offline"), 999.5), 999.5)
    # A batch of the same boot the broker delivers late does not revive it.
    live.gateway_batch(_accept(ing, 2, 1000.0), 1000.0)
    assert _gw(live)["offline_reason"] == "status"
    # The gateway restarted: its heartbeat (new boot) arrives before its new status.
    now[0] = 1005.0
    _apply(live, _report(ing, "heartbeat", _heartbeat(1004.0, NEW_BOOT), 1005.0), 1005.0)
    g = _gw(live)
    assert (g["state"], g["status"], g["boot"]) == ("online", None, NEW_BOOT)
    # Silence past http.gateway_offline_after_s: offline again, for a different reason.
    now[0] = 1021.0
    g = feed(live, 1021.0, []).gateways[0]
    assert (g["state"], g["offline_reason"]) == ("offline", "silent")


def test_a_gateway_without_a_status_is_judged_by_its_traffic() -> None:
    _, live, ing, _ = _world()
    live.gateway_batch(_accept(ing, 1, 1000.0), 1000.0)
    g = feed(live, 1000.0, []).gateways[0]
    assert (g["state"], g["status"], g["heartbeat"]) == ("online", None, None)
    # A cleared retained status (empty payload) is "unknown" again, not offline.
    _apply(live, _report(ing, "status", _status("offline"), 1000.0), 1000.0)
    assert _gw(live)["state"] == "offline"
    _apply(live, _report(ing, "status", b"", 1000.5), 1000.5)
    assert (_gw(live)["state"], _gw(live)["status"]) == ("online", None)


@pytest.mark.parametrize(
    ("kind", "payload", "gw", "reason"),
    [
        ("status", b"{not json", "g0", "not_json"),
        ("status", b'{"v":1,"gw":"g0","state":"asleep","t":1}', "g0", "bad_field"),
        ("status", b'{"v":9,"gw":"g0","state":"online","t":1}', "g0", "bad_version"),
        ("status", b"\xff\xfe", "g0", "not_utf8"),
        ("status", _status("online", gw="g1"), "g0", "gateway_mismatch"),
        ("status", _status("online", gw="g7"), "g7", "unknown_gateway"),
        ("status", b"", "g7", "unknown_gateway"),
        ("heartbeat", b"[]", "g0", "not_object"),
        ("heartbeat", b'{"v":1,"gw":"g0"}', "g0", "bad_field"),
        ("heartbeat", _heartbeat(1.0, dropped=-1), "g0", "bad_field"),
        ("heartbeat", _heartbeat(1.0, gw="g7"), "g7", "unknown_gateway"),
    ],
)
def test_bad_status_and_heartbeats_are_counted_per_reason(
    kind: str, payload: bytes, gw: str, reason: str
) -> None:
    _, live, ing, metrics = _world()
    res = _report(ing, kind, payload, 1000.0, gw)
    assert isinstance(res, Rejected)
    assert res.reason == reason
    label = gw if gw in ("g0", "g1") else "_unknown"
    value = metrics.registry.get_sample_value(
        "beacon_hub_rejected_batches_total", {"site": "yard", "gateway": label, "reason": reason}
    )
    assert value == 1.0
    assert _gw(live)["status"] is None  # nothing reached the live view


def test_gateway_subscriptions_cover_status_and_heartbeat() -> None:
    assert gateway_subscriptions("yard") == [
        "beacons/yard/gateway/+/status",
        "beacons/yard/gateway/+/heartbeat",
    ]
    link = MqttLink(
        BrokerConfig(), IngestConfig(), client_id="t", site_ids=["yard"], metrics=Metrics()
    )
    assert set(gateway_subscriptions("yard")) <= set(link.subscriptions)


def _pallet(k: int) -> str:
    return f"ibeacon:e2c56db5-dffb-48d2-b060-d0f5a71096e0:3:{k}"


def _sizes(live: LiveState) -> tuple[int, int, int, int]:
    s = live._live["yard"]
    return len(s.zone_since), len(s.last_pos), len(s.last_move), len(s.lost)


def test_beacons_that_come_and_go_are_forgotten_and_those_that_stay_look_the_same(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Waves of new pallets, each fixed for a while, moved, then lost (a fifth without a
    beacon_lost: privacy.py withholds it once consent ends), among pallets that stay. Every
    per-beacon dict stays bounded, and the staying pallets' positions and idle alerts are
    what a hub that never saw the waves shows."""
    monkeypatch.setattr(livestate, "MAX_LOST", 150)
    cfg = HttpConfig(idle_at_dock_s=120.0)
    live, alone = LiveState([dock_site()], cfg), LiveState([dock_site()], cfg)
    stay = [_pallet(k) for k in range(20)]
    previous: list[str] = []
    sizes = []
    for k in range(800):  # 8,000 s, a wave of 100 pallets every 50 s
        t = 1000.0 + 10.0 * k
        wave = [_pallet(1000 + 100 * (k // 5) + j) for j in range(100)]
        zones = ["dock-a" if (k // (3 + j % 7)) % 2 else "bay-a" for j in range(20)]
        rows = [(b, z, "pallet") for b, z in zip(stay, zones, strict=True)]
        moves = [Event("pallet_moved", t, "yard", b, None, {}) for b in stay[k % 20 :: 20]]
        if k % 5 == 0:
            moves += [Event("pallet_moved", t, "yard", b, None, {}) for b in wave[::2]]
        gone = [b for b in previous if b not in wave and int(b.rsplit(":", 1)[1]) % 5]
        lost = [Event("beacon_lost", t, "yard", b, None, {"last_heard": t - 10}) for b in gone]
        previous = wave
        snap = feed(live, t, [*rows, *((b, "dock-a", "pallet") for b in wave)], moves + lost)
        want = feed(alone, t, rows, moves[: len(stay[k % 20 :: 20])])
        assert snap.positions[: len(stay)] == want.positions
        idle = [p for p in snap.alerts["idle"] if p["beacon"] in stay]
        assert idle == want.alerts["idle"]
        sizes.append(_sizes(live))
    zone_since, last_pos, last_move, lost = (max(s) for s in zip(*sizes[400:], strict=True))
    # staying and current, and a fifth of the waves of the last STALE_AFTER_S plus a sweep
    bound = 20 + 100 + 20 * int((livestate.STALE_AFTER_S + livestate.SWEEP_EVERY_S) / 50 + 1)
    assert zone_since <= bound
    assert last_pos <= bound
    assert last_move <= bound + 150
    assert lost == 150
    assert sizes[-1][1] < 20 + 100 * 160 / 10  # 16,020 pallets were fixed


def test_a_beacon_without_fixes_or_beacon_lost_is_swept_and_a_lost_one_keeps_its_move() -> None:
    live = LiveState([dock_site()], HttpConfig())
    p3 = _pallet(3)
    feed(live, 0.0, [(P1, "dock-a", "pallet"), (P2, "bay-a", "pallet"), (p3, "bay-a", "pallet")])
    moved = [Event("pallet_moved", 5.0, "yard", b, None, {}) for b in (P1, P2)]
    feed(live, 5.0, [(P1, "dock-a", "pallet"), (P2, "bay-a", "pallet")], moved)
    feed(live, 40.0, [(P1, "dock-a", "pallet")], [Event("beacon_lost", 40.0, "yard", P2, None, {})])
    for t in np.arange(60.0, 3660.0, 60.0).tolist():
        feed(live, t, [(P1, "dock-a", "pallet")])
    assert _sizes(live) == (2, 2, 2, 1)  # p3 still remembered: no fix for under an hour
    snap = feed(live, 3660.0, [(P1, "dock-a", "pallet")])
    assert _sizes(live) == (1, 1, 2, 1)  # p3 forgotten; P2 listed lost, with its move
    assert (snap.positions[0]["zone_since"], snap.positions[0]["last_move"]) == (0.0, 5.0)
    back = feed(live, 3670.0, [(P1, "dock-a", "pallet"), (P2, "bay-a", "pallet")])
    assert back.positions[1]["last_move"] == 5.0
    assert back.alerts["lost"] == []
