"""`quantize_(model, config)`: one verb; the config's type picks its handler from the transform registry."""
from __future__ import annotations

from typing import Any, Callable

from torch import nn

from condense.core.transforms import apply_, register_family

register_family("quantize", key="scheme", default="int8", noun="quantization config")


def register_quantizer(config_name: str) -> Callable:
    """Deprecated: use `condense.core.transforms.register_transform(Config, family="quantize", name=..., replay=...)`,
    which registers the handler by config *type* together with its name and replay."""
    raise TypeError(f"register_quantizer({config_name!r}) is gone: register the handler with "
                    "condense.core.transforms.register_transform(ConfigClass, family='quantize', name=..., replay=...)")


def quantize_(model: nn.Module, config: Any, *, task: Any = None, calibration: Any = None) -> nn.Module:
    """Quantize `model` in place as `config` says; returns the model (for chaining).

    Args:
        task: gives calibration data and how to run the model, for configs that calibrate.
        calibration: explicit calibration batches (overrides the task's).

    Example:
        >>> import torch, condense
        >>> m = torch.nn.Sequential(torch.nn.Linear(16, 16))
        >>> condense.quantize_(m, condense.DynamicInt8Config())[0].__class__.__name__
        'Linear'
    """
    return apply_(model, config, task=task, calibration=calibration, family="quantize")
