"""Mixed precision: autocast + gradient scaling, and a measured decision whether bf16 pays off here.

`precision="auto"` means: bf16 autocast only where a bf16 training step was *measured* faster than fp32 on this
machine (CPUs without native bf16 run it up to ~100x slower; CUDA GPUs from Ampere on run it faster). The
measurement takes about a second and is cached per machine (CPU model or GPU name, torch version) in
`cache_dir()/precision-*.json`. fp16 needs CUDA and uses a GradScaler; bf16 needs none.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import platform
import time
from typing import Any, ContextManager

import torch
from torch import nn

from condense.core.atomic import atomic_write_json
from condense.core.paths import cache_dir
from condense.errors import ConfigError

PRECISIONS = ("fp32", "bf16", "fp16", "auto")
_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def _machine_key(device: torch.device) -> str:
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
    else:
        name = platform.processor() or platform.machine()
        try:
            for line in open("/proc/cpuinfo"):
                if line.startswith("model name"):
                    name = line.split(":", 1)[1].strip()
                    break
        except OSError:
            pass
    blob = json.dumps([device.type, name, torch.__version__, torch.get_num_threads()])
    return hashlib.sha1(blob.encode()).hexdigest()[:12]


def _step_seconds(device: torch.device, repeats: int = 7) -> tuple[float, float]:
    """Median seconds of one fwd+bwd step of a 3-layer MLP (width 512, batch 256) in fp32 and under bf16
    autocast, timed alternately (fp32, bf16, fp32, ...) so that background load falls on both alike."""
    g = torch.Generator().manual_seed(0)
    net = nn.Sequential(nn.Linear(512, 512), nn.GELU(), nn.Linear(512, 512), nn.GELU(), nn.Linear(512, 512))
    net = net.to(device)
    x = torch.randn(256, 512, generator=g).to(device)
    times: dict[Any, list[float]] = {None: [], torch.bfloat16: []}
    for i in range(repeats + 2):
        for dtype in times:
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            t0 = time.perf_counter()
            with autocast(device, dtype):
                loss = net(x).float().pow(2).mean()
            loss.backward()
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            if i >= 2:
                times[dtype].append(time.perf_counter() - t0)
    med = {k: sorted(v)[len(v) // 2] for k, v in times.items()}
    return med[None], med[torch.bfloat16]


def bf16_is_faster(device: torch.device | str = "cpu", *, refresh: bool = False) -> dict[str, Any]:
    """Measure (once per machine, then cached) whether a bf16 autocast training step beats fp32.

    Returns {"faster": bool, "fp32_s": ..., "bf16_s": ..., "speedup": fp32_s / bf16_s}.

    Example:
        >>> bf16_is_faster("cpu")["faster"] in (True, False)
        True
    """
    device = torch.device(device)
    path = cache_dir() / f"precision-{device.type}-{_machine_key(device)}.json"
    if path.exists() and not refresh:
        try:
            return json.loads(path.read_text())
        except (OSError, ValueError):
            pass
    try:
        fp32, bf16 = _step_seconds(device)
    except RuntimeError:  # bf16 autocast unsupported on this device
        fp32, bf16 = 1.0, float("inf")
    out = {"faster": bf16 < 0.9 * fp32, "fp32_s": fp32, "bf16_s": bf16, "speedup": fp32 / bf16}
    atomic_write_json(path, out)
    return out


def resolve_precision(precision: str, device: torch.device | str) -> str:
    """The concrete precision ("fp32", "bf16" or "fp16") for `precision` on `device`; "auto" measures.

    Example:
        >>> resolve_precision("fp32", "cpu")
        'fp32'
    """
    device = torch.device(device)
    if precision not in PRECISIONS:
        raise ConfigError(f"unknown precision {precision!r}; choose one of {list(PRECISIONS)}")
    if precision == "fp16" and device.type != "cuda":
        raise ConfigError("precision='fp16' needs a CUDA device (it relies on gradient scaling); use bf16 on CPU")
    if precision == "auto":
        return "bf16" if bf16_is_faster(device)["faster"] else "fp32"
    return precision


def autocast(device: torch.device, dtype: torch.dtype | None) -> ContextManager:
    """autocast(device.type, dtype), or a no-op for fp32 (dtype None)."""
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=torch.device(device).type, dtype=dtype)


def dtype_of(precision: str) -> torch.dtype | None:
    return _DTYPES.get(precision)


def grad_scaler(precision: str, device: torch.device) -> torch.amp.GradScaler | None:
    """A GradScaler for fp16 on CUDA; None otherwise (bf16 has fp32's range and needs none)."""
    if precision == "fp16":
        return torch.amp.GradScaler(torch.device(device).type)
    return None
