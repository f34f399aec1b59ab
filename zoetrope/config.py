"""YAML/JSON <-> dataclasses, strictly: an unknown key or a wrong type names the file, the dotted key and the fix.

Why strict: a training run that silently ignores `learning_rate:` (the field is `lr`) wastes GPU hours; a loud
error at load time costs nothing. Every config in zoetrope is a dataclass whose defaults reproduce the public
recipe, and a YAML file maps onto it one to one (DESIGN conventions).

Supported field types: `int`, `float` (an int is accepted), `str`, `bool`, `pathlib.Path` (from a string),
`tuple[X, ...]`, `tuple[X, Y]`, `list[X]`, `dict[str, X]`, `X | None` / `Optional[X]`, other unions (first match),
`Literal[...]`, `Any`, and nested dataclasses (from a mapping). `bool` is never accepted for `int`/`float`.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import types
import typing
from pathlib import Path
from typing import Any, Mapping, Sequence, TypeVar, Union

import yaml

from zoetrope.errors import ConfigError

T = TypeVar("T")

#: Exponent notation without a dot (`1e-5`), which YAML 1.1 does not read as a float.
_YAML11_FLOAT = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)[eE][-+]?\d+")


def _type_name(hint: Any) -> str:
    """A readable name for a type hint (`int`, `list[str]`, `one of 'fp16', 'bf16'`)."""
    origin = typing.get_origin(hint)
    if origin is typing.Literal:
        return "one of " + ", ".join(repr(value) for value in typing.get_args(hint))
    if origin in (Union, types.UnionType):
        return " or ".join(_type_name(arg) for arg in typing.get_args(hint))
    if hint is type(None):
        return "null"
    if dataclasses.is_dataclass(hint):
        return f"a mapping ({hint.__name__})"
    if origin is not None:
        return str(hint).replace("typing.", "")
    return getattr(hint, "__name__", str(hint))


def _found(value: Any) -> str:
    text = repr(value)
    if len(text) > 60:
        text = text[:57] + "..."
    return f"{text} ({type(value).__name__})"


class _Mismatch(Exception):
    """Internal: a value does not fit a type; carries the dotted key where it happened."""

    def __init__(self, key: str, message: str) -> None:
        super().__init__(message)
        self.key = key
        self.message = message


def _join(prefix: str, key: object) -> str:
    return f"{prefix}.{key}" if prefix else str(key)


def _convert(value: Any, hint: Any, key: str) -> Any:
    """`value` converted to `hint`, or `_Mismatch(key, what was expected)`."""
    if hint is Any or hint is object:
        return value
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin in (Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _convert(value, arg, key)
            except _Mismatch as error:
                errors.append(error)
        deepest = max(errors, key=lambda error: error.key.count("."))
        if deepest.key != key:  # the value had the right shape, a nested field was wrong: report that one
            raise deepest
        raise _Mismatch(key, f"expected {_type_name(hint)}, found {_found(value)}")
    if origin is typing.Literal:
        if value in args and not (isinstance(value, bool) and not any(isinstance(arg, bool) for arg in args)):
            return value
        raise _Mismatch(key, f"expected {_type_name(hint)}, found {_found(value)}")
    if dataclasses.is_dataclass(hint):
        if dataclasses.is_dataclass(value) and isinstance(value, hint):
            return value
        if not isinstance(value, Mapping):
            raise _Mismatch(key, f"expected {_type_name(hint)}, found {_found(value)}")
        return _build(value, hint, key)
    if origin in (list, tuple, Sequence, typing.Sequence) or hint in (list, tuple):
        if isinstance(value, (str, bytes, Mapping)) or not isinstance(value, (list, tuple)):
            raise _Mismatch(key, f"expected a list ({_type_name(hint)}), found {_found(value)}")
        if origin is tuple and args and not (len(args) == 2 and args[1] is Ellipsis):
            if len(value) != len(args):
                raise _Mismatch(key, f"expected {len(args)} items ({_type_name(hint)}), found {len(value)}")
            return tuple(_convert(item, arg, f"{key}[{index}]") for index, (item, arg) in enumerate(zip(value, args)))
        item_hint = args[0] if args else Any
        items = [_convert(item, item_hint, f"{key}[{index}]") for index, item in enumerate(value)]
        return tuple(items) if origin is tuple or hint is tuple else items
    if origin in (dict, Mapping, typing.Mapping) or hint is dict:
        if not isinstance(value, Mapping):
            raise _Mismatch(key, f"expected a mapping ({_type_name(hint)}), found {_found(value)}")
        key_hint, value_hint = args if args else (Any, Any)
        return {
            _convert(item_key, key_hint, key): _convert(item, value_hint, _join(key, item_key))
            for item_key, item in value.items()
        }
    if hint is bool:
        if isinstance(value, bool):
            return value
        raise _Mismatch(key, f"expected true or false, found {_found(value)}")
    if hint is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise _Mismatch(key, f"expected an integer, found {_found(value)}")
    if hint is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str) and _YAML11_FLOAT.fullmatch(value.strip()):
            return float(value)  # PyYAML (YAML 1.1) reads `1e-5` as a string: accept what is plainly a number
        raise _Mismatch(key, f"expected a number, found {_found(value)}")
    if hint is str:
        if isinstance(value, str):
            return value
        raise _Mismatch(key, f"expected a string, found {_found(value)}")
    if hint is Path:
        if isinstance(value, (str, os.PathLike)):
            return Path(value)
        raise _Mismatch(key, f"expected a path (string), found {_found(value)}")
    if isinstance(hint, type) and isinstance(value, hint):
        return value
    raise _Mismatch(key, f"expected {_type_name(hint)}, found {_found(value)}")


def _build(values: Mapping[str, Any], cls: type[T], prefix: str) -> T:
    hints = typing.get_type_hints(cls)
    fields = {field.name: field for field in dataclasses.fields(cls) if field.init}
    unknown = [name for name in values if name not in fields]
    if unknown:
        name = unknown[0]
        raise _Mismatch(_join(prefix, name), f"unknown key; {cls.__name__} has {', '.join(sorted(fields))}")
    arguments = {}
    for name, field in fields.items():
        if name in values:
            arguments[name] = _convert(values[name], hints[name], _join(prefix, name))
        elif field.default is dataclasses.MISSING and field.default_factory is dataclasses.MISSING:
            raise _Mismatch(_join(prefix, name), f"required key is missing ({_type_name(hints[name])})")
    try:
        return cls(**arguments)
    except ConfigError as error:  # a dataclass' own __post_init__ validation
        raise _Mismatch(prefix or cls.__name__, str(error)) from None


def read_config_file(path: str | os.PathLike, _seen: tuple[Path, ...] = ()) -> dict[str, Any]:
    """The mapping in a `.yaml`/`.yml`/`.json` file, with a ConfigError naming the file when it is not one.

    A top-level `extends: OTHER.yaml` (relative to this file) reads OTHER first and lays this file over it:
    mappings merge key by key, anything else (lists included) replaces. Why: an experiment and its control differ in
    one or two keys, and a copied file drifts from its original without anyone noticing.
    """
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: no such config file; pass a .yaml or .json training config")
    text = path.read_text(encoding="utf-8")
    try:
        values = json.loads(text) if path.suffix.lower() == ".json" else yaml.safe_load(text)
    except (yaml.YAMLError, json.JSONDecodeError) as error:
        first = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise ConfigError(f"{path}: not valid {'JSON' if path.suffix.lower() == '.json' else 'YAML'} ({first})") from error
    if values is None:
        values = {}
    if not isinstance(values, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of keys to values, found {type(values).__name__}")
    if "extends" not in values:
        return values
    base_name = values.pop("extends")
    if not isinstance(base_name, str) or not base_name:
        raise ConfigError(f"{path}: `extends` must name one config file (relative to this one), found {base_name!r}")
    base_path = (path.parent / base_name).resolve()
    chain = (*_seen, path.resolve())
    if base_path in chain:
        raise ConfigError(f"{path}: `extends: {base_name}` makes a cycle ({' -> '.join(p.name for p in (*chain, base_path))})")
    if not base_path.is_file():
        raise ConfigError(f"{path}: `extends: {base_name}`: no such file {base_path}")
    return _merge(read_config_file(base_path, chain), values)


def _merge(base: Mapping[str, Any], over: Mapping[str, Any]) -> dict[str, Any]:
    """`over` laid on `base`: nested mappings merge key by key, every other value of `over` replaces."""
    result = dict(base)
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(result.get(key), dict):
            result[key] = _merge(result[key], value)
        else:
            result[key] = value
    return result


def apply_overrides(values: Mapping[str, Any], overrides: Sequence[str], source: str = "--set") -> dict[str, Any]:
    """`values` with `dotted.key=value` overrides applied; each value is parsed as YAML (`lr=1e-5`, `a=[1,2]`)."""
    result = json.loads(json.dumps(values, default=str)) if values else {}
    for override in overrides:
        if "=" not in override:
            raise ConfigError(f"{source} {override!r}: expected KEY=VALUE, e.g. lr=1e-5 or model.motion_module=mm.ckpt")
        dotted, text = override.split("=", 1)
        try:
            value = yaml.safe_load(text)
        except yaml.YAMLError:
            value = text
        target = result
        parts = dotted.strip().split(".")
        for part in parts[:-1]:
            child = target.get(part)
            if child is None:
                child = target[part] = {}
            if not isinstance(child, dict):
                raise ConfigError(f"{source} {override!r}: {part!r} is not a mapping, so it has no key {parts[-1]!r}")
            target = child
        target[parts[-1]] = value
    return result


def load_config(
    source: str | os.PathLike | Mapping[str, Any],
    cls: type[T],
    overrides: Sequence[str] = (),
    name: str | None = None,
) -> T:
    """Map a YAML/JSON file (or a mapping) strictly onto the dataclass `cls`, after `key=value` overrides.

    Raises ConfigError("FILE: key `a.b`: expected ..., found ...") on an unknown key, a missing required key or a
    wrong type. `name` replaces the file name in messages when `source` is a mapping.
    """
    if isinstance(source, Mapping):
        values = dict(source)
        label = name or cls.__name__
    else:
        values = read_config_file(source)
        label = name or str(source)
    if overrides:
        values = apply_overrides(values, overrides)
    try:
        return _build(values, cls, "")
    except _Mismatch as error:
        raise ConfigError(f"{label}: key `{error.key}`: {error.message}") from None


def dump_config(obj: Any) -> Any:
    """A dataclass (or nested values) as plain YAML/JSON-ready data: tuples become lists, paths strings."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {field.name: dump_config(getattr(obj, field.name)) for field in dataclasses.fields(obj) if field.init}
    if isinstance(obj, Mapping):
        return {str(key): dump_config(value) for key, value in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [dump_config(value) for value in obj]
    if isinstance(obj, os.PathLike):
        return os.fspath(obj)
    return obj


def save_config(obj: Any, path: str | os.PathLike) -> Path:
    """Write `dump_config(obj)` as YAML (keys in field order)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(dump_config(obj), sort_keys=False), encoding="utf-8")
    return path
