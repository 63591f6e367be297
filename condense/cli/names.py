"""Technique names on the command line -> config classes ("module:Class", imported lazily).

The one place the CLI reads these names from (`quantize --scheme`, `prune --method`, `distill` / `factorize` /
`early-exit`); their `--help` lists each config's fields.
"""
from __future__ import annotations

QUANT_SCHEMES: dict[str, str] = {
    "int8": "condense.quantize.backends:Int8Config",          # int8 on the backend measured fastest
    "dynamic": "condense.quantize.dynamic:DynamicInt8Config",  # torch x86 dynamic int8
    "static": "condense.quantize.static:StaticInt8Config",     # torch x86 static int8, calibrated
    "ort": "condense.quantize.ort:OrtInt8Config",             # ONNX Runtime int8
    "qat": "condense.quantize.qat:QATConfig",                 # quantization-aware training -> int8
    "weight-only": "condense.quantize.weight_only:WeightOnlyConfig",  # RTN / GPTQ, packed 8/4/3/2-bit
    "mixed": "condense.quantize.sensitivity:MixedPrecisionConfig",  # keep the most sensitive layers precise
}
PRUNE_METHODS: dict[str, str] = {
    "unstructured": "condense.prune.unstructured:UnstructuredConfig",
    "nm": "condense.prune.nm:NMConfig",
    "gradual": "condense.prune.schedule:GradualPruneConfig",
    "structured": "condense.prune.structured:StructuredConfig",
    "layer-drop": "condense.prune.layers:LayerDropConfig",
}


# one config each; `--set FIELD=VALUE` reaches every field
TECHNIQUES: dict[str, str] = {
    "distill": "condense.distillation.api:DistillConfig",
    "factorize": "condense.factorize.api:FactorizeConfig",
    "early-exit": "condense.early_exit.api:EarlyExitConfig",
}
