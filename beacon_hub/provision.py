"""Broker credentials for gateways and hubs: password-file entry, ACL entry, client certificate
from a site CA, and a ready config (docs/security.md, Provisioning).

Runs on the broker host (where the password file lives). What it writes:

    {out}/broker/passwd    `user:$7$...` lines to append to Mosquitto's password_file (0600)
    {out}/broker/acl       the user's ACL entry to append to Mosquitto's acl_file
    {out}/{role}/          what goes to the device: {role}.yaml, mqtt-password (0600) and, with a
                           site CA, ca.crt, client.crt, client.key (0600)

The password is 32 random bytes; it is written to files only, never returned, printed or
logged. Certificates are made by the `openssl` command (present on every Debian and Raspberry Pi
OS); the private keys never pass through a world-readable file.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import secrets
import shutil
import socket
import subprocess
import tempfile
import urllib.parse
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from beacon_hub.errors import BeaconHubError
from beacon_hub.ids import check_name_id
from beacon_hub.wire import TOPIC_ROOT

__all__ = [
    "CLIENT_CERT_DAYS",
    "MOSQUITTO_PBKDF2_ITERATIONS",
    "Provisioned",
    "SiteCa",
    "default_broker_url",
    "ensure_site_ca",
    "gateway_acl",
    "gateway_username",
    "hub_acl",
    "hub_username",
    "issue_certificate",
    "mosquitto_password_entry",
    "provision_gateway",
    "provision_hub",
    "reader_acl",
    "verify_mosquitto_password",
    "write_secret",
]

MOSQUITTO_PBKDF2_ITERATIONS = 101
"""Mosquitto 2.0's `mosquitto_passwd` default for its `$7$` (PBKDF2-SHA512) hashes. The count
matters only for guessable passwords; ours are 256 random bits, beyond any brute force."""
_SALT_BYTES = 12
"""Salt length Mosquitto 2.0 writes (password_mosq.c, SALT_LEN)."""
PASSWORD_BYTES = 32
CA_DAYS = 3650
"""A site CA lives as long as the site's hardware: ten years."""
CLIENT_CERT_DAYS = 825
"""Leaf certificates: 825 days, the longest lifetime Apple's and the CA/Browser Forum's rules
accepted for years; re-provision a device before then."""
_CURVE = "prime256v1"
"""NIST P-256: supported by every TLS stack a Pi or a broker runs, small and fast to verify."""

Role = Literal["gateway", "hub"]


@dataclass(frozen=True)
class SiteCa:
    """A site CA: `ca.crt` signs the broker's and the clients' certificates; `ca.key` stays on
    the provisioning host."""

    folder: Path

    @property
    def cert(self) -> Path:
        return self.folder / "ca.crt"

    @property
    def key(self) -> Path:
        return self.folder / "ca.key"


@dataclass(frozen=True)
class Provisioned:
    """What one provisioning run wrote (paths only: the secret stays in the files)."""

    username: str
    config: Path
    password_file: Path
    broker_passwd: Path
    broker_acl: Path
    ca_cert: Path | None = None
    client_cert: Path | None = None
    client_key: Path | None = None
    created_ca: bool = False
    files: list[Path] = field(default_factory=list)


# ------------------------------------------------------------------------------- names, ACLs


def gateway_username(site: str, gateway: str) -> str:
    """`gw.{site}.{gateway}`: gateway ids are unique per site only; ids hold no dots."""
    return f"gw.{check_name_id(site, 'site id')}.{check_name_id(gateway, 'gateway id')}"


def hub_username(hub: str) -> str:
    return f"hub.{check_name_id(hub, 'hub id')}"


def gateway_acl(site: str, gateway: str) -> str:
    """A gateway writes its own readings, status (also its last will) and heartbeat, and reads
    nothing: no `read` line, so every subscription is refused and nothing is delivered."""
    base = f"{TOPIC_ROOT}/{site}/gateway/{gateway}"
    return "".join(
        [
            f"user {gateway_username(site, gateway)}\n",
            f"topic write {base}/readings\n",
            f"topic write {base}/status\n",
            f"topic write {base}/heartbeat\n",
        ]
    )


def hub_acl(hub: str, sites: Iterable[str]) -> str:
    """A hub reads its sites' gateway topics and writes their outputs (DESIGN.md, MQTT)."""
    lines = [f"user {hub_username(hub)}\n"]
    for site in sites:
        root = f"{TOPIC_ROOT}/{check_name_id(site, 'site id')}"
        lines += [
            f"topic read {root}/gateway/+/readings\n",
            f"topic read {root}/gateway/+/status\n",
            f"topic read {root}/gateway/+/heartbeat\n",
            f"topic write {root}/track/+\n",
            f"topic write {root}/tracks\n",
            f"topic write {root}/event/+\n",
            f"topic write {root}/promotion/+\n",
            # Consent is retained there; a hub both learns it and publishes API grants.
            f"topic read {root}/consent/+\n",
            f"topic write {root}/consent/+\n",
        ]
    return "".join(lines)


def reader_acl(username: str, sites: Iterable[str], *, promotions: bool) -> str:
    """Dashboards read outputs only; store systems (promotions=True) also read promotions."""
    lines = [f"user {username}\n"]
    for site in sites:
        root = f"{TOPIC_ROOT}/{check_name_id(site, 'site id')}"
        lines += [f"topic read {root}/track/+\n", f"topic read {root}/tracks\n"]
        lines += [f"topic read {root}/event/+\n", f"topic read {root}/gateway/+/status\n"]
        if promotions:
            # The retailer's app backend: receives promotions and registers shoppers' consent.
            lines.append(f"topic read {root}/promotion/+\n")
            lines.append(f"topic write {root}/consent/+\n")
    return "".join(lines)


# -------------------------------------------------------------------------------- passwords


def mosquitto_password_entry(username: str, password: str, *, salt: bytes | None = None) -> str:
    """One line of Mosquitto 2.0's password file: `user:$7$iterations$salt$hash` (base64),
    the hash being PBKDF2-HMAC-SHA512 over the password, as `mosquitto_passwd` writes it."""
    if not username or ":" in username or "\n" in username:
        raise BeaconHubError(f"broker username {username!r} may not be empty or hold ':'")
    salt = secrets.token_bytes(_SALT_BYTES) if salt is None else salt
    digest = hashlib.pbkdf2_hmac(
        "sha512", password.encode(), salt, MOSQUITTO_PBKDF2_ITERATIONS, dklen=64
    )
    b64 = base64.b64encode
    return (
        f"{username}:$7${MOSQUITTO_PBKDF2_ITERATIONS}${b64(salt).decode()}${b64(digest).decode()}\n"
    )


def verify_mosquitto_password(entry: str, password: str) -> bool:
    """Does a `$7$` password-file line accept `password`? (Checks files we did not write.)"""
    _user, _, hashed = entry.strip().partition(":")
    parts = hashed.split("$")
    if len(parts) != 5 or parts[1] != "7":
        raise BeaconHubError("not a Mosquitto $7$ (PBKDF2-SHA512) password entry")
    iterations, salt, want = int(parts[2]), base64.b64decode(parts[3]), base64.b64decode(parts[4])
    got = hashlib.pbkdf2_hmac("sha512", password.encode(), salt, iterations, dklen=len(want))
    return hmac.compare_digest(got, want)


def write_secret(path: Path, text: str) -> Path:
    """Write `text` readable by the owner only (0600), also when `path` existed wider."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.fchmod(fd, 0o600)
        os.write(fd, text.encode())
    finally:
        os.close(fd)
    return path


def _write_public(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


# ----------------------------------------------------------------------------- certificates


def _openssl(args: Sequence[str], *, what: str, stdin: bytes | None = None) -> bytes:
    binary = shutil.which("openssl")
    if binary is None:
        raise BeaconHubError(f"{what}: the `openssl` command is missing (apt install openssl)")
    done = subprocess.run(  # noqa: S603  # fixed binary, our own arguments, no shell
        [binary, *args], input=stdin, capture_output=True, check=False
    )
    if done.returncode != 0:
        detail = done.stderr.decode(errors="replace").strip()[-600:]
        raise BeaconHubError(f"{what}: openssl {args[0]} failed: {detail}")
    return done.stdout


def _new_key(path: Path, what: str) -> None:
    """An EC key straight from openssl's stdout into a 0600 file."""
    pem = _openssl(
        ["genpkey", "-algorithm", "EC", "-pkeyopt", f"ec_paramgen_curve:{_CURVE}"], what=what
    )
    write_secret(path, pem.decode())


def ensure_site_ca(folder: Path, name: str = "beacon-hub site CA") -> tuple[SiteCa, bool]:
    """The CA in `folder`, created (key 0600) if it holds none; True when created."""
    ca = SiteCa(Path(folder))
    if ca.cert.exists() and ca.key.exists():
        return ca, False
    if ca.cert.exists() or ca.key.exists():
        raise BeaconHubError(f"site CA {folder}: ca.crt and ca.key go together; one is missing")
    ca.folder.mkdir(parents=True, exist_ok=True)
    _new_key(ca.key, f"site CA {folder}")
    _openssl(
        [
            "req", "-x509", "-new", "-key", str(ca.key), "-out", str(ca.cert),
            "-days", str(CA_DAYS), "-subj", f"/CN={name}", "-sha256",
            "-addext", "basicConstraints=critical,CA:TRUE,pathlen:0",
            "-addext", "keyUsage=critical,keyCertSign,cRLSign",
        ],
        what=f"site CA {folder}",
    )  # fmt: skip
    return ca, True


def issue_certificate(
    ca: SiteCa,
    common_name: str,
    cert_path: Path,
    key_path: Path,
    *,
    server_names: Sequence[str] = (),
    days: int = CLIENT_CERT_DAYS,
) -> None:
    """A leaf certificate signed by the site CA. With `server_names` (host names or IP
    addresses) it is a server certificate for the broker; otherwise a client certificate."""
    what = f"certificate for {common_name}"
    _new_key(key_path, what)
    if server_names:
        alt = ",".join(f"IP:{n}" if _is_ip(n) else f"DNS:{n}" for n in server_names)
        ext = f"extendedKeyUsage=serverAuth\nsubjectAltName={alt}\n"
    else:
        ext = "extendedKeyUsage=clientAuth\n"
    ext = f"basicConstraints=critical,CA:FALSE\nkeyUsage=critical,digitalSignature\n{ext}"
    csr = _openssl(
        ["req", "-new", "-key", str(key_path), "-subj", f"/CN={common_name}", "-sha256"],
        what=what,
    )
    with tempfile.TemporaryDirectory() as tmp:
        ext_file = Path(tmp) / "ext.cnf"
        ext_file.write_text(ext)
        pem = _openssl(
            [
                "x509", "-req", "-CA", str(ca.cert), "-CAkey", str(ca.key),
                "-set_serial", str(secrets.randbits(63)), "-days", str(days), "-sha256",
                "-extfile", str(ext_file),
            ],
            what=what,
            stdin=csr,
        )  # fmt: skip
    _write_public(cert_path, pem.decode())


def _is_ip(name: str) -> bool:
    try:
        socket.inet_pton(socket.AF_INET6 if ":" in name else socket.AF_INET, name)
    except OSError:
        return False
    return True


# ------------------------------------------------------------------------------ provisioning


def default_broker_url() -> str:
    """Provisioning runs on the broker host: its name and the TLS port."""
    return f"mqtts://{socket.getfqdn()}:8883"


def provision_gateway(
    site: str,
    gateway: str,
    out: Path,
    *,
    broker_url: str | None = None,
    ca_dir: Path | None = None,
    install_dir: Path = Path("/etc/beacon-gateway"),
    force: bool = False,
) -> Provisioned:
    """Credentials, ACL entry and a validated gateway.yaml for gateway `gateway` of `site`."""
    from gateway.config import load_gateway_config  # noqa: PLC0415  # the gateway's own schema

    username = gateway_username(site, gateway)
    cfg: dict[str, Any] = {
        "gateway_id": gateway,
        "site": site,
        "broker": {"client_id": f"beacon-gateway-{site}-{gateway}"},
    }
    result = _provision(
        "gateway", username, gateway_acl(site, gateway), cfg, out,
        broker_url=broker_url, ca_dir=ca_dir, install_dir=install_dir, force=force,
    )  # fmt: skip
    load_gateway_config(result.config)
    return result


def provision_hub(
    hub: str,
    sites: Sequence[str],
    out: Path,
    *,
    broker_url: str | None = None,
    ca_dir: Path | None = None,
    install_dir: Path = Path("/etc/beacon-hub"),
    force: bool = False,
) -> Provisioned:
    """Credentials, ACL entry and a validated hub.yaml for hub `hub` serving `sites` (their
    site files are expected at `{install_dir}/sites/{site}.yaml`)."""
    from beacon_hub.hubconfig import load_hub_config  # noqa: PLC0415  # numpy: keeps CLI fast

    if not sites:
        raise BeaconHubError("provision hub: give at least one --site")
    username = hub_username(hub)
    cfg: dict[str, Any] = {
        "sites": [{"site": str(install_dir / "sites" / f"{s}.yaml")} for s in sites],
        "broker": {"client_id": f"beacon-hub-{hub}"},
    }
    result = _provision(
        "hub", username, hub_acl(hub, sites), cfg, out,
        broker_url=broker_url, ca_dir=ca_dir, install_dir=install_dir, force=force,
    )  # fmt: skip
    load_hub_config(result.config)
    return result


def _provision(
    role: Role,
    username: str,
    acl: str,
    cfg: dict[str, Any],
    out: Path,
    *,
    broker_url: str | None,
    ca_dir: Path | None,
    install_dir: Path,
    force: bool,
) -> Provisioned:
    device = out / role
    config_path = device / f"{role}.yaml"
    url = broker_url or default_broker_url()
    if urllib.parse.urlsplit(url).scheme == "mqtts" and ca_dir is None:
        # Without a client certificate the config could not connect: the shipped TLS listener
        # wants one from the site CA besides the password (deploy/mosquitto/secure.conf).
        raise BeaconHubError(
            f"provision {role}: {url} is the broker's TLS listener, which wants a client"
            " certificate from the site CA (require_certificate true): pass --ca DIR (the"
            " site CA, created there on first use); on the broker host itself,"
            " --broker mqtt://127.0.0.1:1883 uses the loopback listener instead"
        )
    if config_path.exists() and not force:
        raise BeaconHubError(
            f"{config_path} exists: pass --force to rotate {username}'s credentials"
        )
    broker_dir = out / "broker"
    broker: dict[str, Any] = cfg["broker"]
    broker["url"] = url
    broker["username"] = username
    broker["password_file"] = str(install_dir / "mqtt-password")

    password = secrets.token_urlsafe(PASSWORD_BYTES)
    password_file = write_secret(device / "mqtt-password", password + "\n")
    passwd = write_secret(broker_dir / "passwd", mosquitto_password_entry(username, password))
    del password
    acl_path = _write_public(broker_dir / "acl", f"\n{acl}")
    files = [password_file]

    ca_cert = client_cert = client_key = None
    created = False
    if ca_dir is not None:
        ca, created = ensure_site_ca(ca_dir)
        ca_cert = device / "ca.crt"
        client_cert, client_key = device / "client.crt", device / "client.key"
        _write_public(ca_cert, ca.cert.read_text())
        issue_certificate(ca, username, client_cert, client_key)
        broker["tls"] = {
            "ca_file": str(install_dir / "ca.crt"),
            "cert_file": str(install_dir / "client.crt"),
            "key_file": str(install_dir / "client.key"),
        }
        files += [ca_cert, client_cert, client_key]
    else:
        # A rotation without a CA: an earlier run's certificate and key must not be copied to
        # the device with a config that no longer names them.
        for stale in ("ca.crt", "client.crt", "client.key"):
            (device / stale).unlink(missing_ok=True)
    header = (
        f"# beacon-hub provision {role}: broker user {username}. Install this folder's files in\n"
        f"# {install_dir}/ (docs/security.md, Provisioning).\n"
    )
    _write_public(config_path, header + yaml.safe_dump(cfg, sort_keys=False))
    files.insert(0, config_path)
    return Provisioned(
        username=username,
        config=config_path,
        password_file=password_file,
        broker_passwd=passwd,
        broker_acl=acl_path,
        ca_cert=ca_cert,
        client_cert=client_cert,
        client_key=client_key,
        created_ca=created,
        files=files,
    )
