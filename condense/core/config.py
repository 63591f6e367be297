"""Configs are small frozen dataclasses that round-trip through JSON.

Every config class registers itself under its class name (via `@config`), so a saved recipe, search trial or
artifact can rebuild the exact config that produced it: `config_from_dict(cfg.to_dict()) == cfg`.
"""
from __future__ import annotations

import dataclasses
import enum
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


def _decode(tp: Any, v: Any) -> Any:
    origin = typing.get_origin(tp)
    if v is None:
        return None
    if isinstance(tp, type) and issubclass(tp, enum.Enum):
        return tp(v)
    if isinstance(v, dict) and "type" in v and v["type"] in _CONFIGS:
        return config_from_dict(v)
    if origin is tuple:
        args = typing.get_args(tp)
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_decode(args[0], x) for x in v)
        return tuple(v)
    if origin in (typing.Union, getattr(__import__("types"), "UnionType", None)):
        for arg in typing.get_args(tp):
            if arg is type(None):
                continue
            try:
                return _decode(arg, v)
            except (ValueError, TypeError):
                continue
        return v
    return v


def config_from_dict(d: dict[str, Any]) -> Any:
    """Rebuild a config from `to_dict()` output; unknown types or fields raise a ConfigError naming the fix."""
    if not isinstance(d, dict) or "type" not in d:
        raise ConfigError(f"a config must be a mapping with a 'type' key, got {d!r}")
    name = d["type"]
    cls = _CONFIGS.get(name)
    if cls is None:
        raise ConfigError(f"unknown config type {name!r}; known: {', '.join(sorted(_CONFIGS))}")
    hints = typing.get_type_hints(cls)
    fields = {f.name for f in dataclasses.fields(cls)}
    unknown = set(d) - fields - {"type"}
    if unknown:
        raise ConfigError(f"{name} has no field(s) {sorted(unknown)}; valid fields: {sorted(fields)}")
    kwargs = {k: _decode(hints[k], v) for k, v in d.items() if k != "type"}
    return cls(**kwargs)


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
        if isinstance(v, str) or not all(isinstance(p, str) for p in v):
            raise ConfigError(f"{type(cfg).__name__}.{name} must be a tuple of patterns, e.g. {example}, got {v!r}")


def check_positive_int(cfg: Any, name: str, *, example: int = 8) -> None:
    """`cfg.name` must be an int >= 1 (bools refused).

    Example:
        >>> @config
        ... class IntExample:
        ...     batches: int = 8
        >>> check_positive_int(IntExample(batches=0), "batches")
        Traceback (most recent call last):
        condense.errors.ConfigError: IntExample.batches must be a positive integer, got 0; e.g. 8
    """
    v = getattr(cfg, name)
    if isinstance(v, bool) or not isinstance(v, int) or v < 1:
        raise ConfigError(f"{type(cfg).__name__}.{name} must be a positive integer, got {v!r}; e.g. {example}")
