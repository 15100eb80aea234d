"""One loader for every program's config: file, then environment, then --set overrides."""

from pathlib import Path

import pytest
from pydantic import BaseModel, ConfigDict, StrictFloat, StrictInt, StrictStr

from beacon_hub.commands import overrides_from
from beacon_hub.config_loader import (
    MAX_ALIAS_EXPANSION_NODES,
    format_loc,
    load_model,
    parse_yaml_text,
)
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


# --- untrusted YAML: every failure is a ConfigError naming the file and line


def test_an_alias_inside_its_own_node_is_refused_with_its_line() -> None:
    with pytest.raises(ConfigError) as info:
        parse_yaml_text("site: a\nx: &a [*a]\n", "g.yaml")
    assert info.value.problems == [
        "g.yaml:2: x[0]: an alias inside the node it names; a config cannot contain itself"
    ]


def laughs(levels: int, copies: int = 10) -> str:
    """A "billion laughs": each level holds `copies` aliases of the one before."""
    return "site: a\nl0: &l0 [x, x, x, x, x, x, x, x, x, x]\n" + "".join(
        f"l{i}: &l{i} [" + ", ".join([f"*l{i - 1}"] * copies) + "]\n" for i in range(1, levels + 1)
    )


def test_an_alias_explosion_is_refused_naming_a_line(tmp_path: Path) -> None:
    path = tmp_path / "p.yaml"
    path.write_text(laughs(9))  # 356 bytes standing for 10**10 values
    with pytest.raises(ConfigError) as info:
        load_model(Program, path=path)
    (problem,) = info.value.problems
    assert problem.startswith(f"{path}:10: aliases of this node and others expand the document")
    assert f"{MAX_ALIAS_EXPANSION_NODES:,} more are allowed" in problem


def test_aliases_within_the_bound_are_read_once_and_shared() -> None:
    doc = parse_yaml_text(laughs(3), "g.yaml")  # 11,110 values, 50 written
    assert doc.data["l3"][9][9] is doc.data["l1"]
    assert len(doc.origins) < 100  # each aliased node indexed once, not once per alias
    assert doc.where(("l3", 9, 9, 9)) == "g.yaml:4"  # inside an alias: the aliased node's line
    shared = parse_yaml_text("a: &b {url: mqtt://h}\nc: *b\nd:\n  <<: *b\n  url: x\n", "g.yaml")
    assert shared.data == {"a": {"url": "mqtt://h"}, "c": {"url": "mqtt://h"}, "d": {"url": "x"}}


@pytest.mark.parametrize(
    "value",
    [
        "!!float",
        "!!float abc",
        "!!int abc",
        "!!int",
        "!!timestamp 2020-13-45",
        "!!timestamp 2020-01-01 99:00",
        "1" * 5000,
        "!!bool maybe",
    ],
)
def test_a_value_yaml_cannot_build_is_refused_with_its_line(value: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_yaml_text(f"site: a\nbroker:\n  keepalive_s: {value}\n", "g.yaml")
    (problem,) = info.value.problems
    assert problem.startswith("g.yaml:3:16: not valid YAML: ")
    assert "is not a valid" in problem


def test_a_value_yaml_cannot_build_in_the_environment_names_the_variable() -> None:
    with pytest.raises(ConfigError) as info:
        load_model(Program, env_prefix="BEACON_HUB", environ={"BEACON_HUB__SITE": "!!float abc"})
    assert info.value.problems[0].startswith("environment BEACON_HUB__SITE:1:1: not valid YAML")


@pytest.mark.parametrize("option", [".=1", "..=1"])
def test_a_set_option_naming_no_key_is_refused(option: str) -> None:
    overrides = overrides_from([option])
    with pytest.raises(ConfigError) as info:
        load_model(Program, overrides={**overrides, "site": "a"})
    assert info.value.problems == [
        f"command line {option.partition('=')[0]}: names no key; expected section.key=value"
    ]


def test_an_empty_override_key_is_refused() -> None:
    with pytest.raises(ConfigError, match="names no key"):
        load_model(Program, overrides={"": 1, "site": "a"})


@pytest.mark.parametrize("char", ["\x00", "\x19", "\x7f"])
def test_a_control_character_is_refused_with_its_line(char: str) -> None:
    with pytest.raises(
        ConfigError, match=rf"g\.yaml:2: not valid YAML: character U\+{ord(char):04X}"
    ):
        parse_yaml_text(f"a: 1\nb: 2{char}\n", "g.yaml")


def test_a_list_as_a_key_is_refused_before_its_aliases_expand() -> None:
    """`str()` of a collection key expanded its aliases: 9 levels of 9 ran for minutes."""
    text = "? &k0 [x, x, x, x, x, x, x, x, x]\n: 1\n" + "".join(
        f"? &k{i} [{', '.join([f'*k{i - 1}'] * 9)}]\n: 1\n" for i in range(1, 9)
    )
    with pytest.raises(ConfigError, match=r"g\.yaml:1: \(top level\): a key must be a plain name"):
        parse_yaml_text(text, "g.yaml")


def test_a_set_option_that_makes_a_section_of_a_value_is_blamed_on_the_option() -> None:
    """`--set x.y=1` where x is a value: the error named the defaults, not the option."""
    with pytest.raises(ConfigError) as info:
        load_model(Program, overrides={"site": "s", "tick_interval_s.x": 1})
    assert "settings: 1 problem" in str(info.value)
    assert "command line tick_interval_s.x: tick_interval_s: expected" in str(info.value)


def test_a_section_of_a_larger_config_serves_as_the_model(tmp_path: Path) -> None:
    """`replay --config` takes the hub's config: its engine: section (a file of the engine's
    keys alone as well), errors located at their lines in the whole file."""
    hub = tmp_path / "hub.yaml"
    hub.write_text("sites: [a.yaml]\nengine:\n  url: mqtt://section\n  keepalive_s: 10\n")
    assert load_model(Broker, path=hub, section="engine") == Broker(
        url="mqtt://section", keepalive_s=10
    )
    bare = tmp_path / "engine.yaml"
    bare.write_text("keepalive_s: 20\n")
    assert load_model(Broker, path=bare, section="engine").keepalive_s == 20
    hub.write_text("sites: [a.yaml]\nengine:\n  keepalive_s: soon\n")
    with pytest.raises(ConfigError, match=r"hub\.yaml:3: keepalive_s: expected an integer"):
        load_model(Broker, path=hub, section="engine")
    hub.write_text("engine: 3\n")
    with pytest.raises(ConfigError, match=r"hub\.yaml:1: engine: expected a mapping of keys"):
        load_model(Broker, path=hub, section="engine")
