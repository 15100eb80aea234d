"""Advertisement -> filter -> batch, driven with bleak's own BLEDevice and AdvertisementData."""

from __future__ import annotations

from pathlib import Path

import pytest
from bleak.backends.device import BLEDevice
from bleak.backends.scanner import AdvertisementData
from hypothesis import given, settings
from hypothesis import strategies as st

from beacon_hub.errors import ConfigError
from beacon_hub.wire import Telemetry, decode_batch, encode_batch
from gateway.batching import Batcher
from gateway.config import GatewayConfig, load_gateway_config
from gateway.filters import BeaconFilter
from gateway.frames import APPLE_COMPANY_ID, EDDYSTONE_SERVICE_UUID
from gateway.pipeline import Pipeline
from tests.gateway.test_frames import ALTBEACON, EDDYSTONE_TLM, EDDYSTONE_UID, IBEACON

IB = "ibeacon:e2c56db5-dffb-48d2-b060-d0f5a71096e0:1:2"
ED = "eddystone:edd1ebeac04e5defa017:0123456789ab"
AB = "altbeacon:2f234454cf6d4a0fadf2f4911ba9ffa6:1:2"


def advert(
    rssi: int = -60,
    mfg: dict[int, bytes] | None = None,
    svc: dict[str, bytes] | None = None,
) -> AdvertisementData:
    return AdvertisementData(
        local_name=None,
        manufacturer_data=mfg or {},
        service_data=svc or {},
        service_uuids=list(svc or {}),
        tx_power=None,
        rssi=rssi,
        platform_data=(),
    )


def device(address: str = "C3:00:00:00:00:01") -> BLEDevice:
    return BLEDevice(address, None, None)


class Clock:
    def __init__(self) -> None:
        self.t = 100.0

    def __call__(self) -> float:
        return self.t


def make(
    beacon_filter: BeaconFilter | None = None, max_samples: int = 1000
) -> tuple[Pipeline, Clock]:
    clock = Clock()
    batcher = Batcher("gw-1", "00c0ffee", max_samples=max_samples)
    return Pipeline(batcher, beacon_filter or BeaconFilter(), monotonic=clock), clock


def test_samples_keep_their_own_offsets_and_tx() -> None:
    pipe, clock = make()
    pipe.on_advertisement(device("A0:00:00:00:00:01"), advert(-61, {APPLE_COMPANY_ID: IBEACON}))
    clock.t += 0.25
    pipe.on_advertisement(
        device("A0:00:00:00:00:02"), advert(-72, svc={EDDYSTONE_SERVICE_UUID: EDDYSTONE_UID})
    )
    clock.t += 0.5
    pipe.on_advertisement(device("A0:00:00:00:00:01"), advert(-63, {APPLE_COMPANY_ID: IBEACON}))
    clock.t += 0.25
    batch = pipe.take(sent=1_700_000_000.0)
    assert batch is not None
    assert batch.beacons == (IB, ED)
    assert batch.b == (0, 1, 0)
    assert batch.dt_ms == (1000.0, 750.0, 250.0)
    assert batch.rssi == (-61.0, -72.0, -63.0)
    assert batch.tx == (-59.0, -59.0, -59.0)
    assert (batch.boot, batch.seq) == ("00c0ffee", 0)
    assert decode_batch(encode_batch(batch)) == batch
    assert pipe.take(sent=1_700_000_001.0) is None  # nothing heard: nothing sent
    pipe.on_advertisement(device(), advert(-61, {APPLE_COMPANY_ID: IBEACON}))
    second = pipe.take(sent=1_700_000_002.0)
    assert second is not None
    assert second.seq == 1


def test_phones_are_never_published_unless_their_address_is_listed() -> None:
    phone = advert(-50, {APPLE_COMPANY_ID: bytes.fromhex("1005031c0e9d61")})
    pipe, _ = make()
    pipe.on_advertisement(device("5A:11:22:33:44:55"), phone)
    assert pipe.take(1.0) is None
    assert pipe.counters.adverts_seen == 1
    pipe, _ = make(BeaconFilter(track_macs=["5a-11-22-33-44-55"]))
    pipe.on_advertisement(device("5A:11:22:33:44:55"), phone)
    pipe.on_advertisement(device("5A:11:22:33:44:66"), phone)
    batch = pipe.take(1.0)
    assert batch is not None
    assert batch.beacons == ("mac:5a:11:22:33:44:55",)
    assert batch.tx == (None,)


def test_allow_lists_and_rssi_floor() -> None:
    beacon_filter = BeaconFilter(
        uuids=["E2C56DB5-DFFB-48D2-B060-D0F5A71096E0"],
        id_patterns=["altbeacon:*:1:*"],
        min_rssi_dbm=-75,
    )
    pipe, _ = make(beacon_filter)
    pipe.on_advertisement(device("A0:00:00:00:00:01"), advert(-61, {APPLE_COMPANY_ID: IBEACON}))
    pipe.on_advertisement(
        device("A0:00:00:00:00:02"), advert(-70, svc={EDDYSTONE_SERVICE_UUID: EDDYSTONE_UID})
    )
    pipe.on_advertisement(device("A0:00:00:00:00:03"), advert(-70, {0x0118: ALTBEACON}))
    pipe.on_advertisement(device("A0:00:00:00:00:01"), advert(-90, {APPLE_COMPANY_ID: IBEACON}))
    pipe.on_advertisement(device("A0:00:00:00:00:01"), advert(127, {APPLE_COMPANY_ID: IBEACON}))
    batch = pipe.take(1.0)
    assert batch is not None
    assert batch.beacons == (IB, AB)
    assert pipe.counters.below_rssi == 2
    namespace_only = BeaconFilter(namespaces=["edd1ebeac04e5defa017"])
    pipe, _ = make(namespace_only)
    pipe.on_advertisement(device(), advert(-61, {APPLE_COMPANY_ID: IBEACON}))
    pipe.on_advertisement(device(), advert(-61, svc={EDDYSTONE_SERVICE_UUID: EDDYSTONE_UID}))
    batch = pipe.take(1.0)
    assert batch is not None
    assert batch.beacons == (ED,)


def test_an_advert_without_rssi_is_counted_not_raised() -> None:
    """bleak types rssi as int, but a backend may report none (the fuzzing audit's TypeError)."""
    pipe, _ = make()
    no_rssi = advert(-60, {APPLE_COMPANY_ID: IBEACON})._replace(rssi=None)  # type: ignore[arg-type]
    pipe.on_advertisement(device(), no_rssi)
    pipe.on_advertisement(device(), advert(-60, {APPLE_COMPANY_ID: IBEACON}))
    assert pipe.counters.adverts_seen == 2
    assert pipe.counters.below_rssi == 1
    batch = pipe.take(1.0)
    assert batch is not None
    assert batch.rssi == (-60.0,)


def test_tlm_is_tied_to_the_uid_of_the_same_device() -> None:
    pipe, _ = make()
    tlm = advert(-70, svc={EDDYSTONE_SERVICE_UUID: EDDYSTONE_TLM})
    pipe.on_advertisement(device("A0:00:00:00:00:02"), tlm)  # before any UID: nothing to tie to
    assert pipe.take(1.0) is None
    pipe.on_advertisement(
        device("A0:00:00:00:00:02"), advert(-70, svc={EDDYSTONE_SERVICE_UUID: EDDYSTONE_UID})
    )
    pipe.take(2.0)
    pipe.on_advertisement(device("A0:00:00:00:00:02"), tlm)  # a later window, TLM only
    batch = pipe.take(3.0)
    assert batch is not None
    assert batch.beacons == (ED,)
    assert batch.b == ()
    assert batch.tlm == (Telemetry(ED, 3000, 24.5, 1024, 1000.0),)
    assert decode_batch(encode_batch(batch)) == batch


def test_a_full_window_is_taken_early() -> None:
    taken: list[int] = []
    pipe, _ = make(max_samples=3)
    pipe.on_full = lambda: taken.append(len(pipe.batcher))
    for _ in range(7):
        pipe.on_advertisement(device(), advert(-60, {APPLE_COMPANY_ID: IBEACON}))
        if taken and len(pipe.batcher) == taken[-1]:
            pipe.take(1.0)
    assert taken == [3, 3]


@settings(max_examples=200, deadline=None)
@given(
    rssi=st.integers(-200, 200),
    mfg=st.dictionaries(st.integers(0, 0xFFFF), st.binary(max_size=32), max_size=3),
    eddy=st.one_of(st.none(), st.binary(max_size=32)),
)
def test_any_advertisement_goes_through_the_callback_without_raising(
    rssi: int, mfg: dict[int, bytes], eddy: bytes | None
) -> None:
    pipe, _ = make()
    svc = {} if eddy is None else {EDDYSTONE_SERVICE_UUID: eddy}
    pipe.on_advertisement(device(), advert(rssi, mfg, svc))
    batch = pipe.take(1.0)
    if batch is not None:
        assert decode_batch(encode_batch(batch)) == batch


# --- config


def test_example_config_loads() -> None:
    config = load_gateway_config(Path(__file__).parents[2] / "config" / "gateway.yaml", environ={})
    assert config.scanner.mode == "active"
    assert config.broker.port == 1883


def test_env_and_overrides_win_and_secrets_stay_masked(tmp_path: Path) -> None:
    path = tmp_path / "g.yaml"
    path.write_text("gateway_id: gw-1\nsite: s1\nbroker: {url: 'mqtts://broker.example'}\n")
    config = load_gateway_config(
        path,
        overrides={"broker.username": "gw-1"},
        environ={"BEACON_GATEWAY__BROKER__PASSWORD": "hunter2"},
    )
    assert config.broker.port == 8883
    assert config.broker.use_tls
    assert config.broker.read_password() == "hunter2"
    assert "hunter2" not in repr(config)
    assert "hunter2" not in str(config.model_dump())


@pytest.mark.parametrize(
    ("text", "where"),
    [
        ("gateway_id: GW\nsite: s1\n", "gateway_id"),
        ("gateway_id: gw\nsite: s1\nbroker: {url: 'http://host'}\n", "broker.url"),
        ("gateway_id: gw\nsite: s1\nscanner: {source: replay}\n", "scanner"),
        ("gateway_id: gw\nsite: s1\nfilters: {ibeacon_uuids: [abc]}\n", "filters.ibeacon_uuids"),
        ("gateway_id: gw\nsite: s1\nscanner: {mode: sleepy}\n", "scanner.mode"),
        ("gateway_id: gw\nsite: s1\nbufer: {}\n", "bufer"),
    ],
)
def test_bad_config_names_file_line_and_key(tmp_path: Path, text: str, where: str) -> None:
    path = tmp_path / "g.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as info:
        load_gateway_config(path, environ={})
    assert f"{path}:" in str(info.value)
    assert where in str(info.value)


@pytest.mark.parametrize(
    "broker",
    [
        "{url: 'mqtt://gw:s3cr3t-pw@host', keepalive_s: 1}",  # a later error in the section
        "{url: 'mqtt://host', username: gw, password: 's3cr3t-pw', tls: {cert_file: x}}",
        "{url: 'mqtt://host', password: 's3cr3t-pw', password_file: /x}",
    ],
)
def test_errors_never_print_the_password(tmp_path: Path, broker: str) -> None:
    path = tmp_path / "g.yaml"
    path.write_text(f"gateway_id: gw\nsite: s1\nbroker: {broker}\n")
    with pytest.raises(ConfigError) as info:
        load_gateway_config(path, environ={"BEACON_GATEWAY__BROKER__PASSWORD": "s3cr3t-pw"})
    assert "s3cr3t-pw" not in str(info.value)


def test_credentials_in_the_url_move_out_of_it() -> None:
    config = load_gateway_config(
        None, {"gateway_id": "gw", "site": "s", "broker.url": "mqtt://gw%401:p%3Aw@host:1884"}, {}
    )
    assert config.broker.url == "mqtt://host:1884"
    assert config.broker.username == "gw@1"
    assert config.broker.read_password() == "p:w"
    numeric = load_gateway_config(
        None, {"gateway_id": "gw", "site": "s"}, {"BEACON_GATEWAY__BROKER__PASSWORD": "123456"}
    )
    assert numeric.broker.read_password() == "123456"


@pytest.mark.parametrize(
    ("section", "where"),
    [
        ('scanner: {source: replay, replay_file: "a\\0b"}', "scanner.replay_file"),
        ('buffer: {dir: "spool\\0"}', "buffer.dir"),
        ('broker: {password_file: "\\0pw"}', "broker.password_file"),
        ('broker: {tls: {ca_file: "ca\\0.pem"}}', "broker.tls.ca_file"),
        ('buffer: {dir: "spool\\ud800"}', "buffer.dir"),  # no file system can write it
    ],
)
def test_a_path_no_file_can_have_is_refused_with_its_line(
    tmp_path: Path, section: str, where: str
) -> None:
    """Not a ValueError later, where the daemon opens the file (buffer.py, scanner.py)."""
    path = tmp_path / "g.yaml"
    path.write_text(f"gateway_id: gw\nsite: s1\n{section}\n")
    with pytest.raises(ConfigError) as info:
        load_gateway_config(path, environ={})
    assert f"{path}:3: {where}: a path cannot contain" in str(info.value)


def test_an_unreadable_password_file_is_a_config_error_naming_it(tmp_path: Path) -> None:
    secret = tmp_path / "mqtt-password"
    secret.write_bytes(b"s3cr3t\xff\n")
    config = load_gateway_config(
        None,
        {"gateway_id": "gw", "site": "s", "broker.username": "gw", "broker.password_file": secret},
        {},
    )
    with pytest.raises(ConfigError) as info:
        config.broker.read_password()
    assert f"broker.password_file {secret}: not UTF-8 text" in str(info.value)
    assert "s3cr3t" not in str(info.value)
    assert "xff" not in str(info.value)  # not even the byte that failed
    for missing in (tmp_path / "none", Path("a\0b")):  # the NUL only through code, not config
        broker = config.broker.model_copy(update={"password_file": missing})
        with pytest.raises(ConfigError, match=r"broker\.password_file"):
            broker.read_password()


def test_defaults_are_what_the_issue_asks() -> None:
    config = GatewayConfig(gateway_id="gw", site="s")
    assert config.scanner.watchdog_silence_s == 90.0
    assert config.batching.window_s == 1.0


def test_buffer_persist_is_outage_unless_set_and_refuses_other_words(tmp_path: Path) -> None:
    assert GatewayConfig(gateway_id="gw", site="s").buffer.persist == "outage"
    environ = {"BEACON_GATEWAY__BUFFER__PERSIST": "every_batch"}
    config = load_gateway_config(None, {"gateway_id": "gw", "site": "s"}, environ)
    assert config.buffer.persist == "every_batch"
    path = tmp_path / "g.yaml"
    path.write_text("gateway_id: gw\nsite: s1\nbuffer: {persist: always}\n")
    with pytest.raises(ConfigError) as info:
        load_gateway_config(path, environ={})
    assert f"{path}:3: buffer.persist" in str(info.value)
    assert "every_batch" in str(info.value)
