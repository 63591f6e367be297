"""Schedules: how the learning rate and the batch size change with the step. Pure functions of (step, config).

Kept apart from the loop so that a schedule is data (a name + numbers in the config) and a checkpoint only needs
the step to restore it. LR schedules return a multiplier of the base LR; batch-size schedules return how many of
the data's batches make one optimizer step (their gradients are averaged, so the effective batch grows).
"""
from __future__ import annotations

import math
from typing import Any, Callable

from condense.core.registry import Registry

# name -> fn(t, step, span, cfg) -> factor, after warm-up. t = progress in [0, 1]; step counts from warm-up's end.
LR_SCHEDULES: Registry[Callable[[float, int, int, Any], float]] = Registry("LR schedule")


@LR_SCHEDULES.register("constant")
def _constant(t: float, step: int, span: int, cfg: Any) -> float:
    return 1.0


@LR_SCHEDULES.register("cosine")
def _cosine(t: float, step: int, span: int, cfg: Any) -> float:
    lo = cfg.min_lr_ratio
    return lo + (1 - lo) * 0.5 * (1 + math.cos(math.pi * t))


@LR_SCHEDULES.register("linear")
def _linear(t: float, step: int, span: int, cfg: Any) -> float:
    return 1.0 - (1 - cfg.min_lr_ratio) * t


@LR_SCHEDULES.register("step")
def _step(t: float, step: int, span: int, cfg: Any) -> float:
    return cfg.lr_gamma ** (step // max(cfg.lr_step_size, 1))


@LR_SCHEDULES.register("exponential")
def _exponential(t: float, step: int, span: int, cfg: Any) -> float:
    return cfg.lr_gamma ** step


@LR_SCHEDULES.register("onecycle")
def _onecycle(t: float, step: int, span: int, cfg: Any) -> float:
    """Up from 1/25 to 1 over the first 30% (cosine), then cosine down to min_lr_ratio (Smith's one-cycle)."""
    pct, start = 0.3, 1 / 25
    if t < pct:
        return start + (1 - start) * 0.5 * (1 - math.cos(math.pi * t / pct))
    u = (t - pct) / (1 - pct)
    return cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * u))


def lr_factor(step: int, cfg: Any) -> float:
    """Multiplier of the base LR at `step` (0-based): linear warm-up, then the schedule, clipped to
    [min_lr_ratio, max_lr_ratio] (the warm-up ramp itself is not clipped).

    Example:
        >>> from condense.train.loop import FitConfig
        >>> cfg = FitConfig(steps=10, warmup_steps=2, schedule="cosine")
        >>> lr_factor(0, cfg), lr_factor(9, cfg) > 0.1
        (0.5, True)
    """
    if cfg.warmup_steps and step < cfg.warmup_steps:
        return (step + 1) / cfg.warmup_steps
    span = max(cfg.steps - cfg.warmup_steps, 1)
    after = max(step - cfg.warmup_steps, 0)
    t = min(after / span, 1.0)
    f = LR_SCHEDULES.get(cfg.schedule)(t, after, span, cfg)
    if cfg.schedule == "constant":
        return f
    return min(max(f, cfg.min_lr_ratio), cfg.max_lr_ratio)


# name -> fn(step, cfg) -> how many data batches make optimizer step `step` (before the cap batch_max).
BATCH_SCHEDULES: Registry[Callable[[int, Any], float]] = Registry("batch-size schedule")


@BATCH_SCHEDULES.register("constant")
def _b_constant(step: int, cfg: Any) -> float:
    return 1


@BATCH_SCHEDULES.register("step")
def _b_step(step: int, cfg: Any) -> float:
    return cfg.batch_growth ** (step // max(cfg.batch_every, 1))


@BATCH_SCHEDULES.register("exponential")
def _b_exponential(step: int, cfg: Any) -> float:
    return cfg.batch_growth ** (step / max(cfg.batch_every, 1))


def batches_per_step(step: int, cfg: Any) -> int:
    """How many of the data's batches optimizer step `step` averages (batch-size schedule x grad_accum).

    Example:
        >>> from condense.train.loop import FitConfig
        >>> cfg = FitConfig(steps=9, batch_schedule="step", batch_every=3, batch_growth=2, batch_max=4)
        >>> [batches_per_step(s, cfg) for s in range(9)]
        [1, 1, 1, 2, 2, 2, 4, 4, 4]
    """
    try:
        k = min(BATCH_SCHEDULES.get(cfg.batch_schedule)(step, cfg), cfg.batch_max)
    except OverflowError:  # growth ** (a late step) is past any float: the cap applies
        k = cfg.batch_max
    return max(1, min(int(round(k)), cfg.batch_max)) * cfg.grad_accum


def max_batches_per_step(cfg: Any) -> int:
    """The largest `batches_per_step` over the run (schedules here never shrink)."""
    return batches_per_step(max(cfg.steps - 1, 0), cfg)
