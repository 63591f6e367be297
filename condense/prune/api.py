"""`prune_(model, config)`: one verb; the config's type picks its handler from `PRUNERS`."""
from __future__ import annotations

from typing import Any, Callable

from torch import nn

from condense.core.registry import Registry
from condense.core.transforms import TRANSFORMS, TransformContext
from condense.errors import ConfigError

PRUNERS: Registry[Callable[[nn.Module, Any, TransformContext], nn.Module]] = Registry("pruning config")


def register_pruner(config_name: str) -> Callable:
    """Register a pruning handler for `prune_` and for pipelines (`condense.core.transforms`)."""

    def deco(fn: Callable) -> Callable:
        PRUNERS.register(config_name, fn)
        TRANSFORMS.register(config_name, fn)
        return fn

    return deco


def prune_(model: nn.Module, config: Any, *, task: Any = None, calibration: Any = None) -> nn.Module:
    """Prune `model` as `config` says (in place where possible); returns the model.

    Args:
        task: gives calibration/training data and how to run the model, for criteria and fine-tuning that need it.
        calibration: explicit calibration batches (overrides the task's).
    """
    import condense.prune  # noqa: F401  (make sure every handler is registered)

    name = type(config).__name__
    if name not in PRUNERS:
        raise ConfigError(f"{name} is not a pruning config; use one of: {', '.join(PRUNERS)}")
    return PRUNERS.get(name)(model, config, TransformContext(task=task, calibration=calibration))
