"""Typed configuration: dataclass defaults, then YAML, then `key=value` overrides.

Every value is checked against the dataclass field's type and range; unknown keys, wrong types,
values outside a `Literal[...]`, NaN/Inf and numbers outside their field's bounds (>= 0 unless the
field gives another lower bound) fail with a one-line `ConfigError` naming the key.
"""
from __future__ import annotations

import dataclasses
import difflib
import operator
import types
import typing
from pathlib import Path
from typing import Any, Literal, get_args, get_origin

import yaml

from posectl.errors import ConfigError


def load_yaml(path: str | Path) -> dict:
    """Safe-load a YAML mapping (no Python tags); a clear error for anything else."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"config file not found: {p}")
    try:
        data = yaml.safe_load(p.read_text())
    except UnicodeDecodeError:
        raise ConfigError(f"{p}: not a YAML text file (it is not UTF-8 text)") from None
    except yaml.YAMLError as e:
        msg = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise ConfigError(f"{p}: not valid YAML ({msg})") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{p}: expected a mapping of key: value at the top level")
    return data


def parse_overrides(items: list[str]) -> dict[str, Any]:
    """['a.b=1', 'lr=1e-3'] -> {'a.b': 1, 'lr': '1e-3'} (values parsed as YAML scalars)."""
    out: dict[str, Any] = {}
    for item in items:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"expected key=value, got '{item}'")
        try:
            value = yaml.safe_load(raw) if raw.strip() else ""
        except yaml.YAMLError:
            value = raw
        out[key.strip()] = value
    return out


def flatten(d: dict, prefix: str = "") -> dict[str, Any]:
    out = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(flatten(v, key + "."))
        else:
            out[key] = v
    return out


def _fields(cls) -> dict[str, tuple[dataclasses.Field, Any]]:
    hints = typing.get_type_hints(cls)
    return {f.name: (f, hints[f.name]) for f in dataclasses.fields(cls)}


def known_keys(cls, prefix: str = "") -> dict[str, Any]:
    """Flat {dotted key: type} of a (nested) config dataclass."""
    out = {}
    for name, (_, tp) in _fields(cls).items():
        if dataclasses.is_dataclass(tp):
            out.update(known_keys(tp, f"{prefix}{name}."))
        else:
            out[f"{prefix}{name}"] = tp
    return out


def type_name(tp) -> str:
    if get_origin(tp) is Literal:
        return " | ".join(repr(a) for a in get_args(tp))
    if get_origin(tp) in (list, tuple):
        return f"list[{', '.join(type_name(a) for a in get_args(tp) if a is not Ellipsis)}]"
    if get_origin(tp) in (typing.Union, types.UnionType):
        return " | ".join(type_name(a) for a in get_args(tp))
    return getattr(tp, "__name__", str(tp))


def coerce(key: str, value: Any, tp) -> Any:
    """Check/convert `value` to type `tp`; raise ConfigError naming `key` otherwise."""
    origin = get_origin(tp)
    bad = ConfigError(f"{key}: expected {type_name(tp)}, got {value!r}")
    if origin in (typing.Union, types.UnionType):
        args = get_args(tp)
        if value is None and type(None) in args:
            return None
        for a in args:
            if a is type(None):
                continue
            try:
                return coerce(key, value, a)
            except ConfigError:
                pass
        raise bad
    if origin is Literal:
        if value in get_args(tp):
            return value
        if isinstance(value, (int, float)) and not isinstance(value, bool) and str(value) in get_args(tp):
            return str(value)        # `eval_joints=16` reads as the number 16; the choice is the string '16'
        raise ConfigError(f"{key}: must be one of {type_name(tp)}, got {value!r}")
    if origin in (list, tuple):
        if isinstance(value, str):
            value = [v for v in value.split(",") if v.strip()] if value.strip() else []
        if not isinstance(value, (list, tuple)):
            value = [value]
        (item_tp, *_) = get_args(tp) or (Any,)
        items = [coerce(f"{key}[{i}]", v, item_tp) for i, v in enumerate(value)]
        return tuple(items) if origin is tuple else items
    if tp is Any:
        return value
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false", "yes", "no", "1", "0"):
            return value.lower() in ("true", "yes", "1")
        raise bad
    if tp is int:
        if isinstance(value, bool):
            raise bad
        if isinstance(value, int):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        if isinstance(value, str):
            try:
                return int(value)
            except ValueError:
                raise bad from None
        raise bad
    if tp is float:
        if isinstance(value, bool):
            raise bad
        if isinstance(value, (int, float)):
            out = float(value)
        elif isinstance(value, str):
            try:
                out = float(value)
            except ValueError:
                raise bad from None
        else:
            raise bad
        if out != out or out in (float("inf"), float("-inf")):
            raise ConfigError(f"{key}: NaN and Inf are not allowed, got {value!r}")
        return out
    if tp is str:
        if isinstance(value, (dict, list)):
            raise bad
        return "" if value is None else str(value)
    raise bad


def _suggest(key: str, candidates) -> str:
    close = difflib.get_close_matches(key, list(candidates), n=1)
    return f" (did you mean '{close[0]}'?)" if close else ""


def check_keys(cls, layer: dict[str, Any], context: str = "config") -> None:
    """Every key of a flat-or-nested layer is a parameter of dataclass `cls` (else a ConfigError naming it)."""
    keys = known_keys(cls)
    for key in flatten(layer):
        if key not in keys:
            raise ConfigError(f"unknown parameter '{key}' for {context}{_suggest(key, keys)}")


def build(cls, *layers: dict[str, Any], context: str = "config"):
    """Instantiate dataclass `cls` from defaults plus flat-or-nested override layers, in order."""
    keys = known_keys(cls)
    values: dict[str, Any] = {}
    for layer in layers:
        check_keys(cls, layer, context)
        for key, value in flatten(layer).items():
            values[key] = coerce(key, value, keys[key])
    return _instantiate(cls, values, "")


def _instantiate(cls, values: dict[str, Any], prefix: str):
    kwargs = {}
    for name, (f, tp) in _fields(cls).items():
        if dataclasses.is_dataclass(tp):
            kwargs[name] = _instantiate(tp, values, f"{prefix}{name}.")
        elif f"{prefix}{name}" in values:
            kwargs[name] = values[f"{prefix}{name}"]
    obj = cls(**kwargs)
    for name, (f, tp) in _fields(cls).items():
        if not dataclasses.is_dataclass(tp):
            _check_range(f"{prefix}{name}", getattr(obj, name), f.metadata.get("range"))
    check = getattr(obj, "validate", None)
    if callable(check):
        check()
    return obj


def _check_range(key: str, value: Any, bounds: tuple | None) -> None:
    """Numbers are >= 0 unless their field gives another lower bound (`field(..., ge=, gt=)`); `le=`/`lt=`
    add an upper one."""
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        return
    ge, gt, le, lt = bounds or (None, None, None, None)
    if ge is None and gt is None:
        ge = 0
    for bound, word, ok in zip((ge, gt, le, lt), (">=", ">", "<=", "<"),
                               (operator.ge, operator.gt, operator.le, operator.lt)):
        if bound is not None and not ok(value, bound):
            raise ConfigError(f"{key}: must be {word} {bound}, got {value!r}")


def to_dict(cfg) -> dict[str, Any]:
    def conv(v):
        if isinstance(v, tuple):
            return [conv(x) for x in v]
        if isinstance(v, list):
            return [conv(x) for x in v]
        return v
    return {k: (to_dict(v) if dataclasses.is_dataclass(v) else conv(v))
            for k, v in ((f.name, getattr(cfg, f.name)) for f in dataclasses.fields(cfg))}


def dump_yaml(cfg_or_dict) -> str:
    d = to_dict(cfg_or_dict) if dataclasses.is_dataclass(cfg_or_dict) else cfg_or_dict
    return yaml.safe_dump(d, sort_keys=False)


def describe(cls) -> list[tuple[str, str, Any, str]]:
    """(key, type, default, help) rows for `posectl methods`."""
    rows = []
    defaults = flatten(to_dict(cls()))
    helps = _helps(cls)
    for key, tp in known_keys(cls).items():
        rows.append((key, type_name(tp), defaults.get(key), helps.get(key, "")))
    return rows


def _helps(cls, prefix: str = "") -> dict[str, str]:
    out = {}
    for name, (f, tp) in _fields(cls).items():
        if dataclasses.is_dataclass(tp):
            out.update(_helps(tp, f"{prefix}{name}."))
        elif f.metadata.get("help"):
            out[f"{prefix}{name}"] = f.metadata["help"]
    return out


def field(default, help: str = "", *, ge=None, gt=None, le=None, lt=None, **kw):
    """dataclasses.field with a help text shown by `posectl methods`. A number must be >= 0 unless `ge`
    or `gt` give another lower bound; `le`/`lt` give an upper one."""
    meta = {"help": help}
    if (ge, gt, le, lt) != (None, None, None, None):
        meta["range"] = (ge, gt, le, lt)
    if isinstance(default, (list, dict)):
        return dataclasses.field(default_factory=lambda d=default: type(d)(d), metadata=meta, **kw)
    if dataclasses.is_dataclass(default) and isinstance(default, type):
        return dataclasses.field(default_factory=default, metadata=meta, **kw)
    return dataclasses.field(default=default, metadata=meta, **kw)
