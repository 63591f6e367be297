"""Uniform affine quantization of any tensor, plus the binary and ternary weight schemes.

The tensor is grouped by `QuantSpec` into a 2-D rows view (see `condense.quantize.spec`); each row shares one
(scale, zero_point). What a kind does is looked up by its `QuantKind` value: `QPARAMS` (its scale and zero
point), `CODES` (its integer codes), `FAKE_QUANTIZERS` (the codebook kinds, registered by `nonuniform`).

Ranges: symmetric uses the *restricted* signed range [-(2^(b-1)-1), 2^(b-1)-1] (zero_point 0, so -128 is never
used at 8 bits and the grid is symmetric); asymmetric uses the unsigned range [0, 2^b-1]. Rounding is half to
even on `x * (1/scale)`, exactly as torch's fake-quantize kernels do, so results match them bit for bit.

Non-uniform kinds (KMEANS, POW2) have codebooks instead of (scale, zero_point); they live in `nonuniform.py` and
are reached through `fake_quantize`.
"""
from __future__ import annotations

from typing import Any, Callable

import torch

from condense.core.registry import Registry
from condense.errors import ConfigError
from condense.quantize import nonuniform  # noqa: F401  (registers KMEANS and POW2 in FAKE_QUANTIZERS)
from condense.quantize.observers import Observer, make_observer
from condense.quantize.spec import (EPS, FAKE_QUANTIZERS, KINDS, Granularity, KindRule, QuantKind,  # noqa: F401
                                    QuantSpec, dequantize, from_rows, qparam_shape, qparams_from_range, to_rows,
                                    uniform_codes)


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
        obs = observer if isinstance(observer, Observer) else make_observer(observer, spec=spec)
        obs.update(x)
        scale, zp = obs.qparams(spec)
        return scale.reshape(shape), zp.reshape(shape)
    scale, zp = QPARAMS.get(spec.kind.value)(to_rows(x.detach(), spec), spec)
    return scale.reshape(shape), zp.reshape(shape)


# -- quantize / dequantize --------------------------------------------------------------------------------------
def _uniform_codes(rows: torch.Tensor, scale: torch.Tensor, zp: torch.Tensor, spec: QuantSpec) -> torch.Tensor:
    qmin, qmax = spec.qrange()
    return torch.clamp(uniform_codes(rows, scale, zp, spec), qmin, qmax)


def _binary_codes(rows: torch.Tensor, scale: torch.Tensor, zp: torch.Tensor, spec: QuantSpec) -> torch.Tensor:
    return torch.where(rows >= 0, 1.0, -1.0)  # sign with sign(0) = +1, so every code is +-1


def _ternary_codes(rows: torch.Tensor, scale: torch.Tensor, zp: torch.Tensor, spec: QuantSpec) -> torch.Tensor:
    return torch.sign(rows) * (rows.abs() > ternary_threshold(rows))


# QuantKind value -> fn(rows, scale, zero_point, spec) -> float codes per row, for kinds with (scale, zero_point)
CODES: Registry[Callable[..., torch.Tensor]] = Registry("code kind")
CODES.register(QuantKind.UNIFORM.value, _uniform_codes)
CODES.register(QuantKind.BINARY.value, _binary_codes)
CODES.register(QuantKind.TERNARY.value, _ternary_codes)


def quantize(x: torch.Tensor, scale: torch.Tensor, zero_point: torch.Tensor, spec: QuantSpec) -> torch.Tensor:
    """Integer codes of `x` (int8 when signed, else uint8), same shape as `x`.

    Example:
        >>> spec = QuantSpec(bits=4)
        >>> quantize(torch.tensor([-1.0, 0.3, 7.0]), torch.tensor(0.5), torch.tensor(0), spec).tolist()
        [-2, 1, 7]
    """
    if spec.kind.value not in CODES:
        raise ConfigError(f"{spec.kind.name} has no (scale, zero_point) codes; use fake_quantize(x, spec)")
    q = CODES.get(spec.kind.value)(to_rows(x, spec), scale, zero_point, spec)  # (G, N) float codes
    return from_rows(q.to(torch.int8 if spec.signed else torch.uint8), x.shape, spec)


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
    return FAKE_QUANTIZERS.get(spec.kind.value)(x.detach(), spec).to(x.dtype)
