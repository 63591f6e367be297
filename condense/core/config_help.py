"""A config class's fields in words, for `--help`: every field a user can `--set`, its type and its default."""
from __future__ import annotations

import dataclasses
import enum
import typing
from typing import Any

from condense.core.config import describe


def _default(f: dataclasses.Field) -> Any:
    if f.default is not dataclasses.MISSING:
        v = f.default
    elif f.default_factory is not dataclasses.MISSING:  # type: ignore[misc]
        v = f.default_factory()  # type: ignore[misc]
    else:
        return "(required)"
    if isinstance(v, enum.Enum):
        return v.value
    if dataclasses.is_dataclass(v):
        return f"{type(v).__name__}()"
    return v


def fields_text(cls: type, *, indent: str = "  ") -> str:
    """One line per field of config class `cls`: `name: type (default: value)`.

    Example:
        >>> from condense.train.loop import FitConfig
        >>> print(fields_text(FitConfig).splitlines()[0])
          steps: an integer (default: 100)
    """
    hints = typing.get_type_hints(cls)
    return "\n".join(f"{indent}{f.name}: {describe(hints[f.name])} (default: {_default(f)!r})"
                     for f in dataclasses.fields(cls) if not f.name.startswith("_"))
