"""condense: make neural networks cheaper to run and to train, and prove it with measurements.

`import condense` stays fast: public names are resolved lazily, so torch models, onnxruntime and friends load
only when used.

Example:
    >>> import condense
    >>> task = condense.get_task("digits")
    >>> model = task.build_model()
    >>> m = condense.measure(model, task, condense.MeasureConfig(batch_sizes=(1,), repeats=5))  # doctest: +SKIP
"""
from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_LAZY = {
    # tasks
    "Task": "condense.core.task",
    "get_task": "condense.tasks",
    "list_tasks": "condense.tasks",
    # measurement
    "measure": "condense.measurement.api",
    "MeasureConfig": "condense.measurement.api",
    "Measurement": "condense.measurement.api",
    # artifacts
    "save": "condense.core.artifact",
    "load": "condense.core.artifact",
    # techniques
    "quantize_": "condense.quantize.api",
    "DynamicInt8Config": "condense.quantize.dynamic",
    # errors
    "CondenseError": "condense.errors",
}

__all__ = [
    # tasks
    "Task", "get_task", "list_tasks",
    # measurement
    "measure", "MeasureConfig", "Measurement",
    # artifacts
    "save", "load",
    # techniques
    "quantize_", "DynamicInt8Config",
    # errors
    "CondenseError",
]


def __getattr__(name: str) -> Any:
    mod = _LAZY.get(name)
    if mod is None:
        raise AttributeError(f"module 'condense' has no attribute {name!r}")
    value = getattr(importlib.import_module(mod), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(list(globals()) + __all__)
