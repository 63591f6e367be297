"""bf16 inference on CPUs with native bf16 instructions: each selected `nn.Linear` keeps its weight in bfloat16 and
runs its matmul in bf16 (oneDNN's avx512_bf16 / AMX kernels); everything else (embeddings, LayerNorm, softmax,
pooling, the bias add) stays float32, and each layer returns float32, so the model's interface is unchanged.

This is what OpenVINO does by default on such CPUs (its inference precision hint is bf16). Without native bf16 the
same matmul is emulated and slower than fp32, so `Int8Config(backend="auto")` only builds this candidate where
`native_bf16()` finds the instructions, and keeps it only where it is measured faster than the int8 candidates and
within the accuracy budget.

Save/load: the bf16 weights are the parameters, saved as they are; the replay rebuilds the same layers, so a loaded
model computes exactly what the saved one did.
"""
from __future__ import annotations

from functools import lru_cache
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from condense.core.config import check_patterns, config
from condense.core.transforms import TransformContext, register_transform
from condense.core.select import select_modules
from condense.errors import ConfigError

BF16_FLAGS = ("avx512_bf16", "amx_bf16")  # /proc/cpuinfo flags of native bf16 dot products on x86


@lru_cache(maxsize=1)
def cpu_flags() -> frozenset[str] | None:
    """The CPU feature flags of /proc/cpuinfo (x86 and Arm Linux), or None where it cannot be read.

    Example:
        >>> flags = cpu_flags()
        >>> flags is None or isinstance(flags, frozenset)
        True
    """
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith(("flags", "Features")):
                return frozenset(line.split(":", 1)[1].split())
        return frozenset()
    except OSError:
        return None


@lru_cache(maxsize=1)
def native_bf16() -> tuple[bool, str]:
    """(whether this CPU computes bf16 natively, why): x86 flags `avx512_bf16`/`amx_bf16` in /proc/cpuinfo, and
    oneDNN's own check (`torch.ops.mkldnn._is_mkldnn_bf16_supported`) where /proc/cpuinfo cannot be read.

    Example:
        >>> native_bf16()[0] in (True, False)
        True
    """
    flags = cpu_flags()
    if flags is None:
        ok = bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
        return ok, f"oneDNN reports bf16 {'supported' if ok else 'unsupported'} (/proc/cpuinfo unreadable)"
    found = [f for f in BF16_FLAGS if f in flags]
    cap = torch.backends.cpu.get_cpu_capability()
    return (bool(found), f"CPU flags {', '.join(found)} ({cap})" if found
            else f"no {'/'.join(BF16_FLAGS)} in /proc/cpuinfo's flags ({cap}): bf16 would be emulated")


class Bf16Linear(nn.Linear):
    """A Linear whose weight is bfloat16 and whose matmul runs in bf16; input and output keep their dtype (the bias
    is added in float32 after the matmul, which measured faster than bf16 addmm and loses nothing)."""

    @classmethod
    def from_linear(cls, lin: nn.Linear) -> "Bf16Linear":
        new = cls.__new__(cls)
        nn.Module.__init__(new)
        new.in_features, new.out_features = lin.in_features, lin.out_features
        new.weight = nn.Parameter(lin.weight.detach().to(torch.bfloat16), requires_grad=False)
        new.bias = None if lin.bias is None else nn.Parameter(lin.bias.detach().float(), requires_grad=False)
        return new

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.linear(x.to(torch.bfloat16), self.weight).to(x.dtype)
        return y if self.bias is None else y + self.bias.to(x.dtype)


@config
class Bf16Config:
    """bf16 matmuls in the selected Linear layers (CPU inference), float32 elsewhere.

    Args:
        include: module-name patterns to compute in bf16 (fnmatch); exclude: patterns to keep in float32.

    Example:
        >>> Bf16Config(exclude=("classifier",)).to_dict()["exclude"]
        ['classifier']
    """

    include: tuple[str, ...] = ("*",)
    exclude: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        check_patterns(self, example="('bert.layers.*',)")


def _swap(model: nn.Module, names: list[str]) -> nn.Module:
    for name in names:
        if name == "":
            return Bf16Linear.from_linear(model)
        parent, _, child = name.rpartition(".")
        owner = model.get_submodule(parent) if parent else model
        setattr(owner, child, Bf16Linear.from_linear(getattr(owner, child)))
    return model


def bf16_linears(model: nn.Module, cfg: Bf16Config, ctx: TransformContext) -> nn.Module:
    """Swap the selected Linears for `Bf16Linear` (in place); records the layers and whether bf16 is native here."""
    names = [n for n in select_modules(model, (nn.Linear,), cfg.include, cfg.exclude, what="Bf16Config")
             if not isinstance(model.get_submodule(n), Bf16Linear)]
    if any(p.device.type != "cpu" for p in model.parameters()):
        raise ConfigError("Bf16Config targets CPU inference; move the model to CPU first (model.cpu()), or on a GPU "
                          "cast it with model.to(torch.bfloat16)")
    native, why = native_bf16()
    ctx.record(layers=names, native_bf16=native, cpu=why)
    return _swap(model, names)


def _replay(model: nn.Module, cfg: Bf16Config, details: dict) -> nn.Module:
    return _swap(model, list(details["layers"]))


# -- registered transforms ----------------------------------------------------------------------------------------
register_transform(Bf16Config, family="quantize", name="bf16", replay=_replay)(bf16_linears)
