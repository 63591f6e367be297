"""Every technique's handlers in one registry keyed by config type name, so a pipeline can apply any step.

Technique packages register here (quantize, and later prune, factorize, ...); `apply_` never needs an if/elif.
"""
from __future__ import annotations

import importlib
from typing import Any, Callable

from torch import nn

from condense.core.registry import Registry

TRANSFORMS: Registry[Callable[[nn.Module, Any], nn.Module]] = Registry("transformation config")

# Packages that register transforms when imported (imported on demand).
TECHNIQUE_PACKAGES = ("condense.quantize",)


def load_techniques() -> None:
    for mod in TECHNIQUE_PACKAGES:
        importlib.import_module(mod)


def apply_(model: nn.Module, config: Any) -> nn.Module:
    """Apply the transformation `config` describes to `model` (in place where possible); returns the model."""
    load_techniques()
    return TRANSFORMS.get(type(config).__name__)(model, config)
