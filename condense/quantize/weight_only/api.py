"""Weight-only quantization (RTN, GPTQ or AWQ) for generative models: `quantize_(model, WeightOnlyConfig(...))`.

Each selected `nn.Linear` (or linear-like layer, e.g. GPT-2's Conv1D, converted first) becomes a
`WeightOnlyLinear` holding 2/3/4/8-bit packed weights with per-group scales; activations stay float. Decoding a
small batch is bound by reading weights, which is what this shrinks.
The lineage records the layers, so `condense.load` rebuilds the packed modules and the codec fills them.

A group size that does not divide a layer's in_features (Llama's intermediate_size=688 with 32) is replaced, for
that layer only, by the divisor of in_features nearest to it (688 -> 43): a warning lists those layers and the
lineage records them under "group_sizes", which replay reads. A tied layer (an lm_head sharing the token
embedding's weight, quantized only if `exclude` lets it through) gets its own packed copy: the tie is broken, and
a warning says so.

`kernel` says what the packed layers execute on (see `kernels`): "dequantize", a named low-bit kernel,
or "auto" (the default): measured on the model's own layer shapes at batch 1 and the fastest kept; the lineage
records the choice, the reason and every candidate's times, and `condense.load` puts the layers back on it (or, where this
machine lacks it, on "dequantize", with a warning).
"""
from __future__ import annotations

import copy
import enum
import importlib.util
from collections import Counter
import warnings
from typing import ClassVar

import torch
from torch import nn

from condense.core.linear_like import linear_like_types, linear_weight, linearize_, tied_weights, warn_tied
from condense.core.config import check_choice, check_float, check_patterns, check_positive_int, config
from condense.core.transforms import TransformContext, register_transform
from condense.errors import ConfigError
from condense.export.kvstep import kv_step_adapter
from condense.core.select import select_modules
from condense.quantize.weight_only.awq import awq_scale_
from condense.quantize.weight_only.gptq import gptq_model_, gptq_quantize
from condense.quantize.weight_only.kernel_select import (assign_kernel_, measure_kernels, pick_kernels, shape_key,
                                                          why_dequantize)
from condense.quantize.weight_only.kernels import DEQUANTIZE, kernel_names
from condense.quantize.weight_only.linear import WeightOnlyLinear
from condense.quantize.weight_only.ort_graph import GRAPH_KERNELS, graph_lm
from condense.quantize.weight_only.rtn import effective_group_size, nearest_group_size, rtn_quantize

BITS = (2, 3, 4, 8)
SCALE_DTYPES = {"float16": torch.float16, "float32": torch.float32}


class WeightOnlyMethod(enum.Enum):
    """How weights are rounded: RTN (nearest grid point, no data), GPTQ (error feedback from calibration) or AWQ
    (activation-aware per-channel scales searched on calibration data, then RTN; see `awq`)."""

    RTN = "rtn"
    GPTQ = "gptq"
    AWQ = "awq"


@config
class WeightOnlyConfig:
    """Weight-only quantization of `nn.Linear` (and linear-like) layers to packed low-bit integers.

    Args:
        method: RTN (no data), GPTQ or AWQ (both need calibration batches: a task or `calibration=`). AWQ folds
            its scales into the preceding norm or Linear where the model allows it; elsewhere the layer multiplies
            its input by 1/s itself (lineage: "input_scaled").
        bits: 2, 3, 4 or 8 bits per weight.
        group_size: input columns sharing one scale/zero point; -1 = one group per output channel. A layer whose
            in_features it does not divide uses the nearest divisor instead (warned, recorded in the lineage).
            Default 32: it divides the widths of common models, including tinygpt's default preset (160 and 640
            wide, which 64 and 128 do not divide).
        symmetric: symmetric grid (fixed zero point) instead of asymmetric min-max.
        damp: GPTQ dampening, as a fraction of the Hessian's mean diagonal.
        act_order: GPTQ: quantize columns in order of decreasing Hessian diagonal (stores a permutation).
        sequential: GPTQ: collect each layer's inputs from a model whose earlier layers are already quantized
            (standard); False collects every layer's inputs at once from the float model.
        calibration_batches: GPTQ/AWQ: how many calibration batches to use (at most).
        awq_grid: AWQ: alpha grid points in [0, 1) searched per group of layers sharing an input (llm-awq: 20).
        scale_dtype: "float16" (default, smaller) or "float32" storage for scales.
        include: module-name patterns to quantize (fnmatch).
        exclude: module-name patterns to keep in float. Default ("lm_head",): the output projection feeds the
            logits directly, so its error hits the loss unaveraged, and it is small next to the blocks (GPTQ's
            and AWQ's published results also keep it in float); pass exclude=() to quantize it too.
        kernel: what the layers run on: "auto" (default: per layer shape the fastest of the kernels below,
            measured at batch 1 on this machine), "dequantize" (unpack on every call), "torch-int4" (2/3/4 bits, group
            size 32-256), "torch-int8" (8 bits, group_size=-1), "ort-nbits" (ONNX Runtime MatMulNBits, float32;
            power-of-two groups); the torch kernels compute in bfloat16 around the exact integers.
            "ort-graph" / "ort-graph-a8" run the whole model (every decode step, prefill and evaluation) as one
            ONNX Runtime graph with MatMulNBits on these integers (float32 / int8 activations; see `ort_graph`):
            the model becomes an `OrtGraphLM`; needs a KV-step adapter (tinygpt's GPT has one). "auto" also
            times "ort-graph-a8" against its per-layer pick on a model with an adapter and takes it when one-token
            steps run `GRAPH_MARGIN` (1.2x) faster (lineage: "graph_candidate"; tinygpt-large GPTQ 4-bit: 4.51x fp32
            decode against the per-layer kernels' 2.17x, BENCHMARKS.md "weight-only-peers").
        whole_graph: with kernel="auto", allow the whole-graph runtime (default True). False keeps the model's own
            module with per-layer kernels: the graph returns logits only (no hidden states, no training), so set it
            when later steps need those.

    Example:
        >>> cfg = WeightOnlyConfig(method=WeightOnlyMethod.GPTQ, bits=4, group_size=64)
        >>> cfg.to_dict()["method"], cfg.exclude
        ('gptq', ('lm_head',))
    """

    LAYER_TYPES: ClassVar[tuple[type, ...]] = (nn.Linear,)  # what it quantizes (not a field)

    method: WeightOnlyMethod = WeightOnlyMethod.RTN
    bits: int = 4
    group_size: int = 32
    symmetric: bool = False
    damp: float = 0.01
    act_order: bool = False
    sequential: bool = True
    calibration_batches: int = 16
    awq_grid: int = 20
    scale_dtype: str = "float16"
    include: tuple[str, ...] = ("*",)
    exclude: tuple[str, ...] = ("lm_head",)
    kernel: str = "auto"
    whole_graph: bool = True

    def __post_init__(self) -> None:
        if isinstance(self.method, str):
            try:
                object.__setattr__(self, "method", WeightOnlyMethod(self.method.lower()))
            except ValueError:
                pass
        if not isinstance(self.method, WeightOnlyMethod):
            raise ConfigError(f"WeightOnlyConfig.method must be one of {[m.value for m in WeightOnlyMethod]}, "
                              f"got {self.method!r}")
        if isinstance(self.bits, bool) or self.bits not in BITS:
            raise ConfigError(f"WeightOnlyConfig.bits must be one of {', '.join(map(str, BITS))}, got {self.bits!r}")
        if isinstance(self.group_size, bool) or not isinstance(self.group_size, int) or \
                (self.group_size < 1 and self.group_size != -1) or self.group_size > 1 << 24:
            raise ConfigError(f"WeightOnlyConfig.group_size must be a positive integer (e.g. 128, 64, 32) or -1 "
                              f"for per-channel, got {self.group_size!r}")
        check_float(self, "damp", lo=0, hi=1, lo_open=True, example=0.01)
        check_positive_int(self, "calibration_batches", example=16)
        check_positive_int(self, "awq_grid", example=20)
        if self.act_order and self.method is not WeightOnlyMethod.GPTQ:
            raise ConfigError("WeightOnlyConfig.act_order only applies to GPTQ; set method=GPTQ or act_order=False")
        check_choice(self, "scale_dtype", SCALE_DTYPES, example="float16")
        if self.kernel not in ("auto", *kernel_names(self.bits), *GRAPH_KERNELS):
            raise ConfigError(f"WeightOnlyConfig.kernel must be one of "
                              f"{kernel_names(self.bits) + sorted(GRAPH_KERNELS) + ['auto']} for "
                              f"bits={self.bits}, got {self.kernel!r}; 'auto' measures them and keeps the fastest")
        if not isinstance(self.whole_graph, bool):
            raise ConfigError(f"WeightOnlyConfig.whole_graph must be true or false, got {self.whole_graph!r}")
        check_patterns(self, example="('blocks.*',)")


def _set(model: nn.Module, name: str, module: nn.Module) -> None:
    parent, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent), child, module)


def plan_group_sizes(model: nn.Module, names: list[str], group_size: int) -> dict[str, int]:
    """{layer: group size} for the layers whose in_features `group_size` does not divide (nearest divisor), warned.

    Example:
        >>> plan_group_sizes(nn.Sequential(nn.Linear(88, 4), nn.Linear(4, 4)), ["0", "1"], 4)
        {}
    """
    sizes = {}
    for n in names:
        in_features = linear_weight(model.get_submodule(n)).shape[1]
        g = nearest_group_size(group_size, in_features)
        if g != group_size:
            sizes[n] = g
    if sizes:
        shown = ", ".join(f"{n} ({linear_weight(model.get_submodule(n)).shape[1]} in) -> {g}"
                          for n, g in list(sizes.items())[:6])
        warnings.warn(f"WeightOnlyConfig: group_size={group_size} does not divide the in_features of {len(sizes)} "
                      f"layer(s); each uses the nearest divisor instead: {shown}{' ...' if len(sizes) > 6 else ''} "
                      "(recorded in the lineage as group_sizes); pick a group_size dividing every layer, or "
                      "-1 (per channel), to have one size", stacklevel=3)
    return sizes


def quantize_weight_only(model: nn.Module, cfg: WeightOnlyConfig, ctx: TransformContext) -> nn.Module:
    """Swap the selected Linears for `WeightOnlyLinear`s quantized by RTN or GPTQ (in place)."""
    if cfg.kernel in GRAPH_KERNELS:
        kv_step_adapter(model, f"WeightOnlyConfig(kernel={cfg.kernel!r})")  # fail before quantizing
    names = select_modules(model, cfg.LAYER_TYPES + linear_like_types(), cfg.include, cfg.exclude,
                           what="WeightOnlyConfig")
    sizes = plan_group_sizes(model, names, cfg.group_size)
    tied = tied_weights(model, names)
    warn_tied(tied, "WeightOnlyConfig")
    converted = linearize_(model, names)
    sdt = SCALE_DTYPES[cfg.scale_dtype]
    if cfg.method is not WeightOnlyMethod.GPTQ:
        input_scales = _awq_(model, names, sizes, cfg, ctx) if cfg.method is WeightOnlyMethod.AWQ else {}
        for n in names:
            lin = model.get_submodule(n)
            qw = rtn_quantize(lin.weight, bits=cfg.bits, group_size=sizes.get(n, cfg.group_size),
                              symmetric=cfg.symmetric, scale_dtype=sdt)
            _set(model, n, WeightOnlyLinear.from_quantized(qw, lin.bias, input_scale=input_scales.get(n)))
    else:
        batches = ctx.calibration_batches(cfg.calibration_batches, what="GPTQ (WeightOnlyConfig)")

        def quantize_layer(name: str, lin: nn.Linear, hessian: torch.Tensor) -> nn.Module:
            qw = gptq_quantize(lin.weight, hessian, bits=cfg.bits, group_size=sizes.get(name, cfg.group_size),
                               symmetric=cfg.symmetric, damp=cfg.damp, act_order=cfg.act_order, scale_dtype=sdt)
            return WeightOnlyLinear.from_quantized(qw, lin.bias)

        was_training = model.training
        model.eval()
        try:
            gptq_model_(model, names, batches, ctx.run_batch, quantize_layer, sequential=cfg.sequential)
        finally:
            model.train(was_training)
    ctx.record(layers=names, bits=cfg.bits, group_size=cfg.group_size)
    for key, value in (("group_sizes", sizes), ("linearized", sorted(converted)), ("tied", tied)):
        if value:
            ctx.record(**{key: value})
    return _run_on_kernel(model, names, cfg, ctx)


def _awq_(model: nn.Module, names: list[str], sizes: dict[str, int], cfg: WeightOnlyConfig,
          ctx: TransformContext) -> dict[str, torch.Tensor]:
    """Search and fold AWQ scales into the float model (see `awq`); returns {layer: 1/s} it must apply itself."""
    batches = ctx.calibration_batches(cfg.calibration_batches, what="AWQ (WeightOnlyConfig)")
    gs = {n: effective_group_size(sizes.get(n, cfg.group_size), linear_weight(model.get_submodule(n)).shape[1])
          for n in names}
    was_training = model.training
    model.eval()
    try:
        folded, input_scales, alphas = awq_scale_(model, names, batches, ctx.run_batch, bits=cfg.bits,
                                                  group_sizes=gs, symmetric=cfg.symmetric,
                                                  scale_dtype=SCALE_DTYPES[cfg.scale_dtype], grid=cfg.awq_grid)
    finally:
        model.train(was_training)
    ctx.record(awq_alpha=alphas, awq_folded=folded)
    if input_scales:
        ctx.record(input_scaled=sorted(input_scales))
    return input_scales


def _run_on_kernel(model: nn.Module, names: list[str], cfg: WeightOnlyConfig, ctx: TransformContext
                   ) -> nn.Module:
    """Put the quantized layers on `cfg.kernel` (measured first for "auto"), recording the choice; returns the
    model (an `OrtGraphLM` around it for a whole-graph kernel)."""
    if cfg.kernel in GRAPH_KERNELS:
        new = graph_lm(model, cfg.kernel)
        new.graph()  # build now: export errors and float-left layers surface at quantize time
        ctx.record(kernel=cfg.kernel, graph_bytes=len(new.graph()))
        if new.float_layers:
            ctx.record(graph_float_layers=new.float_layers)
        return new
    kernel: str | dict[str, str] = cfg.kernel
    if kernel == "auto":
        rows = measure_kernels(model, names, cfg.bits)
        kernel, reason = pick_kernels(rows, Counter(shape_key(model.get_submodule(n)) for n in names))
        ctx.record(kernel_reason=reason, kernel_candidates=rows, kernel_threads=torch.get_num_threads())
        slow = why_dequantize(rows, kernel)
        if slow:
            warnings.warn(f"WeightOnlyConfig(kernel='auto'): layers of {len(slow)} of {len(kernel)} shape(s) stay on "
                          "the dequantizing path (unpacked on every call): " +
                          "; ".join(f"{s}: {why}" for s, why in slow.items()), stacklevel=3)
    ctx.record(kernel=kernel)
    fallback = assign_kernel_(model, names, kernel, what="WeightOnlyConfig")
    if fallback:
        ctx.record(kernel_fallback=fallback)
    if cfg.kernel == "auto" and cfg.whole_graph:
        graph = _whole_graph_if_faster(model, ctx)
        if graph is not None:
            return graph
    return model


GRAPH_MARGIN = 1.2  # the whole graph must decode this much faster than the per-layer pick to replace the module


def _whole_graph_if_faster(model: nn.Module, ctx: TransformContext) -> nn.Module | None:
    """kernel="auto" on a model with a KV-step adapter (a causal LM whose decode step condense can export): time
    one-token steps of the per-layer pick against the same integers run as one ONNX Runtime graph
    ("ort-graph-a8"); the graph (an `OrtGraphLM`) when it is `GRAPH_MARGIN` faster and packs every layer, else None.
    Recorded either way (`graph_candidate`)."""
    from condense.export.kvstep import KV_STEP_ADAPTERS
    from condense.measurement.timing import interleaved_p50

    if KV_STEP_ADAPTERS.find(model) is None:
        return None
    if importlib.util.find_spec("onnxruntime") is None:
        return None
    kernel = "ort-graph-a8"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            graph = graph_lm(copy.deepcopy(model), kernel)
            graph.graph()
        except Exception as e:  # noqa: BLE001 - an export the graph cannot take leaves the per-layer pick
            ctx.record(graph_candidate={"kernel": kernel, "error": f"{type(e).__name__}: {str(e)[:200]}"})
            return None
    if graph.float_layers:
        ctx.record(graph_candidate={"kernel": kernel, "error": f"{len(graph.float_layers)} layer(s) not packable"})
        return None
    idx = torch.zeros(1, 1, dtype=torch.long)
    with torch.inference_mode():
        p50 = interleaved_p50({"per-layer": lambda: model(idx), kernel: lambda: graph(idx)}, rounds=3, warmup=2,
                              repeats=5, min_time_s=0.3)
    ratio = p50["per-layer"] / p50[kernel]
    picked = ratio >= GRAPH_MARGIN
    ctx.record(graph_candidate={"kernel": kernel, "step_ms": round(p50[kernel] * 1e3, 4),
                                "per_layer_step_ms": round(p50["per-layer"] * 1e3, 4), "speedup": round(ratio, 3),
                                "picked": picked})
    if not picked:
        return None
    ctx.record(layer_kernels=ctx.details.get("kernel"), kernel=kernel)  # load rebuilds the graph from "kernel"
    return graph  # built and timed above (from a copy holding the same packed layers): not exported again


def _replay(model: nn.Module, cfg: WeightOnlyConfig, details: dict) -> nn.Module:
    """Rebuild empty `WeightOnlyLinear`s of the recorded layers' shapes (the codec fills them)."""
    act_order = cfg.method is WeightOnlyMethod.GPTQ and cfg.act_order
    sizes = details.get("group_sizes", {})
    linearize_(model, list(details["layers"]))
    scaled = set(details.get("input_scaled", ()))
    for n in details["layers"]:
        lin = model.get_submodule(n)
        _set(model, n, WeightOnlyLinear(lin.in_features, lin.out_features, bits=cfg.bits,
                                        group_size=int(sizes.get(n, cfg.group_size)),
                                        bias=lin.bias is not None, act_order=act_order, input_scale=n in scaled,
                                        scale_dtype=SCALE_DTYPES[cfg.scale_dtype], device=lin.weight.device))
    kernel = details.get("kernel", DEQUANTIZE)
    if isinstance(kernel, str) and kernel in GRAPH_KERNELS:  # the graph is built from the loaded bytes on first use
        return graph_lm(model, kernel)
    if kernel != DEQUANTIZE:  # the codec fills the bytes next; the kernel builds its layout on first use
        assign_kernel_(model, list(details["layers"]), kernel, what="loading a weight-only model")
    return model


# -- registered transforms ----------------------------------------------------------------------------------------
register_transform(WeightOnlyConfig, family="quantize", name="weight-only", replay=_replay)(quantize_weight_only)
