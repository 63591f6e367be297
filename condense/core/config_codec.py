"""Configs <-> plain data: `to_dict` (encode) and the one decoder every reader uses.

The CLI's `--set`, YAML recipes, saved artifacts, search trials and the Python API's mappings (`fit={"steps": 5}`)
all go through `decode_config` / `config_from_dict`, so a value means the same wherever it is written.

How a plain value fits a field's type hint (strings are read only where a number is expected):
- int: an integer; a float with an integral value (`1e3`, `100.0`); a string holding either (`"12"`, `"1e3"`:
  YAML 1.1 reads `1e3` as a string). Fractions, booleans, NaN, infinities and more than 64 bits are refused.
- float: a number, or a string holding one (`"1e-3"`: YAML 1.1 reads it as a string); finite only, no booleans.
- bool: `true` / `false` only (JSON and YAML both have them; `--set permanent=true` is JSON); "yes" is refused.
- str: a string only (a number is not turned into text).
- enum: its value or its member's name, in any case (`"gptq"`, `"GPTQ"`, `"per_channel"`). Literal: exactly.
- tuple / list: a list (JSON has no tuples). A tuple of strings also takes one bare string as its one item
  (`--set include=fc1`, `include: fc1` mean `("fc1",)`, never the patterns "f", "c", "1").
- a nested config: the config itself, or a mapping of its fields; a `"type"` key, if given, must name the
  field's class (or a subclass); a `"version"` key says which version of the class wrote it.
- None: only where the hint allows it (`X | None`).

Versions: `to_dict()` writes `"version": cls.version` (a class attribute, 1 unless the class sets it). A mapping
written by an older version (or without the key: every file written before versions existed is version 1) is
brought up to date by the class's `upgrade(fields, version) -> fields` hook, one version at a time; a newer
version than this condense knows is refused. Renamed fields (`Renamed`) still decode from their old name, with a
DeprecationWarning naming the new field.
"""
from __future__ import annotations

import dataclasses
import difflib
import enum
import math
import types
import typing
import warnings
from typing import Any

from condense.core.config_base import (_CONFIGS, Mismatch, default_example, describe, example_mapping, is_config,
                                       show, version_of)
from condense.errors import ConfigError

MAX_INT = 2**63 - 1  # every int field must fit in 64 bits (torch, numpy and ONNX take no more)
MAX_DEPTH = 16  # configs nested deeper than this are refused (a real one nests 2-3 levels)
_NESTED_EXAMPLE = '{"type": "DistillConfig", "finetune": {"steps": 100}}'


# -- decoding a value against a type hint ------------------------------------------------------------------------
def _decode_int(v: Any) -> int:
    if isinstance(v, str):  # "12" or "1e3" from a hand-written file (YAML 1.1 reads 1e3 as a string)
        try:
            v = int(v.strip())
        except ValueError:
            try:
                v = float(v.strip())
            except ValueError:
                raise Mismatch("an integer") from None
    if isinstance(v, float) and math.isfinite(v) and v == int(v):
        v = int(v)  # 1e3 and 100.0 are integers written as floats
    if isinstance(v, bool) or not isinstance(v, int):
        why = "" if not isinstance(v, float) else " (not a fraction)" if math.isfinite(v) else " (not NaN or infinity)"
        raise Mismatch("an integer" + why)
    if abs(v) > MAX_INT:
        raise Mismatch(f"an integer of at most 64 bits (|value| <= {MAX_INT})")
    return v


def _decode_float(v: Any) -> float:
    if isinstance(v, str):  # YAML 1.1 reads 1e-3 (no dot) as a string
        try:
            v = float(v.strip())
        except ValueError:
            raise Mismatch("a finite number") from None
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        raise Mismatch("a finite number")
    try:
        out = float(v)
    except OverflowError:  # an int past 1e308
        raise Mismatch("a finite number (at most 1e308)") from None
    if not math.isfinite(out):
        raise Mismatch("a finite number (not NaN or infinity)")
    return out


def _decode_enum(tp: type[enum.Enum], v: Any) -> Any:
    if isinstance(v, tp):
        return v
    if isinstance(v, str):
        for m in tp:  # the value, or the member's name, in any case: "gptq", "GPTQ", "per_channel"
            if v == m.value or v.lower() in (str(m.value).lower(), m.name.lower()):
                return m
    raise Mismatch(describe(tp))


def _decode_items(tp: Any, origin: Any, args: tuple, v: Any, path: str, depth: int) -> Any:
    variadic = origin is list or (len(args) == 2 and args[1] is Ellipsis)
    if variadic and args and args[0] is str and isinstance(v, str):
        v = [v]  # include='x*' means the one pattern 'x*', not the patterns 'x' and '*'
    if not isinstance(v, (list, tuple)):
        raise Mismatch(describe(tp))
    if not args:
        return tuple(v) if origin is tuple else list(v)
    if not variadic and len(v) != len(args):
        raise Mismatch(describe(tp))
    item_types = [args[0]] * len(v) if variadic else list(args)
    try:  # an item that does not fit: the whole list is reported, with what its items must be
        out = [decode_value(a, x, f"{path}[{i}]", depth) for i, (a, x) in enumerate(zip(item_types, v))]
    except Mismatch:
        raise Mismatch(describe(tp)) from None
    return tuple(out) if origin is tuple else out


def decode_value(tp: Any, v: Any, path: str, depth: int = 0) -> Any:
    """`v` (a plain value) as the hint `tp` says (see the module docstring): `Mismatch` if it does not fit,
    ConfigError from inside a nested config."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if tp is Any:
        if isinstance(v, dict) and isinstance(v.get("type"), str) and v["type"] in _CONFIGS:
            return decode_mapping(v, path, depth + 1)  # a nested config written out with its type
        return v
    if origin in (typing.Union, types.UnionType):
        if v is None:
            if type(None) in args:
                return None
            raise Mismatch(describe(tp))
        for arg in (a for a in args if a is not type(None)):
            try:
                return decode_value(arg, v, path, depth)
            except Mismatch:
                continue
        raise Mismatch(describe(tp))
    if v is None:
        raise Mismatch(describe(tp))
    if origin in (tuple, list):
        return _decode_items(tp, origin, args, v, path, depth)
    if origin is dict:
        if not isinstance(v, dict):
            raise Mismatch("a mapping")
        return {k: decode_value(args[1], x, f"{path}[{k!r}]", depth) if args else x for k, x in v.items()}
    if origin is typing.Literal:
        if not any(type(v) is type(a) and v == a for a in args):
            raise Mismatch(describe(tp))
        return v
    if isinstance(tp, type) and issubclass(tp, enum.Enum):
        return _decode_enum(tp, v)
    if is_config(tp):
        if isinstance(v, tp):
            return v
        if not isinstance(v, dict):
            raise Mismatch(describe(tp))
        name = v.get("type", tp.__name__)
        sub = _CONFIGS.get(name) if isinstance(name, str) else None
        if sub is None or not issubclass(sub, tp):
            raise Mismatch(f"a mapping of {tp.__name__} fields (its 'type', if given, must be {tp.__name__!r})")
        return decode_mapping({**v, "type": name}, path, depth + 1)
    if tp is bool:
        if not isinstance(v, bool):
            raise Mismatch("true or false")
        return v
    if tp is int:
        return _decode_int(v)
    if tp is float:
        return _decode_float(v)
    if tp is str:
        if not isinstance(v, str):
            raise Mismatch("a string")
        return v
    return v


# -- decoding a mapping into a config ----------------------------------------------------------------------------
def _field_default(cls: type, name: str) -> Any:
    f = {f.name: f for f in dataclasses.fields(cls)}.get(name)
    if f is None or (f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING):
        return None
    return f.default if f.default is not dataclasses.MISSING else f.default_factory()


def apply_renames(cls: type, kw: dict[str, Any], where: str = "") -> dict[str, Any]:
    """`kw` with every old (`Renamed`) field name replaced by its new field, each with a DeprecationWarning."""
    renames = getattr(cls, "renamed", ())
    if not any(r.old in kw for r in renames):
        return kw
    given = set(kw)
    out = dict(kw)
    for r in renames:
        if r.old not in out:
            continue
        if r.new in given:
            raise ConfigError(f"{where}{cls.__name__}: both {r.new} and {r.old} are given, and {r.old} is the "
                              f"deprecated old name of {r.new}; drop {r.old} and give its value in {r.new}")
        value = out.pop(r.old)
        warnings.warn(f"{cls.__name__}.{r.old} is deprecated: use {cls.__name__}.{r.path or r.new} (the old name "
                      "is still read for now)", DeprecationWarning, stacklevel=3)
        current = out[r.new] if r.new in out else _field_default(cls, r.new)
        out[r.new] = value if r.convert is None else r.convert(value, current)
    return out


def _upgrade(cls: type, body: dict[str, Any], version: Any, where: str) -> dict[str, Any]:
    try:
        v = _decode_int(version)
    except Mismatch:
        v = 0
    now = version_of(cls)
    if v < 1:
        raise ConfigError(f"{where}{cls.__name__}.version must be a positive integer, got {show(version)}; "
                          f"e.g. version={now} (or leave it out)")
    if v > now:
        raise ConfigError(f"{where}{cls.__name__} was written by a newer condense (version {v}; this one reads "
                          f"up to {now}); upgrade condense to read it")
    for old in range(v, now):
        try:
            body = cls.upgrade(dict(body), old)  # type: ignore[attr-defined]
        except (TypeError, ValueError, KeyError, AttributeError) as e:
            raise ConfigError(f"{where}{cls.__name__}: cannot upgrade a version {old} mapping: {e}") from None
        if not isinstance(body, dict):
            raise ConfigError(f"{where}{cls.__name__}.upgrade returned {type(body).__name__}, not a mapping")
    return body


def decode_mapping(d: Any, where: str | None, depth: int, cls: type | None = None) -> Any:
    """A config from mapping `d`: its class is `d["type"]`, or `cls` (then "type" is optional and must name `cls`
    or a subclass). Errors start with `where`."""
    prefix = f"{where}: " if where else ""
    if depth > MAX_DEPTH:
        raise ConfigError(f"configs are nested more than {MAX_DEPTH} levels deep; a config's fields hold plain "
                          f"values or one nested config, e.g. {_NESTED_EXAMPLE}")
    if cls is not None and not isinstance(d, dict):
        raise ConfigError(f"{prefix}parameters must be a mapping of {cls.__name__} fields, e.g. "
                          f"{example_mapping(cls)}, got {show(d)}")
    if not isinstance(d, dict) or ("type" not in d and cls is None):
        raise ConfigError(f"{prefix}a config must be a mapping with a 'type' key, e.g. "
                          f"{{\"type\": \"FitConfig\", \"steps\": 100}}, got {show(d)}")
    name = d.get("type", cls.__name__ if cls is not None else None)
    found = _CONFIGS.get(name) if isinstance(name, str) else None
    if found is None:
        raise ConfigError(f"{prefix}unknown config type {show(name)}; known: {', '.join(sorted(_CONFIGS))}")
    if cls is not None and not issubclass(found, cls):
        raise ConfigError(f"{prefix}'type' must be {cls.__name__!r} (or leave it out), got {show(name)}")
    cls = found
    body = {k: v for k, v in d.items() if k not in ("type", "version")}
    body = _upgrade(cls, body, d.get("version", 1), prefix)
    body = apply_renames(cls, body, prefix)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = [k for k in body if k not in fields]
    if unknown:
        bad = unknown[0]
        close = difflib.get_close_matches(bad, list(fields), n=1) if isinstance(bad, str) else []
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise ConfigError(f"{prefix}{name} has no field {show(bad)}{hint}; valid fields: {', '.join(fields)}")
    hints = typing.get_type_hints(cls)
    kwargs = {}
    for k, v in body.items():
        path = f"{prefix}{name}.{k}"  # a nested config's errors start with it: "DistillConfig.finetune: FitConfig ..."
        tp = hints.get(k, Any)
        try:
            kwargs[k] = decode_value(tp, v, path, depth)
        except Mismatch as e:
            raise ConfigError(f"{path} must be {e}, got {show(v)}{default_example(fields[k], tp)}") from None
    try:
        return cls(**kwargs)
    except ConfigError as e:
        raise ConfigError(f"{prefix}{e}") from None
    except (TypeError, ValueError, ArithmeticError) as e:  # a check in __post_init__ that a value slipped past
        raise ConfigError(f"{prefix}{name}: {' '.join(str(e).split())}; valid fields: {', '.join(fields)}") \
            from None


def _guarded(d: Any, where: str | None, cls: type | None) -> Any:
    try:
        return decode_mapping(d, where, 0, cls)
    except RecursionError:
        raise ConfigError(f"{where + ': ' if where else ''}config is nested too deeply to read; a config's fields "
                          f"hold plain values or one nested config, e.g. {_NESTED_EXAMPLE}") from None


def config_from_dict(d: Any) -> Any:
    """Rebuild a config from `to_dict()` output, or from hand-written JSON: every value is checked against its
    field's type hint (see the module docstring), a nested config may be a plain mapping of its fields, and any
    bad input raises a ConfigError naming the field, what it must be and an example (never another exception).

    Example:
        >>> from condense.core.config import config
        >>> @config
        ... class _DecodeExample:
        ...     steps: int = 100
        >>> config_from_dict({"type": "_DecodeExample", "steps": 1e3}).steps
        1000
        >>> config_from_dict({"type": "_DecodeExample", "steps": 1.5})
        Traceback (most recent call last):
        condense.errors.ConfigError: _DecodeExample.steps must be an integer (not a fraction), got 1.5; e.g. steps=100
    """
    return _guarded(d, None, None)


def decode_config(cls: type, params: Any, *, where: str | None = None) -> Any:
    """An instance of config class `cls` from a mapping of its fields (a recipe step's parameters, the CLI's
    `--set` pairs): the same decoder as `config_from_dict`, its errors starting with `where`.

    Example:
        >>> from condense.train.loop import FitConfig
        >>> cfg = decode_config(FitConfig, {"steps": "12", "lr": "1e-3", "betas": [0.8, 0.9]}, where="--set")
        >>> cfg.steps, cfg.lr, cfg.betas
        (12, 0.001, (0.8, 0.9))
    """
    return _guarded(params, where, cls)
