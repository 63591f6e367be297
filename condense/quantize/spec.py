"""What to quantize and how it is grouped: `QuantSpec`, its kinds, and the 2-D rows view every kind works on.

Everything works on a 2-D "rows" view of the tensor: each row shares one (scale, zero_point). Per-tensor is one
row, per-channel one row per channel (`axis`, 0 = output channel of a weight), per-group one row per
`group_size` consecutive elements of a channel. One code path then serves every granularity.

This is the bottom of `condense.quantize`: observers, non-uniform kinds and `primitives` all build on it, and it
imports none of them.
"""
from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Callable

import torch

from condense.core.config import config, show
from condense.core.registry import Registry
from condense.errors import ConfigError


class Granularity(enum.Enum):
    """Which elements share one scale."""

    PER_TENSOR = "per_tensor"
    PER_CHANNEL = "per_channel"
    PER_GROUP = "per_group"


class QuantKind(enum.Enum):
    """The set of levels: uniform grid, sign (binary), {-a, 0, a} (ternary), k-means codebook, powers of two."""

    UNIFORM = "uniform"
    BINARY = "binary"
    TERNARY = "ternary"
    KMEANS = "kmeans"
    POW2 = "pow2"


@dataclass(frozen=True)
class KindRule:
    """What a `QuantKind` allows and the integer codes it uses.

    Args:
        qrange: (quant_min, quant_max) of the codes for a spec of this kind.
        bits: the only bit width the kind takes (BINARY 1, TERNARY 2), or None for any in 1..8.
        asymmetric: whether symmetric=False is allowed (levels not symmetric around 0).
        min_symmetric_bits: the fewest bits a symmetric spec of this kind can use.
    """

    qrange: Callable[["QuantSpec"], tuple[int, int]]
    bits: int | None = None
    asymmetric: bool = False
    min_symmetric_bits: int = 1


def _uniform_range(spec: "QuantSpec") -> tuple[int, int]:
    if spec.symmetric:
        q = 2 ** (spec.bits - 1) - 1
        return -q, q
    return 0, 2 ** spec.bits - 1


def _codebook_range(spec: "QuantSpec") -> tuple[int, int]:
    return 0, 2 ** spec.bits - 1  # codebook indices


# QuantKind value -> its rule; a new kind registers one here (and its qparams, codes or fake quantizer in
# `primitives`).
KINDS: Registry[KindRule] = Registry("quantization kind")
KINDS.register(QuantKind.UNIFORM.value, KindRule(_uniform_range, asymmetric=True, min_symmetric_bits=2))
KINDS.register(QuantKind.BINARY.value, KindRule(lambda spec: (-1, 1), bits=1))
KINDS.register(QuantKind.TERNARY.value, KindRule(lambda spec: (-1, 1), bits=2))
KINDS.register(QuantKind.KMEANS.value, KindRule(_codebook_range, asymmetric=True))
KINDS.register(QuantKind.POW2.value, KindRule(_codebook_range, min_symmetric_bits=2))


@config
class QuantSpec:
    """How to quantize one tensor.

    Args:
        bits: 1..8. BINARY needs 1, TERNARY 2; symmetric UNIFORM and POW2 need at least 2.
        symmetric: UNIFORM only: zero_point 0 and a signed restricted range, else an unsigned range.
        granularity: PER_TENSOR, PER_CHANNEL (along `axis`) or PER_GROUP (`group_size` elements of a channel).
        group_size: elements per group (PER_GROUP only); must divide the elements per channel.
        kind: the level set (see `QuantKind`).
        axis: the channel axis (0 = output channel of Linear/Conv weights).

    Example:
        >>> QuantSpec(bits=4, granularity=Granularity.PER_CHANNEL).qrange()
        (-7, 7)
    """

    bits: int = 8
    symmetric: bool = True
    granularity: Granularity = Granularity.PER_TENSOR
    group_size: int | None = None
    kind: QuantKind = QuantKind.UNIFORM
    axis: int = 0

    def __post_init__(self) -> None:
        if isinstance(self.bits, bool) or not isinstance(self.bits, int) or not 1 <= self.bits <= 8:
            raise ConfigError(f"bits must be in 1..8, got {self.bits!r}; use bits=8 for int8")
        for name, enum_t in (("granularity", Granularity), ("kind", QuantKind)):
            if not isinstance(getattr(self, name), enum_t):
                raise ConfigError(f"QuantSpec.{name} must be a {enum_t.__name__}, e.g. "
                                  f"{enum_t.__name__}.{next(iter(enum_t)).name}; got {getattr(self, name)!r}")
        rule = KINDS.get(self.kind.value)
        if rule.bits is not None and self.bits != rule.bits:
            raise ConfigError(f"{self.kind.name} quantization uses {rule.bits} bit(s), got bits={self.bits}; "
                              f"set bits={rule.bits}")
        if self.symmetric and self.bits < rule.min_symmetric_bits:
            raise ConfigError(f"symmetric {self.kind.name} needs bits >= {rule.min_symmetric_bits} (1 bit leaves "
                              "only the level 0); use kind=QuantKind.BINARY for 1-bit weights or symmetric=False")
        if not rule.asymmetric and not self.symmetric:
            raise ConfigError(f"{self.kind.name} levels are symmetric around 0; drop symmetric=False")
        if self.granularity is Granularity.PER_GROUP:
            if isinstance(self.group_size, bool) or not isinstance(self.group_size, int) \
                    or not 1 <= self.group_size <= 1 << 24:
                raise ConfigError(f"PER_GROUP needs a positive group_size, got {self.group_size!r}; "
                                  "e.g. group_size=32")
        elif self.group_size is not None:
            raise ConfigError(f"group_size={self.group_size} only applies to granularity=PER_GROUP; "
                              "drop group_size or set granularity=Granularity.PER_GROUP")
        if isinstance(self.axis, bool) or not isinstance(self.axis, int) or not -8 <= self.axis < 8:
            raise ConfigError(f"QuantSpec.axis must be a tensor dimension in -8..7 (0 = output channel), got "
                              f"{show(self.axis)}; e.g. axis=0")

    def qrange(self) -> tuple[int, int]:
        """(quant_min, quant_max) of the integer codes."""
        return KINDS.get(self.kind.value).qrange(self)

    @property
    def signed(self) -> bool:
        """Whether integer codes are signed (int8) rather than unsigned (uint8)."""
        return self.qrange()[0] < 0


# -- the rows view ----------------------------------------------------------------------------------------------
def to_rows(x: torch.Tensor, spec: QuantSpec) -> torch.Tensor:
    """`x` as (G, N): one row per group of elements that share a scale."""
    if spec.granularity is Granularity.PER_TENSOR:
        return x.reshape(1, -1)
    axis = _axis(x, spec)
    ch = x.movedim(axis, 0).reshape(x.shape[axis], -1)  # (C, N)
    if spec.granularity is Granularity.PER_CHANNEL:
        return ch
    n, gs = ch.shape[1], spec.group_size
    assert gs is not None
    if n % gs:
        divisors = [d for d in range(1, n + 1) if n % d == 0 and d <= 256][-4:]
        raise ConfigError(f"group_size={gs} must divide the {n} in-features per channel; "
                          f"pick a divisor such as {divisors}")
    return ch.reshape(-1, gs)  # (C * N/gs, gs)


def from_rows(rows: torch.Tensor, shape: torch.Size | tuple[int, ...], spec: QuantSpec) -> torch.Tensor:
    """Inverse of `to_rows`: back to `shape`."""
    if spec.granularity is Granularity.PER_TENSOR:
        return rows.reshape(shape)
    axis = spec.axis % len(shape)
    moved = (shape[axis],) + tuple(s for i, s in enumerate(shape) if i != axis)
    return rows.reshape(moved).movedim(0, axis)


def qparam_shape(shape: torch.Size | tuple[int, ...], spec: QuantSpec) -> tuple[int, ...]:
    """Shape of scale/zero_point: () per tensor, (C,) per channel, (C, groups) per group."""
    if spec.granularity is Granularity.PER_TENSOR:
        return ()
    c = shape[spec.axis % len(shape)]
    if spec.granularity is Granularity.PER_CHANNEL:
        return (c,)
    n = 1
    for s in shape:
        n *= s
    return (c, n // c // spec.group_size)  # type: ignore[operator]


def _axis(x: torch.Tensor, spec: QuantSpec) -> int:
    if not -x.dim() <= spec.axis < x.dim():
        raise ConfigError(f"axis={spec.axis} is out of range for a {x.dim()}-d tensor of shape {tuple(x.shape)}; "
                          "use axis=0 for the output channel")
    return spec.axis % x.dim()


# -- qparams and codes shared by every UNIFORM user ------------------------------------------------------------
EPS = torch.finfo(torch.float32).eps


def qparams_from_range(lo: torch.Tensor, hi: torch.Tensor, spec: QuantSpec) -> tuple[torch.Tensor, torch.Tensor]:
    """UNIFORM (scale, zero_point) covering [lo, hi] per row (the range is widened to include 0)."""
    if spec.kind is not QuantKind.UNIFORM:
        raise ConfigError(f"a clipping range defines UNIFORM qparams only, not {spec.kind.name}; "
                          "use compute_qparams(x, spec) for binary/ternary weights")
    qmin, qmax = spec.qrange()
    lo = torch.clamp(lo.float(), max=0.0)
    hi = torch.clamp(hi.float(), min=0.0)
    if spec.symmetric:
        scale = torch.clamp(torch.maximum(-lo, hi) / qmax, min=EPS)
        zp = torch.zeros_like(scale, dtype=torch.int32)
    else:
        scale = torch.clamp((hi - lo) / (qmax - qmin), min=EPS)
        zp = torch.clamp(qmin - torch.round(lo / scale), qmin, qmax).to(torch.int32)
    return scale, zp


def _row_params(t: torch.Tensor) -> torch.Tensor:
    return t.reshape(-1, 1)  # (G, 1) broadcasts over each row


def uniform_codes(rows: torch.Tensor, scale: torch.Tensor, zp: torch.Tensor, spec: QuantSpec) -> torch.Tensor:
    """Unclamped float codes round(x / scale) + zp per row (the STE masks on these)."""
    inv = 1.0 / _row_params(scale).float()  # torch's kernels multiply by a float32 inverse scale
    return torch.round(rows.float() * inv) + _row_params(zp).float()


def dequantize(q: torch.Tensor, scale: torch.Tensor, zero_point: torch.Tensor, spec: QuantSpec) -> torch.Tensor:
    """Float32 values (q - zero_point) * scale.

    Example:
        >>> dequantize(torch.tensor([-2, 1, 7]), torch.tensor(0.5), torch.tensor(0), QuantSpec(bits=4)).tolist()
        [-1.0, 0.5, 3.5]
    """
    rows = to_rows(q, spec).float()
    out = (rows - _row_params(zero_point).float()) * _row_params(scale).float()
    return from_rows(out, q.shape, spec)


# QuantKind value -> fn(x, spec) -> x rounded to the kind's levels, for kinds without (scale, zero_point)
FAKE_QUANTIZERS: Registry[Callable[[torch.Tensor, QuantSpec], torch.Tensor]] = Registry("fake-quantizer kind")
