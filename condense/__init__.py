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

from condense.version import __version__

# Every public name -> the module defining it, grouped; `__all__` is these names in this order.
_LAZY = {
    # tasks
    "Task": "condense.core.task",
    "get_task": "condense.tasks",
    "list_tasks": "condense.tasks",
    "hf_task": "condense.tasks",
    "save_hf": "condense.tasks.hf",
    # measurement
    "measure": "condense.measurement.api",
    "MeasureConfig": "condense.measurement.api",
    "Measurement": "condense.measurement.api",
    # artifacts
    "save": "condense.core.artifact",
    "load": "condense.loading",
    # any transform, by its config; adding one
    "apply_": "condense.core.transforms",
    "register_transform": "condense.core.transforms",
    "TransformContext": "condense.core.transforms",
    # quantization
    "quantize_": "condense.quantize.api",
    "Int8Config": "condense.quantize.backends",
    "DynamicInt8Config": "condense.quantize.dynamic",
    "StaticInt8Config": "condense.quantize.static",
    "OrtInt8Config": "condense.quantize.ort",
    "Bf16Config": "condense.quantize.bf16",
    "OneDnnInt8Config": "condense.quantize.onednn",
    "QATConfig": "condense.quantize.qat",
    "WeightOnlyConfig": "condense.quantize.weight_only",
    "MixedPrecisionConfig": "condense.quantize.sensitivity",
    "layer_sensitivity": "condense.quantize.sensitivity",
    # pruning
    "prune_": "condense.prune.api",
    "UnstructuredConfig": "condense.prune.unstructured",
    "NMConfig": "condense.prune.nm",
    "GradualPruneConfig": "condense.prune.schedule",
    "StructuredConfig": "condense.prune.structured",
    "LayerDropConfig": "condense.prune.layers",
    # distillation, factorization, early exit, fusion
    "distill": "condense.distillation.api",
    "DistillConfig": "condense.distillation.api",
    "factorize_": "condense.factorize.api",
    "FactorizeConfig": "condense.factorize.api",
    "early_exit_": "condense.early_exit.api",
    "EarlyExitConfig": "condense.early_exit.api",
    "sweep_thresholds": "condense.early_exit.sweep",
    "FuseConfig": "condense.fusion.api",
    # training
    "fit": "condense.train.loop",
    "FitConfig": "condense.train.loop",
    "FineTuneConfig": "condense.train.finetune",
    "TrainConfig": "condense.train.api",
    "train_task": "condense.train.api",
    # federated learning (Flower)
    "federated": "condense.federated",
    "FederatedConfig": "condense.federated.config",
    # export
    "export_onnx": "condense.export.onnx",
    "export_model": "condense.export.files",
    "load_exported": "condense.loading",
    # recipes, search, reports
    "load_recipe": "condense.recipes.recipe",
    "run_recipe": "condense.recipes.run",
    "search": "condense.searching.api",
    "SearchConfig": "condense.searching.config",
    "pareto_front": "condense.report.pareto",
    "pareto_svg": "condense.report.pareto",
    # errors
    "CondenseError": "condense.errors",
}

__all__ = list(_LAZY)

# Packages that register transforms, tensor codecs and replays; imported only when a lookup needs all of them.
from condense.core import plugins as _plugins  # noqa: E402  (cheap: no torch)

_plugins.declare("condense.quantize", "condense.prune", "condense.export", "condense.train", "condense.fusion",
                 "condense.distillation", "condense.factorize", "condense.early_exit")


def __getattr__(name: str) -> Any:
    mod = _LAZY.get(name)
    if mod is None:
        raise AttributeError(f"module 'condense' has no attribute {name!r}")
    value = getattr(importlib.import_module(mod), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(list(globals()) + __all__)
