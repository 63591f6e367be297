"""`condense demo` (what `make demo` runs): measure fp32, quantize to int8 on the backend measured fastest within
the quality budget (`Int8Config()`), measure again, save the artifact and the report."""
from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from condense.cli.common import add_command, add_measure_args, measure_config, print_run, task_of

EPILOG = """examples:
  condense demo                                   # minilm: fp32 vs int8, report in runs/demo-minilm/
  condense demo --task digits --runs-dir /tmp/runs"""


def cmd_demo(args: argparse.Namespace) -> int:
    from condense.core.outputs import check_output_dir
    from condense.pipeline import Step, check_run_name, run_pipeline
    from condense.quantize.backends import Int8Config

    name = check_run_name(args.name or f"demo-{args.task}")
    out = check_output_dir(Path(args.runs_dir) / name)  # before any work
    task = task_of(args)
    res = run_pipeline(task, [Step("fp32"), Step("int8", Int8Config())], out, name=name,
                       measure_config=measure_config(args))
    print_run(res, out, title=f"condense demo: {task.name}, fp32 vs int8 (the backend measured fastest)")
    _print_pick(res.artifact)
    return 0


def _print_pick(artifact: Any) -> None:
    """Which int8 backend `Int8Config()` kept, and why (recorded in the artifact's lineage)."""
    from condense.core.artifact import read_metadata

    for t in read_metadata(artifact).get("transforms", []):
        details = t.get("details", {})
        if details.get("backend"):
            print(f"int8 backend: {details['backend']} ({details.get('reason', '')})")


def add_parser(sub: Any) -> None:
    p = add_command(sub, "demo", cmd_demo, "the main job: measure fp32, quantize to int8, measure again, save, "
                    "report", epilog=EPILOG)
    p.add_argument("--task", default="minilm", help="built-in task (default: minilm)")
    p.add_argument("--task-option", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--name", default=None, help="run name (default: demo-TASK)")
    p.add_argument("--runs-dir", default="runs", help="folder for run outputs (default: runs)")
    add_measure_args(p)
