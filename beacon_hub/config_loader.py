"""Load YAML files, environment and command-line overrides into one pydantic model.

The one place where configuration is read. Every program (site files, gateway, hub, simulator)
loads its schema through `load_model`, so every error looks the same: the file (or environment
variable, or command-line option), the line, the path inside the document (`gateways[3].x`) and
what was expected.

Imports only pydantic and PyYAML: the gateway uses it on a Pi Zero.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, TypeVar

import yaml
from pydantic import AfterValidator, BaseModel, ValidationError

from beacon_hub.errors import ConfigError

__all__ = [
    "ConfigPath",
    "Loc",
    "Located",
    "format_loc",
    "load_model",
    "parse_override",
    "problems_to_error",
    "read_config_text",
    "read_yaml",
    "validate_located",
    "yaml_errors",
]

Loc = tuple[str | int, ...]
"""A path inside a document: ("gateways", 3, "x")."""

M = TypeVar("M", bound=BaseModel)

MAX_CONFIG_BYTES = 16 * 1024 * 1024
"""Largest config or site file read: a 2,000-bay warehouse is about 1 MiB of YAML."""
MAX_ALIAS_EXPANSION_NODES = 1_000_000
"""Values that YAML aliases may add to a document beyond those written in it. A 1 MiB site file
holds about 100,000 (config/warehouse.yaml: 6,000 in 67 KB), so ten times that is room for any
use of anchors for shared settings; a "billion laughs" of a few hundred bytes expands past it
at once and would otherwise hold the validator for minutes."""


def _openable(path: Path) -> Path:
    """A path the OS can be handed: no NUL character (open() raises ValueError for it) and
    nothing the file system encoding cannot write (a lone surrogate from a YAML escape)."""
    if "\0" in str(path):
        raise ValueError("a path cannot contain a NUL character")
    try:
        os.fsencode(path)
    except UnicodeEncodeError as e:
        raise ValueError(f"a path cannot contain {e.object[e.start : e.end]!r}") from e
    return path


ConfigPath = Annotated[Path, AfterValidator(_openable)]
"""The type of every path field of a config schema: refused when it names no possible file, so
the error names the config file and line instead of a ValueError where the file is opened."""


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
    return parse_yaml_text(read_config_text(path), str(path))


def read_config_text(path: Path, max_bytes: int = MAX_CONFIG_BYTES) -> str:
    """A config file's text; ConfigError when it is too big, unreadable or not UTF-8."""
    source = str(path)
    try:
        size = path.stat().st_size
        if size > max_bytes:
            raise ConfigError(source, [f"{source}: file of {size:,} bytes exceeds {max_bytes:,}"])
        return path.read_text(encoding="utf-8")
    except OSError as e:
        raise ConfigError(source, [f"{source}: cannot read: {e.strerror or e}"]) from e
    except UnicodeDecodeError as e:
        raise ConfigError(
            source, [f"{source}: not UTF-8 text ({e.reason} at byte {e.start})"]
        ) from e


@contextlib.contextmanager
def yaml_errors(source: str, text: str) -> Iterator[None]:
    """PyYAML's errors while reading `text` (and building a loader for it, which refuses
    control characters at once) as ConfigErrors naming `source` and the place."""
    try:
        yield
    except yaml.reader.ReaderError as e:
        line = text.count("\n", 0, max(0, e.position)) + 1
        char = f"U+{e.character:04X}" if isinstance(e.character, int) else repr(e.character)
        problem = f"{source}:{line}: not valid YAML: character {char} ({e.reason})"
        raise ConfigError(source, [problem]) from e
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark
        where = f"{source}:{mark.line + 1}:{mark.column + 1}" if mark else source
        raise ConfigError(source, [f"{where}: not valid YAML: {e.problem}"]) from e
    except yaml.YAMLError as e:
        raise ConfigError(source, [f"{source}: not valid YAML: {e}"]) from e
    except RecursionError as e:
        raise ConfigError(source, [f"{source}: nested too deeply"]) from e


def parse_yaml_text(text: str, source: str) -> Located:
    """Parse one YAML document; `source` names it in messages (a file name)."""
    data, origins = _parse(text, source)
    return Located(data={} if data is None else data, origins=origins, source=source)


class _Loader(yaml.SafeLoader):
    """PyYAML's SafeLoader, whose constructors raise only YAML errors marked with their place.

    PyYAML's own constructors let plain ValueError, IndexError, KeyError, AttributeError or
    OverflowError out for scalars such as `!!float abc`, `!!bool maybe`, an empty `!!int` or an
    integer of more than 4300 digits.
    """

    def construct_object(self, node: yaml.Node, deep: bool = False) -> Any:
        try:
            return super().construct_object(node, deep)
        except yaml.YAMLError:
            raise
        except (ArithmeticError, AttributeError, LookupError, TypeError, ValueError) as e:
            kind = str(node.tag).rsplit(":", 1)[-1]
            text = str(node.value) if isinstance(node, yaml.ScalarNode) else "this value"
            shown = repr(text if len(text) <= 40 else text[:37] + "...")
            detail = f" ({e})" if isinstance(e, ValueError) else ""  # e.g. month must be in 1..12
            raise yaml.constructor.ConstructorError(
                None, None, f"{shown} is not a valid {kind}{detail}", node.start_mark
            ) from e


def _parse(text: str, source: str) -> tuple[Any, dict[Loc, str]]:
    """The data of one YAML document (None when empty) and the line of each path in it.

    The node graph is indexed (and refused if it must be) before any data is built from it, so
    an alias cycle or an alias explosion costs only a walk over the nodes as written.
    """
    with yaml_errors(source, text):
        loader = _Loader(text)
        try:
            node = loader.get_single_node()
            if node is None:
                return None, {}
            origins = _index(node, source)
            return loader.construct_document(node), origins
        finally:
            loader.dispose()


class _Open:
    """A collection node being walked: its children still to visit and its size so far."""

    __slots__ = ("children", "node", "size")

    def __init__(self, node: yaml.Node, children: Iterator[tuple[yaml.Node, Loc]]) -> None:
        self.node = node
        self.children = children
        self.size = 1


def _index(root: yaml.Node, source: str) -> dict[Loc, str]:
    """The line of every key and list item, walking each node once (an alias is not entered
    again); ConfigError for duplicate keys, an alias inside the node it names, and aliases
    that would expand the document by more than MAX_ALIAS_EXPANSION_NODES values."""
    origins: dict[Loc, str] = {(): _line(source, root)}
    duplicates: list[str] = []
    expanded: dict[yaml.Node, int] = {}  # values each walked collection stands for
    written = 1  # nodes as written: each collection once, scalars wherever they appear
    largest: tuple[int, yaml.Node | None] = (0, None)  # the biggest node reached by an alias
    stack = [_Open(root, _children(root, (), source, origins, duplicates))]
    walking = {root}
    while stack:
        top = stack[-1]
        step = next(top.children, None)
        if step is None:
            stack.pop()
            walking.discard(top.node)
            expanded[top.node] = top.size
            if stack:
                stack[-1].size += top.size
            continue
        child, loc = step
        if child in walking:
            where = f"{_line(source, child)}: {format_loc(loc)}"
            raise ConfigError(
                source,
                [f"{where}: an alias inside the node it names; a config cannot contain itself"],
            )
        size = expanded.get(child)
        if size is not None:  # an alias of a node walked already
            top.size += size
            if size > largest[0]:
                largest = (size, child)
        elif isinstance(child, yaml.CollectionNode):
            written += 1
            walking.add(child)
            stack.append(_Open(child, _children(child, loc, source, origins, duplicates)))
        else:
            written += 1
            top.size += 1
    if duplicates:
        raise ConfigError(source, duplicates)
    total = expanded[root] if isinstance(root, yaml.CollectionNode) else 1
    if total - written > MAX_ALIAS_EXPANSION_NODES and largest[1] is not None:
        problem = (
            f"{_line(source, largest[1])}: aliases of this node and others expand the document to "
            f"{total:,} values, {total - written:,} more than written; at most "
            f"{MAX_ALIAS_EXPANSION_NODES:,} more are allowed"
        )
        raise ConfigError(source, [problem])
    return origins


def _children(
    node: yaml.Node, loc: Loc, source: str, origins: dict[Loc, str], duplicates: list[str]
) -> Iterator[tuple[yaml.Node, Loc]]:
    """A collection's values with their paths; records each one's line and duplicate keys."""
    if isinstance(node, yaml.MappingNode):
        seen: set[str] = set()
        for key_node, value_node in node.value:
            if not isinstance(key_node, yaml.ScalarNode):
                # A list or mapping as a key names no setting, and its text can be an alias
                # explosion of its own.
                raise ConfigError(
                    source,
                    [f"{_line(source, key_node)}: {format_loc(loc)}: a key must be a plain name"],
                )
            key = str(key_node.value)
            if key in seen:
                duplicates.append(
                    f"{_line(source, key_node)}: {format_loc((*loc, key))}: "
                    "key given twice; each key may appear once"
                )
            seen.add(key)
            origins[(*loc, key)] = _line(source, key_node)
            yield value_node, (*loc, key)
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            origins[(*loc, i)] = _line(source, item)
            yield item, (*loc, i)


def _line(source: str, node: yaml.Node) -> str:
    return f"{source}:{node.start_mark.line + 1}"


def parse_override(text: str, source: str) -> Any:
    """A value from the environment or the command line, read as a YAML scalar or flow list."""
    return _parse(text, source)[0]


def _set_path(data: dict[str, Any], path: Sequence[str], value: Any, source: str) -> None:
    if not path:
        raise ConfigError(source, [f"{source}: names no key; expected section.key=value"])
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
    section: str | None = None,
) -> M:
    """Build `model` from a YAML file, then environment, then command-line overrides.

    Later sources win. Environment variables are `{env_prefix}__SECTION__KEY=value`
    (case-insensitive keys); overrides are dotted paths (`broker.url`) to values, typically from
    repeated `--set broker.url=...` options, so no flag is copied into the config by hand.
    `section`: a file whose top level has this key (a hub config's `engine:`) gives that
    section, so the program's own config serves; a file of the model's keys alone too.
    """
    if path is not None:
        located = read_yaml(path)
        if not isinstance(located.data, dict):
            raise ConfigError(str(path), [f"{path}: the top level must be a mapping of keys"])
        data: dict[str, Any] = located.data
        origins = dict(located.origins)
        source = located.source
        if section is not None and section in data and section not in model.model_fields:
            data = data[section] if data[section] is not None else {}
            if not isinstance(data, dict):
                where = origins.get((section,), source)
                raise ConfigError(str(path), [f"{where}: {section}: expected a mapping of keys"])
            origins = {loc[1:]: at for loc, at in origins.items() if loc[:1] == (section,)}
    else:
        data, origins, source = {}, {}, "settings"
    env = os.environ if environ is None else environ
    if env_prefix:
        head = f"{env_prefix.upper()}__"
        for name in sorted(env):
            if name.upper().startswith(head):
                keys = [k.lower() for k in name[len(head) :].split("__") if k]
                if keys:
                    where = f"environment {name}"
                    _set_path(data, keys, parse_override(env[name], where), where)
                    _note_origin(origins, keys, where)
    for dotted, value in (overrides or {}).items():
        keys = [k for k in dotted.split(".") if k]
        where = f"command line {dotted}"
        _set_path(data, keys, value, where)
        _note_origin(origins, keys, where)
    return validate_located(model, Located(data=data, origins=origins, source=source))


def _note_origin(origins: dict[Loc, str], keys: Sequence[str], where: str) -> None:
    """`where` set the value at `keys`, and made the sections above it that nothing else did:
    an error in one of those (`--set tick_interval_s.x=1`) names the option, not the defaults."""
    for end in range(1, len(keys)):
        origins.setdefault(tuple(keys[:end]), where)
    origins[tuple(keys)] = where


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
