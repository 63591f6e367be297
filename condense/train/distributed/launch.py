"""Launch `condense train` on N processes per node with torchrun (torch.distributed.run).

One machine: `condense train --nproc 2 ...` runs torchrun --standalone (a free port on 127.0.0.1). Several
machines (or several "nodes" on one): the usual torchrun rendezvous flags, the same on every node except
--node-rank:
    condense train --nproc 1 --nnodes 2 --node-rank 0 --master-addr HOST0 --master-port 29500 ...   # on HOST0
    condense train --nproc 1 --nnodes 2 --node-rank 1 --master-addr HOST0 --master-port 29500 ...   # on HOST1
torchrun sets RANK/WORLD_SIZE/LOCAL_RANK/MASTER_* for each worker; the worker joins the group with gloo on CPU and
NCCL on CUDA (`init_from_env`).
"""
from __future__ import annotations

import os
import subprocess
import sys

from condense.errors import ConfigError


def available_slots(device: str) -> int:
    """Processes this machine can run for `device`: CUDA GPUs, or CPUs this process may use."""
    if device.startswith("cuda"):
        import torch

        return torch.cuda.device_count()
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def check_nproc(nproc: int, device: str) -> None:
    """Raise a ConfigError naming the fix when `nproc` processes do not fit on this machine.

    Example:
        >>> check_nproc(1, "cpu")
    """
    if nproc < 1:
        raise ConfigError(f"--nproc must be >= 1, got {nproc}")
    slots = available_slots(device)
    what = "CUDA GPUs" if device.startswith("cuda") else "CPUs"
    if nproc > slots:
        raise ConfigError(f"--nproc {nproc} is more than this machine has ({slots} {what}); use --nproc {slots} "
                          "or fewer, or spread the processes over nodes with --nnodes")


def torchrun_argv(nproc: int, worker_args: list[str], *, nnodes: int = 1, node_rank: int = 0,
                  master_addr: str | None = None, master_port: int | None = None) -> list[str]:
    """The torchrun command line running `python -m condense train WORKER_ARGS` on every process.

    Example:
        >>> torchrun_argv(2, ["--task", "digits"])[3:6]
        ['--nproc-per-node', '2', '--standalone']
    """
    argv = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", str(nproc)]
    if nnodes == 1 and master_addr is None:
        argv.append("--standalone")
    else:
        argv += ["--nnodes", str(nnodes), "--node-rank", str(node_rank),
                 "--master-addr", master_addr or "127.0.0.1", "--master-port", str(master_port or 29500)]
    return argv + ["-m", "condense", "train", *worker_args]


def launch(nproc: int, worker_args: list[str], *, device: str = "cpu", nnodes: int = 1, node_rank: int = 0,
           master_addr: str | None = None, master_port: int | None = None) -> int:
    """Run torchrun and wait; returns its exit code (non-zero when any worker failed)."""
    check_nproc(nproc, device)
    if nnodes > 1 and not 0 <= node_rank < nnodes:
        raise ConfigError(f"--node-rank must be in 0..{nnodes - 1}, got {node_rank}")
    env = dict(os.environ, OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "1"))
    return subprocess.call(torchrun_argv(nproc, worker_args, nnodes=nnodes, node_rank=node_rank,
                                         master_addr=master_addr, master_port=master_port), env=env)
