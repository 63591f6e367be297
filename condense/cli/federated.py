"""`condense federated`: federated training (FedAvg, in process or on Flower) with compressed client updates.

Its flags, epilog and round table live with the technique (condense.federated.cli); this module wires them in.
"""
from __future__ import annotations

import argparse
from typing import Any

from condense.cli.common import add_command, add_task_args, build_config_at, positive_int, show, task_of, \
    task_options


def cmd_federated(args: argparse.Namespace) -> int:
    from condense.federated.api import federated
    from condense.federated.cli import overrides, table

    base = task_options(args.set, flag="--set", example="momentum=0") if args.set else {}
    cfg = build_config_at("condense.federated.config:FederatedConfig", overrides(args, base))
    from condense.core.outputs import check_output_dir

    check_output_dir(args.out, kind="federated")  # before the task is built, as every command does
    task = task_of(args)
    res = federated(task, cfg, out_dir=args.out, resume=True if args.resume else None)
    show(table(res.rows, task.primary_metric))
    print(f"outputs in {args.out}")
    return 0


def add_parser(sub: Any) -> None:
    from condense.federated.cli import add_arguments  # flags only: no Flower import until the command runs

    p = add_command(sub, "federated", cmd_federated, "train federated (Flower, FedAvg) over simulated clients, "
                    "with compressed client updates")
    add_task_args(p)
    add_arguments(p, positive_int)
