"""`FineTuneConfig`: plain fine-tuning on the task's own data and loss, as a pipeline step.

Why a transform: a recipe may prune or quantize and then train a little to win quality back; the pipeline
measures after every step, so training is a step like any other. It changes weights only, so loading an artifact
replays it as nothing (the weights already hold its effect).

Example:
    >>> from condense.train.finetune import FineTuneConfig
    >>> from condense.train.loop import FitConfig
    >>> FineTuneConfig(finetune=FitConfig(steps=50, lr=1e-4)).to_dict()["finetune"]["steps"]
    50
"""
from __future__ import annotations

from typing import Any

from torch import nn

from condense.core.config import Renamed, check_nested, config
from condense.core.transforms import TransformContext, register_family, register_transform
from condense.train.loop import FitConfig


@config
class FineTuneConfig:
    """Train the model on the task's `train_data` with the task's `loss` (the shared `fit` loop).

    Args:
        finetune: steps, learning rate, optimizer and schedule (`condense.train.loop.FitConfig`; `fit` is its
            deprecated old name).

    Example:
        >>> FineTuneConfig().finetune.steps
        100
    """

    finetune: FitConfig = FitConfig()
    renamed = (Renamed("fit", "finetune"),)

    def __post_init__(self) -> None:
        check_nested(self, "finetune", FitConfig)  # in a recipe: a mapping such as {steps: 100, lr: 1e-4}


def finetune_transform(model: nn.Module, cfg: FineTuneConfig, ctx: TransformContext) -> nn.Module:
    """Fine-tune `model` in place; the first and last losses go to the lineage."""
    losses = ctx.finetune(model, cfg.finetune, description="fine-tuning")
    model.eval()
    tail = losses[-10:]
    ctx.record(steps=len(losses),
               first_loss=round(losses[0], 6) if losses else None,
               last_loss_mean10=round(sum(tail) / len(tail), 6) if tail else None)
    return model


def _replay(model: nn.Module, cfg: FineTuneConfig, details: dict[str, Any]) -> nn.Module:
    return model  # weights only: the saved tensors already hold the fine-tuned values


# -- registered transforms ----------------------------------------------------------------------------------------
register_family("fine-tune", default="task-loss", noun="fine-tuning config")
register_transform(FineTuneConfig, family="fine-tune", name="task-loss", replay=_replay)(finetune_transform)
