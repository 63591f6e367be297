"""LiteRT (TensorFlow Lite) export: litert-torch converts, ai-edge-quantizer makes int8, the LiteRT interpreter checks.

What is traced is the same as for ONNX: the model's `ExportAdapter` (see `condense.export.onnx`) gives the module,
its named inputs and which axes are dynamic; those axes become `torch.export.Dim.AUTO`s, so one .tflite file takes
any batch size (digits). Where litert-torch cannot lower an op on dynamic shapes (minilm's BERT: the mask's
`[:, None, None, :]` and the positions' `arange`), the model is converted at fixed shapes instead (batch 1, the
encoder's longest sequence; see `tflite_from_model`) and `LiteRtModule` runs a batch sample by sample.

int8, measured here (litert-torch 0.10.0, ai-edge-quantizer 0.10.0, ai-edge-litert 2.3.0, 2 threads):
- ai-edge-quantizer on the converted float flatbuffer works for both kinds and keeps a dynamic batch axis:
  `dynamic_wi8_afp32` (int8 weights, float activations) and `static_wi8_ai8` (full-integer; calibration runs the
  float model in the interpreter on the task's calibration batches, ~0.1 s for digits). digits: both kept the test
  accuracy (99.72%, equal to PyTorch). minilm: dynamic kept MRR@10 (0.6094 -> 0.6092, 89.8 -> 23.4 MB) but
  full-integer wrecked it (MRR@10 0.163, cosine to fp32 0.33): BERT's activations do not fit one int8 scale each.
  So int8 means "dynamic" unless "full" is asked for. The full-integer graph takes and returns int8
  (`LiteRtModule` quantizes and dequantizes at the boundary).
- The converter's own option (`quant_config=QuantConfig(pt2e_quantizer=...)`) also works on digits, but needs
  torch.export with the same dynamic shapes, calibration in PyTorch through torchao's prepare_pt2e/convert_pt2e,
  and a second full conversion (~4 s for digits); it gave nothing the quantizer on the flatbuffer does not. So
  condense uses ai-edge-quantizer.

A conversion failure names the op: the converter runs the exported FX graph node by node, so the failing node is
found in the exception's traceback (else in its message, e.g. "Lowering not found: aten.i0.default").
"""
from __future__ import annotations

import contextlib
import io
import json
import os
import re
import warnings
from pathlib import Path
from typing import Any, Callable, Iterator

import torch
import torch.nn.functional as F
from torch import nn

from condense.core.registry import TypeRegistry
from condense.errors import CondenseError, ConfigError
from condense.export.litert_session import (INSTALL, LiteRtModule, _to_input, litert_graph, pad_tokens,
                                           runtime_module, wrap)
from condense.export.keywords import KeywordGraph, named_graph
from condense.export.onnx import export_spec
from condense.export.targets import check_export_target, ort_graph, task_parity

SUFFIX = ".tflite"


def import_litert_torch() -> Any:
    """The `litert_torch` module, or a CondenseError saying how to install it (with ai-edge-litert)."""
    try:
        with _quiet():
            import litert_torch
        import ai_edge_litert  # noqa: F401  (the parity check runs the file in it)
    except ImportError:
        raise CondenseError(f"LiteRT export needs litert-torch and ai-edge-litert: {INSTALL}") from None
    return litert_torch


def import_quantizer() -> Any:
    """The `ai_edge_quantizer` package (its `quantizer` and `recipe` modules), or an install hint."""
    try:
        import ai_edge_quantizer
        from ai_edge_quantizer import quantizer, recipe  # noqa: F401
    except ImportError:
        raise CondenseError(f"LiteRT int8 needs ai-edge-quantizer: {INSTALL}") from None
    return ai_edge_quantizer


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """No progress lines from litert-torch and no warnings from torch.export while converting."""
    old = os.environ.get("LITERT_TORCH_SHOW_PROGRESS")
    os.environ["LITERT_TORCH_SHOW_PROGRESS"] = "n"
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        if old is None:
            os.environ.pop("LITERT_TORCH_SHOW_PROGRESS", None)
        else:
            os.environ["LITERT_TORCH_SHOW_PROGRESS"] = old


def failing_op(exc: BaseException) -> str | None:
    """The torch op the converter failed on: the FX node it was lowering when `exc` was raised, else the op its
    message names; None if neither is known."""
    found = None
    tb = exc.__traceback__
    while tb is not None:
        node = tb.tb_frame.f_locals.get("node")
        if isinstance(node, torch.fx.Node) and node.op == "call_function":
            found = node  # the deepest frame wins: the node being lowered
        tb = tb.tb_next
    if found is not None:
        trace = [ln.strip() for ln in (found.meta.get("stack_trace") or "").splitlines() if ln.strip()]
        src = next((ln for ln in reversed(trace) if ln.startswith("File ")), None)  # the model's own line
        return str(found.target) + (f" ({src}: {trace[-1]})" if src and trace[-1] != src else "")
    m = re.search(r"(aten\.[\w.]+|torch\.ops\.[\w.]+)", str(exc))
    return m.group(1) if m else None


def dynamic_shapes(names: tuple[str, ...], axes: dict[str, dict[int, str]]) -> tuple[dict[int, Any], ...]:
    """ONNX-style dynamic axes ({input: {axis: name}}) as torch.export dynamic shapes.

    `Dim.AUTO`: torch.export infers each axis's range (a text model's sequence axis is bounded by its position
    table) and which axes are equal, instead of failing on a hand-written range."""
    return tuple({ax: torch.export.Dim.AUTO for ax in axes.get(n, {})} for n in names)


def tflite_bytes(module: nn.Module, inputs: tuple[torch.Tensor, ...],
                 dynamic: tuple[dict[int, Any], ...] | dict[str, dict[int, Any]] | None = None,
                 kwargs: dict[str, torch.Tensor] | None = None) -> bytes:
    """Convert `module` (traced on `inputs` and keyword `kwargs`, `dynamic` axes free) to a .tflite flatbuffer with
    litert-torch. Keyword inputs name the graph's inputs (its signature); `dynamic` is then keyed by them.

    Raises a CondenseError naming the op when the converter fails.

    Example:
        >>> data = tflite_bytes(torch.nn.Linear(3, 2), (torch.ones(2, 3),))  # doctest: +SKIP
        >>> LiteRtModule(data)(torch.ones(2, 3)).shape  # doctest: +SKIP
        torch.Size([2, 2])
    """
    litert_torch = import_litert_torch()
    if any(p.device.type != "cpu" for p in module.parameters()):
        raise ConfigError("LiteRT export runs on CPU; move the model there first (model.cpu())")
    was_training = module.training
    module.eval()
    try:
        with _quiet(), torch.no_grad():
            edge = litert_torch.convert(module, tuple(inputs), sample_kwargs=kwargs or None,
                                        dynamic_shapes=dynamic or None)
            data = edge.model_content()
    except CondenseError:
        raise
    except Exception as e:  # the converter raises many types (RuntimeError, AssertionError, torch.export errors)
        op = failing_op(e)
        first = (str(e).strip().splitlines() or [type(e).__name__])[0][:300]
        fix = (f"at op {op}: {type(e).__name__}: {first}; replace that op with standard torch ops LiteRT supports"
               if op else f"while tracing (torch.export): {type(e).__name__}: {first}; the model must trace with "
               "torch.export (no data-dependent Python control flow)")
        raise CondenseError(f"litert-torch could not convert {type(module).__name__} {fix}, and export the float "
                            "model (before torch int8 quantization)") from None
    finally:
        module.train(was_training)
    return bytes(data)


# model type -> fn(model, inputs) -> the inputs to trace at fixed shapes (e.g. token ids padded to the longest
# length); registered by the module defining the model type (condense/tasks/encoder.py registers `pad_to_max_length`).
STATIC_INPUTS: TypeRegistry[Callable[[nn.Module, tuple], tuple]] = TypeRegistry("LiteRT static inputs")


def pad_to_max_length(model: nn.Module, inputs: tuple) -> tuple:
    """A text encoder's (ids, mask) padded to its `max_seq_length`: the static shapes to convert at."""
    return pad_tokens(*inputs, model.max_seq_length)


def tflite_from_model(model: nn.Module, batch: Any) -> tuple[bytes, Any]:
    """(flatbuffer, ExportSpec): `model` converted through its export adapter, traced on `batch`.

    The adapter's dynamic axes are tried first. litert-torch 0.10 cannot lower some ops on dynamic shapes (BERT's
    mask indexing and position `arange`); then the model is converted at fixed shapes instead: batch 1 (the
    `LiteRtModule` runs larger batches one sample at a time) and, for a text encoder, the longest sequence
    (`LiteRtSentenceEncoder` pads to it). `spec.litert_shapes` says which ("dynamic" or "static").
    """
    _refuse_ort(model)
    spec = export_spec(model, batch)
    if isinstance(spec.module, KeywordGraph):
        return _keyword_tflite(spec, batch)
    inputs = spec.to_inputs(batch)
    if not any(spec.dynamic_axes.get(n) for n in spec.input_names):
        return tflite_bytes(spec.module, inputs), _note(spec, "static")
    try:
        return tflite_bytes(spec.module, inputs, dynamic_shapes(spec.input_names, spec.dynamic_axes)), \
            _note(spec, "dynamic")
    except CondenseError as dyn:
        fix = STATIC_INPUTS.find(model)
        one = tuple(t[:1] for t in inputs)
        try:
            data = tflite_bytes(spec.module, fix(model, one) if fix else one)
        except CondenseError as e:
            raise CondenseError(f"{e} (with dynamic axes too: {dyn})") from None
        to_inputs = spec.to_inputs
        spec.to_inputs = (lambda b: fix(model, to_inputs(b))) if fix else to_inputs
        return data, _note(spec, "static")


def _keyword_tflite(spec: Any, batch: dict[str, torch.Tensor]) -> tuple[bytes, Any]:
    """A model taking a dict batch as keywords (Hugging Face): converted through `named_graph`, so the .tflite
    signature's inputs are the batch's keys and its outputs the ModelOutput's fields (`LiteRtModule` then takes
    the same keywords). Dynamic (batch, sequence) axes first; litert-torch 0.10 cannot lower Hugging Face mask code
    on them (measured on BERT, GPT-2, Llama: "'<=' not supported between instances of 'int' and 'Node'"), so then
    fixed shapes: batch 1 and the batch's sequence length (`LiteRtModule` runs a batch sample by sample and pads
    shorter sequences, masked out)."""
    named = named_graph(spec.module)
    kwargs = {n: batch[n] for n in spec.input_names}
    dyn = {n: {ax: torch.export.Dim.AUTO for ax in spec.dynamic_axes.get(n, {})} for n in spec.input_names}
    try:
        data, shapes = tflite_bytes(named, (), dyn, kwargs=kwargs), "dynamic"
    except CondenseError as e:
        try:
            data, shapes = tflite_bytes(named, (), kwargs={n: t[:1] for n, t in kwargs.items()}), "static"
        except CondenseError as e2:
            raise CondenseError(f"{e2} (with dynamic axes too: {e})") from None
    order = LiteRtModule(data).input_names  # the signature's order: positional inputs follow it
    spec.module, spec.input_names = KeywordGraph(spec.module.model, order), order
    spec.to_inputs = lambda b: tuple(b[n] for n in order)
    return data, _note(spec, shapes)


def _refuse_ort(model: nn.Module) -> None:
    if ort_graph(model) is not None:
        raise CondenseError("this model runs in ONNX Runtime (e.g. after a recipe's `export: {format: onnx}` "
                            "step); convert its PyTorch version to LiteRT: the artifact saved before that step, "
                            "or a recipe with `export: {format: tflite}` instead")


def _note(spec: Any, shapes: str) -> Any:
    spec.litert_shapes = shapes
    return spec


def quantize_tflite(data: bytes, mode: str, calibration: list[tuple[torch.Tensor, ...]] | None = None) -> bytes:
    """`data` quantized to int8 with ai-edge-quantizer.

    mode "dynamic": int8 weights, float activations (no calibration); "full": int8 weights and activations,
    scales from running the float model on `calibration` (lists of input tuples, as the graph takes them).
    """
    aeq = import_quantizer()
    if mode not in ("dynamic", "full"):
        raise ConfigError(f"LiteRT int8 mode must be 'dynamic' or 'full', got {mode!r}")
    recipe = aeq.recipe.dynamic_wi8_afp32() if mode == "dynamic" else aeq.recipe.static_wi8_ai8()
    with _quiet():
        q = aeq.quantizer.Quantizer(bytearray(data), recipe)
        result = None
        if q.need_calibration:
            if not calibration:
                raise CondenseError("full-integer LiteRT int8 needs calibration data: use a task with "
                                    "calibration_data (built-in tasks have it) or int8 mode 'dynamic'")
            graph = LiteRtModule(data)  # the float model: its signature key and input dtypes (int64 ids -> int32)
            step = graph.static_batch  # a fixed-batch graph is calibrated on chunks of its batch size
            chunks = [tuple(t[i:i + step] for t in inputs) if step else inputs for inputs in calibration
                      for i in (range(0, inputs[0].shape[0] - step + 1, step) if step else [0])]
            feeds = [{n: _to_input(t, d) for (n, d), t in zip(graph._in, c)} for c in chunks]
            with contextlib.redirect_stderr(io.StringIO()):  # its tqdm bars cannot be switched off otherwise
                result = q.calibrate({graph._key: feeds}, num_threads=torch.get_num_threads())
        with contextlib.redirect_stderr(io.StringIO()):
            out = q.quantize(result, enable_progress_bar=False, enable_progress_report=False).quantized_model
    return bytes(out)


def _first(out: Any) -> torch.Tensor:
    if isinstance(out, dict):  # a ModelOutput: its first field (logits, last_hidden_state)
        return next(v for v in out.values() if isinstance(v, torch.Tensor))
    return out[0] if isinstance(out, (tuple, list)) else out


def parity_tensors(reference: nn.Module, candidate: nn.Module, inputs: tuple[torch.Tensor, ...]) -> dict[str, float]:
    """Max abs difference and cosine (mean, min over samples) between two modules' outputs on `inputs`."""
    with torch.inference_mode():
        a, b = reference(*inputs), candidate(*inputs)
    a, b = _first(a).float(), _first(b).float()
    if a.shape != b.shape:
        raise CondenseError(f"LiteRT output shape {tuple(b.shape)} differs from PyTorch's {tuple(a.shape)}; the "
                            "conversion lost a dynamic axis: check the export adapter's dynamic_axes")
    a, b = a.reshape(a.shape[0], -1), b.reshape(b.shape[0], -1)  # (B, D)
    cos = F.cosine_similarity(a.double(), b.double(), dim=1, eps=1e-12)  # (B,)
    return {"max_abs_diff": float((a - b).abs().max()), "cosine": float(cos.mean()), "min_cosine": float(cos.min())}


# -- the file: `condense export --format tflite` ---------------------------------------------------------------------
def target_path(out: str | os.PathLike) -> Path:
    """`out` if it names a .tflite file, else `out/model.tflite`."""
    p = Path(out)
    return p if p.suffix == SUFFIX else p / ("model" + SUFFIX)


def export_tflite(model: nn.Module, task: Any, out: str | os.PathLike, *, int8: str | None = None,
                  calibration_batches: int = 8, quality: bool = True) -> dict[str, Any]:
    """Write `model` as a .tflite file (fp32, or int8 "dynamic" / "full") and check it in the LiteRT interpreter.

    Args:
        model: a PyTorch model (e.g. a loaded recipe result) or one already running in LiteRT.
        task: the task the model belongs to (example batches, calibration data, how to run and evaluate).
        out: a .tflite file path, or a folder (the file is then `out/model.tflite`).
        int8: None (fp32), "dynamic" (int8 weights) or "full" (int8 weights and activations, calibrated on
            `calibration_batches` of the task's calibration data; check the recorded quality: see the module doc).
        quality: also evaluate the task's metrics through the interpreter (and the source's, to compare).

    Returns the record also written to `<file>.json`: path, bytes, format, int8, "parity" against the source
    (max_abs_diff, cosine, min_cosine; the worse of batch sizes 2 and 1), "parity_against" ("pytorch" or
    "litert"), "quality" ({"source": metrics, "litert": metrics}) and the source lineage.

    Example:
        >>> import tempfile, condense
        >>> task = condense.get_task("digits")
        >>> rec = export_tflite(task.build_model(), task, tempfile.mkdtemp())  # doctest: +SKIP
        >>> rec["quality"]["litert"] == rec["quality"]["source"]  # doctest: +SKIP
        True
    """
    from condense.core import lineage
    from condense.core.atomic import atomic_write_bytes, atomic_write_json

    path = check_export_target(out, suffix=SUFFIX)
    if int8 not in (None, "dynamic", "full"):
        raise ConfigError(f"int8 must be None, 'dynamic' or 'full', got {int8!r}")
    graph = litert_graph(model)
    _refuse_ort(model)
    if graph is None:
        import_litert_torch()  # fail early and clearly, before any work
        if int8 is not None:
            import_quantizer()
    if graph is not None:  # already in LiteRT: write its flatbuffer as is
        if int8 is not None:
            raise CondenseError("this model already runs in LiteRT: export it without --int8 (its flatbuffer is "
                                "written as is), or export its PyTorch source with --int8")
        data, against = graph.tflite_model, "litert"
        shapes = "static" if graph.static_batch else "dynamic"
    else:
        batch = task.batch(2)
        data, spec = tflite_from_model(model, batch)
        shapes = spec.litert_shapes
        if int8 is not None:
            calib = None
            if int8 == "full":
                from condense.core.transforms import TransformContext

                raw = TransformContext(task=task).calibration_batches(calibration_batches, what="LiteRT int8")
                calib = [spec.to_inputs(b) for b in raw]
            data = quantize_tflite(data, int8, calib)
        against = "pytorch"
    output_class = spec.output_class if graph is None else graph.__dict__.get("output_class")
    atomic_write_bytes(path, data)
    exported = wrap(model, runtime_module(path.read_bytes(), output_class)) if graph is None else \
        _rewrap(model, path.read_bytes())
    checks = [task_parity(task, model, exported, task.batch(b)) for b in (2, 1)]
    parity = {"max_abs_diff": max(c["max_abs_diff"] for c in checks), "cosine": min(c["cosine"] for c in checks),
              "min_cosine": min(c["min_cosine"] for c in checks)}
    rec: dict[str, Any] = {
        "path": str(path), "format": "tflite", "bytes": len(data), "int8": int8, "shapes": shapes,
        "output_class": output_class,
        "runtime": _runtime_info(),
        "task": getattr(task, "spec", None) or {"name": task.name}, "parity": parity, "parity_against": against,
        "quality": ({"source": task.metrics(model), "litert": task.metrics(exported)} if quality else None),
        "source_transforms": lineage.lineage(model)["transforms"]}
    atomic_write_json(path.with_suffix(".json"), json.loads(json.dumps(rec, default=str)))
    return rec


def _runtime_info() -> dict[str, Any]:
    from importlib.metadata import PackageNotFoundError, version

    out: dict[str, Any] = {"interpreter": "ai_edge_litert (XNNPACK)", "threads": torch.get_num_threads()}
    for pkg in ("litert-torch", "ai-edge-litert", "ai-edge-quantizer"):
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            out[pkg] = None
    return out


def _rewrap(model: nn.Module, data: bytes) -> nn.Module:
    """A copy of a LiteRT-backed `model` running `data` instead of its own flatbuffer."""
    import copy

    old = litert_graph(model)
    graph = runtime_module(data, old.__dict__.get("output_class") if old is not None else None)
    if isinstance(model, LiteRtModule):
        return graph
    new = copy.copy(model)
    new._modules = dict(model._modules)
    new._modules["graph"] = graph
    return new
