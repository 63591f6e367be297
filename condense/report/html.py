"""report.html: one self-contained page (inline CSS and SVG) from a report dict."""
from __future__ import annotations

import json
from html import escape
from typing import Any

from condense.report.svg import bar_chart, scatter_chart

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
    pm = report["primary_metric"]
    b_last = bss[-1] if bss else None
    sizes = [m["size_bytes"] or 0 for m in ms]
    smax = max(sizes) or 1
    pareto = scatter_chart(
        f"{pm} vs latency @ batch {b_last} (marker size: size on disk)",
        [{"x": m["latency"][b_last]["p50_s"] * 1e3, "y": m["quality"].get(pm, 0.0), "label": lab,
          "size": (m["size_bytes"] or 0) / smax} for lab, m in zip(labels, ms) if b_last and pm in m["quality"]],
        x_label=f"latency p50 @ batch {b_last} (ms)", y_label=pm)
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
<h2>Warnings</h2>{warnings}
<h2>Charts</h2>{lat}{size}{pareto}
<h2>Steps applied</h2><ol>{steps_list}</ol>
<p class="muted">The full data is in report.json next to this page.</p>
</body></html>
"""
