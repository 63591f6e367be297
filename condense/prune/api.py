"""`prune_(model, config)`: one verb; the config's type picks its handler from the transform registry."""
from __future__ import annotations

from typing import Any, Callable

from torch import nn

from condense.core.transforms import apply_, register_family

register_family("prune", key="method", noun="pruning config")


def register_pruner(config_name: str) -> Callable:
    """Deprecated: use `condense.core.transforms.register_transform(Config, family="prune", name=..., replay=...)`,
    which registers the handler by config *type* together with its name and replay."""
    raise TypeError(f"register_pruner({config_name!r}) is gone: register the handler with "
                    "condense.core.transforms.register_transform(ConfigClass, family='prune', name=..., replay=...)")


def prune_(model: nn.Module, config: Any, *, task: Any = None, calibration: Any = None) -> nn.Module:
    """Prune `model` as `config` says (in place where possible); returns the model.

    Args:
        task: gives calibration/training data and how to run the model, for criteria and fine-tuning that need it.
        calibration: explicit calibration batches (overrides the task's).
    """
    return apply_(model, config, task=task, calibration=calibration, family="prune")
