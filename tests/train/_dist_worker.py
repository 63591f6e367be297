"""Runs in each of 2 spawned processes (gloo): DDP, comm hooks, FSDP2 and distributed checkpoints.

Results go to JSON/pt files in `out` that tests/train/test_distributed.py compares with single-process references.
"""
import json
import os
import socket
from pathlib import Path

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

def free_port() -> int:
    """A TCP port free on 127.0.0.1 now, for a test's rendezvous (MASTER_PORT)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


HOOKS = ("allreduce", "fp16", "bf16", "int8", "powersgd")


class Blocks(nn.Module):
    def __init__(self, width=16, depth=3):
        super().__init__()
        self.inp = nn.Linear(4, width)
        self.blocks = nn.ModuleList(nn.Sequential(nn.Linear(width, width), nn.Tanh()) for _ in range(depth))
        self.out = nn.Linear(width, 1)

    def forward(self, x):
        h = self.inp(x)
        for b in self.blocks:
            h = h + b(h)
        return self.out(h)


def make_model(kind="linear", seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 2)) if kind == "linear" else Blocks()


def global_batches(n=5, per_rank=4, world=2):
    g = torch.Generator().manual_seed(0)
    out = []
    for _ in range(n):
        x = torch.randn(per_rank * world, 4, generator=g)
        out.append((x, torch.stack([x.sum(1), x[:, 0] * x[:, 1]], 1)))
    return out


def rank_batches(world=2):
    """Global batch i split into `world` consecutive halves: rank r's i-th batch is half r of global batch i."""
    out = []
    for x, y in global_batches(world=world):
        out += list(zip(x.chunk(world), y.chunk(world)))
    return out


def mse(m, b):
    return F.mse_loss(m(b[0]), b[1])


def mse1(m, b):
    return F.mse_loss(m(b[0]), b[1][:, :1])


PP_CFG = dict(lr=0.05, optimizer="sgd", grad_clip=0.5, precision="fp32")


def tiny_gpt():
    from condense.tasks.gpt import GPT, GPTConfig

    torch.manual_seed(0)
    return GPT(GPTConfig(block_size=8, n_layer=2, n_head=2, n_embd=16))


def gpt_batches():
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (4, 8, 8), generator=g)  # 4 batches of (8, T=8)
    return [(b, torch.roll(b, -1, 1)) for b in x]


def worker(rank, world, port, out):
    from condense.train.api import TrainConfig
    from condense.train.trainer import run_loop

    torch.set_num_threads(1)
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank), MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port))
    out = Path(out)
    res = {}
    base = dict(precision="fp32", tensorboard=False, grad_clip=None)
    # 1. DDP, per-process batch B, plain SGD with momentum
    model = make_model()
    run_loop(model, rank_batches(), mse, TrainConfig(steps=5, lr=0.1, optimizer="sgd", strategy="ddp", **base))
    if rank == 0:
        torch.save(model.state_dict(), out / "ddp.pt")
    # 2. bytes per step through each compression hook
    for hook in HOOKS:
        r = run_loop(make_model(), rank_batches(), mse,
                     TrainConfig(steps=4, lr=0.05, strategy="ddp", comm_hook=hook, powersgd_rank=1, **base))
        res[hook] = {"bytes": r.bytes_per_step, "losses": r.losses}
    # PowerSGD with one bucket per parameter (several collectives in flight per step)
    r = run_loop(make_model("blocks"), rank_batches(), mse1, TrainConfig(
        steps=4, lr=0.05, strategy="ddp", comm_hook="powersgd", powersgd_rank=1, ddp_bucket_mb=1e-6, **base))
    res["powersgd_buckets"] = {"bytes": r.bytes_per_step, "losses": r.losses}
    # 3. FSDP2 vs DDP loss curves on a model with blocks; FSDP checkpoint + resume
    cfg = dict(steps=6, lr=0.01, optimizer="adamw", **base)
    res["ddp_curve"] = run_loop(make_model("blocks"), rank_batches(), mse1,
                                TrainConfig(strategy="ddp", **cfg)).losses
    res["fsdp_curve"] = run_loop(make_model("blocks"), rank_batches(), mse1, TrainConfig(strategy="fsdp", **cfg),
                                 out=out / "fsdp", ).losses
    run_loop(make_model("blocks"), rank_batches(), mse1, TrainConfig(strategy="fsdp", checkpoint_every=3, **cfg),
             out=out / "fsdp-ckpt")
    res["fsdp_resumed"] = run_loop(make_model("blocks"), rank_batches(), mse1, TrainConfig(strategy="fsdp", **cfg),
                                   resume=out / "fsdp-ckpt/checkpoints/step-00000003").losses
    # 4. pipeline stages (GPipe, 4 micro-batches): rank 0 holds the embeddings + block 0, rank 1 block 1 + head
    from condense.train.distributed.pipeline import pipeline_fit

    gpt = tiny_gpt()
    _, res["pp_losses"] = pipeline_fit(gpt, gpt_batches(), TrainConfig(steps=4, **PP_CFG), n_microbatches=4)
    torch.save(gpt.state_dict(), out / f"pp-rank{rank}.pt")
    if rank == 0:
        (out / "results.json").write_text(json.dumps(res))
    dist.barrier()
    dist.destroy_process_group()
