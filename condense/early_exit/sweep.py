"""Quality vs mean latency per sample over confidence thresholds, and the operating point to use.

Latency per sample is what early exit lowers: each sample is run alone (batch 1), as a request would be, and
the mean over `samples` inputs is taken; rounds interleave every threshold and the model without early exit, so
background load lands on all alike; the median over rounds is reported. Quality is the task's own evaluation with
that threshold. The chosen point is the fastest whose primary metric is within `quality_budget` (metric units)
of the backbone's, among those faster than the backbone (none: `chosen` is None).
"""
from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from typing import Any, Sequence

import numpy as np
import torch

from condense.early_exit.model import EarlyExitModel
from condense.errors import ConfigError


@dataclass
class ExitPoint:
    """One threshold's result (threshold None: the backbone alone, no early exit)."""

    threshold: float | None
    quality: dict[str, float]
    latency_s: float  # mean seconds per sample, batch 1
    exit_fractions: list[float] = field(default_factory=list)  # share of samples leaving at each exit (last: final)
    speedup: float = 1.0  # backbone latency / this latency


@dataclass
class ExitCurve:
    """Every point, the baseline (backbone alone) and the chosen operating point (None if none qualifies)."""

    metric: str
    baseline: ExitPoint
    points: list[ExitPoint]
    chosen: ExitPoint | None
    quality_budget: float
    samples: int
    rounds: int
    batch_size: int = 1
    higher_is_better: bool = True  # of `metric`

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _per_sample_latency(run: Any, xs: list[Any], n: int) -> float:
    t0 = time.perf_counter()
    for x in xs:
        run(x)
    return (time.perf_counter() - t0) / n


def _chunks(batch: Any, n: int, size: int) -> list[Any]:
    if isinstance(batch, torch.Tensor):
        return [batch[i:i + size] for i in range(0, n, size)]
    raise ConfigError("the latency sweep splits a task batch into smaller ones; it needs tensor inputs")


def sweep_thresholds(model: EarlyExitModel, task: Any, thresholds: Sequence[float], *, quality_budget: float = 0.005,
                     samples: int = 128, rounds: int = 5, batch_size: int = 1) -> ExitCurve:
    """Evaluate and time `model` at each threshold and the backbone alone; returns the curve and chosen point.

    Latency is per sample: `samples` inputs run in batches of `batch_size` (default 1, one request at a time).

    Example:
        >>> from condense.testing import tiny_digits_task  # doctest: +SKIP
        >>> curve = sweep_thresholds(model, task, (0.5, 0.9, 0.99))  # doctest: +SKIP
        >>> curve.chosen.threshold  # doctest: +SKIP
        0.9
    """
    if not thresholds:
        raise ConfigError("give at least one threshold to sweep, e.g. (0.5, 0.8, 0.9, 0.95, 0.99)")
    model.eval()
    keep = model.threshold
    xs = _chunks(task.batch(samples), samples, batch_size)
    backbone = model.backbone.eval()
    quality: dict[float | None, dict[str, float]] = {None: task.metrics(backbone)}
    fractions: dict[float, list[float]] = {}
    for t in thresholds:
        model.threshold = t
        quality[t] = task.metrics(model)
        model.exit_counts = [0] * len(model.exit_counts)
        with torch.inference_mode():
            for x in xs:
                task.run_batch(model, x)
        fractions[t] = [c / samples for c in model.exit_counts]
    times: dict[float | None, list[float]] = {k: [] for k in quality}
    with torch.inference_mode():
        for x in xs[:4]:  # warm-up
            task.run_batch(backbone, x)
        for _ in range(rounds):
            times[None].append(_per_sample_latency(lambda x: task.run_batch(backbone, x), xs, samples))
            for t in thresholds:
                model.threshold = t
                times[t].append(_per_sample_latency(lambda x: task.run_batch(model, x), xs, samples))
    model.threshold = keep
    model.exit_counts = [0] * len(model.exit_counts)
    lat = {k: float(np.median(v)) for k, v in times.items()}
    base = ExitPoint(None, quality[None], lat[None])
    points = [ExitPoint(t, quality[t], lat[t], fractions[t], lat[None] / lat[t]) for t in thresholds]
    m, sign = task.primary_metric, (1 if task.higher_is_better else -1)
    ok = [p for p in points if sign * (base.quality[m] - p.quality[m]) <= quality_budget + 1e-12 and p.speedup > 1]
    chosen = min(ok, key=lambda p: p.latency_s) if ok else None
    return ExitCurve(m, base, points, chosen, quality_budget, samples, rounds, batch_size, task.higher_is_better)
