"""LiteRT as a transform: `LiteRtConfig` swaps a model for its .tflite conversion run by the LiteRT interpreter
(`LiteRtModule`, from condense.export.litert_session), so tasks, `condense.measure` and the pipeline use a LiteRT
model exactly like the PyTorch one.

The interpreter is `ai_edge_litert.interpreter.Interpreter` with its default XNNPACK delegate and `num_threads`
equal to torch's thread count (LiteRT does not follow `torch.set_num_threads`): it is rebuilt when that count has
changed by the next call, so `measure(threads=N)` times LiteRT on N threads too. A full-integer model takes and
returns int8 tensors; the module quantizes float inputs with the graph's input scale and zero point and
dequantizes the outputs, so callers always see float in, float out. The converter narrows int64 inputs (token
ids) to int32; the module casts to whatever the graph declares.

Saved artifacts hold the flatbuffer as one uint8 tensor (`runtime.ModelBytesCodec`); loading replays the transform on
the task's skeleton (its registered replay) to get the wrapper back, then the codec restores the model. Importing this module
imports neither litert-torch nor ai-edge-litert: they load when a model is converted or run.
"""
from __future__ import annotations

from typing import Any

import torch
from torch import nn

from condense.core import lineage
from condense.core.artifact import CODECS
from condense.core.config import check_positive_int, config
from condense.core.transforms import TransformContext, register_transform
from condense.errors import ConfigError
from condense.export.litert import parity_tensors, quantize_tflite, tflite_from_model
from condense.export.litert_session import (INSTALL, LITERT_WRAPPERS, LiteRtModule, LiteRtSentenceEncoder,  # noqa: F401
                                            _from_output, _to_input, import_litert_runtime, litert_graph,
                                            make_interpreter, pad_tokens, runtime_module, wrap)
from condense.export.runtime import ModelBytesCodec
from condense.measurement.macs import MAC_COUNTERS

CODECS.register(LiteRtModule)(ModelBytesCodec("tflite_model", "LiteRT"))


def _litert_macs(m: LiteRtModule, inputs: tuple, out: Any) -> int:
    """MACs of one call, from the source model's count at conversion (per sample, same non-batch shapes)."""
    per = m.__dict__.get("macs_per_sample")
    shapes = m.__dict__.get("macs_shapes")
    if per is None or shapes != [list(t.shape[1:]) for t in inputs]:
        import warnings

        warnings.warn("the MACs of a LiteRT model are known only for the input shapes counted at conversion; "
                      "counted as 0 here", stacklevel=2)
        return 0
    return int(per) * int(inputs[0].shape[0])


MAC_COUNTERS.register(LiteRtModule)(_litert_macs)


# -- the transforms: run a model in LiteRT (fp32, int8) -------------------------------------------------------------
QUANT_MODES = ("none", "dynamic", "full")


@config
class LiteRtConfig:
    """Run the model in LiteRT: convert with litert-torch, optionally quantize with ai-edge-quantizer, swap it in.

    Args:
        quantize: "none" (fp32); "dynamic" (int8 weights, float activations quantized per call); "full" (int8
            weights and activations, scales calibrated on the task's calibration data: int8 in, int8 out).
        calibration_batches: calibration batches for quantize="full".

    Example:
        >>> LiteRtConfig(quantize="dynamic").to_dict()["quantize"]
        'dynamic'
    """

    quantize: str = "none"
    calibration_batches: int = 8

    def __post_init__(self) -> None:
        if self.quantize not in QUANT_MODES:
            raise ConfigError(f"{type(self).__name__}.quantize must be one of {QUANT_MODES}, got {self.quantize!r}; "
                              "'full' is int8 weights and activations")
        check_positive_int(self, "calibration_batches", example=8)


@config
class LiteRtInt8Config(LiteRtConfig):
    """`LiteRtConfig` with int8 by default (int8 weights, float activations): the recipe format `tflite-int8`.

    Dynamic, not full-integer, by default: full-integer int8 kept digits' accuracy but wrecked minilm (MRR@10
    0.609 -> 0.163: BERT's softmax/LayerNorm/GELU activations do not fit one int8 scale), while dynamic kept both
    (minilm 0.609 -> 0.609). Set quantize="full" for integer-only accelerators, and check the quality it records.

    Example:
        >>> LiteRtInt8Config().quantize
        'dynamic'
    """

    quantize: str = "dynamic"


def build_litert(model: nn.Module, batch: Any, *, quantize: str = "none",
                 calibration: list[Any] | None = None) -> tuple[nn.Module, dict[str, Any]]:
    """Convert `model` (traced on `batch`), quantize if asked, and wrap it for LiteRT.

    Returns (the LiteRT-backed module, JSON-able details: inputs, quantize, tflite bytes, parity vs `model`).
    """

    data, spec = tflite_from_model(model, batch)
    inputs = spec.to_inputs(batch)
    if quantize != "none":
        data = quantize_tflite(data, quantize, [spec.to_inputs(b) for b in (calibration or [])])
    graph = runtime_module(data, spec.output_class)
    with torch.inference_mode():
        macs = dict(zip(("macs_per_sample", "macs_shapes"), _source_macs(spec.module, inputs)))
    graph.__dict__.update(macs)  # the flatbuffer cannot be counted: the source's count, kept in lineage for load
    details = {"inputs": list(spec.input_names), "shapes": spec.litert_shapes, "quantize": quantize,
               "tflite_bytes": len(data), **macs, **({"output_class": spec.output_class} if spec.output_class else {}),
               "parity_vs_torch": parity_tensors(spec.module, graph, inputs)}
    new = wrap(model, graph)
    lineage.copy_lineage(model, new)
    return new, details


def _source_macs(module: nn.Module, inputs: tuple[torch.Tensor, ...]) -> tuple[int, list[list[int]]]:
    from condense.measurement.macs import count_macs

    one = tuple(t[:1] for t in inputs)
    return count_macs(module, lambda: module(*one)), [list(t.shape[1:]) for t in one]


def replay_litert(model: nn.Module) -> nn.Module:
    """The wrapper for `model` around an empty LiteRtModule; the artifact loader then fills in the model."""
    new = wrap(model, LiteRtModule())
    lineage.copy_lineage(model, new)
    return new


def to_litert(model: nn.Module, cfg: LiteRtConfig, ctx: TransformContext) -> nn.Module:
    """Convert `model` and return the LiteRT-backed module that replaces it."""
    from condense.export.runtime import example_batch

    calib = ctx.calibration_batches(cfg.calibration_batches, what=type(cfg).__name__) \
        if cfg.quantize == "full" else None
    new, details = build_litert(model, example_batch(ctx, type(cfg).__name__), quantize=cfg.quantize,
                                calibration=calib)
    ctx.record(**details)
    return new




def _replay(model: nn.Module, cfg: LiteRtConfig, details: dict) -> nn.Module:
    new = replay_litert(model)
    graph = litert_graph(new)
    for key in ("macs_per_sample", "macs_shapes", "output_class"):  # recorded at conversion (if any)
        if key in details:
            graph.__dict__[key] = details[key]
    return new




# -- registered transforms ----------------------------------------------------------------------------------------
register_transform(LiteRtConfig, family="export", name="tflite", replay=_replay)(to_litert)
register_transform(LiteRtInt8Config, family="export", name="tflite-int8", replay=_replay)(to_litert)
