"""Unstructured pruning: zero individual weights of Linear and Conv2d layers chosen by an importance criterion.

How masks are held: `torch.nn.utils.parametrize` with a `WeightMask` parametrization (weight = original ⊙ mask),
not a buffer plus forward pre-hook. The masked weight is computed inside the autograd graph, so during
fine-tuning a pruned weight gets exactly zero gradient and stays zero whatever the optimizer does (momentum,
weight decay), the mask is a real buffer that saves and loads, and `make_permanent` is torch's own
`remove_parametrizations(leave_parametrized=True)`. The original is zeroed where masked too, so parameter counts
and sparse storage see the zeros even before the masks are baked in.

Default layers: every Linear and Conv2d, the classifier / lm_head included (exclude it by name, e.g.
`exclude=("lm_head",)`); embeddings, norms and biases are never pruned. Linear-like layers (GPT-2's Conv1D, see
`condense.core.linear_like`) are pruned as the Linear they are: converted for scoring and masking (rows are output
features), and given back in their own layout when the masks are baked.

Tied weights: a layer whose weight is shared with another module (an lm_head tied to the token embedding) is left
out, with a warning and the lineage entry "tied_skipped": pruning it would zero the same entries of the embedding,
which the user did not ask for. Untie it first (give it its own Parameter) to prune it.

Example:
    >>> import torch
    >>> from condense.prune import prune_
    >>> from condense.prune.unstructured import UnstructuredConfig
    >>> net = torch.nn.Sequential(torch.nn.Linear(8, 8), torch.nn.ReLU(), torch.nn.Linear(8, 2))
    >>> net = prune_(net, UnstructuredConfig(sparsity=0.75))
    >>> int((net[0].weight == 0).sum()), int((net[2].weight == 0).sum())
    (48, 12)
"""
from __future__ import annotations

import enum
import math
import warnings
from typing import Any

import torch
from torch import nn
from torch.nn.utils import parametrize

from condense.core.linear_like import linear_like_types, linearize_, restore_, tied_weights
from condense.core.config import check_float, check_int, check_patterns, config, show
from condense.core.transforms import TransformContext, apply_, register_transform
from condense.core.select import select_modules
from condense.errors import ConfigError
from condense.prune.importance import IMPORTANCE, Scores, score

PRUNABLE: tuple[type, ...] = (nn.Linear, nn.Conv2d)


class Scope(str, enum.Enum):
    """Which weights compete: each output row alone (Wanda), each layer alone, or all layers together."""

    ROW = "row"
    LAYER = "layer"
    GLOBAL = "global"


def check_common(cfg: Any, what: str) -> None:
    """Validate the fields pruning configs share (include/exclude, criterion, scope, calibration_batches);
    a scope given as a string becomes a `Scope`."""
    check_patterns(cfg, example="('blocks.*',)")
    if not isinstance(cfg.criterion, str) or cfg.criterion not in IMPORTANCE:
        raise ConfigError(f"{what}.criterion: unknown criterion {show(cfg.criterion)}; choose one of: "
                          f"{', '.join(IMPORTANCE)}")
    if hasattr(cfg, "scope") and not isinstance(cfg.scope, Scope):
        try:
            object.__setattr__(cfg, "scope", Scope(cfg.scope))  # frozen dataclass: normalise once, here
        except (ValueError, TypeError):
            raise ConfigError(f"{what}.scope must be one of {[s.value for s in Scope]}, got {show(cfg.scope)}") \
                from None
    check_int(cfg, "calibration_batches", lo=1, example=8)


@config
class UnstructuredConfig:
    """Zero the least important individual weights, to a sparsity or below a relative threshold.

    Args:
        sparsity: fraction of weights to zero in each comparison group, in [0, 1).
        threshold_alpha: instead of a sparsity, zero weights scoring below alpha * (max score of the group);
            with criterion="magnitude" that is |w| < alpha * max|W|. Give at most one of the two (neither:
            sparsity=0.5).
        scope: "layer" (each layer reaches the sparsity), "row" (each output row does, as Wanda compares) or
            "global" (one threshold over all chosen layers: layers of small weights lose more).
        criterion: importance criterion name (see `condense.prune.importance`): magnitude, l1, l2, taylor, wanda.
        calibration_batches: batches used by data-driven criteria (taylor, wanda).
        include / exclude: module-name patterns (fnmatch) choosing among Linear and Conv2d layers.
        permanent: bake the zeros into the weights and drop the masks (default); False keeps masks so later
            fine-tuning cannot revive pruned weights.

    Example:
        >>> UnstructuredConfig(sparsity=0.5, scope="row").scope.value
        'row'
    """

    sparsity: float | None = None
    threshold_alpha: float | None = None
    scope: Scope = Scope.LAYER
    criterion: str = "magnitude"
    calibration_batches: int = 8
    include: tuple[str, ...] = ("*",)
    exclude: tuple[str, ...] = ()
    permanent: bool = True

    def __post_init__(self) -> None:
        if self.sparsity is not None and self.threshold_alpha is not None:
            raise ConfigError("UnstructuredConfig takes one of sparsity (e.g. 0.5) or threshold_alpha (e.g. 0.1), "
                              f"not both; got sparsity={self.sparsity}, threshold_alpha={self.threshold_alpha}")
        if self.sparsity is None and self.threshold_alpha is None:
            object.__setattr__(self, "sparsity", 0.5)
        if self.sparsity is not None:
            check_sparsity(self.sparsity, "UnstructuredConfig.sparsity")
        # threshold_alpha=0.1 zeroes weights below 10% of the layer's largest
        check_float(self, "threshold_alpha", lo=0, hi=1, hi_open=True, optional=True, example=0.1)
        check_common(self, "UnstructuredConfig")


def check_sparsity(s: float, what: str) -> None:
    if isinstance(s, bool) or not isinstance(s, (int, float)) or not 0 <= s < 1:
        raise ConfigError(f"{what} must be in [0, 1), got {show(s)}; 1.0 would remove every weight, "
                          "e.g. use 0.9 for 90% zeros")


# -- choosing layers --------------------------------------------------------------------------------------------
def select_layers(model: nn.Module, include: tuple[str, ...], exclude: tuple[str, ...], *, what: str,
                  types: tuple[type, ...] = PRUNABLE) -> list[str]:
    """Names of Linear/Conv2d modules matching an `include` pattern and no `exclude` pattern (both checked)."""
    return select_modules(model, types, include, exclude, what=what, verb="prune", strict_exclude=True)


def choose_layers(model: nn.Module, include: tuple[str, ...], exclude: tuple[str, ...], ctx: TransformContext, *,
                  what: str) -> tuple[list[str], dict[str, type]]:
    """The layers a pruner works on, ready to mask: Linear, Conv2d and linear-like ones matching the patterns,
    without tied weights (warned, recorded as "tied_skipped"), linear-like ones turned into `nn.Linear` in place.
    Returns the names and {name: original type} of the converted layers (for `finish`)."""
    types = tuple(dict.fromkeys(PRUNABLE + linear_like_types()))
    names = select_layers(model, include, exclude, what=what, types=types)
    tied = tied_weights(model, names)
    if tied:
        pairs = "; ".join(f"{n} with {', '.join(o)}" for n, o in tied.items())
        if len(tied) == len(names):
            raise ConfigError(f"{what}: every chosen layer shares its weight with another module ({pairs}); pruning "
                              "it would zero the other module's weights too. Untie it first (e.g. "
                              "model.lm_head.weight = nn.Parameter(model.lm_head.weight.clone())) or choose other "
                              "layers")
        warnings.warn(f"{what}: left out {len(tied)} tied layer(s) ({pairs}): pruning a shared weight would zero "
                      "the other module's weights too (recorded in the lineage as tied_skipped); untie them first "
                      "to prune them", stacklevel=3)
        ctx.record(tied_skipped=tied)
        names = [n for n in names if n not in tied]
    return names, linearize_(model, names)


# -- masks from scores (pure: nothing is changed) ---------------------------------------------------------------
def _count(s: float, n: int) -> int:
    return int(math.floor(s * n + 0.5))  # round half up: sparsity 0.5 of 5 weights prunes 3


def _prune_lowest(flat: torch.Tensor, k: int) -> torch.Tensor:
    """Keep-mask (same shape) that drops the `k` lowest entries along the last dim (ties: lower index first)."""
    keep = torch.ones_like(flat, dtype=torch.bool)
    if k > 0:
        idx = torch.argsort(flat, dim=-1, stable=True)[..., :k]
        keep.scatter_(-1, idx, False)
    return keep


def compute_masks(scores: Scores, *, scope: Scope = Scope.LAYER, sparsity: float | None = None,
                  threshold_alpha: float | None = None, prior: dict[str, torch.Tensor] | None = None
                  ) -> dict[str, torch.Tensor]:
    """Keep-masks (bool, shaped like each weight) from importance scores.

    `prior` masks are honoured: weights already pruned stay pruned and count towards the sparsity.

    Example:
        >>> compute_masks({"a": torch.tensor([[4., 1.], [2., 3.]])}, sparsity=0.5)["a"].tolist()
        [[True, False], [False, True]]
    """
    prior = prior or {}
    s = {}
    for n, sc in scores.items():
        sc = sc.detach().float()
        if n in prior:
            sc = torch.where(prior[n], sc, torch.full_like(sc, -1.0))  # below any real score: pruned first
        s[n] = sc
    out: dict[str, torch.Tensor] = {}
    if scope is Scope.GLOBAL:
        flat = torch.cat([v.reshape(-1) for v in s.values()])
        if sparsity is None:
            keep = flat >= threshold_alpha * flat.max()
        else:
            keep = _prune_lowest(flat, _count(sparsity, flat.numel()))
        for n, part in zip(s, keep.split([v.numel() for v in s.values()])):
            out[n] = part.view_as(s[n])
    else:
        for n, v in s.items():
            rows = v.reshape(v.shape[0], -1) if scope is Scope.ROW else v.reshape(1, -1)  # (groups, members)
            if sparsity is None:
                keep = rows >= threshold_alpha * rows.max(dim=1, keepdim=True).values
            else:
                keep = _prune_lowest(rows, _count(sparsity, rows.shape[1]))
            out[n] = keep.view_as(v)
    for n, p in prior.items():
        if n in out:
            out[n] &= p
    return out


# -- applying masks ---------------------------------------------------------------------------------------------
class WeightMask(nn.Module):
    """Parametrization `weight = original * mask`; the bool `mask` buffer is saved with the model."""

    def __init__(self, mask: torch.Tensor):
        super().__init__()
        self.register_buffer("mask", mask.detach().to(torch.bool).clone())

    def forward(self, w: torch.Tensor) -> torch.Tensor:
        return w.masked_fill(~self.mask, 0.0)  # +0.0 (w * mask would give -0.0 for negative w)


def current_mask(module: nn.Module) -> torch.Tensor | None:
    """The module's weight keep-mask if it is masked, else None."""
    p = getattr(module, "parametrizations", None)
    if p is not None and "weight" in p:
        for f in p["weight"]:
            if isinstance(f, WeightMask):
                return f.mask
    return None


def apply_masks(model: nn.Module, masks: dict[str, torch.Tensor]) -> None:
    """Mask each named layer's weight (adding a WeightMask, or narrowing the existing one) and zero the original."""
    for n, keep in masks.items():
        mod = model.get_submodule(n)
        old = current_mask(mod)
        if old is not None:
            old.copy_(old & keep.to(old.device))
        else:
            parametrize.register_parametrization(mod, "weight", WeightMask(keep.to(mod.weight.device)))
        with torch.no_grad():
            orig = mod.parametrizations["weight"].original
            orig.masked_fill_(~current_mask(mod), 0.0)


def masked_layers(model: nn.Module) -> list[str]:
    return [n for n, m in model.named_modules() if current_mask(m) is not None]


def bake_masks(model: nn.Module, layers: list[str] | None = None) -> list[str]:
    """Write masked weights into plain weights and remove the masks (no lineage record), of every masked layer or
    of those of `layers` that are masked; returns the layers baked."""
    names = [n for n in masked_layers(model) if layers is None or n in layers]
    for n in names:
        mod = model.get_submodule(n)
        if not all(isinstance(f, WeightMask) for f in mod.parametrizations["weight"]):
            raise ConfigError(f"layer {n!r} has other parametrizations on its weight besides the pruning mask; "
                              "remove them first (torch.nn.utils.parametrize.remove_parametrizations)")
        parametrize.remove_parametrizations(mod, "weight", leave_parametrized=True)
    return names


@config
class BakeMasksConfig:
    """Make pruning masks permanent: `prune_(model, BakeMasksConfig())` is `make_permanent(model)`.

    Example:
        >>> BakeMasksConfig().to_dict()
        {'type': 'BakeMasksConfig', 'version': 1}
    """


def make_permanent(model: nn.Module) -> nn.Module:
    """Bake every pruning mask into its weight (zeros stay, masks go) and record it, so artifacts round-trip.

    Example:
        >>> from condense.prune import prune_
        >>> net = prune_(nn.Linear(4, 4), UnstructuredConfig(sparsity=0.5, permanent=False))
        >>> hasattr(make_permanent(net), "parametrizations"), int((net.weight == 0).sum())
        (False, 8)
    """
    return apply_(model, BakeMasksConfig())


def _bake_handler(model: nn.Module, cfg: BakeMasksConfig, ctx: TransformContext) -> nn.Module:
    names = bake_masks(model)
    if names:
        ctx.record(layers=names)
    else:
        ctx.skip_record()  # no mask was left: nothing to replay
    return model


def _replay_bake(model: nn.Module, cfg: BakeMasksConfig, details: dict) -> nn.Module:
    bake_masks(model)
    return model


def replay_masks(model: nn.Module, cfg: object, details: dict) -> nn.Module:
    """REPLAY for mask-based pruners: kept masks are re-created (all-keep placeholders that the artifact's saved
    masks then overwrite); baked ones need no new structure, but masks an earlier transform left on the same
    layers were baked too, so they are baked here as well."""
    layers = list(details["layers"])
    if details.get("masked"):
        linearize_(model, list(details.get("linearized", [])))
        apply_masks(model, {n: torch.ones_like(model.get_submodule(n).weight, dtype=torch.bool) for n in layers})
    else:
        bake_masks(model, layers)
    return model


def sparsity_of(model: nn.Module, names: list[str]) -> dict[str, float]:
    """Fraction of zero weights of each named layer (rounded for the lineage)."""
    return {n: round(float((model.get_submodule(n).weight == 0).float().mean()), 6) for n in names}


def finish(model: nn.Module, ctx: TransformContext, names: list[str], *, permanent: bool,
           originals: dict[str, type] | None = None, **details: object) -> nn.Module:
    """Bake (if permanent) and put the layers, masks and sparsity in the transform's lineage details; baked layers
    `choose_layers` converted get their own type back, masked ones stay `nn.Linear` (recorded as "linearized")."""
    if permanent:
        bake_masks(model, names)
        restore_(model, originals or {})
    elif originals:
        details["linearized"] = sorted(originals)
    ctx.record(layers=names, masked=not permanent, sparsity=sparsity_of(model, names), **details)
    return model


def prune_unstructured(model: nn.Module, cfg: UnstructuredConfig, ctx: TransformContext) -> nn.Module:
    """Score, compute every mask, then mask (in place); nothing changes if selection or scoring fails."""
    names, originals = choose_layers(model, cfg.include, cfg.exclude, ctx, what="UnstructuredConfig")
    scores = score(model, names, ctx, criterion=cfg.criterion, batches=cfg.calibration_batches)
    prior = {n: m for n in names if (m := current_mask(model.get_submodule(n))) is not None}
    masks = compute_masks(scores, scope=cfg.scope, sparsity=cfg.sparsity, threshold_alpha=cfg.threshold_alpha,
                          prior=prior)
    apply_masks(model, masks)
    return finish(model, ctx, names, permanent=cfg.permanent, originals=originals)


# -- registered transforms ----------------------------------------------------------------------------------------
register_transform(UnstructuredConfig, family="prune", name="unstructured", replay=replay_masks, search=True)(prune_unstructured)
register_transform(BakeMasksConfig, family="prune", name="bake-masks", replay=_replay_bake, listed=False)(_bake_handler)
