"""Choosing layers by module-name patterns (fnmatch), the same `include`/`exclude` for every technique."""
from __future__ import annotations

from fnmatch import fnmatchcase

from torch import nn

from condense.errors import ConfigError


def select_modules(model: nn.Module, types: tuple[type, ...], include: tuple[str, ...],
                   exclude: tuple[str, ...], *, what: str, verb: str = "quantize",
                   strict_exclude: bool = False) -> list[str]:
    """Names of submodules of `types` matching any `include` pattern and no `exclude` pattern.

    An include pattern (and, with `strict_exclude`, an exclude pattern) that matches no module of those types is an
    error, never a silent no-op. A model that is itself one such layer is selected as "".

    Example:
        >>> select_modules(nn.Sequential(nn.Linear(2, 2), nn.ReLU()), (nn.Linear,), ("*",), (), what="demo")
        ['0']
    """
    types = tuple(dict.fromkeys(types))
    present = [t for t in types if any(isinstance(m, t) for m in model.modules())]
    kinds = "/".join(t.__name__ for t in present or types)  # name the kinds this model has
    candidates = [n for n, m in model.named_modules() if isinstance(m, types) and n]
    if not candidates and isinstance(model, types):
        candidates = [""]  # the model is itself one layer
    checked = (("include", include), ("exclude", exclude)) if strict_exclude else (("include", include),)
    for key, pats in checked:
        for pat in pats:
            if pat != "*" and not any(fnmatchcase(n, pat) for n in candidates):
                raise ConfigError(f"{what}: {key} pattern {pat!r} matches no {kinds} module; module names look "
                                  f"like {candidates[:4]}")
    chosen = [n for n in candidates if any(fnmatchcase(n, p) for p in include)
              and not any(fnmatchcase(n, p) for p in exclude)]
    if not chosen:
        raise ConfigError(f"{what}: no {kinds} module left to {verb} (include={list(include)}, "
                          f"exclude={list(exclude)}); loosen the patterns")
    return chosen
