"""`factorize_(model, FactorizeConfig(...))`: replace Linear / Conv2d layers by two thinner ones (truncated SVD).

Rank per layer comes from a parameter budget (`rank_ratio`), a kept-energy threshold (`energy`) or a fixed `rank`.
With `activation_aware=True` the factors minimise the error of the layer's outputs on calibration data instead of
the weight error (see `condense.factorize.svd`). The ranks go to the lineage, so `condense.load` rebuilds the
factorized architecture before loading the tensors.

Linear-like layers (GPT-2's Conv1D, see `condense.core.linear_like`) are factorized as the Linear they are. Tied
layers (an lm_head sharing the token embedding's weight) are left out, with a warning and the lineage entry
"tied_skipped": factorizing one would untie it and add its two factors beside the embedding that still holds
the full matrix, so the model would grow.

Example:
    >>> import torch
    >>> from torch import nn
    >>> net = nn.Sequential(nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 2))
    >>> type(factorize_(net, FactorizeConfig(rank_ratio=0.5, include=("0",)))[0]).__name__
    'LowRankLinear'
"""
from __future__ import annotations

from typing import Any, Callable

import warnings

import torch
from torch import nn

from condense.core import lineage
from condense.core.config import check_float, check_int, check_nested, check_patterns, check_positive_int, \
    config
from condense.core.hooks import run_with_hooks
from condense.core.linear_like import linear_like_types, linearize_, restore_, tied_weights
from condense.core.transforms import TransformContext, register_family, apply_, register_transform
from condense.errors import ConfigError
from condense.factorize.svd import factor, factorized, layer_inputs, low_rank_module, max_rank, rank_for_ratio, \
    weight_matrix
from condense.core.select import select_modules
from condense.train.loop import FitConfig

LAYER_TYPES = (nn.Linear, nn.Conv2d)


@config
class FactorizeConfig:
    """Which layers to factorize and at what rank.

    Args:
        rank_ratio: fraction of each layer's weights its two factors keep, in (0, 1] (0.5 = half the parameters);
            the default (0.5) when neither `energy` nor `rank` is given.
        energy: instead, keep the smallest rank holding this fraction of the squared singular values, in (0, 1];
            layers where that rank would not save parameters stay dense.
        activation_aware: whiten with the calibration inputs' X^T X (SVD-LLM) so the outputs' error is minimised.
        include / exclude: module-name patterns (fnmatch) of the Linear / Conv2d layers to factorize.
        rank: instead, one fixed rank for every selected layer (an error if larger than a matrix allows).
        calibration_batches: batches used to collect X^T X when `activation_aware`.
        damp: added to X^T X's diagonal, as a fraction of its mean, so it is invertible.
        finetune: optional training afterwards on the task's data and loss.

    Example:
        >>> FactorizeConfig(energy=0.9, activation_aware=True).rank_ratio is None
        True
    """

    rank_ratio: float | None = None
    energy: float | None = None
    activation_aware: bool = False
    include: tuple[str, ...] = ("*",)
    exclude: tuple[str, ...] = ()
    rank: int | None = None
    calibration_batches: int = 8
    damp: float = 0.01
    finetune: FitConfig | None = None

    def __post_init__(self) -> None:
        given = [n for n in ("rank_ratio", "energy", "rank") if getattr(self, n) is not None]
        if len(given) > 1:
            raise ConfigError(f"FactorizeConfig: give one of rank_ratio, energy or rank, not {' and '.join(given)}; "
                              "e.g. rank_ratio=0.5")
        if not given:
            object.__setattr__(self, "rank_ratio", 0.5)
        for name in ("rank_ratio", "energy"):
            check_float(self, name, lo=0, hi=1, lo_open=True, optional=True, example=0.5)
        check_int(self, "rank", lo=1, optional=True, example=64)
        check_patterns(self, example="('*.mlp.*',)")
        check_nested(self, "finetune", FitConfig, optional=True)
        check_positive_int(self, "calibration_batches", example=8)
        check_float(self, "damp", lo=0, example=0.01)


def input_grams(model: nn.Module, names: list[str], batches: list[Any], run: Callable[[nn.Module, Any], Any]
                ) -> dict[str, torch.Tensor]:
    """X^T X (float64) of each named layer's inputs over the calibration batches (one pass, hooks)."""
    modules = dict(model.named_modules())
    grams: dict[str, torch.Tensor] = {}

    def hook(name: str) -> Callable:
        def pre(m: nn.Module, args: tuple) -> None:
            z = layer_inputs(m, args[0].detach()).float()  # (rows, in)
            grams[name] = grams.get(name, 0) + (z.T @ z).double().cpu()  # sums in float64
        return pre

    handles = [modules[n].register_forward_pre_hook(hook(n)) for n in names]
    run_with_hooks(model, batches, run, handles)
    missing = [n for n in names if n not in grams]
    if missing:
        raise ConfigError(f"layers {missing[:4]} never ran on the calibration data, so they cannot be factorized "
                          "activation-aware; exclude them")
    return grams


def _set_module(model: nn.Module, name: str, new: nn.Module) -> nn.Module:
    if not name:
        lineage.copy_lineage(model, new)
        return new
    parent_name, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent_name) if parent_name else model, child, new)
    return model


def plan_ranks(model: nn.Module, cfg: FactorizeConfig, ctx: TransformContext | None = None) -> list[str]:
    """The selected layer names, tied ones left out (warned and recorded in `ctx` when given); raises before
    anything changes if a fixed rank is too large or only tied layers are chosen."""
    types = tuple(dict.fromkeys(LAYER_TYPES + linear_like_types()))
    names = select_modules(model, types, cfg.include, cfg.exclude, what="FactorizeConfig", verb="factorize")
    tied = tied_weights(model, names)
    if tied:
        pairs = "; ".join(f"{n} with {', '.join(o)}" for n, o in tied.items())
        if len(tied) == len(names):
            raise ConfigError(f"FactorizeConfig: every chosen layer shares its weight with another module ({pairs}); "
                              "factorizing it would untie it and grow the model; choose other layers")
        names = [n for n in names if n not in tied]
        if ctx is not None:
            warnings.warn(f"FactorizeConfig: left out {len(tied)} tied layer(s) ({pairs}): factorizing a shared "
                          "weight unties it and grows the model (recorded in the lineage as tied_skipped)",
                          stacklevel=3)
            ctx.record(tied_skipped=tied)
    modules = dict(model.named_modules())
    if cfg.rank is not None:
        for n in names:
            if cfg.rank > max_rank(modules[n]):
                w = modules[n].weight
                raise ConfigError(f"rank {cfg.rank} is larger than layer {n or 'model'}'s {w.shape[0]}x"
                                  f"{w[0].numel()} weight matrix allows (at most {max_rank(modules[n])}); lower rank, "
                                  "use rank_ratio/energy, or exclude the layer")
    return names


def factorize_(model: nn.Module, config: FactorizeConfig, *, task: Any = None, calibration: Any = None) -> nn.Module:
    """Factorize the selected layers of `model` in place (returns the model; a bare layer is returned replaced).

    Args:
        task: gives calibration data (activation-aware) and the data and loss for `finetune`.
        calibration: explicit calibration batches (overrides the task's).

    Example:
        >>> lin = nn.Linear(8, 6)
        >>> x = torch.randn(4, 8)
        >>> bool(torch.allclose(factorize_(lin, FactorizeConfig(rank=6))(x), lin(x), atol=1e-5))
        True
    """
    return apply_(model, config, task=task, calibration=calibration, family="factorize")


def _factorize(model: nn.Module, cfg: FactorizeConfig, ctx: TransformContext) -> nn.Module:
    names = plan_ranks(model, cfg, ctx)
    originals = linearize_(model, names)  # Conv1D -> nn.Linear; the ones left dense get their type back below
    modules = dict(model.named_modules())
    grams: dict[str, torch.Tensor] = {}
    if cfg.activation_aware:
        batches = ctx.calibration_batches(cfg.calibration_batches, what="FactorizeConfig(activation_aware=True)")
        grams = input_grams(model, names, batches, ctx.run_batch)
    ranks: dict[str, int] = {}
    for n in names:
        layer = modules[n]
        w = weight_matrix(layer)  # (out, in)
        rank = cfg.rank if cfg.rank is not None else (rank_for_ratio(layer, cfg.rank_ratio) if cfg.rank_ratio
                                                      else None)
        a, b = factor(w, rank=rank, energy=cfg.energy, gram=grams.get(n), damp=cfg.damp)
        r = a.shape[1]
        if cfg.energy is not None and r * sum(w.shape) >= w.numel():
            continue  # this rank would not save anything: keep the layer dense
        model = _set_module(model, n, factorized(layer, a, b))
        ranks[n] = r
    restore_(model, {n: t for n, t in originals.items() if n not in ranks})
    ctx.record(ranks=ranks)
    if cfg.finetune is not None and cfg.finetune.steps:
        ctx.finetune(model, cfg.finetune, description="fine-tuning after factorization")
        model.eval()
    return model


def _replay(model: nn.Module, cfg: FactorizeConfig, details: dict) -> nn.Module:
    linearize_(model, list(details.get("ranks", {})))
    for n, r in details.get("ranks", {}).items():
        layer = model.get_submodule(n) if n else model
        model = _set_module(model, n, low_rank_module(layer, int(r)))
    return model


# -- registered transforms ----------------------------------------------------------------------------------------
register_family("factorize", default="svd", noun="factorization config")
register_transform(FactorizeConfig, family="factorize", name="svd", replay=_replay, search=True)(_factorize)
