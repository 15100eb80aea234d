"""`beacon-hub provision`: what it writes, with which permissions, and what it never prints.
The broker's side of it (that Mosquitto accepts these entries) is tests/integration/
test_security.py."""

from __future__ import annotations

import shutil
import stat
import subprocess
from pathlib import Path

import pytest

from beacon_hub.cli import main
from beacon_hub.hubconfig import load_hub_config
from beacon_hub.provision import (
    gateway_acl,
    hub_acl,
    mosquitto_password_entry,
    verify_mosquitto_password,
)
from gateway.config import load_gateway_config


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_password_entry_matches_mosquitto_passwd(tmp_path: Path) -> None:
    ours = mosquitto_password_entry("gw.s1.g1", "correct horse")
    assert verify_mosquitto_password(ours, "correct horse")
    assert not verify_mosquitto_password(ours, "correct horsE")
    tool = shutil.which("mosquitto_passwd")
    assert tool is not None, "mosquitto_passwd missing: apt install mosquitto"
    path = tmp_path / "passwd"
    subprocess.run([tool, "-b", "-c", str(path), "gw.s1.g1", "correct horse"], check=True)
    theirs = path.read_text()
    # Same format (user:$7$101$salt$hash), so each side verifies the other's.
    assert theirs.split("$")[:3] == ours.split("$")[:3]
    assert verify_mosquitto_password(theirs, "correct horse")


def test_gateway_acl_writes_only_its_own_topics_and_reads_nothing() -> None:
    acl = gateway_acl("s1", "g1").splitlines()
    assert acl[0] == "user gw.s1.g1"
    assert sorted(acl[1:]) == [
        "topic write beacons/s1/gateway/g1/heartbeat",
        "topic write beacons/s1/gateway/g1/readings",
        "topic write beacons/s1/gateway/g1/status",
    ]
    hub = hub_acl("h", ["s1", "s2"])
    assert "topic read beacons/s2/gateway/+/readings" in hub
    assert "topic write beacons/s1/promotion/+" in hub
    assert not any(line.startswith("topic readwrite") for line in hub.splitlines())


def test_provision_gateway_writes_secrets_0600_and_prints_none(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "out"
    argv = ["provision", "gateway", "--site", "s1", "--id", "g1", "--out", str(out)]
    code = main([*argv, "--ca", str(tmp_path / "ca"), "--broker", "mqtts://broker.example:8883"])
    assert code == 0
    printed = capsys.readouterr()
    password = (out / "gateway" / "mqtt-password").read_text().strip()
    assert len(password) >= 40
    assert password not in printed.out + printed.err
    assert str(out / "gateway" / "gateway.yaml") in printed.err
    for secret in ("gateway/mqtt-password", "gateway/client.key", "broker/passwd"):
        assert _mode(out / secret) == 0o600, secret
    assert _mode(tmp_path / "ca" / "ca.key") == 0o600
    assert verify_mosquitto_password((out / "broker" / "passwd").read_text(), password)
    cfg = load_gateway_config(out / "gateway" / "gateway.yaml")
    assert cfg.site == "s1"
    assert cfg.gateway_id == "g1"
    assert cfg.broker.username == "gw.s1.g1"
    assert cfg.broker.port == 8883
    assert cfg.broker.password_file == Path("/etc/beacon-gateway/mqtt-password")
    assert cfg.broker.tls is not None
    assert cfg.broker.tls.cert_file == Path("/etc/beacon-gateway/client.crt")
    assert password not in (out / "gateway" / "gateway.yaml").read_text()
    # The client certificate is the site CA's, for this user.
    subject = subprocess.run(
        ["openssl", "x509", "-noout", "-subject", "-in", str(out / "gateway" / "client.crt")],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    assert "gw.s1.g1" in subject
    verify = subprocess.run(
        [
            "openssl",
            "verify",
            "-CAfile",
            str(tmp_path / "ca" / "ca.crt"),
            str(out / "gateway" / "client.crt"),
        ],
        check=False,
        capture_output=True,
    )
    assert verify.returncode == 0


LOOPBACK = ["--broker", "mqtt://127.0.0.1:1883"]
"""The broker's plain loopback listener (deploy/mosquitto/mosquitto.conf): no certificate."""


def test_provision_refuses_to_overwrite_without_force(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["provision", "gateway", "--site", "s1", "--id", "g1", "--out", str(tmp_path)]
    argv += LOOPBACK
    assert main(argv) == 0
    first = (tmp_path / "gateway" / "mqtt-password").read_text()
    capsys.readouterr()
    assert main(argv) == 1
    assert "--force" in capsys.readouterr().err
    assert (tmp_path / "gateway" / "mqtt-password").read_text() == first
    assert main([*argv, "--force"]) == 0
    assert (tmp_path / "gateway" / "mqtt-password").read_text() != first


def test_provision_hub_for_two_sites(tmp_path: Path) -> None:
    argv = ["provision", "hub", "--site", "s1,s2", "--id", "main", "--out", str(tmp_path)]
    assert main([*argv, *LOOPBACK, "--install-dir", "/opt/hub"]) == 0
    cfg = load_hub_config(tmp_path / "hub" / "hub.yaml")
    assert [s.site for s in cfg.sites] == [
        Path("/opt/hub/sites/s1.yaml"),
        Path("/opt/hub/sites/s2.yaml"),
    ]
    assert cfg.broker.username == "hub.main"
    assert cfg.broker.client_id == "beacon-hub-main"
    assert cfg.broker.tls is None  # the loopback listener: no TLS
    acl = (tmp_path / "broker" / "acl").read_text()
    assert "topic read beacons/s1/gateway/+/readings" in acl
    assert "topic read beacons/s2/gateway/+/readings" in acl


def test_bad_ids_are_refused_with_a_clear_message(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["provision", "gateway", "--site", "S 1", "--id", "g1", "--out", str(tmp_path)]
    assert main(argv) == 1
    assert "site id 'S 1'" in capsys.readouterr().err
    assert not (tmp_path / "gateway").exists()
    two = [
        "provision",
        "gateway",
        "--site",
        "a",
        "--site",
        "b",
        "--id",
        "g1",
        "--out",
        str(tmp_path),
    ]
    assert main(two) == 1
    assert "exactly one --site" in capsys.readouterr().err


@pytest.mark.parametrize("role", ["gateway", "hub"])
def test_tls_without_a_site_ca_is_refused_before_anything_is_written(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], role: str
) -> None:
    """The shipped TLS listener wants a site-CA client certificate (require_certificate true):
    a config for it without one could never connect."""
    for broker in ([], ["--broker", "mqtts://broker.example:8883"]):
        argv = ["provision", role, "--site", "s1", "--id", "g1", "--out", str(tmp_path / "o")]
        assert main([*argv, *broker]) == 1
        err = capsys.readouterr().err
        assert "--ca DIR" in err
        assert "require_certificate" in err
        assert not (tmp_path / "o").exists()


def test_a_rotation_without_a_ca_leaves_no_earlier_certificate_behind(tmp_path: Path) -> None:
    argv = ["provision", "gateway", "--site", "s1", "--id", "g1", "--out", str(tmp_path / "o")]
    ca = ["--ca", str(tmp_path / "ca"), "--broker", "mqtts://broker.example:8883"]
    assert main([*argv, *ca]) == 0
    device = tmp_path / "o" / "gateway"
    assert (device / "client.key").exists()
    assert main([*argv, *LOOPBACK, "--force"]) == 0
    assert sorted(p.name for p in device.iterdir()) == ["gateway.yaml", "mqtt-password"]
    assert load_gateway_config(device / "gateway.yaml").broker.tls is None
