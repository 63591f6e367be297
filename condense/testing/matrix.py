"""The compatibility matrix: every technique and export applied to one model, each cell measured in isolation.

A cell is a measured result: speed ratio against the fp32 model (median of interleaved rounds of `task.run_batch`
at one batch size), the change of the task's primary metric, and how far the outputs moved (max abs difference,
cosine of the flattened outputs). A cell that fails, times out or is skipped keeps the reason (the exception's
first line). bench/bench_models.py runs it over the model zoo (`condense.testing.zoo`) and writes the table.

Example:
    >>> from condense.testing.matrix import COLUMNS
    >>> "dynamic-int8" in COLUMNS and "onnx" in COLUMNS
    True
"""
from __future__ import annotations

import copy
import importlib.util
import signal
import tempfile
import time
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Callable, Iterator

import torch
from torch import nn

from condense.core.task import Task
from condense.errors import first_line

SHORT = 8  # fine-tuning steps of the training columns (distillation, early exit) in a matrix run


def _apply(config_fn: Callable[[], Any]) -> Callable[[nn.Module, Task], nn.Module]:
    def run(model: nn.Module, task: Task) -> nn.Module:
        from condense.core.transforms import apply_

        return apply_(model, config_fn(), task=task)
    return run


_CONFIG_MODULE = {"DynamicInt8Config": "condense.quantize.dynamic", "Int8Config": "condense.quantize.backends",
                  "StaticInt8Config": "condense.quantize.static", "OrtInt8Config": "condense.quantize.ort",
                  "UnstructuredConfig": "condense.prune.unstructured", "NMConfig": "condense.prune.nm",
                  "StructuredConfig": "condense.prune.structured", "LayerDropConfig": "condense.prune.layers",
                  "FactorizeConfig": "condense.factorize.api"}


def _q(name: str, **kw: Any) -> Callable[[], Any]:
    def make() -> Any:
        import importlib

        return getattr(importlib.import_module(_CONFIG_MODULE[name]), name)(**kw)
    return make


def _weight_only(method: str) -> Callable[[], Any]:
    def make() -> Any:
        from condense.quantize.weight_only.api import WeightOnlyConfig, WeightOnlyMethod

        return WeightOnlyConfig(method=WeightOnlyMethod(method), bits=4, calibration_batches=4)
    return make


def _short_fit() -> Any:
    from condense.train.loop import FitConfig

    return FitConfig(steps=SHORT, lr=1e-3)


def _distill(model: nn.Module, task: Task) -> nn.Module:
    from condense.distillation.api import DistillConfig, distill

    return distill(model, config=DistillConfig(layers=1, finetune=_short_fit()), task=task)


def _early_exit(model: nn.Module, task: Task) -> nn.Module:
    from condense.early_exit.api import EarlyExitConfig, early_exit_

    return early_exit_(model, EarlyExitConfig(threshold=0.9, finetune=_short_fit()), task=task)


def _export(fmt: str) -> Callable[[nn.Module, Task], nn.Module]:
    def run(model: nn.Module, task: Task) -> nn.Module:
        from condense.export.files import export_model, load_exported

        out = tempfile.mkdtemp(prefix="condense-matrix-")
        if fmt == "tflite":  # the cell evaluates the loaded file itself: not the export's own quality check too
            from condense.export.litert import export_tflite

            rec = export_tflite(model, task, out, quality=False)
        else:
            rec = export_model(model, task, out, format=fmt)
        return load_exported(rec["path"], task=task)
    return run


@dataclass(frozen=True)
class Column:
    """One technique or export: `apply(model copy, task) -> model`; `needs`: a module it cannot run without."""

    apply: Callable[[nn.Module, Task], nn.Module]
    needs: str | None = None


COLUMNS: dict[str, Column] = {
    "dynamic-int8": Column(_apply(_q("DynamicInt8Config"))),
    "int8-auto": Column(_apply(_q("Int8Config"))),
    "static-int8": Column(_apply(_q("StaticInt8Config"))),
    "ort-int8": Column(_apply(_q("OrtInt8Config")), needs="onnxruntime"),
    "rtn-4bit": Column(_apply(_weight_only("rtn"))),
    "gptq-4bit": Column(_apply(_weight_only("gptq"))),
    "unstructured-50": Column(_apply(_q("UnstructuredConfig", sparsity=0.5))),
    "nm-2:4": Column(_apply(_q("NMConfig", n=2, m=4))),
    "structured-25": Column(_apply(_q("StructuredConfig", ratio=0.25))),
    "layer-drop-1": Column(_apply(_q("LayerDropConfig", n_drop=1))),
    "factorize-50": Column(_apply(_q("FactorizeConfig", rank_ratio=0.5))),
    "distill": Column(_distill),
    "early-exit": Column(_early_exit),
    "onnx": Column(_export("onnx"), needs="onnxruntime"),
    "litert": Column(_export("tflite"), needs="litert_torch"),
}


@dataclass
class Cell:
    """One measured (or refused) cell. `status`: "ok", "failed", "timeout" or "skipped"."""

    row: str
    column: str
    status: str
    reason: str = ""
    speed: float | None = None  # fp32 time / this model's time at `batch` (> 1: faster)
    quality: float | None = None  # primary metric of this model
    quality_delta: float | None = None  # minus the fp32 model's
    max_abs: float | None = None
    cosine: float | None = None
    seconds: float = 0.0
    decode: float | None = None  # decode tokens/s through the model's `generate` (KV cache), if it still has one
    decode_speed: float | None = None  # this model's decode tokens/s / fp32's (> 1: faster)
    decode_note: str = ""  # why decode was not measured where it could have been

    def text(self, metric_digits: int = 4) -> str:
        """The Markdown table cell."""
        if self.status != "ok":
            return f"{self.status}: {self.reason}".replace("|", "/")
        out = (f"{self.speed:.2f}x, {self.quality_delta:+.{metric_digits}f}, "
               f"max {self.max_abs:.2g} / cos {self.cosine:.4f}")
        if self.decode is not None:
            out += f", decode {self.decode:.0f} tok/s ({self.decode_speed:.2f}x)"
        elif self.decode_note:
            out += f", decode {self.decode_note}".replace("|", "/")
        return out


class CellTimeout(Exception):
    pass


@contextmanager
def time_limit(seconds: float | None) -> Iterator[None]:
    """Raise CellTimeout after `seconds` (SIGALRM, main thread only; None or elsewhere: no limit)."""
    import threading

    if not seconds or threading.current_thread() is not threading.main_thread():
        yield
        return

    def fire(*_: Any) -> None:
        raise CellTimeout(f"over the {seconds:.0f} s limit per cell")

    old = signal.signal(signal.SIGALRM, fire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


def _tensor(out: Any) -> torch.Tensor:
    if isinstance(out, torch.Tensor):
        return out
    if isinstance(out, dict):
        out = next(iter(out.values()))
    elif isinstance(out, (tuple, list)):
        out = out[0]
    return torch.as_tensor(out)


def compare(a: Any, b: Any) -> tuple[float, float]:
    """(max abs difference, cosine) of two outputs, flattened, in float64."""
    x, y = _tensor(a).detach().double().flatten(), _tensor(b).detach().double().flatten()
    if x.shape != y.shape:
        raise ValueError(f"output shape changed: {tuple(_tensor(a).shape)} vs {tuple(_tensor(b).shape)}")
    return float((x - y).abs().max()), float(torch.nn.functional.cosine_similarity(x, y, dim=0))


@dataclass
class Baseline:
    """The fp32 model's figures every cell of a row is compared with."""

    model: nn.Module
    batch: Any
    output: Any
    quality: float
    decode: float | None = None  # decode tokens/s through `generate` (generative tasks, decode_tokens > 0)
    decode_tokens: int = 0  # new tokens per timed generation at batch 1; 0: decode not measured


def baseline(task: Task, batch_size: int, *, decode_tokens: int = 0, rounds: int = 3) -> Baseline:
    """The fp32 model's output on one batch, its primary metric and (a generative task, `decode_tokens` > 0) its
    decode tokens/s: batch 1, `decode_tokens` new tokens, median of `rounds`."""
    model = task.build_model().eval()
    batch = task.batch(batch_size)
    with torch.inference_mode():
        out = task.run_batch(model, batch)
        quality = task.evaluate(model)[task.primary_metric]
    base = Baseline(model, batch, out, float(quality))
    if decode_tokens and task.generate is not None:
        base.decode_tokens = decode_tokens
        base.decode = decode_rates(task, {"fp32": model}, decode_tokens, rounds=rounds)["fp32"]
    return base


def decode_rates(task: Task, models: dict[str, nn.Module], tokens: int, *, rounds: int) -> dict[str, float]:
    """Decode tokens/s of each model through `task.generate` at batch 1 (medians of interleaved rounds)."""
    from condense.measurement.timing import interleaved_p50

    produced: dict[str, int] = {}

    def gen(name: str, m: nn.Module) -> Callable[[], None]:
        def run() -> None:
            produced[name] = task.generate(m, 1, tokens)
        return run

    with torch.inference_mode():
        p50 = interleaved_p50({k: gen(k, m) for k, m in models.items()}, rounds=rounds, warmup=1, repeats=1)
    return {k: produced[k] / p50[k] for k in models}


def _decode(task: Task, base: Baseline, model: nn.Module, cell: Cell, rounds: int) -> None:
    """Decode tokens/s of a cell's model vs fp32's, when it still generates as a torch module (its own
    `generate` with the KV cache); runtimes that replaced the module (ONNX Runtime, LiteRT) are not timed."""
    if not base.decode_tokens or not hasattr(model, "generate"):
        return
    try:
        r = decode_rates(task, {"fp32": base.model, "new": model}, base.decode_tokens, rounds=rounds)
    except Exception as e:  # noqa: BLE001  (the cell is measured; only its decode figure is missing, said why)
        cell.decode_note = "failed: " + first_line(e, 60)
        return
    cell.decode, cell.decode_speed = r["new"], r["new"] / r["fp32"]


def run_cell(task: Task, base: Baseline, row: str, name: str, column: Column | None = None, *,
             rounds: int = 7, time_limit_s: float | None = 300.0) -> Cell:
    """Apply column `name` to a copy of the baseline model and measure it; never raises (the cell says why)."""
    column = column or COLUMNS[name]
    t0 = time.perf_counter()
    if column.needs and importlib.util.find_spec(column.needs) is None:
        return Cell(row, name, "skipped", f"{column.needs} is not installed")
    try:
        with time_limit(time_limit_s):
            model = column.apply(copy.deepcopy(base.model), task)
            model.eval()
            with torch.inference_mode():
                out = task.run_batch(model, base.batch)
                max_abs, cos = compare(out, base.output)
                quality = float(task.evaluate(model)[task.primary_metric])
                speed = speed_ratio(task, base, model, rounds=rounds)
    except (Exception, CellTimeout) as e:  # noqa: BLE001  (a cell records any failure and the run goes on)
        status = "timeout" if isinstance(e, CellTimeout) else "failed"
        return Cell(row, name, status, first_line(e, 90), seconds=time.perf_counter() - t0)
    cell = Cell(row, name, "ok", speed=speed, quality=quality, quality_delta=quality - base.quality,
                max_abs=max_abs, cosine=cos)
    try:
        with time_limit(max(1.0, time_limit_s - (time.perf_counter() - t0)) if time_limit_s else None):
            _decode(task, base, model, cell, rounds=max(1, rounds // 2))
    except CellTimeout:
        cell.decode_note = "not timed: the cell's time limit ran out"
    cell.seconds = time.perf_counter() - t0
    return cell


def speed_ratio(task: Task, base: Baseline, model: nn.Module, *, rounds: int = 7) -> float:
    """fp32 seconds / `model` seconds per `task.run_batch` on the baseline batch: medians of interleaved rounds."""
    from condense.measurement.timing import interleaved_p50

    fns = {"fp32": lambda: task.run_batch(base.model, base.batch), "new": lambda: task.run_batch(model, base.batch)}
    p50 = interleaved_p50(fns, rounds=rounds, warmup=1, repeats=3)
    return p50["fp32"] / p50["new"]
