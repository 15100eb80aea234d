"""The shipped broker policy (deploy/mosquitto/mosquitto.conf + secure.conf + acl) on a real
Mosquitto, with credentials and certificates made by `beacon_hub.provision` (docs/security.md,
Threat model: each test here is named there).

The broker runs exactly the shipped files, concatenated as the install does, with only ports,
file locations and logging changed. A site CA, the broker's certificate and a rogue CA are
generated per module with the `openssl` command.
"""

from __future__ import annotations

import json
import os
import queue
import re
import socket
import ssl
import string
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
import yaml
from paho.mqtt.enums import CallbackAPIVersion

from beacon_hub.broker_settings import BrokerSettings
from beacon_hub.provision import (
    Provisioned,
    SiteCa,
    ensure_site_ca,
    issue_certificate,
    mosquitto_password_entry,
    provision_gateway,
    provision_hub,
    reader_acl,
    write_secret,
)
from beacon_hub.wire import (
    ReadingBatch,
    encode_batch,
    promotion_topic,
    readings_topic,
    track_topic,
    tracks_topic,
)
from gateway.config import load_gateway_config
from tests.integration.hubkit import ROOT, HubProcess, site_file, unique_site, wait_until
from tests.servers import LOOPBACK, Mosquitto, free_port

DEPLOY = ROOT / "deploy" / "mosquitto"
CONNECT_TIMEOUT_S = 20.0
"""Upper bound for a CONNACK or a handshake failure; reached only when something is broken."""


# ------------------------------------------------------------------------------ the broker


class SecureMosquitto(Mosquitto):
    """The shipped config: the TLS listener on `port`, the loopback plain one on `plain_port`."""

    def __init__(self, folder: Path, template: Path) -> None:
        super().__init__(folder, config_file=template)
        self.plain_port = 0

    def _pick_ports(self) -> None:
        super()._pick_ports()
        self.plain_port = free_port()

    def _config(self) -> str:
        text = string.Template(Path(str(self.config_file)).read_text())
        return text.safe_substitute(port=self.port, plain_port=self.plain_port)


def shipped_secure_config(folder: Path, pki: Pki) -> Path:
    """mosquitto.conf + secure.conf as installed, pointed at the test's files."""
    text = (DEPLOY / "mosquitto.conf").read_text() + "\n" + (DEPLOY / "secure.conf").read_text()
    subs = {
        r"listener 1883 127\.0\.0\.1": "listener $plain_port 127.0.0.1",
        r"listener 8883": "listener $port 127.0.0.1",
        r"password_file .*": f"password_file {folder / 'passwd'}",
        r"acl_file .*": f"acl_file {folder / 'acl'}",
        r"cafile .*": f"cafile {pki.ca.cert}",
        r"certfile .*": f"certfile {pki.broker_cert}",
        r"keyfile .*": f"keyfile {pki.broker_key}",
        r"persistence_location .*": f"persistence_location {folder / 'broker' / 'data'}/",
        r"log_dest .*": "log_dest stdout",
    }
    for pattern, value in subs.items():
        text, n = re.subn(f"(?m)^{pattern}$", value.replace("\\", "\\\\"), text)
        assert n == 1, f"the shipped config has no single line matching {pattern!r}"
    if os.geteuid() == 0:
        text += "\nuser root\n"  # as root Mosquitto drops to `mosquitto`, locked out of tmp
    path = folder / "secure-mosquitto.conf"
    path.write_text(text)
    return path


@dataclass
class Pki:
    ca: SiteCa
    broker_cert: Path
    broker_key: Path
    rogue: SiteCa
    rogue_cert: Path
    rogue_key: Path


@dataclass
class World:
    folder: Path
    broker: SecureMosquitto
    pki: Pki
    site: str
    site_path: Path
    gateways: dict[str, Provisioned]
    hub: Provisioned
    reader: tuple[str, str]
    """A dashboard reader's (username, password)."""

    def settings(self, who: Provisioned, **changes: Any) -> BrokerSettings:
        """The provisioned config's broker section, as the device loads it."""
        data = yaml.safe_load(who.config.read_text())["broker"]
        data["url"] = f"mqtts://{LOOPBACK}:{self.broker.port}"
        if "password" in changes:
            data.pop("password_file")
        data.update(changes)
        return BrokerSettings.model_validate(data)

    def reader_settings(self) -> BrokerSettings:
        user, password = self.reader
        return self.settings(self.hub, username=user, password=password, client_id=None)


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    folder = tmp_path_factory.mktemp("secure")
    ca, _ = ensure_site_ca(folder / "site-ca")
    broker_cert, broker_key = folder / "broker.crt", folder / "broker.key"
    issue_certificate(ca, "broker", broker_cert, broker_key, server_names=[LOOPBACK, "localhost"])
    rogue, _ = ensure_site_ca(folder / "rogue-ca", name="rogue CA")
    rogue_cert, rogue_key = folder / "rogue.crt", folder / "rogue.key"
    issue_certificate(rogue, "gw.x.rogue", rogue_cert, rogue_key)
    pki = Pki(ca, broker_cert, broker_key, rogue, rogue_cert, rogue_key)

    site = unique_site()
    site_path = site_file(folder, site, base="room.yaml")
    gw_ids = [g["id"] for g in yaml.safe_load(site_path.read_text())["gateways"]]
    url = "mqtts://127.0.0.1:8883"  # the port is only known once the broker runs
    gateways = {
        gw: provision_gateway(
            site, gw, folder / "prov" / gw, broker_url=url, ca_dir=ca.folder,
            install_dir=folder / "prov" / gw / "gateway",
        )
        for gw in gw_ids
    }  # fmt: skip
    hub = provision_hub(
        "test", [site], folder / "prov" / "hub", broker_url=url, ca_dir=ca.folder,
        install_dir=folder / "prov" / "hub" / "hub",
    )  # fmt: skip
    reader = ("dashboard", uuid.uuid4().hex)
    passwd = "".join(p.broker_passwd.read_text() for p in [*gateways.values(), hub])
    passwd += mosquitto_password_entry(*reader)
    write_secret(folder / "passwd", passwd)
    acl = (DEPLOY / "acl").read_text()
    acl += "".join(p.broker_acl.read_text() for p in [*gateways.values(), hub])
    acl += "\n" + reader_acl(reader[0], [site], promotions=False)
    (folder / "acl").write_text(acl)

    broker = SecureMosquitto(folder / "broker", shipped_secure_config(folder, pki))
    broker.start()
    try:
        yield World(folder, broker, pki, site, site_path, gateways, hub, reader)
    finally:
        broker.stop()


# ------------------------------------------------------------------------------ clients


@dataclass
class Outcome:
    connected: bool
    reason: str


class Client:
    """A paho client that records what happens to it; waits are for conditions."""

    def __init__(self, settings: BrokerSettings | None, port: int, **tls: Any) -> None:
        self.messages: queue.Queue[tuple[str, bytes]] = queue.Queue()
        self.suback: list[int] = []
        self.acked: set[int] = set()
        self.client = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=f"t-{uuid.uuid4().hex[:10]}",
            protocol=mqtt.MQTTv311,
        )
        if settings is not None:
            settings.secure(self.client)
        elif tls:
            self.client.tls_set(**tls)
        self.outcome: queue.Queue[Outcome] = queue.Queue()
        # The callbacks close over the containers they fill, not `self`: self holds the client,
        # and the cycle would leave paho's wake-up socket pair, closed in its __del__, to the
        # cycle collector, which may let the sockets warn as unclosed (with filterwarnings =
        # error: tests pass, exit 1).
        messages, suback, acked, outcome = self.messages, self.suback, self.acked, self.outcome

        def on_connect(_c: Any, _u: Any, _f: Any, reason: Any, _p: Any) -> None:
            outcome.put(Outcome(not reason.is_failure, str(reason)))

        def on_subscribe(_c: Any, _u: Any, _mid: int, reasons: Any, _p: Any) -> None:
            suback.extend(r.value for r in reasons)

        self.client.on_connect = on_connect
        self.client.on_message = lambda _c, _u, m: messages.put((m.topic, bytes(m.payload)))
        self.client.on_subscribe = on_subscribe
        # TLS 1.3 checks the client's certificate after the handshake returned: the broker's
        # verdict then arrives as a closed connection instead of a CONNACK.
        self.client.on_disconnect = lambda _c, _u, _f, r, _p: outcome.put(
            Outcome(False, f"disconnected: {r}")
        )
        self.client.on_publish = lambda _c, _u, mid, _r, _p: acked.add(mid)
        self.port = port

    def connect(self) -> Outcome:
        """Connect once (no retries); the CONNACK's verdict, or the TLS/socket error."""
        try:
            self.client.connect(LOOPBACK, self.port, keepalive=30)
        except (ssl.SSLError, OSError) as e:
            return Outcome(False, f"{type(e).__name__}: {e}")
        self.client.loop_start()
        try:
            return self.outcome.get(timeout=CONNECT_TIMEOUT_S)
        except queue.Empty:
            return Outcome(False, "no CONNACK (the broker closed the connection)")

    def subscribe(self, *topics: str) -> list[int]:
        before = len(self.suback)
        self.client.subscribe([(t, 1) for t in topics])
        wait_until("SUBACK", lambda: len(self.suback) >= before + len(topics))
        return self.suback[before:]

    def publish(self, topic: str, payload: bytes, *, retain: bool = False) -> None:
        info = self.client.publish(topic, payload, qos=1, retain=retain)
        wait_until(f"PUBACK on {topic}", lambda: info.mid in self.acked)

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()

    def drain(self) -> list[tuple[str, bytes]]:
        out = []
        while not self.messages.empty():
            out.append(self.messages.get_nowait())
        return out


def connected(world: World, settings: BrokerSettings) -> Client:
    client = Client(settings, world.broker.port)
    outcome = client.connect()
    assert outcome.connected, outcome.reason
    return client


def a_batch(gw: str, seq: int, beacon: str = "mac:aa:bb:cc:dd:ee:01") -> ReadingBatch:
    return ReadingBatch(
        gw=gw, boot="0123456789abcdef", seq=seq, sent=0.0, beacons=(beacon,), b=(0,),
        dt_ms=(10.0,), rssi=(-60.0,), tx=(None,),
    )  # fmt: skip


# ------------------------------------------------------------------------------ the tests


def test_provisioned_gateway_config_loads_with_the_gateways_own_schema(world: World) -> None:
    gw = next(iter(world.gateways.values()))
    cfg = load_gateway_config(gw.config)
    assert cfg.broker.username == gw.username
    assert cfg.broker.read_password() == gw.password_file.read_text().strip()
    assert cfg.broker.tls is not None
    assert cfg.broker.tls.key_file == gw.client_key


def test_anonymous_clients_are_refused_on_both_listeners(world: World) -> None:
    # TLS with a valid site certificate but no username: refused at CONNECT.
    gw = next(iter(world.gateways.values()))
    assert gw.client_cert is not None
    assert gw.client_key is not None
    tls = Client(
        None, world.broker.port, ca_certs=str(world.pki.ca.cert),
        certfile=str(gw.client_cert), keyfile=str(gw.client_key),
    )  # fmt: skip
    outcome = tls.connect()
    tls.close()
    assert not outcome.connected
    assert "authori" in outcome.reason.lower()
    # The plain loopback listener wants a password too.
    plain = Client(None, world.broker.plain_port)
    outcome = plain.connect()
    plain.close()
    assert not outcome.connected
    assert "authori" in outcome.reason.lower()


def test_wrong_password_is_refused(world: World) -> None:
    gw = next(iter(world.gateways.values()))
    client = Client(world.settings(gw, password="not-the-password"), world.broker.port)  # noqa: S106
    outcome = client.connect()
    client.close()
    assert not outcome.connected


def test_certificate_from_another_ca_is_refused(world: World) -> None:
    gw = next(iter(world.gateways.values()))
    assert gw.client_cert is not None
    assert gw.client_key is not None
    password = gw.password_file.read_text().strip()
    # Right password, certificate signed by a rogue CA: no CONNACK, the connection is closed.
    rogue = raw_connect(world, gw.username, password, (world.pki.rogue_cert, world.pki.rogue_key))
    assert not rogue.startswith("CONNACK"), rogue
    # Right password, no client certificate at all.
    bare = raw_connect(world, gw.username, password, None)
    assert not bare.startswith("CONNACK"), bare
    # The provisioned certificate with the same password is accepted (CONNACK 0), so the
    # refusals above are the certificate's doing.
    good = raw_connect(world, gw.username, password, (gw.client_cert, gw.client_key))
    assert good == "CONNACK 0"
    # The other way round: a client that trusts only the rogue CA refuses our broker (a
    # gateway will not hand its readings and password to an impostor broker).
    fooled = ssl.create_default_context(cafile=str(world.pki.rogue.cert))
    with (
        socket.create_connection((LOOPBACK, world.broker.port)) as raw,
        pytest.raises(ssl.SSLCertVerificationError),
    ):
        fooled.wrap_socket(raw, server_hostname=LOOPBACK).close()


def raw_connect(world: World, username: str, password: str, cert: tuple[Path, Path] | None) -> str:
    """TLS handshake and an MQTT 3.1.1 CONNECT on a socket this test owns (paho leaks the
    socket of a failed handshake); returns `CONNACK {code}` or what refused it."""
    ctx = ssl.create_default_context(cafile=str(world.pki.ca.cert))
    if cert is not None:
        ctx.load_cert_chain(str(cert[0]), str(cert[1]))

    def field(data: bytes) -> bytes:
        return len(data).to_bytes(2, "big") + data

    body = field(b"MQTT") + bytes([4, 0xC2]) + (30).to_bytes(2, "big")  # user, password, clean
    body += field(f"raw-{uuid.uuid4().hex[:8]}".encode())
    body += field(username.encode()) + field(password.encode())
    assert len(body) < 128  # one-byte remaining length
    packet = bytes([0x10, len(body)]) + body
    try:
        with (
            socket.create_connection((LOOPBACK, world.broker.port), timeout=CONNECT_TIMEOUT_S) as s,
            ctx.wrap_socket(s, server_hostname=LOOPBACK) as tls,
        ):
            tls.sendall(packet)
            answer = tls.recv(4)
    except (ssl.SSLError, OSError) as e:
        return f"{type(e).__name__}: {e}"
    if len(answer) == 4 and answer[0] == 0x20:
        return f"CONNACK {answer[3]}"
    return f"closed ({answer!r})"


def test_gateway_cannot_publish_as_another_gateway(world: World) -> None:
    gw_a, gw_b = list(world.gateways)[:2]
    hub = connected(world, world.settings(world.hub, client_id=None))
    gateway_a = connected(world, world.settings(world.gateways[gw_a], client_id=None))
    try:
        assert hub.subscribe(f"beacons/{world.site}/gateway/+/readings") == [1]
        # A's forgery on B's topic, then a marker on A's own: the marker's arrival proves the
        # forgery (sent first, same connection, QoS 1: in order) was dropped, not late.
        gateway_a.publish(readings_topic(world.site, gw_b), encode_batch(a_batch(gw_b, 0)))
        gateway_a.publish(readings_topic(world.site, gw_a), encode_batch(a_batch(gw_a, 0)))
        topic, _ = hub.messages.get(timeout=CONNECT_TIMEOUT_S)
        assert topic == readings_topic(world.site, gw_a)
        assert hub.drain() == []
        # Nor may A write outputs: a forged promotion or track never reaches a reader.
        reader = connected(world, world.reader_settings())
        try:
            assert reader.subscribe(f"beacons/{world.site}/track/+") == [1]
            fake = track_topic(world.site, "mac:aa:bb:cc:dd:ee:01")
            gateway_a.publish(fake, b'{"v":1}')
            gateway_a.publish(promotion_topic(world.site, "mac:aa:bb:cc:dd:ee:01"), b"{}")
            hub_out = connected(world, world.settings(world.hub, client_id=None))
            hub_out.publish(fake, b'{"v":1,"from":"hub"}')
            topic, payload = reader.messages.get(timeout=CONNECT_TIMEOUT_S)
            assert json.loads(payload) == {"v": 1, "from": "hub"}
            hub_out.close()
        finally:
            reader.close()
    finally:
        hub.close()
        gateway_a.close()


def test_gateway_cannot_read_tracks_or_promotions(world: World) -> None:
    gw = next(iter(world.gateways))
    gateway = connected(world, world.settings(world.gateways[gw], client_id=None))
    hub = connected(world, world.settings(world.hub, client_id=None))
    reader = connected(world, world.reader_settings())
    try:
        topics = [
            tracks_topic(world.site),
            f"beacons/{world.site}/track/+",
            f"beacons/{world.site}/promotion/+",
            f"beacons/{world.site}/gateway/+/readings",
            "#",
        ]
        # Mosquitto 2.0 grants a 3.1.1 SUBSCRIBE and checks read access per message instead.
        gateway.subscribe(*topics)
        assert reader.subscribe(tracks_topic(world.site)) == [1]
        hub.publish(promotion_topic(world.site, "mac:aa:bb:cc:dd:ee:02"), b'{"rule":"r1"}')
        hub.publish(tracks_topic(world.site), b'{"v":1}')
        assert reader.messages.get(timeout=CONNECT_TIMEOUT_S)[0] == tracks_topic(world.site)
        # A round trip on the gateway's own connection: a delivery queued for it before (when
        # the broker routed the hub's messages) would have come in ahead of this PUBACK.
        gw_topic = readings_topic(world.site, gw)
        gateway.publish(gw_topic, encode_batch(a_batch(gw, 1)))
        assert gateway.drain() == []
        # A reader cannot see promotions (store systems only) nor readings either.
        reader.subscribe(f"beacons/{world.site}/promotion/+", f"beacons/{world.site}/gateway/#")
        hub.publish(promotion_topic(world.site, "mac:aa:bb:cc:dd:ee:02"), b'{"rule":"r2"}')
        gateway.publish(gw_topic, encode_batch(a_batch(gw, 2)))
        hub.publish(tracks_topic(world.site), b'{"v":1,"n":2}')
        assert reader.messages.get(timeout=CONNECT_TIMEOUT_S)[1] == b'{"v":1,"n":2}'
        assert reader.drain() == []
    finally:
        for c in (gateway, hub, reader):
            c.close()


def test_hub_runs_end_to_end_over_tls(world: World) -> None:
    """Every gateway publishes with its own provisioned credentials over TLS; the hub (its own
    provisioned config) computes fixes, stores them and publishes tracks that a reader gets."""
    hub_cfg = yaml.safe_load(world.hub.config.read_text())["broker"]
    hub_cfg["url"] = f"mqtts://{LOOPBACK}:{world.broker.port}"
    hub_cfg["reconnect_max_s"] = 2
    hub = HubProcess(
        world.folder / "hub-run",
        world.broker,
        [world.site_path],
        extra={f"broker.{k}": v for k, v in hub_cfg.items()},
    )
    reader = connected(world, world.reader_settings())
    gateways = {
        gw: connected(world, world.settings(p, client_id=None)) for gw, p in world.gateways.items()
    }
    try:
        assert reader.subscribe(tracks_topic(world.site)) == [1]
        hub.start()
        wait_until("the hub's broker connection", lambda: _connected(hub), hub=hub)
        site = yaml.safe_load(world.site_path.read_text())
        spots = {g["id"]: (g["x"], g["y"]) for g in site["gateways"]}
        seq = 0

        def fixes_stored() -> bool:
            nonlocal seq
            import time  # noqa: PLC0415

            for gw, client in gateways.items():
                client.publish(
                    readings_topic(world.site, gw), _batch(gw, spots[gw], seq, time.time())
                )
            seq += 1
            return bool(hub.sql("SELECT count(*) FROM fixes WHERE site = ?", world.site)[0][0])

        wait_until("fixes stored by the hub", fixes_stored, hub=hub)
        topic, payload = reader.messages.get(timeout=CONNECT_TIMEOUT_S)
        assert topic == tracks_topic(world.site)
        assert json.loads(payload)["site"] == world.site
        assert hub.metric_sum("beacon_hub_batches_refused_total") == 0
    finally:
        hub.close()
        reader.close()
        for c in gateways.values():
            c.close()


def _connected(hub: HubProcess) -> bool:
    return hub.metric_sum("beacon_hub_broker_connected") == 1


def _batch(gw: str, spot: tuple[float, float], seq: int, sent: float) -> bytes:
    """Two beacons at fixed spots, RSSI from distance (the log-distance model, no noise)."""
    import math  # noqa: PLC0415

    beacons = ("mac:aa:bb:cc:00:00:01", "mac:aa:bb:cc:00:00:02")
    where = ((2.0, 1.5), (4.5, 3.0))
    rssi = tuple(
        -59.0 - 22.0 * math.log10(max(math.hypot(x - spot[0], y - spot[1], 1.5), 0.5))
        for x, y in where
    )
    batch = ReadingBatch(
        gw=gw, boot="00000000000000aa", seq=seq, sent=sent, beacons=beacons, b=(0, 1),
        dt_ms=(500.0, 500.0), rssi=rssi, tx=(None, None),
    )  # fmt: skip
    return encode_batch(batch)
