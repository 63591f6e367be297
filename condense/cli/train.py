"""`condense train`: train a task's model (mixed precision, schedules, checkpoints, DDP/FSDP through torchrun)."""
from __future__ import annotations

import argparse
import json
import os
from typing import Any

from condense.cli.common import (add_command, add_task_args, build_config_at, device, non_negative_int, port,
                                 positive_int, task_of, task_options)
from condense.errors import CondenseError

EPILOG = """examples:
  condense train --task digits --steps 300 --set schedule=cosine --set warmup_steps=20 --out runs/train-digits
  condense train --task digits --set eval_every=20 --set target=0.97 --set checkpoint_every=50 --out runs/d
  condense train --task digits --resume runs/d --out runs/d            # continue from the latest checkpoint
  # 5% of the labels, augmentation, FixMatch on the unlabelled rest:
  condense train --task digits --task-option labels_fraction=0.05 --set augment=auto \\
      --set 'semi={"method": "fixmatch", "threshold": 0.9, "mu": 3}' --out runs/semi
  condense train --task tinygpt --task-option preset=tiny --nproc 2 --set comm_hook=powersgd --out runs/g
  condense train --task tinygpt --task-option preset=tiny --nproc 2 --set strategy=fsdp --out runs/g-fsdp
  condense train --task tinygpt --task-option preset=tiny --nproc 2 --set strategy=pipeline --out runs/pp
  # parameter server on rank 0 (weights + optimizer state), every process a worker; int8-compressed pushes:
  condense train --task digits --strategy ps --nproc 2 --set comm_hook=int8 --out runs/ps
  condense train --task digits --strategy ps --nproc 2 --set ps_mode=async --set max_staleness=2 --out runs/ps-a
  # two nodes (run on each, --node-rank 0 / 1; the address of node 0):
  condense train --task digits --nproc 1 --nnodes 2 --node-rank 0 --master-addr 10.0.0.1 --master-port 29500 \\
      --out runs/mn
Any TrainConfig field: --set FIELD=VALUE (optimizer, lr, schedule, batch_schedule, precision, grad_accum, ...).
Distribution fields: strategy (auto|single|ddp|fsdp|pipeline|ps), comm_hook (DDP hook or ps push codec:
none|fp16|bf16|int8|powersgd), powersgd_rank, powersgd_start, ddp_bucket_mb, n_microbatches,
ps_mode (sync|async), max_staleness (async: gradients older than this many updates are dropped).
Outputs: OUT/metrics.jsonl, OUT/tb (tensorboard --logdir OUT/tb), OUT/checkpoints, OUT/model, OUT/train.json.
"""


def _worker_args(args: argparse.Namespace) -> list[str]:
    """The `condense train` arguments each torchrun worker gets (the same run, without the launch flags)."""
    out = ["--task", args.task, "--out", args.out, "--device", args.device]
    for o in args.task_option:
        out += ["--task-option", o]
    for o in args.set:
        out += ["--set", o]
    if args.steps is not None:
        out += ["--steps", str(args.steps)]
    if args.strategy is not None:
        out += ["--strategy", args.strategy]
    if args.resume:
        out += ["--resume", args.resume]
    if args.finetune:
        out.append("--finetune")
    return out


def cmd_train(args: argparse.Namespace) -> int:
    from condense.core.outputs import check_output_dir
    from condense.errors import ConfigError

    check_output_dir(args.out, kind="train")  # before any work (torchrun workers: every state they leave passes)
    overrides = task_options(args.set, flag="--set", example="lr=3e-3") if args.set else {}
    if args.steps is not None:
        overrides["steps"] = args.steps
    if args.strategy is not None:
        overrides["strategy"] = args.strategy
    cfg = build_config_at("condense.train.api:TrainConfig", overrides)
    processes = int(os.environ["WORLD_SIZE"]) if "RANK" in os.environ else (args.nproc or 1) * args.nnodes
    if cfg.strategy == "ps" and processes < 2:
        raise CondenseError(f"strategy 'ps' needs at least 2 processes (rank 0 hosts the server and trains too), got "
                            f"{processes}; add --nproc 2, or use --strategy single")
    if args.node_rank >= args.nnodes:
        raise CondenseError(f"--node-rank {args.node_rank} is not below --nnodes {args.nnodes}; number the nodes "
                            f"0..{args.nnodes - 1}")
    if args.nproc is not None or args.nnodes > 1:
        from condense.train.distributed.launch import launch

        task_of(args)  # an unknown task fails here, once, not in every worker
        code = launch(args.nproc or 1, _worker_args(args), device=args.device, nnodes=args.nnodes,
                      node_rank=args.node_rank, master_addr=args.master_addr, master_port=args.master_port)
        if code:
            raise CondenseError(f"a training process failed (exit code {code}); its message is above")
        return 0
    from condense.train.api import train

    task = task_of(args)
    if task.train_data is None or task.loss is None:
        raise ConfigError(f"task {task.name!r} has no training data or loss; `condense train` needs a task with "
                          "train_data and loss (digits, tinygpt)")
    _, result = train(task, cfg, out=args.out, resume=args.resume, device=args.device,
                      from_scratch=not args.finetune)
    if int(os.environ.get("RANK", 0)) == 0:
        s = result.summary()
        keep = ("steps", "final_loss", "train_s", "samples_per_s", "tokens_per_s", "peak_memory_mb", "precision",
                "time_to_target_s", "step_to_target", "stopped_early", "bytes_per_step", "world_size", "stats")
        print(json.dumps({k: s[k] for k in keep if s.get(k) not in (None, {})}, indent=2))
        if result.evals:
            print(json.dumps(result.evals[-1]))
        print(f"outputs in {args.out}")
    return 0


def add_parser(sub: Any) -> None:
    p = add_command(sub, "train", cmd_train, "train a task's model: mixed precision, schedules, checkpoints, "
                    "DDP/FSDP (torchrun)", epilog=EPILOG)
    add_task_args(p)
    p.add_argument("--out", required=True, metavar="DIR", help="run folder (metrics, checkpoints, model)")
    p.add_argument("--steps", type=positive_int, default=None, help="optimizer steps (default: TrainConfig's)")
    p.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE",
                   help="any TrainConfig field (repeatable), e.g. --set lr=3e-3 --set precision=bf16")
    p.add_argument("--resume", metavar="DIR", help="continue from the latest checkpoint in DIR (a run folder)")
    p.add_argument("--strategy", default=None, metavar="NAME",
                   help="how the processes share the work: auto | single | ddp | fsdp | pipeline | ps (parameter "
                   "server; with --nproc 2+, --set ps_mode=sync|async, --set max_staleness=N); same as --set "
                   "strategy=NAME")
    p.add_argument("--finetune", action="store_true", help="start from the task's trained model, not from scratch")
    p.add_argument("--device", type=device, default="cpu", help="cpu or cuda[:N]")
    p.add_argument("--nproc", type=positive_int, default=None, help="processes per node, launched with torchrun")
    p.add_argument("--nnodes", type=positive_int, default=1, help="number of nodes (torchrun rendezvous)")
    p.add_argument("--node-rank", type=non_negative_int, default=0, help="this node's rank, 0..nnodes-1")
    p.add_argument("--master-addr", default=None, help="address of node 0 (multi-node)")
    p.add_argument("--master-port", type=port, default=None, help="port on node 0 (multi-node; default 29500)")
