"""Uniform affine quantization of any tensor, plus the binary and ternary weight schemes.

Everything works on a 2-D "rows" view of the tensor: each row shares one (scale, zero_point). Per-tensor is one
row, per-channel one row per channel (`axis`, 0 = output channel of a weight), per-group one row per
`group_size` consecutive elements of a channel. One code path then serves every granularity.

Ranges: symmetric uses the *restricted* signed range [-(2^(b-1)-1), 2^(b-1)-1] (zero_point 0, so -128 is never
used at 8 bits and the grid is symmetric); asymmetric uses the unsigned range [0, 2^b-1]. Rounding is half to
even on `x * (1/scale)`, exactly as torch's fake-quantize kernels do, so results match them bit for bit.

Non-uniform kinds (KMEANS, POW2) have codebooks instead of (scale, zero_point); they live in `nonuniform.py` and
are reached through `fake_quantize`.
"""
from __future__ import annotations

import enum
from typing import Any, Callable

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


_KIND_BITS = {QuantKind.BINARY: 1, QuantKind.TERNARY: 2}


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
        need = _KIND_BITS.get(self.kind)
        if need is not None and self.bits != need:
            raise ConfigError(f"{self.kind.name} quantization uses {need} bit(s), got bits={self.bits}; "
                              f"set bits={need}")
        if self.kind in (QuantKind.UNIFORM, QuantKind.POW2) and self.symmetric and self.bits < 2:
            raise ConfigError(f"symmetric {self.kind.name} needs bits >= 2 (1 bit leaves only the level 0); "
                              "use kind=QuantKind.BINARY for 1-bit weights or symmetric=False")
        if self.kind not in (QuantKind.UNIFORM, QuantKind.KMEANS) and not self.symmetric:
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
        if self.kind is QuantKind.UNIFORM:
            if self.symmetric:
                q = 2 ** (self.bits - 1) - 1
                return -q, q
            return 0, 2 ** self.bits - 1
        if self.kind is QuantKind.BINARY:
            return -1, 1
        if self.kind is QuantKind.TERNARY:
            return -1, 1
        return 0, 2 ** self.bits - 1  # codebook indices

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


# -- qparams ----------------------------------------------------------------------------------------------------
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


def _uniform_qparams(rows: torch.Tensor, spec: QuantSpec) -> tuple[torch.Tensor, torch.Tensor]:
    return qparams_from_range(rows.amin(dim=1), rows.amax(dim=1), spec)


def _binary_qparams(rows: torch.Tensor, spec: QuantSpec) -> tuple[torch.Tensor, torch.Tensor]:
    scale = rows.abs().mean(dim=1).float()  # XNOR-Net: the L2-optimal scale for sign(w) is mean|w|
    return scale, torch.zeros_like(scale, dtype=torch.int32)


def ternary_threshold(rows: torch.Tensor) -> torch.Tensor:
    """TWN threshold per row: 0.7 * mean|w|, shape (G, 1)."""
    return 0.7 * rows.abs().mean(dim=1, keepdim=True)


def _ternary_qparams(rows: torch.Tensor, spec: QuantSpec) -> tuple[torch.Tensor, torch.Tensor]:
    a = rows.abs()
    keep = a > ternary_threshold(rows)
    scale = (a * keep).sum(dim=1) / keep.sum(dim=1).clamp(min=1)  # TWN: alpha = mean of the kept |w|
    scale = scale.float()
    return scale, torch.zeros_like(scale, dtype=torch.int32)


QPARAMS: Registry[Callable[[torch.Tensor, QuantSpec], tuple[torch.Tensor, torch.Tensor]]] = Registry("qparam kind")
QPARAMS.register(QuantKind.UNIFORM.value, _uniform_qparams)
QPARAMS.register(QuantKind.BINARY.value, _binary_qparams)
QPARAMS.register(QuantKind.TERNARY.value, _ternary_qparams)


def compute_qparams(x: torch.Tensor, spec: QuantSpec, observer: Any = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(scale float32, zero_point int32) for `x`, shaped by `qparam_shape`.

    Args:
        observer: UNIFORM only: a name from `observers.OBSERVERS` ("minmax", "percentile", "mse", ...) or an
            `Observer`; it observes `x` and picks the clipping range. Default: the min/max of each row.

    Example:
        >>> s, z = compute_qparams(torch.tensor([-1.0, 0.5, 2.54]), QuantSpec(bits=8))
        >>> round(float(s), 4), int(z)
        (0.02, 0)
    """
    if spec.kind.value not in QPARAMS:
        raise ConfigError(f"{spec.kind.name} uses a codebook, not (scale, zero_point); use fake_quantize(x, spec), "
                          "nonuniform.kmeans_quantize or nonuniform.pow2_quantize")
    shape = qparam_shape(x.shape, spec)
    if observer is not None:
        if spec.kind is not QuantKind.UNIFORM:
            raise ConfigError(f"observers pick clipping ranges for UNIFORM quantization, not {spec.kind.name}; "
                              "drop observer=")
        from condense.quantize.observers import Observer, make_observer

        obs = observer if isinstance(observer, Observer) else make_observer(observer, spec=spec)
        obs.update(x)
        scale, zp = obs.qparams(spec)
        return scale.reshape(shape), zp.reshape(shape)
    scale, zp = QPARAMS.get(spec.kind.value)(to_rows(x.detach(), spec), spec)
    return scale.reshape(shape), zp.reshape(shape)


# -- quantize / dequantize --------------------------------------------------------------------------------------
def _row_params(t: torch.Tensor) -> torch.Tensor:
    return t.reshape(-1, 1)  # (G, 1) broadcasts over each row


def uniform_codes(rows: torch.Tensor, scale: torch.Tensor, zp: torch.Tensor, spec: QuantSpec) -> torch.Tensor:
    """Unclamped float codes round(x / scale) + zp per row (the STE masks on these)."""
    inv = 1.0 / _row_params(scale).float()  # torch's kernels multiply by a float32 inverse scale
    return torch.round(rows.float() * inv) + _row_params(zp).float()


def quantize(x: torch.Tensor, scale: torch.Tensor, zero_point: torch.Tensor, spec: QuantSpec) -> torch.Tensor:
    """Integer codes of `x` (int8 when signed, else uint8), same shape as `x`.

    Example:
        >>> spec = QuantSpec(bits=4)
        >>> quantize(torch.tensor([-1.0, 0.3, 7.0]), torch.tensor(0.5), torch.tensor(0), spec).tolist()
        [-2, 1, 7]
    """
    rows = to_rows(x, spec)
    qmin, qmax = spec.qrange()
    if spec.kind is QuantKind.UNIFORM:
        q = torch.clamp(uniform_codes(rows, scale, zero_point, spec), qmin, qmax)
    elif spec.kind is QuantKind.BINARY:
        q = torch.where(rows >= 0, 1.0, -1.0)  # sign with sign(0) = +1, so every code is +-1
    elif spec.kind is QuantKind.TERNARY:
        q = torch.sign(rows) * (rows.abs() > ternary_threshold(rows))
    else:
        raise ConfigError(f"{spec.kind.name} has no (scale, zero_point) codes; use fake_quantize(x, spec)")
    return from_rows(q.to(torch.int8 if spec.signed else torch.uint8), x.shape, spec)


def dequantize(q: torch.Tensor, scale: torch.Tensor, zero_point: torch.Tensor, spec: QuantSpec) -> torch.Tensor:
    """Float32 values (q - zero_point) * scale.

    Example:
        >>> dequantize(torch.tensor([-2, 1, 7]), torch.tensor(0.5), torch.tensor(0), QuantSpec(bits=4)).tolist()
        [-1.0, 0.5, 3.5]
    """
    rows = to_rows(q, spec).float()
    out = (rows - _row_params(zero_point).float()) * _row_params(scale).float()
    return from_rows(out, q.shape, spec)


FAKE_QUANTIZERS: Registry[Callable[[torch.Tensor, QuantSpec], torch.Tensor]] = Registry("fake-quantizer kind")


def fake_quantize(x: torch.Tensor, spec: QuantSpec, observer: Any = None) -> torch.Tensor:
    """`x` rounded to the levels `spec` allows, as float (quantize then dequantize); no gradient through rounding.

    Example:
        >>> fake_quantize(torch.tensor([0.1, 0.26, 1.0]), QuantSpec(bits=3)).tolist()
        [0.0, 0.3333333432674408, 1.0]
    """
    if spec.kind.value in QPARAMS:
        scale, zp = compute_qparams(x, spec, observer)
        out = dequantize(quantize(x.detach(), scale, zp, spec), scale, zp, spec)
        return out.to(x.dtype)
    if observer is not None:
        raise ConfigError(f"{spec.kind.name} fits its own levels; observers apply to UNIFORM only: drop observer=")
    import condense.quantize.nonuniform  # noqa: F401  (registers KMEANS and POW2 in FAKE_QUANTIZERS)

    return FAKE_QUANTIZERS.get(spec.kind.value)(x.detach(), spec).to(x.dtype)
