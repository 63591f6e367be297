"""Whether a trial is within the quality budget: on the primary metric, and on the task's second source.

Why: a step that trains or calibrates on the evaluation domain (a student distilled on docstrings, judged on
docstrings) can keep the primary metric while losing quality on other text. A task with a second evaluation source
(`Task.offsource_metric`, text no training or calibration data comes from) has its budget checked there too; the
primary metric still drives the search (its objectives and sensitivity probes).
"""
from __future__ import annotations

from typing import Any, Mapping


def budget_verdict(task: Any, quality: Mapping[str, float], baseline: Mapping[str, float],
                   budget: float) -> tuple[bool, str | None]:
    """(within budget, why not): the primary metric within `budget` of the baseline's, and the second source's
    metric too where the task has one and the baseline measured it.

    Example:
        >>> from condense.core.task import Task
        >>> t = Task("t", lambda: None, evaluate=dict, primary_metric="acc", inputs=0, offsource_metric="acc_off")
        >>> budget_verdict(t, {"acc": 0.99, "acc_off": 0.90}, {"acc": 1.0, "acc_off": 1.0}, 0.02)
        (False, 'acc_off 0.9000 vs baseline 1.0000 on the second source: a 10.00% loss, over the 2.00% budget')
    """
    from condense.searching.sensitivity import relative_drop

    pm = task.primary_metric
    if not task.within_budget(quality[pm], baseline[pm], budget):
        return False, (f"{pm} {quality[pm]:.4f} vs baseline {baseline[pm]:.4f}: a "
                       f"{relative_drop(task, quality[pm], baseline[pm]):.2%} loss, over the {budget:.2%} budget")
    om = task.offsource_metric
    if om is None or om not in baseline:
        return True, None
    if om not in quality:
        return False, f"{om} was not measured (the baseline's is {baseline[om]:.4f}), so the second source is unchecked"
    if not task.within_budget(quality[om], baseline[om], budget):
        return False, (f"{om} {quality[om]:.4f} vs baseline {baseline[om]:.4f} on the second source: a "
                       f"{relative_drop(task, quality[om], baseline[om]):.2%} loss, over the {budget:.2%} budget")
    return True, None


def offsource_note(task: Any, baseline: Mapping[str, float]) -> str:
    """One sentence for reports: where the budget was checked.

    Example:
        >>> from condense.core.task import Task
        >>> t = Task("t", lambda: None, evaluate=dict, primary_metric="acc", inputs=0)
        >>> offsource_note(t, {"acc": 1.0})
        'The budget is checked on acc only (this task has no second evaluation source).'
    """
    pm, om = task.primary_metric, task.offsource_metric
    if om is None:
        return f"The budget is checked on {pm} only (this task has no second evaluation source)."
    if om not in baseline:
        return (f"The budget is checked on {pm} only: the second evaluation source ({om}) is missing on this "
                "machine (see the warning).")
    return (f"The budget is checked on {pm} (it drives the search) and on {om}, a second evaluation source no "
            "training or calibration data comes from; a trial that meets it on one only is rejected.")
