"""Gradual pruning: prune a little, fine-tune, repeat, on the cubic schedule of Zhu & Gupta (2017).

Why: removing 90% of the weights at once loses accuracy that fine-tuning struggles to recover; ramping the
sparsity up fast at first (when many weights are redundant) and slowly near the end lets the network adapt at
each step. The schedule is

    s_t = s_f + (s_i - s_f) * (1 - (t - t0) / (n * dt))**3     for t0 <= t <= t0 + n*dt

and `GradualPruneConfig` prunes at events t = 1..n (t0 = 0, dt = 1), so event n reaches the final sparsity.
Between events the masks (`WeightMask`) are held fixed while the model fine-tunes on the task's loss: pruned
weights stay exactly zero. Afterwards the masks are baked into the weights.

Example:
    >>> round(cubic_sparsity(1, initial=0.0, final=0.9, n=3), 4)
    0.6333
"""
from __future__ import annotations

import copy
import dataclasses
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from condense.core.config import MAX_COUNT, Renamed, check_float, check_nested, config, merged, show
from condense.core.transforms import TransformContext, register_transform
from condense.errors import ConfigError
from condense.prune.importance import score
from condense.prune.unstructured import (Scope, apply_masks, check_common, check_sparsity, compute_masks,
                                         choose_layers, current_mask, finish, replay_masks)
from condense.train.loop import FitConfig, fit


def cubic_sparsity(t: float, *, initial: float = 0.0, final: float, n: int, t0: float = 0.0,
                   dt: float = 1.0) -> float:
    """Zhu & Gupta's sparsity at step `t`: `initial` at t0, `final` from t0 + n*dt on (clamped outside).

    Example:
        >>> cubic_sparsity(0, final=0.8, n=4), cubic_sparsity(4, final=0.8, n=4), cubic_sparsity(9, final=0.8, n=4)
        (0.0, 0.8, 0.8)
    """
    if n < 1 or dt <= 0:
        raise ConfigError(f"the schedule needs n >= 1 pruning steps and dt > 0, got n={n}, dt={dt}")
    frac = min(max((t - t0) / (n * dt), 0.0), 1.0)
    return final + (initial - final) * (1.0 - frac) ** 3


@config
class GradualPruneConfig:
    """Prune to `final_sparsity` over `steps` pruning events, fine-tuning after each, then bake the masks.

    Args:
        final_sparsity: fraction of zero weights at the end, in [0, 1).
        initial_sparsity: the schedule's starting point s_i (event 0, not itself pruned).
        steps: number of pruning events n; event t prunes to `cubic_sparsity(t, ...)`.
        finetune: the fine-tuning run after each event (its seed + the event's number seeds it); None: none.
            Deprecated old names: `finetune_steps_per_event` (finetune.steps; 0: None) and `lr` (finetune.lr).
        criterion, scope, calibration_batches, include, exclude: as in `UnstructuredConfig`.
        distill_from_dense: fine-tune on task loss + T² · KL(teacher ‖ student) at temperature `temperature`,
            the teacher being the model as it was before pruning.

    Example:
        >>> GradualPruneConfig(final_sparsity=0.9, steps=5).scope.value
        'layer'
    """

    final_sparsity: float = 0.9
    initial_sparsity: float = 0.0
    steps: int = 10
    finetune: FitConfig | None = FitConfig(steps=50)
    criterion: str = "magnitude"
    scope: Scope = Scope.LAYER
    calibration_batches: int = 8
    include: tuple[str, ...] = ("*",)
    exclude: tuple[str, ...] = ()
    distill_from_dense: bool = False
    temperature: float = 2.0
    renamed = (
        Renamed("finetune_steps_per_event", "finetune",
                convert=lambda steps, ft: None if steps == 0 else merged(ft or {}, steps=steps),
                read=lambda cfg: cfg.finetune.steps if cfg.finetune is not None else 0,
                path="finetune.steps (0: finetune=None)"),
        Renamed("lr", "finetune", convert=lambda lr, ft: merged(ft, lr=lr),
                read=lambda cfg: (cfg.finetune or FitConfig()).lr, path="finetune.lr"),
    )

    def __post_init__(self) -> None:
        check_sparsity(self.final_sparsity, "GradualPruneConfig.final_sparsity")
        check_sparsity(self.initial_sparsity, "GradualPruneConfig.initial_sparsity")
        if self.initial_sparsity > self.final_sparsity:
            raise ConfigError(f"GradualPruneConfig.initial_sparsity ({self.initial_sparsity}) must not exceed "
                              f"final_sparsity ({self.final_sparsity})")
        if isinstance(self.steps, bool) or not isinstance(self.steps, int) or not 1 <= self.steps <= 100_000:
            raise ConfigError(f"GradualPruneConfig.steps (pruning events) must be an integer >= 1 (at most 100000), "
                              f"got {show(self.steps)}; e.g. steps=10")
        check_nested(self, "finetune", FitConfig, optional=True)
        if self.finetune is not None and self.steps * self.finetune.steps > MAX_COUNT:
            raise ConfigError(f"GradualPruneConfig: steps x finetune.steps = {self.steps * self.finetune.steps} "
                              f"fine-tuning steps in all, more than {MAX_COUNT}; e.g. steps=10, "
                              'finetune={"steps": 50}')
        check_float(self, "temperature", lo=0, lo_open=True, example=2.0)
        check_common(self, "GradualPruneConfig")

    def sparsity_at(self, event: int) -> float:
        """Target sparsity after pruning event `event` (1..steps)."""
        return cubic_sparsity(event, initial=self.initial_sparsity, final=self.final_sparsity, n=self.steps)


def _logits(out: Any) -> torch.Tensor:
    return out[0] if isinstance(out, (tuple, list)) else out


def distill_loss(student: torch.Tensor, teacher: torch.Tensor, temperature: float) -> torch.Tensor:
    """T² · KL(softmax(teacher/T) ‖ softmax(student/T)), averaged over every position (Hinton et al. 2015)."""
    v = student.shape[-1]
    s = F.log_softmax(student.reshape(-1, v).float() / temperature, dim=-1)
    t = F.log_softmax(teacher.reshape(-1, v).float() / temperature, dim=-1)
    return F.kl_div(s, t, log_target=True, reduction="batchmean") * temperature ** 2


def _distilling_loss(task: Any, teacher: nn.Module, ctx: TransformContext, temperature: float) -> Any:
    """Task loss plus distillation from `teacher`, reusing the student's forward pass inside `task.loss`."""

    def loss_fn(model: nn.Module, batch: Any) -> torch.Tensor:
        seen: list[torch.Tensor] = []
        h = model.register_forward_hook(lambda m, a, out: seen.append(_logits(out)))
        try:
            hard = task.loss(model, batch)
        finally:
            h.remove()
        x = batch[0] if isinstance(batch, (tuple, list)) else batch
        with torch.no_grad():
            t = _logits(ctx.run_batch(teacher, x))
        return hard + distill_loss(seen[-1], t, temperature)

    return loss_fn


def prune_gradually(model: nn.Module, cfg: GradualPruneConfig, ctx: TransformContext) -> nn.Module:
    """Alternate pruning to the scheduled sparsity and fine-tuning with masks fixed; then bake the masks."""
    task = ctx.task
    tune = cfg.finetune if cfg.finetune is not None and cfg.finetune.steps else None
    if tune is not None and (task is None or task.train_data is None or task.loss is None):
        raise ConfigError("GradualPruneConfig fine-tunes between pruning events, which needs a task with "
                          "train_data and loss (digits has them); pass task=..., or set finetune=None")
    names, originals = choose_layers(model, cfg.include, cfg.exclude, ctx, what="GradualPruneConfig")
    teacher = None
    if cfg.distill_from_dense and tune is not None:
        teacher = copy.deepcopy(model).eval()
        for p in teacher.parameters():
            p.requires_grad_(False)
    history = []
    for event in range(1, cfg.steps + 1):
        target = cfg.sparsity_at(event)
        scores = score(model, names, ctx, criterion=cfg.criterion, batches=cfg.calibration_batches)
        prior = {n: m for n in names if (m := current_mask(model.get_submodule(n))) is not None}
        apply_masks(model, compute_masks(scores, scope=cfg.scope, sparsity=target, prior=prior))
        losses: list[float] = []
        if tune is not None:
            fit_cfg = dataclasses.replace(tune, seed=(tune.seed + event) % 2**32)
            what = f"fine-tuning after pruning to {target:.1%} ({event}/{cfg.steps})"
            if teacher is None:
                losses = ctx.finetune(model, fit_cfg, description=what)
            else:
                losses = fit(model, task.train_data, _distilling_loss(task, teacher, ctx, cfg.temperature),
                             fit_cfg, description=what)
        history.append({"event": event, "sparsity": round(target, 6),
                        "final_loss": round(losses[-1], 6) if losses else None})
    return finish(model, ctx, names, permanent=True, originals=originals, history=history)


# -- registered transforms ----------------------------------------------------------------------------------------
register_transform(GradualPruneConfig, family="prune", name="gradual", replay=replay_masks)(prune_gradually)
