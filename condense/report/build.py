"""Turn a run's measurements into a report: what each step bought (speed, size) and cost (quality).

A step that made the model smaller but not faster is said so plainly.
"""
from __future__ import annotations

import datetime as _dt
from typing import Any

from condense.measurement.api import Measurement

# A step must beat its predecessor by this much to count as "faster" (timing noise on a busy 2-core machine).
FASTER = 1.05
SMALLER = 0.95


def _ratio(a: float | None, b: float | None) -> float | None:
    return None if not a or not b else a / b


def step_verdicts(prev: Measurement, cur: Measurement) -> dict[str, Any]:
    """Speedups (>1 is faster), size ratio (<1 is smaller), quality change, and plain-language warnings."""
    speedups = {bs: _ratio(prev.p50(int(bs)), cur.p50(int(bs))) for bs in cur.latency if bs in prev.latency}
    # generative tasks: decode tokens/s (higher is faster) is a speed of its own beside the forward's latency
    decode = {bs: _ratio(cur.tokens_per_s[bs], prev.tokens_per_s[bs]) for bs in cur.tokens_per_s
              if bs in prev.tokens_per_s}
    size_ratio = _ratio(cur.size_bytes, prev.size_bytes)
    quality_delta = {k: cur.quality[k] - prev.quality[k] for k in cur.quality if k in prev.quality}
    warnings: list[str] = []
    faster_any = any(s is not None and s >= FASTER for s in (*speedups.values(), *decode.values()))
    if size_ratio is not None and size_ratio <= SMALLER and not faster_any and speedups:
        warnings.append(f"{cur.label}: smaller ({size_ratio:.2f}x the size) but not faster "
                        f"(speedups {', '.join(f'batch {b}: {s:.2f}x' for b, s in speedups.items())})")
    for bs, s in speedups.items():
        if s is not None and s < 1 / FASTER:
            d = decode.get(bs)
            also = f"; decode tokens/s {d:.2f}x" if d is not None else ""
            warnings.append(f"{cur.label}: slower than {prev.label} at batch {bs} ({s:.2f}x{also})")
    for bs, d in decode.items():
        if d is not None and d < 1 / FASTER:
            warnings.append(f"{cur.label}: decodes slower than {prev.label} at batch {bs} ({d:.2f}x tokens/s)")
    out = {"speedup": speedups, "size_ratio": size_ratio, "quality_delta": quality_delta, "warnings": warnings}
    if decode:
        out["decode_speedup"] = decode
    return out


def find_sensitivity(steps: list[dict[str, Any]]) -> dict[str, Any] | None:
    """Per-layer sensitivity recorded by a step (e.g. MixedPrecisionConfig's details), or None.

    Returns {"step": label, "layers": [{"name", "metric", "drop"}, ...]} (most sensitive first).
    """
    for st in steps:
        for d in st.get("details") or []:
            if isinstance(d, dict) and isinstance(d.get("sensitivity"), list) and d["sensitivity"]:
                return {"step": st["label"], "float_metric": d.get("float_metric"), "layers": d["sensitivity"]}
    return None


def build_report(name: str, task_name: str, steps: list[dict[str, Any]], *, baseline: int = 0,
                 sensitivity: dict[str, Any] | None = None) -> dict[str, Any]:
    """The report dict written as report.json.

    Args:
        steps: [{"label", "transforms": [config dicts], "measurement": Measurement, "artifact": path | None,
            "details": [JSON-able details each transform recorded] (optional)}]
        sensitivity: {"layers": [{"name", "drop", ...}], ...} to chart; default: found in the steps' details.
    """
    base: Measurement = steps[baseline]["measurement"]
    out_steps = []
    warnings: list[str] = []
    for i, st in enumerate(steps):
        m: Measurement = st["measurement"]
        entry = {"label": st["label"], "transforms": st.get("transforms", []), "artifact": st.get("artifact"),
                 "measurement": m.to_dict()}
        if st.get("details"):
            entry["details"] = st["details"]
        if i != baseline:
            entry["vs_previous"] = step_verdicts(steps[i - 1]["measurement"], m)
            entry["vs_baseline"] = step_verdicts(base, m)
            warnings.extend(entry["vs_previous"]["warnings"])
        out_steps.append(entry)
    return {
        "name": name,
        "task": task_name,
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "baseline": base.label,
        "primary_metric": base.primary_metric,
        "higher_is_better": base.higher_is_better,
        "machine": base.machine,
        "steps": out_steps,
        "warnings": warnings,
        "sensitivity": sensitivity if sensitivity is not None else find_sensitivity(steps),
    }
