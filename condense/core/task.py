"""A Task bundles what a model is measured and compressed against.

The pipeline only ever talks to a model through its task: build it, feed it batches, evaluate it. That keeps
built-in and user tasks interchangeable, and makes every step measured the same way.
"""
from __future__ import annotations

import copy
import math
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable

import torch
from torch import nn

from condense.core import lineage
from condense.errors import CondenseError


def run_batch(model: nn.Module, batch: Any) -> Any:
    """Run `model` on one batch of *inputs*, by the one batch convention every task and transform shares:

    - a mapping: keyword inputs, `model(**batch)` (a tokenizer's `{"input_ids": ..., "attention_mask": ...}`);
    - a tuple or list whose first item is a tensor: positional inputs, `model(*batch)` (`(input_ids, mask)`);
    - anything else (a tensor, a list of strings, any other object): the one input, `model(batch)`.

    A batch given here holds inputs only. Labelled training batches, `(inputs, target)` as `Task.train_data` and
    distillation's data yield them, are split by whoever reads the target (the task's `loss`, distillation's
    labelled-batch split) before the inputs reach `run_batch`; passing the pair itself would run
    `model(inputs, target)`. A task whose model takes its batch another way sets `Task.run`.

    Example:
        >>> import torch
        >>> run_batch(torch.nn.Linear(4, 2), torch.ones(3, 4)).shape
        torch.Size([3, 2])
        >>> run_batch(lambda a, b: a + b, (torch.ones(2), torch.ones(2))).tolist()
        [2.0, 2.0]
        >>> run_batch(len, ["some text", "more text"])  # a list of texts is one input, not two
        2
    """
    if isinstance(batch, dict):
        return model(**batch)
    if isinstance(batch, (tuple, list)) and batch and isinstance(batch[0], torch.Tensor):
        return model(*batch)
    return model(batch)


@dataclass
class Task:
    """A model, the inputs to time it on, and how to judge its quality.

    Args:
        name: short name shown in tables and saved in artifacts.
        model: the model, or a zero-argument factory returning a fresh one.
        evaluate: `evaluate(model) -> {metric: value}`; must include `primary_metric`.
        primary_metric: the metric that budgets and searches compare.
        higher_is_better: direction of the primary metric.
        inputs: `inputs(batch_size) -> batch`, or one example batch (a tensor, or a tuple/dict of tensors whose
            first dimension is the batch) that is tiled to any batch size.
        run: `run(model, batch)` runs one batch; default: the module-level `run_batch` convention (`**batch`
            for a mapping, `*batch` for a tuple/list starting with a tensor, else `model(batch)`).
        calibration_data: zero-argument callable yielding batches for calibration (quantization, pruning).
        train_data: zero-argument callable yielding `(inputs, targets)` batches for fine-tuning, where available.
        loss: `loss(model, train_batch) -> scalar` for fine-tuning on `train_data` (e.g. cross-entropy).
        generate: for generative tasks, `generate(model, batch_size, new_tokens) -> tokens generated`.
        embed: for encoders, `embed(model, inputs) -> (B, H)` sentence embeddings of one batch of inputs (e.g.
            the mean-pooled last hidden states, which the `hf:` task sets for Hugging Face encoders); embedding
            distillation matches the student's to the teacher's. None: not an encoder, or pooled by default.
        skeleton: builds the model's architecture without training or loading weights; `condense.load` uses it
            so loading an artifact never trains. Defaults to `model`.
        batch_sizes: batch sizes timed by default.
        description: one line for `condense tasks`.
        spec: how to rebuild this task (set for built-in and factory tasks; saved in artifacts).
        input_kind: what `train_data`'s inputs are, for augmentation: "image" (float (B, C, H, W)) or "tokens"
            (integer ids (B, T)); `FitConfig(augment="auto")` picks that kind's augmentation. None: not declared.
        unlabelled_data: zero-argument callable yielding input batches without targets (the training data whose
            labels are held back), for semi-supervised training; None: all training data is labelled.
        offsource_metric: the primary metric measured on a second evaluation source that no training or
            calibration data comes from (e.g. "mrr@10_offsource"), same direction; `evaluate` returns it where that
            source is available. The search checks its budget on it too. None: the task has no second source.

    Example:
        >>> import torch, condense
        >>> net = torch.nn.Linear(4, 2)
        >>> x = torch.randn(8, 4)
        >>> task = condense.Task("toy", net, evaluate=lambda m: {"mse": float(m(x).pow(2).mean())},
        ...                      primary_metric="mse", higher_is_better=False, inputs=x[:1])
        >>> task.batch(3).shape
        torch.Size([3, 4])
    """

    name: str
    model: nn.Module | Callable[[], nn.Module]
    evaluate: Callable[[nn.Module], dict[str, float]]
    primary_metric: str
    higher_is_better: bool = True
    inputs: Any = None
    run: Callable[[nn.Module, Any], Any] | None = None
    calibration_data: Callable[[], Iterable[Any]] | None = None
    train_data: Callable[[], Iterable[Any]] | None = None
    loss: Callable[[nn.Module, Any], torch.Tensor] | None = None
    generate: Callable[[nn.Module, int, int], int] | None = None
    embed: Callable[[nn.Module, Any], torch.Tensor] | None = None
    skeleton: Callable[[], nn.Module] | None = None
    batch_sizes: tuple[int, ...] = (1, 32)
    description: str = ""
    spec: dict[str, Any] | None = None
    extras: dict[str, Any] = field(default_factory=dict)
    input_kind: str | None = None
    unlabelled_data: Callable[[], Iterable[Any]] | None = None
    offsource_metric: str | None = None

    def __post_init__(self) -> None:
        if not self.name or not isinstance(self.name, str):
            raise CondenseError("Task needs a non-empty name, e.g. Task('my-task', ...)")
        if not callable(self.evaluate):
            raise CondenseError("Task.evaluate must be a callable evaluate(model) -> dict of metrics")
        if self.inputs is None:
            raise CondenseError("Task needs inputs: an example batch or a callable inputs(batch_size) -> batch")
        for b in self.batch_sizes:
            check_batch_size(b)
        if self.offsource_metric is not None and (not isinstance(self.offsource_metric, str)
                                                  or self.offsource_metric == self.primary_metric):
            raise CondenseError(f"Task.offsource_metric must be the name of another metric than the primary one "
                                f"({self.primary_metric!r}), got {self.offsource_metric!r}; e.g. "
                                f"'{self.primary_metric}_offsource', or None for no second source")

    # -- models ---------------------------------------------------------------------------------------------
    def build_model(self) -> nn.Module:
        """A fresh model in eval mode, stamped with this task's spec (so artifacts can rebuild it)."""
        if isinstance(self.model, nn.Module):
            m = copy.deepcopy(self.model)
        else:
            m = self.model()
            if not isinstance(m, nn.Module):
                raise CondenseError(f"task {self.name!r}: the model factory returned {type(m).__name__}, "
                                    "not a torch.nn.Module")
        m.eval()
        lineage.set_task(m, self.spec)
        return m

    def build_skeleton(self) -> nn.Module:
        """The architecture only (weights are about to be overwritten by an artifact's)."""
        if self.skeleton is None:
            return self.build_model()
        m = self.skeleton()
        m.eval()
        lineage.set_task(m, self.spec)
        return m

    # -- data -----------------------------------------------------------------------------------------------
    def batch(self, batch_size: int) -> Any:
        """One batch of `batch_size` inputs (deterministic)."""
        check_batch_size(batch_size)
        if callable(self.inputs):
            return self.inputs(batch_size)
        return _tile(self.inputs, batch_size)

    def run_batch(self, model: nn.Module, batch: Any) -> Any:
        """Run `model` on one batch the way this task does: `run` if set, else the module-level `run_batch`
        convention (mapping -> keywords, tuple/list starting with a tensor -> positional, else one input)."""
        if self.run is not None:
            return self.run(model, batch)
        return run_batch(model, batch)

    # -- quality --------------------------------------------------------------------------------------------
    def metrics(self, model: nn.Module) -> dict[str, float]:
        """Evaluate `model`; returns plain floats and checks the primary metric is there."""
        with torch.inference_mode():
            out = self.evaluate(model)
        if not isinstance(out, dict) or self.primary_metric not in out:
            raise CondenseError(f"task {self.name!r}: evaluate() must return a dict containing the primary metric "
                                f"{self.primary_metric!r}, got {out!r}")
        return {k: float(v) for k, v in out.items()}

    def within_budget(self, value: float, baseline: float, budget: float) -> bool:
        """Whether `value` is within a relative `budget` (0.01 = 1%) of `baseline` in the metric's direction."""
        if self.higher_is_better:
            return value >= baseline * (1 - budget) if baseline >= 0 else value >= baseline * (1 + budget)
        return value <= baseline * (1 + budget) if baseline >= 0 else value <= baseline * (1 - budget)


def batch_tensors(batch: Any, fix: str) -> tuple[torch.Tensor, ...]:
    """A tensor batch (a tensor, or a non-empty tuple/list of tensors) as a tuple; else CondenseError ending in `fix`.

    Example:
        >>> [t.shape for t in batch_tensors((torch.zeros(2, 3), torch.ones(2)), "")]
        [torch.Size([2, 3]), torch.Size([2])]
    """
    if isinstance(batch, torch.Tensor):
        return (batch,)
    if isinstance(batch, (tuple, list)) and batch and all(isinstance(b, torch.Tensor) for b in batch):
        return tuple(batch)
    raise CondenseError(fix.format(type=type(batch).__name__))


MAX_BATCH_SIZE = 65536  # larger batches only exhaust memory after minutes of set-up


def check_batch_size(b: Any) -> int:
    if isinstance(b, bool) or not isinstance(b, int) or not 1 <= b <= MAX_BATCH_SIZE:
        raise CondenseError(f"batch size must be a positive integer up to {MAX_BATCH_SIZE}, got {b!r}; "
                            "e.g. --batch-sizes 1,32")
    return b


def _tile(example: Any, n: int) -> Any:
    """Repeat an example batch along dim 0 until it has `n` rows."""
    if isinstance(example, torch.Tensor):
        reps = math.ceil(n / example.shape[0])
        return example.repeat(reps, *([1] * (example.dim() - 1)))[:n].clone()
    if isinstance(example, dict):
        return {k: _tile(v, n) for k, v in example.items()}
    if isinstance(example, (tuple, list)):
        return type(example)(_tile(v, n) for v in example)
    if isinstance(example, (str, int, float)):
        return example
    raise CondenseError(f"cannot tile inputs of type {type(example).__name__} to a batch size; "
                        "pass Task(inputs=callable(batch_size) -> batch) instead")


def to_device(batch: Any, device: torch.device) -> Any:
    """`batch` with every tensor in it (nested in tuples, lists, dicts) moved to `device`; other values kept.

    Example:
        >>> to_device({"x": torch.zeros(1), "texts": ["a"]}, torch.device("cpu"))
        {'x': tensor([0.]), 'texts': ['a']}
    """
    if isinstance(batch, torch.Tensor):
        return batch.to(device)
    if isinstance(batch, dict):
        return {k: to_device(v, device) for k, v in batch.items()}
    if isinstance(batch, (tuple, list)):
        moved = [to_device(v, device) for v in batch]
        return type(batch)(*moved) if hasattr(batch, "_fields") else type(batch)(moved)  # namedtuples too
    return batch
