"""What the config modules share: the registry of config classes, `Renamed`, `to_dict`, and the words of error
messages (`show`, `describe`, examples). The decoder is `config_codec`; the validators `config_checks`."""
from __future__ import annotations

import dataclasses
import enum
import json
import reprlib
import types
import typing
from typing import Any, Callable

_CONFIGS: dict[str, type] = {}


@dataclasses.dataclass(frozen=True)
class Renamed:
    """A field's old name, still read (from mappings and as a keyword) with a DeprecationWarning naming `new`.

    convert: (the old value, the new field's value so far: given, built by an earlier Renamed, or its default)
        -> the new field's value; None: the old value as is. read: the config -> what `cfg.<old>` returns
        (None: `cfg.<new>`). path: where the old value goes, for the warning (e.g. "finetune.steps"; None: new).
    """

    old: str
    new: str
    convert: Callable[[Any, Any], Any] | None = None
    read: Callable[[Any], Any] | None = None
    path: str | None = None


def merged(current: Any, **changes: Any) -> Any:
    """A nested config's value with `changes` applied, for `Renamed.convert`: a mapping (decoded later, so bad
    values are reported with their field), or None when `current` is None (nothing to change).

    Example:
        >>> merged({"steps": 5}, lr=0.1), merged(None, lr=0.1)
        ({'steps': 5, 'lr': 0.1}, None)
    """
    if current is None:
        return None
    if dataclasses.is_dataclass(current) and not isinstance(current, type):
        current = to_dict(current)
    return {**current, **changes} if isinstance(current, dict) else current


def register(cls: type) -> None:
    if cls.__name__ in _CONFIGS and _CONFIGS[cls.__name__] is not cls:
        raise TypeError(f"config name {cls.__name__!r} is used twice")
    _CONFIGS[cls.__name__] = cls


def registered_configs() -> dict[str, type]:
    return dict(_CONFIGS)


def version_of(cls: type) -> int:
    return getattr(cls, "version", 1)


# -- encoding ----------------------------------------------------------------------------------------------------
def encode(v: Any) -> Any:
    if isinstance(v, enum.Enum):
        return v.value
    if dataclasses.is_dataclass(v) and not isinstance(v, type):
        return to_dict(v)
    if isinstance(v, (tuple, list)):
        return [encode(x) for x in v]
    if isinstance(v, dict):
        return {str(k): encode(x) for k, x in v.items()}
    return v


def to_dict(self: Any) -> dict[str, Any]:
    """The config as plain JSON-able data: {"type": class name, "version": N, field: value, ...}."""
    out: dict[str, Any] = {"type": type(self).__name__, "version": version_of(type(self))}
    for f in dataclasses.fields(self):
        out[f.name] = encode(getattr(self, f.name))
    return out


# -- words for error messages ------------------------------------------------------------------------------------
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


class Mismatch(Exception):
    """A value does not fit a type hint; the message says what was expected."""


def is_config(tp: Any) -> bool:
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
    if is_config(tp):
        return f"a mapping of {tp.__name__} fields"
    return {bool: "true or false", int: "an integer", float: "a finite number", str: "a string"}.get(
        tp, getattr(tp, "__name__", str(tp)))


def _jsonable(v: Any) -> bool:
    try:
        json.dumps(encode(v))
    except (TypeError, ValueError):
        return False
    return True


def example_mapping(cls: type) -> str:
    """A one-field JSON example of `cls`, e.g. '{"steps": 100}' for FitConfig."""
    for f in dataclasses.fields(cls):
        d = f.default
        if d is not dataclasses.MISSING and d is not None and not dataclasses.is_dataclass(d) and _jsonable(d):
            return json.dumps({f.name: encode(d)})
    return "{}"


def _type_example(tp: Any) -> Any:
    """A plain value of hint `tp` for an example, or None where no value is a good example (strings)."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        return next((e for a in args if a is not type(None) and (e := _type_example(a)) is not None), None)
    if origin is typing.Literal:
        return args[0]
    if isinstance(tp, type) and issubclass(tp, enum.Enum):
        return next(iter(tp)).value
    return {int: 1, float: 0.5, bool: True}.get(tp)


def default_example(f: dataclasses.Field, tp: Any = None) -> str:
    """'; e.g. name=<default as JSON>' for messages (a plain value of the type when the default is None or
    empty); '' when there is no good example."""
    d = f.default
    if dataclasses.is_dataclass(d):
        return f"; e.g. {f.name}={example_mapping(type(d))}"
    if d is dataclasses.MISSING or d is None or d == () or not _jsonable(d):
        if is_config(tp) or any(is_config(a) for a in typing.get_args(tp)):
            cls = tp if is_config(tp) else next(a for a in typing.get_args(tp) if is_config(a))
            return f"; e.g. {f.name}={example_mapping(cls)}"
        e = _type_example(tp)
        return "" if e is None else f"; e.g. {f.name}={json.dumps(e)}"
    return f"; e.g. {f.name}={json.dumps(encode(d))}"


