"""`condense run`: a YAML recipe, every step in order, measured after each; the artifact and the report."""
from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from condense.cli.common import (add_command, add_trust_arg, batch_sizes, device, positive_int, print_run,
                                 task_options)
from condense.errors import CondenseError

EPILOG = """examples:
  condense run recipes/digits.yaml --out runs/digits-recipe
  condense run recipes/tinygpt.yaml --out runs/gpt --set steps.0.prune.finetune.steps=20
  condense run recipes/minilm.yaml --task minilm --task-option n_pairs=100 --out runs/m --set measure.repeats=3
  condense run recipes/minilm.yaml --out runs/minilm > minilm.log 2>&1   # a log: a line per step, progress"""


def cmd_run(args: argparse.Namespace) -> int:
    import dataclasses

    from condense.core.outputs import check_output_dir
    from condense.recipes import load_recipe, parse_overrides, run_recipe

    recipe = load_recipe(args.recipe, overrides=parse_overrides(args.set))  # validated whole before any work
    check_output_dir(args.out)
    task = None
    if args.task or args.task_option:
        from condense.tasks import get_task

        if args.task:
            opts = recipe.task_options if args.task == recipe.task else {}
            task = get_task(args.task, **{**opts, **task_options(args.task_option)})
        elif recipe.task is None:
            raise CondenseError("--task-option needs a task: pass --task NAME or name one in the recipe")
        else:
            from condense.tasks import task_from_spec

            task = task_from_spec(recipe.task, {**recipe.task_options, **task_options(args.task_option)},
                                  trust=args.trust_task, source=f"recipe {args.recipe}")
    over = {k: v for k, v in (("batch_sizes", args.batch_sizes), ("threads", args.threads),
                              ("repeats", args.repeats), ("device", args.device)) if v is not None}
    if args.no_quality:
        over["quality"] = False
    mcfg = dataclasses.replace(recipe.measure, **over)
    out = Path(args.out)
    res = run_recipe(recipe, out, task=task, measure_config=mcfg, name=out.name, trust_task=args.trust_task)
    print_run(res, out, title=f"recipe {recipe.name}")
    return 0


def add_parser(sub: Any) -> None:
    p = add_command(sub, "run", cmd_run, "run a YAML recipe: every step in order, measured after each; artifact "
                    "and report", epilog=EPILOG)
    p.add_argument("recipe", help="YAML recipe file (see recipes/ for one per built-in task)")
    p.add_argument("--task", metavar="NAME|MODULE:FACTORY", help="the task (default: the recipe's `task`)")
    p.add_argument("--task-option", action="append", default=[], metavar="KEY=VALUE",
                   help="option passed to the task factory (repeatable), e.g. preset=tiny")
    p.add_argument("--out", required=True, metavar="DIR", help="run folder: DIR/model, report.json, report.html")
    p.add_argument("--set", action="append", default=[], metavar="PATH=VALUE",
                   help="override a recipe value by dotted path (repeatable), e.g. steps.0.prune.n_drop=1 or "
                        "measure.repeats=3 (step indices are 0-based)")
    p.add_argument("--batch-sizes", type=batch_sizes, default=None, metavar="B1,B2",
                   help="batch sizes to time (default: the recipe's, else the task's)")
    p.add_argument("--threads", type=positive_int, default=None, help="torch threads while measuring")
    p.add_argument("--repeats", type=positive_int, default=None, help="minimum timed runs per batch size")
    p.add_argument("--device", type=device, default=None, help="cpu or cuda[:N] (default: the recipe's, else cpu)")
    p.add_argument("--no-quality", action="store_true", help="skip evaluating the task's metrics")
    add_trust_arg(p, "the recipe")
