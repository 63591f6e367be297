"""Build a config object from plain YAML values, checking every field's type first.

`config_from_dict` trusts its input; a recipe is typed by hand, so here every value is checked against the
config's type hints (ints, floats, bools, strings, enums, tuples, nested configs, optional fields) and every error
names where it is (`steps[1] (prune)`), the field, what was expected, and the fix. Nested configs are written as
plain mappings: `finetune: {steps: 200, lr: 1.0e-3}`.

Example:
    >>> from condense.train.loop import FitConfig
    >>> build_config(FitConfig, {"steps": 5, "lr": "1e-3"}, where="steps[0] (fine-tune)").lr
    0.001
"""
from __future__ import annotations

import dataclasses
import enum
import types
import typing
from typing import Any

from condense.core.config import describe, registered_configs
from condense.errors import ConfigError

_NONE = type(None)


class _Mismatch(Exception):
    """A value that does not fit a type hint; the message says what was expected."""


def _is_config(tp: Any) -> bool:
    return isinstance(tp, type) and dataclasses.is_dataclass(tp) and registered_configs().get(tp.__name__) is tp


def coerce(value: Any, tp: Any, *, field: str, where: str) -> Any:
    """`value` converted to the hint `tp` (lists -> tuples, numbers -> float, mappings -> configs)."""
    if tp is Any or tp is typing.Any:
        if isinstance(value, dict) and isinstance(value.get("type"), str):  # a nested config written out
            cls = registered_configs().get(value["type"])
            if cls is None:
                raise _Mismatch(f"a config with a known 'type' (e.g. DynamicInt8Config), not {value['type']!r}")
            return build_config(cls, value, where=f"{where}, field {field!r}")
        return value
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        if value is None and _NONE in args:
            return None
        for arg in (a for a in args if a is not _NONE):
            try:
                return coerce(value, arg, field=field, where=where)
            except _Mismatch:
                continue
        raise _Mismatch(describe(tp))
    if value is None:
        raise _Mismatch(describe(tp))
    if origin in (tuple, list):
        if isinstance(value, (str, bytes)) or not isinstance(value, (list, tuple)):
            raise _Mismatch(describe(tp))
        if origin is tuple and args and not (len(args) == 2 and args[1] is Ellipsis):
            if len(value) != len(args):
                raise _Mismatch(f"a list of {len(args)} values")
            return tuple(coerce(v, a, field=field, where=where) for v, a in zip(value, args))
        item = args[0] if args else Any
        out = [coerce(v, item, field=field, where=where) for v in value]
        return tuple(out) if origin is tuple else out
    if origin is dict:
        if not isinstance(value, dict):
            raise _Mismatch("a mapping")
        return dict(value)
    if origin is typing.Literal:
        if value not in args:
            raise _Mismatch(describe(tp))
        return value
    if isinstance(tp, type) and issubclass(tp, enum.Enum):
        try:
            return tp(value)
        except (ValueError, TypeError):
            raise _Mismatch(describe(tp)) from None
    if _is_config(tp):
        if isinstance(value, tp):
            return value
        if not isinstance(value, dict):
            raise _Mismatch(describe(tp))
        return build_config(tp, value, where=f"{where}, field {field!r}")
    if tp is bool:
        if not isinstance(value, bool):
            raise _Mismatch("true or false")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise _Mismatch("an integer")
        return value
    if tp is float:
        if isinstance(value, str):  # YAML 1.1 reads 1e-3 (no dot) as a string
            try:
                return float(value)
            except ValueError:
                raise _Mismatch("a number") from None
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise _Mismatch("a number")
        try:
            return float(value)
        except OverflowError:  # an integer beyond 1.8e308
            raise _Mismatch("a number below 1.8e308") from None
    if tp is str:
        if not isinstance(value, str):
            raise _Mismatch("a string")
        return value
    return value


def build_config(cls: type, params: dict[str, Any], *, where: str) -> Any:
    """An instance of the config class `cls` from `params`, every field checked; errors name `where`."""
    if not isinstance(params, dict):
        raise ConfigError(f"{where}: parameters must be a mapping of {cls.__name__} fields, got {params!r}")
    params = {k: v for k, v in params.items() if k != "type"}
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = [k for k in params if k not in fields]
    if unknown:
        raise ConfigError(f"{where}: unknown field {unknown[0]!r} for {cls.__name__}; valid fields: "
                          f"{', '.join(fields)}")
    hints = typing.get_type_hints(cls)
    kwargs = {}
    for k, v in params.items():
        try:
            kwargs[k] = coerce(v, hints.get(k, Any), field=k, where=where)
        except _Mismatch as e:
            raise ConfigError(f"{where}: field {k!r} of {cls.__name__} must be {e}, got {v!r}; fix the value "
                              f"(default: {_default(fields[k])!r})") from None
    try:
        return cls(**kwargs)
    except ConfigError as e:
        raise ConfigError(f"{where}: {e}") from None
    except (TypeError, ValueError, ArithmeticError) as e:  # ArithmeticError: e.g. a huge integer in float math
        raise ConfigError(f"{where}: {cls.__name__}: {e}; valid fields: {', '.join(fields)}") from None


def _default(f: dataclasses.Field) -> Any:
    if f.default is not dataclasses.MISSING:
        d = f.default
        return d.to_dict() if hasattr(d, "to_dict") else (d.value if isinstance(d, enum.Enum) else d)
    if f.default_factory is not dataclasses.MISSING:  # type: ignore[misc]
        return f.default_factory()  # type: ignore[misc]
    return "required"
