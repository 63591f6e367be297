"""`Int8Config`: int8 on whichever backend is fastest here, chosen by measuring, not by guessing.

With `backend="auto"` every applicable int8 variant is built (torch dynamic, torch static, ONNX Runtime with and
without its transformer fusions, oneDNN's AMX/VNNI kernels and bf16 where the CPU has them natively), each is
timed on the task's own batch with `time_call` (interleaved rounds, so a busy machine slows them alike) and evaluated on the task's metric, fastest first, until one stays within `tolerance`
of fp32: that one is kept (the slower ones could not win, so their evaluation is skipped unless `evaluate_all`).
The lineage records the pick, the reason, and every candidate's p50 and build and evaluation seconds.

The decision itself is `pick`, a pure function of the measured rows; measuring is `measure_candidates`. Note
that the metric used to qualify candidates is the task's evaluation metric, as `measure` reports it.
"""
from __future__ import annotations

import copy
import enum
import time
import warnings
from typing import Any, Callable

import torch
from torch import nn

from condense.core.config import check_float, check_int, config, config_from_dict, show
from condense.core.transforms import TRANSFORMS, TransformContext, register_transform, run_transform
from condense.errors import CondenseError, ConfigError, first_line
from condense.measurement.timing import interleaved_p50


class Backend(str, enum.Enum):
    """Where the int8 kernels come from."""

    AUTO = "auto"
    TORCH = "torch"  # torch.ao dynamic int8 (per-channel), x86 kernels
    TORCH_STATIC = "torch-static"  # torch.ao FX static int8 with calibration
    ORT = "ort"  # ONNX Runtime dynamic int8 (session-level fusions only)
    ORT_FUSED = "ort-fused"  # ONNX Runtime dynamic int8 after its BERT transformer fusions
    BF16 = "bf16"  # not int8: bf16 matmuls (Bf16Config), a candidate only where the CPU has native bf16
    ONEDNN = "onednn"  # static int8 on oneDNN's AMX/VNNI kernels in eager torch (OneDnnInt8Config), where native


@config
class Int8Config:
    """Int8 quantization on the backend you name, or on the fastest one that keeps quality (`"auto"`).

    Args:
        backend: "auto", "torch", "torch-static", "ort", "ort-fused", "onednn" (static int8 on oneDNN's AMX/VNNI
            kernels, padding dropped on BERT encoders: `OneDnnInt8Config`) or "bf16" (bf16 matmuls, not int8).
        per_channel: per-output-channel weight scales.
        float_channels: ORT and oneDNN backends on BERT encoders: FFN outlier channels per block kept in float
            (see OrtInt8Config, OneDnnInt8Config); other models get 0, recorded in the lineage's applied config. 8 rather than 4: on
            all-MiniLM-L6-v2 with ORT's tuned session, 4 left the "ort" candidate at MRR@10 0.6011 (98.6% of fp32,
            outside a 1% budget), 8 at 0.6085 (99.9%): `python bench/bench_int8_minilm.py --float-channels 4`
            against the default.
        tolerance: largest relative change of the task's primary metric vs fp32 a candidate may have (0.01 = 1%).
        batch_size: batch size the candidates are timed at (0 = the task's largest).
        min_time_s: seconds of timing per candidate.
        include: module-name patterns to quantize (fnmatch); exclude: patterns to keep in float.
        bf16: with "auto", also measure bf16 matmuls (`Bf16Config`) where the CPU has native bf16 (avx512_bf16 /
            amx_bf16; OpenVINO's default there), kept only where faster than every int8 candidate within
            `tolerance`. Its weights take 2 bytes, not 1: False keeps the pick int8. Where the CPU lacks native
            bf16 the candidate is not built, and the lineage says why.
        evaluate_all: with "auto", evaluate every candidate's metric. False (default): candidates are evaluated
            fastest first and those slower than the first one within `tolerance` are not (they cannot be picked;
            the lineage's rows say so). On minilm each evaluation takes tens of seconds, most of the call.

    Example:
        >>> Int8Config(backend="ort").to_dict()["backend"]
        'ort'
    """

    backend: Backend = Backend.AUTO
    per_channel: bool = True
    float_channels: int = 8
    tolerance: float = 0.01
    batch_size: int = 0
    min_time_s: float = 1.5
    include: tuple[str, ...] = ("*",)
    exclude: tuple[str, ...] = ()
    bf16: bool = True
    evaluate_all: bool = False

    def __post_init__(self) -> None:
        try:
            object.__setattr__(self, "backend", Backend(self.backend))
        except (ValueError, TypeError):
            raise ConfigError(f"Int8Config.backend must be one of {[b.value for b in Backend]}, got "
                              f"{show(self.backend)}; 'auto' measures them and keeps the fastest") from None
        check_float(self, "tolerance", lo=0, hi=1, hi_open=True, example=0.01)  # a relative metric change: 1%
        check_int(self, "batch_size", lo=0, hi=1_000_000, example=0)  # 0 = the task's largest
        check_int(self, "float_channels", lo=0, hi=1_000_000, example=8)
        check_float(self, "min_time_s", lo=0, hi=3600, lo_open=True, example=1.5)  # seconds of timing per backend


def backend_config(backend: Backend, cfg: Int8Config, model: nn.Module) -> Any:
    """The technique config that implements `backend` with `cfg`'s options."""
    from condense.quantize.bf16 import Bf16Config
    from condense.quantize.dynamic import DynamicInt8Config
    from condense.quantize.onednn import OneDnnInt8Config
    from condense.quantize.ort import OrtInt8Config
    from condense.quantize.static import StaticInt8Config

    common = {"per_channel": cfg.per_channel, "include": cfg.include, "exclude": cfg.exclude}
    if backend is Backend.TORCH:
        return DynamicInt8Config(**common)
    if backend is Backend.TORCH_STATIC:
        return StaticInt8Config(**common)
    if backend is Backend.BF16:
        return Bf16Config(include=cfg.include, exclude=cfg.exclude)
    if backend is Backend.ONEDNN:
        return OneDnnInt8Config(float_channels=cfg.float_channels, include=cfg.include, exclude=cfg.exclude)
    if backend in (Backend.ORT, Backend.ORT_FUSED):
        fused = backend is Backend.ORT_FUSED
        if fused and not _fusable(model):
            raise ConfigError(f"backend 'ort-fused' needs a BERT-like model ORT's fuser knows, not "
                              f"{type(model).__name__}; use backend='ort'")
        return OrtInt8Config(optimize=fused, float_channels=cfg.float_channels if _splittable(model) else 0,
                             **common)
    raise ConfigError(f"no technique for backend {backend.value!r}")


def _splittable(model: nn.Module) -> bool:
    from condense.export.onnx import ExportAdapter, adapter_for

    return type(adapter_for(model)).outlier_channels is not ExportAdapter.outlier_channels


def _fusable(model: nn.Module) -> bool:
    from condense.export.onnx import EXPORT_ADAPTERS

    adapter = EXPORT_ADAPTERS.find(model)
    return adapter is not None and adapter.spec(model, None).fusion is not None


# -- measuring and deciding -------------------------------------------------------------------------------------
def measure_candidates(model: nn.Module, builders: dict[str, Callable[[nn.Module], nn.Module]], task: Any, *,
                       batch_size: int, min_time_s: float, rounds: int = 3,
                       good: Callable[[float, float], bool] | None = None
                       ) -> tuple[list[dict[str, Any]], dict[str, nn.Module]]:
    """Build each candidate from a copy of `model`, time it on `task.batch(batch_size)`, evaluate it.

    Returns (rows, built models); a row is {"backend", "p50_ms", "metric", "error", "build_s", "eval_s", "note"}
    (seconds to build the candidate and to evaluate it: what each candidate costs the call). The fp32 model is
    timed and evaluated too (row "fp32"). Candidates are evaluated fastest first; with `good(metric, fp32 metric)`
    the ones slower than the first good one are not evaluated (they cannot be picked; their note says so). A
    candidate that fails (to build, to run the task's batch or to evaluate: a model condense did not write may take
    inputs a backend cannot) gets a row with the error and a warning; the others go on.
    """
    built: dict[str, nn.Module] = {}
    rows: dict[str, dict[str, Any]] = {}
    batch = task.batch(batch_size)
    for name, build in {"fp32": None, **builders}.items():
        rows[name] = {"backend": name, "p50_ms": None, "metric": None, "error": None, "build_s": None,
                      "eval_s": None, "note": None}
        try:
            t0 = time.perf_counter()
            m = model if build is None else build(copy.deepcopy(model))
            with torch.inference_mode():
                task.run_batch(m, batch)  # runs the task's own inputs before it is timed
            rows[name]["build_s"] = round(time.perf_counter() - t0, 2)
            built[name] = m
        except Exception as e:  # noqa: BLE001  (one backend failing must not stop the others)
            if build is None:
                raise
            _failed(rows[name], e)
    with torch.inference_mode():  # interleaved, so load from elsewhere hits every candidate alike
        p50 = interleaved_p50({name: (lambda m=m: task.run_batch(m, batch)) for name, m in built.items()},
                              rounds=rounds, warmup=2, repeats=3, min_time_s=min_time_s / rounds)
    for name in built:
        rows[name]["p50_ms"] = round(p50[name] * 1e3, 3)
    found = None
    for name in ["fp32", *sorted((n for n in built if n != "fp32"), key=p50.get)]:
        if found is not None:
            rows[name]["note"] = (f"not evaluated: slower than {found}, which kept the metric, so it cannot be "
                                  "picked (Int8Config(evaluate_all=True) evaluates every candidate)")
            continue
        t0 = time.perf_counter()
        try:
            rows[name]["metric"] = task.metrics(built[name])[task.primary_metric]
        except Exception as e:  # noqa: BLE001
            if name == "fp32":
                raise
            _failed(rows[name], e)
            del built[name]
            continue
        rows[name]["eval_s"] = round(time.perf_counter() - t0, 2)
        if name != "fp32" and good is not None and good(rows[name]["metric"], rows["fp32"]["metric"]):
            found = name
    del built["fp32"]
    return list(rows.values()), built


def _failed(row: dict[str, Any], e: Exception) -> None:
    row["error"], row["p50_ms"] = first_line(e, typed=not isinstance(e, CondenseError)), None
    warnings.warn(f"Int8Config: backend {row['backend']!r} skipped: {row['error']}", stacklevel=3)


def pick(rows: list[dict[str, Any]], *, baseline: float, tolerance: float,
         within: Callable[[float, float, float], bool]) -> tuple[str, str]:
    """Name of the fastest row whose metric is `within(metric, baseline, tolerance)`, and why it won.

    Example:
        >>> rows = [{"backend": "a", "p50_ms": 9.0, "metric": 0.5, "error": None},
        ...         {"backend": "b", "p50_ms": 5.0, "metric": 0.9, "error": None}]
        >>> pick(rows, baseline=0.9, tolerance=0.01, within=lambda v, b, t: v >= b * (1 - t))[0]
        'b'
    """
    ok = [r for r in rows if r["backend"] != "fp32" and r["error"] is None and r["metric"] is not None
          and within(r["metric"], baseline, tolerance)]
    if not ok:
        summary = "; ".join(f"{r['backend']}: " + (r["error"] or f"metric {r['metric']:.4f}") for r in rows
                            if r["backend"] != "fp32" and (r["error"] or r["metric"] is not None))
        raise CondenseError(f"no int8 backend kept the metric within {tolerance:.1%} of fp32 ({baseline:.4f}): "
                            f"{summary}; raise Int8Config.tolerance or exclude sensitive layers")
    best = min(ok, key=lambda r: r["p50_ms"])
    others = ", ".join(f"{r['backend']} {r['p50_ms']:.2f} ms" for r in rows if r is not best and r["p50_ms"])
    unevaluated = sum(1 for r in rows if r.get("note"))  # slower than the pick: not evaluated (evaluate_all=False)
    return best["backend"], (f"fastest of {len(ok)} candidate(s) within {tolerance:.1%} of fp32's metric "
                             f"({baseline:.4f}): {best['backend']} {best['p50_ms']:.2f} ms vs {others}"
                             + (f"; {unevaluated} slower candidate(s) not evaluated" if unevaluated else ""))


# -- the handler --------------------------------------------------------------------------------------------------
def _apply(backend: Backend, cfg: Int8Config, model: nn.Module, ctx: TransformContext) -> tuple[nn.Module, dict]:
    """Apply one backend without recording it; returns the model and the entry Int8Config keeps in its details."""
    sub = backend_config(backend, cfg, model)
    out, details = run_transform(model, sub, ctx)
    return out, {"config": sub.to_dict(), "details": details or {}}


def quantize_int8(model: nn.Module, cfg: Int8Config, ctx: TransformContext) -> nn.Module:
    """Int8 on `cfg.backend`, or on the measured fastest backend that keeps quality (`"auto"`)."""
    if cfg.backend is not Backend.AUTO:
        out, entry = _apply(cfg.backend, cfg, model, ctx)
        ctx.record(backend=cfg.backend.value, reason="asked for", candidates=[], applied=entry)
        return out
    task = ctx.task
    if task is None:
        raise ConfigError("Int8Config(backend='auto') times the candidates on the task's batches: pass task=..., "
                          "or name a backend ('torch', 'torch-static', 'ort', 'ort-fused', 'onednn')")
    batch_size = cfg.batch_size or max(task.batch_sizes)
    entries: dict[str, dict] = {}

    def builder(b: Backend) -> Callable[[nn.Module], nn.Module]:
        def build(m: nn.Module) -> nn.Module:
            out, entries[b.value] = _apply(b, cfg, m, ctx)
            return out
        return build

    backends, skipped = auto_backends(cfg)
    good = None if cfg.evaluate_all else (lambda v, base: task.within_budget(v, base, cfg.tolerance))
    rows, built = measure_candidates(model, {b.value: builder(b) for b in backends}, task,
                                     batch_size=batch_size, min_time_s=cfg.min_time_s, good=good)
    baseline = next(r for r in rows if r["backend"] == "fp32")["metric"]
    name, reason = pick(rows, baseline=baseline, tolerance=cfg.tolerance, within=task.within_budget)
    out = built[name]
    ctx.record(backend=name, reason=reason, batch_size=batch_size, threads=torch.get_num_threads(), candidates=rows,
               applied=entries[name], skipped=skipped)
    return out


def auto_backends(cfg: Int8Config) -> tuple[list[Backend], dict[str, str]]:
    """The backends "auto" measures, and {backend: why not} for those it leaves out (recorded in the lineage).

    Example:
        >>> Backend.BF16 in auto_backends(Int8Config(bf16=False))[0]
        False
    """
    from condense.quantize.bf16 import native_bf16
    from condense.quantize.onednn import onednn_int8

    skipped: dict[str, str] = {}
    if not cfg.bf16:
        skipped[Backend.BF16.value] = "Int8Config(bf16=False)"
    else:
        native, why = native_bf16()
        if not native:
            skipped[Backend.BF16.value] = why
    native, why = onednn_int8()
    if not native:
        skipped[Backend.ONEDNN.value] = why
    return [b for b in Backend if b is not Backend.AUTO and b.value not in skipped], skipped


def _replay(model: nn.Module, cfg: Int8Config, details: dict) -> nn.Module:
    entry = details["applied"]
    sub = config_from_dict(entry["config"])
    return TRANSFORMS.get(sub).replay(model, sub, entry.get("details", {}))


# -- registered transforms ----------------------------------------------------------------------------------------
register_transform(Int8Config, family="quantize", name="int8", replay=_replay)(quantize_int8)
