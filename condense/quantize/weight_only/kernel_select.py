"""Which kernel a weight-only model runs on: measured on its own layer shapes at batch 1 (decode), or as asked.

`measure_kernels` times every registered kernel for the model's bits on the first quantized layer of each
distinct (in, out, group) shape, one input row (the decode step), interleaved so load hits all alike, and weighs
each shape by how many layers have it. A kernel that cannot take a shape is charged "dequantize" there (those
layers would fall back to it). It also records each kernel's largest output difference from the dequantized
reference, relative to the output's largest magnitude. `pick_kernels` keeps, per shape, the fastest kernel (a
pure function of the rows, like `Int8Config`'s `pick`): per shape, because a kernel fast on most shapes can be
slow on one (torch-int4 on a 32 -> 96 layer took ~10 ms per call at 2 threads here, 3 us at 1 thread).
`assign_kernel_` sets the choice on the layers and warns about the ones that fall back. Timings are at
`torch.get_num_threads()` threads, which the lineage records.
"""
from __future__ import annotations

import warnings
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from condense.measurement.timing import interleaved_p50
from condense.quantize.weight_only.kernels import DEQUANTIZE, get_kernel, kernel_names, why_not
from condense.quantize.weight_only.linear import WeightOnlyLinear


def shape_key(m: WeightOnlyLinear) -> str:
    """How a layer's shape is named in the lineage: "in x out / group".

    Example:
        >>> shape_key(WeightOnlyLinear(64, 16, bits=4, group_size=32))
        '64x16/g32'
    """
    return f"{m.in_features}x{m.out_features}/g{m.group_size}"


def _shapes(model: nn.Module, names: list[str]) -> dict[tuple[int, int, int], list[str]]:
    shapes: dict[tuple[int, int, int], list[str]] = {}
    for n in names:
        m = model.get_submodule(n)
        shapes.setdefault((m.in_features, m.out_features, m.group_size), []).append(n)
    return shapes


def measure_kernels(model: nn.Module, names: list[str], bits: int, *, rounds: int = 3,
                    min_time_s: float = 0.02) -> list[dict[str, Any]]:
    """One row per kernel: {"kernel", "total_ms" (per decode step, over all `names`), "shapes" (ms per call),
    "max_rel_err", "error" (why it cannot run here, or None)}; fastest-first is up to `pick_kernel`."""
    shapes = _shapes(model, names)
    rows = {k: {"kernel": k, "total_ms": None, "shapes": {}, "max_rel_err": 0.0, "error": None}
            for k in kernel_names(bits)}
    gen = torch.Generator().manual_seed(0)
    p50: dict[tuple[str, tuple], float] = {}
    with torch.inference_mode():
        for shape, layers in shapes.items():
            m: WeightOnlyLinear = model.get_submodule(layers[0])
            x = torch.randn(1, shape[0], generator=gen).to(m.scales.device)  # (1, in): one decode step
            if m.perm is not None:
                x = x.index_select(-1, m.perm)
            w = m._stored_weight()
            ref = F.linear(x, w)  # (1, out)
            fns = {DEQUANTIZE: lambda x=x, m=m: F.linear(x, m._stored_weight())}
            for name in rows:
                if name == DEQUANTIZE:
                    continue
                reason = why_not(bits, name, *shape) or \
                    (None if m.scales.device.type == "cpu" else f"{name} is a CPU kernel")
                if reason:
                    rows[name]["shapes"][_key(shape)] = reason
                    continue
                kernel = get_kernel(bits, name)
                try:
                    state = kernel.prepare(m.quantized())
                    y = kernel.run(state, x)
                except Exception as e:  # noqa: BLE001  (one kernel failing must not stop the others)
                    rows[name]["error"] = f"{type(e).__name__}: {str(e).splitlines()[0][:200]}"
                    continue
                err = float((y - ref).abs().max() / ref.abs().max().clamp(min=1e-12))
                rows[name]["max_rel_err"] = round(max(rows[name]["max_rel_err"], err), 6)
                fns[name] = lambda x=x, kernel=kernel, state=state: kernel.run(state, x)
            fns = {k: f for k, f in fns.items() if rows[k]["error"] is None}
            for k, t in interleaved_p50(fns, rounds=rounds, warmup=2, repeats=5,
                                        min_time_s=min_time_s).items():
                p50[(k, shape)] = t * 1e3
                rows[k]["shapes"][_key(shape)] = round(t * 1e3, 4)
    for name, row in rows.items():
        if row["error"] is None and all(isinstance(v, str) for v in row["shapes"].values()):
            row["error"] = "takes none of the layers: " + "; ".join(sorted(set(row["shapes"].values())))
        if row["error"] is None:
            row["total_ms"] = round(sum(len(layers) * p50.get((name, s), p50[(DEQUANTIZE, s)])
                                        for s, layers in shapes.items()), 4)
    return list(rows.values())


def _key(shape: tuple[int, int, int]) -> str:
    return "{}x{}/g{}".format(*shape)  # in x out / group


def pick_kernels(rows: list[dict[str, Any]], counts: dict[str, int]) -> tuple[dict[str, str], str]:
    """{shape: fastest kernel} from `measure_kernels` rows and {shape: number of layers}, and why.

    Example:
        >>> rows = [{"kernel": "dequantize", "total_ms": 3.0, "shapes": {"a": 1.0, "b": 1.0}, "error": None},
        ...         {"kernel": "torch-int4", "total_ms": 5.0, "shapes": {"a": 0.5, "b": 4.0}, "error": None}]
        >>> pick_kernels(rows, {"a": 2, "b": 1})[0]
        {'a': 'torch-int4', 'b': 'dequantize'}
    """
    ok = [r for r in rows if r["error"] is None]
    choice, total = {}, 0.0
    for shape, n in counts.items():
        timed = [r for r in ok if isinstance(r["shapes"].get(shape), float)]
        best = min(timed, key=lambda r: r["shapes"][shape])
        choice[shape] = best["kernel"]
        total += n * best["shapes"][shape]
    alone = ", ".join(f"{r['kernel']} alone {r['total_ms']:.3f} ms" if r["error"] is None else
                      f"{r['kernel']}: {r['error']}" for r in rows)
    picked = ", ".join(f"{s} {k}" for s, k in choice.items())
    return choice, (f"fastest per layer shape at batch 1 on {torch.get_num_threads()} thread(s): {picked}; "
                    f"{total:.3f} ms per step over the quantized layers vs {alone}")


def why_dequantize(rows: list[dict[str, Any]], choice: dict[str, str]) -> dict[str, str]:
    """{shape: why} for the shapes `pick_kernels` left on "dequantize": no low-bit kernel takes them, or it
    measured slower there.

    Example:
        >>> rows = [{"kernel": "dequantize", "shapes": {"a": 1.0}, "error": None},
        ...         {"kernel": "torch-int4", "shapes": {"a": "needs group 32"}, "error": None}]
        >>> why_dequantize(rows, {"a": "dequantize"})
        {'a': 'no low-bit kernel takes it (torch-int4: needs group 32)'}
    """
    out = {}
    for shape, kernel in choice.items():
        if kernel != DEQUANTIZE:
            continue
        others = [r for r in rows if r["kernel"] != DEQUANTIZE]
        timed = [r for r in others if isinstance(r["shapes"].get(shape), float)]
        if timed:
            out[shape] = "measured slower: " + ", ".join(
                f"{r['kernel']} {r['shapes'][shape]:.4f} ms" for r in [*rows[:1], *timed])
        else:
            out[shape] = "no low-bit kernel takes it (" + "; ".join(
                f"{r['kernel']}: {r['shapes'].get(shape) or r['error']}" for r in others) + ")"
    return out


def assign_kernel_(model: nn.Module, names: list[str], kernel: str | dict[str, str], *,
                   what: str) -> dict[str, str]:
    """Set `kernel` (one name, or {shape_key: name}) on the layers `names`; returns {layer: reason} for those left
    on "dequantize" although another kernel was asked, warned."""
    fallback = {}
    for n in names:
        m = model.get_submodule(n)
        reason = m.set_kernel(kernel if isinstance(kernel, str) else kernel.get(shape_key(m), DEQUANTIZE))
        if reason:
            fallback[n] = reason
    if fallback:
        reasons = sorted(set(fallback.values()))
        warnings.warn(f"{what}: {len(fallback)} of {len(names)} layer(s) run on the slow 'dequantize' path instead "
                      f"of {kernel if isinstance(kernel, dict) else repr(kernel)}: {'; '.join(reasons[:3])}",
                      stacklevel=3)
    return fallback
