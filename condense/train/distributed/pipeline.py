"""Model parallelism for the transformer tasks: pipeline stages across processes (torch.distributed.pipelining).

Why pipeline stages rather than tensor parallelism (DTensor): a pipeline only sends each stage's activations to the
next process (point-to-point send/recv), which gloo supports on CPU, and it leaves the model code untouched — a
stage is a contiguous slice of blocks. Tensor parallelism would shard every attention and MLP matrix, needs
all-reduces inside each block (two per block per pass, latency-bound on gloo/CPU) and an attention module that
knows it holds n_head / world heads; our GPT computes its head split from its config, so it would need changes.

`pipeline_fit` trains a GPT split into `world` stages with the GPipe schedule: each step's batch is cut into
`n_microbatches` micro-batches; gradients are averaged over them (`scale_grads`), so a step equals one step on the
whole batch in a single process (checked in tests against `fit`).
"""
from __future__ import annotations

from typing import Any, Callable, Iterable

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from condense.errors import ConfigError
from condense.train.strategies import TrainingStrategy, register_training_strategy
from condense.train.trainer import TrainResult, _peak_memory_mb


class GPTStage(nn.Module):
    """Blocks [start, end) of a GPT; the first stage also embeds token ids, the last also returns logits."""

    def __init__(self, gpt: nn.Module, start: int, end: int):
        super().__init__()
        self.first, self.last, self.start = start == 0, end == len(gpt.blocks), start
        self.wte = gpt.wte if self.first else None
        self.wpe = gpt.wpe if self.first else None
        self.blocks = nn.ModuleList(gpt.blocks[start:end])
        self.ln_f = gpt.ln_f if self.last else None
        self.lm_head = gpt.lm_head if self.last else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.first:  # x: token ids (B, T)
            pos = torch.arange(x.shape[1], device=x.device)
            x = self.wte(x) + self.wpe(pos)  # (B, T, C)
        for i, block in enumerate(self.blocks):
            x = block(x, None, self.start + i)  # (B, T, C)
        if self.last:
            x = self.lm_head(self.ln_f(x))  # (B, T, V)
        return x


def stage_bounds(n_layer: int, world: int) -> list[tuple[int, int]]:
    """Contiguous, as even as possible block ranges for `world` stages.

    Example:
        >>> stage_bounds(5, 2)
        [(0, 3), (3, 5)]
    """
    if world > n_layer:
        raise ConfigError(f"a pipeline of {world} stages needs at least {world} blocks; the model has {n_layer}; "
                          "use fewer processes")
    sizes = [n_layer // world + (1 if r < n_layer % world else 0) for r in range(world)]
    starts = [sum(sizes[:r]) for r in range(world)]
    return [(s, s + n) for s, n in zip(starts, sizes)]


def _lm_loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), targets.reshape(-1))


def pipeline_fit(model: nn.Module, batches: Callable[[], Iterable[Any]] | Iterable[Any], cfg: Any, *,
                 n_microbatches: int = 4) -> tuple[GPTStage, list[float]]:
    """Train this process's stage of GPT `model` for `cfg.steps` steps; every process calls it (torchrun).

    Every process reads the same `(x, y)` batches; stage 0 consumes x, the last stage y. Returns (this stage,
    the loss of every step, broadcast from the last stage). Gradient clipping uses the global norm over stages.
    """
    from torch.distributed.pipelining import PipelineStage, ScheduleGPipe

    from condense.train.optim import build_optimizer
    from condense.train.distributed import World
    from condense.train.schedules import lr_factor
    from condense.train.trainer import _Batches

    if not dist.is_initialized():
        raise ConfigError("pipeline parallelism needs several processes: launch with `condense train --nproc N`")
    rank, world = dist.get_rank(), dist.get_world_size()
    start, end = stage_bounds(len(model.blocks), world)[rank]
    stage_mod = GPTStage(model, start, end).train()
    device = next(stage_mod.parameters()).device
    stage = PipelineStage(stage_mod, rank, world, device)
    schedule = ScheduleGPipe(stage, n_microbatches=n_microbatches, loss_fn=_lm_loss)
    params = [p for p in stage_mod.parameters() if p.requires_grad]
    opt = build_optimizer(params, cfg)
    base = [g["lr"] for g in opt.param_groups]
    data = _Batches(batches, World())  # a world of one: every process reads every batch
    losses: list[float] = []
    for step in range(cfg.steps):
        x, y = data.next()
        for g, b in zip(opt.param_groups, base):
            g["lr"] = b * lr_factor(step, cfg)
        opt.zero_grad(set_to_none=True)
        mb: list[torch.Tensor] = []
        if rank == 0 and world > 1:
            schedule.step(x.to(device))
        elif rank == world - 1:
            schedule.step(*((x.to(device),) if world == 1 else ()), target=y.to(device), losses=mb)
        else:
            schedule.step()
        if cfg.grad_clip:
            sq = torch.stack([p.grad.pow(2).sum() for p in params if p.grad is not None]).sum().reshape(1)
            dist.all_reduce(sq)
            scale = min(1.0, cfg.grad_clip / (float(sq.sqrt()) + 1e-6))
            for p in params:
                if p.grad is not None:
                    p.grad.mul_(scale)
        opt.step()
        loss = torch.stack([m.detach() for m in mb]).mean().reshape(1) if mb else torch.zeros(1, device=device)
        dist.broadcast(loss, src=world - 1)
        losses.append(float(loss))
    return stage_mod, losses


@register_training_strategy("pipeline")
class PipelineTraining(TrainingStrategy):
    """Pipeline-parallel training of a GPT (every process a stage), then the stages' weights gathered on rank 0.
    Plain training only: fp32, no checkpoints, evaluation, early stopping or gradient compression."""

    def check(self, cfg: Any) -> None:
        if (cfg.checkpoint_every or cfg.eval_every or cfg.patience or cfg.comm_hook != "none" or cfg.grad_accum != 1
                or cfg.batch_schedule != "constant" or cfg.precision == "fp16"):
            raise ConfigError("strategy='pipeline' supports plain training only: leave checkpoint_every, "
                              "eval_every, patience, comm_hook, grad_accum, batch_schedule and fp16 at their defaults")

    def run(self, task: Any, model: nn.Module, cfg: Any, *, device: Any, out: Any, resume: Any) -> TrainResult:
        import time

        from condense.train.distributed import init_from_env

        if resume is not None:
            raise ConfigError("--resume is not supported with strategy='pipeline'; use ddp or fsdp")
        if not hasattr(model, "blocks"):
            raise ConfigError(f"strategy='pipeline' splits a transformer's blocks; task {task.name!r} has none "
                              "(use ddp or fsdp)")
        world = init_from_env(device)
        t0 = time.perf_counter()
        stage, losses = pipeline_fit(model, task.train_data, cfg, n_microbatches=cfg.n_microbatches)
        train_s = time.perf_counter() - t0
        names = {id(p): n for n, p in model.named_parameters()}
        mine = {names[id(p)]: p.detach().cpu() for p in stage.parameters()}
        parts: list = [None] * world.size if world.is_main else None  # type: ignore[assignment]
        dist.gather_object(mine, parts, dst=0)
        if world.is_main:
            with torch.no_grad():
                params = dict(model.named_parameters())
                for part in parts:
                    for n, v in part.items():
                        params[n].copy_(v)
        x = next(iter(task.train_data()))[0]  # every process reads the same batches: the world trains on these
        return TrainResult(losses=losses, steps=len(losses), train_s=train_s, wall_s=train_s, precision="fp32",
                           world_size=world.size, samples=len(losses) * x.shape[0],
                           tokens=len(losses) * (x.numel() if not x.is_floating_point() else 0),
                           peak_memory_mb=_peak_memory_mb(torch.device(device)))
