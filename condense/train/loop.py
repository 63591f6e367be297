"""The training loop every technique shares (`fit`) and its config (`FitConfig`).

`fit(model, batches, loss_fn, cfg)` cycles through batches for `cfg.steps` optimizer steps and returns the loss of
every step. Techniques supply the loss (task loss, distillation loss, ...). The machinery (optimizers, schedules,
mixed precision, gradient accumulation, checkpoints, distributed wrappers) lives in the sibling modules; the
engine is `condense.train.trainer.run_loop`, which `fit` calls with no checkpoints or evaluation.
"""
from __future__ import annotations

from typing import Any, Callable, Iterable

import torch
from torch import nn

from condense.core.transforms import register_trainer
from condense.core.config import check_float, check_int, config, show
from condense.errors import ConfigError
from condense.train.augment import AUGMENTATIONS
from condense.train.optim import OPTIMIZERS
from condense.train.precision import PRECISIONS
from condense.train.schedules import BATCH_SCHEDULES, LR_SCHEDULES, lr_factor

__all__ = ["FitConfig", "fit", "lr_factor", "SCHEDULES"]

SCHEDULES = tuple(LR_SCHEDULES)


@config
class FitConfig:
    """How to train. The first eight fields keep their historical meaning and defaults.

    Args:
        steps: optimizer steps. lr: base learning rate. optimizer: sgd | adam | adamw | adagrad | rmsprop.
        weight_decay, grad_clip (max gradient norm; None: off), warmup_steps (linear warm-up), seed.
        schedule: LR schedule after warm-up: constant | cosine | linear | step | exponential | onecycle;
            decaying schedules are clipped to [min_lr_ratio, max_lr_ratio] x lr; step/exponential use lr_gamma
            (every lr_step_size steps for "step").
        momentum, nesterov: SGD (momentum also RMSprop). betas, eps: Adam/AdamW. decay_matrices_only: weight
            decay on parameters with dim >= 2 only.
        grad_accum: data batches whose gradients are averaged per step.
        batch_schedule: constant | step | exponential: the number of data batches per step grows by
            batch_growth every batch_every steps (step) or continuously (exponential), capped at batch_max.
        precision: fp32 | bf16 (autocast) | fp16 (CUDA, with gradient scaling) | auto (bf16 only where measured
            faster on this machine).
        augment: a registered augmentation of every training batch's inputs (`condense.train.augment`: image,
            image-shift, image-strong, image-heavy, tokens, tokens-light, tokens-span), "auto" (the one the task's inputs
            declare) or None (off). Draws are seeded by `seed`.
        ema: decay (e.g. 0.99) of an exponential moving average of the weights (`condense.train.ema`): evaluation
            during training runs on the averaged weights and the model ends training holding them; None: off.

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
    momentum: float = 0.9
    nesterov: bool = False
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8
    decay_matrices_only: bool = False
    min_lr_ratio: float = 0.1
    max_lr_ratio: float = 1.0
    lr_gamma: float = 0.5
    lr_step_size: int = 100
    grad_accum: int = 1
    batch_schedule: str = "constant"
    batch_growth: float = 2.0
    batch_every: int = 100
    batch_max: int = 8
    precision: str = "fp32"
    augment: str | None = None
    ema: float | None = None

    def __post_init__(self) -> None:
        check_int(self, "steps", lo=0, example=100)
        check_float(self, "lr", lo=0, lo_open=True, example=1e-3)
        check_float(self, "weight_decay", lo=0, example=0.01)
        check_float(self, "grad_clip", lo=0, lo_open=True, optional=True, example=1.0)
        check_int(self, "warmup_steps", lo=0, example=10)
        check_int(self, "seed", lo=0, hi=2**32 - 1, example=0)
        check_float(self, "momentum", lo=0, hi=1, hi_open=True, example=0.9)
        b = self.betas
        if isinstance(b, list):
            b = tuple(b)
            object.__setattr__(self, "betas", b)
        if not isinstance(b, tuple) or len(b) != 2 or any(
                isinstance(x, bool) or not isinstance(x, (int, float)) or not 0 <= x < 1 for x in b):
            raise ConfigError(f"{type(self).__name__}.betas must be two numbers in [0, 1), got {show(b)}; "
                              "e.g. betas=(0.9, 0.999)")
        check_float(self, "eps", lo=0, lo_open=True, example=1e-8)
        check_float(self, "min_lr_ratio", lo=0, example=0.1)
        check_float(self, "max_lr_ratio", lo=0, example=1.0)
        if not self.min_lr_ratio <= self.max_lr_ratio:
            raise ConfigError(f"FitConfig needs 0 <= min_lr_ratio <= max_lr_ratio, got {self.min_lr_ratio}, "
                              f"{self.max_lr_ratio}; e.g. min_lr_ratio=0.1, max_lr_ratio=1.0")
        check_float(self, "lr_gamma", lo=0, hi=1, lo_open=True, example=0.5)
        check_int(self, "lr_step_size", lo=1, example=100)
        check_int(self, "grad_accum", lo=1, example=1)
        check_float(self, "batch_growth", lo=1, example=2.0)
        check_int(self, "batch_every", lo=1, example=100)
        check_int(self, "batch_max", lo=1, example=8)
        check_float(self, "ema", lo=0, hi=1, hi_open=True, optional=True, example=0.99)
        for name, choices in (("optimizer", sorted(OPTIMIZERS)), ("schedule", list(LR_SCHEDULES)),
                              ("batch_schedule", list(BATCH_SCHEDULES)), ("precision", list(PRECISIONS))):
            v = getattr(self, name)
            if not isinstance(v, str) or v not in choices:
                raise ConfigError(f"{type(self).__name__}.{name}: unknown {name} {show(v)}; choose one of {choices}")
        if self.augment is not None and (not isinstance(self.augment, str) or
                                         (self.augment != "auto" and self.augment not in AUGMENTATIONS)):
            raise ConfigError(f"{type(self).__name__}.augment: unknown augmentation {show(self.augment)}; choose "
                              f"one of {['auto', *AUGMENTATIONS]} or None")


def fit(model: nn.Module, batches: Callable[[], Iterable[Any]] | Iterable[Any],
        loss_fn: Callable[[nn.Module, Any], torch.Tensor], cfg: FitConfig = FitConfig(), *,
        params: Iterable[nn.Parameter] | None = None, description: str = "training",
        input_kind: str | None = None) -> list[float]:
    """Train `model` for `cfg.steps` steps, cycling through `batches`; returns every step's loss.

    Args:
        batches: an iterable, or a zero-argument callable returning a fresh iterable each epoch.
        loss_fn: `loss_fn(model, batch) -> scalar tensor`.
        params: parameters to optimise (default: all that require grad), or parameter groups (dicts with
            "params" and "lr_scale": their learning rate is lr_scale x cfg.lr).
        input_kind: what the batches' inputs are (`Task.input_kind`: image | tokens), for `cfg.augment="auto"`.

    Example:
        >>> net = nn.Linear(2, 1)
        >>> data = [(torch.randn(8, 2), torch.randn(8, 1))]
        >>> losses = fit(net, data, lambda m, b: ((m(b[0]) - b[1]) ** 2).mean(), FitConfig(steps=5, lr=0.1))
        >>> len(losses)
        5
    """
    from condense.train.trainer import run_loop

    return run_loop(model, batches, loss_fn, cfg, params=params, description=description,
                    input_kind=input_kind).losses


register_trainer(fit)  # TransformContext.finetune (core) trains with this loop
