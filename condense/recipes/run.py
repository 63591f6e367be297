"""`run_recipe`: a validated recipe through the pipeline (baseline, then every step measured), artifact + report."""
from __future__ import annotations

from pathlib import Path
from typing import Any

from condense.errors import CondenseError
from condense.recipes.recipe import Recipe, load_recipe


def run_recipe(recipe: Recipe | str | Path, out_dir: str | Path, *, task: Any = None, name: str | None = None,
               measure_config: Any = None, overrides: dict[str, Any] | None = None, base_model: Any = None,
               baseline_label: str = "baseline", trust_task: bool = False) -> Any:
    """Apply the recipe's steps in order to the task's model, measuring the baseline and after every step.

    Args:
        recipe: a `Recipe`, or a YAML file path (validated whole before anything runs).
        task: a Task or task name; default: the recipe's `task` (with its `task_options`).
        measure_config: overrides the recipe's `measure` section.
        base_model: start from this model (e.g. a loaded artifact) instead of the task's.
        trust_task: let the recipe's `task` be a `module:factory` (imports that module and calls the factory
            with the recipe's `task_options`); without it a recipe names built-in tasks only.

    Returns the pipeline's `RunResult`: `out_dir/report.json`, `out_dir/report.html`, artifact in `out_dir/model/`.

    Example:
        >>> res = run_recipe("recipes/digits.yaml", "runs/digits-recipe")  # doctest: +SKIP
        >>> res.report["steps"][-1]["vs_baseline"]["speedup"]  # doctest: +SKIP
    """
    from condense.core.outputs import check_output_dir
    from condense.pipeline import Step, check_run_name, run_pipeline
    from condense.tasks import get_task, task_from_spec

    if not isinstance(recipe, Recipe):
        recipe = load_recipe(recipe, overrides=overrides)
    check_output_dir(out_dir)  # before the task is built
    if task is None:
        if recipe.task is None:
            raise CondenseError(f"recipe {recipe.name!r} names no task; pass --task NAME (e.g. --task digits)")
        task = task_from_spec(recipe.task, recipe.task_options, trust=trust_task, source=f"recipe {recipe.name!r}")
    elif isinstance(task, str):
        task = get_task(task, **(recipe.task_options if task == recipe.task else {}))
    out_dir = Path(out_dir)
    name = check_run_name(name or out_dir.name)
    steps = [Step(baseline_label)] + [Step(s.label, s.config) for s in recipe.steps]
    res = run_pipeline(task, steps, out_dir, name=name, measure_config=measure_config or recipe.measure,
                       base_model=base_model, extra={"recipe": recipe.to_dict()})
    return res
