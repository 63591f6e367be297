"""Step kinds a recipe may use, each mapping its `method` (or `scheme`, `format`) to a config class path.

Config classes are named as "module:Class" and imported only when a recipe uses them, so a technique that is not
installed in this version (an optional package, a later release) fails validation with a clear message instead of
breaking every recipe. Adding a technique = one `register_step` call; nothing else changes.

Example:
    >>> STEP_KINDS.get("quantize").methods["dynamic"]
    'condense.quantize.dynamic:DynamicInt8Config'
"""
from __future__ import annotations

import importlib
from dataclasses import dataclass, field

from condense.core.registry import Registry
from condense.errors import ConfigError


@dataclass(frozen=True)
class StepKind:
    """One kind of recipe step.

    Args:
        key: the parameter choosing the method ("method", "scheme" or "format").
        methods: method name -> "module:Class" of its config.
        default: the method used when the step does not name one (None: it must).
    """

    key: str
    methods: dict[str, str] = field(default_factory=dict)
    default: str | None = None


STEP_KINDS: Registry[StepKind] = Registry("recipe step")


def register_step(kind: str, key: str, methods: dict[str, str], default: str | None = None) -> StepKind:
    """Register a step kind (e.g. "prune") with its methods; returns the entry."""
    if default is not None and default not in methods:
        raise ValueError(f"default {default!r} of step {kind!r} is not one of its methods {sorted(methods)}")
    return STEP_KINDS.register(kind, StepKind(key, dict(methods), default))


def resolve_class(path: str, *, where: str) -> type:
    """Import "module:Class"; a ConfigError saying it is not available in this version if that fails."""
    mod, _, name = path.partition(":")
    try:
        return getattr(importlib.import_module(mod), name)
    except (ImportError, AttributeError) as e:
        raise ConfigError(f"{where}: {path} is not available in this version of condense ({type(e).__name__}: "
                          f"{e}); remove the step or upgrade condense") from None


register_step("prune", "method", {
    "unstructured": "condense.prune.unstructured:UnstructuredConfig",
    "nm": "condense.prune.nm:NMConfig",
    "gradual": "condense.prune.schedule:GradualPruneConfig",
    "structured": "condense.prune.structured:StructuredConfig",
    "layer-drop": "condense.prune.layers:LayerDropConfig",
})
register_step("quantize", "scheme", {
    "int8": "condense.quantize.backends:Int8Config",
    "dynamic": "condense.quantize.dynamic:DynamicInt8Config",
    "static": "condense.quantize.static:StaticInt8Config",
    "ort": "condense.quantize.ort:OrtInt8Config",
    "qat": "condense.quantize.qat:QATConfig",
    "weight-only": "condense.quantize.weight_only:WeightOnlyConfig",
    "mixed": "condense.quantize.sensitivity:MixedPrecisionConfig",
}, default="int8")
register_step("fine-tune", "method", {"task-loss": "condense.train.finetune:FineTuneConfig"}, default="task-loss")
register_step("fuse", "method", {"blocks": "condense.fusion:FuseConfig"}, default="blocks")
register_step("export", "format", {
    "onnx": "condense.export.runtime:OnnxRuntimeConfig",       # run in ONNX Runtime, fp32
    "onnx-int8": "condense.quantize.ort:OrtInt8Config",        # run in ONNX Runtime, dynamic int8
    "tflite": "condense.export.litert_runtime:LiteRtConfig",          # run in LiteRT, fp32
    "tflite-int8": "condense.export.litert_runtime:LiteRtInt8Config",  # run in LiteRT, int8 weights
}, default="onnx")
# Issue-5 techniques: resolved lazily; until they ship, validation says they are not available.
register_step("distill", "method", {"kd": "condense.distillation:DistillConfig"}, default="kd")
register_step("factorize", "method", {"svd": "condense.factorize:FactorizeConfig"}, default="svd")
register_step("early-exit", "method", {"confidence": "condense.early_exit:EarlyExitConfig"}, default="confidence")
