"""Technique names on the command line, read from the transform registry (`condense.core.transforms.TRANSFORMS`).

`quantize --scheme` and `prune --method` offer every listed transform of their family; `distill`, `factorize` and
`early-exit` apply their family's default config. A technique registered with `register_transform` appears here
(and in recipes and, with `search=True`, in `condense search`) without any edit to the CLI.
"""
from __future__ import annotations

# command -> (transform family, flag choosing the method or None for one config, CLI default method)
CHOICE_COMMANDS: dict[str, tuple[str, str, str]] = {
    "quantize": ("quantize", "--scheme", "int8"),
    "prune": ("prune", "--method", "unstructured"),
}
TECHNIQUE_COMMANDS: tuple[str, ...] = ("distill", "factorize", "early-exit")  # one config each, --set reaches it


def _path(cls: type) -> str:
    return f"{cls.__module__}:{cls.__qualname__}"


def methods(family: str) -> dict[str, str]:
    """{method name: "module:Class"} of a transform family (imports the technique packages)."""
    from condense.core.transforms import TRANSFORMS

    return {name: _path(t.config) for name, t in TRANSFORMS.names(family).items()}


def technique(family: str) -> str:
    """"module:Class" of a single-config family's default method (distill -> DistillConfig)."""
    from condense.core.transforms import TRANSFORMS

    fam = TRANSFORMS.family(family)
    names = methods(family)
    return names[fam.default] if fam.default in names else next(iter(names.values()))
