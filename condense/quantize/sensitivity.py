"""Per-layer sensitivity and mixed precision: measure, don't guess, which layers quantization hurts.

`layer_sensitivity` quantizes one layer at a time (the rest stays float) and evaluates the task: the drop in the
primary metric is that layer's sensitivity. `MixedPrecisionConfig` then keeps the most sensitive layers in higher
precision (float, or a `fallback` config such as 8-bit) and quantizes the rest with `base`, choosing the smallest
set of kept layers whose model meets the quality budget: each candidate is evaluated for real.
"""
from __future__ import annotations

import copy
import dataclasses
from dataclasses import dataclass
from typing import Any

from torch import nn

from condense.core.config import check_float, config, show
from condense.core.transforms import TransformContext, register_transform
from condense.errors import ConfigError, CondenseError
from condense.quantize.api import quantize_


@dataclass(frozen=True)
class LayerSensitivity:
    name: str
    metric: float  # the task's primary metric with only this layer quantized
    drop: float  # quality lost vs the float model, in the metric's "worse" direction (> 0 is worse)


def _layers_of(model: nn.Module, cfg: Any) -> list[str]:
    from condense.core.linear_like import linear_like_types
    from condense.core.select import select_modules

    types = getattr(type(cfg), "LAYER_TYPES", (nn.Linear, nn.Conv2d))  # the layers the base config quantizes
    if nn.Linear in types:  # configs quantizing Linear take linear-like layers (GPT-2's Conv1D) too
        types = tuple(dict.fromkeys(types + linear_like_types()))
    return select_modules(model, types, tuple(getattr(cfg, "include", ("*",))), tuple(getattr(cfg, "exclude", ())),
                          what=type(cfg).__name__)


def _with(cfg: Any, **fields: Any) -> Any:
    names = {f.name for f in dataclasses.fields(cfg)}
    if not {"include", "exclude"} <= names:
        raise ConfigError(f"{type(cfg).__name__} has no include/exclude fields, so it cannot be applied layer by "
                          "layer; use DynamicInt8Config or WeightOnlyConfig as the base")
    return dataclasses.replace(cfg, **fields)


def layer_sensitivity(model: nn.Module, task: Any, cfg: Any) -> tuple[float, list[LayerSensitivity]]:
    """(float metric, per-layer sensitivities sorted most sensitive first) of quantizing each layer alone with `cfg`.

    Example:
        >>> from condense.tasks import get_task
        >>> from condense.quantize.dynamic import DynamicInt8Config
        >>> task = get_task("condense.testing:tiny_task")
        >>> base, sens = layer_sensitivity(task.build_model(), task, DynamicInt8Config())
        >>> [s.name for s in sorted(sens, key=lambda s: s.name)]
        ['fc1', 'fc2']
    """
    if task is None:
        raise CondenseError("sensitivity analysis evaluates the model: pass a task (quantize_(..., task=task))")
    base = task.metrics(model)[task.primary_metric]
    sign = 1.0 if task.higher_is_better else -1.0
    out = []
    for name in _layers_of(model, cfg):
        q = quantize_(copy.deepcopy(model), _with(cfg, include=(name,), exclude=()), task=task)
        m = task.metrics(q)[task.primary_metric]
        out.append(LayerSensitivity(name, m, sign * (base - m)))
    return base, sorted(out, key=lambda s: -s.drop)


@config
class MixedPrecisionConfig:
    """Quantize with `base`, keeping the most sensitive layers in higher precision to stay within `budget`.

    Args:
        base: the quantization config for most layers (needs include/exclude fields).
        fallback: config for the kept layers (e.g. WeightOnlyConfig(bits=8)); None keeps them in float.
        budget: allowed relative loss of the primary metric vs float (0.01 = 1%).

    Example:
        >>> from condense.quantize.dynamic import DynamicInt8Config
        >>> MixedPrecisionConfig(base=DynamicInt8Config(), budget=0.01).to_dict()["base"]["type"]
        'DynamicInt8Config'
    """

    base: Any = None
    fallback: Any = None
    budget: float = 0.01

    def __post_init__(self) -> None:
        for name in ("base", "fallback"):
            v = getattr(self, name)
            if (v is not None or name == "base") and not (hasattr(v, "to_dict") and hasattr(v, "include")
                                                          and hasattr(v, "exclude")):
                raise ConfigError(f"MixedPrecisionConfig needs {name}=<a quantization config with include/exclude "
                                  f"fields>{' or None' if name == 'fallback' else ''}, got {show(v)}; e.g. "
                                  f"{name}=DynamicInt8Config() (in JSON: {{\"type\": \"DynamicInt8Config\"}})")
        check_float(self, "budget", lo=0, hi=1, hi_open=True, example=0.01)  # 0.01 = 1%


def _apply(model: nn.Module, cfg: MixedPrecisionConfig, kept: list[str], ctx: TransformContext) -> nn.Module:
    all_layers = _layers_of(model, cfg.base)
    if len(kept) < len(all_layers):
        model = quantize_(model, _with(cfg.base, exclude=tuple(cfg.base.exclude) + tuple(kept)), task=ctx.task,
                          calibration=ctx.calibration)
    if kept and cfg.fallback is not None:
        model = quantize_(model, _with(cfg.fallback, include=tuple(kept), exclude=()), task=ctx.task,
                          calibration=ctx.calibration)
    return model


def quantize_mixed_precision(model: nn.Module, cfg: MixedPrecisionConfig, ctx: TransformContext) -> nn.Module:
    """Measure per-layer sensitivity, then keep the fewest most-sensitive layers that meet the budget."""
    task = ctx.task
    base_metric, sens = layer_sensitivity(model, task, cfg.base)
    order = [s.name for s in sens]

    def meets(k: int) -> tuple[bool, nn.Module, float]:
        q = _apply(copy.deepcopy(model), cfg, order[:k], ctx)
        m = task.metrics(q)[task.primary_metric]
        return task.within_budget(m, base_metric, cfg.budget), q, m

    lo, hi = 0, len(order)  # smallest k in [lo, hi] that meets the budget (k = all layers kept always does)
    tried: dict[int, float] = {}
    best: nn.Module | None = None
    while lo < hi:
        mid = (lo + hi) // 2
        ok, q, m = meets(mid)
        tried[mid] = m
        if ok:
            hi, best = mid, q
        else:
            lo = mid + 1
    if best is None:
        ok, best, tried[lo] = meets(lo)
    kept = order[:lo]
    ctx.record(kept=kept, float_metric=base_metric,
                             sensitivity=[dataclasses.asdict(s) for s in sens],
                             evaluated={str(k): v for k, v in sorted(tried.items())})
    return best


def _replay(model: nn.Module, cfg: MixedPrecisionConfig, details: dict) -> nn.Module:
    return model  # the base and fallback quantizations it applied are recorded (and replayed) on their own


# -- registered transforms ----------------------------------------------------------------------------------------
register_transform(MixedPrecisionConfig, family="quantize", name="mixed", replay=_replay)(quantize_mixed_precision)
