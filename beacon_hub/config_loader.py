"""Load YAML files, environment and command-line overrides into one pydantic model.

The one place where configuration is read. Every program (site files, gateway, hub, simulator)
loads its schema through `load_model`, so every error looks the same: the file (or environment
variable, or command-line option), the line, the path inside the document (`gateways[3].x`) and
what was expected.

Imports only pydantic and PyYAML: the gateway uses it on a Pi Zero.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ValidationError

from beacon_hub.errors import ConfigError

__all__ = [
    "Loc",
    "Located",
    "format_loc",
    "load_model",
    "parse_override",
    "problems_to_error",
    "read_yaml",
    "validate_located",
]

Loc = tuple[str | int, ...]
"""A path inside a document: ("gateways", 3, "x")."""

M = TypeVar("M", bound=BaseModel)

MAX_CONFIG_BYTES = 16 * 1024 * 1024
"""Largest config or site file read: a 2,000-bay warehouse is about 1 MiB of YAML."""


@dataclass(frozen=True, slots=True)
class Located:
    """A document with, for each path in it, where it came from (file and line, env var, flag)."""

    data: Any
    origins: Mapping[Loc, str]
    source: str

    def where(self, loc: Loc) -> str:
        """The origin of the longest known prefix of `loc`."""
        for end in range(len(loc), -1, -1):
            origin = self.origins.get(loc[:end])
            if origin is not None:
                return origin
        return self.source


def format_loc(loc: Iterable[str | int]) -> str:
    """("gateways", 3, "x") -> "gateways[3].x"."""
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else str(part)
    return out or "(top level)"


def read_yaml(path: Path) -> Located:
    """Read a YAML file, keeping the line of every key and list item.

    Refuses duplicate keys, which PyYAML would otherwise resolve silently to the last one.
    """
    source = str(path)
    try:
        size = path.stat().st_size
        if size > MAX_CONFIG_BYTES:
            raise ConfigError(
                source, [f"{source}: file of {size} bytes exceeds {MAX_CONFIG_BYTES}"]
            )
        text = path.read_text(encoding="utf-8")
    except OSError as e:
        raise ConfigError(source, [f"{source}: cannot read: {e.strerror or e}"]) from e
    except UnicodeDecodeError as e:
        raise ConfigError(
            source, [f"{source}: not UTF-8 text ({e.reason} at byte {e.start})"]
        ) from e
    return parse_yaml_text(text, source)


def parse_yaml_text(text: str, source: str) -> Located:
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
        data = yaml.safe_load(text)
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark
        where = f"{source}:{mark.line + 1}:{mark.column + 1}" if mark else source
        raise ConfigError(source, [f"{where}: not valid YAML: {e.problem}"]) from e
    except yaml.YAMLError as e:
        raise ConfigError(source, [f"{source}: not valid YAML: {e}"]) from e
    except RecursionError as e:
        raise ConfigError(source, [f"{source}: nested too deeply"]) from e
    origins: dict[Loc, str] = {}
    duplicates: list[str] = []
    if node is not None:
        _index_node(node, (), source, origins, duplicates)
    if duplicates:
        raise ConfigError(source, duplicates)
    return Located(data={} if data is None else data, origins=origins, source=source)


def _index_node(
    node: yaml.Node, loc: Loc, source: str, origins: dict[Loc, str], duplicates: list[str]
) -> None:
    origins[loc] = f"{source}:{node.start_mark.line + 1}"
    if isinstance(node, yaml.MappingNode):
        seen: set[str] = set()
        for key_node, value_node in node.value:
            key = str(key_node.value)
            if key in seen:
                duplicates.append(
                    f"{source}:{key_node.start_mark.line + 1}: {format_loc((*loc, key))}: "
                    "key given twice; each key may appear once"
                )
            seen.add(key)
            _index_node(value_node, (*loc, key), source, origins, duplicates)
            origins[(*loc, key)] = f"{source}:{key_node.start_mark.line + 1}"
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            _index_node(item, (*loc, i), source, origins, duplicates)


def parse_override(text: str, source: str) -> Any:
    """A value from the environment or the command line, read as a YAML scalar or flow list."""
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise ConfigError(source, [f"{source}: {text!r} is not a valid value"]) from e


def _set_path(data: dict[str, Any], path: Sequence[str], value: Any, source: str) -> None:
    node = data
    for i, key in enumerate(path[:-1]):
        child = node.get(key)
        if child is None:
            child = node[key] = {}
        elif not isinstance(child, dict):
            raise ConfigError(source, [f"{source}: {'.'.join(path[: i + 1])} is not a section"])
        node = child
    node[path[-1]] = value


def load_model(
    model: type[M],
    *,
    path: Path | None = None,
    env_prefix: str | None = None,
    overrides: Mapping[str, Any] | None = None,
    environ: Mapping[str, str] | None = None,
) -> M:
    """Build `model` from a YAML file, then environment, then command-line overrides.

    Later sources win. Environment variables are `{env_prefix}__SECTION__KEY=value`
    (case-insensitive keys); overrides are dotted paths (`broker.url`) to values, typically from
    repeated `--set broker.url=...` options, so no flag is copied into the config by hand.
    """
    if path is not None:
        located = read_yaml(path)
        if not isinstance(located.data, dict):
            raise ConfigError(str(path), [f"{path}: the top level must be a mapping of keys"])
        data: dict[str, Any] = located.data
        origins = dict(located.origins)
        source = located.source
    else:
        data, origins, source = {}, {}, "defaults"
    env = os.environ if environ is None else environ
    if env_prefix:
        head = f"{env_prefix.upper()}__"
        for name in sorted(env):
            if name.upper().startswith(head):
                keys = [k.lower() for k in name[len(head) :].split("__") if k]
                if keys:
                    where = f"environment {name}"
                    _set_path(data, keys, parse_override(env[name], where), where)
                    origins[tuple(keys)] = where
    for dotted, value in (overrides or {}).items():
        keys = [k for k in dotted.split(".") if k]
        where = f"command line {dotted}"
        _set_path(data, keys, value, where)
        origins[tuple(keys)] = where
    return validate_located(model, Located(data=data, origins=origins, source=source))


def validate_located(model: type[M], doc: Located) -> M:
    """Validate a located document, turning pydantic's errors into one ConfigError."""
    try:
        return model.model_validate(doc.data)
    except ValidationError as e:
        problems = [
            (tuple(err["loc"]), _explain(err, model)) for err in e.errors(include_url=False)
        ]
        raise problems_to_error(doc, problems) from None


def problems_to_error(doc: Located, problems: Iterable[tuple[Loc, str]]) -> ConfigError:
    """One ConfigError whose lines read `file:line: path: what was expected`."""
    lines = [f"{doc.where(loc)}: {format_loc(loc)}: {message}" for loc, message in problems]
    return ConfigError(doc.source, lines)


_TYPE_WORDS = {
    "float_type": "a number",
    "float_parsing": "a number",
    "int_type": "an integer",
    "int_parsing": "an integer",
    "int_from_float": "an integer",
    "string_type": "a string (quote it if it looks like a number or yes/no)",
    "bool_type": "true or false",
    "list_type": "a list",
    "tuple_type": "a list",
    "dict_type": "a mapping of keys",
    "model_type": "a mapping of keys",
    "model_attributes_type": "a mapping of keys",
}


def _explain(err: Mapping[str, Any], model: type[BaseModel]) -> str:
    kind = err["type"]
    value = err.get("input")
    if kind == "missing":
        return "required, but missing"
    if kind == "extra_forbidden":
        return f"unknown key; {_allowed_keys(model, err['loc'])}"
    if kind in _TYPE_WORDS:
        return f"expected {_TYPE_WORDS[kind]}, got {_show(value)}"
    if kind == "literal_error":
        return f"expected {err['ctx']['expected']}, got {_show(value)}"
    if kind == "string_pattern_mismatch":
        return f"{_show(value)} does not match {err['ctx']['pattern']}"
    if kind in ("greater_than_equal", "less_than_equal", "greater_than", "less_than"):
        return (
            f"{_show(value)} is out of range: {err['msg'].replace('Input should be ', 'must be ')}"
        )
    if kind in ("too_short", "too_long"):
        return str(err["msg"]).replace("Value", "list").replace("Tuple", "a point")
    message = str(err["msg"]).removeprefix("Value error, ")
    return f"{message} (got {_show(value)})" if value is not None else message


def _show(value: object) -> str:
    text = repr(value)
    if len(text) > 60:
        text = text[:57] + "..."
    return f"{text} ({type(value).__name__})"


def _allowed_keys(model: type[BaseModel], loc: Sequence[str | int]) -> str:
    """Names the keys allowed where an unknown key was found, walking the schema along `loc`."""
    current: Any = model
    for part in loc[:-1]:
        if isinstance(part, int):
            continue
        fields = getattr(current, "model_fields", None)
        if not fields or part not in fields:
            return "check the spelling"
        current = _model_in(fields[part].annotation)
        if current is None:
            return "check the spelling"
    fields = getattr(current, "model_fields", None)
    if not fields:
        return "check the spelling"
    return "allowed: " + ", ".join(sorted(fields))


def _model_in(annotation: Any) -> type[BaseModel] | None:
    """The pydantic model inside `list[M]`, `M | None`, `dict[str, M]` ..., if there is one."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in getattr(annotation, "__args__", ()):
        found = _model_in(arg)
        if found is not None:
            return found
    return None
