"""Calibration observers: watch tensors, then choose the clipping range of UNIFORM quantization.

The range decides the error. Min-max never clips but wastes levels on outliers; a percentile drops the extreme
tail; the MSE-optimal observer searches the clip that minimises the quantization error itself (which balances
clipping error against rounding error). Moving-average min-max follows activations that drift during QAT.

An observer is built for a grouping (per-tensor by default; pass the `QuantSpec` to get per-channel or
per-group statistics) and then answers `qparams(spec)` for any bit width or symmetry with that grouping.
"""
from __future__ import annotations

import math
from typing import Any

import torch

from condense.core.registry import Registry
from condense.errors import ConfigError
from condense.quantize.spec import (Granularity, QuantKind, QuantSpec, dequantize, qparams_from_range, to_rows,
                                    uniform_codes)

OBSERVERS: Registry[type] = Registry("observer")


class Observer:
    """Base class: `update(x)` any number of times, then `qparams(spec) -> (scale, zero_point)`.

    Args:
        spec: gives the grouping (granularity, axis, group_size) statistics are kept for; default per-tensor.
    """

    def __init__(self, spec: QuantSpec | None = None):
        self.spec = spec if spec is not None else QuantSpec()
        self.shape: tuple[int, ...] | None = None

    def update(self, x: torch.Tensor) -> None:
        """Observe one tensor (detached; any shape that fits the grouping)."""
        rows = to_rows(x.detach().float(), self.spec)  # (G, N)
        self.shape = tuple(x.shape)
        self._update(rows)

    def _update(self, rows: torch.Tensor) -> None:
        raise NotImplementedError

    def range(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(lo, hi) per row, shape (G,)."""
        raise NotImplementedError

    def qparams(self, spec: QuantSpec | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """UNIFORM (scale, zero_point) for the observed data, shape (G,), under `spec` (default: the observer's)."""
        spec = spec if spec is not None else self.spec
        if self.shape is None:
            raise ConfigError(f"{type(self).__name__} has seen no data; call update(x) before qparams()")
        grouping = lambda s: (s.granularity, s.axis, s.group_size)  # noqa: E731
        if grouping(spec) != grouping(self.spec):
            raise ConfigError(f"{type(self).__name__} keeps {self.spec.granularity.value} statistics but "
                              f"qparams() was asked for {spec.granularity.value}; build it with "
                              "make_observer(name, spec=<that spec>)")
        if spec.kind is not QuantKind.UNIFORM:
            raise ConfigError(f"observers pick UNIFORM ranges, not {spec.kind.name}; use compute_qparams(w, spec)")
        return self._qparams(spec)

    def _qparams(self, spec: QuantSpec) -> tuple[torch.Tensor, torch.Tensor]:
        lo, hi = self.range()
        return qparams_from_range(lo, hi, spec)


@OBSERVERS.register("minmax")
class MinMaxObserver(Observer):
    """The running min and max of everything observed (never clips).

    Example:
        >>> o = MinMaxObserver(); o.update(torch.tensor([-1.0, 3.0])); o.update(torch.tensor([5.0]))
        >>> [float(t) for t in o.range()]
        [-1.0, 5.0]
    """

    def __init__(self, spec: QuantSpec | None = None):
        super().__init__(spec)
        self.lo: torch.Tensor | None = None
        self.hi: torch.Tensor | None = None

    def _update(self, rows: torch.Tensor) -> None:
        lo, hi = rows.amin(dim=1), rows.amax(dim=1)
        self.lo = lo if self.lo is None else torch.minimum(self.lo, lo)
        self.hi = hi if self.hi is None else torch.maximum(self.hi, hi)

    def range(self) -> tuple[torch.Tensor, torch.Tensor]:
        assert self.lo is not None and self.hi is not None
        return self.lo, self.hi


@OBSERVERS.register("moving_average")
class MovingAverageMinMaxObserver(MinMaxObserver):
    """Exponential moving average of each batch's min and max: `r += momentum * (batch - r)` (torch's default 0.01).

    Example:
        >>> o = MovingAverageMinMaxObserver(momentum=0.5)
        >>> o.update(torch.tensor([0.0, 4.0])); o.update(torch.tensor([0.0, 2.0]))
        >>> float(o.range()[1])
        3.0
    """

    def __init__(self, spec: QuantSpec | None = None, *, momentum: float = 0.01):
        super().__init__(spec)
        if not 0.0 < momentum <= 1.0:
            raise ConfigError(f"momentum must be in (0, 1], got {momentum!r}; e.g. momentum=0.01")
        self.momentum = momentum

    def _update(self, rows: torch.Tensor) -> None:
        lo, hi = rows.amin(dim=1), rows.amax(dim=1)
        if self.lo is None or self.hi is None:
            self.lo, self.hi = lo, hi
        else:
            self.lo = self.lo + self.momentum * (lo - self.lo)
            self.hi = self.hi + self.momentum * (hi - self.hi)


class _SampleObserver(Observer):
    """Keeps (a strided subsample of) the observed values per row, for range searches that need the data."""

    def __init__(self, spec: QuantSpec | None = None, *, max_samples: int = 1 << 20):
        super().__init__(spec)
        self.max_samples = max_samples
        self.rows: torch.Tensor | None = None

    def _update(self, rows: torch.Tensor) -> None:
        self.rows = rows if self.rows is None else torch.cat([self.rows, rows], dim=1)
        n = self.rows.shape[1]
        if n > self.max_samples:  # deterministic thinning keeps the memory bounded
            step = -(-n // self.max_samples)
            self.rows = self.rows[:, ::step]


@OBSERVERS.register("percentile")
class PercentileObserver(_SampleObserver):
    """Clip to the [100 - p, p] percentiles of the observed values (e.g. p = 99.99), dropping rare outliers.

    Example:
        >>> o = PercentileObserver(percentile=90.0); o.update(torch.arange(11.0))
        >>> [float(t) for t in o.range()]
        [1.0, 9.0]
    """

    def __init__(self, spec: QuantSpec | None = None, *, percentile: float = 99.99, max_samples: int = 1 << 20):
        super().__init__(spec, max_samples=max_samples)
        if not 50.0 < percentile <= 100.0:
            raise ConfigError(f"percentile must be in (50, 100], got {percentile!r}; e.g. percentile=99.99")
        self.percentile = percentile

    def range(self) -> tuple[torch.Tensor, torch.Tensor]:
        assert self.rows is not None
        srt = self.rows.sort(dim=1).values  # (G, N)
        n = srt.shape[1]
        pos = torch.tensor([(100.0 - self.percentile) / 100.0, self.percentile / 100.0]) * (n - 1)
        lo_i, hi_i = pos.floor().long(), pos.ceil().long()
        frac = pos - lo_i  # linear interpolation between order statistics, as torch.quantile does
        vals = srt[:, lo_i] + (srt[:, hi_i] - srt[:, lo_i]) * frac  # (G, 2)
        return vals[:, 0], vals[:, 1]


@OBSERVERS.register("mse")
class MSEObserver(_SampleObserver):
    """The clipping range with the lowest quantization MSE, searched over `steps` shrinks of min-max (1 down to
    `min_ratio`, geometrically), so it is never worse than min-max on the data it saw.

    Example:
        >>> x = torch.cat([torch.randn(10000), torch.tensor([80.0])])
        >>> o = MSEObserver(); o.update(x)
        >>> float(o.range()[1]) < 80.0
        True
    """

    def __init__(self, spec: QuantSpec | None = None, *, steps: int = 100, min_ratio: float = 0.01,
                 max_samples: int = 1 << 20):
        super().__init__(spec, max_samples=max_samples)
        if steps < 1 or not 0.0 < min_ratio <= 1.0:
            raise ConfigError(f"MSEObserver needs steps >= 1 and min_ratio in (0, 1], got {steps}, {min_ratio}")
        self.steps, self.min_ratio = steps, min_ratio
        self._spec_for_range: QuantSpec | None = None

    def _qparams(self, spec: QuantSpec) -> tuple[torch.Tensor, torch.Tensor]:
        self._spec_for_range = spec  # the best clip depends on the bit width
        return super()._qparams(spec)

    def range(self) -> tuple[torch.Tensor, torch.Tensor]:
        assert self.rows is not None
        spec = self._spec_for_range or self.spec
        rows = self.rows
        lo0, hi0 = rows.amin(dim=1), rows.amax(dim=1)  # (G,)
        best_err = torch.full_like(lo0, float("inf"))
        best_lo, best_hi = lo0.clone(), hi0.clone()
        qmin, qmax = spec.qrange()
        for r in torch.logspace(0.0, math.log10(self.min_ratio), self.steps):  # geometric: fine near small clips
            lo, hi = lo0 * r, hi0 * r
            scale, zp = qparams_from_range(lo, hi, spec)
            codes = torch.clamp(uniform_codes(rows, scale, zp, spec), qmin, qmax)
            err = (dequantize(codes, scale, zp, _per_row(spec)) - rows).pow(2).mean(dim=1)  # (G,)
            better = err < best_err
            best_err = torch.where(better, err, best_err)
            best_lo = torch.where(better, lo, best_lo)
            best_hi = torch.where(better, hi, best_hi)
        return best_lo, best_hi


def _per_row(spec: QuantSpec) -> QuantSpec:
    """A spec whose rows view of a (G, N) tensor is itself: dequantize works on rows directly."""
    return QuantSpec(bits=spec.bits, symmetric=spec.symmetric, granularity=Granularity.PER_CHANNEL, axis=0)


def make_observer(name: str, spec: QuantSpec | None = None, **options: Any) -> Observer:
    """A fresh observer by registered name ("minmax", "moving_average", "percentile", "mse").

    Example:
        >>> o = make_observer("percentile", percentile=99.9)
        >>> type(o).__name__
        'PercentileObserver'
    """
    cls = OBSERVERS.get(name)
    try:
        return cls(spec, **options)
    except TypeError as e:
        raise ConfigError(f"observer {name!r} does not take these options ({e}); see {cls.__name__}'s docstring") \
            from None


__all__ = ["OBSERVERS", "Observer", "MinMaxObserver", "MovingAverageMinMaxObserver", "PercentileObserver",
           "MSEObserver", "make_observer"]
