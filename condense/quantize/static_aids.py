"""Accuracy aids for static int8 (the ones OpenVINO's NNCF applies to transformers), on a copy of the float model
before it is exported and calibrated (condense/quantize/static_ort.py):

- SmoothQuant (Xiao et al. 2023): per input channel j of a Linear, s_j = max|X_j|^alpha / max|W_:,j|^(1 - alpha);
  the weight's column j is multiplied by s_j and the input divided by it, so x W^T is unchanged in exact arithmetic
  but activation outliers move into the (per-channel quantized) weights. BERT is post-LayerNorm: a LayerNorm's
  output is also the residual, so the 1/s cannot be folded into the LayerNorm's affine without changing the
  residual path; it is a Mul on the Linear's own input branch (`SmoothedLinear`), which the export keeps in front
  of the activation's QuantizeLinear. Linears with the same input (query/key/value) share one s.
- Bias correction: per-channel int8 weights shift each output's mean by (Q(W) - W) E[x]; that shift, measured on
  the calibration batches, is subtracted from the bias (NNCF's "fast bias correction", weight part).
- Float layers: the k Linears whose simulated int8 output (uint8 per-tensor min-max activations, int8 per-channel
  weights, as ONNX Runtime's QDQ quantizer does) has the largest relative error on the calibration batches stay in
  float (ONNX Runtime's nodes_to_exclude).
"""
from __future__ import annotations

import copy
from typing import Any, Callable

import torch
from torch import nn

SMOOTH_EPS = 1e-5


class SmoothedLinear(nn.Linear):
    """A Linear computing `linear(x * inv_scale, W * scale)`: the same function as before smoothing, with the
    activation outliers moved into the weight. `inv_scale` is a buffer (input channels)."""

    @classmethod
    def from_linear(cls, lin: nn.Linear, scale: torch.Tensor) -> "SmoothedLinear":
        new = cls.__new__(cls)
        nn.Module.__init__(new)
        new.in_features, new.out_features = lin.in_features, lin.out_features
        new.weight = nn.Parameter(lin.weight.detach() * scale[None, :], requires_grad=False)
        new.bias = None if lin.bias is None else nn.Parameter(lin.bias.detach().clone(), requires_grad=False)
        new.register_buffer("inv_scale", (1.0 / scale).to(lin.weight.dtype))
        return new

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x * self.inv_scale)


class _Stats:
    """Per selected Linear: input channel peaks |x|, input channel means, tensor min/max, and (pass 2) the
    simulated int8 error."""

    def __init__(self) -> None:
        self.peak: dict[str, torch.Tensor] = {}
        self.mean: dict[str, torch.Tensor] = {}
        self.count: dict[str, int] = {}
        self.lo: dict[str, float] = {}
        self.hi: dict[str, float] = {}
        self.err: dict[str, list[float]] = {}

    def observe(self, name: str, x: torch.Tensor) -> None:
        x = x.detach().reshape(-1, x.shape[-1]).float()  # (N, in)
        p, s = x.abs().amax(dim=0), x.sum(dim=0)
        self.peak[name] = p if name not in self.peak else torch.maximum(self.peak[name], p)
        self.mean[name] = s if name not in self.mean else self.mean[name] + s
        self.count[name] = self.count.get(name, 0) + x.shape[0]
        self.lo[name] = min(self.lo.get(name, 0.0), float(x.min()))
        self.hi[name] = max(self.hi.get(name, 0.0), float(x.max()))


def _hooked(model: nn.Module, names: list[str], fn: Callable[[str, torch.Tensor], None],
            run: Callable[[nn.Module], None]) -> None:
    mods = dict(model.named_modules())
    handles = [mods[n].register_forward_pre_hook(lambda m, inp, n=n: fn(n, inp[0])) for n in names]
    try:
        with torch.no_grad():
            run(model)
    finally:
        for h in handles:
            h.remove()


def fake_int8_weight(w: torch.Tensor, qmax: int = 127) -> torch.Tensor:
    """Symmetric per-output-channel int8 rounding of a (out, in) weight, as ONNX Runtime's per-channel QInt8.

    Example:
        >>> fake_int8_weight(torch.tensor([[1.0, -0.5, 0.25]]))
        tensor([[ 1.0000, -0.5039,  0.2520]])
    """
    scale = w.abs().amax(dim=1, keepdim=True).clamp(min=1e-12) / qmax  # (out, 1)
    return torch.round(w / scale).clamp(-qmax, qmax) * scale


def fake_uint8_activation(x: torch.Tensor, lo: float, hi: float) -> torch.Tensor:
    """Asymmetric per-tensor uint8 rounding with the calibrated range [lo, hi] (0 included), as ORT's MinMax."""
    lo, hi = min(lo, 0.0), max(hi, 0.0)
    scale = max(hi - lo, 1e-12) / 255.0
    zp = round(-lo / scale)
    return (torch.round(x / scale) + zp).clamp(0, 255).sub(zp) * scale


def smooth_scales(peak_x: torch.Tensor, weights: list[torch.Tensor], alpha: float) -> torch.Tensor:
    """SmoothQuant's s_j = max|X_j|^alpha / max|W_:,j|^(1-alpha) over every weight that reads this input.

    Example:
        >>> smooth_scales(torch.tensor([4.0, 1.0]), [torch.tensor([[1.0, 1.0]])], 0.5)
        tensor([2., 1.])
    """
    w_peak = torch.stack([w.detach().abs().amax(dim=0) for w in weights]).amax(dim=0)  # (in,)
    s = peak_x.clamp(min=SMOOTH_EPS).pow(alpha) / w_peak.clamp(min=SMOOTH_EPS).pow(1 - alpha)
    return s.clamp(min=SMOOTH_EPS)


def prepare(model: nn.Module, names: list[str], run: Callable[[nn.Module], None], *, smooth_quant: float,
            bias_correction: bool, float_layers: int, weight_qmax: int = 127) -> tuple[nn.Module, dict[str, Any]]:
    """A copy of `model` with the aids applied to the Linears in `names`; (copy, lineage details). `run(m)` runs the
    calibration batches through `m`. details["float_layers"]: the names to keep in float, largest error first."""
    model = copy.deepcopy(model)
    mods = dict(model.named_modules())
    names = [n for n in names if isinstance(mods[n], nn.Linear)]
    stats = _Stats()
    _hooked(model, names, stats.observe, run)
    names = [n for n in names if n in stats.peak]  # Linears the calibration batches did not reach stay as they are
    details: dict[str, Any] = {}
    if smooth_quant:
        # Linears reading the same input (query/key/value) share one s: found by identical input statistics
        groups: dict[bytes, list[str]] = {}
        for n in names:
            key = stats.peak[n].numpy().tobytes() + stats.mean[n].numpy().tobytes()
            groups.setdefault(key, []).append(n)
        for group in groups.values():
            s = smooth_scales(stats.peak[group[0]], [mods[n].weight for n in group], smooth_quant)
            for n in group:
                _replace(model, n, SmoothedLinear.from_linear(mods[n], s))
                stats.peak[n], stats.mean[n] = stats.peak[n] / s, stats.mean[n] / s
                stats.lo[n], stats.hi[n] = float("nan"), float("nan")  # recomputed below
        details["smooth_quant"] = {"alpha": smooth_quant, "groups": list(groups.values())}
        mods = dict(model.named_modules())
        relo = _Stats()
        _hooked(model, names, lambda n, x: relo.observe(n, x * mods[n].inv_scale), run)
        stats.lo, stats.hi = relo.lo, relo.hi
    if bias_correction:
        shifted = {}
        for n in names:
            lin = mods[n]
            mean = stats.mean[n] / stats.count[n]  # (in,) mean input, after smoothing where smoothed
            dw = fake_int8_weight(lin.weight.detach(), weight_qmax) - lin.weight.detach()  # (out, in)
            shift = dw @ mean  # (out,)
            with torch.no_grad():
                if lin.bias is None:
                    lin.bias = nn.Parameter(-shift, requires_grad=False)
                else:
                    lin.bias.sub_(shift)
            shifted[n] = round(float(shift.abs().max()), 6)
        details["bias_correction"] = {"max_shift": shifted}
    if float_layers:
        err: dict[str, list[float]] = {n: [] for n in names}

        def measure(n: str, x: torch.Tensor) -> None:
            lin = mods[n]
            x = x * lin.inv_scale if isinstance(lin, SmoothedLinear) else x
            ref = nn.functional.linear(x, lin.weight)
            q = nn.functional.linear(fake_uint8_activation(x, stats.lo[n], stats.hi[n]),
                                     fake_int8_weight(lin.weight, weight_qmax))
            err[n].append(float((q - ref).norm() / ref.norm().clamp(min=1e-12)))

        _hooked(model, names, measure, run)
        ranked = sorted(names, key=lambda n: -max(err[n] or [0.0]))
        details["float_layers"] = ranked[:float_layers]
        details["relative_errors"] = {n: round(max(err[n] or [0.0]), 5) for n in ranked}
    return model, details


def _replace(model: nn.Module, name: str, new: nn.Module) -> None:
    parent, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, child, new)
