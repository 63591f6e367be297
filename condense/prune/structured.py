"""Structured pruning that physically removes channels, neurons, attention heads and FFN width.

The four jobs stay apart: `graph.build_graph` finds coupled layers; `group_scores` rates each unit of a group
(L1/L2 norm of all its weights, or the activation it feeds the next layer on calibration data); `plan_structured`
decides how many to keep (ratio, per-layer overrides, rounding) and validates everything before anything changes;
`CUTTERS` (one function per layer type) cut. The kept shapes go to the lineage, so `condense.load` rebuilds the
smaller architecture (`resize_`) before loading its tensors.

Example:
    >>> import torch
    >>> from torch import nn
    >>> from condense.prune import prune_, StructuredConfig
    >>> net = nn.Sequential(nn.Linear(4, 16), nn.ReLU(), nn.Linear(16, 2))
    >>> prune_(net, StructuredConfig(ratio=0.5))[0].out_features
    8
"""
from __future__ import annotations

import copy
import math
import dataclasses
from dataclasses import dataclass
from fnmatch import fnmatchcase
from typing import Any, Callable

import torch
from torch import nn

from condense.core.config import check_choice, check_int, check_nested, check_patterns, check_positive_int, \
    config, show
from condense.core.hooks import run_with_hooks
from condense.core.transforms import TransformContext, register_transform
from condense.errors import CondenseError, ConfigError
from condense.prune.graph import DependencyGraph, Group, build_graph
from condense.prune.recover import check_recovery, obs_scores, reconstruct_, recover_
from condense.train.loop import FitConfig

KINDS = ("channels", "neurons", "heads", "ffn")
TARGETS = (*KINDS, "auto")
IMPORTANCES = ("l1", "l2", "activation", "obs")


@config
class StructuredConfig:
    """Remove a fraction of the units of every coupled group (channels, neurons, heads, FFN width).

    Args:
        ratio: fraction of each group's units to remove, in [0, 1).
        target: which groups: "channels" (Conv2d), "neurons" (Linear), "heads", "ffn", or "auto" (all of them).
        importance: "l2" / "l1" norm of the group's weights; "activation" (calibration data: mean |input| of
            the consuming layer times its weight norm); or "obs" (Optimal Brain Surgeon on calibration data:
            remove, one at a time, the unit whose loss the consuming Linear can least well make up for; pair
            it with reconstruct=True; groups with other consumers fall back to "activation").
        layer_ratios: per-group overrides, ((pattern, ratio), ...); the first matching pattern wins.
        round_to: keep feature counts multiples of this (e.g. 8 for faster kernels).
        include: group-name patterns to prune (fnmatch, e.g. "layers.*.attn"); exclude: patterns to leave alone.
        calibration_batches: batches used by activation importance and reconstruction.
        reconstruct: after the cut, refit every Linear that lost inputs (weight and bias, least squares on
            calibration data) so it reproduces the dense layer's output: recovery without training.
        finetune: recovery training after the cut: the task's loss, or embedding distillation from the dense
            model for sentence encoders (see `condense.prune.recover`); None = no recovery.

    Example:
        >>> StructuredConfig(ratio=0.5, target="heads", layer_ratios=(("layers.0.*", 0.25),)).to_dict()["target"]
        'heads'
    """

    ratio: float = 0.5
    target: str = "auto"
    importance: str = "l2"
    layer_ratios: tuple[tuple[str, float], ...] = ()
    round_to: int = 1
    include: tuple[str, ...] = ("*",)
    exclude: tuple[str, ...] = ()
    calibration_batches: int = 8
    reconstruct: bool = False
    finetune: FitConfig | None = None

    def __post_init__(self) -> None:
        _check_ratio(self.ratio, "ratio")
        lr = self.layer_ratios
        if isinstance(lr, list):
            lr = tuple(tuple(e) if isinstance(e, list) else e for e in lr)
            object.__setattr__(self, "layer_ratios", lr)
        if not isinstance(lr, tuple) or not all(isinstance(e, tuple) and len(e) == 2 for e in lr):
            raise ConfigError(f"StructuredConfig.layer_ratios must be (pattern, ratio) pairs, got {show(lr)}; "
                              "e.g. layer_ratios=(('layers.0.*', 0.25),)")
        for pat, r in lr:
            if not isinstance(pat, str):
                raise ConfigError(f"layer_ratios entries are (pattern, ratio) pairs, got {(pat, r)!r}; "
                                  "e.g. layer_ratios=(('layers.0.*', 0.25),)")
            _check_ratio(r, f"layer_ratios[{pat!r}]")
        check_choice(self, "target", TARGETS, example="auto")
        check_choice(self, "importance", IMPORTANCES, example="l2")
        check_int(self, "round_to", lo=1, hi=1_000_000, example=8)  # 1 = no rounding, 8 for fast kernels
        check_patterns(self, example="('layers.*',)")
        check_positive_int(self, "calibration_batches", example=8)
        check_nested(self, "finetune", FitConfig, optional=True)


def _check_ratio(r: Any, what: str) -> None:
    if isinstance(r, bool) or not isinstance(r, (int, float)) or not 0 <= r < 1:
        raise ConfigError(f"{what} must be in [0, 1) (the fraction removed), got {r!r}; ratio 1 would remove "
                          "every unit: use e.g. 0.5, or exclude the layer")


# -- cutting: one function per layer type -------------------------------------------------------------------------
def _slice(module: nn.Module, name: str, dim: int, idx: torch.Tensor) -> None:
    t = getattr(module, name, None)
    if t is None:
        return
    new = t.detach().index_select(dim, idx.to(t.device)).clone()
    if isinstance(t, nn.Parameter):
        setattr(module, name, nn.Parameter(new, requires_grad=t.requires_grad))
    else:
        module._buffers[name] = new


def _cut_weight(m: nn.Module, dim: str, idx: torch.Tensor, size_attrs: tuple[str, str]) -> None:
    """Keep output units `idx` (weight dim 0, with the bias) or input units (weight dim 1); update the size attr."""
    if dim == "out":
        _slice(m, "weight", 0, idx)
        _slice(m, "bias", 0, idx)
    else:
        _slice(m, "weight", 1, idx)
    setattr(m, size_attrs[dim == "in"], len(idx))


def cut_linear(m: nn.Linear, dim: str, idx: torch.Tensor) -> None:
    """Keep output rows (`dim="out"`, with the bias) or input columns (`dim="in"`) `idx` of a Linear."""
    _cut_weight(m, dim, idx, ("out_features", "in_features"))


def cut_conv2d(m: nn.Conv2d, dim: str, idx: torch.Tensor) -> None:
    """Keep output channels (with the bias) or input channels `idx` of an ungrouped Conv2d."""
    _cut_weight(m, dim, idx, ("out_channels", "in_channels"))


def cut_batchnorm(m: nn.modules.batchnorm._BatchNorm, dim: str, idx: torch.Tensor) -> None:
    """Keep features `idx` of a BatchNorm (affine parameters and running statistics)."""
    for name in ("weight", "bias", "running_mean", "running_var"):
        _slice(m, name, 0, idx)
    m.num_features = len(idx)


def cut_heads(m: nn.Module, dim: str, idx: torch.Tensor) -> None:
    """An attention module keeps `len(idx)` heads (its projections are cut by their own members)."""
    m.n_heads = len(idx)


# Layer type -> cutter. LayerNorm has none on purpose: it normalises the residual stream, which is never cut.
CUTTERS: dict[type, Callable[[nn.Module, str, torch.Tensor], None]] = {
    nn.Linear: cut_linear, nn.Conv2d: cut_conv2d, nn.BatchNorm1d: cut_batchnorm, nn.BatchNorm2d: cut_batchnorm,
}


def cutter_for(module: nn.Module, dim: str) -> Callable[[nn.Module, str, torch.Tensor], None] | None:
    """The cutter for `module` along `dim` (through the MRO), or None."""
    if dim == "heads":
        return cut_heads
    return next((CUTTERS[t] for t in type(module).__mro__ if t in CUTTERS), None)


def shape_of(module: nn.Module) -> dict[str, int]:
    """The prunable sizes of `module`, as recorded in the lineage: {"in", "out"}, {"features"} or {"heads"}."""
    if isinstance(module, nn.Linear):
        return {"in": module.in_features, "out": module.out_features}
    if isinstance(module, nn.Conv2d):
        return {"in": module.in_channels, "out": module.out_channels}
    if isinstance(module, nn.modules.batchnorm._BatchNorm):
        return {"features": module.num_features}
    return {"heads": module.n_heads}


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


# -- scoring ------------------------------------------------------------------------------------------------------
def _member_weights(m: nn.Module, dim: str) -> list[tuple[torch.Tensor, int]]:
    if isinstance(m, nn.modules.batchnorm._BatchNorm):
        return [(m.weight, 0)] if m.weight is not None else []
    if dim == "out":
        return [(m.weight, 0)] + ([(m.bias, 0)] if getattr(m, "bias", None) is not None else [])
    if dim == "in":
        return [(m.weight, 1)]
    return []


def _per_unit(t: torch.Tensor, axis: int, size: int) -> torch.Tensor:
    return t.detach().float().movedim(axis, 0).reshape(size, -1)  # (size, unit * rest)


def _normalised(s: torch.Tensor) -> torch.Tensor:
    return s / s.mean().clamp_min(1e-12)


def magnitude_scores(model: nn.Module, group: Group, p: int = 2) -> torch.Tensor:
    """Importance (size,) of a group's units: per member the Lp norm of its slices, mean-normalised, summed."""
    modules = dict(model.named_modules())
    total = torch.zeros(group.size)
    for mem in group.members:
        parts = [_per_unit(t, ax, group.size) for t, ax in _member_weights(modules[mem.module], mem.dim)]
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
            w = modules[mem.module].weight.detach().float()
            col = w.movedim(1, 0).reshape(w.shape[1], -1).norm(dim=1).cpu()  # (in,)
            total += _normalised((stats[mem.module]["abs"] * col).reshape(g.size, -1).sum(1))
        out[g.name] = total
    return out


# -- planning (no mutation) ---------------------------------------------------------------------------------------
@dataclass
class StructuredPlan:
    """What a structured prune will do: kept units per group, the graph, every unit's score, refitted consumers."""

    graph: DependencyGraph
    keep: dict[str, list[int]]
    scores: dict[str, list[float]]
    refit: dict[str, tuple[list[int], list[int] | None]] = dataclasses.field(default_factory=dict)

    @property
    def unsupported(self) -> list[str]:
        """Layers the graph analysis could not handle (left untouched)."""
        return list(self.graph.unsupported)


def kept_count(size: int, unit: int, ratio: float, round_to: int) -> int:
    """Units kept of `size` after removing `ratio`, rounded so kept features are multiples of `round_to`.

    Example:
        >>> kept_count(64, 1, 0.5, 8), kept_count(12, 32, 0.5, 8), kept_count(30, 1, 0.5, 8)
        (32, 6, 16)
    """
    step = round_to // math.gcd(round_to, unit)  # in units
    k = math.floor(size * (1 - ratio) / step + 0.5) * step
    return min(k, size)


def _ratio_for(cfg: StructuredConfig, name: str) -> float:
    return next((r for pat, r in cfg.layer_ratios if fnmatchcase(name, pat)), cfg.ratio)


def _select(graph: DependencyGraph, cfg: StructuredConfig) -> list[Group]:
    kinds = KINDS if cfg.target == "auto" else (cfg.target,)
    cands = [g for g in graph.groups if g.kind in kinds]
    names = [g.name for g in cands]
    for pat in (*cfg.include, *(p for p, _ in cfg.layer_ratios)):
        if pat != "*" and not any(fnmatchcase(n, pat) for n in names):
            raise ConfigError(f"StructuredConfig: pattern {pat!r} matches no prunable {cfg.target} group; groups "
                              f"look like {names[:4]}")
    chosen = [g for g in cands if any(fnmatchcase(g.name, p) for p in cfg.include)
              and not any(fnmatchcase(g.name, p) for p in cfg.exclude)]
    if not chosen:
        why = "; ".join(f"{k}: {v}" for k, v in list(graph.blocked.items())[:4])
        raise ConfigError(f"StructuredConfig: nothing to prune for target={cfg.target!r} (groups found: "
                          f"{[(g.name, g.kind) for g in graph.groups][:6]}). Layers that cannot be pruned: "
                          f"{why or 'none'}; choose another target or loosen include/exclude")
    return chosen


def group_scores(model: nn.Module, groups: list[Group], importance: str, kept: dict[str, int],
                 ctx: TransformContext, n_batches: int = 8) -> dict[str, torch.Tensor]:
    """Every unit's importance (higher = keep) per group; "obs" needs the number `kept` of each group."""
    if importance in ("l1", "l2"):
        return {g.name: magnitude_scores(model, g, 1 if importance == "l1" else 2) for g in groups}
    modules = dict(model.named_modules())
    batches = ctx.calibration_batches(n_batches, what=f"importance={importance!r}")
    consumers = sorted({mem.module for g in groups for mem in g.members if mem.dim == "in"})
    solo = {g.name: _single_linear_consumer(g, modules) for g in groups} if importance == "obs" else {}
    stats = consumer_statistics(model, consumers, batches, ctx.run_batch,
                                gram=tuple(c for c in solo.values() if c is not None))
    scores = activation_scores(model, groups, stats)
    for g in groups:
        if solo.get(g.name) is not None and kept[g.name] < g.size:
            layer, unit = modules[solo[g.name]], g.members[0].unit
            scores[g.name] = obs_scores(layer, stats[solo[g.name]]["gram"], g.size - kept[g.name], unit)
    return scores


def _single_linear_consumer(g: Group, modules: dict[str, nn.Module]) -> str | None:
    ins = [m for m in g.members if m.dim == "in"]
    if len(ins) == 1 and isinstance(modules[ins[0].module], nn.Linear) and ins[0].unit == g.members[0].unit:
        return ins[0].module
    return None


def _graph_for(model: nn.Module, ctx: TransformContext) -> DependencyGraph:
    try:
        batch = ctx.calibration_batches(1)[0]
    except CondenseError:
        return build_graph(model)
    return build_graph(model, run=lambda m: ctx.run_batch(m, batch))


def plan_structured(model: nn.Module, cfg: StructuredConfig, ctx: TransformContext | None = None) -> StructuredPlan:
    """Decide which units of which groups to keep; raises ConfigError before anything changes.

    Example:
        >>> net = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
        >>> plan_structured(net, StructuredConfig(ratio=0.25)).keep["0"].__len__()
        6
    """
    ctx = ctx or TransformContext()
    graph = _graph_for(model, ctx)
    groups = _select(graph, cfg)
    modules = dict(model.named_modules())
    for g in groups:
        for mem in g.members:
            if cutter_for(modules[mem.module], mem.dim) is None:
                raise ConfigError(f"layer {mem.module} ({type(modules[mem.module]).__name__}) has no cutter; "
                                  f"exclude group {g.name!r} (exclude=('{g.name}',)) or register one in CUTTERS")
    if cfg.reconstruct:
        ctx.calibration_batches(1, what="StructuredConfig(reconstruct=True)")  # fail before anything changes
    kept: dict[str, int] = {}
    for g in groups:
        ratio = _ratio_for(cfg, g.name)
        unit = g.members[0].unit  # features per unit of the producer (head_dim for heads)
        kept[g.name] = kept_count(g.size, unit, ratio, cfg.round_to)
        if kept[g.name] < 1:
            step = cfg.round_to // math.gcd(cfg.round_to, unit)
            raise ConfigError(f"pruning {g.name} ({g.size} {g.kind}) at ratio {ratio} with round_to={cfg.round_to} "
                              f"would remove all of them; use a ratio below {1 - step / (2 * g.size):.3f} for it "
                              f"(layer_ratios=(('{g.name}', 0.5),)), a smaller round_to, or exclude=('{g.name}',)")
    scores = group_scores(model, groups, cfg.importance, kept, ctx, cfg.calibration_batches)
    keep: dict[str, list[int]] = {}
    for g in groups:
        if kept[g.name] < g.size:
            order = torch.argsort(scores[g.name], descending=True, stable=True)
            keep[g.name] = sorted(order[:kept[g.name]].tolist())
    refit: dict[str, tuple[list[int], list[int] | None]] = {}
    if cfg.reconstruct:  # every Linear that loses inputs: (inputs kept, outputs kept or None for all)
        elems = {(m.module, m.dim): [u * m.unit + j for u in keep[g.name] for j in range(m.unit)]
                 for g in groups if g.name in keep for m in g.members}
        refit = {n: (cols, elems.get((n, "out"))) for (n, d), cols in elems.items()
                 if d == "in" and isinstance(modules[n], nn.Linear)}
    return StructuredPlan(graph, keep, {n: s.tolist() for n, s in scores.items()}, refit)


def apply_plan(model: nn.Module, plan: StructuredPlan) -> dict[str, dict[str, int]]:
    """Cut every planned group (in place); returns the new shapes of every layer touched."""
    modules = dict(model.named_modules())
    touched: list[str] = []
    for g in plan.graph.groups:
        if g.name not in plan.keep:
            continue
        idx = torch.tensor(plan.keep[g.name], dtype=torch.long)
        for mem in g.members:
            m = modules[mem.module]
            elems = (idx[:, None] * mem.unit + torch.arange(mem.unit)).reshape(-1)  # (k * unit,)
            cutter_for(m, mem.dim)(m, mem.dim, idx if mem.dim == "heads" else elems)
            if mem.module not in touched:
                touched.append(mem.module)
    return {n: shape_of(modules[n]) for n in touched}


def prune_structured(model: nn.Module, cfg: StructuredConfig, ctx: TransformContext) -> nn.Module:
    """Plan and validate, cut, reconstruct and record the kept shapes, then recover if `cfg.finetune` says so."""
    plan = plan_structured(model, cfg, ctx)
    distill = cfg.finetune is not None and check_recovery(model, ctx) == "distill"
    dense = copy.deepcopy(model).eval() if distill or plan.refit else None
    shapes = apply_plan(model, plan)
    if plan.refit:
        batches = ctx.calibration_batches(cfg.calibration_batches)
        reconstruct_(model, dense, plan.refit, batches, ctx.run_batch)
    ctx.record(shapes=shapes, kept={g: len(k) for g, k in plan.keep.items()},
               graph=plan.graph.method, blocked=plan.graph.blocked, unsupported=plan.unsupported)
    if cfg.finetune is not None:
        recover_(model, dense, ctx, cfg.finetune)
    return model


def _replay(model: nn.Module, cfg: StructuredConfig, details: dict) -> nn.Module:
    return resize_(model, details["shapes"])


# -- registered transforms ----------------------------------------------------------------------------------------
register_transform(StructuredConfig, family="prune", name="structured", replay=_replay, search=True)(prune_structured)
