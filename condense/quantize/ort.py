"""Int8 on ONNX Runtime: export, optionally fuse transformer ops, then `onnxruntime.quantization.quantize_dynamic`.

Weights become int8 (per output channel by default) and activations are quantized per batch at run time, as in
torch's dynamic int8; the difference is the runtime. `optimize=True` first runs ORT's BERT optimizer (the three
attention projections and the attention into one `Attention` op, quantized to `QAttention`; residual+LayerNorm and
bias+GELU folded). Whether that is faster is measured, not assumed: `Int8Config(backend="auto")` times both.

Accuracy: one activation scale per tensor means a single outlier channel (BERT's FFN has a few, 4x the next
largest) coarsens every other channel's steps. `float_channels=k` finds the k largest channels per block on
calibration data and computes them in float on a small side path (LLM.int8()-style), at almost no cost.

Layer selection uses module names like every condense technique. ONNX node names do not carry them reliably
(fusion renames nodes), so a module is found in the graph by its weight's values: a node whose weight
initializer equals an excluded layer's weight is left in float.
"""
from __future__ import annotations

import contextlib
import hashlib
import os
import tempfile
import warnings
from typing import Any

import numpy as np
from torch import nn

from condense.core.config import check_int, check_patterns, check_positive_int, config, show
from condense.core.transforms import TransformContext, register_transform
from condense.errors import ConfigError
from condense.export.onnx import check_opset, quiet_onnxruntime_tools
from condense.export.runtime import build_ort, example_batch, replay_ort, with_disabled_optimizers
from condense.core.select import select_modules

# Op types ORT's dynamic quantizer handles (see onnxruntime.quantization.registry.IntegerOpsRegistry).
QUANTIZABLE_OPS = ("MatMul", "Attention", "Gather", "Gemm", "Conv", "EmbedLayerNormalization")
_WEIGHTED = (nn.Linear, nn.Embedding, nn.Conv1d, nn.Conv2d, nn.Conv3d)


@config
class OrtInt8Config:
    """Dynamic int8 in ONNX Runtime, optionally after its transformer fusions, optionally with float outliers.

    Args:
        per_channel: one weight scale per output channel (more accurate) instead of one per tensor.
        reduce_range: 7-bit weights (only for CPUs without VNNI, where 8-bit products can overflow).
        optimize: run ORT's BERT fusions (attention, SkipLayerNorm, GELU) before quantizing; BERT-like models only.
            Off by default: on the 2-vCPU reference machine the fused int8 graph measured slower than the unfused
            one (ORT's own session-level fusions already apply); `Int8Config(backend="auto")` times both.
        num_heads, hidden_size: fusion hints; 0 reads them from the model.
        float_channels: per transformer block, this many FFN hidden channels with the largest calibrated
            activations are computed in float on a side path (LLM.int8()-style), so one outlier channel no longer
            sets the int8 scale of the whole activation tensor. Needs calibration data; BERT encoders only.
        calibration_batches: calibration batches used to find the outlier channels.
        op_types: ONNX op types to quantize ("Gather" = embedding tables).
        include: module-name patterns to quantize (fnmatch); exclude: patterns to keep in float.
        opset: ONNX opset of the export (17 or 18).
        packed: drop padding inside the graph (text encoders whose export adapter can: BERT sentence encoders):
            every token-wise layer then runs on the batch's real tokens only, attention alone on the padded layout.
            None (default) = on unless `optimize`: ORT's attention fusion matches the padded graph only, so
            True with optimize=True is an error. On MiniLM at batch 32 of docstring summaries (41% real tokens)
            it cut the int8 graph's time about in half (BENCHMARKS.md, openvino-minilm).
        tune_session: time the int8 graph with each of ONNX Runtime's optional fusions in `SESSION_VARIANTS`
            on and off (interleaved rounds on a batch of 32 from the task, else the example batch) and keep the
            fastest; the choice is stored in the graph's metadata, so saved and exported models open the same
            way. On the reference machine ORT's SkipLayerNormalization kernel ran ~10% slower than the plain
            Add + LayerNormalization it replaces in MiniLM's int8 graph (see BENCHMARKS.md).

    Example:
        >>> OrtInt8Config(float_channels=4).to_dict()["optimize"]
        False
    """

    per_channel: bool = True
    reduce_range: bool = False
    optimize: bool = False
    num_heads: int = 0
    hidden_size: int = 0
    float_channels: int = 0
    calibration_batches: int = 4
    op_types: tuple[str, ...] = ("MatMul", "Attention", "Gather")
    include: tuple[str, ...] = ("*",)
    exclude: tuple[str, ...] = ()
    opset: int = 17
    packed: bool | None = None
    tune_session: bool = True

    def __post_init__(self) -> None:
        check_opset(self.opset)
        if self.packed not in (None, True, False):
            raise ConfigError(f"OrtInt8Config.packed must be None (on unless optimize), True or False, got "
                              f"{show(self.packed)}")
        if self.packed and self.optimize:
            raise ConfigError("OrtInt8Config(packed=True, optimize=True): ORT's attention fusion only matches the "
                              "padded graph; use packed=None (packs unless optimize) or packed=False")
        if isinstance(self.op_types, list):
            object.__setattr__(self, "op_types", tuple(self.op_types))
        if not isinstance(self.op_types, tuple) or not self.op_types or any(
                not isinstance(o, str) or o not in QUANTIZABLE_OPS for o in self.op_types):
            raise ConfigError(f"OrtInt8Config.op_types must be a non-empty tuple drawn from {QUANTIZABLE_OPS}, got "
                              f"{show(self.op_types)}; e.g. ('MatMul', 'Attention')")
        for name in ("num_heads", "hidden_size", "float_channels"):  # 0 = none (float_channels), or read from the model
            check_int(self, name, lo=0, hi=1_000_000, example=0)
        check_positive_int(self, "calibration_batches", example=4)
        check_patterns(self, example="('bert.layers.*',)")


def _digest(a: np.ndarray) -> str:
    return hashlib.sha1(np.ascontiguousarray(a, dtype=np.float32).tobytes()).hexdigest()


def _excluded_nodes(data: bytes, model: nn.Module, excluded: list[str], op_types: tuple[str, ...],
                    float_weights: list[np.ndarray] = ()) -> list[str]:
    """Names of graph nodes whose weight is one of the `excluded` modules' weights or a `float_weights` array
    (matched by value)."""
    import onnx
    from onnx import numpy_helper

    if not excluded and not len(float_weights):
        return []
    mods = dict(model.named_modules())
    wanted: dict[str, str] = {}
    for j, w in enumerate(float_weights):  # side paths the export adapter wants float; (out, in) Linear weights
        wanted[_digest(w)] = wanted[_digest(w.T)] = f"<float side path {j}>"
    for name in excluded:
        w = mods[name].weight.detach().float().cpu().numpy()
        wanted[_digest(w)] = name
        if w.ndim == 2:
            wanted[_digest(w.T)] = name  # MatMul stores the Linear's weight transposed
    graph = onnx.load_from_string(data).graph
    inits = {t.name: t for t in graph.initializer}
    nodes, found = [], set()
    for node in graph.node:
        if node.op_type not in op_types:
            continue
        for inp in node.input:
            if inp in inits and (hit := wanted.get(_digest(numpy_helper.to_array(inits[inp])))):
                nodes.append(node.name)
                found.add(hit)
    lost = sorted(n for n in set(excluded) - found if isinstance(mods[n], nn.Linear))  # folded tables: nothing to do
    if lost:
        raise ConfigError(f"OrtInt8Config: excluded layer(s) {lost[:4]} have no node of their own in the ONNX graph "
                          "(fusion merged them, e.g. attention projections into one Attention op); use "
                          "optimize=False to keep them in float")
    return nodes


def _quantize_bytes(data: bytes, cfg: OrtInt8Config, exclude_nodes: list[str]) -> tuple[bytes, dict[str, Any]]:
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    from condense.export.runtime import refuse_external_data

    refuse_external_data(data)  # quantize_dynamic loads the file with its external data: refuse before writing it

    # chdir: onnxruntime's tools write scratch files (sym_shape_infer_temp.onnx, *.data) into the current folder
    with tempfile.TemporaryDirectory(prefix="condense-ort-") as d, contextlib.chdir(d), quiet_onnxruntime_tools():
        src, dst = os.path.join(d, "float.onnx"), os.path.join(d, "int8.onnx")
        with open(src, "wb") as f:
            f.write(data)
        # DefaultTensorType: fused contrib ops (SkipLayerNorm, BiasGelu) have no ONNX shape inference, so the
        # quantizer needs to be told their outputs are float.
        quantize_dynamic(src, dst, op_types_to_quantize=list(cfg.op_types), per_channel=cfg.per_channel,
                         reduce_range=cfg.reduce_range, weight_type=QuantType.QInt8,
                         nodes_to_exclude=exclude_nodes or None,
                         extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT})
        with open(dst, "rb") as f:
            out = f.read()
    graph = onnx.load_from_string(out).graph
    float_weights = {t.name for t in graph.initializer if t.data_type == onnx.TensorProto.FLOAT and len(t.dims) >= 2}
    int_ops = sorted({n.op_type for n in graph.node if n.op_type in _INT8_OPS})
    float_left = sorted(n.name for n in graph.node if n.op_type in cfg.op_types and n.name not in exclude_nodes
                        and any(i in float_weights for i in n.input))
    return out, {"int8_ops": int_ops, "float_nodes": float_left, "excluded_nodes": exclude_nodes}


# optional ORT graph fusions tuned per model: each variant is a tuple of optimizers to disable ("" = all on)
SESSION_VARIANTS: tuple[tuple[str, ...], ...] = ((), ("SkipLayerNormFusion",))
SESSION_MARGIN = 0.03  # a variant must beat ORT's defaults by this fraction to be kept (else timing noise decides)


def fastest_session(data: bytes, inputs: tuple, rounds: int = 5) -> tuple[tuple[str, ...], dict[str, float]]:
    """(optimizers to disable, p50 ms per variant): the fastest of `SESSION_VARIANTS` on `inputs`.

    Variants are timed in interleaved rounds, so load from elsewhere hits each alike; ORT's defaults (all fusions)
    are kept unless another variant is at least `SESSION_MARGIN` faster.
    """
    import torch

    from condense.export.runtime import make_session, session_feeds
    from condense.measurement.timing import interleaved_p50

    sessions = {v: make_session(data, torch.get_num_threads(), v) for v in SESSION_VARIANTS}
    feeds = session_feeds(sessions[()].get_inputs(), inputs)
    with torch.inference_mode():
        p50 = interleaved_p50({v: (lambda s=s: s.run(None, feeds)) for v, s in sessions.items()}, rounds=rounds,
                              warmup=1, repeats=3)
    best = min(p50, key=p50.get)
    if p50[best] > (1 - SESSION_MARGIN) * p50[()]:
        best = ()
    return best, {("without " + ", ".join(v) if v else "defaults"): round(t * 1e3, 3) for v, t in p50.items()}


_INT8_OPS = {"MatMulInteger", "QAttention", "ConvInteger", "DynamicQuantizeMatMul", "MatMulIntegerToFloat",
             "DynamicQuantizeLinear", "DequantizeLinear", "QEmbedLayerNormalization"}


def quantize_ort_int8(model: nn.Module, cfg: OrtInt8Config, ctx: TransformContext) -> nn.Module:
    """Export `model`, (optionally) fuse, quantize to int8 in ONNX Runtime; returns the ORT module replacing it."""
    chosen = select_modules(model, _WEIGHTED, cfg.include, cfg.exclude, what="OrtInt8Config")
    excluded = [n for n, m in model.named_modules() if isinstance(m, _WEIGHTED) and n and n not in chosen]
    batch = example_batch(ctx, "OrtInt8Config")
    outliers = _outlier_channels(model, cfg, ctx) if cfg.float_channels else {}

    def post(data: bytes, spec: Any) -> tuple[bytes, dict[str, Any]]:
        data, details = _quantize_bytes(data, cfg, _excluded_nodes(data, model, excluded, cfg.op_types,
                                                                    spec.float_weights))
        if cfg.tune_session:
            timing_batch = ctx.task.batch(32) if ctx.task is not None else batch
            disabled, details["session_timings_ms"] = fastest_session(data, spec.to_inputs(timing_batch))
            data = with_disabled_optimizers(data, disabled)
            details["disabled_optimizers"] = list(disabled)
        return data, details

    hints = {k: v for k, v in (("num_heads", cfg.num_heads), ("hidden_size", cfg.hidden_size)) if v}
    packed = not cfg.optimize if cfg.packed is None else cfg.packed
    new, details = build_ort(model, batch, opset=cfg.opset, optimize=cfg.optimize, post=post, fusion_hints=hints,
                             float_channels=outliers, packed=packed)
    details["float_channels"] = {str(i): ch for i, ch in outliers.items()}
    if details["float_nodes"]:
        warnings.warn(f"OrtInt8Config: ONNX Runtime's quantizer kept float weights in {len(details['float_nodes'])} "
                      f"node(s) of the op types asked for: {details['float_nodes'][:6]}", stacklevel=2)
    ctx.record(layers=chosen, excluded=excluded, **details)
    return new


def _outlier_channels(model: nn.Module, cfg: OrtInt8Config, ctx: TransformContext) -> dict[int, list[int]]:
    """Per block, the FFN channels with the largest activations on the calibration batches."""
    import torch

    from condense.export.onnx import adapter_for

    batches = ctx.calibration_batches(cfg.calibration_batches, what="OrtInt8Config(float_channels=...)")

    def run(m: nn.Module) -> None:
        with torch.inference_mode():
            for b in batches:
                ctx.run_batch(m, b)

    return adapter_for(model).outlier_channels(model, run, cfg.float_channels)


def _replay(model: nn.Module, cfg: OrtInt8Config, details: dict) -> nn.Module:
    return replay_ort(model)


# -- registered transforms ----------------------------------------------------------------------------------------
register_transform(OrtInt8Config, family="quantize", name="ort", replay=_replay, also=[("export", "onnx-int8")], search=True)(quantize_ort_int8)
