"""`condense finetune`: transfer learning (a pretrained body, a new head, frozen layers, layer-wise learning rates)
beside the same architecture trained from scratch, measured."""
from __future__ import annotations

import argparse
import inspect
import json
from typing import Any

from condense.cli.common import add_command, add_task_args, build_config_at, device, positive_int, task_options
from condense.errors import CondenseError

EPILOG = """examples:
  condense finetune --task minilm-topics --set labels_per_class=10 --out runs/topics
  condense finetune --task minilm-topics --set freeze=embeddings,layers:0-1 --set lr_decay=0.8 --out runs/t2
  condense finetune --task minilm-topics --set freeze=3 --set head_lr=3e-3 --no-scratch --out runs/t3
--set takes any TransferConfig field (freeze, lr_decay, head_lr and every TrainConfig field: steps, lr, schedule,
eval_every, target, ...) and the task's own options (labels_per_class=10 is --task-option labels_per_class=10).
The task may suggest settings (minilm-topics: freeze=embeddings, target=0.6); --set overrides them.
Outputs: OUT/model (the fine-tuned model, checked to load with the same outputs) and OUT/finetune.json.
"""

CONFIG = "condense.train.transfer:TransferConfig"


def split_overrides(pairs: dict[str, Any], factory: Any) -> tuple[dict[str, Any], dict[str, Any]]:
    """(config fields, task options) of the --set pairs: names the task factory takes go to the task."""
    import dataclasses

    from condense.cli.common import config_class

    fields = {f.name for f in dataclasses.fields(config_class(CONFIG))}
    takes = set(inspect.signature(factory).parameters) if factory is not None else set()
    cfg = {k: v for k, v in pairs.items() if k in fields or k not in takes}
    return cfg, {k: v for k, v in pairs.items() if k not in cfg}


def cmd_finetune(args: argparse.Namespace) -> int:
    from condense.core.outputs import check_output_dir
    from condense.tasks import TASKS, _import_factory, get_task
    from condense.train.transfer import compare_transfer

    check_output_dir(args.out, kind="finetune")
    pairs = task_options(args.set, flag="--set", example="lr_decay=0.8") if args.set else {}
    factory = None  # the task factory, whose options --set may give
    if args.task in TASKS:
        factory = _import_factory(TASKS.get(args.task).factory, what="task factory")
    elif ":" in args.task and not args.task.startswith("hf:"):
        factory = _import_factory(args.task, what="task factory")
    fields, options = split_overrides(pairs, factory)
    if args.steps is not None:
        fields["steps"] = args.steps
    task = get_task(args.task, **{**task_options(args.task_option), **options})
    cfg = build_config_at(CONFIG, {**task.extras.get("transfer", {}), **fields})  # the task's suggestions first
    if task.primary_metric is None:
        raise CondenseError(f"task {task.name!r} has no primary metric to compare the runs on")
    _, rows = compare_transfer(task, cfg, scratch=not args.no_scratch, out=args.out, device=args.device)
    target = f" to {task.primary_metric} {cfg.target}" if cfg.target is not None else ""
    print(f"| start | {task.primary_metric} | train time | samples seen | steps{target} | samples{target} | "
          f"time{target} |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        miss = "not reached"
        print(f"| {r.variant} | {r.accuracy:.4f} | {r.train_s:.1f} s | {r.samples} | "
              f"{r.step_to_target if r.step_to_target is not None else miss} | "
              f"{r.samples_to_target if r.samples_to_target is not None else miss} | "
              f"{f'{r.time_to_target_s:.1f} s' if r.time_to_target_s is not None else miss} |")
    print(json.dumps({"config": {k: v for k, v in cfg.to_dict().items() if k in ("steps", "lr", "head_lr", "lr_decay",
                                                                                 "freeze", "target")}}))
    print(f"outputs in {args.out} (model/ loads with the same outputs)")
    return 0


def add_parser(sub: Any) -> None:
    p = add_command(sub, "finetune", cmd_finetune, "transfer learning: fine-tune a pretrained model with a new head "
                    "(frozen layers, layer-wise learning rates) beside the same model trained from scratch",
                    epilog=EPILOG)
    add_task_args(p)
    p.add_argument("--out", required=True, metavar="DIR", help="run folder (model/, finetune.json)")
    p.add_argument("--steps", type=positive_int, default=None, help="optimizer steps (default: TransferConfig's, 40)")
    p.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE",
                   help="a TransferConfig field or a task option (repeatable), e.g. --set labels_per_class=10")
    p.add_argument("--no-scratch", action="store_true", help="skip the from-scratch comparison run")
    p.add_argument("--device", type=device, default="cpu", help="cpu or cuda[:N]")
