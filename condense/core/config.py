"""Configs are small frozen dataclasses that round-trip through JSON.

Every config class registers itself under its class name (via `@config`), so a saved recipe, search trial or
artifact can rebuild the exact config that produced it: `config_from_dict(cfg.to_dict()) == cfg`.

- `config_codec`: `to_dict` and the one decoder (`config_from_dict`, `decode_config`) that the CLI, recipes,
  artifacts, searches and the Python API's nested mappings all use; its docstring gives the rule for each type.
- `config_checks`: the validators configs call in `__post_init__` (`check_int`, `check_nested`, ...).

A class may set `version = N` (default 1; `to_dict` writes it) with an `upgrade(fields, version) -> fields` static
method that turns a mapping written by version `version` into one of version + 1, and `renamed = (Renamed(old,
new), ...)`: old field names that still decode from mappings and keywords, and still read as attributes, each
with a DeprecationWarning naming the new field.
"""
from __future__ import annotations

import dataclasses
import functools
import warnings
from typing import Any, TypeVar

from condense.core.config_checks import (MAX_COUNT, check_choice, check_float, check_int, check_nested,
                                         check_patterns, check_positive_int)
from condense.core.config_base import Renamed, describe, merged, register, registered_configs, show, to_dict
from condense.core.config_codec import MAX_DEPTH, MAX_INT, apply_renames, config_from_dict, decode_config

__all__ = ["config", "Renamed", "merged", "config_from_dict", "decode_config", "describe", "registered_configs", "show",
           "MAX_COUNT", "MAX_DEPTH", "MAX_INT", "check_choice", "check_float", "check_int", "check_nested",
           "check_patterns", "check_positive_int"]

C = TypeVar("C")


def config(cls: type[C]) -> type[C]:
    """Class decorator: make `cls` a frozen dataclass registered for JSON round-trips (see the module docstring
    for `version`, `upgrade` and `renamed`).

    Example:
        >>> @config
        ... class _RenameExample:
        ...     finetune: int = 0
        ...     renamed = (Renamed("fit", "finetune"),)
        >>> import warnings
        >>> with warnings.catch_warnings():
        ...     warnings.simplefilter("ignore", DeprecationWarning)
        ...     old = _RenameExample(fit=3), config_from_dict({"type": "_RenameExample", "fit": 4})
        >>> old[0].finetune, old[1].finetune, old[0].to_dict()
        (3, 4, {'type': '_RenameExample', 'version': 1, 'finetune': 3})
    """
    cls = dataclasses.dataclass(frozen=True)(cls)
    version = getattr(cls, "version", 1)
    if isinstance(version, bool) or not isinstance(version, int) or version < 1:
        raise TypeError(f"{cls.__name__}.version must be a positive integer, got {version!r}")
    if version > 1 and not callable(getattr(cls, "upgrade", None)):
        raise TypeError(f"{cls.__name__}.version is {version}: give it an upgrade(fields, version) -> fields static "
                        "method that reads what earlier versions wrote")
    if {"type", "version"} & {f.name for f in dataclasses.fields(cls)}:
        raise TypeError(f"{cls.__name__}: 'type' and 'version' are the keys to_dict writes; name the field otherwise")
    cls.version = version  # type: ignore[attr-defined]
    renames = tuple(getattr(cls, "renamed", ()))
    if renames:
        _add_renames(cls, renames)
    register(cls)
    cls.to_dict = to_dict  # type: ignore[attr-defined]
    return cls


def _add_renames(cls: type, renames: tuple[Renamed, ...]) -> None:
    names = {f.name for f in dataclasses.fields(cls)}
    for r in renames:
        if r.new not in names or r.old in names:
            raise TypeError(f"{cls.__name__}: Renamed({r.old!r}, {r.new!r}) needs {r.new!r} to be a field and "
                            f"{r.old!r} not to be one")
    init = cls.__init__

    @functools.wraps(init)
    def __init__(self: Any, *args: Any, **kwargs: Any) -> None:
        if kwargs:
            kwargs = apply_renames(type(self), kwargs)
        init(self, *args, **kwargs)

    cls.__init__ = __init__  # type: ignore[misc]
    for r in renames:
        if r.old not in cls.__dict__:
            setattr(cls, r.old, property(_old_reader(cls.__name__, r), doc=f"Deprecated: use `{r.new}`."))


def _old_reader(name: str, r: Renamed) -> Any:
    def read(self: Any) -> Any:
        warnings.warn(f"{name}.{r.old} is deprecated: use {name}.{r.path or r.new}", DeprecationWarning, stacklevel=2)
        return r.read(self) if r.read is not None else getattr(self, r.new)

    return read
