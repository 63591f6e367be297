"""`condense export`: write any model or recipe result as an ONNX file, fp32 or int8, checked in ONNX Runtime.

Why a file next to the artifact format: ONNX Runtime (and every other ONNX consumer) runs it without condense.
The parity check runs the written file in a fresh ONNX Runtime session and compares it with the model it came
from, through the task's own `run_batch` (so minilm compares `encode` embeddings, tinygpt logits), on two batch
sizes. A sidecar `<file>.json` records the task, the parity and the source lineage, so `load_exported` can give a
minilm export its `encode` back.
"""
from __future__ import annotations

import copy
import json
import os
from pathlib import Path
from typing import Any

import torch
from torch import nn

from condense.core import lineage
from condense.core.atomic import atomic_write_bytes, atomic_write_json
from condense.core.transforms import apply_
from condense.errors import CondenseError
from condense.export.runtime import OrtModule, OnnxRuntimeConfig, wrap
from condense.export.targets import (FORMATS, _as_tensor, check_export_target, check_format, ort_graph,  # noqa: F401
                                     target_path, task_parity)

INT8_OPS = ("MatMulInteger", "DynamicQuantizeMatMul", "MatMulIntegerToFloat", "QAttention", "ConvInteger",
            "DynamicQuantizeLinear")


def is_int8(data: bytes) -> bool:
    """Whether a serialised ONNX model computes with int8 operators."""
    import onnx

    return any(n.op_type in INT8_OPS for n in onnx.load_from_string(data).graph.node)


def _quantize(data: bytes, opset: int) -> bytes:
    from condense.quantize.ort import OrtInt8Config, _quantize_bytes

    return _quantize_bytes(data, OrtInt8Config(opset=opset), [])[0]


def _check_exportable(model: nn.Module) -> None:
    """A clear error for models whose layers compute on kernels ONNX cannot express (oneDNN's int8 in eager torch)."""
    from condense.quantize.onednn import Int8Matmul

    if any(isinstance(m, Int8Matmul) for m in model.modules()):
        raise CondenseError("this model's int8 layers run on oneDNN's kernels inside PyTorch (OneDnnInt8Config, "
                            "Int8Config's 'onednn' pick), which an ONNX file cannot express; for ONNX Runtime, "
                            "quantize with OrtInt8Config / Int8Config(backend='ort') instead (a recipe: --set "
                            "steps.N.quantize.backend=ort), or export the float model and pass --int8")


def export_model(model: nn.Module, task: Any, out: str | os.PathLike, *, int8: bool = False,
                 opset: int = 17, format: str = "onnx", int8_mode: str | None = None) -> dict[str, Any]:
    """Write `model` to ONNX (int8 via ONNX Runtime's dynamic quantization if `int8`) and check it.

    Args:
        model: a PyTorch model (e.g. a loaded recipe result) or one already running in ONNX Runtime.
        task: the task the model belongs to (gives example batches and how to run them).
        out: a .onnx file path, or a folder (the file is then `out/model.onnx`).
        format: "onnx", or "tflite" for LiteRT (see `condense.export.litert.export_tflite`; needs
            `pip install 'condense[litert]'`); `opset` is ONNX's only.
        int8_mode: how `int8` quantizes; ONNX: "dynamic" only (the default); tflite: "dynamic" (int8 weights, float
            activations; the default) or "full" (int8 weights and activations, calibrated on the task's data).

    Returns the record also written to `<file>.json`: path, bytes, int8, opset, "parity" against the source
    (max_abs_diff, cosine, min_cosine; the worse of batch sizes 2 and 1), "parity_against" ("pytorch" or, for a
    model that was already an ONNX Runtime module, "onnxruntime") and, then, "recorded_parity_vs_torch" from
    when that model left PyTorch.

    Example:
        >>> import tempfile, condense
        >>> task = condense.get_task("digits")
        >>> rec = export_model(task.build_model(), task, tempfile.mkdtemp())  # doctest: +SKIP
        >>> rec["parity"]["cosine"] > 0.9999  # doctest: +SKIP
        True
    """
    check_format(format)
    _check_exportable(model)
    if format == "tflite":
        from condense.export.litert import export_tflite

        if int8_mode not in (None, "full", "dynamic"):
            raise CondenseError(f"tflite int8_mode must be 'full' or 'dynamic', got {int8_mode!r}")
        return export_tflite(model, task, out, int8=(int8_mode or "dynamic") if int8 else None)
    if int8_mode not in (None, "dynamic"):
        raise CondenseError(f"ONNX int8 is ONNX Runtime's dynamic quantization; int8_mode {int8_mode!r} is for "
                            "format='tflite' only: omit it")
    from condense.quantize.ort import OrtInt8Config

    path = check_export_target(out)
    graph = ort_graph(model)
    recorded = None
    if graph is None:
        cfg = OrtInt8Config(opset=opset) if int8 else OnnxRuntimeConfig(opset=opset)
        ported = apply_(copy.deepcopy(model), cfg, task=task)
        data = ort_graph(ported).onnx_model
        against = "pytorch"
    else:
        data = graph.onnx_model
        if int8 and not is_int8(data):
            data = _quantize(data, opset)
        against = "onnxruntime"
        recorded = next((t.get("details", {}).get("parity_vs_torch") for t in reversed(lineage.lineage(model)
                         ["transforms"]) if "parity_vs_torch" in t.get("details", {})), None)
    atomic_write_bytes(path, data)
    exported = wrap(model, OrtModule(path.read_bytes())) if graph is None else _rewrap(model, path.read_bytes())
    checks = [task_parity(task, model, exported, task.batch(b)) for b in (2, 1)]
    parity = {"max_abs_diff": max(c["max_abs_diff"] for c in checks), "cosine": min(c["cosine"] for c in checks),
              "min_cosine": min(c["min_cosine"] for c in checks)}
    rec = {"path": str(path), "bytes": len(data), "int8": is_int8(data), "opset": opset,
           "task": getattr(task, "spec", None) or {"name": task.name}, "parity": parity, "parity_against": against,
           "recorded_parity_vs_torch": recorded, "source_transforms": lineage.lineage(model)["transforms"]}
    atomic_write_json(path.with_suffix(".json"), json.loads(json.dumps(rec, default=str)))
    return rec


def _rewrap(model: nn.Module, data: bytes) -> nn.Module:
    """A copy of an ORT-backed `model` running `data` instead of its own graph."""
    if isinstance(model, OrtModule):
        return OrtModule(data)
    new = copy.copy(model)
    new._modules = dict(model._modules)
    new._modules["graph"] = OrtModule(data)
    return new


def load_exported(path: str | os.PathLike, *, task: Any = None, trust_task: bool = False,
                  resolve_task: Any = None) -> nn.Module:
    """An exported ONNX file as a module run by ONNX Runtime (a .tflite file: by LiteRT); a sentence encoder gets
    `encode` back.

    `task` (default: the one recorded in the sidecar JSON) supplies the tokenizer for text models; a recorded
    `module:factory` task is rebuilt only with `trust_task=True` (see `condense.load`). A graph that names
    external data files is refused. Use `condense.load_exported`, which knows the tasks; this one rebuilds a
    recorded task or a task name only through `resolve_task(spec_or_name, trust=..., source=...)`.

    Example:
        >>> enc = condense.load_exported("runs/minilm-onnx/model.onnx")  # doctest: +SKIP
        >>> enc.encode(["hello"]).shape  # doctest: +SKIP
        torch.Size([1, 384])
    """
    def resolve(spec: Any, source: str) -> Any:
        if resolve_task is None:
            raise CondenseError(f"{source} needs its task {spec!r} rebuilt; load it with condense.load_exported "
                                "(it knows the tasks), or pass task=<a condense.Task>")
        return resolve_task(spec, trust=trust_task, source=source)

    tflite = Path(path).suffix == ".tflite" or (Path(path).is_dir() and (Path(path) / "model.tflite").is_file()
                                                and not (Path(path) / "model.onnx").is_file())
    path = target_path(path, suffix=".tflite" if tflite else ".onnx")
    if not path.is_file():
        raise CondenseError(f"{path} does not exist; create it with `condense export --model ARTIFACT --out {path}`")
    if tflite:
        from condense.export.litert_session import LiteRtModule, wrap as litert_wrap

        graph, wrap_fn = LiteRtModule(path.read_bytes()), litert_wrap
    else:
        graph, wrap_fn = OrtModule(path.read_bytes()), wrap
    side = path.with_suffix(".json")
    if tflite and side.is_file():  # a .tflite file has no metadata: the record names the source's ModelOutput
        try:
            output_class = json.loads(side.read_text()).get("output_class")
        except (OSError, ValueError, AttributeError):
            output_class = None
        if isinstance(output_class, str):
            graph.__dict__["output_class"] = output_class
    if task is None and side.is_file():
        try:
            spec = json.loads(side.read_text()).get("task")
        except (OSError, ValueError, AttributeError) as e:
            raise CondenseError(f"{side} is not an export record ({e}); pass task= or re-export") from None
        if isinstance(spec, dict) and spec.get("name"):
            task = resolve(spec, f"export record {side}")
    elif isinstance(task, str):
        task = resolve(task, f"export {path}")
    if task is None:
        return graph
    # the wrapper (e.g. the encoder's tokenizer) comes from the task's architecture, or its model if it has none
    like = task.build_skeleton() if task.skeleton is not None else task.build_model()
    return wrap_fn(like, graph)
