"""Where an export goes and how it is checked: target paths, formats, and parity through the task.

Shared by the ONNX export (files.py) and the LiteRT export (litert.py), below both so neither imports the other
back.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from condense.errors import CondenseError
from condense.export.session import OrtModule


def ort_graph(model: nn.Module) -> OrtModule | None:
    """The OrtModule that runs `model` (the model itself, or e.g. OrtSentenceEncoder.graph); None for PyTorch."""
    if isinstance(model, OrtModule):
        return model
    g = getattr(model, "graph", None)
    return g if isinstance(g, OrtModule) else None


FORMATS = {"onnx": ".onnx", "tflite": ".tflite"}  # export format -> file suffix


def target_path(out: str | os.PathLike, *, suffix: str = ".onnx") -> Path:
    """`out` if it names a `suffix` (.onnx, .tflite) file, else `out/model<suffix>`."""
    p = Path(out)
    return p if p.suffix == suffix else p / ("model" + suffix)


def check_export_target(out: str | os.PathLike, *, suffix: str = ".onnx") -> Path:
    """Raise a CondenseError naming the fix unless `out` (a `suffix` file or a folder) can be written; returns the
    file path. Called before any work; writes nothing."""
    from condense.core.outputs import check_output_dir, check_output_file

    if Path(out).suffix == suffix:
        check_output_file(out)
    else:
        check_output_dir(out, kind="export")
    return target_path(out, suffix=suffix)


def check_format(fmt: str) -> str:
    """The export file suffix of `fmt`, or a CondenseError naming the formats."""
    if fmt not in FORMATS:
        raise CondenseError(f"unknown export format {fmt!r}; use one of {sorted(FORMATS)} (e.g. --format onnx)")
    return FORMATS[fmt]


def _as_tensor(out: Any) -> torch.Tensor:
    if isinstance(out, dict):  # a ModelOutput: its first field (logits, last_hidden_state)
        out = next(v for v in out.values() if isinstance(v, torch.Tensor))
    if isinstance(out, (tuple, list)):
        out = out[0]
    return torch.as_tensor(out).detach().float()


def task_parity(task: Any, reference: nn.Module, candidate: nn.Module, batch: Any) -> dict[str, float]:
    """Max abs difference and cosine (mean and min over samples) between two models' task outputs on `batch`."""
    with torch.inference_mode():
        a, b = _as_tensor(task.run_batch(reference, batch)), _as_tensor(task.run_batch(candidate, batch))
    if a.shape != b.shape:
        raise CondenseError(f"the ONNX model's output shape {tuple(b.shape)} differs from the source's "
                            f"{tuple(a.shape)}; re-export it")
    a, b = a.reshape(a.shape[0], -1), b.reshape(b.shape[0], -1)  # (B, D)
    cos = F.cosine_similarity(a.double(), b.double(), dim=1, eps=1e-12)  # (B,)
    return {"max_abs_diff": float((a - b).abs().max()), "cosine": float(cos.mean()), "min_cosine": float(cos.min())}
