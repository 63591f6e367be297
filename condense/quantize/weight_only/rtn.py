"""The group-wise integer grid shared by RTN and GPTQ, and round-to-nearest (RTN) itself.

Grid (as in the GPTQ reference): each row of a group of `group_size` input columns gets its own scale and zero
point. Asymmetric (default): the range [min(w, 0), max(w, 0)] — zero is always inside, so it is exactly
representable — split into 2**bits - 1 steps; the zero point is an integer in [0, 2**bits - 1]. Symmetric: the
range [-max|w|, max|w|] and a fixed zero point 2**(bits-1). Scales are rounded to their storage dtype (fp16 by
default) *before* the weights are rounded, so what is saved dequantizes to exactly what was evaluated. A scale
never drops below the storage dtype's smallest normal number (an all-zero group quantizes to exact zeros).

RTN needs no data: every weight goes to its nearest grid point.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from condense.errors import ConfigError


@dataclass
class QuantizedWeight:
    """A quantized (out, in) weight before packing.

    Attributes:
        q: (out, in) uint8 integers in [0, 2**bits), columns in stored order (`perm` order when given).
        scales: (out, groups) in the storage dtype.
        zeros: (out, groups) uint8 zero points.
        bits: bits per weight.
        group_size: input columns per group (in_features for per-channel).
        perm: (in,) int64 or None: stored column j holds original input column perm[j] (GPTQ act-order).
    """

    q: torch.Tensor
    scales: torch.Tensor
    zeros: torch.Tensor
    bits: int
    group_size: int
    perm: torch.Tensor | None = None

    def dequantize(self) -> torch.Tensor:
        """The (out, in) float32 weight this represents, in the original column order."""
        out, n = self.q.shape
        s = self.scales.float().unsqueeze(-1)  # (out, G, 1)
        z = self.zeros.float().unsqueeze(-1)
        w = ((self.q.float().view(out, -1, self.group_size) - z) * s).view(out, n)
        if self.perm is not None:
            w = w[:, torch.argsort(self.perm)]
        return w


def effective_group_size(group_size: int, in_features: int, *, layer: str = "layer") -> int:
    """`group_size` for a layer with `in_features` inputs (-1 = one group per row); errors name valid sizes.

    Example:
        >>> effective_group_size(-1, 96), effective_group_size(32, 96)
        (96, 32)
    """
    if group_size == -1:
        return in_features
    if group_size < 1 or in_features % group_size:
        valid = [g for g in range(16, min(in_features, 256) + 1) if in_features % g == 0][-4:] + [-1]
        raise ConfigError(f"group_size={group_size} does not divide {layer}'s in_features={in_features}; use one "
                          f"of {valid} (-1 = per output channel), or exclude the layer")
    return group_size


def nearest_group_size(group_size: int, in_features: int) -> int:
    """The divisor of `in_features` closest to `group_size` (the smaller one on a tie); -1 stays per-channel.

    Example:
        >>> nearest_group_size(32, 88), nearest_group_size(32, 688), nearest_group_size(32, 96)
        (22, 43, 32)
    """
    if group_size == -1 or in_features % group_size == 0:
        return group_size
    divisors = [g for g in range(1, in_features + 1) if in_features % g == 0]
    return min(divisors, key=lambda g: (abs(g - group_size), g))


def group_params(w: torch.Tensor, bits: int, *, symmetric: bool = False,
                 scale_dtype: torch.dtype = torch.float16) -> tuple[torch.Tensor, torch.Tensor]:
    """Scale and zero point, each (..., 1) in `w`'s dtype, for the rows of `w` (..., group) (see module doc)."""
    maxq = (1 << bits) - 1
    xmin = w.amin(dim=-1, keepdim=True).clamp(max=0)
    xmax = w.amax(dim=-1, keepdim=True).clamp(min=0)
    if symmetric:
        xmax = torch.maximum(-xmin, xmax)
        xmin = -xmax
    tiny = torch.finfo(scale_dtype).tiny
    scale = ((xmax - xmin) / maxq).clamp(min=tiny).to(scale_dtype).to(w.dtype)
    if symmetric:
        zero = torch.full_like(scale, float(1 << (bits - 1)))
    else:
        zero = torch.round(-xmin / scale).clamp(0, maxq)
    return scale, zero


def quantize(w: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor, bits: int) -> torch.Tensor:
    """Nearest grid integers (as floats) of `w` for broadcastable `scale`, `zero`."""
    return torch.clamp(torch.round(w / scale) + zero, 0, (1 << bits) - 1)


def rtn_quantize(weight: torch.Tensor, *, bits: int, group_size: int, symmetric: bool = False,
                 scale_dtype: torch.dtype = torch.float16) -> QuantizedWeight:
    """Round-to-nearest quantization of an (out, in) weight, group-wise along the input dimension.

    Example:
        >>> w = torch.randn(4, 64)
        >>> qw = rtn_quantize(w, bits=8, group_size=32)
        >>> qw.q.shape, qw.scales.shape, bool((qw.dequantize() - w).abs().max() < 0.05)
        (torch.Size([4, 64]), torch.Size([4, 2]), True)
    """
    out, n = weight.shape
    gs = effective_group_size(group_size, n)
    w = weight.detach().float().reshape(out, n // gs, gs)  # (out, G, gs)
    scale, zero = group_params(w, bits, symmetric=symmetric, scale_dtype=scale_dtype)  # (out, G, 1)
    q = quantize(w, scale, zero, bits)
    return QuantizedWeight(q=q.reshape(out, n).to(torch.uint8), scales=scale.squeeze(-1).to(scale_dtype),
                           zeros=zero.squeeze(-1).to(torch.uint8), bits=bits, group_size=gs)
