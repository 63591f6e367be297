"""condense's kernels for the packed int8 encoder (native.cpp: attention of packed sequences, LayerNorm fused with
its uint8 quantization), built on first use.

`native_kernels()` returns the compiled module, or None and why: it needs a CPU with AMX bf16 (the brgemm
micro-kernel its attention calls runs on AMX tiles; elsewhere the encoder keeps torch's attention on buckets of
similar lengths, `encoder.attention_plan`, and torch's LayerNorm), a C++ compiler and ninja, and
`CONDENSE_NATIVE` not set to 0. The build (torch.utils.cpp_extension, about 20 s on 2 vCPUs) happens once per
machine and torch version, in `condense.core.paths.cache_dir()/extensions`; before the module is used, its packed
layouts are compared with oneDNN's own packing, its attention with torch's and its LayerNorm + quantization with
torch's `layer_norm` and `quantize_per_tensor` on random inputs, and any mismatch leaves it unused.

Example:
    >>> kernels, why = native_kernels()
    >>> kernels is None or callable(kernels.packed_attention)
    True
"""
from __future__ import annotations

import hashlib
import os
import shutil
from functools import lru_cache
from pathlib import Path
from types import ModuleType

import torch
import torch.nn.functional as F

from condense.quantize.bf16 import cpu_flags

SOURCE = Path(__file__).with_name("native.cpp")
NEEDED_FLAGS = ("amx_bf16", "avx512bw", "avx512f")  # the kernel's brgemm calls (AMX) and its AVX-512 softmax
CFLAGS = ("-O3", "-fopenmp", "-mavx512f", "-mavx512bw", "-mavx512vl", "-mavx512dq", "-mfma",
          "-DCPU_CAPABILITY_AVX512", "-DCPU_CAPABILITY=AVX512")
ENV = "CONDENSE_NATIVE"  # 0: never build or use these kernels


def _why_not() -> str | None:
    """Why the kernel cannot be used here, or None."""
    if os.environ.get(ENV, "1").strip() in ("0", "false", "no", "off"):
        return f"{ENV}=0"
    flags = cpu_flags()
    missing = [f for f in NEEDED_FLAGS if flags is None or f not in flags]
    if missing:
        return f"this CPU lacks {', '.join(missing)} (/proc/cpuinfo)"
    if not any(shutil.which(c) for c in ("c++", "g++")):
        return "no C++ compiler (c++ / g++) on PATH"
    if shutil.which("ninja") is None:
        return ("no ninja on PATH (torch.utils.cpp_extension builds with it): apt install ninja-build, or pip install "
                "ninja and put its bin folder on PATH")
    return None


def _build_dir(name: str) -> Path:
    from condense.core.paths import cache_dir

    path = cache_dir() / "extensions" / name
    path.mkdir(parents=True, exist_ok=True)
    return path


def _self_check(mod: ModuleType) -> str | None:
    """None when the module's layouts and outputs agree with oneDNN's packing and torch's attention, else why not."""
    if not mod.supported():
        return "oneDNN reports no bf16 brgemm with packed B on this CPU"
    for length, head in ((1, 32), (27, 32), (64, 32), (150, 32), (40, 64)):
        if not mod.vnni_layout_matches(length, head):
            return f"the kernel's packed layout differs from oneDNN's (length {length}, head size {head})"
    g = torch.Generator().manual_seed(0)
    lens = [150, 64, 33, 1]
    heads, dim = 3, 32
    qkv = torch.randn(sum(lens), 3 * heads * dim, generator=g).bfloat16()
    starts = torch.tensor([0] + lens[:-1]).cumsum(0)
    got = mod.packed_attention(qkv, starts, torch.tensor(lens), heads, dim, dim ** -0.5)
    for s, n in zip(starts.tolist(), lens):
        q, k, v = qkv[s:s + n].float().view(n, 3, heads, dim).permute(1, 2, 0, 3)
        want = F.scaled_dot_product_attention(q, k, v).transpose(0, 1).reshape(n, heads * dim)
        err = float((got[s:s + n] - want).abs().max())
        if not err <= 2e-2:
            return f"the kernel's attention differs from torch's by {err:.3g} (length {n})"
    x = torch.randn(37, 64, generator=g) * 3 + 1
    w, b, inv = torch.rand(64, generator=g) + 0.5, torch.randn(64, generator=g), torch.rand(64, generator=g) + 0.5
    want = F.layer_norm(x, (64,), w, b, 1e-12)
    levels = torch.clamp(torch.round(want * inv / 0.03) + 100, 0, 255)
    y = x.clone()
    q = mod.layer_norm_quantize(y, w, b, 1e-12, inv / 0.03, 100)
    if not (float((y - want).abs().max()) <= 1e-4 and q.dtype == torch.uint8
            and float((q.float() - levels).abs().max()) <= 1):
        return "the kernel's LayerNorm + quantization differs from torch's"
    return None


@lru_cache(maxsize=1)
def native_kernels() -> tuple[ModuleType | None, str]:
    """(the compiled native.cpp module, why) or (None, why not); built and checked once per process."""
    why = _why_not()
    if why is not None:
        return None, why
    from torch.utils.cpp_extension import load

    from condense.progress import activity

    digest = hashlib.sha256(SOURCE.read_bytes() + " ".join(CFLAGS).encode() + torch.__version__.encode())
    name = f"condense_native_{digest.hexdigest()[:12]}"
    try:
        folder = _build_dir(name)
    except OSError as e:
        return None, f"cannot create the build folder for {SOURCE.name} ({e}); set CONDENSE_CACHE to a writable folder"

    def build() -> ModuleType:
        return load(name, [str(SOURCE)], extra_cflags=list(CFLAGS), extra_ldflags=["-fopenmp"],
                    build_directory=str(folder), verbose=False)

    try:
        if any(folder.glob("*.so")):
            mod = build()  # already compiled: loads
        else:
            with activity("building condense's native kernels (once per machine, about 20 s)"):
                mod = build()
    except Exception as e:  # a compiler or linker failure: torch's ops still work
        first = next((ln for ln in str(e).splitlines() if ln.strip()), type(e).__name__)
        return None, f"building {SOURCE.name} failed ({first[:200]}); build log in {folder}"
    problem = _self_check(mod)
    if problem is not None:
        return None, problem
    return mod, f"native.cpp built in {folder}; AMX bf16 brgemm attention and LayerNorm + quantize, checked " \
                "against torch's"
