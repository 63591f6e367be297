"""Training: one engine used by every technique that trains (fine-tuning, QAT, distillation, the built-in tasks).

`fit` (a loss per step, for techniques), `train` (a Task, with evaluation, checkpoints, metrics, distribution).
"""
from condense.train.loop import FitConfig, fit

__all__ = ["FitConfig", "fit", "TrainConfig", "train"]


def __getattr__(name: str):  # TrainConfig/train pull in the distributed helpers: import them on use
    if name in ("TrainConfig", "train"):
        from condense.train import api

        return getattr(api, name)
    raise AttributeError(name)
