"""How close decoding runs to the memory roof: a bandwidth probe and the weight bytes a decode step reads.

At small batches a language model's decode step is memory-bound: it reads every weight once and produces `batch`
tokens, so `batch * bandwidth / weight bytes` tokens/s is the roof no kernel can beat on this machine. The probe
measures the bandwidth a reduction over a buffer much larger than the caches reaches with the current torch
threads; `roofline_fraction` says what share of the roof a measured tokens/s reached (weights only: the KV cache
and activations add reads, so the true share is a little higher).

Example:
    >>> from torch import nn
    >>> weight_bytes(nn.Linear(4, 2))
    40
    >>> round(roofline_fraction(50.0, 1, 1_000_000, 100e6), 3)
    0.5
"""
from __future__ import annotations

import torch
from torch import nn

from condense.measurement.timing import time_call

_CACHE: dict[tuple[str, int, int], float] = {}


def memory_bandwidth(device: str | torch.device = "cpu", *, mbytes: int = 256, repeats: int = 5) -> float:
    """Bytes per second that summing an `mbytes` float32 buffer reads (median of `repeats`; cached per device,
    thread count and size for the process)."""
    device = torch.device(device)
    key = (str(device), torch.get_num_threads(), mbytes)
    if key not in _CACHE:
        x = torch.ones(mbytes * 2**20 // 4, device=device)
        with torch.inference_mode():
            stats = time_call(lambda: x.sum(), warmup=1, repeats=repeats, device=device)
        _CACHE[key] = x.numel() * x.element_size() / stats.p50
        del x
    return _CACHE[key]


def weight_bytes(model: nn.Module) -> int:
    """Bytes of the parameters and buffers of `model` (tied or shared tensors counted once): what one decode step
    reads. Packed low-bit weights held in buffers count at their packed size."""
    seen: set[tuple[int, int]] = set()
    total = 0
    for t in (*model.parameters(), *model.buffers()):
        key = (t.untyped_storage().data_ptr(), t.storage_offset()) if t.device.type != "meta" else (id(t), 0)
        if key in seen:
            continue
        seen.add(key)
        total += t.numel() * t.element_size()
    return total


def roofline_fraction(tokens_per_s: float, batch: int, nbytes: int, bandwidth: float) -> float:
    """Share of the memory roof (`batch * bandwidth / nbytes` tokens/s) that `tokens_per_s` reached."""
    return tokens_per_s * nbytes / (batch * bandwidth)
