"""Packing unsigned b-bit integers into bytes, so a 4-bit weight really takes half a byte on disk and in memory.

Layout (little-endian bit stream): value `i` occupies bits `[b*i, b*i + b)` of the stream, and stream bit `k` is
bit `k % 8` of byte `k // 8`. For b = 2, 4 this means 8/b values per byte, the first value in the low bits; for
b = 3, eight values fill three bytes. `n` values always take exactly `ceil(n * b / 8)` bytes (no padding
beyond the last byte).
"""
from __future__ import annotations

import functools

import torch

from condense.errors import ConfigError

PACKABLE_BITS = (1, 2, 3, 4, 5, 6, 7, 8)


def _check_bits(bits: int) -> None:
    if bits not in PACKABLE_BITS:
        raise ConfigError(f"bits must be one of {', '.join(map(str, PACKABLE_BITS))} to pack into bytes, got {bits!r}")


def packed_nbytes(n: int, bits: int) -> int:
    """Bytes that `n` values of `bits` bits take when packed: ceil(n * bits / 8).

    Example:
        >>> packed_nbytes(5, 4), packed_nbytes(8, 3), packed_nbytes(9, 3)
        (3, 3, 4)
    """
    _check_bits(bits)
    return (n * bits + 7) // 8


def pack(values: torch.Tensor, bits: int) -> torch.Tensor:
    """Pack integers in [0, 2**bits) (any shape, flattened row-major) into a 1-D uint8 tensor.

    Example:
        >>> pack(torch.tensor([1, 2, 15]), 4).tolist()   # 0x21, then 0x0F
        [33, 15]
    """
    _check_bits(bits)
    v = values.reshape(-1)
    n = v.numel()
    if n and (int(v.min()) < 0 or int(v.max()) >= 1 << bits):
        raise ConfigError(f"values to pack in {bits} bits must lie in [0, {(1 << bits) - 1}], got "
                          f"[{int(v.min())}, {int(v.max())}]; quantize them first")
    if bits == 8:
        return v.to(torch.uint8).clone()
    nbytes = packed_nbytes(n, bits)
    if 8 % bits == 0:  # whole values per byte: plain uint8 shifts
        per = 8 // bits
        v = torch.nn.functional.pad(v.to(torch.uint8), (0, nbytes * per - n)).view(-1, per)  # (nbytes, per)
        shifts = torch.arange(0, 8, bits, dtype=torch.uint8, device=v.device)
        return (v << shifts).sum(dim=1, dtype=torch.uint8)  # disjoint bits: sum == or
    # bit stream: 8 values -> `bits` bytes through one int64 word (8 * bits <= 56 bits)
    groups = (n + 7) // 8
    v = torch.nn.functional.pad(v.to(torch.int64), (0, groups * 8 - n)).view(groups, 8)  # (G, 8)
    word = (v << torch.arange(0, 8 * bits, bits, device=v.device)).sum(dim=1)  # (G,)
    out = (word[:, None] >> torch.arange(0, 8 * bits, 8, device=v.device)) & 0xFF  # (G, bits)
    return out.to(torch.uint8).reshape(-1)[:nbytes].clone()


def unpack(packed: torch.Tensor, bits: int, n: int, *, dtype: torch.dtype = torch.uint8) -> torch.Tensor:
    """The first `n` values (1-D, uint8 or `dtype`) stored in `packed` by `pack(values, bits)`.

    Asking for the dtype you need (e.g. float32) saves a conversion pass: each value position of a byte is
    written straight into a strided view of the output (no broadcasting, which is slow for uint8 on CPU).

    Example:
        >>> unpack(pack(torch.tensor([5, 0, 7, 3, 1]), 3), 3, 5).tolist()
        [5, 0, 7, 3, 1]
    """
    _check_bits(bits)
    if packed.dtype != torch.uint8 or packed.dim() != 1:
        raise ConfigError(f"unpack needs a 1-D uint8 tensor, got {packed.dtype} of shape {tuple(packed.shape)}")
    if packed.numel() < packed_nbytes(n, bits):
        raise ConfigError(f"{packed.numel()} bytes hold fewer than {n} values of {bits} bits "
                          f"(need {packed_nbytes(n, bits)}); was it packed with other bits?")
    if bits == 8:
        return packed[:n].to(dtype)
    mask = (1 << bits) - 1
    if 8 % bits == 0:
        per, nbytes = 8 // bits, packed_nbytes(n, bits)
        out = torch.empty(nbytes, per, dtype=dtype, device=packed.device)  # (nbytes, per)
        p = packed[:nbytes]
        for k in range(per):
            v = p >> (k * bits) if k else p
            out[:, k] = v & mask if k < per - 1 else v
        return out.view(-1)[:n]
    groups, used = (n + 7) // 8, packed_nbytes(n, bits)
    wide = torch.int32 if 8 * bits < 32 else torch.int64  # 3 bits: a 24-bit word fits int32 (half the traffic)
    b = packed[:used].to(wide)
    if used < groups * bits:
        b = torch.nn.functional.pad(b, (0, groups * bits - used))
    word = (b.view(groups, bits) << _steps(8, 8 * bits, wide, packed.device)).sum(dim=1, dtype=wide)  # (G,)
    vals = (word[:, None] >> _steps(bits, 8 * bits, wide, packed.device)) & mask  # (G, 8)
    return vals.reshape(-1)[:n].to(dtype)


@functools.lru_cache(maxsize=64)
def _steps(step: int, stop: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """0, step, 2*step, ... < stop as a cached tensor (unpack runs on every forward: no per-call arange)."""
    with torch.inference_mode(False):  # a normal tensor even when first called under inference_mode
        return torch.arange(0, stop, step, dtype=dtype, device=device)
