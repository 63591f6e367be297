"""Training strategies: how `train` runs a task for each `TrainConfig.strategy`, in a registry keyed by name.

A strategy checks a config when the config is built (`check`: what it cannot do is refused before any work) and
runs the training (`run`). "auto", "single", "ddp" and "fsdp" run the shared engine (`condense.train.trainer.
run_loop`), which spreads the model with the wrapper of the same name in `condense.train.distributed.strategy`
("auto": DDP when several processes run, else single). "pipeline" registers itself in
`condense.train.distributed.pipeline`. A new strategy registers itself the same way:

    >>> @register_training_strategy("once")
    ... class Once(TrainingStrategy):
    ...     def run(self, task, model, cfg, *, device, out, resume):
    ...         return TrainResult(losses=[float(task.loss(model, next(iter(task.train_data()))))], steps=1)
    >>> "once" in TRAINING_STRATEGIES
    True
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

from condense.core.registry import Registry
from condense.train.distributed.strategy import STRATEGIES
from condense.train.trainer import TrainResult, run_loop


class TrainingStrategy:
    """How a task is trained: `check(cfg)` raises ConfigError for what the strategy cannot do; `run` trains
    `model` in place on the task's `train_data` with its `loss` and returns a TrainResult."""

    def check(self, cfg: Any) -> None:
        """Refuse (ConfigError naming the fix) a TrainConfig this strategy cannot run; called when it is built."""

    def run(self, task: Any, model: nn.Module, cfg: Any, *, device: str | torch.device,
            out: str | Path | None, resume: str | Path | None) -> TrainResult:
        raise NotImplementedError


TRAINING_STRATEGIES: Registry[TrainingStrategy] = Registry("training strategy")


def register_training_strategy(name: str) -> Callable[[type[TrainingStrategy]], type[TrainingStrategy]]:
    """Class decorator: an instance of the decorated TrainingStrategy runs `TrainConfig(strategy=name)`."""

    def deco(cls: type[TrainingStrategy]) -> type[TrainingStrategy]:
        TRAINING_STRATEGIES.register(name, cls())
        return cls

    return deco


class LoopStrategy(TrainingStrategy):
    """The shared loop with evaluation, checkpoints and metrics; the model is spread by the wrapper that
    `cfg.strategy` names in `condense.train.distributed.strategy.STRATEGIES` (whose `check_config` it asks)."""

    def check(self, cfg: Any) -> None:
        if cfg.strategy in STRATEGIES:
            STRATEGIES.get(cfg.strategy).check_config(cfg)

    def run(self, task: Any, model: nn.Module, cfg: Any, *, device: str | torch.device,
            out: str | Path | None, resume: str | Path | None) -> TrainResult:
        evaluate = task.evaluate if (cfg.eval_every or cfg.target is not None or cfg.patience) else None
        return run_loop(model, task.train_data, task.loss, cfg, description=f"training {task.name}", device=device,
                        out=out, resume=resume, evaluate=evaluate, primary=task.primary_metric,
                        higher_is_better=task.higher_is_better, input_kind=task.input_kind)


@register_training_strategy("auto")
class Auto(LoopStrategy):
    """DDP when torchrun started several processes, else one process."""


@register_training_strategy("single")
class SingleProcess(LoopStrategy):
    """One process."""


@register_training_strategy("ddp")
class DataParallel(LoopStrategy):
    """DistributedDataParallel: a full replica per process, gradients averaged (optionally compressed)."""


@register_training_strategy("fsdp")
class FullySharded(LoopStrategy):
    """FSDP2: parameters, gradients and optimizer state sharded over the processes."""
