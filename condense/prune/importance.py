"""Importance scores: how much each weight, group unit or block matters, by a named criterion.

Why a separate module: scoring is one job (pruners decide how much and where to cut, schedules decide when), so
every pruner finds its criteria in one place, registered with `register_importance(name, scope=...)` and looked up
with `criterion(name, scope)`. The scope says what is scored, and so the call:

* "weights" (`IMPORTANCE`; unstructured, N:M, schedules):
  `fn(model, layer_names, ctx, *, batches) -> {layer name: scores shaped like its weight}`
* "groups" (structured pruning; `condense.prune.group_importance`):
  `fn(model, groups, ctx, *, kept, batches) -> {group name: (group.size,) scores}`
* "blocks" (layer drop; `condense.prune.layers`):
  `fn(blocks: BlockSet, n_drop) -> (block indices to keep, {block index: score})`

Higher = keep. `needs_data=False` marks a criterion that reads no calibration data. Weight criteria (their scores
are non-negative; a pruned (masked) weight scores 0 because the effective weight is used):

* "magnitude" / "l1": |W|.   "l2": W² (sums over a group give the squared L2 norm; see `group_scores`).
* "taylor": Σ_batches |W ⊙ ∂L/∂W|, the first-order estimate of the loss change when a weight is zeroed
  (Molchanov et al. 2019), with the task's loss on its training batches.
* "wanda": |W_ij| · ‖X_j‖₂ (Sun et al. 2023), where ‖X_j‖₂ is the L2 norm of input feature j over every
  calibration token (collected by forward hooks). Wanda compares scores within each output row: use
  `scope="row"` in the pruning config.

Data-driven criteria leave the model as they found it: same mode, same `.grad`, no BatchNorm statistic updated
(gradients are taken in eval mode).
"""
from __future__ import annotations

import itertools
from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import nn

from condense.core.registry import Registry
from condense.core.transforms import TransformContext
from condense.errors import ConfigError

Scores = dict[str, torch.Tensor]
SCOPES = ("weights", "groups", "blocks")
IMPORTANCE: Registry[Callable[..., Scores]] = Registry("importance criterion")  # the "weights" scope
_REGISTRIES: dict[str, Registry[Callable]] = {"weights": IMPORTANCE, "groups": Registry("group importance criterion"),
                                              "blocks": Registry("block importance criterion")}
# How per-weight scores of a criterion combine over a group (a row, a channel): "sum", or "l2" (sqrt of sum).
GROUP_REDUCE: dict[str, str] = {}
NEEDS_DATA: dict[tuple[str, str], bool] = {}  # (scope, name) -> whether the criterion reads calibration data


def register_importance(name: str, *, scope: str = "weights", group_reduce: str = "sum",
                        needs_data: bool = True) -> Callable:
    """Register criterion `fn` under `name` for `scope` ("weights", "groups" or "blocks"; calls in the module doc).

    Example:
        >>> @register_importance("first", scope="groups", needs_data=False)
        ... def first(model, groups, ctx, *, kept, batches):  # keep the first units of every group
        ...     return {g.name: -torch.arange(g.size, dtype=torch.float) for g in groups}
        >>> "first" in criteria("groups")
        True
    """
    if scope not in SCOPES:
        raise ValueError(f"importance scope must be one of {SCOPES}, got {scope!r}")

    def deco(fn: Callable) -> Callable:
        _REGISTRIES[scope].register(name, fn)
        NEEDS_DATA[scope, name] = needs_data
        if scope == "weights":
            GROUP_REDUCE[name] = group_reduce
        return fn

    return deco


def criteria(scope: str = "weights") -> tuple[str, ...]:
    """The names of every criterion registered for `scope`, sorted."""
    return tuple(_REGISTRIES[scope])


def criterion(name: str, scope: str = "weights") -> Callable:
    """The criterion `name` of `scope`; a ConfigError lists the registered names."""
    return _lookup(name, scope)


def _lookup(name: str, scope: str) -> Callable:
    reg = _REGISTRIES[scope]
    if not isinstance(name, str) or name not in reg:
        raise ConfigError(f"unknown {reg.what} {name!r}; choose one of: {', '.join(reg)}")
    return reg.get(name)


def needs_data(name: str, scope: str = "weights") -> bool:
    """Whether criterion `name` of `scope` reads calibration (or training) data."""
    return NEEDS_DATA.get((scope, name), True)


def score(model: nn.Module, layer_names: list[str], ctx: TransformContext | None = None, *,
          criterion: str = "magnitude", batches: int = 8) -> Scores:
    """Per-weight importance of each named layer's `weight` by `criterion` (higher = keep).

    Args:
        layer_names: qualified names of modules with a `weight` (Linear, Conv2d).
        ctx: data for data-driven criteria ("taylor": train batches + loss; "wanda": calibration batches).
        batches: at most this many batches for data-driven criteria.

    Example:
        >>> lin = nn.Linear(3, 2)
        >>> with torch.no_grad(): _ = lin.weight.copy_(torch.tensor([[1., -2, 3], [0, 5, -6]]))
        >>> score(lin, [""], criterion="magnitude")[""].tolist()
        [[1.0, 2.0, 3.0], [0.0, 5.0, 6.0]]
    """
    return _lookup(criterion, "weights")(model, layer_names, ctx or TransformContext(), batches=batches)


def group_scores(scores: torch.Tensor, dim: int, criterion: str = "magnitude") -> torch.Tensor:
    """Combine per-weight scores into one score per index along `dim` (e.g. dim=0: one per output row).

    Example:
        >>> group_scores(torch.tensor([[3., 4.], [1., 0.]]) ** 2, 0, "l2").tolist()  # row L2 norms
        [5.0, 1.0]
    """
    dims = [d for d in range(scores.dim()) if d != dim % scores.dim()]
    total = scores.sum(dim=dims) if dims else scores
    return total.sqrt() if GROUP_REDUCE.get(criterion, "sum") == "l2" else total


def effective_weight(module: nn.Module) -> torch.Tensor:
    """The weight the module computes with (masks applied), detached."""
    return module.weight.detach()


def weight_leaf(module: nn.Module) -> nn.Parameter:
    """The trainable tensor behind `module.weight` (the parametrization's original when masked)."""
    p = getattr(module, "parametrizations", None)
    if p is not None and "weight" in p:
        return p["weight"].original
    return module.weight


# -- criteria ---------------------------------------------------------------------------------------------------
@register_importance("magnitude", needs_data=False)
def magnitude(model: nn.Module, layer_names: list[str], ctx: TransformContext, *, batches: int = 8) -> Scores:
    return {n: effective_weight(model.get_submodule(n)).abs() for n in layer_names}


@register_importance("l1", needs_data=False)
def l1(model: nn.Module, layer_names: list[str], ctx: TransformContext, *, batches: int = 8) -> Scores:
    return magnitude(model, layer_names, ctx)


@register_importance("l2", group_reduce="l2", needs_data=False)
def l2(model: nn.Module, layer_names: list[str], ctx: TransformContext, *, batches: int = 8) -> Scores:
    return {n: effective_weight(model.get_submodule(n)).pow(2) for n in layer_names}


def _lm_loss(model: nn.Module, batch: Any, ctx: TransformContext) -> torch.Tensor:
    """Fallback loss when the task has none: next-token cross-entropy on a (B, T) batch of token ids."""
    x = batch[0] if isinstance(batch, (tuple, list)) else batch
    out = ctx.run_batch(model, x)
    logits = out[0] if isinstance(out, (tuple, list)) else out  # (B, T, V)
    if not (isinstance(x, torch.Tensor) and x.dim() == 2 and logits.dim() == 3):
        raise ConfigError("criterion 'taylor' needs a loss: use a task with train_data and loss (digits has them), "
                          "or a language model taking (B, T) token ids")
    return F.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]).float(), x[:, 1:].reshape(-1))


@register_importance("taylor")
def taylor(model: nn.Module, layer_names: list[str], ctx: TransformContext, *, batches: int = 8) -> Scores:
    task = ctx.task
    if task is not None and task.loss is not None and task.train_data is not None:
        data, loss_fn = list(itertools.islice(ctx.train_batches(), batches)), task.loss
    else:
        data = ctx.calibration_batches(batches, what="criterion 'taylor'")
        loss_fn = lambda m, b: _lm_loss(m, b, ctx)  # noqa: E731
    mods = {n: model.get_submodule(n) for n in layer_names}
    leaves = {n: weight_leaf(m) for n, m in mods.items()}
    params = list(model.parameters())
    saved = [(p.grad, p.requires_grad) for p in params]
    was_training = model.training
    acc = {n: torch.zeros_like(leaves[n]) for n in layer_names}
    try:
        model.eval()  # no BatchNorm statistic changes, no dropout
        for p in params:
            p.requires_grad_(False)
        for leaf in leaves.values():
            leaf.requires_grad_(True)
        for batch in data:
            for leaf in leaves.values():
                leaf.grad = None
            loss_fn(model, batch).backward()
            for n, m in mods.items():
                g = leaves[n].grad
                if g is not None:
                    acc[n] += (effective_weight(m) * g).abs()
    finally:
        for p, (g, rg) in zip(params, saved):
            p.grad = g
            p.requires_grad_(rg)
        model.train(was_training)
    return acc


def _input_sq_norms(module: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Σ over tokens of x_j² for each input feature j of `module`'s weight (Linear: in; Conv2d: in*kh*kw)."""
    if isinstance(module, nn.Conv2d):
        if isinstance(module.padding, str):
            raise ConfigError(f"criterion 'wanda' does not support padding={module.padding!r} convolutions; "
                              "exclude the layer or use criterion='magnitude'")
        cols = F.unfold(x.float(), module.kernel_size, module.dilation, module.padding, module.stride)  # (B, C*k*k, L)
        return cols.pow(2).sum(dim=(0, 2))  # (C*kh*kw,)
    return x.float().reshape(-1, x.shape[-1]).pow(2).sum(0)  # (in,)


@register_importance("wanda")
def wanda(model: nn.Module, layer_names: list[str], ctx: TransformContext, *, batches: int = 8) -> Scores:
    mods = {n: model.get_submodule(n) for n in layer_names}
    sq: dict[str, torch.Tensor] = {}

    def hook(name: str) -> Callable:
        def fn(mod: nn.Module, args: tuple) -> None:
            s = _input_sq_norms(mod, args[0].detach())
            sq[name] = sq[name] + s if name in sq else s
        return fn

    handles = [m.register_forward_pre_hook(hook(n)) for n, m in mods.items()]
    was_training = model.training
    try:
        model.eval()
        ctx.run_calibration(model, batches, what="criterion 'wanda'")
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    out: Scores = {}
    for n, m in mods.items():
        if n not in sq:
            raise ConfigError(f"criterion 'wanda': layer {n!r} never ran on the calibration batches; exclude it "
                              "or use criterion='magnitude'")
        w = effective_weight(m)
        norms = sq[n].sqrt()
        if isinstance(m, nn.Conv2d) and m.groups > 1:  # (groups*C/g*kh*kw,) -> per output row's own inputs
            norms = norms.view(m.groups, 1, -1).expand(-1, w.shape[0] // m.groups, -1).reshape(w.shape[0], -1)
            out[n] = w.abs() * norms.view_as(w).to(w.dtype)
        else:
            out[n] = w.abs() * norms.view(1, *w.shape[1:]).to(w.dtype)
    return out
