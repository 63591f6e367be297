"""A search's report.json and self-contained report.html (trials table, Pareto plot, chosen model, sensitivity)."""
from __future__ import annotations

import datetime as _dt
from html import escape
from pathlib import Path
from typing import Any

from condense.core.atomic import atomic_write_json, atomic_write_text
from condense.report.pareto import pareto_svg
from condense.searching.budget import offsource_note


def build_search_report(result: Any, task: Any, cfg: Any) -> dict[str, Any]:
    return {
        "kind": "search",
        "task": task.name,
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "study": result.study_name,
        "storage": result.storage,
        "config": cfg.to_dict(),
        "primary_metric": task.primary_metric,
        "higher_is_better": task.higher_is_better,
        "offsource_metric": task.offsource_metric,
        "budget": result.budget,
        "budget_checked_on": offsource_note(task, (result.baseline or {}).get("quality") or {}),
        "met_budget": result.met_budget,
        "message": result.message,
        "baseline": result.baseline,
        "chosen": result.chosen,
        "final": result.final,
        "artifact": result.artifact,
        "pareto": result.pareto,
        "trials": result.trials,
        "sensitivity": result.sensitivity,
        "skipped_knobs": result.skipped_knobs,
    }


def _steps_text(steps: list[dict[str, Any]]) -> str:
    if not steps:
        return "(none: the baseline)"
    parts = []
    for s in steps:
        keys = [k for k in ("ratio", "importance", "n_drop", "sparsity", "float_channels", "rank_ratio",
                            "layers", "threshold") if k in s]
        parts.append(s["type"] + "(" + ", ".join(f"{k}={s[k]}" for k in keys)
                     + (", exclude=…" if s.get("exclude") else "") + ")")
    return " → ".join(parts)


def _fmt(v: Any, spec: str, scale: float = 1.0) -> str:
    return "n/a" if v is None else format(v * scale, spec)


def render_search_html(rep: dict[str, Any]) -> str:
    pm = rep["primary_metric"]
    done = [r for r in rep["trials"] if r["state"] == "COMPLETE" and r["latency_s"] is not None]
    points = [{"ms": r["latency_s"] * 1e3, "metric": r["metric"], "size": r["size_bytes"] or 0,
               "label": f"#{r['number']}"} for r in done]
    b = rep["baseline"]
    points.append({"ms": b["latency_s"] * 1e3, "metric": b["metric"], "size": b["size_bytes"] or 0,
                   "label": "baseline"})
    front = [i for i, r in enumerate(done) if r["number"] in rep["pareto"]]  # over latency, size and quality
    chart = pareto_svg(points, x="ms", y="metric", size="size", front=front,
                       y_dir="max" if rep["higher_is_better"] else "min", x_label="latency p50 (ms)", y_label=pm,
                       title=f"{pm} vs latency @ batch {rep['config']['batch_size']} (marker: size on disk; "
                             "highlighted: Pareto over latency, size and quality)")
    om = rep.get("offsource_metric") if rep.get("offsource_metric") in (b.get("quality") or {}) else None

    def off_cell(r: dict[str, Any]) -> str:
        return f"<td>{_fmt((r.get('quality') or {}).get(om), '.4f')}</td>" if om else ""

    rows = []
    for r in rep["trials"]:
        cls = ' style="background:#eef7ee"' if rep["chosen"] and r["number"] == rep["chosen"]["number"] else ""
        rows.append(f"<tr{cls}><td>{r['number']}</td><td>{r['state']}</td><td style='text-align:left'>"
                    f"{escape(_steps_text(r['steps']))}</td><td>{_fmt(r['latency_s'], '.2f', 1e3)}</td>"
                    f"<td>{_fmt(r['speedup'], '.2f')}</td><td>{_fmt(r['size_bytes'], '.2f', 2**-20)}</td>"
                    f"<td>{_fmt(r['metric'], '.4f')}</td>{off_cell(r)}"
                    f"<td>{'yes' if r.get('within_budget') else 'no'}</td>"
                    f"<td>{'★' if r['number'] in rep['pareto'] else ''}</td>"
                    f"<td style='text-align:left'>{escape(r.get('error') or r.get('rejected') or '')}</td></tr>")
    chosen = ""
    if rep["chosen"]:
        c, f = rep["chosen"], rep.get("final") or {}
        sp = ", ".join(f"batch {k}: {v:.2f}x" for k, v in (f.get("speedup") or {}).items())
        fq = (f.get("chosen") or {}).get("quality", {})
        fb = (f.get("baseline") or {}).get("quality") or {}
        chosen = (f"<h2>Chosen model: trial {c['number']}</h2><p><code>{escape(_steps_text(c['steps']))}</code></p>"
                  f"<p>Re-measured side by side with the baseline: speedup {escape(sp or 'n/a')}; "
                  + "; ".join(f"{escape(k)} {_fmt(fq.get(k), '.4f')} (baseline {_fmt(fb.get(k), '.4f')})"
                              for k in (pm, om) if k) + "."
                  + (f" Not within budget when re-measured: {escape(f['rejected'])}." if f.get("rejected") else "")
                  + f" Artifact: <code>{escape(str(rep.get('artifact')))}</code></p>")
    sens = rep.get("sensitivity") or {}
    sens_html = ""
    for key, title, items in (("quantize", "Per-layer int8 sensitivity (one layer quantized at a time)", "layers"),
                              ("prune", "Per-group pruning sensitivity (30% of one group removed, no recovery)",
                               "groups")):
        entries = (sens.get(key) or {}).get(items) or []
        excl = set((sens.get(key) or {}).get("exclude") or [])
        if entries:
            body = "".join(f"<tr><td>{escape(e['name'])}</td><td>{_fmt(e.get('metric'), '.4f')}</td>"
                           f"<td>{_fmt(e.get('drop'), '.2%')}</td><td>{'kept out' if e['name'] in excl else ''}"
                           "</td></tr>" for e in entries)
            sens_html += (f"<h3>{escape(title)}</h3><table><thead><tr><th>layer</th><th>{escape(pm)}</th>"
                          f"<th>loss</th><th>search</th></tr></thead><tbody>{body}</tbody></table>")
        kinds = (sens.get(key) or {}).get("kinds") or {}
        if kinds:
            sens_html += "<p class='muted'>" + "; ".join(f"{escape(k)}: {escape(str(v))}" for k, v in kinds.items()) \
                + "</p>"
    status = "met" if rep["met_budget"] else "NOT met"
    return f"""<!doctype html><html lang="en"><head><meta charset="utf-8"><title>condense search: {escape(rep['task'])}
</title><style>body{{font-family:system-ui,sans-serif;margin:2rem auto;max-width:1100px;color:#222}}
table{{border-collapse:collapse;margin:1rem 0}}th,td{{border:1px solid #ccc;padding:3px 8px;text-align:right}}
thead{{background:#f3f3f3}}.muted{{color:#666}}code{{background:#f3f3f3;padding:1px 4px}}</style></head><body>
<h1>condense search: {escape(rep['task'])}</h1>
<p>Budget {rep['budget']:.2%} on {escape(pm)}{' and ' + escape(om) if om else ''}: <b>{status}</b>.
{escape(rep['message'])}</p><p class="muted">{escape(rep.get('budget_checked_on') or '')}</p>
<p class="muted">Study {escape(rep['study'])} in {escape(rep['storage'])}; {len(rep['trials'])} trials; baseline
{escape(pm)} {_fmt(b['metric'], '.4f')}, {_fmt(b['latency_s'], '.2f', 1e3)} ms @ batch {rep['config']['batch_size']}
(search timing); created {escape(rep['created'])}.</p>
{chosen}<h2>Pareto frontier</h2>{chart}
<h2>Trials</h2><table><thead><tr><th>#</th><th>state</th><th>steps</th><th>latency (ms)</th><th>speedup</th>
<th>size (MB)</th><th>{escape(pm)}</th>{f'<th>{escape(om)}</th>' if om else ''}<th>within budget</th><th>Pareto</th>
<th>error or why rejected</th></tr></thead>
<tbody>{''.join(rows)}</tbody></table>
<h2>Sensitivity</h2>{sens_html or '<p>not run</p>'}
</body></html>"""


def write_report(result: Any, task: Any, cfg: Any, out_dir: Path) -> dict[str, Any]:
    """Save the chosen model (if any) and write report.json + report.html atomically into `out_dir`; the model and
    report.json record the same run id, report.json last (see condense.core.outputs)."""
    from condense.core.outputs import new_run_id

    out_dir.mkdir(parents=True, exist_ok=True)
    run_id = new_run_id()
    if result.model is not None:
        from condense.core.artifact import save

        result.artifact = str(save(result.model, out_dir / "model", measurements=(result.final or {}).get("chosen"),
                                   metadata={"run_id": run_id}))
    rep = build_search_report(result, task, cfg)
    rep["run_id"] = run_id
    atomic_write_text(out_dir / "report.html", render_search_html(rep))
    atomic_write_json(out_dir / "report.json", rep)
    return rep
