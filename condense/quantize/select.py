"""Choosing layers by module-name patterns (fnmatch), the same `include`/`exclude` everywhere."""
from __future__ import annotations

from fnmatch import fnmatchcase

from torch import nn

from condense.errors import ConfigError


def select_modules(model: nn.Module, types: tuple[type, ...], include: tuple[str, ...],
                   exclude: tuple[str, ...], *, what: str) -> list[str]:
    """Names of submodules of `types` matching any `include` pattern and no `exclude` pattern.

    A pattern that matches no module of those types is an error (never a silent no-op).
    """
    candidates = [n for n, m in model.named_modules() if isinstance(m, types) and n]
    for pat in include:
        if pat != "*" and not any(fnmatchcase(n, pat) for n in candidates):
            raise ConfigError(f"{what}: include pattern {pat!r} matches no {'/'.join(t.__name__ for t in types)} "
                              f"module; module names look like {candidates[:3]}")
    chosen = [n for n in candidates if any(fnmatchcase(n, p) for p in include)
              and not any(fnmatchcase(n, p) for p in exclude)]
    if not chosen:
        raise ConfigError(f"{what}: no {'/'.join(t.__name__ for t in types)} module left to quantize "
                          f"(include={list(include)}, exclude={list(exclude)}); loosen the patterns")
    return chosen
