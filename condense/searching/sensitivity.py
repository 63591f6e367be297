"""Cheap probes run once before a search so that its trials are not wasted.

Quantization: `condense.quantize.sensitivity.layer_sensitivity` quantizes one layer at a time; a layer whose
quantization alone costs more than the budget is offered to the search as "keep in float".
Pruning: the same idea for structured pruning: each prunable group (heads, FFN width, neurons, channels) loses 30%
of its units alone, without recovery; groups that alone break the (recovery-adjusted) budget are never pruned.
Applicability: each pruning kind and quantization scheme is tried once on a copy; one that fails on this task is
left out of the search space instead of failing trial after trial.
"""
from __future__ import annotations

import copy
import time
from typing import Any

from torch import nn

from condense import progress
from condense.core.transforms import TransformContext, apply_
from condense.searching.knobs import PRUNE, QUANT, Knob, Space, build, distill_choices


PROBE_RATIO = 0.3  # fraction of one group's units removed by the pruning probe


def relative_drop(task: Any, value: float, base: float) -> float:
    """Relative loss of quality (> 0 is worse), in the metric's direction."""
    sign = 1.0 if task.higher_is_better else -1.0
    return sign * (base - value) / max(abs(base), 1e-12)


def _try(model: nn.Module, task: Any, cfg: Any) -> tuple[float | None, str | None]:
    """(metric after applying `cfg` to a copy, None) or (None, why it failed)."""
    try:
        out = apply_(copy.deepcopy(model), cfg, task=task)
        return float(task.metrics(out)[task.primary_metric]), None
    except Exception as e:  # noqa: BLE001  (any failure means: this kind does not apply to this task)
        return None, f"{type(e).__name__}: {str(e)[:200]}"


def prune_probe(model: nn.Module, task: Any, base: float, threshold: float, per_group: bool = True,
                max_groups: int = 32) -> dict[str, Any]:
    """Which pruning kinds apply, and (`per_group`) each structured group's sensitivity."""
    from condense.prune.structured import _graph_for

    out: dict[str, Any] = {"threshold": threshold, "groups": [], "kinds": {}, "exclude": []}
    try:
        groups = [g for g in _graph_for(model, TransformContext(task=task)).groups][:max_groups]
    except Exception as e:  # noqa: BLE001
        groups, out["kinds"]["structured"] = [], f"no prunable groups ({type(e).__name__}: {str(e)[:160]})"
    if not per_group and groups:
        groups = groups[:1]  # only check that structured pruning applies at all
    for g in groups:
        metric, err = _try(model, task, build(PRUNE["structured"], ratio=PROBE_RATIO, include=(g.name,)))
        drop = None if metric is None else relative_drop(task, metric, base)
        out["groups"].append({"name": g.name, "kind": g.kind, "metric": metric, "drop": drop, "error": err})
        if per_group and (drop is None or drop > threshold):
            out["exclude"].append(g.name)
        elif err is not None:
            out["kinds"]["structured"] = err
    if groups and "structured" not in out["kinds"]:
        usable = len(groups) - len(out["exclude"])
        out["kinds"]["structured"] = "ok" if usable else "every group alone breaks the budget"
    metric, err = _try(model, task, build(PRUNE["layer-drop"], n_drop=1))
    drop = None if metric is None else relative_drop(task, metric, base)
    out["layer_drop_1"] = {"metric": metric, "drop": drop, "error": err}
    out["kinds"]["layer-drop"] = err or ("ok" if drop <= max(threshold * 10, 0.1) else
                                         f"dropping one block alone loses {drop:.1%}")
    return out


def quant_probe(model: nn.Module, task: Any, base: float, threshold: float, per_layer: bool,
                max_probes: int = 12) -> dict[str, Any]:
    """Which schemes apply, and per-layer int8 sensitivity (dynamic int8, one layer at a time)."""
    out: dict[str, Any] = {"threshold": threshold, "layers": [], "kinds": {}, "exclude": []}
    for scheme, path in QUANT.items():
        metric, err = _try(model, task, build(path))
        out["kinds"][scheme] = err or "ok"
        out[f"{scheme}_metric"] = metric
    if out["kinds"].get("ort") == "ok":
        metric, err = _try(model, task, build(QUANT["ort"], float_channels=4))
        out["ort_outliers"] = err is None
    if per_layer and out["kinds"].get("dynamic") == "ok":
        from condense.quantize.sensitivity import _layers_of, layer_sensitivity

        candidates = _layers_of(model, build(QUANT["dynamic"]))
        modules = dict(model.named_modules())
        layers = [n for n in candidates if isinstance(modules[n], nn.Linear)]  # what dynamic int8 quantizes
        if len(layers) == len(candidates) and len(layers) <= max_probes:
            _, sens = layer_sensitivity(model, task, build(QUANT["dynamic"]))
            probes = [(s.name, [s.name], s.metric) for s in sens]
        else:  # one layer, or with many layers one group (by name prefix, e.g. a block) at a time
            probes = []
            groups = ({n: [n] for n in layers} if len(layers) <= max_probes
                      else {p + ".*": v for p, v in group_by_prefix(layers, max_probes).items()})
            for name, names in groups.items():
                metric, err = _try(model, task, build(QUANT["dynamic"], include=tuple(names)))
                probes.append((name, names, metric if err is None else None))
        for name, names, metric in probes:
            drop = None if metric is None else relative_drop(task, metric, base)
            out["layers"].append({"name": name, "metric": metric, "drop": drop})
            if drop is None or drop > threshold:
                out["exclude"].extend(names)
    return out


def group_by_prefix(names: list[str], max_groups: int) -> dict[str, list[str]]:
    """Group dotted module names by their longest prefix that still gives at most `max_groups` groups.

    Example:
        >>> group_by_prefix(["l.0.q", "l.0.k", "l.1.q", "l.1.k", "head"], 3)
        {'l.0': ['l.0.q', 'l.0.k'], 'l.1': ['l.1.q', 'l.1.k'], 'head': ['head']}
    """
    best: dict[str, list[str]] = {"": list(names)}
    for depth in range(1, max((n.count(".") for n in names), default=0) + 2):
        groups: dict[str, list[str]] = {}
        for n in names:
            groups.setdefault(".".join(n.split(".")[:depth]), []).append(n)
        if len(groups) > max_groups:
            break
        best = groups
    return best


def probe(model: nn.Module, task: Any, cfg: Any, knobs: list[Knob], base: float) -> tuple[Space, dict[str, Any]]:
    """Run the probes the chosen knobs need; returns the search space and the record for the report."""
    t0 = time.perf_counter()
    names = {k.name for k in knobs}
    record: dict[str, Any] = {"baseline_metric": base}
    space = Space(cfg=cfg, max_prune_ratio=cfg.max_prune_ratio)
    if "distill" in names:  # student sizes: only those with fewer blocks than the model (the knob checked some exist)
        space.extra["distill_layers"] = distill_choices(model, cfg)
    # With recovery training a pruned group wins back part of its loss: allow it more before excluding it.
    prune_threshold = cfg.budget * (4 if cfg.finetune is not None and cfg.finetune.steps > 0 else 1)
    with progress.steps("sensitivity probes", 2) as bar:
        if "prune" in names:
            bar.start("pruning")
            progress.note("probing pruning: which kinds apply" + (", each group's sensitivity" if cfg.sensitivity
                                                                   else ""))
            p = prune_probe(model, task, base, prune_threshold, per_group=cfg.sensitivity,
                            max_groups=cfg.max_probes)
            record["prune"] = p
            space.prune_kinds = tuple(k for k, v in p["kinds"].items() if v == "ok")
            space.prune_exclude = tuple(p["exclude"])
        bar.advance()
        if "quantize" in names:
            bar.start("quantization")
            progress.note("probing quantization: which schemes apply" + (", per-layer sensitivity"
                                                                           if cfg.sensitivity else ""))
            q = quant_probe(model, task, base, cfg.budget, cfg.sensitivity, cfg.max_probes)
            record["quantize"] = q
            space.quant_schemes = tuple(k for k, v in q["kinds"].items() if v == "ok")
            space.quant_exclude = tuple(q["exclude"])
            space.extra["ort_outliers"] = bool(q.get("ort_outliers"))
        bar.advance()
    record["wall_s"] = time.perf_counter() - t0
    return space, record


def space_to_dict(space: Space) -> dict[str, Any]:
    return {"prune_kinds": list(space.prune_kinds), "quant_schemes": list(space.quant_schemes),
            "prune_exclude": list(space.prune_exclude), "quant_exclude": list(space.quant_exclude),
            "max_prune_ratio": space.max_prune_ratio, "max_layer_drop": space.max_layer_drop, "extra": space.extra}


def space_from_dict(cfg: Any, d: dict[str, Any]) -> Space:
    return Space(cfg=cfg, prune_kinds=tuple(d["prune_kinds"]), quant_schemes=tuple(d["quant_schemes"]),
                 prune_exclude=tuple(d["prune_exclude"]), quant_exclude=tuple(d["quant_exclude"]),
                 max_prune_ratio=d["max_prune_ratio"], max_layer_drop=d["max_layer_drop"], extra=dict(d["extra"]))
