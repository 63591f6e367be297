"""`condense measure`: measure a task's model or a saved artifact (size, MACs, latency, memory, quality)."""
from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from condense.cli.common import (add_command, add_measure_args, add_task_args, add_trust_arg, artifact_task,
                                 measure_config, show, task_of)
from condense.errors import CondenseError

EPILOG = """examples:
  condense measure --task digits --batch-sizes 1,256 --threads 2
  condense measure --model runs/digits-int8 --json runs/digits-int8/measure.json
  condense measure --model runs/digits-int8 --json - --no-quality       # JSON on stdout, no evaluation"""


def cmd_measure(args: argparse.Namespace) -> int:
    from condense.core.artifact import load
    from condense.measurement.api import measure
    from condense.measurement.table import comparison_table

    if args.model is None and args.task is None:
        raise CondenseError("give --task NAME to measure a task's model, or --model ARTIFACT to measure a saved one")
    if args.json and args.json != "-":
        from condense.core.outputs import check_output_file

        check_output_file(args.json)
    if args.model is not None:
        task, d = artifact_task(args)
        model = load(d, task=task)
        label = Path(args.model).name
    else:
        task = task_of(args)
        model = task.build_model()
        label = "fp32"
    m = measure(model, task, measure_config(args), label=label)
    show(comparison_table([m]))
    if args.json:
        from condense.core.atomic import atomic_write_json

        if args.json == "-":
            print(json.dumps(m.to_dict(), indent=2))
        else:
            atomic_write_json(args.json, m.to_dict())
            print(f"wrote {args.json}")
    return 0


def add_parser(sub: Any) -> None:
    p = add_command(sub, "measure", cmd_measure, "measure a task's model or a saved artifact", epilog=EPILOG)
    add_task_args(p, required=False)
    p.add_argument("--model", metavar="ARTIFACT", help="a saved artifact folder (default: the task's own model)")
    p.add_argument("--json", metavar="PATH", help="also write the measurement as JSON ('-' for stdout)")
    add_trust_arg(p, "the artifact (--model)")
    add_measure_args(p)
