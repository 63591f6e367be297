"""Every technique's handlers in one registry keyed by config type name, so a pipeline can apply any step.

Technique packages register here (quantize, and later prune, factorize, ...); `apply_` never needs an if/elif.
A handler is `handler(model, config, ctx) -> model`; `ctx` carries the data a transform may need (calibration
batches, training batches, how to run the model on a batch), so configs stay pure data.
"""
from __future__ import annotations

import importlib
import itertools
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Iterator

import torch
from torch import nn

from condense.core.registry import Registry
from condense.errors import CondenseError

TRANSFORMS: Registry[Callable[[nn.Module, Any, "TransformContext"], nn.Module]] = Registry("transformation config")

# Packages that register transforms when imported (imported on demand).
TECHNIQUE_PACKAGES = ("condense.quantize", "condense.prune", "condense.export", "condense.train",
                      "condense.fusion", "condense.distillation", "condense.factorize", "condense.early_exit")


@dataclass
class TransformContext:
    """What a transformation may use besides the model and its config.

    Args:
        task: the task (gives calibration/training data and how to run a batch), if any.
        calibration: explicit calibration batches (overrides the task's).
    """

    task: Any = None
    calibration: Iterable[Any] | None = None

    def calibration_batches(self, limit: int | None = None, *, what: str = "this transformation") -> list[Any]:
        """Calibration batches (at most `limit`); a clear error if there are none."""
        src: Iterable[Any] | None = self.calibration
        if src is None and self.task is not None and self.task.calibration_data is not None:
            src = self.task.calibration_data()
        batches = list(itertools.islice(iter(src), limit)) if src is not None else []
        if not batches:
            raise CondenseError(f"{what} needs calibration data: pass calibration=[batches] or use a task with "
                                "calibration_data (built-in tasks have it)")
        return batches

    def run_batch(self, model: nn.Module, batch: Any) -> Any:
        """Run `model` on one batch the way the task does (default `model(batch)`)."""
        if self.task is not None:
            return self.task.run_batch(model, batch)
        if isinstance(batch, dict):
            return model(**batch)
        if isinstance(batch, (tuple, list)) and batch and isinstance(batch[0], torch.Tensor):
            return model(*batch)
        return model(batch)

    def run_calibration(self, model: nn.Module, limit: int | None = None, *, what: str = "calibration") -> int:
        """Run `model` over the calibration batches (no grad); returns how many batches ran."""
        batches = self.calibration_batches(limit, what=what)
        with torch.inference_mode():
            for b in batches:
                self.run_batch(model, b)
        return len(batches)

    def finetune(self, model: nn.Module, fit_config: Any, *, description: str = "fine-tuning") -> list[float]:
        """Fine-tune `model` on the task's train_data with the task's loss (the shared `fit` loop)."""
        from condense.train.loop import fit

        if self.task is None or self.task.train_data is None or self.task.loss is None:
            raise CondenseError("fine-tuning needs a task with train_data and loss (digits and tinygpt have them); "
                                "set steps=0 to skip it")
        return fit(model, self.task.train_data, self.task.loss, fit_config, description=description)

    def train_batches(self) -> Iterator[Any]:
        if self.task is None or self.task.train_data is None:
            raise CondenseError("this transformation needs training data: use a task with train_data")
        return iter(self.task.train_data())


def load_techniques() -> None:
    for mod in TECHNIQUE_PACKAGES:
        importlib.import_module(mod)


def apply_(model: nn.Module, config: Any, *, task: Any = None, calibration: Iterable[Any] | None = None) -> nn.Module:
    """Apply the transformation `config` describes to `model` (in place where possible); returns the model."""
    load_techniques()
    ctx = TransformContext(task=task, calibration=calibration)
    return TRANSFORMS.get(type(config).__name__)(model, config, ctx)
