"""Low-rank factors of one weight matrix, plain or activation-aware, and the two-layer modules that hold them.

Plain SVD minimises the weight error ||W - W'||_F. What matters is the layer's output on real inputs X:
||(W - W') X^T||_F^2 = ||(W - W') L||_F^2 with X^T X = L L^T (Cholesky). So the activation-aware variant
(SVD-LLM, Wang et al. 2024) takes the truncated SVD of W L, which is optimal for that output error, and
un-whitens the right factor with L^-1. A Conv2d is the matrix (out, in * kh * kw) acting on unfolded patches; its
factors become a kh x kw convolution to `rank` channels followed by a 1x1 convolution.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from condense.errors import ConfigError


class LowRankLinear(nn.Module):
    """`second(first(x))` with first: in -> rank (no bias), second: rank -> out (the original bias).

    Example:
        >>> LowRankLinear(8, 4, rank=2)(torch.zeros(3, 8)).shape
        torch.Size([3, 4])
    """

    def __init__(self, in_features: int, out_features: int, rank: int, bias: bool = True) -> None:
        super().__init__()
        self.in_features, self.out_features, self.rank = in_features, out_features, rank
        self.first = nn.Linear(in_features, rank, bias=False)
        self.second = nn.Linear(rank, out_features, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.second(self.first(x))  # (..., in) -> (..., rank) -> (..., out)


class LowRankConv2d(nn.Module):
    """A kh x kw convolution to `rank` channels (no bias), then a 1x1 convolution to the output channels.

    Example:
        >>> LowRankConv2d(nn.Conv2d(3, 8, 3, padding=1), rank=2)(torch.zeros(1, 3, 5, 5)).shape
        torch.Size([1, 8, 5, 5])
    """

    def __init__(self, conv: nn.Conv2d, rank: int) -> None:
        super().__init__()
        self.in_channels, self.out_channels, self.rank = conv.in_channels, conv.out_channels, rank
        self.first = nn.Conv2d(conv.in_channels, rank, conv.kernel_size, stride=conv.stride, padding=conv.padding,
                               dilation=conv.dilation, bias=False, padding_mode=conv.padding_mode)
        self.second = nn.Conv2d(rank, conv.out_channels, 1, bias=conv.bias is not None)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.second(self.first(x))  # (B, in, H, W) -> (B, rank, H', W') -> (B, out, H', W')


def weight_matrix(layer: nn.Module) -> torch.Tensor:
    """The layer's weight as a matrix (out, in) (Conv2d: (out, in * kh * kw)), in float64."""
    return layer.weight.detach().reshape(layer.weight.shape[0], -1).double()


def layer_inputs(layer: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Rows the weight matrix multiplies: (rows, in) for a Linear, unfolded patches for a Conv2d."""
    if isinstance(layer, nn.Conv2d):
        if layer.padding_mode != "zeros":
            x = F.pad(x, layer._reversed_padding_repeated_twice, mode=layer.padding_mode)
            pad = 0
        else:
            pad = layer.padding
        cols = F.unfold(x, layer.kernel_size, dilation=layer.dilation, padding=pad, stride=layer.stride)
        return cols.transpose(1, 2).reshape(-1, cols.shape[1])  # (B * L, in * kh * kw)
    return x.reshape(-1, x.shape[-1])  # (rows, in)


def max_rank(layer: nn.Module) -> int:
    w = layer.weight
    return min(w.shape[0], w[0].numel())


def rank_for_ratio(layer: nn.Module, ratio: float) -> int:
    """Largest rank whose two factors hold at most `ratio` of the layer's weights (at least 1).

    Example:
        >>> rank_for_ratio(nn.Linear(160, 640), 0.5)
        64
    """
    out, inn = layer.weight.shape[0], layer.weight[0].numel()
    return max(1, min(max_rank(layer), math.floor(ratio * out * inn / (out + inn))))


def rank_for_energy(s: torch.Tensor, energy: float) -> int:
    """Smallest rank keeping at least `energy` of sum(s^2) (singular values `s`, descending).

    Example:
        >>> rank_for_energy(torch.tensor([3.0, 1.0, 0.0]), 0.9)
        1
    """
    e = (s.double() ** 2).cumsum(0)
    return int(torch.searchsorted(e, energy * e[-1] * (1 - 1e-12)).item()) + 1


def whitening(gram: torch.Tensor, damp: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(L, L^-1) with L L^T = gram + damp * mean(diag) * I (float64), gram = X^T X of the layer's inputs."""
    g = gram.double()
    g = g + damp * g.diagonal().mean().clamp_min(1e-12) * torch.eye(g.shape[0], dtype=g.dtype)
    L = torch.linalg.cholesky(g)
    L_inv = torch.linalg.solve_triangular(L, torch.eye(g.shape[0], dtype=g.dtype), upper=False)
    return L, L_inv


def factor(w: torch.Tensor, *, rank: int | None = None, energy: float | None = None,
           gram: torch.Tensor | None = None, damp: float = 0.01) -> tuple[torch.Tensor, torch.Tensor]:
    """(A (out, r), B (r, in)) with A @ B ~ w; with `gram` the output error on those inputs is minimised.

    Exactly one of `rank` / `energy` chooses r (energy is measured on the matrix actually truncated: W, or W L).

    Example:
        >>> w = torch.randn(6, 4, dtype=torch.float64)
        >>> a, b = factor(w, rank=4)
        >>> bool(torch.allclose(a @ b, w))
        True
    """
    w = w.double()
    if rank is not None and rank > min(w.shape):
        raise ConfigError(f"rank {rank} is larger than the {w.shape[0]}x{w.shape[1]} matrix allows "
                          f"(at most {min(w.shape)}); use rank <= {min(w.shape)} or rank_ratio/energy")
    L_inv = None
    target = w
    if gram is not None:
        L, L_inv = whitening(gram, damp)
        target = w @ L  # (out, in)
    U, S, Vh = torch.linalg.svd(target, full_matrices=False)
    r = rank if rank is not None else rank_for_energy(S, energy)
    root = S[:r].sqrt()
    a = U[:, :r] * root  # (out, r)
    b = root[:, None] * Vh[:r]  # (r, in)
    if L_inv is not None:
        b = b @ L_inv  # un-whiten: W' = U S V^T L^-1
    return a, b


def low_rank_module(layer: nn.Module, rank: int) -> nn.Module:
    """An empty two-layer replacement of `layer` (Linear or Conv2d) at `rank`."""
    if isinstance(layer, nn.Linear):
        return LowRankLinear(layer.in_features, layer.out_features, rank, bias=layer.bias is not None)
    if isinstance(layer, nn.Conv2d):
        if layer.groups != 1:
            raise ConfigError(f"a grouped Conv2d (groups={layer.groups}) cannot be factorized; exclude it")
        return LowRankConv2d(layer, rank)
    raise ConfigError(f"cannot factorize {type(layer).__name__}; only Linear and Conv2d")


def factorized(layer: nn.Module, a: torch.Tensor, b: torch.Tensor) -> nn.Module:
    """The two-layer module computing `layer` with weight a @ b (bias kept), same dtype and device."""
    new = low_rank_module(layer, a.shape[1]).to(device=layer.weight.device, dtype=layer.weight.dtype)
    with torch.no_grad():
        new.first.weight.copy_(b.reshape(new.first.weight.shape))
        new.second.weight.copy_(a.reshape(new.second.weight.shape))
        if layer.bias is not None:
            new.second.bias.copy_(layer.bias)
    return new
