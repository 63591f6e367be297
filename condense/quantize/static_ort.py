"""Static int8 for models torch.fx cannot trace (Hugging Face models): ONNX Runtime static quantization.

`StaticInt8Config` tries torch.fx first (condense/quantize/static.py); when fx cannot trace the model, or the batches
are dicts of tensors (`{"input_ids": ..., "attention_mask": ...}`), the model is exported to ONNX with the batch's
keys as input names, calibrated on the task's calibration batches (`onnxruntime.quantization.quantize_static`, QDQ
format, int8 weights per channel, uint8 activations) and run by ONNX Runtime behind a module taking the same keyword
inputs and returning the same output type (a Hugging Face `ModelOutput` is rebuilt from the graph's outputs).

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
import importlib
import io
import os
import tempfile
import warnings
from typing import Any

import torch
from torch import nn

from condense.core import lineage
from condense.errors import CondenseError
from condense.export.onnx import quiet_onnxruntime_tools
from condense.export.session import OrtModule, import_onnxruntime

_OP_TYPES = ("MatMul", "Gemm", "Conv")
_OUTPUT_MODULES = ("transformers.",)  # ModelOutput classes rebuilt at load time are imported from these only


def _inputs_of(batch: Any) -> tuple[tuple[str, ...], tuple[torch.Tensor, ...]]:
    """(input names, tensors) of a batch: a dict of tensors keeps its keys; a tensor or tuple of tensors gets
    input_0, input_1, ...; anything else is refused."""
    if isinstance(batch, dict) and batch and all(isinstance(v, torch.Tensor) for v in batch.values()):
        return tuple(batch), tuple(batch.values())
    if isinstance(batch, torch.Tensor):
        batch = (batch,)
    if isinstance(batch, (tuple, list)) and batch and all(isinstance(t, torch.Tensor) for t in batch):
        return tuple(f"input_{i}" for i in range(len(batch))), tuple(batch)
    raise CondenseError(f"StaticInt8Config needs tensor batches (a tensor, a tuple of tensors or a dict of tensors), "
                        f"got {type(batch).__name__}; for text models (e.g. minilm) use DynamicInt8Config or "
                        "OrtInt8Config, which need no traced calibration")


class _Positional(nn.Module):
    """The model with positional inputs (export order) and a flat tuple of tensor outputs."""

    def __init__(self, model: nn.Module, names: tuple[str, ...], keyword: bool) -> None:
        super().__init__()
        self.model, self.names, self.keyword = model, names, keyword

    def forward(self, *xs: torch.Tensor) -> tuple[torch.Tensor, ...]:
        out = self.model(**dict(zip(self.names, xs))) if self.keyword else self.model(*xs)
        return _flatten(out)[1]


def _flatten(out: Any) -> tuple[dict[str, Any], tuple[torch.Tensor, ...]]:
    """(how to rebuild `out`, its tensors): a tensor, a tuple of tensors, or a ModelOutput-like mapping."""
    if isinstance(out, torch.Tensor):
        return {"kind": "tensor"}, (out,)
    if isinstance(out, dict):  # Hugging Face ModelOutput is an OrderedDict of its non-None fields
        keys = [k for k, v in out.items() if isinstance(v, torch.Tensor)]
        cls = type(out)
        return {"kind": "mapping", "class": f"{cls.__module__}.{cls.__qualname__}", "keys": keys}, \
            tuple(out[k] for k in keys)
    if isinstance(out, (tuple, list)) and all(isinstance(t, torch.Tensor) for t in out):
        return {"kind": "tuple"}, tuple(out)
    raise CondenseError(f"StaticInt8Config (ONNX Runtime path) needs a model returning tensors, a tuple of tensors "
                        f"or a ModelOutput, got {type(out).__name__}")


def _output_class(path: str) -> type:
    if path in ("builtins.dict", "collections.OrderedDict"):
        return dict
    if not path.startswith(_OUTPUT_MODULES):
        raise CondenseError(f"the artifact names output class {path!r}, which condense does not import; re-quantize "
                            "the model")
    module, _, name = path.rpartition(".")
    return getattr(importlib.import_module(module), name)


class OrtStaticModule(nn.Module):
    """An int8 ONNX graph that takes the original model's inputs (keywords or positional) and returns its output
    type. `graph` holds the bytes (saved by `ModelBytesCodec`); `names` and `output` come from lineage on replay."""

    def __init__(self, graph: OrtModule, names: tuple[str, ...], output: dict[str, Any]) -> None:
        super().__init__()
        self.graph, self.names, self.output = graph, tuple(names), dict(output)
        self._cls = _output_class(output["class"]) if output["kind"] == "mapping" else None

    def forward(self, *args: torch.Tensor, **kwargs: torch.Tensor) -> Any:
        given = dict(zip(self.names, args), **kwargs)
        missing = [n for n in self.names if n not in given]
        if missing or len(given) != len(self.names):
            raise CondenseError(f"this static int8 model takes exactly {list(self.names)} (as quantized), got "
                                f"{list(given)}; pass the inputs the calibration batches had")
        outs = self.graph(*(given[n] for n in self.names))
        outs = outs if isinstance(outs, tuple) else (outs,)
        kind = self.output["kind"]
        if kind == "tensor":
            return outs[0]
        if kind == "tuple":
            return outs
        return self._cls(**dict(zip(self.output["keys"], outs)))


def _export(model: nn.Module, names: tuple[str, ...], xs: tuple[torch.Tensor, ...], keyword: bool, opset: int
            ) -> tuple[bytes, dict[str, Any]]:
    with torch.no_grad():
        layout, outs = _flatten(model(**dict(zip(names, xs))) if keyword else model(*xs))
    out_names = [f"output_{i}" for i in range(len(outs))]
    token_like = any(not t.is_floating_point() and t.ndim >= 2 for t in xs)  # (B, T) ids/masks: T varies too
    axes = {n: ({0: "batch", 1: "seq"} if token_like and not t.is_floating_point() else {0: "batch"})
            for n, t in zip(names, xs)}
    axes.update({n: ({0: "batch", 1: "seq"} if token_like and t.ndim >= 2 else {0: "batch"})
                 for n, t in zip(out_names, outs)})
    buf = io.BytesIO()
    try:
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")  # tracer warnings about python ints from shapes are expected
            torch.onnx.export(_Positional(model, names, keyword), xs, buf, input_names=list(names),
                              output_names=out_names, dynamic_axes=axes, opset_version=opset, dynamo=False,
                              do_constant_folding=True)
    except Exception as e:  # the exporter raises many types; say what to do
        raise CondenseError(f"StaticInt8Config: torch.fx could not trace {type(model).__name__} and the ONNX export "
                            f"failed too ({str(e)[:300]}); use DynamicInt8Config instead") from None
    return buf.getvalue(), layout


class _Reader:
    """onnxruntime.quantization's CalibrationDataReader protocol over condense batches."""

    def __init__(self, names: tuple[str, ...], batches: list[tuple[torch.Tensor, ...]]) -> None:
        self._it = iter([{n: t.detach().cpu().numpy() for n, t in zip(names, b)} for b in batches])

    def get_next(self) -> dict | None:
        return next(self._it, None)

    def rewind(self) -> None:  # not needed: one calibration pass
        pass


def quantize_static_ort(model: nn.Module, cfg: Any, batches: list[Any], float_layers: list[str]
                        ) -> tuple[nn.Module, dict[str, Any]]:
    """Export `model`, calibrate on `batches`, quantize statically in ONNX Runtime; (module, lineage details)."""
    import_onnxruntime()
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    from condense.quantize.ort import _excluded_nodes  # layer exclusion matched by weight values, as OrtInt8Config

    names, xs = _inputs_of(batches[0])
    keyword = isinstance(batches[0], dict)
    data, layout = _export(model, names, xs, keyword, opset=17)
    skip = _excluded_nodes(data, model, float_layers, _OP_TYPES)
    reader = _Reader(names, [_inputs_of(b)[1] for b in batches])
    # MinMax for every observer: ORT's histogram calibrators (percentile, entropy) took ~5x longer on a tiny BERT
    # for the same error (max abs 0.044 percentile vs 0.046 minmax); the choice is recorded in lineage.
    extra = {"CalibMovingAverage": cfg.observer.value == "moving_average"}
    with tempfile.TemporaryDirectory(prefix="condense-static-") as d, contextlib.chdir(d):
        src, dst = os.path.join(d, "float.onnx"), os.path.join(d, "int8.onnx")
        with open(src, "wb") as f:
            f.write(data)
        with quiet_onnxruntime_tools(), contextlib.redirect_stdout(io.StringIO()):  # it logs and prints advice
            quantize_static(src, dst, reader, quant_format=QuantFormat.QDQ, op_types_to_quantize=list(_OP_TYPES),
                            per_channel=cfg.per_channel, reduce_range=cfg.reduce_range,
                            activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                            nodes_to_exclude=skip or None, calibrate_method=CalibrationMethod.MinMax,
                            extra_options=extra)
        with open(dst, "rb") as f:
            out = f.read()
    import onnx

    graph = onnx.load_from_string(out).graph
    quantized = sorted({n.name for n in graph.node if n.op_type in _OP_TYPES
                        and any(i.endswith("_DequantizeLinear_Output") for i in n.input)})
    new = OrtStaticModule(OrtModule(out), names, layout)
    lineage.copy_lineage(model, new)
    return new, {"path": "onnxruntime", "inputs": list(names), "output": layout, "quantized_nodes": len(quantized),
                 "excluded_nodes": skip, "onnx_bytes": len(out), "format": "QDQ",
                 "calibration_method": "moving_average minmax" if extra["CalibMovingAverage"] else "minmax"}


def replay_static_ort(model: nn.Module, details: dict) -> nn.Module:
    """The wrapper around an empty OrtModule; the artifact loader fills in the saved int8 graph."""
    new = OrtStaticModule(OrtModule(), tuple(details["inputs"]), details["output"])
    lineage.copy_lineage(model, new)
    return new
