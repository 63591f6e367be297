"""ONNX export with a measured parity check, and ONNX Runtime's transformer fusions.

Why export adapters: `torch.onnx.export` traces whatever `forward` does, and the graph it writes decides what ONNX
Runtime can fuse or even export. `EXPORT_ADAPTERS` maps a model type to its adapter; the module defining the model
registers it (condense/tasks/encoder.py registers the BERT adapter of condense/export/bert.py, condense/tasks/gpt.py
the decoder's of condense/export/gpt.py). Other models export through the generic adapter. Parity with the real
PyTorch `forward` is measured on every export, so an adapter cannot drift unnoticed.
"""
from __future__ import annotations

import contextlib
import io
import logging
import math
import os
import tempfile
import warnings
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from condense.core.registry import Registry, TypeRegistry
from condense.core.task import batch_tensors
from condense.errors import CondenseError, ConfigError, first_line
from condense.export.keywords import KeywordGraph, keyword_parts
from condense.export.session import OrtModule, import_onnxruntime

OPSETS = (17, 18)
EXPORTER_KEY = "condense.exporter"  # ONNX metadata: which torch exporter wrote the graph ("legacy" or "dynamo")
OUTPUT_CLASS_KEY = "condense.output_class"  # ONNX metadata: the ModelOutput class the source returned


@dataclass
class ExportSpec:
    """What to trace and how: the module, named inputs/outputs, dynamic axes, and task batch -> input tensors.

    `fusion` holds ONNX Runtime transformer-fuser hints ({"model_type", "num_heads", "hidden_size"}) or None;
    `float_weights` are weights of side paths that must stay float when the graph is quantized.
    """

    module: nn.Module
    input_names: tuple[str, ...]
    output_names: tuple[str, ...]
    dynamic_axes: dict[str, dict[int, str]]
    to_inputs: Callable[[Any], tuple[torch.Tensor, ...]]
    fusion: dict[str, Any] | None = None
    float_weights: list[np.ndarray] = field(default_factory=list)
    output_class: str | None = None  # "module:Class" of the transformers ModelOutput the source returned


def _batch_tensors(batch: Any) -> tuple[torch.Tensor, ...]:
    return batch_tensors(batch, "ONNX export needs tensor batches (a tensor or a tuple of tensors), got {type}; "
                         "register an ExportAdapter in condense.export.onnx.EXPORT_ADAPTERS that turns this model's "
                         "batches into tensors")


class ExportAdapter:
    """How a model type is exported. The base class: tensors in (positional, or a dict batch as keywords with its
    keys as input names), the model's outputs out (a ModelOutput's tensor fields by name), batch axis dynamic."""

    def spec(self, model: nn.Module, batch: Any, *, float_channels: dict[int, list[int]] | None = None,
             packed: bool = False) -> ExportSpec:
        """The ExportSpec; `float_channels` ({block: [channels]}) kept in float; `packed`: padding dropped where it can."""
        if float_channels:
            raise ConfigError(f"float outlier channels are supported for BERT sentence encoders only, not "
                              f"{type(model).__name__}; set float_channels=0")
        if isinstance(batch, dict):
            return keyword_spec(model, batch)
        n = len(_batch_tensors(batch))
        names = ("input",) if n == 1 else tuple(f"input_{i}" for i in range(n))
        axes = {name: {0: "batch"} for name in names}
        axes["output"] = {0: "batch"}
        return ExportSpec(model, names, ("output",), axes, _batch_tensors)

    def outlier_channels(self, model: nn.Module, run: Callable[[nn.Module], None], k: int) -> dict[int, list[int]]:
        """Per block, the `k` channels with the largest activations while `run(model)` runs calibration data."""
        raise ConfigError(f"float outlier channels are supported for BERT sentence encoders only, not "
                          f"{type(model).__name__}; set float_channels=0")


def keyword_spec(model: nn.Module, batch: dict[str, Any]) -> ExportSpec:
    """The ExportSpec of a model taking a dict batch as keywords (see condense.export.keywords)."""
    graph, names, outputs, axes, output_class = keyword_parts(model, batch)
    return ExportSpec(graph, names, outputs, axes, lambda b: tuple(b[k] for k in names), output_class=output_class)


# source module type -> its ExportAdapter (resolved through the MRO; other modules use the base ExportAdapter).
EXPORT_ADAPTERS: TypeRegistry[ExportAdapter] = TypeRegistry("ONNX export adapter")


def adapter_for(model: nn.Module) -> ExportAdapter:
    """The registered ExportAdapter for `model`'s type, else the generic one."""
    return EXPORT_ADAPTERS.find(model) or ExportAdapter()


def export_spec(model: nn.Module, batch: Any, *, float_channels: dict | None = None, packed: bool = False
                ) -> ExportSpec:  # see `ExportAdapter.spec`
    return adapter_for(model).spec(model, batch, float_channels=float_channels, packed=packed)


# -- export -----------------------------------------------------------------------------------------------------
def check_opset(opset: int) -> int:
    """`opset` if supported, else a ConfigError naming the supported ones."""
    if opset not in OPSETS:
        raise ConfigError(f"opset must be one of {OPSETS}, got {opset!r}; 17 is the default (LayerNormalization "
                          "needs >= 17)")
    return opset


def onnx_bytes(spec: ExportSpec, inputs: tuple[torch.Tensor, ...], *, opset: int = 17) -> bytes:
    """Trace `spec.module` on `inputs` and return the serialised ONNX model (weights inline).

    The legacy TorchScript exporter is tried first (it writes the graphs ONNX Runtime fuses best); where it cannot
    export the model (e.g. Hugging Face decoders' mask code: `aten::diff`, vmap), torch's dynamo exporter is used.
    The graph's metadata records which one wrote it (`condense.exporter`: "legacy" or "dynamo").
    """
    check_opset(opset)
    import_onnxruntime()  # fail early and clearly, before a long export
    if any(p.device.type != "cpu" for p in spec.module.parameters()):
        raise ConfigError("ONNX export runs on CPU; move the model there first (model.cpu())")
    was_training = spec.module.training
    spec.module.eval()
    errors = {}
    try:
        for exporter in ("legacy", "dynamo"):
            try:
                data = _export(spec, inputs, opset, dynamo=exporter == "dynamo")
                break
            except CondenseError:
                raise
            except Exception as e:  # the exporters raise many types; say what to do
                errors[exporter] = first_line(e)
        else:
            raise CondenseError(f"torch.onnx.export failed for {type(spec.module).__name__} with both exporters "
                                f"({errors}); export the float model (before torch int8 quantization), with every "
                                "layer a standard torch op")
    finally:
        spec.module.train(was_training)
    meta = {EXPORTER_KEY: exporter, **({OUTPUT_CLASS_KEY: spec.output_class} if spec.output_class else {})}
    return _with_metadata(data, meta)


def _export(spec: ExportSpec, inputs: tuple[torch.Tensor, ...], opset: int, *, dynamo: bool) -> bytes:
    buf = io.BytesIO()
    with warnings.catch_warnings(), torch.no_grad(), _quiet_logs():
        warnings.simplefilter("ignore")  # tracer warnings about python ints from shapes are expected
        kw: dict[str, Any] = {"dynamo": dynamo, "opset_version": opset, "input_names": list(spec.input_names),
                              "output_names": list(spec.output_names), "dynamic_axes": spec.dynamic_axes}
        if dynamo:  # dynamo takes dynamic_shapes (one per positional input); every named axis is dynamic
            kw.pop("dynamic_axes")
            kw.update(verbose=False, dynamic_shapes=_dynamic_shapes(spec))
            prog = torch.onnx.export(spec.module, inputs, **kw)
            prog.optimize()
            prog.save(buf, external_data=False) if _takes_external(prog) else prog.save(buf)
        else:
            torch.onnx.export(spec.module, inputs, buf, do_constant_folding=True, **kw)
    return buf.getvalue()


def _dynamic_shapes(spec: ExportSpec) -> Any:
    """torch.export's dynamic_shapes for `spec`: the named axes as Dim.DYNAMIC, per positional input (grouped
    under the parameter's name for a `forward(*tensors)`, as KeywordGraph's)."""
    import inspect

    shapes = tuple({d: torch.export.Dim.DYNAMIC for d in spec.dynamic_axes.get(n, {})} for n in spec.input_names)
    params = list(inspect.signature(spec.module.forward).parameters.values())
    if params and params[0].kind is inspect.Parameter.VAR_POSITIONAL:
        return {params[0].name: shapes}
    return shapes


def _takes_external(prog: Any) -> bool:
    import inspect

    return "external_data" in inspect.signature(prog.save).parameters


@contextlib.contextmanager
def _quiet_logs() -> Iterator[None]:
    old = logging.getLogger("torch.onnx").level
    logging.getLogger("torch.onnx").setLevel(logging.ERROR)
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            yield
    finally:
        logging.getLogger("torch.onnx").setLevel(old)


def _with_metadata(data: bytes, meta: dict[str, str]) -> bytes:
    import onnx

    model = onnx.load_from_string(data)
    keep = [p for p in model.metadata_props if p.key not in meta]
    del model.metadata_props[:]
    model.metadata_props.extend(keep)
    for k, v in meta.items():
        model.metadata_props.add(key=k, value=v)
    return model.SerializeToString()


def graph_metadata(data: bytes) -> dict[str, str]:
    """The ONNX graph's metadata_props as a dict (e.g. `condense.exporter`)."""
    import onnx

    return {p.key: p.value for p in onnx.load_from_string(data).metadata_props}


def parity(model: nn.Module, graph: Any, inputs: tuple[torch.Tensor, ...]) -> dict[str, float]:
    """Compare `model(*inputs)` with the ONNX graph (bytes, path or OrtModule): max abs diff and cosines.

    Returns {"max_abs_diff", "cosine" (mean over samples), "min_cosine"}; outputs are flattened per sample.
    """
    ort_model = graph if isinstance(graph, OrtModule) else OrtModule(_read(graph))
    with torch.inference_mode():
        ref = _first(model(*inputs)).float()
        got = _first(ort_model(*inputs)).float()
    if ref.shape != got.shape:
        raise CondenseError(f"ONNX output shape {tuple(got.shape)} differs from PyTorch's {tuple(ref.shape)}; "
                            "the export lost a dynamic axis: check ExportSpec.dynamic_axes")
    a, b = ref.reshape(ref.shape[0], -1), got.reshape(got.shape[0], -1)  # (B, D)
    cos = F.cosine_similarity(a.double(), b.double(), dim=1, eps=1e-12)  # (B,)
    return {"max_abs_diff": float((a - b).abs().max()), "cosine": float(cos.mean()), "min_cosine": float(cos.min())}


def _first(out: Any) -> torch.Tensor:
    if isinstance(out, dict):  # a ModelOutput: its first field (logits, last_hidden_state)
        return next(v for v in out.values() if isinstance(v, torch.Tensor))
    return out[0] if isinstance(out, (tuple, list)) else out


def _read(graph: Any) -> bytes:
    if isinstance(graph, (bytes, bytearray)):
        return bytes(graph)
    with open(os.fspath(graph), "rb") as f:
        return f.read()


def export_onnx(model: nn.Module, task: Any, path: str | os.PathLike, *, opset: int = 17, batch_size: int = 2,
                optimize: bool = False) -> dict[str, Any]:
    """Export `model` to the ONNX file `path` (dynamic batch, and sequence for text) and check it against PyTorch.

    Parity is measured on `task.batch(batch_size)` and on `task.batch(1)` (another shape, so the dynamic axes are
    exercised). Returns {"path", "opset", "bytes", "inputs", "outputs", "fusions", "max_abs_diff", "cosine",
    "min_cosine"}; the worst of the two checks is reported.

    Example:
        >>> import tempfile, condense
        >>> task = condense.get_task("digits")
        >>> r = export_onnx(task.build_model(), task, tempfile.mkdtemp() + "/digits.onnx")
        >>> r["max_abs_diff"] < 1e-4
        True
    """
    from condense.core.atomic import atomic_write_bytes

    batch = task.batch(batch_size)
    spec = export_spec(model, batch)
    data = onnx_bytes(spec, spec.to_inputs(batch), opset=opset)
    fusions: dict[str, int] = {}
    if optimize:
        data, fusions = fuse_transformer(data, spec.fusion)
    atomic_write_bytes(path, data)
    ref = spec.module if isinstance(spec.module, KeywordGraph) else model
    checks = [parity(ref, data, spec.to_inputs(b)) for b in (batch, task.batch(1))]
    return {"path": str(path), "opset": opset, "bytes": len(data), "inputs": list(spec.input_names),
            "exporter": graph_metadata(data).get(EXPORTER_KEY),
            "outputs": list(spec.output_names), "fusions": fusions,
            "max_abs_diff": max(c["max_abs_diff"] for c in checks), "cosine": min(c["cosine"] for c in checks),
            "min_cosine": min(c["min_cosine"] for c in checks)}


# -- ONNX Runtime's transformer fusions ---------------------------------------------------------------------------
@contextlib.contextmanager
def quiet_onnxruntime_tools() -> Iterator[None]:
    """Silence ONNX Runtime's python tools (optimizer, quantizer), which log advice to the root logger."""
    root = logging.getLogger()
    old = root.level
    root.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        root.setLevel(old)


def fuse_transformer(data: bytes, fusion: dict[str, Any] | None) -> tuple[bytes, dict[str, int]]:
    """Run ONNX Runtime's transformer optimizer (attention, SkipLayerNorm, GELU fusion) on a serialised model.

    Returns (fused model bytes, {fused op: count}); a ConfigError if the model has no structure it can fuse.
    """
    if not fusion:
        raise ConfigError("transformer fusion (optimize=True) needs a BERT-like model exported through an adapter "
                          "that knows its heads (e.g. the minilm SentenceEncoder); use optimize=False")
    import onnx
    from onnxruntime.transformers.optimizer import optimize_model

    # the optimizer's shape inference writes scratch files into the current folder: keep them out of the user's
    with tempfile.TemporaryDirectory(prefix="condense-fuse-") as d, contextlib.chdir(d), quiet_onnxruntime_tools():
        opt = optimize_model(onnx.load_from_string(data), model_type=fusion["model_type"],
                             num_heads=fusion["num_heads"], hidden_size=fusion["hidden_size"], opt_level=1)
    stats = {k: int(v) for k, v in opt.get_fused_operator_statistics().items() if v}
    return opt.model.SerializeToString(), stats


def onnx_weights(data: bytes) -> dict[str, np.ndarray]:
    """The weight initializers of a serialised model (float and int8/uint8, no scales, zero points or scalars)."""
    import onnx
    from onnx import numpy_helper

    model = onnx.load_from_string(data)
    kinds = {onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16, onnx.TensorProto.BFLOAT16, onnx.TensorProto.INT8,
             onnx.TensorProto.UINT8}
    out = {}
    for t in model.graph.initializer:
        if t.data_type in kinds and len(t.dims) >= 1 and not t.name.endswith(("_scale", "_zero_point")):
            out[t.name] = numpy_helper.to_array(t)
    return out


# ONNX op type -> fn(node, known) -> MACs of one node, or None when its shapes stayed unknown; `known(*names)`
# gives the shapes of the named tensors (None unless all are fully known).
NodeMacs = Callable[[Any, Callable[..., "list[list[int]] | None"]], "int | None"]
NODE_MACS: Registry[NodeMacs] = Registry("ONNX op MAC counter")


def _matmul_macs(node: Any, known: Callable[..., Any]) -> int | None:
    if not (s := known(node.input[0], node.output[0])):
        return None
    a, out = s
    trans_a = any(at.name == "transA" and at.i for at in node.attribute)
    return math.prod(out) * (a[-2] if trans_a else a[-1])


def _conv_macs(node: Any, known: Callable[..., Any]) -> int | None:
    if not (s := known(node.input[1], node.output[0])):
        return None
    w, out = s
    return math.prod(out) * math.prod(w[1:])


def _attention_macs(node: Any, known: Callable[..., Any]) -> int | None:
    if not (s := known(node.input[0], node.input[1])):
        return None
    (b, t, h), w = s  # projections (h -> 3h'), then scores and context: 2 * t * t * h' per sample
    return b * t * h * w[1] + 2 * b * t * t * (w[1] // 3)


for _op in ("MatMul", "FusedMatMul", "MatMulInteger", "MatMulIntegerToFloat", "Gemm"):
    NODE_MACS.register(_op, _matmul_macs)
for _op in ("Conv", "ConvInteger"):
    NODE_MACS.register(_op, _conv_macs)
for _op in ("Attention", "QAttention"):
    NODE_MACS.register(_op, _attention_macs)


def onnx_macs(data: bytes, input_shapes: list[tuple[int, ...]]) -> tuple[int, list[str]]:
    """Multiply-accumulates of one run of a serialised model on inputs of `input_shapes`, from shape inference.

    Counts the op types in `NODE_MACS` (matmuls, Gemm, Conv/ConvInteger and (Q)Attention). Returns (MACs, names
    of nodes that could not be counted because their shapes stayed unknown, e.g. contrib ops ONNX Runtime's shape
    inference lacks).
    """
    import onnx
    from onnxruntime.tools.symbolic_shape_infer import SymbolicShapeInference

    model = onnx.load_from_string(data)
    for vi, shape in zip(model.graph.input, input_shapes):
        dims = vi.type.tensor_type.shape.dim
        for d, n in zip(dims, shape):
            d.ClearField("dim_param")
            d.dim_value = int(n)
    try:  # in a scratch folder: on incomplete inference ORT's tool writes a debug model into the cwd
        with tempfile.TemporaryDirectory(prefix="condense-shapes-") as d, contextlib.chdir(d), \
                quiet_onnxruntime_tools():
            model = SymbolicShapeInference.infer_shapes(model, auto_merge=True, guess_output_rank=True)
    except Exception:  # incomplete inference (unknown contrib ops): count what the plain ONNX pass knows
        model = onnx.shape_inference.infer_shapes(model)
    shapes: dict[str, list[int | None]] = {t.name: list(t.dims) for t in model.graph.initializer}
    for vi in list(model.graph.value_info) + list(model.graph.input) + list(model.graph.output):
        shapes[vi.name] = [d.dim_value if d.HasField("dim_value") else None
                           for d in vi.type.tensor_type.shape.dim]

    def known(*names: str) -> list[list[int]] | None:
        got = [shapes.get(n) for n in names]
        return None if any(s is None or None in s or not s for s in got) else got  # type: ignore[return-value]

    macs, missing = 0, []
    for node in model.graph.node:
        if node.op_type not in NODE_MACS:
            continue
        n = NODE_MACS.get(node.op_type)(node, known)
        if n is None:
            missing.append(node.name or node.op_type)
        else:
            macs += n
    return macs, missing
