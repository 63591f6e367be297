"""Quantization error measures: MSE, SQNR, and the output error of one layer with only its weight quantized.

Per-layer error tells which layers are sensitive (keep them at higher precision, or exclude them by name) before
a whole-model accuracy run; it measures, it never changes the model (the weight is restored exactly).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from condense.errors import ConfigError
from condense.quantize.primitives import QuantSpec, fake_quantize


def mse(a: torch.Tensor, b: torch.Tensor) -> float:
    """Mean squared difference of two tensors of the same shape.

    Example:
        >>> mse(torch.tensor([0.0, 0.0]), torch.tensor([1.0, 3.0]))
        5.0
    """
    if a.shape != b.shape:
        raise ConfigError(f"mse needs tensors of the same shape, got {tuple(a.shape)} and {tuple(b.shape)}")
    return float((a.detach().double() - b.detach().double()).pow(2).mean())


def sqnr_db(ref: torch.Tensor, x: torch.Tensor) -> float:
    """Signal-to-quantization-noise ratio 10*log10(sum ref^2 / sum (ref - x)^2) in dB (inf when equal).

    Example:
        >>> sqnr_db(torch.tensor([5.0, 5.0]), torch.tensor([5.5, 4.5]))
        20.0
    """
    if ref.shape != x.shape:
        raise ConfigError(f"sqnr_db needs tensors of the same shape, got {tuple(ref.shape)} and {tuple(x.shape)}")
    ref64 = ref.detach().double()
    noise = float((ref64 - x.detach().double()).pow(2).sum())
    signal = float(ref64.pow(2).sum())
    if noise == 0.0:
        return math.inf
    return 10.0 * math.log10(signal / noise) if signal > 0 else -math.inf


@dataclass(frozen=True)
class LayerError:
    """Output error of one layer: `mse` and `sqnr_db` against its float output."""

    mse: float
    sqnr_db: float


def _run(model: nn.Module, inputs: Any) -> Any:
    if isinstance(inputs, dict):
        return model(**inputs)
    if isinstance(inputs, (tuple, list)):
        return model(*inputs)
    return model(inputs)


def layer_error(model: nn.Module, name: str, spec: QuantSpec, inputs: Any) -> LayerError:
    """Error of the output of layer `name` when only its weight is fake-quantized by `spec`.

    Args:
        name: the module's qualified name (as in `model.named_modules()`); it must have a `weight`.
        inputs: one batch for `model` (a tensor, or a tuple/dict of tensors).

    Example:
        >>> from condense.testing import TinyMLP
        >>> e = layer_error(TinyMLP(), "fc1", QuantSpec(bits=8), torch.randn(32, 8))
        >>> e.sqnr_db > 30
        True
    """
    modules = dict(model.named_modules())
    layer = modules.get(name)
    if layer is None:
        raise ConfigError(f"no module named {name!r}; names look like {[n for n in modules if n][:4]}")
    weight = getattr(layer, "weight", None)
    if not isinstance(weight, torch.Tensor):
        raise ConfigError(f"module {name!r} ({type(layer).__name__}) has no weight tensor; pick a Linear/Conv layer")
    outs: list[torch.Tensor] = []
    handle = layer.register_forward_hook(lambda m, i, o: outs.append(o.detach().clone()))
    original = weight.detach().clone()
    try:
        with torch.no_grad():
            _run(model, inputs)
            weight.copy_(fake_quantize(original, spec))
            _run(model, inputs)
    finally:
        handle.remove()
        with torch.no_grad():
            weight.copy_(original)
    if len(outs) != 2:
        raise ConfigError(f"layer {name!r} ran {len(outs) // 2} times per forward; layer_error needs a layer that "
                          "runs exactly once (shared layers are not supported)")
    ref, quant = outs
    return LayerError(mse=mse(ref, quant), sqnr_db=sqnr_db(ref, quant))
