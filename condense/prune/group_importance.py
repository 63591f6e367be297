"""Group importance: one score per unit of a coupled group (a channel, a neuron, a head), for structured pruning.

Criteria live in the "groups" scope of `condense.prune.importance` (see there for the call):
* "l1" / "l2": per member the Lp norm of its slices of each unit, mean-normalised, summed over members;
* "activation" (calibration data): mean |input| of every consuming layer times its weight column norm, summed;
* "taylor" (the task's loss on training batches): first-order Taylor estimate of the loss change when a unit is
  removed, |sum of weight x gradient| over the unit's slices, mean-normalised per member and summed (as
  Torch-Pruning's TaylorImportance; needs a task with a loss: digits, tinygpt, Hugging Face causal LMs);
* "obs" (calibration data): Optimal Brain Surgeon on the one Linear that consumes the group: the units whose
  removal that Linear can best make up for go first (`condense.prune.recover.obs_scores`); groups with other
  consumers fall back to "activation".
"""
from __future__ import annotations

from typing import Any, Callable

import torch
from torch import nn

from condense.core.hooks import run_with_hooks
from condense.core.transforms import TransformContext
from condense.errors import ConfigError
from condense.prune.cutters import unit_weights
from condense.prune.graph import Group
from condense.prune.heads import unit_slices
from condense.prune.importance import criterion, register_importance
from condense.prune.recover import obs_scores


def _normalised(s: torch.Tensor) -> torch.Tensor:
    return s / s.mean().clamp_min(1e-12)


def magnitude_scores(model: nn.Module, group: Group, p: int = 2) -> torch.Tensor:
    """Importance (size,) of a group's units: per member the Lp norm of its slices, mean-normalised, summed."""
    modules = dict(model.named_modules())
    total = torch.zeros(group.size)
    for mem in group.members:
        parts = [unit_slices(mem, t, ax, group.size) for t, ax in unit_weights(modules[mem.module], mem.dim)]
        if parts:
            total += _normalised(torch.cat(parts, dim=1).norm(p=p, dim=1).cpu())
    return total


def consumer_statistics(model: nn.Module, names: list[str], batches: list[Any], run: Callable[[nn.Module, Any], Any],
                        *, gram: tuple[str, ...] = ()) -> dict[str, dict[str, torch.Tensor]]:
    """Per consuming layer: mean |input| per feature; for Linears in `gram` also [X 1]^T [X 1] / rows (float64)."""
    modules = dict(model.named_modules())
    acc: dict[str, dict[str, Any]] = {n: {} for n in names}

    def hook(name: str) -> Callable:
        def pre(m: nn.Module, args: tuple) -> None:
            x = args[0].detach().float()
            x = x.movedim(1, -1) if isinstance(m, nn.Conv2d) else x  # channels last
            flat = x.reshape(-1, x.shape[-1])  # (rows, in)
            a = acc[name]
            a["abs"] = a.get("abs", 0) + flat.abs().sum(0).cpu()
            a["rows"] = a.get("rows", 0) + flat.shape[0]
            if name in gram:  # products in float32 (fast), sums over batches in float64
                z = torch.cat([flat, flat.new_ones(flat.shape[0], 1)], 1)
                a["gram"] = a.get("gram", 0) + (z.T @ z).double().cpu()  # (in + 1, in + 1)
        return pre

    handles = [modules[n].register_forward_pre_hook(hook(n)) for n in names]
    run_with_hooks(model, batches, run, handles)
    return {n: {k: a[k] / a["rows"] for k in ("abs", "gram") if k in a} for n, a in acc.items() if a}


def activation_scores(model: nn.Module, groups: list[Group], stats: dict[str, dict[str, torch.Tensor]]
                      ) -> dict[str, torch.Tensor]:
    """Importance of each unit: mean |input| of every consuming layer times its weight column norm, summed."""
    modules = dict(model.named_modules())
    out = {}
    for g in groups:
        total = torch.zeros(g.size)
        for mem in g.members:
            if mem.dim != "in" or mem.module not in stats:
                continue
            w, axis = unit_weights(modules[mem.module], "in")[0]  # Linear (out, in), Conv1D (in, out), Conv2d
            col = w.detach().float().movedim(axis, 0).reshape(w.shape[axis], -1).norm(dim=1).cpu()  # (in,)
            total += _normalised(unit_slices(mem, stats[mem.module]["abs"] * col, 0, g.size).sum(1))
        out[g.name] = total
    return out


def group_scores(model: nn.Module, groups: list[Group], importance: str, kept: dict[str, int],
                 ctx: TransformContext, n_batches: int = 8) -> dict[str, torch.Tensor]:
    """Every unit's importance (higher = keep) per group by the "groups" criterion `importance`; "obs" needs the
    number `kept` of each group."""
    return criterion(importance, "groups")(model, groups, ctx, kept=kept, batches=n_batches)


@register_importance("l1", scope="groups", needs_data=False)
def _l1(model: nn.Module, groups: list[Group], ctx: TransformContext, *, kept: dict[str, int], batches: int
        ) -> dict[str, torch.Tensor]:
    return {g.name: magnitude_scores(model, g, 1) for g in groups}


@register_importance("l2", scope="groups", needs_data=False)
def _l2(model: nn.Module, groups: list[Group], ctx: TransformContext, *, kept: dict[str, int], batches: int
        ) -> dict[str, torch.Tensor]:
    return {g.name: magnitude_scores(model, g, 2) for g in groups}


def _consumers(groups: list[Group]) -> list[str]:
    return sorted({mem.module for g in groups for mem in g.members if mem.dim == "in"})


@register_importance("activation", scope="groups")
def _activation(model: nn.Module, groups: list[Group], ctx: TransformContext, *, kept: dict[str, int],
                batches: int) -> dict[str, torch.Tensor]:
    data = ctx.calibration_batches(batches, what="importance='activation'")
    return activation_scores(model, groups, consumer_statistics(model, _consumers(groups), data, ctx.run_batch))


def _single_linear_consumer(g: Group, modules: dict[str, nn.Module]) -> str | None:
    ins = [m for m in g.members if m.dim == "in"]
    if len(ins) == 1 and isinstance(modules[ins[0].module], nn.Linear) and ins[0].unit == g.members[0].unit \
            and not getattr(ins[0], "blocks", ()) and not ins[0].offset \
            and modules[ins[0].module].in_features == g.size * ins[0].unit:  # OBS removes contiguous units
        return ins[0].module
    return None


@register_importance("obs", scope="groups")
def _obs(model: nn.Module, groups: list[Group], ctx: TransformContext, *, kept: dict[str, int], batches: int
         ) -> dict[str, torch.Tensor]:
    modules = dict(model.named_modules())
    data = ctx.calibration_batches(batches, what="importance='obs'")
    solo = {g.name: _single_linear_consumer(g, modules) for g in groups}
    stats = consumer_statistics(model, _consumers(groups), data, ctx.run_batch,
                                gram=tuple(c for c in solo.values() if c is not None))
    scores = activation_scores(model, groups, stats)
    for g in groups:
        if solo[g.name] is not None and kept[g.name] < g.size:
            layer, unit = modules[solo[g.name]], g.members[0].unit
            scores[g.name] = obs_scores(layer, stats[solo[g.name]]["gram"], g.size - kept[g.name], unit)
    return scores


@register_importance("taylor", scope="groups")
def _taylor(model: nn.Module, groups: list[Group], ctx: TransformContext, *, kept: dict[str, int], batches: int
            ) -> dict[str, torch.Tensor]:
    task = ctx.task
    if task is None or task.loss is None:
        raise ConfigError("importance='taylor' needs a task with a loss and training batches (digits, tinygpt, "
                          "Hugging Face causal LMs); use importance='activation' or 'obs' for other models")
    it = ctx.train_batches()
    data = [b for _, b in zip(range(batches), it)]
    if not data:
        raise ConfigError("importance='taylor' found no training batches in the task; pass data=[batches]")
    params = list(model.parameters())
    saved = [p.grad for p in params]
    for p in params:
        p.grad = None
    try:
        with torch.enable_grad():
            for b in data:
                task.loss(model, b).backward()
        modules = dict(model.named_modules())
        out = {}
        for g in groups:
            total = torch.zeros(g.size)
            for mem in g.members:
                parts = [unit_slices(mem, (t.detach() * t.grad).float(), ax, g.size)
                         for t, ax in unit_weights(modules[mem.module], mem.dim) if t.grad is not None]
                if parts:
                    total += _normalised(torch.cat(parts, dim=1).sum(1).abs().cpu())
            out[g.name] = total
        return out
    finally:
        for p, grad in zip(params, saved):
            p.grad = grad
