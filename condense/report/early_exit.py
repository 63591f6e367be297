"""The early-exit threshold curve as a chart (the data comes from `condense.early_exit.sweep.sweep_thresholds`)."""
from __future__ import annotations

from typing import Any

from condense.report.pareto import pareto_svg


def curve_svg(curve: dict[str, Any]) -> str:
    """The curve (as `ExitCurve.to_dict()`) as an SVG scatter chart: quality vs mean latency per sample.

    Example:
        >>> p = {"threshold": 0.9, "quality": {"acc": 0.9}, "latency_s": 1e-4}
        >>> curve_svg({"metric": "acc", "baseline": {**p, "threshold": None}, "points": [p], "chosen": p,
        ...            "batch_size": 1}).startswith("<svg")
        True
    """
    m = curve["metric"]
    chosen = (curve.get("chosen") or {}).get("threshold")
    pts = [{"x": curve["baseline"]["latency_s"] * 1e6, "y": curve["baseline"]["quality"][m], "label": "no exit"}]
    pts += [{"x": p["latency_s"] * 1e6, "y": p["quality"][m],
             "label": f"{p['threshold']:g}" + (" (chosen)" if p["threshold"] == chosen else "")}
            for p in curve["points"]]
    return pareto_svg(pts, x="x", y="y", y_dir="max" if curve.get("higher_is_better", True) else "min",
                      title=f"early exit: {m} vs mean latency per sample (batch {curve.get('batch_size', 1)})",
                      x_label="mean latency per sample (us)", y_label=m)
