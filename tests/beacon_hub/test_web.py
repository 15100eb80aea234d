"""The web server against a real live world (tests/beacon_hub/webworld.py): every endpoint's
shape, the event stream, the token rule, and hostile input getting 4xx, never 500."""

from __future__ import annotations

import http.client
import json
import time
import urllib.parse
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import BaseModel, SecretStr

from beacon_hub.errors import ConfigError
from beacon_hub.health import Metrics
from beacon_hub.hubconfig import HttpConfig, load_hub_config
from beacon_hub.livestate import LiveState
from beacon_hub.web import (
    MAX_RANGE_S,
    Alerts,
    Assets,
    Dwell,
    Events,
    GatewayHealth,
    Gateways,
    Heat,
    History,
    Occupancy,
    Positions,
    Problem,
    SiteGeometry,
    Sites,
    Tick,
    WebServer,
)
from beacon_hub.wire import GatewayStatus, Heartbeat
from tests.beacon_hub.webworld import (
    BAY_PALLET,
    CART_MOVING,
    DOCK_PALLET,
    ROOT,
    VANISHING,
    World,
    build_world,
    get,
    get_json,
    run_world,
)

WH = "warehouse-demo"
STORE = "store-demo"


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    w = build_world(tmp_path_factory.mktemp("web"))
    w.server.start()
    run_world(w)
    yield w
    w.server.stop()
    w.store.close()


def _valid(model: type[BaseModel], url: str) -> BaseModel:
    return model.model_validate(get_json(url))


def test_sites_and_geometry(world: World) -> None:
    sites = _valid(Sites, world.url + "/api/sites")
    assert isinstance(sites, Sites)
    assert {s.id for s in sites.sites} == {WH, STORE}
    geo = _valid(SiteGeometry, f"{world.url}/api/sites/{WH}")
    assert isinstance(geo, SiteGeometry)
    assert len(geo.gateways) == len(world.sites[WH].gateways)
    assert any(z.kind == "dock" for z in geo.zones)
    assert geo.levels[0].outline
    assert geo.levels[0].obstacles


def test_positions_occupancy_and_alerts_follow_the_engine(world: World) -> None:
    pos = _valid(Positions, f"{world.url}/api/sites/{WH}/positions")
    assert isinstance(pos, Positions)
    by_beacon = {p.beacon: p for p in pos.positions}
    assert set(by_beacon) == {DOCK_PALLET, BAY_PALLET}  # the vanishing one is lost
    assert by_beacon[DOCK_PALLET].label == "P-1042"
    assert by_beacon[DOCK_PALLET].kind == "pallet"
    occ = _valid(Occupancy, f"{world.url}/api/sites/{STORE}/zones/occupancy")
    assert isinstance(occ, Occupancy)
    assert sum(n for per in occ.zones.values() for n in per.values()) == 2
    assert occ.zones["entrance"] == {"cart": 2}  # the moving cart arrived
    alerts = _valid(Alerts, f"{world.url}/api/sites/{WH}/alerts")
    assert isinstance(alerts, Alerts)
    assert [b.beacon for b in alerts.lost] == [VANISHING]
    assert alerts.lost[0].label == "P-0099"
    assert [b.battery_mv for b in alerts.low_battery] == [2100]
    dock = world.sites[WH].zones
    docks = {z.id for z in dock if z.kind == "dock"}
    idle = {p.beacon for p in alerts.idle}
    assert idle == ({DOCK_PALLET} if by_beacon[DOCK_PALLET].zone in docks else set())
    assert DOCK_PALLET in idle, "the dock pallet should sit in its dock zone"


def test_gateways_online_with_health_figures(world: World) -> None:
    gws = _valid(Gateways, f"{world.url}/api/sites/{WH}/gateways")
    assert isinstance(gws, Gateways)
    assert len(gws.gateways) == len(world.sites[WH].gateways)
    assert {g.state for g in gws.gateways} == {"online"}
    assert all(g.loss_rate == 0.0 and g.clock_skew_s is not None for g in gws.gateways)


def test_gateway_status_and_heartbeat_show_at_once(world: World) -> None:
    gw = world.sites[STORE].gateways[0].id
    url = f"{world.url}/api/sites/{STORE}/gateways"

    def health() -> GatewayHealth:
        gws = _valid(Gateways, url)
        assert isinstance(gws, Gateways)
        return next(g for g in gws.gateways if g.id == gw)

    boot = "b00710000000000a"
    world.report(STORE, Heartbeat(gw, boot, time.time(), 30.0, 900, 880, 20, 7, 2, 30.0, "2.0.1"))
    g = health()
    assert (g.state, g.offline_reason, g.version, g.boot) == ("online", None, "2.0.1", boot)
    assert g.heartbeat is not None
    assert (g.heartbeat.adverts_dropped, g.heartbeat.queue_depth) == (20, 7)
    assert g.last_heartbeat is not None
    # A clean shutdown: offline on the next request, without a tick in between.
    world.report(STORE, GatewayStatus(gw, "offline", time.time(), boot, "2.0.1"))
    g = health()
    assert (g.state, g.offline_reason, g.status) == ("offline", "status", "offline")
    gws = _valid(Gateways, url)
    assert isinstance(gws, Gateways)
    assert {o.state for o in gws.gateways if o.id != gw} == {"online"}
    world.report(STORE, GatewayStatus(gw, "online", time.time(), boot, "2.0.1"))
    assert (health().state, health().status) == ("online", "online")


def test_history_events_dwell_heat_from_sqlite(world: World) -> None:
    beacon = urllib.parse.quote(CART_MOVING)
    hist = _valid(History, f"{world.url}/api/sites/{STORE}/beacons/{beacon}/history")
    assert isinstance(hist, History)
    assert len(hist.fixes) >= 25  # 30 ticks, the first few warm up
    assert [f.t for f in hist.fixes] == sorted(f.t for f in hist.fixes)
    assert {f.zone for f in hist.fixes} >= {"checkout-1", "entrance"}
    short = _valid(History, f"{world.url}/api/sites/{STORE}/beacons/{beacon}/history?limit=5")
    assert isinstance(short, History)
    assert short.truncated
    assert [f.t for f in short.fixes] == [f.t for f in hist.fixes[-5:]]
    ev = _valid(Events, f"{world.url}/api/sites/{STORE}/events?type=zone_exit")
    assert isinstance(ev, Events)
    assert [(e.beacon, e.zone) for e in ev.events] == [(CART_MOVING, "checkout-1")]
    dwell = _valid(Dwell, f"{world.url}/api/sites/{STORE}/zones/dwell")
    assert isinstance(dwell, Dwell)
    assert dwell.zones["checkout-1"].visits == 1
    assert dwell.zones["checkout-1"].median_s == ev.events[0].data["dwell_s"]
    heat = _valid(Heat, f"{world.url}/api/sites/{STORE}/zones/heat")
    assert isinstance(heat, Heat)
    assert heat.samples == world.seq
    assert heat.zones["entrance"].peak == 2
    assert 0 < heat.zones["checkout-1"].mean < 1


def test_assets_search_finds_live_and_registered(world: World) -> None:
    found = _valid(Assets, f"{world.url}/api/assets?q=p-1042")
    assert isinstance(found, Assets)
    assert [(a.beacon, a.site) for a in found.assets] == [(DOCK_PALLET, WH)]
    gone = _valid(Assets, f"{world.url}/api/assets?q=P-0099")
    assert isinstance(gone, Assets)
    assert [(a.beacon, a.site, a.battery_mv) for a in gone.assets] == [(VANISHING, None, 2100)]


@pytest.mark.parametrize("blank", ["%20", "+%20%09", "%E3%80%80"])  # spaces, a tab, CJK space
def test_assets_search_refuses_a_blank_query(world: World, blank: str) -> None:
    """Blank once stripped, a query would match every label and id: refused, with the reason."""
    status, body = get(f"{world.url}/api/assets?q={blank}")
    assert status == 422, body[:300]
    assert json.loads(body) == {"detail": "q: blank; give part of a label or beacon id"}


def test_openapi_is_complete_and_needs_no_cdn(world: World) -> None:
    doc = get_json(world.url + "/openapi.json")
    paths = doc["paths"]
    for path in (
        "/api/sites",
        "/api/sites/{site}",
        "/api/sites/{site}/positions",
        "/api/sites/{site}/beacons/{beacon}/history",
        "/api/sites/{site}/zones/occupancy",
        "/api/sites/{site}/zones/dwell",
        "/api/sites/{site}/zones/heat",
        "/api/sites/{site}/gateways",
        "/api/sites/{site}/alerts",
        "/api/sites/{site}/events",
        "/api/sites/{site}/stream",
        "/api/assets",
        "/api/consent/{beacon}",
    ):
        assert path in paths, path
        for op in paths[path].values():
            ok = op["responses"]["200"]["content"]
            assert any("schema" in c and c["schema"] for c in ok.values()), path
    assert get(world.url + "/docs")[0] == 404  # Swagger UI would load from a CDN


def test_dashboard_static_healthz_metrics(world: World) -> None:
    status, body = get(world.url + "/")
    assert status == 200
    assert b'id="map"' in body
    assert b"/static/app.js" in body
    for name in ("app.js", "app.css"):
        assert get(f"{world.url}/static/{name}")[0] == 200
    assert json.loads(get(world.url + "/healthz")[1])["ok"] is True
    status, metrics = get(world.url + "/metrics")
    assert status == 200
    assert b"beacon_hub_fixes_total" in metrics or b"# HELP" in metrics


def _read_events(resp: http.client.HTTPResponse, count: int) -> list[dict[str, object]]:
    out: list[dict[str, object]] = []
    data: list[str] = []
    while len(out) < count:
        line = resp.readline().decode()
        assert line, "stream ended"
        if line.startswith("data: "):
            data.append(line[6:].rstrip("\n"))
        elif line == "\n" and data:
            out.append(json.loads("".join(data)))
            data = []
    return out


def test_stream_delivers_each_new_tick(world: World) -> None:
    conn = http.client.HTTPConnection("127.0.0.1", world.server.port, timeout=20)
    conn.request("GET", f"/api/sites/{STORE}/stream")
    resp = conn.getresponse()
    assert resp.status == 200
    assert resp.getheader("content-type", "").startswith("text/event-stream")
    (first,) = _read_events(resp, 1)  # the current snapshot, at once
    world.step(world.t + 1.0)
    (second,) = _read_events(resp, 1)
    conn.close()
    tick = Tick.model_validate(second)
    assert tick.version == int(str(first["version"])) + 1
    assert tick.t == world.t
    assert {p.beacon for p in tick.positions} == set(world.spots[STORE])


def test_consent_writes_are_refused_when_read_only(world: World) -> None:
    beacon = urllib.parse.quote(CART_MOVING)
    conn = http.client.HTTPConnection("127.0.0.1", world.server.port, timeout=10)
    for method in ("PUT", "DELETE"):
        conn.request(method, f"/api/consent/{beacon}")
        resp = conn.getresponse()
        resp.read()
        assert resp.status == 403
    conn.close()


# -------------------------------------------------------------------------- auth


def test_beyond_loopback_without_token_is_a_config_error(tmp_path: Path) -> None:
    cfg = tmp_path / "hub.yaml"
    cfg.write_text(f"sites:\n  - site: {ROOT / 'config/store.yaml'}\nhttp:\n  bind: 0.0.0.0\n")
    with pytest.raises(ConfigError, match=r"http\.token"):
        load_hub_config(cfg)
    ok = load_hub_config(cfg, overrides={"http": {"bind": "0.0.0.0", "token": "t0k"}})  # noqa: S104
    assert ok.http.token is not None


def test_token_required_beyond_loopback(world: World) -> None:
    cfg = HttpConfig(bind="0.0.0.0", port=0, token=SecretStr("s3cret-token"))  # noqa: S104
    live = LiveState(world.sites.values(), cfg)
    server = WebServer(cfg, metrics=Metrics(), health=lambda: (True, {}), live=live, reader=None)
    server.start()
    try:
        base = f"http://127.0.0.1:{server.port}"
        assert get(base + "/api/sites")[0] == 401
        assert get(base + "/api/sites", {"Authorization": "Bearer wrong"})[0] == 401
        assert get(base + "/api/sites?token=wrong")[0] == 401
        assert get(base + f"/api/sites/{STORE}/stream")[0] == 401
        good = {"Authorization": "Bearer s3cret-token"}
        assert get(base + "/api/sites", good)[0] == 200
        assert get(base + "/api/sites?token=s3cret-token")[0] == 200
        assert get(base + "/healthz")[0] == 200  # stays open for probes
        assert get(base + "/")[0] == 200  # the shell asks for the token; it holds no data
    finally:
        server.stop()


# ----------------------------------------------------------------------- hostile input

_text = st.one_of(
    st.text(max_size=120),
    st.sampled_from(
        [
            "' OR 1=1 --",
            '"; DROP TABLE fixes; --',
            "../../etc/passwd",
            "..%2f..%2fetc%2fpasswd",
            "%00",
            "\u202e",
            "x" * 5000,
            "ibeacon:00000000-0000-0000-0000-000000000000:1:1",
            "anon:0123456789abcdef",
            "nan",
            "inf",
            "-1e309",
            "1e308",
            "-5",
            "99999999999999999999999999",
        ]
    ),
)
_num = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True).map(repr),
    st.integers(min_value=-(10**30), max_value=10**30).map(str),
    _text,
)
_ROUTES = (
    "/api/sites/{s}",
    "/api/sites/{s}/positions",
    "/api/sites/{s}/beacons/{b}/history?since={n}&until={m}&limit={k}",
    "/api/sites/{s}/zones/occupancy",
    "/api/sites/{s}/zones/dwell?since={n}&until={m}",
    "/api/sites/{s}/zones/heat?since={n}&until={m}",
    "/api/sites/{s}/gateways",
    "/api/sites/{s}/alerts",
    "/api/sites/{s}/events?type={t}&since={n}&until={m}&limit={k}&beacon={b}",
    "/api/assets?q={t}&limit={k}",
    "/static/{t}",
)


@settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    route=st.sampled_from(_ROUTES),
    site=st.one_of(st.sampled_from([WH, STORE]), _text),
    beacon=st.one_of(st.sampled_from([CART_MOVING, DOCK_PALLET]), _text),
    since=_num,
    until=_num,
    limit=_num,
    text=_text,
)
def test_hostile_parameters_get_4xx_never_500(  # noqa: PLR0917  # hypothesis' arguments
    world: World, route: str, site: str, beacon: str, since: str, until: str, limit: str, text: str
) -> None:
    q = urllib.parse.quote
    path = route.format(
        s=q(site, safe=""), b=q(beacon, safe=""), n=q(since), m=q(until), k=q(limit), t=q(text)
    )
    status, body = get(world.url + path)
    assert status < 500, (path, status, body[:300])
    if status == 200 and "/api/" in path:
        json.loads(body)
    elif status >= 400:  # every refusal is the documented Problem
        Problem.model_validate_json(body)


@pytest.mark.parametrize(
    "path",
    [
        "/static/../beacon_hub/web.py",
        "/static/%2e%2e/web.py",
        "/static/..%2fweb.py",
        "/static/%2e%2e%2f%2e%2e%2fpyproject.toml",
        "/static//etc/passwd",
        "/static/....//web.py",
    ],
)
def test_static_path_traversal_is_refused(world: World, path: str) -> None:
    conn = http.client.HTTPConnection("127.0.0.1", world.server.port, timeout=10)
    conn.request("GET", path)  # raw: urllib would normalise the dots away
    resp = conn.getresponse()
    body = resp.read()
    conn.close()
    assert resp.status in (400, 404), (path, resp.status)
    assert b"import" not in body


def test_range_limits(world: World) -> None:
    base = f"{world.url}/api/sites/{STORE}"
    assert get(f"{base}/zones/dwell?since=0&until={MAX_RANGE_S + 1}")[0] == 400
    assert get(f"{base}/zones/dwell?since=10&until=5")[0] == 400
    assert get(f"{base}/events?limit=1000000")[0] == 422
    assert get(f"{base}/events?since=nan")[0] == 422
    assert get(f"{world.url}/api/sites/nope/positions")[0] == 404
    assert get(f"{base}/beacons/not-a-beacon/history")[0] == 422


def test_validation_errors_are_the_documented_problem(world: World) -> None:
    base = f"{world.url}/api/sites/{STORE}"
    for url, words in (
        (f"{base}/events?limit=1000000", ("limit", "query", "1000")),
        (f"{base}/events?since=nan", ("since", "query", "finite")),
        (f"{base}/zones/dwell?until=soon", ("until", "query", "number")),
        (f"{world.url}/api/assets", ("q", "query", "required")),
        (f"{world.url}/api/sites/{'s' * 64}/positions", ("site", "path", "63")),
    ):
        status, body = get(url)
        assert status == 422, (url, status)
        problem = Problem.model_validate_json(body)  # {detail: str}, nothing else
        assert all(w in problem.detail for w in words), (url, problem.detail)
    doc = get_json(world.url + "/openapi.json")
    declared = doc["paths"]["/api/sites/{site}/events"]["get"]["responses"]["422"]
    assert declared["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/Problem"
    }
    assert doc["components"]["schemas"]["Problem"]["properties"]["detail"]["type"] == "string"


def test_consent_writes_reach_the_registry_when_allowed(world: World) -> None:
    from beacon_hub.consent import ConsentRegistry  # noqa: PLC0415  # only this test needs it

    registry = ConsentRegistry()
    registry.attach(lambda beacon: "anon:" + f"{abs(hash(beacon)):016x}"[-16:])
    cfg = HttpConfig(port=0, allow_writes=True)
    server = WebServer(
        cfg,
        metrics=Metrics(),
        health=lambda: (True, {}),
        live=LiveState(world.sites.values(), cfg),
        reader=None,
        consent=lambda: registry,
    )
    server.start()
    try:
        beacon = urllib.parse.quote(CART_MOVING)
        conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
        conn.request("PUT", f"/api/consent/{beacon}")
        resp = conn.getresponse()
        body = json.loads(resp.read())
        assert resp.status == 200
        assert body["consent"] is True
        assert body["pseudonym"].startswith("anon:")
        assert registry.has_consent(CART_MOVING)
        conn.request("DELETE", f"/api/consent/{beacon}")
        resp = conn.getresponse()
        resp.read()
        assert resp.status == 200
        assert not registry.has_consent(CART_MOVING)
        conn.request("PUT", "/api/consent/anon:0123456789abcdef")
        resp = conn.getresponse()
        resp.read()
        assert resp.status == 422
        # A major of "1" and ARABIC-INDIC DIGIT ONE: \d matched it, so it was stored as canonical.
        bogus = CART_MOVING.rsplit(":", 2)[0] + ":1\u0661:2"
        conn.request("PUT", "/api/consent/" + urllib.parse.quote(bogus))
        resp = conn.getresponse()
        resp.read()
        assert resp.status == 422
        assert not registry.has_consent(bogus)
        conn.close()
    finally:
        server.stop()
