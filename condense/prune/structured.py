"""Structured pruning that physically removes channels, neurons, attention heads and FFN width.

The four jobs stay apart: `graph.build_graph` finds coupled layers; `group_importance` rates each unit of a group
(L1/L2 norm of all its weights, or the activation it feeds the next layer on calibration data; any criterion
registered in the "groups" scope of `condense.prune.importance`); `plan_structured` decides how many to keep
(ratio, per-layer overrides, rounding) and validates everything before anything changes; `cutters.CUTTERS` (one
cutter per layer type) cut. The kept shapes go to the lineage, so `condense.load` rebuilds the
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
import dataclasses
import math
import warnings
from dataclasses import dataclass
from fnmatch import fnmatchcase
from typing import Any

import torch
from torch import nn

from condense.core.config import check_choice, check_int, check_nested, check_patterns, check_positive_int, \
    config, show
from condense.core.transforms import TransformContext, register_transform
from condense.errors import CondenseError, ConfigError
from condense.prune.cutters import (CUTTERS, cut_batchnorm, cut_conv2d, cut_heads, cut_linear,  # noqa: F401
                                    cutter_for, resize_, retie_, shape_of, tied_parameters)
from condense.prune.graph import DependencyGraph, Group, build_graph
from condense.prune.config_sync import apply_update_, sync_after_cut_
from condense.prune.head_cutters import register_optional
from condense.prune.heads import member_elements, within_groups
from condense.prune.group_importance import (activation_scores, consumer_statistics, group_scores,  # noqa: F401
                                             magnitude_scores)
from condense.prune.importance import criteria
from condense.prune.recover import check_recovery, reconstruct_, recover_
from condense.train.loop import FitConfig

KINDS = ("channels", "neurons", "heads", "ffn")
TARGETS = (*KINDS, "auto")
GQA_UNITS = ("groups", "queries")  # what a grouped-query head group removes: whole kv groups, or queries in each
IMPORTANCES = ("l1", "l2", "activation", "taylor", "obs")  # the built-in criteria; any "groups" criterion is accepted


@config
class StructuredConfig:
    """Remove a fraction of the units of every coupled group (channels, neurons, heads, FFN width).

    Args:
        ratio: fraction of each group's units to remove, in [0, 1).
        target: which groups: "channels" (Conv2d), "neurons" (Linear), "heads", "ffn", or "auto" (all of them).
        importance: "l2" / "l1" norm of the group's weights; "activation" (calibration data: mean |input| of
            the consuming layer times its weight norm); "taylor" (first-order Taylor: |weight x gradient of the
            task's loss| summed over each unit, on `calibration_batches` training batches); or "obs" (Optimal
            Brain Surgeon on calibration data:
            remove, one at a time, the unit whose loss the consuming Linear can least well make up for; pair
            it with reconstruct=True; groups with other consumers fall back to "activation").
        layer_ratios: per-group overrides, ((pattern, ratio), ...); the first matching pattern wins.
        round_to: keep feature counts multiples of this (e.g. 8 for faster kernels).
        gqa: grouped-query attention: "groups" removes whole key/value heads with their query heads (the query
            heads per key/value head stay); "queries" removes the same number of query heads inside every group
            (every key/value head, and the KV cache, stays).
        include: group-name patterns to prune (fnmatch, e.g. "layers.*.attn"); exclude: patterns to leave alone.
        calibration_batches: batches used by activation importance and reconstruction.
        reconstruct: after the cut, refit every Linear that lost inputs (weight and bias, least squares on
            calibration data) so it reproduces the dense layer's output: recovery without training.
        finetune: recovery training after the cut: the task's loss, or embedding distillation from the dense
            model for sentence encoders (see `condense.prune.recover`); None = no recovery.
        renormalize: also cut groups that pass a norm over several channels (LayerNorm, RMSNorm, GroupNorm with
            fewer groups than channels), e.g. an embedding's width; their statistics then cover the kept channels
            only, so the cut is not equal to zeroing the removed ones (recover afterwards).

    Example:
        >>> StructuredConfig(ratio=0.5, target="heads", layer_ratios=(("layers.0.*", 0.25),)).to_dict()["target"]
        'heads'
    """

    ratio: float = 0.5
    target: str = "auto"
    importance: str = "l2"
    layer_ratios: tuple[tuple[str, float], ...] = ()
    round_to: int = 1
    gqa: str = "groups"
    include: tuple[str, ...] = ("*",)
    exclude: tuple[str, ...] = ()
    calibration_batches: int = 8
    reconstruct: bool = False
    finetune: FitConfig | None = None
    renormalize: bool = False

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
        check_choice(self, "importance", criteria("groups"), example="l2")
        check_choice(self, "gqa", GQA_UNITS, example="groups")
        check_int(self, "round_to", lo=1, hi=1_000_000, example=8)  # 1 = no rounding, 8 for fast kernels
        check_patterns(self, example="('layers.*',)")
        check_positive_int(self, "calibration_batches", example=8)
        check_nested(self, "finetune", FitConfig, optional=True)
        if not isinstance(self.renormalize, bool):
            raise ConfigError(f"StructuredConfig.renormalize must be True or False, got {self.renormalize!r}")


def _check_ratio(r: Any, what: str) -> None:
    if isinstance(r, bool) or not isinstance(r, (int, float)) or not 0 <= r < 1:
        raise ConfigError(f"{what} must be in [0, 1) (the fraction removed), got {r!r}; ratio 1 would remove "
                          "every unit: use e.g. 0.5, or exclude the layer")


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


def _graph_for(model: nn.Module, ctx: TransformContext, renormalize: bool = False) -> DependencyGraph:
    try:
        batch = ctx.calibration_batches(1)[0]
    except CondenseError:
        return build_graph(model, renormalize=renormalize)
    return build_graph(model, run=lambda m: ctx.run_batch(m, batch), renormalize=renormalize)


def _within_groups(g: Group) -> Group:
    recast = within_groups(g.size, g.members) if g.kind == "heads" else None
    return g if recast is None else dataclasses.replace(g, size=recast[0], members=recast[1])


def plan_structured(model: nn.Module, cfg: StructuredConfig, ctx: TransformContext | None = None) -> StructuredPlan:
    """Decide which units of which groups to keep; raises ConfigError before anything changes.

    Example:
        >>> net = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
        >>> plan_structured(net, StructuredConfig(ratio=0.25)).keep["0"].__len__()
        6
    """
    ctx = ctx or TransformContext()
    graph = _graph_for(model, ctx, cfg.renormalize)
    if cfg.gqa == "queries":
        graph.groups = [_within_groups(g) for g in graph.groups]
    groups = _select(graph, cfg)
    modules = dict(model.named_modules())
    for g in groups:
        for mem in g.members:
            if cutter_for(modules[mem.module], mem.dim) is None:
                raise ConfigError(f"layer {mem.module} ({type(modules[mem.module]).__name__}) has no cutter; "
                                  f"exclude group {g.name!r} (exclude=('{g.name}',)) or register one with "
                                  "condense.prune.cutters.register_cutter")
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
    elems = {k: v.tolist() for k, v in kept_elements(modules, graph.groups, keep).items()}
    for (n, d), kept_n in elems.items():
        gn = modules[n]
        if isinstance(gn, nn.GroupNorm) and gn.num_groups != gn.num_channels and len(kept_n) % gn.num_groups:
            raise ConfigError(f"GroupNorm {n} ({gn.num_groups} groups) would keep {len(kept_n)} channels; use "
                              f"StructuredConfig(round_to={gn.num_groups}) or exclude the groups it belongs to")
    refit: dict[str, tuple[list[int], list[int] | None]] = {}
    if cfg.reconstruct:  # every Linear that loses inputs: (inputs kept, outputs kept or None for all)
        refit = {n: (cols, elems.get((n, "out"))) for (n, d), cols in elems.items()
                 if d == "in" and isinstance(modules[n], nn.Linear)}
        other = sorted({n for (n, d) in elems if d == "in" and n not in refit})
        if other:
            warnings.warn(f"StructuredConfig(reconstruct=True) refits nn.Linear consumers only; {len(other)} other "
                          f"layer(s) keep their cut weights: {other[:4]} (use finetune= to recover them)",
                          stacklevel=2)
    return StructuredPlan(graph, keep, {n: s.tolist() for n, s in scores.items()}, refit)


def kept_elements(modules: dict[str, nn.Module], groups: list[Group], keep: dict[str, list[int]]
                  ) -> dict[tuple[str, str], torch.Tensor]:
    """{(layer, "out" | "in"): the elements it keeps} after removing every group's dropped units: a layer may hold
    slices of several groups (a consumer of a concatenation) and elements of none (kept)."""
    drops: dict[tuple[str, str], list[torch.Tensor]] = {}
    for g in groups:
        if g.name not in keep:
            continue
        drop = torch.tensor(sorted(set(range(g.size)) - set(keep[g.name])), dtype=torch.long)
        for mem in g.members:
            if mem.dim in ("out", "in"):
                drops.setdefault((mem.module, mem.dim), []).append(member_elements(mem, drop))
    out = {}
    for (name, dim), parts in drops.items():
        m = modules[name]
        mask = torch.ones(cutter_for(m, dim).size(m, dim), dtype=torch.bool)
        mask[torch.cat(parts)] = False
        out[(name, dim)] = mask.nonzero().squeeze(1)
    return out


def apply_plan(model: nn.Module, plan: StructuredPlan) -> dict[str, dict[str, int]]:
    """Cut every planned group (in place; tied weights stay tied); returns the new shapes of every layer touched."""
    modules = dict(model.named_modules())
    ties = tied_parameters(model)
    touched: list[str] = []
    for g in plan.graph.groups:
        if g.name not in plan.keep:
            continue
        idx = torch.tensor(plan.keep[g.name], dtype=torch.long)
        for mem in g.members:
            if mem.dim not in ("out", "in"):  # heads: the attention module keeps len(idx) heads
                cutter_for(modules[mem.module], mem.dim)(modules[mem.module], mem.dim, idx)
            if mem.module not in touched:
                touched.append(mem.module)
    for (name, dim), elems in kept_elements(modules, plan.graph.groups, plan.keep).items():
        cutter_for(modules[name], dim)(modules[name], dim, elems)
    retie_(model, ties)
    return {n: shape_of(modules[n]) for n in touched}


def prune_structured(model: nn.Module, cfg: StructuredConfig, ctx: TransformContext) -> nn.Module:
    """Plan and validate, cut, reconstruct and record the kept shapes, then recover if `cfg.finetune` says so."""
    plan = plan_structured(model, cfg, ctx)
    distill = cfg.finetune is not None and check_recovery(model, ctx) == "distill"
    dense = copy.deepcopy(model).eval() if distill or plan.refit else None
    modules = dict(model.named_modules())
    before = {m.module: shape_of(modules[m.module]) for g in plan.graph.groups if g.name in plan.keep
              for m in g.members}
    shapes = apply_plan(model, plan)
    update, why = sync_after_cut_(model, plan.graph.groups, plan.keep, before, shapes)
    if why is not None:
        warnings.warn(f"StructuredConfig: {why}", stacklevel=2)
    if plan.refit:
        batches = ctx.calibration_batches(cfg.calibration_batches)
        reconstruct_(model, dense, plan.refit, batches, ctx.run_batch)
    ctx.record(shapes=shapes, kept={g: len(k) for g, k in plan.keep.items()},
               graph=plan.graph.method, blocked=plan.graph.blocked, unsupported=plan.unsupported,
               hf_config=update, **({"hf_config_unchanged": why} if why else {}))
    if cfg.finetune is not None:
        recover_(model, dense, ctx, cfg.finetune)
    return model


def _replay(model: nn.Module, cfg: StructuredConfig, details: dict) -> nn.Module:
    register_optional()  # cutters of transformers' attention and Conv1D, once their modules are imported
    resize_(model, details["shapes"])
    apply_update_(model, details.get("hf_config", {}))
    return model


# -- registered transforms ----------------------------------------------------------------------------------------
register_transform(StructuredConfig, family="prune", name="structured", replay=_replay, search=True)(prune_structured)
