"""Peak memory of one call, measured, not estimated.

CUDA: the caching allocator's peak. CPU (Linux): the process's peak resident set (VmHWM), reset just before the
call through /proc/self/clear_refs, so the figure is the real high-water mark of that call (weights included).
Before the reset, freed heap pages go back to the system (glibc `malloc_trim`): a process that trained a
model just before keeps hundreds of MB of freed-but-resident heap, which would otherwise be counted against
whatever is measured next (tests/measurement/test_measure.py frees a fragmented 315 MiB heap to show it).
"""
from __future__ import annotations

import ctypes
import ctypes.util
import functools
import gc
from pathlib import Path
from typing import Any, Callable

import torch


def _read_status_kb(field: str) -> int | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


def _reset_hwm() -> bool:
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


@functools.cache
def _libc_malloc_trim() -> Callable[[int], int] | None:
    name = ctypes.util.find_library("c")
    try:
        return ctypes.CDLL(name).malloc_trim if name else None
    except (OSError, AttributeError):  # not glibc (musl, macOS): nothing to trim with
        return None


def release_freed_memory() -> bool:
    """Collect garbage and hand freed heap pages back to the system (glibc); False where there is no malloc_trim."""
    gc.collect()
    trim = _libc_malloc_trim()
    if trim is None:
        return False
    trim(0)
    return True


def peak_memory(fn: Callable[[], Any], device: torch.device | None = None) -> dict[str, int | str | None]:
    """Run `fn` once and return {"peak_bytes", "increase_bytes", "method"}; None values where not measurable."""
    if device is not None and device.type == "cuda":
        gc.collect()
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        before = torch.cuda.memory_allocated(device)
        fn()
        torch.cuda.synchronize(device)
        peak = torch.cuda.max_memory_allocated(device)
        return {"peak_bytes": int(peak), "increase_bytes": int(peak - before), "method": "cuda max_memory_allocated"}
    trimmed = release_freed_memory()
    rss_before = _read_status_kb("VmRSS")
    if rss_before is None or not _reset_hwm():
        fn()
        return {"peak_bytes": None, "increase_bytes": None, "method": "unavailable on this platform"}
    fn()
    hwm = _read_status_kb("VmHWM") or 0
    return {"peak_bytes": hwm * 1024, "increase_bytes": max(0, hwm - rss_before) * 1024,
            "method": "process peak RSS (VmHWM reset before the call" + (", freed heap trimmed)" if trimmed else ")")}
