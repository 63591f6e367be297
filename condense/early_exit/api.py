"""`early_exit_(model, EarlyExitConfig(...))`: attach exit heads, train them, and stop early at inference.

Heads train on the task's labelled data (`train_data`), by default on a frozen backbone (`mode="frozen"`: the
model's own predictions stay exactly as they were, only the added exits learn); `mode="joint"` trains heads and
backbone together on the sum of every exit's loss. With `thresholds` set, the pipeline step sweeps them (see
`condense.early_exit.sweep`), keeps the fastest whose quality stays within `quality_budget` of the model
without early exit, and records the whole curve in the artifact's lineage.

Example:
    >>> from condense.tasks.digits import DigitsCNN
    >>> m = early_exit_(DigitsCNN((8, 16, 32)), EarlyExitConfig(finetune=FitConfig(steps=2)),
    ...                 data=[(torch.randn(4, 1, 8, 8), torch.tensor([0, 1, 2, 3]))])
    >>> len(m.heads)
    2
"""
from __future__ import annotations

from typing import Any, Callable, Iterable

import torch
import torch.nn.functional as F
from torch import nn

from condense.core.config import MAX_COUNT, Renamed, check_choice, check_float, check_nested, config, show
from condense.core.transforms import TransformContext, apply_, register_family, register_transform
from condense.early_exit.model import CRITERIA, EarlyExitModel, with_exits
from condense.errors import ConfigError
from condense.train.loop import FitConfig, fit

MODES = ("frozen", "joint")


@config
class EarlyExitConfig:
    """Exit heads, how to train them, and when a sample may leave.

    Args:
        threshold: a sample leaves at the first exit whose confidence is above this, in [0, 1] (0: always the
            first exit; 1: never early).
        criterion: "max_prob" (largest softmax probability) or "entropy" (1 - normalised entropy).
        finetune: training of the heads (and, with mode="joint", of the backbone); `fit` is its deprecated old
            name.
        mode: "frozen" (only the heads learn; the model's own output is unchanged) or "joint".
        exits: stage indices that get a head (digits: 0, 1; tinygpt: 0..n_layer-2); None: all of them.
        thresholds: if given, the pipeline step sweeps these and keeps the fastest within `quality_budget`.
        quality_budget: largest drop of the task's primary metric accepted when choosing (metric units).

    Example:
        >>> EarlyExitConfig(threshold=0.95, criterion="entropy").mode
        'frozen'
    """

    threshold: float = 0.9
    criterion: str = "max_prob"
    finetune: FitConfig = FitConfig(steps=300, lr=3e-3, schedule="cosine")
    mode: str = "frozen"
    exits: tuple[int, ...] | None = None
    thresholds: tuple[float, ...] = ()
    quality_budget: float = 0.005
    renamed = (Renamed("fit", "finetune"),)

    def __post_init__(self) -> None:
        check_nested(self, "finetune", FitConfig)
        for name in ("exits", "thresholds"):
            if isinstance(getattr(self, name), list):
                object.__setattr__(self, name, tuple(getattr(self, name)))
        if not isinstance(self.thresholds, tuple):
            raise ConfigError(f"EarlyExitConfig.thresholds must be a list of confidences in [0, 1], got "
                              f"{show(self.thresholds)}; e.g. thresholds=(0.8, 0.9)")
        for t in (self.threshold, *self.thresholds):
            if isinstance(t, bool) or not isinstance(t, (int, float)) or not 0 <= t <= 1:
                raise ConfigError(f"EarlyExitConfig thresholds are confidences in [0, 1], got {show(t)}; "
                                  "e.g. threshold=0.9")
        check_choice(self, "criterion", CRITERIA, example="max_prob")
        check_choice(self, "mode", MODES, example="frozen")
        if self.exits is not None and (not isinstance(self.exits, tuple) or not self.exits or any(
                isinstance(i, bool) or not isinstance(i, int) or not 0 <= i <= MAX_COUNT for i in self.exits)):
            raise ConfigError(f"EarlyExitConfig.exits must be non-negative stage indices (or None for all), got "
                              f"{show(self.exits)}; e.g. exits=(0, 1)")
        check_float(self, "quality_budget", lo=0, example=0.005)  # metric units


def exit_loss(model: EarlyExitModel, batch: tuple[torch.Tensor, torch.Tensor], *, frozen: bool) -> torch.Tensor:
    """Mean cross-entropy over the exits (with the final head too unless `frozen`) on one (x, y) batch."""
    x, y = batch
    if frozen:
        model.backbone.eval()  # frozen means frozen: no batch-norm statistics drift either (fit set train mode)
    outs = model.all_exits(x, frozen=frozen)
    if frozen:
        outs = outs[:-1]
    return sum(F.cross_entropy(o.reshape(-1, o.shape[-1]).float(), y.reshape(-1)) for o in outs) / len(outs)


def early_exit_(model: nn.Module, config: EarlyExitConfig, *, task: Any = None,
                data: Callable[[], Iterable[Any]] | Iterable[Any] | None = None) -> EarlyExitModel:
    """Attach exit heads to `model` and train them; returns the `EarlyExitModel` (it owns `model`).

    Args:
        task: supplies labelled `train_data` (digits, tinygpt) when `data` is not given.
        data: labelled `(x, y)` batches (an iterable or a zero-argument callable).
    """
    return apply_(model, config, task=task, data=data, family="early-exit")


def _attach(model: nn.Module, config: EarlyExitConfig, ctx: TransformContext) -> EarlyExitModel:
    """Wrap `model` with exit heads (or reuse its wrapper) and train them on the context's labelled data."""
    if ctx.data is None and (ctx.task is None or ctx.task.train_data is None):
        raise ConfigError("early exit trains its heads on labelled data: pass data=[(x, y), ...] or a task "
                          "with train_data (digits, tinygpt)")
    data = ctx.training_data()
    wrapped = model if isinstance(model, EarlyExitModel) else with_exits(model, config.exits, config.threshold,
                                                                          config.criterion)
    wrapped.threshold, wrapped.criterion = config.threshold, config.criterion
    frozen = config.mode == "frozen"
    params = wrapped.heads.parameters() if frozen else wrapped.parameters()
    if config.finetune.steps:
        fit(wrapped, data, lambda m, b: exit_loss(m, b, frozen=frozen), config.finetune, params=params,
            description="training exit heads")
    return wrapped.eval()


def _early_exit_step(model: nn.Module, cfg: EarlyExitConfig, ctx: TransformContext) -> nn.Module:
    from condense.early_exit.sweep import sweep_thresholds

    wrapped = _attach(model, cfg, ctx)
    details: dict[str, Any] = {"exits": list(wrapped.exits), "threshold": cfg.threshold}
    if cfg.thresholds:
        if ctx.task is None:
            raise ConfigError("EarlyExitConfig.thresholds picks a threshold by measuring the task's quality: pass "
                              "task=..., or set one threshold (threshold=0.9, thresholds=())")
        curve = sweep_thresholds(wrapped, ctx.task, cfg.thresholds, quality_budget=cfg.quality_budget)
        if curve.chosen is not None:
            wrapped.threshold = curve.chosen.threshold
        details.update(threshold=wrapped.threshold, curve=curve.to_dict())
    ctx.record(**details)
    wrapped.exit_counts = [0] * len(wrapped.exit_counts)
    return wrapped


def _replay(model: nn.Module, cfg: EarlyExitConfig, details: dict) -> nn.Module:
    exits = tuple(details.get("exits") or ()) or cfg.exits
    return with_exits(model, exits, float(details.get("threshold", cfg.threshold)), cfg.criterion)


# -- registered transforms ----------------------------------------------------------------------------------------
register_family("early-exit", default="confidence", noun="early-exit config")
register_transform(EarlyExitConfig, family="early-exit", name="confidence", replay=_replay, search=True)(_early_exit_step)
