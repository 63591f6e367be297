"""Cutting: one cutter per layer type, in a table (`CUTTERS`), as Torch-Pruning keeps its per-type pruners.

A `Cutter` knows three things about its layer type: how to keep units `idx` along a dimension ("out": the
layer's outputs, "in": its inputs), the prunable sizes recorded in the lineage (`shape`, read back by `resize_`
when an artifact is loaded), and which tensors hold a unit's weights (`weights`, for magnitude importance).
Lookup goes through the MRO, so a subclass of a registered type uses its base's cutter. Norms (BatchNorm,
LayerNorm, RMSNorm, GroupNorm, and Hugging Face RMSNorm types in `OPTIONAL_NORMS`) lose the entries of the channels
cut before them; the graph lets a group through a norm that mixes channels only when asked (`renormalize`).
Attention heads (`dim="heads"`) are cut by the
head cutter registered for the attention module's type (`condense.prune.head_cutters`), else by `cut_heads` on a
module with `n_heads` (its projections are cut by their own members).

To prune a custom layer, register its cutter in one place, with the rule that says how channels pass it
(`condense.prune.rules`; `channelwise` for a per-channel scale) and, if its outputs start a group, its producer:

    >>> from condense.prune import StructuredConfig, prune_
    >>> from condense.prune.rules import channelwise
    >>> class Scale(nn.Module):
    ...     def __init__(self, n): super().__init__(); self.weight = nn.Parameter(torch.ones(n))
    ...     def forward(self, x): return x * self.weight
    >>> @register_cutter(Scale, rule=channelwise)
    ... class ScaleCutter(Cutter):
    ...     def cut(self, m, dim, idx): slice_(m, "weight", 0, idx)
    ...     def shape(self, m): return {"features": len(m.weight)}
    ...     def weights(self, m, dim): return [(m.weight, 0)]
    >>> net = prune_(nn.Sequential(nn.Linear(4, 8), Scale(8), nn.Linear(8, 2)), StructuredConfig(ratio=0.5))
    >>> net[0].out_features, shape_of(net[1]), net[2].in_features
    (4, {'features': 4}, 4)
"""
from __future__ import annotations

from typing import Callable

import sys

import torch
from torch import nn

from condense.errors import CondenseError
from condense.prune.rules import MODULE_RULES, PRODUCERS


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

    def size(self, m: nn.Module, dim: str) -> int:
        """The number of elements of `m` along `dim` ("out" / "in"): its size attribute, else its weights'."""
        n = getattr(m, self.sizes[dim == "in"], None)
        if isinstance(n, int):
            return n
        pairs = self.weights(m, dim)
        if not pairs:
            raise CondenseError(f"the cutter of {type(m).__name__} knows no size along {dim!r}; give it a size() "
                                "method (condense.prune.cutters.Cutter.size)")
        return pairs[0][0].shape[pairs[0][1]]

    def __call__(self, m: nn.Module, dim: str, idx: torch.Tensor) -> None:
        self.cut(m, dim, idx)


CUTTERS: dict[type, Cutter] = {}


def register_cutter(*types: type, rule: Callable | None = None, producer: Callable | None = None) -> Callable:
    """Class decorator: an instance of the decorated `Cutter` cuts modules of `types` (and their subclasses);
    `rule(site, flow)` (how a group passes them, `condense.prune.rules.register_module_rule`) and
    `producer(module, ndim) -> Source` (their outputs start a group, `register_producer`) are registered too."""

    def deco(cls: type[Cutter]) -> type[Cutter]:
        for t in types:
            CUTTERS[t] = cls()
            if rule is not None:
                MODULE_RULES[t] = rule
            if producer is not None:
                PRODUCERS[t] = producer
        return cls

    return deco


@register_cutter(nn.Linear)
class LinearCutter(Cutter):
    sizes = ("out_features", "in_features")


@register_cutter(nn.Conv1d, nn.Conv2d, nn.Conv3d)
class Conv2dCutter(Cutter):
    """An ungrouped Conv1d/2d/3d as the base class; a depthwise one (groups == in == out > 1, weight (C, 1, *kernel))
    loses whole filters along either dimension: rows, bias, and its `groups`, `in_channels`, `out_channels`."""

    sizes = ("out_channels", "in_channels")

    def cut(self, m: nn.Module, dim: str, idx: torch.Tensor) -> None:
        if 1 < m.groups == m.in_channels == m.out_channels:
            slice_(m, "weight", 0, idx)
            slice_(m, "bias", 0, idx)
            m.groups = m.in_channels = m.out_channels = len(idx)
        else:
            super().cut(m, dim, idx)


@register_cutter(nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)
class ConvTransposeCutter(Cutter):
    """A layer whose weight is stored (in, out, ...), so outputs are its dimension 1: an ungrouped ConvTranspose
    (weight (in, out, *kernel)); `TransposedLinearCutter` reuses it with its own size attributes."""

    sizes = ("out_channels", "in_channels")

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


@register_cutter(nn.Embedding)
class EmbeddingCutter(Cutter):
    """An Embedding loses columns of its (num_embeddings, embedding_dim) table; its vocabulary is never cut."""

    def cut(self, m: nn.Module, dim: str, idx: torch.Tensor) -> None:
        if dim != "out":
            raise CondenseError(f"an Embedding's inputs are token ids: cannot cut {dim!r}")
        slice_(m, "weight", 1, idx)
        m.embedding_dim = len(idx)

    def shape(self, m: nn.Module) -> dict[str, int]:
        return {"out": m.embedding_dim}

    def size(self, m: nn.Module, dim: str) -> int:
        return m.embedding_dim

    def weights(self, m: nn.Module, dim: str) -> list[tuple[torch.Tensor, int]]:
        return [(m.weight, 1)] if dim == "out" else []


class NormCutter(Cutter):
    """A norm over the channels: its per-channel `weight` / `bias` (and running statistics) lose the cut entries
    and the attribute `sizes[0]` its count (LayerNorm's `normalized_shape` is a tuple)."""

    sizes = ("", "")

    def cut(self, m: nn.Module, dim: str, idx: torch.Tensor) -> None:
        for name in ("weight", "bias", "running_mean", "running_var"):
            slice_(m, name, 0, idx)
        if isinstance(getattr(m, "normalized_shape", None), tuple):
            m.normalized_shape = (len(idx),)

    def shape(self, m: nn.Module) -> dict[str, int]:
        return {"features": self.size(m, "out")}

    def size(self, m: nn.Module, dim: str) -> int:
        shape = getattr(m, "normalized_shape", None)
        if isinstance(shape, tuple) and len(shape) == 1:
            return shape[0]
        return m.weight.shape[0]

    def weights(self, m: nn.Module, dim: str) -> list[tuple[torch.Tensor, int]]:
        return [(t, 0) for t in (getattr(m, "weight", None), getattr(m, "bias", None)) if t is not None]


register_cutter(nn.LayerNorm, nn.RMSNorm)(NormCutter)


@register_cutter(nn.GroupNorm)
class GroupNormCutter(NormCutter):
    """GroupNorm keeps `num_groups` (the kept channels must divide into them), or one group per channel when it
    had one group per channel."""

    def cut(self, m: nn.Module, dim: str, idx: torch.Tensor) -> None:
        if m.num_groups == m.num_channels:
            m.num_groups = len(idx)
        elif len(idx) % m.num_groups:
            raise CondenseError(f"GroupNorm with {m.num_groups} groups cannot keep {len(idx)} channels; prune with "
                                f"StructuredConfig(round_to={m.num_groups})")
        super().cut(m, dim, idx)
        m.num_channels = len(idx)

    def size(self, m: nn.Module, dim: str) -> int:
        return m.num_channels


# Hugging Face norm types with a per-channel `weight` (and no size attribute), cut by `NormCutter` and passed by
# the norm rule of `condense.prune.layer_rules`; registered once their module is imported.
OPTIONAL_NORMS: dict[str, tuple[str, ...]] = {
    "transformers.models.llama.modeling_llama": ("LlamaRMSNorm",),
    "transformers.models.mistral.modeling_mistral": ("MistralRMSNorm",),
    "transformers.models.qwen2.modeling_qwen2": ("Qwen2RMSNorm",),
    "transformers.models.gemma.modeling_gemma": ("GemmaRMSNorm",),
    "transformers.models.t5.modeling_t5": ("T5LayerNorm",),
}


def optional_norm_types() -> list[type]:
    """The classes of `OPTIONAL_NORMS` whose modules are imported (never imports them)."""
    return [c for mod, names in OPTIONAL_NORMS.items() for name in names
            if (c := getattr(sys.modules.get(mod), name, None)) is not None]


class TransposedLinearCutter(ConvTransposeCutter):
    """transformers' `Conv1D`: y = x W + b with W stored (in, out), sizes `nf` (out) and `nx` (in)."""

    sizes = ("nf", "nx")


def _register_optional() -> None:
    """Register cutters of optional libraries' layers once they are imported (never imports them)."""
    conv1d = getattr(sys.modules.get("transformers.pytorch_utils"), "Conv1D", None)
    if conv1d is not None and conv1d not in CUTTERS:
        CUTTERS[conv1d] = TransposedLinearCutter()
    for t in optional_norm_types():
        CUTTERS.setdefault(t, NormCutter())


@register_cutter(nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)
class BatchNormCutter(Cutter):
    def cut(self, m: nn.Module, dim: str, idx: torch.Tensor) -> None:
        for name in ("weight", "bias", "running_mean", "running_var"):
            slice_(m, name, 0, idx)
        m.num_features = len(idx)

    def shape(self, m: nn.Module) -> dict[str, int]:
        return {"features": m.num_features}

    def size(self, m: nn.Module, dim: str) -> int:
        return m.num_features

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


def tied_parameters(model: nn.Module) -> dict[int, list[tuple[str, str]]]:
    """{id(parameter): [(module name, attribute), ...]} for every Parameter held by more than one module (tied
    weights, e.g. an LM head sharing the embedding's table)."""
    holders: dict[int, list[tuple[str, str]]] = {}
    for name, m in model.named_modules():
        for attr, p in m._parameters.items():
            if p is not None:
                holders.setdefault(id(p), []).append((name, attr))
    return {k: v for k, v in holders.items() if len(v) > 1}


def retie_(model: nn.Module, ties: dict[int, list[tuple[str, str]]]) -> None:
    """After a cut, make the holders of each tied Parameter (`tied_parameters` taken before it) share the first
    holder's new Parameter again; raises if they were cut to different shapes."""
    modules = dict(model.named_modules())
    for holders in ties.values():
        (n0, a0), rest = holders[0], holders[1:]
        p = getattr(modules[n0], a0)
        for name, attr in rest:
            q = getattr(modules[name], attr)
            if q is p:
                continue
            if q.shape != p.shape:
                raise CondenseError(f"tied weights {n0}.{a0} and {name}.{attr} were cut to different shapes "
                                    f"{tuple(p.shape)} and {tuple(q.shape)}; untie them before pruning")
            setattr(modules[name], attr, p)


def resize_(model: nn.Module, shapes: dict[str, dict[str, int]]) -> nn.Module:
    """Shrink `model` to recorded `shapes` by keeping each layer's first units (used to rebuild before loading)."""
    modules = dict(model.named_modules())
    ties = tied_parameters(model)
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
    retie_(model, ties)
    return model
