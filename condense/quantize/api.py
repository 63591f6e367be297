"""`quantize_(model, config)`: one verb; the config's type picks its handler from `QUANTIZERS`."""
from __future__ import annotations

from typing import Any, Callable

from torch import nn

from condense.core.registry import Registry
from condense.core.transforms import TRANSFORMS, TransformContext
from condense.errors import ConfigError

QUANTIZERS: Registry[Callable[[nn.Module, Any], nn.Module]] = Registry("quantization config")


def register_quantizer(config_name: str) -> Callable:
    """Register a quantization handler for `quantize_` and for pipelines (`condense.core.transforms`)."""

    def deco(fn: Callable) -> Callable:
        QUANTIZERS.register(config_name, fn)
        TRANSFORMS.register(config_name, fn)
        return fn

    return deco


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
    import condense.quantize  # noqa: F401  (make sure every handler is registered)

    name = type(config).__name__
    if name not in QUANTIZERS:
        raise ConfigError(f"{name} is not a quantization config; use one of: {', '.join(QUANTIZERS)}")
    return QUANTIZERS.get(name)(model, config, TransformContext(task=task, calibration=calibration))
