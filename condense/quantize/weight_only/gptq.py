"""GPTQ (Frantar et al., 2022): quantize a Linear's weight column by column, pushing each column's rounding
error onto the columns not yet quantized so the layer's *outputs* on calibration data change least.

Per layer: H = 2/N · Σ x xᵀ over the N calibration rows reaching it (collected with forward hooks). H is
dampened by `damp · mean(diag H)`, and the upper Cholesky factor U of H⁻¹ gives the error-feedback rows: after
column i is rounded, err = (w_i - q_i) / U_ii and the remaining columns move by -err ⊗ U_i,i+1:. Updates are
applied lazily in blocks of 128 columns (one matmul per block instead of one rank-1 update per column).
Group-wise scales are computed when a group's first column is reached, from the already error-updated
weights; blocks are aligned to groups so that is exact. With `act_order`, columns go in order of decreasing
diag(H) and the module stores that permutation (its groups are contiguous in that order).

Which activations: **sequential** by default ("true sequential"): layers are quantized in the order the model
runs them, and each layer's H is collected from a model whose earlier layers are already quantized (layers that
read the very same input tensor, like q/k/v, form one step). `sequential=False` collects every H at once from
the fp32 model instead (one calibration pass; slightly worse).
"""
from __future__ import annotations

from typing import Any, Callable

import torch
from torch import nn

from condense.errors import CondenseError
from condense.quantize.weight_only.rtn import QuantizedWeight, effective_group_size, group_params, quantize


def gptq_quantize(weight: torch.Tensor, hessian: torch.Tensor, *, bits: int, group_size: int,
                  symmetric: bool = False, damp: float = 0.01, act_order: bool = False, block_size: int = 128,
                  scale_dtype: torch.dtype = torch.float16) -> QuantizedWeight:
    """GPTQ-quantize an (out, in) weight given the layer's input Hessian H (in, in); computes in weight's dtype.

    Example:
        >>> x = torch.randn(256, 32); w = torch.randn(8, 32)
        >>> qw = gptq_quantize(w, 2 * x.T @ x / 256, bits=4, group_size=16)
        >>> qw.q.shape, qw.scales.shape
        (torch.Size([8, 32]), torch.Size([8, 2]))
    """
    dtype = weight.dtype if weight.dtype == torch.float64 else torch.float32
    W = weight.detach().to(dtype).clone()  # (out, n)
    out, n = W.shape
    gs = effective_group_size(group_size, n)
    H = hessian.detach().to(dtype=dtype, device=W.device).clone()  # (n, n)
    dead = torch.diag(H) == 0  # inputs never active in calibration: their weights cannot matter there
    H[dead, dead] = 1
    W[:, dead] = 0
    perm = None
    if act_order:
        perm = torch.argsort(torch.diag(H), descending=True)
        W, H = W[:, perm], H[perm][:, perm]
    H += damp * torch.mean(torch.diag(H)) * torch.eye(n, dtype=dtype, device=W.device)
    L, info = torch.linalg.cholesky_ex(H)
    if int(info) == 0:
        U, info = torch.linalg.cholesky_ex(torch.cholesky_inverse(L), upper=True)  # H⁻¹ = Uᵀ U
    if int(info) != 0:
        raise CondenseError(f"GPTQ: the dampened Hessian is not positive definite (damp={damp}); raise damp "
                            "(e.g. damp=0.1) or use more calibration batches")

    G = n // gs
    Q = torch.zeros(out, n, dtype=torch.uint8, device=W.device)
    scales = torch.empty(out, G, dtype=dtype, device=W.device)
    zeros = torch.empty(out, G, dtype=dtype, device=W.device)
    per_channel = gs == n and n > block_size
    if per_channel:  # one group per row: parameters from the starting weights (as the reference does)
        scales[:, :1], zeros[:, :1] = group_params(W, bits, symmetric=symmetric, scale_dtype=scale_dtype)
        block = block_size
    else:
        block = gs * max(1, block_size // gs)  # a multiple of gs: every group lies inside one block
    for i1 in range(0, n, block):
        i2 = min(i1 + block, n)
        W1 = W[:, i1:i2].clone()  # (out, b): updated in place column by column
        E1 = torch.zeros_like(W1)  # scaled errors, for the lazy update of columns i2:
        U1 = U[i1:i2, i1:i2]
        for i in range(i2 - i1):
            col = i1 + i
            g = col // gs
            if not per_channel and col % gs == 0:
                s, z = group_params(W1[:, i:i + gs], bits, symmetric=symmetric, scale_dtype=scale_dtype)
                scales[:, g:g + 1], zeros[:, g:g + 1] = s, z
            s, z = scales[:, g], zeros[:, g]  # (out,)
            w = W1[:, i]
            q = quantize(w, s, z, bits)
            Q[:, col] = q.to(torch.uint8)
            err = (w - (q - z) * s) / U1[i, i]  # (out,)
            W1[:, i:] -= err[:, None] * U1[i, i:][None, :]
            E1[:, i] = err
        W[:, i2:] -= E1 @ U[i1:i2, i2:]
    return QuantizedWeight(q=Q, scales=scales.to(scale_dtype), zeros=zeros.to(torch.uint8), bits=bits,
                           group_size=gs, perm=perm)


# -- collecting Hessians from calibration data ------------------------------------------------------------------
class _Stop(Exception):
    """Raised by a hook once the layers being collected have all run: the rest of the forward is not needed."""


def _run(model: nn.Module, batches: list[Any], run_batch: Callable[[nn.Module, Any], Any]) -> None:
    with torch.no_grad():
        for b in batches:
            try:
                run_batch(model, b)
            except _Stop:
                pass


def layer_steps(model: nn.Module, names: list[str], batches: list[Any],
                run_batch: Callable[[nn.Module, Any], Any]) -> tuple[list[list[str]], bool]:
    """Split `names` into steps in the order the model runs them (layers reading the same tensor share a step).

    Returns (steps, once): `once` is True when every layer ran exactly once per batch.
    """
    calls: list[tuple[str, torch.Tensor]] = []
    handles = [model.get_submodule(n).register_forward_pre_hook(
        lambda m, inp, n=n: calls.append((n, inp[0]))) for n in names]
    try:
        _run(model, batches[:1], run_batch)
    finally:
        for h in handles:
            h.remove()
    never = [n for n in names if all(c[0] != n for c in calls)]
    if never:
        raise CondenseError(f"GPTQ: layer(s) {never[:3]} did not run on the calibration batches, so there is no "
                            "data to quantize them with; exclude them (exclude=(...)) or use method=RTN")
    steps: list[list[str]] = []
    seen: set[str] = set()
    prev: torch.Tensor | None = None
    for n, x in calls:
        if n in seen:
            continue
        if steps and x is prev:
            steps[-1].append(n)
        else:
            steps.append([n])
        seen.add(n)
        prev = x
    return steps, len(calls) == len(names)


def collect_hessians(model: nn.Module, names: list[str], batches: list[Any],
                     run_batch: Callable[[nn.Module, Any], Any], *, stop_after: str | None = None
                     ) -> dict[str, torch.Tensor]:
    """H = 2/N · Σ x xᵀ (in, in) for each named Linear, over every row of its inputs in `batches`.

    `stop_after`: a layer after whose (single) call the forward is cut short.
    """
    sums: dict[str, torch.Tensor] = {}
    rows = dict.fromkeys(names, 0)

    def hook(mod: nn.Module, inp: tuple, name: str) -> None:
        x = inp[0].detach().reshape(-1, inp[0].shape[-1]).float()  # (rows, in)
        if name not in sums:
            sums[name] = torch.zeros(x.shape[1], x.shape[1], device=x.device)
        sums[name].addmm_(x.T, x)
        rows[name] += x.shape[0]
        if name == stop_after:
            raise _Stop

    handles = [model.get_submodule(n).register_forward_pre_hook(lambda m, inp, n=n: hook(m, inp, n))
               for n in names]
    try:
        _run(model, batches, run_batch)
    finally:
        for h in handles:
            h.remove()
    return {n: 2 * sums[n] / rows[n] for n in names}


def gptq_model_(model: nn.Module, names: list[str], batches: list[Any], run_batch: Callable[[nn.Module, Any], Any],
                quantize_layer: Callable[[str, nn.Linear, torch.Tensor], nn.Module], *,
                sequential: bool = True) -> None:
    """Quantize the Linears `names` of `model` in place; `quantize_layer(name, linear, H)` returns the new module.

    Sequential: one step at a time (see the module docstring), each swapped in before the next is collected.
    """
    steps, once = layer_steps(model, names, batches, run_batch)
    if not sequential:
        steps = [[n for step in steps for n in step]]
    for step in steps:
        hessians = collect_hessians(model, step, batches, run_batch,
                                    stop_after=step[-1] if once and sequential else None)
        for name in step:
            parent, _, child = name.rpartition(".")
            setattr(model.get_submodule(parent), child, quantize_layer(name, model.get_submodule(name),
                                                                       hessians.pop(name)))
