"""Non-uniform levels: k-means codebooks (weight clustering) and powers of two.

Weights are roughly Gaussian, so a uniform grid spends levels on empty tails. A k-means codebook puts levels
where the weights are (Lloyd-Max: the MSE-optimal scalar quantizer), at the cost of a table lookup; powers of two
(`+-2^k` and 0) turn multiplications into shifts and also crowd levels near zero.

Both work row-wise like `primitives` (per tensor, per channel, per group) and register themselves as the
KMEANS and POW2 kinds of `primitives.fake_quantize`.
"""
from __future__ import annotations

import torch

from condense.errors import ConfigError
from condense.quantize.spec import FAKE_QUANTIZERS, Granularity, QuantKind, QuantSpec, from_rows, to_rows


def kmeans_rows(rows: torch.Tensor, k: int, iters: int = 100) -> tuple[torch.Tensor, torch.Tensor]:
    """1-D k-means on every row of `rows` (G, N) at once: (centroids (G, K) ascending, indices (G, N) int64).

    Deterministic: centroids start evenly spaced over each row's [min, max] (linear init), then Lloyd steps run
    until no centroid moves. In 1-D the nearest centroid is found by bucketing on the midpoints between
    sorted centroids, so a step is O(N log K) without a (G, N, K) distance tensor.
    """
    if k < 1 or iters < 1:
        raise ConfigError(f"k-means needs n_clusters >= 1 and iters >= 1, got {k}, {iters}")
    rows = rows.detach().float()
    lo, hi = rows.amin(dim=1, keepdim=True), rows.amax(dim=1, keepdim=True)  # (G, 1)
    c = lo + (hi - lo) * torch.linspace(0.0, 1.0, k)  # (G, K)
    ones = torch.ones_like(rows)
    for _ in range(iters):
        idx = _nearest(c, rows)
        sums = torch.zeros_like(c).scatter_add_(1, idx, rows)
        counts = torch.zeros_like(c).scatter_add_(1, idx, ones)
        new = torch.where(counts > 0, sums / counts.clamp(min=1), c).sort(dim=1).values  # empty: keep
        if torch.equal(new, c):
            break
        c = new
    return c, _nearest(c, rows)


def _nearest(c: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
    mids = (c[:, 1:] + c[:, :-1]) / 2  # (G, K-1), ascending
    return torch.searchsorted(mids.contiguous(), rows.contiguous())  # (G, N) in 0..K-1


def kmeans_quantize(w: torch.Tensor, n_clusters: int | None = None, *, bits: int | None = None,
                    per_channel: bool = False, iters: int = 100) -> tuple[torch.Tensor, torch.Tensor]:
    """Cluster the values of `w` into a codebook: (codebook, indices) with `w ~= codebook[indices]`.

    Args:
        n_clusters: codebook size; or give `bits` for 2**bits entries.
        per_channel: one codebook per output channel (axis 0): codebook (C, K) instead of (K,).
        iters: at most this many Lloyd steps.

    Returns:
        codebook (float32, ascending), indices (uint8 when K <= 256, else int64) in the shape of `w`.

    Example:
        >>> cb, idx = kmeans_quantize(torch.tensor([0.0, 0.1, 5.0, 5.2]), 2)
        >>> cb.tolist(), idx.tolist()
        ([0.05000000074505806, 5.099999904632568], [0, 0, 1, 1])
    """
    if (n_clusters is None) == (bits is None):
        raise ConfigError("give exactly one of n_clusters= or bits= (bits=4 means 16 clusters)")
    if bits is not None:
        QuantSpec(bits=bits, kind=QuantKind.KMEANS)  # validates 1..8
        n_clusters = 2 ** bits
    assert n_clusters is not None
    spec = QuantSpec(granularity=Granularity.PER_CHANNEL if per_channel else Granularity.PER_TENSOR,
                     kind=QuantKind.KMEANS)
    c, idx = kmeans_rows(to_rows(w, spec), n_clusters, iters)
    idx = idx.to(torch.uint8 if n_clusters <= 256 else torch.int64)
    return (c if per_channel else c[0]), from_rows(idx, w.shape, spec)


def kmeans_dequantize(codebook: torch.Tensor, indices: torch.Tensor) -> torch.Tensor:
    """`codebook[indices]`, per channel (axis 0) when the codebook is (C, K).

    Example:
        >>> kmeans_dequantize(torch.tensor([-1.0, 2.0]), torch.tensor([1, 0, 1], dtype=torch.uint8)).tolist()
        [2.0, -1.0, 2.0]
    """
    idx = indices.long()
    if codebook.dim() == 1:
        return codebook[idx]
    rows = idx.reshape(idx.shape[0], -1)  # (C, N)
    return codebook.gather(1, rows).reshape(indices.shape)


def pow2_rows(rows: torch.Tensor, bits: int) -> torch.Tensor:
    """Each value of `rows` (G, N) rounded (in the linear domain) to 0 or +-2^k, 2^(bits-1)-1 exponents per row.

    The largest exponent is the power of two nearest to the row's max|x| (floor(log2(4/3 * max)), as in INQ);
    the others step down by halves.
    """
    n_exp = 2 ** (bits - 1) - 1
    a = rows.detach().float().abs()
    amax = a.amax(dim=1, keepdim=True)  # (G, 1)
    kmax = torch.floor(torch.log2(amax.clamp(min=1e-30) * (4.0 / 3.0)))
    ks = kmax - torch.arange(n_exp - 1, -1, -1, dtype=torch.float32)  # (G, n_exp), ascending
    levels = torch.cat([torch.zeros_like(kmax), torch.exp2(ks)], dim=1)  # (G, L) ascending, exact powers of two
    idx = _nearest(levels, a)
    out = torch.sign(rows.detach().float()) * levels.gather(1, idx)
    return torch.where(amax > 0, out, torch.zeros_like(out))


def pow2_quantize(w: torch.Tensor, bits: int, *, per_channel: bool = False) -> torch.Tensor:
    """`w` rounded to {0, +-2^k} with 2^(bits-1)-1 exponents (one sign bit), as float.

    Example:
        >>> pow2_quantize(torch.tensor([0.9, -0.3, 0.01, 0.2]), bits=3).tolist()
        [1.0, -0.25, 0.0, 0.25]
    """
    spec = QuantSpec(bits=bits, kind=QuantKind.POW2,
                     granularity=Granularity.PER_CHANNEL if per_channel else Granularity.PER_TENSOR)
    return _fake_pow2(w, spec)


@FAKE_QUANTIZERS.register(QuantKind.KMEANS.value)
def _fake_kmeans(x: torch.Tensor, spec: QuantSpec) -> torch.Tensor:
    rows = to_rows(x, spec)
    c, idx = kmeans_rows(rows, 2 ** spec.bits)
    return from_rows(c.gather(1, idx), x.shape, spec)


@FAKE_QUANTIZERS.register(QuantKind.POW2.value)
def _fake_pow2(x: torch.Tensor, spec: QuantSpec) -> torch.Tensor:
    return from_rows(pow2_rows(to_rows(x, spec), spec.bits), x.shape, spec)
