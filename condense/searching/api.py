"""`search(task, SearchConfig(budget="1%"))`: the fastest model within a quality budget, and the Pareto frontier.

Flow: open (or resume) the study -> measure the baseline and run the sensitivity probes once -> trials, each a
list of step configs applied to a fresh copy of the model and measured for real -> pick the fastest trial within
the budget -> rebuild it and re-measure it side by side with the baseline, carefully -> save it and the report.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from torch import nn

from condense import progress
from condense.core.config import config_from_dict
from condense.core.task import Task
from condense.errors import CondenseError
from condense.searching.budget import budget_verdict
from condense.searching.config import SearchConfig
from condense.searching.sensitivity import relative_drop
from condense.searching.storage import masked, open_storage, storage_url
from condense.searching.trials import INTERRUPTED, StageCache, open_study, run_worker


class BudgetNotMet(CondenseError):
    """No trial met the quality budget; `result` holds the history and the closest trial."""

    def __init__(self, message: str, result: "SearchResult"):
        super().__init__(message)
        self.result = result


@dataclass
class SearchResult:
    """What a search found. `trials`: one row per finished trial (steps, figures, state); `pareto`: trial
    numbers on the latency/size/quality frontier; `chosen`: the fastest row within budget (None if none)."""

    study_name: str
    storage: str
    budget: float
    baseline: dict[str, Any]
    trials: list[dict[str, Any]]
    pareto: list[int]
    chosen: dict[str, Any] | None
    message: str
    model: nn.Module | None = None
    final: dict[str, Any] = field(default_factory=dict)
    sensitivity: dict[str, Any] = field(default_factory=dict)
    skipped_knobs: dict[str, str] = field(default_factory=dict)
    artifact: str | None = None

    @property
    def met_budget(self) -> bool:
        return self.chosen is not None


def pareto_front(rows: list[dict[str, Any]], higher_is_better: bool = True) -> list[int]:
    """Numbers of the rows no other row beats on latency, size and quality at once (all at least as good,
    one strictly better).

    Example:
        >>> rows = [{"number": 0, "latency_s": 1, "size_bytes": 1, "metric": 0.9},
        ...         {"number": 1, "latency_s": 2, "size_bytes": 2, "metric": 0.8}]
        >>> pareto_front(rows)
        [0]
    """
    from condense.report.pareto import pareto_front as front

    objectives = {"latency_s": "min", "size_bytes": "min", "metric": "max" if higher_is_better else "min"}
    return [rows[i]["number"] for i in front(rows, objectives)]


def _rows(study: Any) -> list[dict[str, Any]]:
    rows = []
    for t in study.get_trials(deepcopy=False):
        if t.state.name not in ("COMPLETE", "FAIL"):
            continue
        a = t.user_attrs
        rows.append({"number": t.number, "state": t.state.name, "params": dict(t.params),
                     "steps": a.get("steps", []), "worker": a.get("worker"),
                     "error": a.get("error") or (INTERRUPTED if t.state.name == "FAIL" else None),
                     "latency_s": a.get("latency_s"), "size_bytes": a.get("size_bytes"), "metric": a.get("metric"),
                     "quality": a.get("quality", {}), "speedup": a.get("speedup"),
                     "within_budget": a.get("within_budget", False), "rejected": a.get("rejected"),
                     "duration_s": t.duration.total_seconds() if t.duration is not None else None})
    return rows


def _spawn_workers(task: Task, cfg: SearchConfig, url: str, study_name: str, n: int) -> list[subprocess.Popen]:
    if n <= 1:
        return []
    if task.spec is None:
        raise CondenseError("workers > 1 start new processes that rebuild the task: use a built-in task or a "
                            "module:factory task, not a Task object")
    if url is None or url.startswith("sqlite:///:memory:"):
        raise CondenseError("workers > 1 share the study through a database: give storage= (a SQLite file or "
                            "a PostgreSQL URL) or out_dir=")
    procs = []
    for w in range(1, n):
        # trust_task: the parent built this task from the user's own argument, so the worker may rebuild it too
        arg = json.dumps({"task": task.spec, "config": cfg.to_dict(), "storage": url, "study": study_name,
                          "worker": w, "trust_task": True})
        procs.append(subprocess.Popen([sys.executable, "-m", "condense.searching.worker", arg], env=dict(os.environ)))
    return procs


def rebuild(task: Task, steps: list[dict[str, Any]], stage_dir: str | Path | None = None) -> nn.Module:
    """A fresh model with a trial's steps applied (configs as recorded in the study); slow prefixes saved in
    `stage_dir` by the search (SearchConfig.stage_dir) are loaded rather than trained again."""
    return StageCache(size=0, directory=stage_dir).build(task.build_model(), [config_from_dict(d) for d in steps],
                                                         task)


def search(task: Task | str, config: SearchConfig = SearchConfig(), *, storage: str | None = None,
           study_name: str | None = None, out_dir: str | Path | None = None, workers: int = 1,
           final_measure: bool = True) -> SearchResult:
    """Search compression steps for the fastest model within `config.budget` of the baseline's primary metric.

    Trials live in `storage` (a SQLite path or URL, a PostgreSQL URL; default: SQLite `search.db` in `out_dir`),
    so calling again with the same study name resumes, and other processes or machines with the same storage and
    study name add trials to the same search. With `out_dir`, writes report.json, report.html and the chosen
    model as an artifact in `out_dir/model`. Raises `BudgetNotMet` (history kept, report written) when no trial
    meets the budget.

    Example:
        >>> import condense
        >>> from condense.searching import SearchConfig
        >>> res = condense.search("condense.testing:tiny_task", SearchConfig(budget="5%", trials=4,
        ...                       batch_size=8, timing_min_s=0))  # doctest: +SKIP
        >>> res.chosen["speedup"] > 0  # doctest: +SKIP
        True
    """
    from condense.tasks import get_task

    task = get_task(task)
    if workers < 1:
        raise CondenseError(f"workers must be >= 1, got {workers}")
    if out_dir is not None:
        from condense.core.outputs import check_output_dir

        check_output_dir(out_dir, kind="search")
    url = storage_url(storage, out_dir)
    if config.stage_dir is None and out_dir is not None:
        config = replace(config, stage_dir=str(Path(out_dir) / "stages"))
    study_name = study_name or f"condense-{task.name}"
    st = open_storage(url, config.heartbeat_s)
    progress.note(f"search {study_name!r} in {masked(url)}")
    procs = _spawn_workers(task, config, url, study_name, workers)
    try:
        run_worker(task, config, url, study_name, worker=0, storage=st)
    except BaseException:  # interrupted or failed: stop the local workers too (each ends its trial cleanly)
        for p in procs:
            p.terminate()
        raise
    finally:
        for p in procs:
            p.wait()
    study = open_study(config, task, url, study_name, st)
    bad = [p.returncode for p in procs if p.returncode != 0]
    result = _result(task, config, study, url, study_name)
    if bad:
        result.message += f" ({len(bad)} worker process(es) failed: exit codes {bad})"
    if result.chosen is not None and final_measure:
        _final(task, config, result)
    if out_dir is not None:
        from condense.searching.report import write_report

        write_report(result, task, config, Path(out_dir))
    if result.chosen is None:
        raise BudgetNotMet(result.message, result)
    return result


def _result(task: Task, cfg: SearchConfig, study: Any, url: str | None, name: str) -> SearchResult:
    attrs = study.user_attrs
    base = attrs["baseline"]
    rows = _rows(study)
    done = [r for r in rows if r["state"] == "COMPLETE" and r["metric"] is not None]
    base_q = {task.primary_metric: base["metric"], **base.get("quality", {})}
    for r in done:
        ok, r["rejected"] = budget_verdict(task, {task.primary_metric: r["metric"], **(r["quality"] or {})}, base_q,
                                           cfg.budget)
        r["within_budget"] = ok
        r["drop"] = relative_drop(task, r["metric"], base["metric"])
    ok = [r for r in done if r["within_budget"] and r["steps"]]  # the untouched model is the baseline, not a pick
    chosen = min(ok, key=lambda r: r["latency_s"]) if ok else None
    pareto = pareto_front(done, task.higher_is_better) if done else []
    om = task.offsource_metric if task.offsource_metric in base_q else None
    # within budget on the primary metric, rejected on the second source
    off_only = sorted((r for r in done if r["steps"] and not r["within_budget"]
                       and task.within_budget(r["metric"], base["metric"], cfg.budget)), key=lambda r: r["latency_s"])
    if chosen is not None:
        msg = (f"trial {chosen['number']} is the fastest within {cfg.budget:.2%} of the baseline's "
               f"{task.primary_metric}{f' and {om}' if om else ''}: {chosen['speedup']:.2f}x faster at batch "
               f"{cfg.batch_size} (search timing), {task.primary_metric} {chosen['metric']:.4f} vs "
               f"{base['metric']:.4f}" + (f", {om} {chosen['quality'][om]:.4f} vs {base_q[om]:.4f}" if om else ""))
    elif off_only:
        msg = (f"no trial met the {cfg.budget:.2%} budget on both {task.primary_metric} and the second source {om} "
               f"({len(done)} trials): {len(off_only)} met it on {task.primary_metric} but were rejected on the "
               f"second source, e.g. the fastest, trial {off_only[0]['number']}: {off_only[0]['rejected']}. The history is kept "
               f"in {masked(url)} (study {name!r}): resume with more trials or a larger --budget")
    elif [r for r in done if r["steps"]]:
        best = min((r for r in done if r["steps"]), key=lambda r: r["drop"])
        msg = (f"no trial met the {cfg.budget:.2%} budget on {task.primary_metric} ({len(done)} trials); the "
               f"closest, trial {best['number']} ({', '.join(s['type'] for s in best['steps'])}), "
               f"reached {best['metric']:.4f} vs baseline {base['metric']:.4f}: a {best['drop']:.2%} loss, missing "
               f"the budget by {best['drop'] - cfg.budget:.2%}. The history is kept in {masked(url)} (study "
               f"{name!r}): resume with more trials or a larger --budget")
    elif done:
        msg = (f"no compression step can meet the {cfg.budget:.2%} budget on {task.primary_metric}: the sensitivity "
               f"probes ruled every step out for this task (see 'sensitivity' in the report), so all {len(done)} "
               f"trials left the model unchanged; try a larger --budget or --set sensitivity=false")
    else:
        errors = sorted({r['error'] for r in rows if r.get("error")})[:3]
        msg = (f"no trial finished successfully ({len(rows)} failed: {'; '.join(errors) or 'unknown'}); the "
               f"history is kept in {masked(url)} (study {name!r})")
    return SearchResult(study_name=name, storage=masked(url), budget=cfg.budget, baseline=base, trials=rows,
                        pareto=pareto, chosen=chosen, message=msg, sensitivity=attrs.get("sensitivity", {}),
                        skipped_knobs=attrs.get("skipped_knobs", {}))


def _final(task: Task, cfg: SearchConfig, result: SearchResult) -> None:
    """Rebuild the pick and re-measure it side by side with the baseline (more repeats, both batch sizes)."""
    from condense.measurement.api import MeasureConfig, measure

    progress.note(f"rebuilding trial {result.chosen['number']} and re-measuring it with the baseline")
    model = rebuild(task, result.chosen["steps"], cfg.stage_dir)
    base_model = task.build_model()
    sizes = tuple(sorted({1, cfg.batch_size}))
    mcfg = MeasureConfig(batch_sizes=sizes, repeats=cfg.final_repeats, min_time_s=cfg.final_min_s,
                         threads=cfg.threads)
    mb = measure(base_model, task, mcfg, label="baseline")
    mc = measure(model, task, mcfg, label=f"trial {result.chosen['number']}")
    result.model = model
    ok, why = budget_verdict(task, mc.quality, mb.quality, cfg.budget)
    result.final = {"baseline": mb.to_dict(), "chosen": mc.to_dict(),
                    "speedup": {str(b): mb.p50(b) / mc.p50(b) for b in sizes},
                    "within_budget": ok, "rejected": why}
