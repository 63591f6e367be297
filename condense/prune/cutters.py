"""Cutting: one cutter per layer type, in a table (`CUTTERS`), as Torch-Pruning keeps its per-type pruners.

A `Cutter` knows three things about its layer type: how to keep units `idx` along a dimension ("out": the
layer's outputs, "in": its inputs), the prunable sizes recorded in the lineage (`shape`, read back by `resize_`
when an artifact is loaded), and which tensors hold a unit's weights (`weights`, for magnitude importance).
Lookup goes through the MRO, so a subclass of a registered type uses its base's cutter. LayerNorm has no cutter on
purpose: it normalises the residual stream, which is never cut. Attention heads (`dim="heads"`) are cut by the
head cutter registered for the attention module's type (`condense.prune.head_cutters`), else by `cut_heads` on a
module with `n_heads` (its projections are cut by their own members).

To prune a custom layer, register a cutter for it (and a rule in `condense.prune.rules`):

    >>> class Scale(nn.Module):
    ...     def __init__(self, n): super().__init__(); self.weight = nn.Parameter(torch.ones(n))
    >>> @register_cutter(Scale)
    ... class ScaleCutter(Cutter):
    ...     def cut(self, m, dim, idx): slice_(m, "weight", 0, idx)
    ...     def shape(self, m): return {"features": len(m.weight)}
    ...     def weights(self, m, dim): return [(m.weight, 0)]
    >>> s = Scale(4); cutter_for(s, "out")(s, "out", torch.tensor([0, 2])); shape_of(s)
    {'features': 2}
"""
from __future__ import annotations

from typing import Callable

import sys

import torch
from torch import nn

from condense.errors import CondenseError


def slice_(module: nn.Module, name: str, dim: int, idx: torch.Tensor) -> None:
    """Keep entries `idx` along `dim` of the parameter or buffer `name` (if the module has it)."""
    t = getattr(module, name, None)
    if t is None:
        return
    new = t.detach().index_select(dim, idx.to(t.device)).clone()
    if isinstance(t, nn.Parameter):
        setattr(module, name, nn.Parameter(new, requires_grad=t.requires_grad))
    else:
        module._buffers[name] = new


class Cutter:
    """How a layer type loses units. The base class cuts a `weight` (out: dim 0 with the bias, in: dim 1) and sets
    the size attributes `sizes = (out attribute, in attribute)`; subclasses override what differs."""

    sizes: tuple[str, str] = ("out_features", "in_features")

    def cut(self, m: nn.Module, dim: str, idx: torch.Tensor) -> None:
        """Keep output units `idx` (`dim="out"`) or input units (`dim="in"`) of `m`, in place."""
        if dim == "out":
            slice_(m, "weight", 0, idx)
            slice_(m, "bias", 0, idx)
        else:
            slice_(m, "weight", 1, idx)
        setattr(m, self.sizes[dim == "in"], len(idx))

    def shape(self, m: nn.Module) -> dict[str, int]:
        """The prunable sizes of `m` as recorded in the lineage, e.g. {"in": 8, "out": 4}."""
        return {"in": getattr(m, self.sizes[1]), "out": getattr(m, self.sizes[0])}

    def weights(self, m: nn.Module, dim: str) -> list[tuple[torch.Tensor, int]]:
        """(tensor, axis) pairs whose slices along `axis` belong to one unit of `dim` (magnitude importance)."""
        if dim == "out":
            return [(m.weight, 0)] + ([(m.bias, 0)] if getattr(m, "bias", None) is not None else [])
        if dim == "in":
            return [(m.weight, 1)]
        return []

    def __call__(self, m: nn.Module, dim: str, idx: torch.Tensor) -> None:
        self.cut(m, dim, idx)


CUTTERS: dict[type, Cutter] = {}


def register_cutter(*types: type) -> Callable:
    """Class decorator: an instance of the decorated `Cutter` cuts modules of `types` (and their subclasses)."""

    def deco(cls: type[Cutter]) -> type[Cutter]:
        for t in types:
            CUTTERS[t] = cls()
        return cls

    return deco


@register_cutter(nn.Linear)
class LinearCutter(Cutter):
    sizes = ("out_features", "in_features")


@register_cutter(nn.Conv2d)
class Conv2dCutter(Cutter):
    """An ungrouped Conv2d as the base class; a depthwise one (groups == in == out > 1, weight (C, 1, kh, kw)) loses
    whole filters along either dimension: rows, bias, and its `groups`, `in_channels`, `out_channels`."""

    sizes = ("out_channels", "in_channels")

    def cut(self, m: nn.Module, dim: str, idx: torch.Tensor) -> None:
        if 1 < m.groups == m.in_channels == m.out_channels:
            slice_(m, "weight", 0, idx)
            slice_(m, "bias", 0, idx)
            m.groups = m.in_channels = m.out_channels = len(idx)
        else:
            super().cut(m, dim, idx)


class TransposedLinearCutter(Cutter):
    """transformers' `Conv1D`: y = x W + b with W stored (in, out), sizes `nf` (out) and `nx` (in)."""

    sizes = ("nf", "nx")

    def cut(self, m: nn.Module, dim: str, idx: torch.Tensor) -> None:
        if dim == "out":
            slice_(m, "weight", 1, idx)
            slice_(m, "bias", 0, idx)
        else:
            slice_(m, "weight", 0, idx)
        setattr(m, self.sizes[dim == "in"], len(idx))

    def weights(self, m: nn.Module, dim: str) -> list[tuple[torch.Tensor, int]]:
        if dim == "out":
            return [(m.weight, 1)] + ([(m.bias, 0)] if getattr(m, "bias", None) is not None else [])
        return [(m.weight, 0)] if dim == "in" else []


def _register_optional() -> None:
    """Register cutters of optional libraries' layers once they are imported (never imports them)."""
    conv1d = getattr(sys.modules.get("transformers.pytorch_utils"), "Conv1D", None)
    if conv1d is not None and conv1d not in CUTTERS:
        CUTTERS[conv1d] = TransposedLinearCutter()


@register_cutter(nn.BatchNorm1d, nn.BatchNorm2d)
class BatchNormCutter(Cutter):
    def cut(self, m: nn.Module, dim: str, idx: torch.Tensor) -> None:
        for name in ("weight", "bias", "running_mean", "running_var"):
            slice_(m, name, 0, idx)
        m.num_features = len(idx)

    def shape(self, m: nn.Module) -> dict[str, int]:
        return {"features": m.num_features}

    def weights(self, m: nn.Module, dim: str) -> list[tuple[torch.Tensor, int]]:
        return [(m.weight, 0)] if m.weight is not None else []


def cut_linear(m: nn.Linear, dim: str, idx: torch.Tensor) -> None:
    """Keep output rows (`dim="out"`, with the bias) or input columns (`dim="in"`) `idx` of a Linear."""
    CUTTERS[nn.Linear].cut(m, dim, idx)


def cut_conv2d(m: nn.Conv2d, dim: str, idx: torch.Tensor) -> None:
    """Keep output channels (with the bias) or input channels `idx` of an ungrouped Conv2d."""
    CUTTERS[nn.Conv2d].cut(m, dim, idx)


def cut_batchnorm(m: nn.modules.batchnorm._BatchNorm, dim: str, idx: torch.Tensor) -> None:
    """Keep features `idx` of a BatchNorm (affine parameters and running statistics)."""
    CUTTERS[nn.BatchNorm1d].cut(m, dim, idx)


def cut_heads(m: nn.Module, dim: str, idx: torch.Tensor) -> None:
    """An attention module keeps `len(idx)` heads (its projections are cut by their own members)."""
    m.n_heads = len(idx)


def _find(module: nn.Module) -> Cutter | None:
    _register_optional()
    return next((CUTTERS[t] for t in type(module).__mro__ if t in CUTTERS), None)


def cutter_for(module: nn.Module, dim: str) -> Callable[[nn.Module, str, torch.Tensor], None] | None:
    """The cutter for `module` along `dim` (through the MRO), or None."""
    if dim == "heads":  # a head cutter registered for the attention type (condense.prune.head_cutters)
        return _find(module) or cut_heads
    return _find(module)


def unit_weights(module: nn.Module, dim: str) -> list[tuple[torch.Tensor, int]]:
    """(tensor, axis) pairs holding the weights of each unit of `module` along `dim` (none for heads)."""
    if dim == "heads":
        return []
    return (_find(module) or Cutter()).weights(module, dim)


def shape_of(module: nn.Module) -> dict[str, int]:
    """The prunable sizes of `module`, as recorded in the lineage: {"in", "out"}, {"features"} or {"heads"}."""
    cutter = _find(module)
    return cutter.shape(module) if cutter is not None else {"heads": module.n_heads}


def resize_(model: nn.Module, shapes: dict[str, dict[str, int]]) -> nn.Module:
    """Shrink `model` to recorded `shapes` by keeping each layer's first units (used to rebuild before loading)."""
    modules = dict(model.named_modules())
    for name, dims in shapes.items():
        m = modules.get(name)
        if m is None:
            raise CondenseError(f"the artifact prunes layer {name!r}, which the model does not have; load it with "
                                "the task (or model) that produced it")
        for key, n in dims.items():
            dim = {"features": "out"}.get(key, key)
            cut = cutter_for(m, dim)
            if cut is None:
                raise CondenseError(f"cannot resize {name} ({type(m).__name__}): no cutter for it")
            cut(m, dim, torch.arange(n))
    return model
