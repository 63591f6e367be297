"""AWQ (Lin et al., 2023): activation-aware per-channel weight scaling before round-to-nearest.

Why: a few input channels carry much larger activations than the rest, and the rounding error of their weights
is multiplied by them. Scaling weight column c up by s_c (and the input down by 1/s_c) shrinks that column's
relative rounding error at the cost of the others'. As in llm-awq's `auto_scale`, s = mean|x|^alpha per input
channel (normalised by sqrt(max(s) * min(s))), with alpha searched on a grid over [0, 1) for each *group* of
layers reading the same input (q/k/v share one): the alpha whose quantized layers' outputs on calibration rows
are closest to the float outputs wins (alpha = 0 is plain RTN, so the search never does worse than RTN on those
rows). The loss is measured at the group's own outputs (llm-awq measures a whole attention/MLP block's).

Where the 1/s goes, found from the computation (not from module names): the module P that produced the group's
input, when P can scale its output channels exactly (a registered `SCALE_FOLDS` type: `nn.Linear`'s rows,
`nn.LayerNorm`'s and `nn.RMSNorm`'s weight and bias). Candidates are, first, a module whose output tensor *is*
the group's input, then the latest such module of the right width that ran before the group (v_proj before
o_proj: attention is linear in v channel by channel). A fold is kept only if the float model's output on a
calibration row is unchanged by it (`FOLD_RTOL`); another reader of P's output, a nonlinearity in between
(fc_in -> GELU -> fc_out) or a tied weight changes it, and the fold is undone exactly. A group with no foldable
producer keeps 1/s as an explicit per-channel multiply of the input inside its `WeightOnlyLinear`s
(`input_scale`, saved with the layer); the lineage lists those layers under "input_scaled".
"""
from __future__ import annotations

from typing import Any, Callable

import torch
from torch import nn

from condense.errors import CondenseError
from condense.quantize.weight_only.gptq import layer_steps
from condense.quantize.weight_only.rtn import rtn_quantize

SEARCH_ROWS = 1024  # calibration rows per group the alpha search measures the output error on
FOLD_RTOL = 1e-4  # a fold may change the model's output by this much of its largest magnitude (float rounding)


def _fold_linear(m: nn.Linear, s: torch.Tensor) -> None:
    m.weight.div_(s.to(m.weight.dtype)[:, None])  # (out, in): output row c / s_c
    if m.bias is not None:
        m.bias.div_(s.to(m.bias.dtype))


def _fold_norm(m: nn.Module, s: torch.Tensor) -> None:
    if getattr(m, "weight", None) is None:
        raise CondenseError(f"{type(m).__name__} has no affine weight to fold a scale into")
    m.weight.div_(s.to(m.weight.dtype))
    if getattr(m, "bias", None) is not None:
        m.bias.div_(s.to(m.bias.dtype))


# module type -> divide its output channels by s in place (its output becomes out / s exactly)
SCALE_FOLDS: dict[type, Callable[[nn.Module, torch.Tensor], None]] = {
    nn.Linear: _fold_linear, nn.LayerNorm: _fold_norm, nn.RMSNorm: _fold_norm}


def register_scale_fold(module_type: type, fold: Callable[[nn.Module, torch.Tensor], None]) -> None:
    """Let AWQ fold scales into `module_type` (e.g. a model's own RMSNorm): `fold(m, s)` divides its output by s.

    Example:
        >>> class ScaleNorm(nn.Module):  # y = x / rms(x) * g: dividing g by s divides y by s
        ...     def __init__(self): super().__init__(); self.g = nn.Parameter(torch.ones(8))
        >>> register_scale_fold(ScaleNorm, lambda m, s: m.g.data.div_(s)); ScaleNorm in SCALE_FOLDS
        True
    """
    SCALE_FOLDS[module_type] = fold


def _fold_for(m: nn.Module) -> Callable[[nn.Module, torch.Tensor], None] | None:
    """The registered fold for `m`'s type; else, for a leaf module with a 1-D weight (a model's own RMSNorm),
    the norm fold, which the output check then confirms or undoes (Gemma's (1 + w) norm fails it)."""
    for base in type(m).__mro__:
        if base in SCALE_FOLDS:
            return SCALE_FOLDS[base]
    w, b = getattr(m, "weight", None), getattr(m, "bias", None)
    if isinstance(w, nn.Parameter) and w.dim() == 1 and next(m.children(), None) is None and \
            (b is None or (isinstance(b, torch.Tensor) and b.shape == w.shape)):
        return _fold_norm
    return None


def _out_width(m: nn.Module) -> int | None:
    if isinstance(m, nn.Linear):
        return m.out_features
    w = getattr(m, "weight", None)
    return w.shape[0] if isinstance(w, torch.Tensor) and w.dim() == 1 else None


def _tensors(out: Any) -> list[torch.Tensor]:
    """The floating-point tensors of a model output (a tensor, a tuple/list, a dict or ModelOutput)."""
    if isinstance(out, torch.Tensor):
        return [out] if out.is_floating_point() else []
    if isinstance(out, dict):
        out = list(out.values())
    if isinstance(out, (tuple, list)):
        return [t for o in out for t in _tensors(o)]
    return []


def _first_row(batch: Any) -> Any:
    """`batch` cut to its first example where its tensors share a leading batch dimension (the fold check)."""
    tensors = [t for t in (batch.values() if isinstance(batch, dict) else batch if isinstance(batch, (tuple, list))
                           else [batch]) if isinstance(t, torch.Tensor)]
    if not tensors or any(t.dim() == 0 or t.shape[0] != tensors[0].shape[0] for t in tensors):
        return batch
    cut = (lambda v: v[:1] if isinstance(v, torch.Tensor) else v)
    if isinstance(batch, dict):
        return type(batch)({k: cut(v) for k, v in batch.items()})
    if isinstance(batch, (tuple, list)):
        return type(batch)(cut(v) for v in batch)
    return cut(batch)


class _Stats:
    """Per group: mean |x| per input channel over every calibration row, and up to SEARCH_ROWS sampled rows."""

    def __init__(self) -> None:
        self.abs_sum: torch.Tensor | None = None
        self.count = 0
        self.rows: list[torch.Tensor] = []
        self.kept = 0

    def add(self, x: torch.Tensor, gen: torch.Generator) -> None:
        x = x.detach().reshape(-1, x.shape[-1]).float()  # (rows, in)
        s = x.abs().sum(0)
        self.abs_sum = s if self.abs_sum is None else self.abs_sum + s
        self.count += x.shape[0]
        take = min(x.shape[0], SEARCH_ROWS // 4, SEARCH_ROWS - self.kept)  # rows from several batches
        if take > 0:
            idx = torch.randperm(x.shape[0], generator=gen)[:take].to(x.device)
            self.rows.append(x.index_select(0, idx))
            self.kept += take


def _collect(model: nn.Module, groups: list[list[str]], batches: list[Any],
             run_batch: Callable[[nn.Module, Any], Any]) -> list[_Stats]:
    stats = [_Stats() for _ in groups]
    gen = torch.Generator().manual_seed(0)
    handles = [model.get_submodule(g[0]).register_forward_pre_hook(lambda m, inp, st=st: st.add(inp[0], gen))
               for g, st in zip(groups, stats)]
    try:
        with torch.no_grad():
            for b in batches:
                run_batch(model, b)
    finally:
        for h in handles:
            h.remove()
    return stats


def search_scale(weights: list[torch.Tensor], x_mean: torch.Tensor, rows: torch.Tensor, *, bits: int,
                 group_sizes: list[int], symmetric: bool, scale_dtype: torch.dtype, grid: int
                 ) -> tuple[torch.Tensor, float]:
    """The per-input-channel scale s (in,) minimising sum_L ||X W_Lᵀ - (X/s) Q(W_L s)ᵀ||² over `rows` X, and its alpha.

    Example:
        >>> x = torch.randn(256, 32) * torch.linspace(0.1, 4, 32); w = torch.randn(8, 32)
        >>> s, alpha = search_scale([w], x.abs().mean(0), x, bits=3, group_sizes=[32], symmetric=False,
        ...                         scale_dtype=torch.float16, grid=20)
        >>> s.shape, 0 <= alpha < 1
        (torch.Size([32]), True)
    """
    refs = [rows @ w.float().T for w in weights]  # (m, out) each
    best = (float("inf"), 0.0, torch.ones_like(x_mean))
    for k in range(grid):
        alpha = k / grid
        s = x_mean.pow(alpha).clamp(min=1e-4)
        s = s / (s.max() * s.min()).sqrt()
        xs = rows / s  # (m, in)
        loss = 0.0
        for w, ref, gs in zip(weights, refs, group_sizes):
            q = rtn_quantize(w.float() * s, bits=bits, group_size=gs, symmetric=symmetric,
                             scale_dtype=scale_dtype).dequantize()  # (out, in)
            loss += float((xs @ q.T - ref).pow(2).sum())
        if loss < best[0]:
            best = (loss, alpha, s)
    return best[2], best[1]


def _producers(model: nn.Module, groups: list[list[str]], batch: Any,
               run_batch: Callable[[nn.Module, Any], Any]) -> list[list[str]]:
    """For each group, the foldable modules that may have produced its input: identity match first, then the
    latest of the right width that ran before it (at most two)."""
    events: list[tuple[str, str, torch.Tensor]] = []  # (kind, name, tensor) in the order the model ran them
    first = {g[0] for g in groups}
    handles = []
    for name, m in model.named_modules():
        if name and _fold_for(m) is not None and _out_width(m) is not None:
            handles.append(m.register_forward_hook(lambda mod, i, o, n=name: events.append(("out", n, o))))
        if name in first:
            handles.append(m.register_forward_pre_hook(lambda mod, i, n=name: events.append(("in", n, i[0]))))
    try:
        with torch.no_grad():
            run_batch(model, batch)
    finally:
        for h in handles:
            h.remove()
    found: dict[str, list[str]] = {}
    for i, (kind, name, x) in enumerate(events):
        if kind != "in" or name in found or not isinstance(x, torch.Tensor):
            continue
        before = [(n, t) for k, n, t in events[:i] if k == "out" and isinstance(t, torch.Tensor)
                  and t.shape[-1] == x.shape[-1]]
        same = [n for n, t in before if t is x]
        latest = [n for n, _ in reversed(before)]
        found[name] = list(dict.fromkeys(same[-1:] + latest[:1]))
    return [found.get(g[0], []) for g in groups]


def _try_fold(model: nn.Module, producer: str, group: list[str], s: torch.Tensor, check: Callable[[], bool]) -> bool:
    """Fold s into `producer` and the group's weights; keep it if `check()` (the output is unchanged), else undo."""
    p = model.get_submodule(producer)
    touched = [p] + [model.get_submodule(n) for n in group]
    saved = [(t, t.detach().clone()) for m in dict.fromkeys(touched)
             for t in (getattr(m, "weight", None), getattr(m, "bias", None)) if isinstance(t, torch.Tensor)]
    with torch.no_grad():
        _fold_for(p)(p, s)
        for n in group:
            w = model.get_submodule(n).weight
            w.mul_(s.to(w.dtype))  # (out, in): input column c * s_c
    if check():
        return True
    with torch.no_grad():
        for t, old in saved:
            t.copy_(old)
    return False


def awq_scale_(model: nn.Module, names: list[str], batches: list[Any], run_batch: Callable[[nn.Module, Any], Any], *,
               bits: int, group_sizes: dict[str, int], symmetric: bool, scale_dtype: torch.dtype, grid: int = 20
               ) -> tuple[dict[str, str], dict[str, torch.Tensor], dict[str, float]]:
    """Search and apply AWQ scales to the float Linears `names` (in place; the model's function is unchanged).

    Returns (folded {layer: producer it was folded into}, input_scales {layer: 1/s (in,) the layer must apply to
    its input}, alphas {group's first layer: alpha}). `group_sizes`: each layer's effective group size.
    """
    steps, _ = layer_steps(model, names, batches, run_batch)
    stats = _collect(model, steps, batches, run_batch)
    probe = _first_row(batches[0])
    with torch.no_grad():
        ref = [t.detach().clone() for t in _tensors(run_batch(model, probe))]
    if not ref:
        raise CondenseError("AWQ: the model's output on a calibration batch holds no float tensor to check the "
                            "scale folds against; use method='rtn' or 'gptq'")

    def unchanged() -> bool:
        with torch.no_grad():
            got = _tensors(run_batch(model, probe))
        return len(got) == len(ref) and all(
            g.shape == r.shape and float((g - r).abs().max()) <= FOLD_RTOL * max(1.0, float(r.abs().max()))
            for g, r in zip(got, ref))

    producers = _producers(model, steps, probe, run_batch)
    folded: dict[str, str] = {}
    input_scales: dict[str, torch.Tensor] = {}
    alphas: dict[str, float] = {}
    for group, st, cands in zip(steps, stats, producers):
        weights = [model.get_submodule(n).weight.detach() for n in group]
        s, alphas[group[0]] = search_scale(weights, st.abs_sum / max(st.count, 1), torch.cat(st.rows), bits=bits,
                                           group_sizes=[group_sizes[n] for n in group], symmetric=symmetric,
                                           scale_dtype=scale_dtype, grid=grid)
        if alphas[group[0]] == 0.0:
            continue  # s = 1: nothing to fold
        into = next((c for c in cands if _try_fold(model, c, group, s, unchanged)), None)
        if into is not None:
            folded.update(dict.fromkeys(group, into))
            continue
        input_scales.update({n: s for n in group})  # scaled below: the checks need the float model unchanged
    with torch.no_grad():
        for n, s in input_scales.items():
            w = model.get_submodule(n).weight
            w.mul_(s.to(w.dtype))  # the layer divides its input by s itself
    return folded, {n: (1.0 / s).float() for n, s in input_scales.items()}, alphas
