"""Step kinds a recipe may use: a view of the transform registry (`condense.core.transforms.TRANSFORMS`).

Every registered transform family is a step kind (`quantize`, `prune`, `export`, ...), its parameter (`scheme`,
`method`, `format`) and default come from `register_family`, and its methods are the registered names, so a new
technique appears in recipes by registering its transform; nothing here changes.

`register_step` still names extra methods by "module:Class" path, imported only when a recipe uses them: a
technique from an optional package (or a later release) then fails validation with a clear message instead of
breaking every recipe.

Example:
    >>> STEP_KINDS.get("quantize").methods["dynamic"]
    'condense.quantize.dynamic:DynamicInt8Config'
    >>> STEP_KINDS.get("quantize").default
    'int8'
"""
from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from typing import Iterator

from condense.core.transforms import TRANSFORMS
from condense.errors import ConfigError


@dataclass(frozen=True)
class StepKind:
    """One kind of recipe step.

    Args:
        key: the parameter choosing the method ("method", "scheme" or "format").
        methods: method name -> "module:Class" of its config.
        default: the method used when the step does not name one (None: it must).
    """

    key: str
    methods: dict[str, str] = field(default_factory=dict)
    default: str | None = None


def _path(cls: type) -> str:
    return f"{cls.__module__}:{cls.__qualname__}"


class StepKinds:
    """Step kind -> StepKind, built from the transform registry plus `register_step` extras."""

    def __init__(self) -> None:
        self._extra: dict[str, StepKind] = {}

    def _kinds(self) -> dict[str, StepKind]:
        out = {}
        for name, fam in TRANSFORMS.families().items():
            methods = {m: _path(t.config) for m, t in TRANSFORMS.names(name).items()}
            out[name] = StepKind(fam.key, methods, fam.default if fam.default in methods else None)
        for name, extra in self._extra.items():
            if name in out:
                merged = {**extra.methods, **out[name].methods}
                out[name] = StepKind(out[name].key, merged, out[name].default or extra.default)
            else:
                out[name] = extra
        return out

    def get(self, kind: str) -> StepKind:
        kinds = self._kinds()
        if kind not in kinds:
            raise ConfigError(f"unknown recipe step {kind!r}; choose one of: {', '.join(sorted(kinds))}")
        return kinds[kind]

    def register(self, kind: str, entry: StepKind) -> StepKind:
        if kind in self._extra:
            raise KeyError(f"recipe step {kind!r} is registered twice")
        self._extra[kind] = entry
        return entry

    def __contains__(self, kind: object) -> bool:
        return kind in self._kinds()

    def __iter__(self) -> Iterator[str]:
        return iter(sorted(self._kinds()))

    def items(self) -> list[tuple[str, StepKind]]:
        return sorted(self._kinds().items())


STEP_KINDS = StepKinds()


def register_step(kind: str, key: str, methods: dict[str, str], default: str | None = None) -> StepKind:
    """Offer config classes that may not be importable ("module:Class" paths) as recipe step methods.

    A technique in this package registers its transform instead (`register_transform`); this is for optional
    packages, resolved only when a recipe uses them.
    """
    if default is not None and default not in methods:
        raise ValueError(f"default {default!r} of step {kind!r} is not one of its methods {sorted(methods)}")
    return STEP_KINDS.register(kind, StepKind(key, dict(methods), default))


def resolve_class(path: str, *, where: str) -> type:
    """Import "module:Class"; a ConfigError saying it is not available in this version if that fails."""
    mod, _, name = path.partition(":")
    try:
        obj = importlib.import_module(mod)
        for part in name.split("."):
            obj = getattr(obj, part)
        return obj
    except (ImportError, AttributeError) as e:
        raise ConfigError(f"{where}: {path} is not available in this version of condense ({type(e).__name__}: "
                          f"{e}); remove the step or upgrade condense") from None
