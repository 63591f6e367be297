"""`condense tasks` (list the built-in tasks) and `condense prepare` (build and cache one's model)."""
from __future__ import annotations

import argparse
import json
from typing import Any

from condense.cli.common import add_command, task_options
from condense.errors import ConfigError


def cmd_tasks(args: argparse.Namespace) -> int:
    from condense.tasks import list_tasks

    for name, summary in list_tasks():
        print(f"{name:10s} {summary}")
    return 0


def cmd_prepare(args: argparse.Namespace) -> int:
    from condense.core.paths import cache_dir
    from condense.tasks import get_task

    options = task_options(args.task_option)
    if args.preset is not None:
        if "preset" in options and options["preset"] != args.preset:
            raise ConfigError(f"--preset {args.preset} and --task-option preset={options['preset']} disagree; "
                              "give one of them")
        options["preset"] = args.preset
    task = get_task(args.name, **options)
    model = task.build_model()
    print(f"{task.name}: ready (cache: {cache_dir()})")
    if not args.no_quality:
        print(json.dumps(task.metrics(model), indent=2))
    return 0


def add_tasks_parser(sub: Any) -> None:
    add_command(sub, "tasks", cmd_tasks, "list the built-in tasks")


def add_prepare_parser(sub: Any) -> None:
    p = add_command(sub, "prepare", cmd_prepare, "build (train if needed) and cache a built-in task's model",
                    epilog="examples:\n  condense prepare tinygpt\n  condense prepare tinygpt --task-option "
                           "preset=tiny --no-quality\n  condense prepare tinygpt --preset large   "
                           "# 25.5 M parameters, about 20 minutes")
    p.add_argument("name", help="built-in task name, e.g. tinygpt")
    p.add_argument("--task-option", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--preset", default=None, help="the task's preset (same as --task-option preset=NAME), "
                   "e.g. tinygpt: tiny, default, large")
    p.add_argument("--no-quality", action="store_true", help="do not evaluate after preparing")
