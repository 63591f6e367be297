"""The one-way flow every job follows: task -> measure -> transform(s) -> measure -> save -> report.

A transformation never measures or reports by itself; this module does, so every step is measured the same way.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from condense import progress
from condense.core.artifact import save
from condense.core.atomic import atomic_write_json, atomic_write_text
from condense.core.lineage import lineage
from condense.core.outputs import check_output_dir, new_run_id
from condense.core.task import Task
from condense.core.transforms import apply_
from condense.errors import CondenseError
from condense.measurement.api import MeasureConfig, Measurement, measure
from condense.report import build_report, render_html


@dataclass(frozen=True)
class Step:
    """A labelled transformation; `config=None` is the untouched baseline."""

    label: str
    config: Any = None


@dataclass
class RunResult:
    out_dir: Path
    measurements: list[Measurement]
    report: dict[str, Any]
    artifact: Path | None


_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


def check_run_name(name: str) -> str:
    if not _NAME.match(name or ""):
        raise CondenseError(f"run name {name!r} must be letters, digits, '.', '_' or '-' (e.g. demo-minilm)")
    return name


def run_pipeline(task: Task, steps: list[Step], out_dir: str | Path, *, name: str,
                 measure_config: MeasureConfig = MeasureConfig(), save_artifact: bool = True,
                 base_model: Any = None, extra: dict[str, Any] | None = None) -> RunResult:
    """Build the task's model, apply `steps` in order measuring after each, save the result and the report.

    Writes `out_dir/report.json`, `out_dir/report.html` and (if `save_artifact`) the final model to
    `out_dir/model/`. `out_dir` is checked before any work (`check_output_dir`). Files are written atomically; a
    failure leaves earlier results in `out_dir` intact. The model and report.json record the same `run_id`, and
    report.json is written last, so a run killed in between is told apart (`condense.core.outputs.run_mismatch`).
    `base_model` starts from a given model (e.g. a loaded artifact) instead of the task's own. `extra` adds
    top-level keys to report.json (e.g. the recipe that was run).
    """
    if not steps:
        raise CondenseError("a pipeline needs at least one step; start with Step('baseline')")
    out_dir = check_output_dir(out_dir)
    run_id = new_run_id()
    model = base_model
    if model is None:
        progress.note(f"building the {task.name} model")
        model = task.build_model()
    ms: list[Measurement] = []
    rows: list[dict[str, Any]] = []
    for i, step in enumerate(steps, 1):
        recorded = len(lineage(model)["transforms"])
        if step.config is not None:
            with progress.activity(f"step {i}/{len(steps)} {step.label} ({type(step.config).__name__})"):
                model = apply_(model, step.config, task=task)
        m = measure(model, task, measure_config, label=step.label)
        ms.append(m)
        details = [e.get("details", {}) for e in lineage(model)["transforms"][recorded:]]
        rows.append({"label": step.label, "transforms": [] if step.config is None else [step.config.to_dict()],
                     "measurement": m, "details": details})
    artifact = None
    if save_artifact:
        artifact = save(model, out_dir / "model", measurements=ms[-1].to_dict(), metadata={"run_id": run_id})
        rows[-1]["artifact"] = str(artifact)
    report = build_report(name, task.name, rows)
    report.update(extra or {})
    report["run_id"] = run_id
    atomic_write_text(out_dir / "report.html", render_html(report))
    atomic_write_json(out_dir / "report.json", report)  # last: the record whose run_id matches model/
    return RunResult(out_dir=out_dir, measurements=ms, report=report, artifact=artifact)
