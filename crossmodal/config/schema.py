"""Training configs: YAML (``yaml.safe_load`` rules, hardened) checked against a schema before anything trains.

A schema is a nested dict whose leaves are :class:`Field`. :func:`load_config` reads a file, applies
``key.sub=value`` overrides, fills defaults and checks every key and type; any problem is one
:class:`~crossmodal.errors.ConfigError` line naming the file and the key. Mappings declared ``free`` (an
encoder's timm options, a distiller's options) accept any key: their owners check them when built.
"""
from __future__ import annotations

import copy
import io
import math
import os
from dataclasses import dataclass
from typing import Any, Callable, Mapping, Sequence

import yaml

from crossmodal.errors import ConfigError

_REQUIRED = object()

# A config is a page of keys (the shipped ones are under 2 KB); anything larger is refused before it is parsed:
# PyYAML parses in pure Python, about 10 s per MiB on a laptop core.
MAX_CONFIG_BYTES = 256 << 10
MAX_ALIASES = 100  # aliases once expanded (an alias of a list of aliases counts them all): stops alias bombs
MAX_DEPTH = 64  # nesting levels of mappings and lists; deeper is refused before Python's recursion limit


@dataclass(frozen=True)
class Field:
    """One config value.

    Args:
        kind: ``"int"``, ``"float"``, ``"bool"``, ``"auto_bool"`` (true, false or ``auto``), ``"str"``, ``"path"``, ``"mapping"`` (free keys), or
            ``"list:int"`` / ``"list:float"`` / ``"list:str"``.
        default: the value when absent; leave unset for a required key.
        nullable: whether ``null`` is allowed.
        choices: allowed values (strings).
        check: a predicate with the message to print when it fails, e.g. ``(lambda v: v > 0, "a positive number")``.
        help: one line for the docs.
    """

    kind: str
    default: Any = _REQUIRED
    nullable: bool = False
    choices: Sequence[Any] | None = None
    check: tuple[Callable[[Any], bool], str] | None = None
    help: str = ""

    @property
    def required(self) -> bool:
        return self.default is _REQUIRED


Schema = Mapping[str, Any]  # name -> Field or nested Schema


def positive(kind: str, default: Any = _REQUIRED, **kw: Any) -> Field:
    return Field(kind, default, check=(lambda v: v > 0, "a positive number"), **kw)


def non_negative(kind: str, default: Any = _REQUIRED, **kw: Any) -> Field:
    return Field(kind, default, check=(lambda v: v >= 0, "a number >= 0"), **kw)


def parse_override(text: str) -> tuple[list[str], Any]:
    """``'optim.lr=0.01'`` -> (['optim', 'lr'], 0.01); the value is read as YAML (``null``, ``[1, 2]``, ``crd``).

    The value goes through the same hardened loader as config files (no duplicate keys, few aliases).
    """
    key, sep, value = text.partition("=")
    key = key.strip()
    if not sep or not key or any(not part for part in key.split(".")):
        raise ConfigError(f"override '{text}' is not of the form key.sub=value")
    try:
        parsed = _load_yaml(value) if value.strip() else ""
    except _HostileYAML as err:
        raise ConfigError(f"override '{text}': {err.describe(lines=False)}") from None
    except (yaml.YAMLError, ValueError) as err:
        raise ConfigError(f"override '{text}': the value is not valid YAML ({_first_line(err)})") from None
    return key.split("."), parsed


def read_yaml(path: str | os.PathLike) -> dict[str, Any]:
    """A YAML mapping from ``path``; a missing file, bad YAML or a non-mapping is one ConfigError line.

    Hostile files are refused the same way: more than :data:`MAX_CONFIG_BYTES` (checked before parsing), a key
    given twice in one mapping, more than :data:`MAX_ALIASES` aliases once expanded (alias bombs), or more than
    :data:`MAX_DEPTH` levels of nesting.
    """
    path = os.fspath(path)
    try:
        with open(path, "rb") as handle:
            raw = handle.read(MAX_CONFIG_BYTES + 1)
            if len(raw) > MAX_CONFIG_BYTES:
                size = os.fstat(handle.fileno()).st_size
                raise ConfigError(f"{path}: {size / 1024:.0f} KiB is too large for a config (the limit is "
                                  f"{MAX_CONFIG_BYTES // 1024} KiB)")
        stream = io.StringIO(raw.decode("utf-8"))
        stream.name = path  # parse errors name the file, as when PyYAML reads it itself
        data = _load_yaml(stream)
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such config file") from None
    except OSError as err:
        raise ConfigError(f"{path}: cannot read ({err.strerror})") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: not a YAML text file (it is not UTF-8)") from None
    except _HostileYAML as err:
        raise ConfigError(f"{path}: {err.describe(lines=True)}") from None
    except (yaml.YAMLError, ValueError) as err:  # ValueError: a scalar that resolves but cannot be built (2020-13-45)
        raise ConfigError(f"{path}: not valid YAML ({_first_line(err)})") from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the config must be a mapping of keys, got {type(data).__name__}")
    return data


class _HostileYAML(Exception):
    """A YAML text the config loader refuses; :meth:`describe` is the line after ``<file>: ``."""

    def __init__(self, problem: str, key: str = "", lines: tuple[int, int] = (0, 0)):
        super().__init__(problem)
        self.problem, self.key, self.lines = problem, key, lines

    def describe(self, lines: bool) -> str:
        if self.problem == "duplicate":
            where = f" (lines {self.lines[0]} and {self.lines[1]})" if lines else ""
            return f"key '{self.key}' is given twice{where}"
        return self.problem


class _ConfigLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` (no Python tags) that refuses duplicate keys, alias bombs and deep nesting.

    Aliases are counted as they expand: an alias of a node holding ``n`` aliases counts ``1 + n``, so nine lists
    of nine aliases of each other (a "billion laughs") pass the limit on the third level, while composing the
    text, long before anything is built. Duplicate keys are looked for in the composed nodes, before merge keys
    (``<<``) are applied, so a key that overrides a merged one is not a duplicate.
    """

    def __init__(self, stream: Any) -> None:
        super().__init__(stream)
        self._expanded = 0  # aliases in the document so far, expanded
        self._inside: list[int] = [0]  # per node being composed: the expanded aliases inside it so far
        self._weight: dict[int, int] = {}  # id(node) -> the expanded aliases inside it (nodes holding any)

    def compose_node(self, parent: Any, index: Any) -> Any:
        if self.check_event(yaml.AliasEvent):
            node = super().compose_node(parent, index)
            weight = 1 + self._weight.get(id(node), 0)
            self._inside[-1] += weight
            self._expanded += weight
            if self._expanded > MAX_ALIASES:
                raise _HostileYAML(f"too many YAML aliases (more than {MAX_ALIASES} once expanded); "
                                   f"a config needs none or a few")
            return node
        if len(self._inside) > MAX_DEPTH:
            raise _HostileYAML(f"nested too deeply (more than {MAX_DEPTH} levels of mappings and lists)")
        self._inside.append(0)
        node = super().compose_node(parent, index)
        inside = self._inside.pop()
        if inside:
            self._weight[id(node)] = inside
            self._inside[-1] += inside
        return node

    def get_single_node(self) -> Any:
        node = super().get_single_node()
        if node is not None:
            self._check_duplicates(node, "", set())
        return node

    def _check_duplicates(self, node: Any, prefix: str, seen: set[int]) -> None:
        if id(node) in seen:  # an alias: checked where its anchor is
            return
        seen.add(id(node))
        if isinstance(node, yaml.SequenceNode):
            for i, item in enumerate(node.value):
                self._check_duplicates(item, f"{prefix}[{i}]", seen)  # optim.groups[1].lr
        elif isinstance(node, yaml.MappingNode):
            first: dict[Any, Any] = {}
            for key_node, value_node in node.value:
                if key_node.tag == "tag:yaml.org,2002:merge":  # ``<<``: YAML's own override rules apply
                    continue
                name = self._key_name(key_node)
                if isinstance(key_node, yaml.ScalarNode):
                    key = self._key_identity(key_node)
                    if key in first:
                        raise _HostileYAML("duplicate", f"{prefix}.{name}" if prefix else name,
                                           (first[key].start_mark.line + 1, key_node.start_mark.line + 1))
                    first[key] = key_node
                self._check_duplicates(value_node, f"{prefix}.{name}" if prefix else name, seen)

    def _key_identity(self, key_node: Any) -> Any:
        """What the key becomes in the dict (``1`` and ``1.0``, ``yes`` and ``true`` collide there)."""
        try:
            key = self.construct_object(key_node)
            hash(key)
            return key
        except Exception:  # built again (and reported) by the constructor
            return (key_node.tag, key_node.value)

    @staticmethod
    def _key_name(key_node: Any) -> str:
        return str(key_node.value) if isinstance(key_node, yaml.ScalarNode) else "?"


def _load_yaml(stream: Any) -> Any:
    """One YAML document through :class:`_ConfigLoader` (``yaml.safe_load`` with the hostile-input checks)."""
    loader = _ConfigLoader(stream)
    try:
        return loader.get_single_data()
    finally:
        loader.dispose()


def load_config(path: str | os.PathLike | None, schema: Schema, overrides: Sequence[str] = (),
                base: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Read ``path`` (or start from ``base``), apply ``overrides``, fill defaults and validate against ``schema``.

    Relative ``path`` fields are made absolute against the current directory.

    Raises:
        ConfigError: ``<file>: <key>: <problem>`` for the first problem found.
    """
    where = os.fspath(path) if path is not None else "config"
    data = read_yaml(path) if path is not None else copy.deepcopy(dict(base or {}))
    for text in overrides:
        keys, value = parse_override(text)
        assign_override(data, keys, value, schema, where, text)
    return validate(data, schema, where)


def validate(data: Mapping[str, Any], schema: Schema, where: str, prefix: str = "") -> dict[str, Any]:
    """A new dict: ``data`` checked against ``schema`` with defaults filled in."""
    if not isinstance(data, Mapping):
        raise ConfigError(f"{where}: '{prefix.rstrip('.')}' must be a mapping of keys, got {_describe(data)}")
    unknown = [key for key in data if key not in schema]
    if unknown:
        raise ConfigError(f"{where}: unknown key '{prefix}{unknown[0]}'; known keys here: {', '.join(schema)}")
    out: dict[str, Any] = {}
    for key, spec in schema.items():
        name = prefix + key
        if isinstance(spec, Field):
            if key not in data:
                if spec.required:
                    raise ConfigError(f"{where}: missing key '{name}'" + (f" ({spec.help})" if spec.help else ""))
                out[key] = copy.deepcopy(spec.default)
            else:
                out[key] = _check_value(data[key], spec, where, name)
        else:
            section = data.get(key)  # absent or empty (``optim:``) -> all defaults; 0, [] or '' are errors
            out[key] = validate({} if section is None else section, spec, where, name + ".")
    return out


def _check_value(value: Any, spec: Field, where: str, name: str) -> Any:
    if value is None:
        if spec.nullable:
            return None
        raise ConfigError(f"{where}: '{name}' must not be null; expected {_expected(spec)}")
    kind = spec.kind
    if kind == "list:str" and isinstance(value, str):
        value = [value]  # one name where a list of names is allowed
    if kind.startswith("list:"):
        if isinstance(value, (str, bytes)) or not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}: '{name}' must be {_expected(spec)}, got {_describe(value)}")
        item = Field(kind[5:])
        value = [_convert(element, item, where, f"{name}[{i}]") for i, element in enumerate(value)]
    else:
        value = _convert(value, spec, where, name)
    if spec.choices is not None and value not in spec.choices:
        raise ConfigError(f"{where}: '{name}' must be one of {', '.join(map(str, spec.choices))}; got {value!r}")
    if spec.check is not None:
        predicate, meaning = spec.check
        values = value if isinstance(value, list) else [value]
        if not all(predicate(v) for v in values):
            raise ConfigError(f"{where}: '{name}' must be {meaning}, got {value!r}")
    return value


def _convert(value: Any, spec: Field, where: str, name: str) -> Any:
    kind = spec.kind
    bad = ConfigError(f"{where}: '{name}' must be {_expected(spec)}, got {_describe(value)}")
    if kind == "bool":
        if not isinstance(value, bool):
            raise bad
        return value
    if kind == "auto_bool":
        if not isinstance(value, bool) and value != "auto":
            raise bad
        return value
    if kind == "int":
        if isinstance(value, bool) or not isinstance(value, int):
            raise bad
        return value
    if kind == "float":
        # YAML 1.1 reads '5e-4' (no dot) as a string: accept any string that is a number.
        if isinstance(value, str):
            try:
                value = float(value)
            except ValueError:
                raise bad from None
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise bad
        return float(value)
    if kind in ("str", "path"):
        if not isinstance(value, str) or not value:
            raise bad
        return os.path.abspath(os.path.expanduser(value)) if kind == "path" else value
    if kind == "mapping":
        if not isinstance(value, Mapping):
            raise bad
        return copy.deepcopy(dict(value))
    raise ValueError(f"schema error: unknown field kind {kind!r} for {name}")


def assign_override(data: dict[str, Any], keys: list[str], value: Any, schema: Schema, where: str, text: str) -> None:
    """Set ``data[k1][k2]... = value``, refusing keys the schema does not know (inside free mappings, any)."""
    node, spec = data, schema
    for depth, key in enumerate(keys):
        last = depth == len(keys) - 1
        if spec is not None:
            if key not in spec:
                dotted = ".".join(keys[:depth + 1])
                raise ConfigError(f"{where}: override '{text}': unknown key '{dotted}'; known keys here: "
                                  f"{', '.join(spec)}")
            spec = spec[key]
            if isinstance(spec, Field):
                if not last and spec.kind != "mapping":
                    raise ConfigError(f"{where}: override '{text}': '{'.'.join(keys[:depth + 1])}' has no sub-keys")
                spec = None  # inside a free mapping from here on
        if last:
            node[key] = value
        else:
            child = node.get(key)
            if not isinstance(child, dict):
                child = node[key] = {}
            node = child


def dump_config(config: Mapping[str, Any]) -> str:
    """YAML text of a resolved config (key order kept)."""
    return yaml.safe_dump(dict(config), sort_keys=False, default_flow_style=None)


def flatten(config: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{'optim': {'lr': 0.1}}`` -> ``{'optim.lr': 0.1}``."""
    out: dict[str, Any] = {}
    for key, value in config.items():
        if isinstance(value, Mapping) and value:
            out.update(flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def _expected(spec: Field) -> str:
    names = {"int": "an integer", "float": "a number", "bool": "true or false", "str": "a string",
             "path": "a file path", "mapping": "a mapping of keys", "list:int": "a list of integers",
             "list:float": "a list of numbers", "list:str": "a list of strings",
             "auto_bool": "true, false or auto"}
    text = names.get(spec.kind, spec.kind)
    return text + (" or null" if spec.nullable else "")


def _describe(value: Any) -> str:
    text = repr(value)
    return f"{text if len(text) <= 40 else text[:37] + '...'} ({type(value).__name__})"


def _first_line(err: BaseException) -> str:
    return " ".join(str(err).split())
