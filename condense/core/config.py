"""Configs are small frozen dataclasses that round-trip through JSON.

Every config class registers itself under its class name (via `@config`), so a saved recipe, search trial or
artifact can rebuild the exact config that produced it: `config_from_dict(cfg.to_dict()) == cfg`.
"""
from __future__ import annotations

import dataclasses
import difflib
import enum
import json
import math
import reprlib
import types
import typing
from typing import Any, TypeVar

from condense.errors import ConfigError

_CONFIGS: dict[str, type] = {}
C = TypeVar("C")


def config(cls: type[C]) -> type[C]:
    """Class decorator: make `cls` a frozen dataclass registered for JSON round-trips."""
    cls = dataclasses.dataclass(frozen=True)(cls)
    if cls.__name__ in _CONFIGS and _CONFIGS[cls.__name__] is not cls:
        raise TypeError(f"config name {cls.__name__!r} is used twice")
    _CONFIGS[cls.__name__] = cls
    cls.to_dict = _to_dict  # type: ignore[attr-defined]
    return cls


def _encode(v: Any) -> Any:
    if isinstance(v, enum.Enum):
        return v.value
    if dataclasses.is_dataclass(v) and not isinstance(v, type):
        return _to_dict(v)
    if isinstance(v, (tuple, list)):
        return [_encode(x) for x in v]
    if isinstance(v, dict):
        return {str(k): _encode(x) for k, x in v.items()}
    return v


def _to_dict(self: Any) -> dict[str, Any]:
    out: dict[str, Any] = {"type": type(self).__name__}
    for f in dataclasses.fields(self):
        out[f.name] = _encode(getattr(self, f.name))
    return out


# -- decoding: JSON values -> typed fields, checked against each field's type hint -------------------------------
MAX_INT = 2**63 - 1  # every int field must fit in 64 bits (torch, numpy and ONNX take no more)
MAX_DEPTH = 16  # configs nested deeper than this are refused (a real one nests 2-3 levels)


class _Show(reprlib.Repr):
    """repr for error messages: short, one line, safe on huge ints and deep nesting."""

    def __init__(self) -> None:
        super().__init__()
        self.maxlevel, self.maxstring, self.maxother, self.maxlist, self.maxdict = 3, 60, 60, 6, 6

    def repr_int(self, x: int, level: int) -> str:
        return repr(x) if x.bit_length() <= 96 else f"<an integer of {x.bit_length()} bits>"


def show(v: Any) -> str:
    """A short one-line repr of `v` for error messages (huge ints, long strings and deep nesting abbreviated)."""
    try:
        return _Show().repr(v)
    except (RecursionError, ValueError, TypeError):
        return f"<a {type(v).__name__}>"


class _Mismatch(Exception):
    """A value does not fit a type hint; the message says what was expected."""


def _is_config(tp: Any) -> bool:
    return isinstance(tp, type) and _CONFIGS.get(tp.__name__) is tp


def describe(tp: Any) -> str:
    """A type hint in words, e.g. 'an integer', 'a list of strings', "one of ['rtn', 'gptq']".

    Example:
        >>> describe(tuple[str, ...]), describe(int | None)
        ('a list of strings', 'an integer or null')
    """
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        parts = [describe(a) for a in args if a is not type(None)]
        return " or ".join(parts) + (" or null" if type(None) in args else "")
    if origin is tuple:
        if len(args) == 2 and args[1] is Ellipsis:
            inner = typing.get_args(args[0]) if typing.get_origin(args[0]) is tuple else ()
            if inner and inner[-1] is not Ellipsis:  # tuple[tuple[str, float], ...]
                what = "pairs" if len(inner) == 2 else f"lists of {len(inner)} values"
                return f"a list of {what} ({', '.join(describe(a) for a in inner)})"
            return f"a list of {describe(args[0]).removeprefix('a ').removeprefix('an ')}s"
        return f"a list of {len(args)} values ({', '.join(describe(a) for a in args)})"
    if origin is list:
        return f"a list of {describe(args[0]).removeprefix('a ').removeprefix('an ')}s" if args else "a list"
    if origin is dict:
        return "a mapping"
    if origin is typing.Literal:
        return f"one of {list(args)}"
    if isinstance(tp, type) and issubclass(tp, enum.Enum):
        return f"one of {[m.value for m in tp]}"
    if _is_config(tp):
        return f"a mapping of {tp.__name__} fields"
    return {bool: "true or false", int: "an integer", float: "a finite number", str: "a string"}.get(
        tp, getattr(tp, "__name__", str(tp)))


def _decode_int(v: Any) -> int:
    if isinstance(v, str):  # "12" or "1e3" from a command line or a hand-written file
        try:
            v = int(v.strip())
        except ValueError:
            try:
                v = float(v.strip())
            except ValueError:
                raise _Mismatch("an integer") from None
    if isinstance(v, float) and math.isfinite(v) and v == int(v):
        v = int(v)  # 1e3 and 100.0 are integers written as floats
    if isinstance(v, bool) or not isinstance(v, int):
        why = "" if not isinstance(v, float) else " (not a fraction)" if math.isfinite(v) else " (not NaN or infinity)"
        raise _Mismatch("an integer" + why)
    if abs(v) > MAX_INT:
        raise _Mismatch(f"an integer of at most 64 bits (|value| <= {MAX_INT})")
    return v


def _decode_float(v: Any) -> float:
    if isinstance(v, str):  # YAML 1.1 reads 1e-3 (no dot) as a string
        try:
            v = float(v.strip())
        except ValueError:
            raise _Mismatch("a finite number") from None
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        raise _Mismatch("a finite number")
    try:
        out = float(v)
    except OverflowError:  # an int past 1e308
        raise _Mismatch("a finite number (at most 1e308)") from None
    if not math.isfinite(out):
        raise _Mismatch("a finite number (not NaN or infinity)")
    return out


def _decode_enum(tp: type[enum.Enum], v: Any) -> Any:
    if isinstance(v, tp):
        return v
    if isinstance(v, str):
        for m in tp:  # the value, or the member's name, in any case: "gptq", "GPTQ", "per_channel"
            if v == m.value or v.lower() in (str(m.value).lower(), m.name.lower()):
                return m
    raise _Mismatch(describe(tp))


def _decode(tp: Any, v: Any, path: str, depth: int) -> Any:
    """`v` (a JSON value) as the hint `tp` says: `_Mismatch` if it does not fit, ConfigError from a nested config."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if tp is Any:
        if isinstance(v, dict) and isinstance(v.get("type"), str) and v["type"] in _CONFIGS:
            return _from_dict(v, path, depth + 1)  # a nested config written out with its type
        return v
    if origin in (typing.Union, types.UnionType):
        if v is None:
            if type(None) in args:
                return None
            raise _Mismatch(describe(tp))
        for arg in (a for a in args if a is not type(None)):
            try:
                return _decode(arg, v, path, depth)
            except _Mismatch:
                continue
        raise _Mismatch(describe(tp))
    if v is None:
        raise _Mismatch(describe(tp))
    if origin is tuple:
        variadic = len(args) == 2 and args[1] is Ellipsis
        if variadic and args[0] is str and isinstance(v, str):
            return (v,)  # include='x*' means the one pattern 'x*', not the patterns 'x' and '*'
        if not isinstance(v, (list, tuple)):
            raise _Mismatch(describe(tp))
        if not args:
            return tuple(v)
        if not variadic and len(v) != len(args):
            raise _Mismatch(describe(tp))
        item_types = [args[0]] * len(v) if variadic else list(args)
        try:  # an item that does not fit: the whole list is reported, with what its items must be
            return tuple(_decode(a, x, f"{path}[{i}]", depth) for i, (a, x) in enumerate(zip(item_types, v)))
        except _Mismatch:
            raise _Mismatch(describe(tp)) from None
    if origin is typing.Literal:
        if not any(type(v) is type(a) and v == a for a in args):
            raise _Mismatch(describe(tp))
        return v
    if isinstance(tp, type) and issubclass(tp, enum.Enum):
        return _decode_enum(tp, v)
    if _is_config(tp):
        if isinstance(v, tp):
            return v
        if not isinstance(v, dict):
            raise _Mismatch(describe(tp))
        name = v.get("type", tp.__name__)
        sub = _CONFIGS.get(name) if isinstance(name, str) else None
        if sub is None or not issubclass(sub, tp):
            raise _Mismatch(f"a mapping of {tp.__name__} fields (its 'type', if given, must be {tp.__name__!r})")
        return _from_dict({**v, "type": name}, path, depth + 1)
    if tp is bool:
        if not isinstance(v, bool):
            raise _Mismatch("true or false")
        return v
    if tp is int:
        return _decode_int(v)
    if tp is float:
        return _decode_float(v)
    if tp is str:
        if not isinstance(v, str):
            raise _Mismatch("a string")
        return v
    return v


def _example_mapping(cls: type) -> str:
    """A one-field JSON example of `cls`, e.g. '{"steps": 100}' for FitConfig."""
    for f in dataclasses.fields(cls):
        d = f.default
        if d is not dataclasses.MISSING and d is not None and not dataclasses.is_dataclass(d) and _jsonable(d):
            return json.dumps({f.name: _encode(d)})
    return "{}"


def _jsonable(v: Any) -> bool:
    try:
        json.dumps(_encode(v))
    except (TypeError, ValueError):
        return False
    return True


def _default_example(f: dataclasses.Field) -> str:
    """'; e.g. name=<default as JSON>' for messages; '' when the default is None or not plain data."""
    d = f.default
    if d is dataclasses.MISSING or d is None or d == () or not _jsonable(d):
        return ""
    if dataclasses.is_dataclass(d):
        return f"; e.g. {f.name}={_example_mapping(type(d))}"
    return f"; e.g. {f.name}={json.dumps(_encode(d))}"


def _from_dict(d: Any, where: str | None, depth: int) -> Any:
    prefix = f"{where}: " if where else ""
    if depth > MAX_DEPTH:
        raise ConfigError(f"configs are nested more than {MAX_DEPTH} levels deep; a config's fields hold plain "
                          "values or one nested config, e.g. {\"type\": \"DistillConfig\", \"fit\": {\"steps\": 100}}")
    if not isinstance(d, dict) or "type" not in d:
        raise ConfigError(f"{prefix}a config must be a mapping with a 'type' key, e.g. "
                          f"{{\"type\": \"FitConfig\", \"steps\": 100}}, got {show(d)}")
    name = d["type"]
    cls = _CONFIGS.get(name) if isinstance(name, str) else None
    if cls is None:
        raise ConfigError(f"{prefix}unknown config type {show(name)}; known: {', '.join(sorted(_CONFIGS))}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = [k for k in d if k != "type" and k not in fields]
    if unknown:
        bad = unknown[0]
        close = difflib.get_close_matches(bad, list(fields), n=1) if isinstance(bad, str) else []
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise ConfigError(f"{prefix}{name} has no field {show(bad)}{hint}; valid fields: {', '.join(fields)}")
    hints = typing.get_type_hints(cls)
    kwargs = {}
    for k, v in d.items():
        if k == "type":
            continue
        path = f"{prefix}{name}.{k}"  # a nested config's errors start with it: "DistillConfig.fit: FitConfig ..."
        try:
            kwargs[k] = _decode(hints.get(k, Any), v, path, depth)
        except _Mismatch as e:
            raise ConfigError(f"{path} must be {e}, got {show(v)}{_default_example(fields[k])}") from None
    try:
        return cls(**kwargs)
    except ConfigError as e:
        raise ConfigError(f"{prefix}{e}") from None
    except (TypeError, ValueError, ArithmeticError) as e:  # a check in __post_init__ that a value slipped past
        raise ConfigError(f"{prefix}{name}: {' '.join(str(e).split())}; valid fields: {', '.join(fields)}") \
            from None


def config_from_dict(d: Any) -> Any:
    """Rebuild a config from `to_dict()` output, or from hand-written JSON: every value is checked against its
    field's type hint, a nested config may be a plain mapping of its fields, and any bad input raises a ConfigError
    naming the field, what it must be and an example (never another exception).

    Example:
        >>> @config
        ... class _DecodeExample:
        ...     steps: int = 100
        >>> config_from_dict({"type": "_DecodeExample", "steps": 1e3}).steps
        1000
        >>> config_from_dict({"type": "_DecodeExample", "steps": 1.5})
        Traceback (most recent call last):
        condense.errors.ConfigError: _DecodeExample.steps must be an integer (not a fraction), got 1.5; e.g. steps=100
    """
    try:
        return _from_dict(d, None, 0)
    except RecursionError:
        raise ConfigError("config is nested too deeply to read; a config's fields hold plain values or one nested "
                          "config, e.g. {\"type\": \"DistillConfig\", \"fit\": {\"steps\": 100}}") from None


def registered_configs() -> dict[str, type]:
    return dict(_CONFIGS)


# -- validators configs share (each names the config, the field and an example of a valid value) -----------------
def check_patterns(cfg: Any, *names: str, example: str = "('layers.*',)") -> None:
    """Each field in `names` (default include/exclude) must be a tuple of fnmatch patterns, not a bare string.

    Example:
        >>> @config
        ... class PatternsExample:
        ...     include: tuple[str, ...] = ("*",)
        >>> check_patterns(PatternsExample(include="x*"), "include")
        Traceback (most recent call last):
        condense.errors.ConfigError: PatternsExample.include must be a tuple of patterns, e.g. ('layers.*',), got 'x*'
    """
    for name in names or ("include", "exclude"):
        v = getattr(cfg, name)
        if isinstance(v, list):
            v = tuple(v)
            object.__setattr__(cfg, name, v)  # a frozen config normalises its own field, once
        if not isinstance(v, tuple) or not all(isinstance(p, str) for p in v):
            raise ConfigError(f"{type(cfg).__name__}.{name} must be a tuple of patterns, e.g. {example}, got {show(v)}")


MAX_COUNT = 10**9  # the largest step, batch or repeat count a config accepts: nothing overflows or runs forever


def _field(cfg: Any, name: str) -> str:
    return f"{type(cfg).__name__}.{name}"


def check_int(cfg: Any, name: str, *, lo: int | None = 0, hi: int | None = MAX_COUNT, example: Any,
              optional: bool = False) -> None:
    """`cfg.name` must be an int in lo..hi (bools refused; None too unless `optional`).

    Example:
        >>> @config
        ... class _Steps:
        ...     steps: int = 100
        >>> check_int(_Steps(steps=10**12), "steps", lo=0, example=100)
        Traceback (most recent call last):
        condense.errors.ConfigError: _Steps.steps must be an integer in 0..1000000000, got 1000000000000; e.g. steps=100
    """
    v = getattr(cfg, name)
    if v is None and optional:
        return
    ok = not isinstance(v, bool) and isinstance(v, int) and (lo is None or v >= lo) and (hi is None or v <= hi)
    if not ok:
        if lo == 1:
            what = "a positive integer" + (f" up to {hi}" if hi is not None else "")
        else:
            what = "an integer" + (f" in {lo}..{hi}" if lo is not None and hi is not None else
                                   f" >= {lo}" if lo is not None else f" <= {hi}" if hi is not None else "")
        raise ConfigError(f"{_field(cfg, name)} must be {what}{' or None' if optional else ''}, got {show(v)}; "
                          f"e.g. {name}={example!r}")


def check_float(cfg: Any, name: str, *, lo: float | None = None, hi: float | None = None, lo_open: bool = False,
                hi_open: bool = False, example: Any, optional: bool = False) -> None:
    """`cfg.name` must be a finite number within the bounds (`lo_open`/`hi_open`: the bound itself is excluded);
    bools, NaN and infinities are refused, and None too unless `optional`.

    Example:
        >>> @config
        ... class _Lr:
        ...     lr: float = 1e-3
        >>> check_float(_Lr(lr=float("inf")), "lr", lo=0, lo_open=True, example=1e-3)
        Traceback (most recent call last):
        condense.errors.ConfigError: _Lr.lr must be a finite number > 0, got inf; e.g. lr=0.001
    """
    v = getattr(cfg, name)
    if v is None and optional:
        return
    finite = False
    if not isinstance(v, bool) and isinstance(v, (int, float)):
        try:
            f = float(v)
        except OverflowError:  # an int past 1e308
            f = math.inf
        finite = math.isfinite(f)
        if finite and (lo is None or (f > lo if lo_open else f >= lo)) and (
                hi is None or (f < hi if hi_open else f <= hi)):
            return
    if lo is not None and hi is not None:
        bound = f"in {'(' if lo_open else '['}{lo}, {hi}{')' if hi_open else ']'}"
    elif lo is not None:
        bound = f"{'>' if lo_open else '>='} {lo}"
    else:
        bound = f"{'<' if hi_open else '<='} {hi}" if hi is not None else ""
    # a range says "finite" by itself, a one-sided bound does not: "> 0, got 0.0" but "a finite number > 0, got inf"
    what = bound if (lo is not None and hi is not None) or (finite and bound) else f"a finite number {bound}".strip()
    raise ConfigError(f"{_field(cfg, name)} must be {what}{' or None' if optional else ''}, got {show(v)}; "
                      f"e.g. {name}={example!r}")


def check_choice(cfg: Any, name: str, choices: Any, *, example: Any = None) -> None:
    """`cfg.name` must be one of `choices` (a string; unhashable values are refused with the list, not a TypeError).

    Example:
        >>> @config
        ... class _Choice:
        ...     loss: str = "auto"
        >>> check_choice(_Choice(loss=["auto"]), "loss", ("auto", "logits"))
        Traceback (most recent call last):
        condense.errors.ConfigError: _Choice.loss must be one of ['auto', 'logits'], got ['auto']; e.g. loss='auto'
    """
    v = getattr(cfg, name)
    names = list(choices)
    if not isinstance(v, str) or v not in names:
        raise ConfigError(f"{_field(cfg, name)} must be one of {names}, got {show(v)}; "
                          f"e.g. {name}={example if example is not None else names[0]!r}")


def check_nested(cfg: Any, name: str, cls: type, *, optional: bool = False) -> None:
    """`cfg.name` must be a `cls` config; a plain mapping of its fields (the Python API's `fit={"steps": 100}`) is
    decoded into one, with every value checked as `config_from_dict` checks it. A frozen config normalises its own
    field here, once.

    Example:
        >>> from condense.train.finetune import FineTuneConfig
        >>> FineTuneConfig(fit={"steps": 5}).fit.steps
        5
    """
    v = getattr(cfg, name)
    if isinstance(v, cls) or (v is None and optional):
        return
    path = _field(cfg, name)
    if not isinstance(v, dict):
        raise ConfigError(f"{path} must be a {cls.__name__}{' or None' if optional else ''} (or a mapping of its "
                          f"fields, e.g. {_example_mapping(cls)}), got {show(v)}")
    try:
        decoded = _decode(cls, v, path, 0)
    except _Mismatch as e:
        raise ConfigError(f"{path} must be {e}, got {show(v)}") from None
    object.__setattr__(cfg, name, decoded)


def check_positive_int(cfg: Any, name: str, *, example: int = 8) -> None:
    """`cfg.name` must be an int in 1..MAX_COUNT (bools refused).

    Example:
        >>> @config
        ... class IntExample:
        ...     batches: int = 8
        >>> check_positive_int(IntExample(batches=0), "batches")
        Traceback (most recent call last):
        condense.errors.ConfigError: IntExample.batches must be a positive integer, got 0; e.g. 8
    """
    v = getattr(cfg, name)
    if isinstance(v, bool) or not isinstance(v, int) or not 1 <= v <= MAX_COUNT:
        most = f" <= {MAX_COUNT}" if isinstance(v, int) and v > MAX_COUNT else ""
        raise ConfigError(f"{type(cfg).__name__}.{name} must be a positive integer{most}, got {show(v)}; "
                          f"e.g. {example}")
