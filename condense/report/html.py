"""report.html: one self-contained page (inline CSS and SVG) from a report dict."""
from __future__ import annotations

import json
from html import escape
from typing import Any

from condense.report.pareto import pareto_svg
from condense.report.svg import bar_chart

_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,sans-serif;margin:2rem auto;max-width:1000px;color:#222}
table{border-collapse:collapse;margin:1rem 0}th,td{border:1px solid #ccc;padding:4px 10px;text-align:right}
th:first-child,td:first-child{text-align:left}thead{background:#f3f3f3}.warn{background:#fff4e5;border-left:4px solid
#f28e2b;padding:.5rem 1rem;margin:.5rem 0}.muted{color:#666;font-size:.9em}code{background:#f3f3f3;padding:1px 4px}
"""


def _ms(s: float | None) -> str:
    return "n/a" if s is None else f"{s * 1e3:.2f}"


def _mb(b: int | None) -> str:
    return "n/a" if b is None else f"{b / 2**20:.2f}"


def _table(report: dict[str, Any]) -> str:
    steps = report["steps"]
    ms = [s["measurement"] for s in steps]
    base = ms[0]
    head = "".join(f"<th>{escape(s['label'])}</th>" for s in steps)
    rows: list[tuple[str, list[str]]] = [
        ("parameters", [f"{m['params_total']:,}" for m in ms]),
        ("non-zero parameters", [f"{m['params_nonzero']:,}" for m in ms]),
        ("size on disk (MB)", [_mb(m["size_bytes"]) for m in ms]),
        ("MACs / sample", [f"{m['macs_per_sample']:,}" if m["macs_per_sample"] is not None else "n/a" for m in ms]),
    ]
    for bs in base["latency"]:
        rows.append((f"latency p50 @ batch {bs} (ms)", [_ms(m["latency"].get(bs, {}).get("p50_s")) for m in ms]))
        rows.append((f"latency p95 @ batch {bs} (ms)", [_ms(m["latency"].get(bs, {}).get("p95_s")) for m in ms]))
        rows.append((f"speedup @ batch {bs} vs {base['label']}",
                     ["1.00x" if i == 0 else f"{steps[i]['vs_baseline']['speedup'].get(bs) or 0:.2f}x"
                      for i in range(len(ms))]))
        rows.append((f"throughput @ batch {bs} (samples/s)", [f"{m['throughput'].get(bs, 0):.1f}" for m in ms]))
        rows.append((f"peak memory @ batch {bs} (MB)", [_mb(m["memory"].get(bs, {}).get("peak_bytes")) for m in ms]))
    for bs in base["tokens_per_s"]:
        rows.append((f"decode tokens/s @ batch {bs}", [f"{m['tokens_per_s'].get(bs, 0):.1f}" for m in ms]))
    for k in base["quality"]:
        star = " (primary)" if k == report["primary_metric"] else ""
        rows.append((k + star, [f"{m['quality'].get(k, float('nan')):.4f}" for m in ms]))
    body = "".join(f"<tr><td>{escape(name)}</td>{''.join(f'<td>{escape(v)}</td>' for v in vals)}</tr>"
                   for name, vals in rows)
    return f"<table><thead><tr><th>metric</th>{head}</tr></thead><tbody>{body}</tbody></table>"


def _speed_axis(report: dict[str, Any]) -> tuple[str, Any]:
    """(axis label, fn(measurement) -> ms or None): decode ms/token at batch 1 for generative tasks, else p50
    latency at the largest batch size."""
    m0 = report["steps"][0]["measurement"]
    if m0.get("tokens_per_s"):
        bs = next(iter(m0["tokens_per_s"]))
        return (f"decode ms per token @ batch {bs}",
                lambda m: 1e3 / v if (v := m.get("tokens_per_s", {}).get(bs)) else None)
    bss = list(m0["latency"])
    if not bss:
        return "latency (ms)", lambda m: None
    b = bss[-1]
    return (f"latency p50 @ batch {b} (ms)",
            lambda m: None if (v := m["latency"].get(b, {}).get("p50_s")) is None else v * 1e3)


def _pareto(report: dict[str, Any]) -> str:
    """Quality against speed, marker size = size on disk, the (speed, quality) frontier highlighted."""
    pm = report["primary_metric"]
    label, speed = _speed_axis(report)
    points = []
    for s in report["steps"]:
        m = s["measurement"]
        x, y = speed(m), m["quality"].get(pm)
        if x is not None and y is not None:
            points.append({"label": s["label"], "ms": x, "q": y, "size": m["size_bytes"]})
    if not points:
        return '<p class="muted">No Pareto plot: the steps have no quality or no timing to compare.</p>'
    y_dir = "max" if report["higher_is_better"] else "min"
    sized = all(isinstance(p["size"], (int, float)) for p in points)
    return pareto_svg(points, x="ms", y="q", size="size" if sized else None, y_dir=y_dir, x_label=label,
                      y_label=pm, title=f"{pm} vs speed, one point per step")


def _sensitivity(report: dict[str, Any]) -> str:
    sens = report.get("sensitivity")
    if not sens or not sens.get("layers"):
        return ""
    layers = sens["layers"][:24]
    return bar_chart(f"Per-layer sensitivity: {report['primary_metric']} lost when only this layer is quantized",
                     [str(x["name"]) for x in layers], {"drop": [float(x["drop"]) for x in layers]},
                     width=max(640, 40 * len(layers)), height=340)


def _step_table(report: dict[str, Any]) -> str:
    """Per step vs the one before: speedups, size, quality change (what it bought and what it cost)."""
    pm = report["primary_metric"]
    rows = []
    for prev, s in zip(report["steps"], report["steps"][1:]):
        v = s["vs_previous"]
        speed = ", ".join(f"batch {b}: {x:.2f}x" for b, x in v["speedup"].items() if x is not None) or "n/a"
        tp, tc = prev["measurement"].get("tokens_per_s", {}), s["measurement"].get("tokens_per_s", {})
        dec = ", ".join(f"batch {b}: {tc[b] / tp[b]:.2f}x" for b in tc if tp.get(b)) or "n/a"
        size = "n/a" if v["size_ratio"] is None else f"{v['size_ratio']:.2f}x"
        dq = v["quality_delta"].get(pm)
        q = "n/a" if dq is None else f"{dq:+.4f}"
        rows.append(f"<tr><td>{escape(s['label'])}</td><td>{escape(speed)}</td><td>{escape(dec)}</td>"
                    f"<td>{size}</td><td>{q}</td></tr>")
    if not rows:
        return '<p class="muted">Only the baseline was measured.</p>'
    return ("<table class=\"steps\"><thead><tr><th>step (vs the step before)</th><th>speedup</th>"
            f"<th>decode tokens/s</th><th>size</th><th>{escape(pm)} change</th></tr></thead><tbody>"
            + "".join(rows) + "</tbody></table>")


def render_html(report: dict[str, Any]) -> str:
    """The whole page as a string (write it with an atomic write)."""
    steps = report["steps"]
    ms = [s["measurement"] for s in steps]
    labels = [s["label"] for s in steps]
    bss = list(ms[0]["latency"])
    lat = bar_chart("Latency p50 (ms, lower is better)", [f"batch {b}" for b in bss],
                    {lab: [None if (v := m["latency"].get(b, {}).get("p50_s")) is None else v * 1e3 for b in bss]
                     for lab, m in zip(labels, ms)}, unit=" ms")
    size = bar_chart("Size on disk (MB)", ["artifact"],
                     {lab: [None if m["size_bytes"] is None else m["size_bytes"] / 2**20] for lab, m in zip(labels, ms)},
                     unit=" MB")
    pareto = _pareto(report)
    sens = _sensitivity(report)
    warnings = "".join(f'<div class="warn">{escape(w)}</div>' for w in report["warnings"]) or \
        '<p class="muted">No warnings: every step that made the model smaller also made it faster.</p>'
    mach = report["machine"]
    versions = ", ".join(f"{k} {v}" for k, v in mach.get("versions", {}).items())
    steps_list = "".join(f"<li><b>{escape(s['label'])}</b>: <code>{escape(json.dumps(s['transforms']))}</code></li>"
                         for s in steps)
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>condense report: {escape(report['name'])}</title>
<style>{_CSS}</style></head><body>
<h1>condense report: {escape(report['name'])}</h1>
<p>Task <b>{escape(report['task'])}</b>, baseline <b>{escape(report['baseline'])}</b>. Created {escape(report['created'])}.
Every figure below was measured on this machine: {escape(str(mach.get('cpu', '')))}, device {escape(str(mach.get('device')))},
{mach.get('torch_threads')} torch threads; {escape(versions)}. Latencies are medians (p50) and 95th percentiles.
Peak memory is the whole process's resident high-water mark during one call (weights included).</p>
<h2>Before / after</h2>{_table(report)}
<h2>What each step bought and cost</h2>{_step_table(report)}
<h2>Warnings</h2>{warnings}
<h2>Quality vs speed (Pareto)</h2>{pareto}
<h2>Charts</h2>{lat}{size}{sens}
<h2>Steps applied</h2><ol>{steps_list}</ol>
<p class="muted">The full data is in report.json next to this page.</p>
</body></html>
"""
