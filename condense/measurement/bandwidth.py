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

from pathlib import Path

import torch
from torch import nn

from condense.measurement.timing import time_call

_CACHE: dict[tuple[str, int, int], float] = {}


def last_level_cache_bytes() -> int | None:
    """Size of this CPU's largest cache (Linux sysfs), or None where it cannot be read."""
    sizes = []
    for f in Path("/sys/devices/system/cpu/cpu0/cache").glob("index*/size"):
        text = f.read_text().strip().upper()  # e.g. "32768K", "480M"
        unit = {"K": 2**10, "M": 2**20, "G": 2**30}.get(text[-1:], 1)
        digits = text.rstrip("KMG")
        if digits.isdigit():
            sizes.append(int(digits) * unit)
    return max(sizes) if sizes else None


def probe_mbytes(default: int = 256) -> int:
    """Probe size in MiB: `default`, or 4x the last-level cache where that is larger (a 480 MiB L3 holds a
    256 MiB buffer, and the probe would then measure the cache, not memory)."""
    llc = last_level_cache_bytes()
    return max(default, 4 * llc // 2**20) if llc else default


def fits_in_cache(nbytes: int) -> bool:
    """Whether `nbytes` of weights fit in the last-level cache (decode is then not bound by memory bandwidth)."""
    llc = last_level_cache_bytes()
    return llc is not None and nbytes <= llc


def cache_note(nbytes: int, what: str = "the fp32 weights") -> str:
    """A sentence for reports when `nbytes` fit in the last-level cache (the roof is then not the limit), else ""."""
    llc = last_level_cache_bytes()
    if llc is None or nbytes > llc:
        return ""
    return (f"{what[:1].upper()}{what[1:]} ({nbytes / 1e6:.1f} MB) fit in this CPU's {llc / 2**20:.0f} MiB "
            "last-level cache: decode is not bound by memory bandwidth here, so a share of the roof above 100% is "
            "possible.")


def memory_bandwidth(device: str | torch.device = "cpu", *, mbytes: int | None = None, repeats: int = 5) -> float:
    """Bytes per second that summing an `mbytes` float32 buffer reads (median of `repeats`; cached per device,
    thread count and size for the process). `mbytes=None`: `probe_mbytes()` on CPU (past the caches), 256 on
    other devices."""
    device = torch.device(device)
    if mbytes is None:
        mbytes = probe_mbytes() if device.type == "cpu" else 256
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
