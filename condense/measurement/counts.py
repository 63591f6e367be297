"""Parameter counts that see through quantized modules (whose weights are packed, not `nn.Parameter`s).

A module type whose logical weights are not plain parameters registers a view in `PARAM_VIEWS`, returning
{name: float tensor}; counting (total and non-zero) then works the same for every representation.
"""
from __future__ import annotations

from typing import Callable

import torch
from torch import nn

from condense.core.registry import TypeRegistry

PARAM_VIEWS: TypeRegistry[Callable[[nn.Module], dict[str, torch.Tensor]]] = TypeRegistry("parameter view")


def logical_parameters(model: nn.Module) -> dict[str, torch.Tensor]:
    """Every weight of `model` as a float tensor keyed by its qualified name (packed weights unpacked)."""
    out: dict[str, torch.Tensor] = {}
    for mod_name, mod in model.named_modules():
        prefix = f"{mod_name}." if mod_name else ""
        view = PARAM_VIEWS.find(mod)
        tensors = view(mod) if view is not None else dict(mod._parameters)
        for name, t in tensors.items():
            if t is None:
                continue
            if t.is_quantized:
                t = t.dequantize()
            out[prefix + name] = t
    return out


def count_parameters(model: nn.Module) -> tuple[int, int]:
    """(total, non-zero) number of weights in `model`; shared tensors are counted once.

    Example:
        >>> count_parameters(nn.Linear(10, 20))
        (220, 220)
    """
    seen: set[int] = set()
    total = nonzero = 0
    for t in logical_parameters(model).values():
        key = id(t) if not isinstance(t, nn.Parameter) else t.data_ptr()
        if key in seen:
            continue
        seen.add(key)
        total += t.numel()
        nonzero += int(torch.count_nonzero(t.detach()))
    return total, nonzero
