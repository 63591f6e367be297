"""Multiply-accumulates per input, counted from the operations actually run.

torch's FlopCounterMode counts matmuls, convolutions and attention at the aten level (2 FLOPs per MAC).
Modules whose kernels it cannot see (packed int8 layers calling `quantized::` ops) register a MAC counter in
`MAC_COUNTERS`, added on top. Register only such modules: one whose forward runs aten ops the counter sees
(e.g. dequantize then `F.linear`) is already counted, and registering it would count it twice.
"""
from __future__ import annotations

from typing import Any, Callable

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode, sdpa_flop_count

from condense.core.registry import TypeRegistry

# module type -> fn(module, inputs tuple, output) -> MACs for that call
MAC_COUNTERS: TypeRegistry[Callable[[nn.Module, tuple, Any], int]] = TypeRegistry("MAC counter")


def _sdpa_cpu_flop(query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs) -> int:
    return sdpa_flop_count(query_shape, key_shape, value_shape)


# torch's table misses the CPU attention kernels; without these, attention would silently count as zero.
_EXTRA_FORMULAS = {
    op: _sdpa_cpu_flop
    for name in ("_scaled_dot_product_flash_attention_for_cpu", "_scaled_dot_product_fused_attention_overrideable")
    if (op := getattr(torch.ops.aten, name, None)) is not None
}


def count_macs(model: nn.Module, run: Callable[[], Any]) -> int:
    """MACs of one call of `run()` (which runs `model`), summing aten-level and registered module counts.

    Example:
        >>> lin = nn.Linear(10, 20)
        >>> count_macs(lin, lambda: lin(torch.zeros(3, 10)))
        600
    """
    opaque = [m for m in model.modules() if m in MAC_COUNTERS]
    extra = [0]
    handles = []
    for m in opaque:
        fn = MAC_COUNTERS.find(m)

        def hook(mod: nn.Module, inp: tuple, out: Any, fn: Callable = fn) -> None:
            extra[0] += int(fn(mod, inp, out))

        handles.append(m.register_forward_hook(hook))
    try:
        with torch.inference_mode(), FlopCounterMode(display=False, custom_mapping=_EXTRA_FORMULAS) as fc:
            run()
        flops = fc.get_total_flops()
    finally:
        for h in handles:
            h.remove()
    return flops // 2 + extra[0]
