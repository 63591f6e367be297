"""Static int8 for models torch.fx cannot trace (Hugging Face models): ONNX Runtime static quantization.

`StaticInt8Config` tries torch.fx first (condense/quantize/static.py); when fx cannot trace the model, or the batches
are dicts of tensors (`{"input_ids": ..., "attention_mask": ...}`), the model is exported by the same path as
`OnnxRuntimeConfig` and `OrtInt8Config` (`condense.export.runtime.build_ort`: keyword inputs named after the batch's
keys, a Hugging Face `ModelOutput` rebuilt from the graph's outputs), calibrated on the task's calibration batches
(`onnxruntime.quantization.quantize_static`, QDQ format, int8 weights per channel, uint8 activations) and run by
ONNX Runtime.

Why ONNX Runtime and not torch's PT2E path (`torch.export` + torchao's `prepare_pt2e`/`convert_pt2e` with
`X86InductorQuantizer`; torch 2.13 no longer ships `torch.ao.quantization.quantize_pt2e`, torchao 0.18 does).
Measured on a Hugging Face BertModel (hidden 128, 2 layers, seq 64, batch 8, 2 threads, p50 of 15 interleaved
rounds, bench/bench_static_hf.py on the 2-vCPU machine shared with other jobs): fp32 eager 19.0 ms, torch dynamic int8 7.3 ms,
ORT fp32 10.8 ms, ORT static int8 (QDQ) 13.2 ms, ORT static (QOperator) 21.4 ms, PT2E converted graph run eagerly
111 ms (0.17x fp32: without inductor its quantize/dequantize pairs run as separate float ops around float matmuls).
PT2E is only fast after `torch.compile` lowers the q/dq patterns to int8 kernels: that took 213 s (48 s with a warm
cache) of C++ compilation, and in a second run under heavy load (load average ~6.7, which inflates torch's eager
timings far more than ORT's) it ran 329 ms against ORT static's 48 ms. Its outputs also moved further from fp32 on
padded inputs (max abs 3.6 on last_hidden_state, every token, vs 0.067 for ORT static; not investigated). Above all
it cannot be saved: the converted GraphModule is not rebuilt from the task's skeleton plus tensors (its graph
exists only by tracing with data), while an ONNX graph is bytes the artifact stores as it is (`ModelBytesCodec`),
so save/load gives equal outputs. ORT static int8 is not faster than ORT fp32 at this size (its
QDQ pairs around every matmul, including attention's activation x activation ones, cost about what int8 saves);
for speed on such models use `DynamicInt8Config` or `OrtInt8Config`, static int8 is here so it works everywhere.

Calibration on this path is ONNX Runtime's MinMax (moving-average MinMax for observer="moving_average"), also for
observer="histogram": ORT's histogram calibrators were ~5x slower for the same error here; lineage records it.
"""
from __future__ import annotations

import contextlib
import io
import os
import tempfile
from typing import Any, Callable

from torch import nn

from condense.export.onnx import quiet_onnxruntime_tools
from condense.export.runtime import build_ort, replay_ort
from condense.export.session import import_onnxruntime

_OP_TYPES = ("MatMul", "Gemm", "Conv")


class _Reader:
    """onnxruntime.quantization's CalibrationDataReader protocol over condense batches (graph input name -> array)."""

    def __init__(self, names: list[str], batches: list[tuple[Any, ...]]) -> None:
        self._it = iter([{n: t.detach().cpu().numpy() for n, t in zip(names, b)} for b in batches])

    def get_next(self) -> dict | None:
        return next(self._it, None)

    def rewind(self) -> None:  # not needed: one calibration pass
        pass


def quantize_static_ort(model: nn.Module, cfg: Any, batches: list[Any], float_layers: list[str],
                        run: Callable[[nn.Module], None] | None = None) -> tuple[nn.Module, dict[str, Any]]:
    """Export `model`, calibrate on `batches`, quantize statically in ONNX Runtime; (module, lineage details).
    `run(m)` runs the calibration batches through a torch model: needed by the accuracy aids (`cfg.smooth_quant`,
    `cfg.bias_correction`, `cfg.float_layers`; condense/quantize/static_aids.py), applied to a copy first."""
    import_onnxruntime()
    import onnx
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    from condense.quantize.ort import _excluded_nodes  # layer exclusion matched by weight values, as OrtInt8Config
    from condense.quantize.static_aids import prepare

    aids: dict[str, Any] = {}
    if run is not None and (cfg.smooth_quant or cfg.bias_correction or cfg.float_layers):
        names = [n for n, m in model.named_modules() if isinstance(m, nn.Linear) and n and n not in float_layers]
        model, aids = prepare(model, names, run, smooth_quant=cfg.smooth_quant, bias_correction=cfg.bias_correction,
                              float_layers=cfg.float_layers, weight_qmax=63 if cfg.reduce_range else 127)
        float_layers = list(float_layers) + aids.get("float_layers", [])

    # MinMax for every observer: ORT's histogram calibrators (percentile, entropy) took ~5x longer on a tiny BERT
    # for the same error (max abs 0.044 percentile vs 0.046 minmax); the choice is recorded in lineage.
    extra = {"CalibMovingAverage": cfg.observer.value == "moving_average"}

    def post(data: bytes, spec: Any) -> tuple[bytes, dict[str, Any]]:
        skip = _excluded_nodes(data, model, float_layers, _OP_TYPES, spec.float_weights)
        reader = _Reader(list(spec.input_names), [spec.to_inputs(b) for b in batches])
        with tempfile.TemporaryDirectory(prefix="condense-static-") as d, contextlib.chdir(d):
            src, dst = os.path.join(d, "float.onnx"), os.path.join(d, "int8.onnx")
            with open(src, "wb") as f:
                f.write(data)
            with quiet_onnxruntime_tools(), contextlib.redirect_stdout(io.StringIO()):  # it logs and prints advice
                quantize_static(src, dst, reader, quant_format=QuantFormat.QDQ,
                                op_types_to_quantize=list(_OP_TYPES), per_channel=cfg.per_channel,
                                reduce_range=cfg.reduce_range, activation_type=QuantType.QUInt8,
                                weight_type=QuantType.QInt8, nodes_to_exclude=skip or None,
                                calibrate_method=CalibrationMethod.MinMax, extra_options=extra)
            with open(dst, "rb") as f:
                out = f.read()
        graph = onnx.load_from_string(out).graph
        quantized = {n.name for n in graph.node if n.op_type in _OP_TYPES
                     and any(i.endswith("_DequantizeLinear_Output") for i in n.input)}
        return out, {"quantized_nodes": len(quantized), "excluded_nodes": skip}

    new, details = build_ort(model, batches[0], opset=17, optimize=False, post=post)
    return new, {"path": "onnxruntime", **details, **({"aids": aids} if aids else {}), "format": "QDQ",
                 "calibration_method": "moving_average minmax" if extra["CalibMovingAverage"] else "minmax"}


def replay_static_ort(model: nn.Module, details: dict) -> nn.Module:
    """The ORT wrapper around an empty graph; the artifact loader fills in the saved int8 graph."""
    return replay_ort(model)
