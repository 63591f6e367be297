"""The training loop every technique shares: optimizer, LR warm-up + schedule, gradient clipping, progress.

Deliberately small: `fit(model, batches, loss_fn, cfg)` cycles through batches for `cfg.steps` optimizer steps and
returns the loss of every step. Techniques supply the loss (task loss, distillation loss, ...).
"""
from __future__ import annotations

import math
from typing import Any, Callable, Iterable

import torch
from torch import nn

from condense import progress
from condense.core.config import config
from condense.errors import ConfigError

OPTIMIZERS: dict[str, Callable[..., torch.optim.Optimizer]] = {
    "adamw": torch.optim.AdamW,
    "adam": torch.optim.Adam,
    "sgd": lambda params, lr, weight_decay: torch.optim.SGD(params, lr=lr, momentum=0.9, weight_decay=weight_decay),
}
SCHEDULES = ("constant", "cosine", "linear")


@config
class FitConfig:
    """How to train.

    Example:
        >>> FitConfig(steps=200, lr=1e-3, schedule="cosine").warmup_steps
        0
    """

    steps: int = 100
    lr: float = 1e-3
    optimizer: str = "adamw"
    weight_decay: float = 0.0
    grad_clip: float | None = 1.0
    warmup_steps: int = 0
    schedule: str = "constant"
    seed: int = 0

    def __post_init__(self) -> None:
        if self.steps < 0:
            raise ConfigError(f"steps must be >= 0, got {self.steps}")
        if not self.lr > 0:
            raise ConfigError(f"lr must be > 0, got {self.lr}")
        if self.optimizer not in OPTIMIZERS:
            raise ConfigError(f"unknown optimizer {self.optimizer!r}; choose one of {sorted(OPTIMIZERS)}")
        if self.schedule not in SCHEDULES:
            raise ConfigError(f"unknown schedule {self.schedule!r}; choose one of {list(SCHEDULES)}")


def lr_factor(step: int, cfg: FitConfig) -> float:
    """Multiplier of the base LR at `step` (0-based): linear warm-up, then the schedule down to 0.1x."""
    if cfg.warmup_steps and step < cfg.warmup_steps:
        return (step + 1) / cfg.warmup_steps
    span = max(cfg.steps - cfg.warmup_steps, 1)
    t = min(max(step - cfg.warmup_steps, 0) / span, 1.0)
    if cfg.schedule == "cosine":
        return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * t))
    if cfg.schedule == "linear":
        return 1.0 - 0.9 * t
    return 1.0


def _to(batch: Any, device: torch.device) -> Any:
    if isinstance(batch, torch.Tensor):
        return batch.to(device)
    if isinstance(batch, (tuple, list)):
        return type(batch)(_to(b, device) for b in batch)
    if isinstance(batch, dict):
        return {k: _to(v, device) for k, v in batch.items()}
    return batch


def fit(model: nn.Module, batches: Callable[[], Iterable[Any]] | Iterable[Any],
        loss_fn: Callable[[nn.Module, Any], torch.Tensor], cfg: FitConfig = FitConfig(), *,
        params: Iterable[nn.Parameter] | None = None, description: str = "training") -> list[float]:
    """Train `model` for `cfg.steps` steps, cycling through `batches`; returns every step's loss.

    Args:
        batches: an iterable, or a zero-argument callable returning a fresh iterable each epoch.
        loss_fn: `loss_fn(model, batch) -> scalar tensor`.
        params: parameters to optimise (default: all that require grad).

    Example:
        >>> net = nn.Linear(2, 1)
        >>> data = [(torch.randn(8, 2), torch.randn(8, 1))]
        >>> losses = fit(net, data, lambda m, b: ((m(b[0]) - b[1]) ** 2).mean(), FitConfig(steps=5, lr=0.1))
        >>> len(losses)
        5
    """
    torch.manual_seed(cfg.seed)
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    params = [p for p in (params if params is not None else model.parameters()) if p.requires_grad]
    if not params:
        raise ConfigError("nothing to train: no parameter requires grad")
    opt = OPTIMIZERS[cfg.optimizer](params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: lr_factor(s, cfg))
    make = batches if callable(batches) else (lambda: batches)
    losses: list[float] = []
    was_training = model.training
    model.train()
    it = iter(make())
    with progress.steps(description, cfg.steps) as bar:
        while len(losses) < cfg.steps:
            try:
                batch = next(it)
            except StopIteration:
                it = iter(make())
                try:
                    batch = next(it)
                except StopIteration:
                    raise ConfigError("the training data yielded no batches") from None
            loss = loss_fn(model, _to(batch, device))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if cfg.grad_clip:
                torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)
            opt.step()
            sched.step()
            losses.append(float(loss.detach()))
            bar.start(f"loss {losses[-1]:.4f}")
            bar.advance()
    model.train(was_training)
    return losses
