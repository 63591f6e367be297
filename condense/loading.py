"""`condense.load` and `condense.load_exported`: the artifact loaders that rebuild a recorded task.

The artifact and export layers know no task (they sit below `condense.tasks`); these loaders sit above it and give
them the built-in task resolver, so `condense.load(path)` rebuilds the task an artifact records.
"""
from __future__ import annotations

import os
from typing import Any

import torch
from torch import nn

from condense.core import artifact
from condense.core.task import Task


def resolve_task(task: Any, *, trust: bool = False, source: str = "a file") -> Task:
    """The `Task` for a recorded spec (a mapping: built-in tasks only unless `trust`) or a task name the user gave."""
    from condense.tasks import get_task, task_from_spec

    if isinstance(task, dict):
        return task_from_spec(task, trust=trust, source=source)
    return get_task(task)


def load(path: str | os.PathLike, *, model: nn.Module | None = None, task: Any = None,
         device: str | torch.device = "cpu", trust_task: bool = False) -> nn.Module:
    """Load an artifact saved by `condense.save`: rebuild the architecture, replay transforms, fill in the weights.

    Loading runs no code from the artifact: the recorded task is rebuilt only if it is a built-in one, transforms
    only by their registered handlers, weights are safetensors (no pickles) read from the artifact folder itself.

    Args:
        path: the artifact folder.
        model: a freshly built model of the original architecture (needed when the artifact records no task).
        task: the task (a `Task` or a task name) to rebuild the model from (default: the recorded one).
        device: where to put the loaded model.
        trust_task: rebuild a recorded `module:factory` task too (imports that module and calls the factory
            with the recorded options): only for artifacts you trust, like Hugging Face's `trust_remote_code`.

    Example:
        >>> import tempfile, torch, condense
        >>> net = torch.nn.Linear(3, 2)
        >>> d = condense.save(net, tempfile.mkdtemp() + "/lin")
        >>> torch.equal(condense.load(d, model=torch.nn.Linear(3, 2)).weight, net.weight)
        True
    """
    return artifact.load(path, model=model, task=task, device=device, trust_task=trust_task,
                         resolve_task=resolve_task)


def load_exported(path: str | os.PathLike, *, task: Any = None, trust_task: bool = False) -> nn.Module:
    """An exported ONNX file as a module run by ONNX Runtime (a .tflite file: by LiteRT); a sentence encoder gets
    `encode` back.

    `task` (a `Task` or a name; default: the one recorded in the sidecar JSON) supplies the tokenizer for text
    models; a recorded `module:factory` task is rebuilt only with `trust_task=True` (see `condense.load`).

    Example:
        >>> enc = condense.load_exported("runs/minilm-onnx/model.onnx")  # doctest: +SKIP
        >>> enc.encode(["hello"]).shape  # doctest: +SKIP
        torch.Size([1, 384])
    """
    from condense.export.files import load_exported as _load_exported

    return _load_exported(path, task=task, trust_task=trust_task, resolve_task=resolve_task)
