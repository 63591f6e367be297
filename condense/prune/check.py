"""Is a structured cut exact? Compare the cut model with the dense model whose removed units are zeroed.

Removing unit c of a group must change nothing but what unit c contributed: every layer that consumes the group
(the members cut along "in") stops reading it, and nothing else moves. So the cut model must equal a copy of the
dense model in which those consumed slices are zero (the "mask"). A difference means the graph coupled the wrong
slices or a cutter cut the wrong ones; this is the "outputs of unpruned parts unchanged" check of the pruning
benchmark.

Example:
    >>> import torch
    >>> from torch import nn
    >>> from condense.prune import StructuredConfig
    >>> net = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2)).eval()
    >>> r = check_cut_equals_mask(net, StructuredConfig(ratio=0.5), torch.randn(3, 4))
    >>> r.ok, r.model[0].out_features, net[0].out_features
    (True, 4, 8)
"""
from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from condense.core.transforms import TransformContext
from condense.errors import ConfigError
from condense.prune.cutters import unit_weights
from condense.prune.heads import member_elements
from condense.prune.structured import StructuredConfig, StructuredPlan, apply_plan, plan_structured
from condense.prune.tracing import tensors_in

__all__ = ["MaskCheck", "masked_copy", "check_cut_equals_mask"]


@dataclass(frozen=True)
class MaskCheck:
    """The result: largest |cut - masked| over every output tensor, largest |masked| (`scale`), the bounds, the
    plan and the cut copy (`model`)."""

    max_error: float
    scale: float
    atol: float
    rtol: float
    model: nn.Module
    plan: StructuredPlan

    @property
    def ok(self) -> bool:
        """The cut model equals the masked dense model within atol + rtol * scale (float32 sums in another order
        differ by about 1e-7 of the output's size)."""
        return self.max_error <= self.atol + self.rtol * self.scale


def masked_copy(model: nn.Module, plan: StructuredPlan) -> nn.Module:
    """A copy of `model` whose planned-away units are zeroed where they are consumed: what the cut must equal."""
    ref = copy.deepcopy(model)
    modules = dict(ref.named_modules())
    for g in plan.graph.groups:
        if g.name not in plan.keep:
            continue
        drop = torch.tensor(sorted(set(range(g.size)) - set(plan.keep[g.name])), dtype=torch.long)
        for mem in g.members:
            if mem.dim != "in" or not len(drop):
                continue
            elems = member_elements(mem, drop)  # (dropped * unit,), at the member's offset
            with torch.no_grad():
                for t, axis in unit_weights(modules[mem.module], "in"):
                    t.index_fill_(axis, elems.to(t.device), 0)
    return ref


def check_cut_equals_mask(model: nn.Module, cfg: StructuredConfig, batch: Any, ctx: TransformContext | None = None,
                          *, atol: float = 1e-5, rtol: float = 1e-5) -> MaskCheck:
    """Plan `cfg` on `model` (left unchanged), cut a copy, and compare it on `batch` with the masked dense model.

    Args:
        batch: one input batch, run by `ctx.run_batch` (also the calibration batch that records the graph when
            `ctx` is None).
        ctx: gives calibration data and how to run a batch (default: `batch` as the only calibration batch).
    """
    if cfg.reconstruct or cfg.finetune is not None:
        raise ConfigError("check_cut_equals_mask compares a plain cut with the masked model; reconstruct/finetune "
                          "change the weights that remain: check with reconstruct=False, finetune=None")
    ctx = ctx or TransformContext(calibration=[batch])
    plan = plan_structured(model, cfg, ctx)
    ref = masked_copy(model, plan)
    cut = copy.deepcopy(model)
    apply_plan(cut, plan)
    with torch.no_grad():
        a, b = tensors_in(ctx.run_batch(cut, batch)), tensors_in(ctx.run_batch(ref, batch))
    if len(a) != len(b) or any(x.shape != y.shape for x, y in zip(a, b)):
        return MaskCheck(float("inf"), 0.0, atol, rtol, cut, plan)
    pairs = [(x.float(), y.float()) for x, y in zip(a, b) if x.numel() and x.is_floating_point()]
    err = max((float((x - y).abs().max()) for x, y in pairs), default=0.0)
    scale = max((float(y.abs().max()) for _, y in pairs), default=0.0)
    return MaskCheck(err, scale, atol, rtol, cut, plan)
