"""One loader for every program's config: file, then environment, then --set overrides."""

from pathlib import Path

import pytest
from pydantic import BaseModel, ConfigDict, StrictFloat, StrictInt, StrictStr

from beacon_hub.commands import overrides_from
from beacon_hub.config_loader import format_loc, load_model
from beacon_hub.errors import BeaconHubError, ConfigError


class Broker(BaseModel):
    model_config = ConfigDict(extra="forbid")
    url: StrictStr = "mqtt://127.0.0.1:1883"
    keepalive_s: StrictInt = 30


class Program(BaseModel):
    model_config = ConfigDict(extra="forbid")
    site: StrictStr
    tick_interval_s: StrictFloat = 1.0
    broker: Broker = Broker()


def test_later_sources_win(tmp_path: Path) -> None:
    path = tmp_path / "p.yaml"
    path.write_text("site: a\nbroker:\n  url: mqtt://file\n  keepalive_s: 10\n")
    env = {"BEACON_HUB__BROKER__URL": "mqtt://env", "BEACON_HUB__TICK_INTERVAL_S": "0.5"}
    config = load_model(
        Program,
        path=path,
        env_prefix="BEACON_HUB",
        overrides=overrides_from(["broker.keepalive_s=60"]),
        environ=env,
    )
    assert config == Program(
        site="a", tick_interval_s=0.5, broker=Broker(url="mqtt://env", keepalive_s=60)
    )


def test_errors_name_their_source(tmp_path: Path) -> None:
    path = tmp_path / "p.yaml"
    path.write_text("site: a\nbroker:\n  url: 5\n")
    with pytest.raises(ConfigError) as info:
        load_model(
            Program,
            path=path,
            env_prefix="BEACON_HUB",
            overrides={"broker.keepalive_s": "often"},
            environ={"BEACON_HUB__TICK_INTERVAL_S": "soon"},
        )
    problems = info.value.problems
    assert any(p.startswith(f"{path}:3: broker.url: expected a string") for p in problems)
    assert any(
        p.startswith("environment BEACON_HUB__TICK_INTERVAL_S: tick_interval_s") for p in problems
    )
    assert any(
        p.startswith("command line broker.keepalive_s: broker.keepalive_s") for p in problems
    )


def test_bad_set_option_is_our_error() -> None:
    with pytest.raises(BeaconHubError, match="KEY=VALUE"):
        overrides_from(["broker.url"])


def test_format_loc() -> None:
    assert format_loc(("gateways", 3, "x")) == "gateways[3].x"
    assert format_loc(()) == "(top level)"
