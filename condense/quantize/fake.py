"""Fake quantization for training: a straight-through estimator, fake-quantizers, and fake-quant layers.

Rounding has a zero gradient almost everywhere, so quantization-aware training (QAT) uses the straight-through
estimator (STE): the forward pass rounds, the backward pass treats rounding as identity, except where the value
was clipped (outside the quantization range), where the gradient is zero, exactly as torch's
`fake_quantize_per_tensor_affine` does.

`WeightFakeQuantize` and `ActivationFakeQuantize` are `torch.ao` fake-quantizers (`FakeQuantizeBase`), so they
plug into torch's QAT graph passes as a `QConfig` (that is how `qat.py` reaches real int8 kernels), and the eager
`FakeQuantLinear`/`FakeQuantConv2d` layers are built from the same two pieces, for simulating any `QuantSpec`
(4-bit, per-group, ternary...) that has no int8 kernel.
"""
from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.ao.quantization import FakeQuantizeBase

from condense.errors import ConfigError
from condense.quantize.observers import make_observer
from condense.quantize.primitives import (EPS, QPARAMS, Granularity, QuantKind, QuantSpec, compute_qparams, dequantize,
                                          fake_quantize, from_rows, quantize, to_rows, uniform_codes)

DEFAULT_WEIGHT_SPEC = QuantSpec(bits=8, symmetric=True, granularity=Granularity.PER_CHANNEL)


class _FakeQuantSTE(torch.autograd.Function):
    """forward: fake-quantize with the given qparams; backward: pass the gradient where the value was not clipped."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, scale: torch.Tensor, zero_point: torch.Tensor,  # type: ignore[override]
                spec: QuantSpec) -> torch.Tensor:
        if spec.kind is QuantKind.UNIFORM:
            rows = to_rows(x, spec)  # (G, N)
            qmin, qmax = spec.qrange()
            codes = uniform_codes(rows, scale, zero_point, spec)
            mask = from_rows((codes >= qmin) & (codes <= qmax), x.shape, spec)
            out = from_rows((codes.clamp(qmin, qmax) - zero_point.reshape(-1, 1).float())
                            * scale.reshape(-1, 1).float(), x.shape, spec)
            ctx.save_for_backward(mask)
            return out.to(x.dtype)
        ctx.save_for_backward(None)
        if spec.kind.value in QPARAMS:
            return dequantize(quantize(x, scale, zero_point, spec), scale, zero_point, spec).to(x.dtype)
        return fake_quantize(x, spec)  # codebook kinds fit their own levels

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None, None, None]:  # type: ignore[override]
        (mask,) = ctx.saved_tensors
        return (grad if mask is None else grad * mask), None, None, None


def fake_quantize_ste(x: torch.Tensor, spec: QuantSpec, scale: torch.Tensor | None = None,
                      zero_point: torch.Tensor | None = None) -> torch.Tensor:
    """`fake_quantize` with a straight-through gradient (zero where clipped); qparams from `x` when not given.

    Example:
        >>> x = torch.tensor([0.2, 5.0], requires_grad=True)
        >>> fake_quantize_ste(x, QuantSpec(bits=8), torch.tensor(0.01), torch.tensor(0)).sum().backward()
        >>> x.grad.tolist()
        [1.0, 0.0]
    """
    if scale is None or zero_point is None:
        if spec.kind.value in QPARAMS:
            scale, zero_point = compute_qparams(x.detach(), spec)
        else:
            scale, zero_point = torch.ones(()), torch.zeros((), dtype=torch.int32)
    return _FakeQuantSTE.apply(x, scale, zero_point, spec)


class _TorchAoFakeQuantize(FakeQuantizeBase):
    """The attributes torch.ao's graph passes read from a fake-quantizer and its observer."""

    spec: QuantSpec
    eps = EPS  # the smallest scale we produce (torch checks it against backend limits)
    is_dynamic = False

    @property
    def activation_post_process(self) -> "_TorchAoFakeQuantize":
        """torch.ao looks for the observer here; ours is built in, so it is the module itself."""
        return self

    def calculate_qparams(self) -> tuple[torch.Tensor, torch.Tensor]:  # type: ignore[override]
        """(scale, zero_point) from the last tensor observed."""
        return self.scale, self.zero_point


def _qscheme(spec: QuantSpec) -> torch.qscheme | None:
    """torch's name for the scheme, or None where torch has none (per-group, non-uniform: no int8 kernel)."""
    if spec.kind is not QuantKind.UNIFORM or spec.granularity is Granularity.PER_GROUP:
        return None
    if spec.granularity is Granularity.PER_TENSOR:
        return torch.per_tensor_symmetric if spec.symmetric else torch.per_tensor_affine
    return torch.per_channel_symmetric if spec.symmetric else torch.per_channel_affine


class WeightFakeQuantize(_TorchAoFakeQuantize):
    """Fake-quantizes a weight per `spec` (default 8-bit symmetric per output channel), qparams from the weight.

    Example:
        >>> fq = WeightFakeQuantize(QuantSpec(bits=4, granularity=Granularity.PER_CHANNEL))
        >>> w = torch.randn(3, 5)
        >>> bool((fq(w) - w).abs().max() <= fq.calculate_qparams()[0].max() / 2 + 1e-6)
        True
    """

    def __init__(self, spec: QuantSpec | None = None, *, factory_kwargs: dict | None = None):
        super().__init__()  # factory_kwargs: torch.ao's device hint; buffers move with the module instead
        self.spec = spec if spec is not None else DEFAULT_WEIGHT_SPEC
        self.quant_min, self.quant_max = self.spec.qrange()
        self.dtype = torch.qint8 if self.spec.signed else torch.quint8
        self.qscheme = _qscheme(self.spec)
        self.ch_axis = self.spec.axis
        self.register_buffer("scale", torch.tensor([1.0]))
        self.register_buffer("zero_point", torch.tensor([0], dtype=torch.int32))

    def forward(self, w: torch.Tensor) -> torch.Tensor:
        """Recompute qparams from `w` (weights need no running statistics), then fake-quantize it."""
        if self.observer_enabled[0] == 1 and self.spec.kind.value in QPARAMS:
            self.scale, self.zero_point = compute_qparams(w.detach(), self.spec)
        if self.fake_quant_enabled[0] == 1:
            return fake_quantize_ste(w, self.spec, self.scale, self.zero_point)
        return w

    def extra_repr(self) -> str:
        return f"bits={self.spec.bits}, kind={self.spec.kind.value}, granularity={self.spec.granularity.value}"


class ActivationFakeQuantize(_TorchAoFakeQuantize):
    """Fake-quantizes activations per tensor, asymmetric `bits`, with a running (moving-average min-max) range.

    Args:
        bits: activation bits (8 = uint8).
        reduce_range: use one bit less (x86 fbgemm kernels can saturate with full 8-bit activations on CPUs
            without VNNI; torch's x86 default does the same).
        observer: an observer name from `observers.OBSERVERS`, with `observer_options`.

    Example:
        >>> fq = ActivationFakeQuantize(bits=8)
        >>> x = torch.linspace(0, 2.55, 11)
        >>> y = fq(x)  # range [0, 2.55] -> scale 0.01, zero point 0
        >>> fq.calculate_qparams()[1].item(), bool((y - x).abs().max() <= 0.005)
        (0, True)
    """

    def __init__(self, bits: int = 8, *, reduce_range: bool = False, observer: str = "moving_average",
                 factory_kwargs: dict | None = None, **observer_options: Any):
        super().__init__()  # factory_kwargs: torch.ao's device hint; buffers move with the module instead
        if isinstance(bits, bool) or not isinstance(bits, int) or not 2 <= bits <= 8:
            raise ConfigError(f"activation bits must be in 2..8, got {bits!r}; use 8 for uint8 activations")
        self.spec = QuantSpec(bits=bits - int(reduce_range), symmetric=False)
        self.observer = make_observer(observer, **observer_options)
        self.quant_min, self.quant_max = self.spec.qrange()
        self.dtype = torch.quint8
        self.qscheme = torch.per_tensor_affine
        self.ch_axis = -1
        self.register_buffer("scale", torch.tensor([1.0]))
        self.register_buffer("zero_point", torch.tensor([0], dtype=torch.int32))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Update the running range (when observing), then fake-quantize `x`."""
        if self.observer_enabled[0] == 1:
            self.observer.update(x.detach())
            scale, zp = self.observer.qparams(self.spec)
            self.scale, self.zero_point = scale.reshape(1), zp.reshape(1)
        if self.fake_quant_enabled[0] == 1:
            return fake_quantize_ste(x, self.spec, self.scale, self.zero_point)
        return x

    def extra_repr(self) -> str:
        return f"bits={self.spec.bits}, observer={type(self.observer).__name__}"


def _act(act_bits: int | None) -> nn.Module:
    return nn.Identity() if act_bits is None else ActivationFakeQuantize(act_bits)


class FakeQuantLinear(nn.Linear):
    """`nn.Linear` whose input and weight are fake-quantized (weight per `weight_spec`, input `act_bits` uint8).

    Example:
        >>> m = FakeQuantLinear.from_float(nn.Linear(4, 2))
        >>> m(torch.randn(3, 4)).shape
        torch.Size([3, 2])
    """

    def __init__(self, in_features: int, out_features: int, bias: bool = True, *,
                 weight_spec: QuantSpec | None = None, act_bits: int | None = 8):
        super().__init__(in_features, out_features, bias)
        self.weight_fake_quant = WeightFakeQuantize(weight_spec)
        self.input_fake_quant = _act(act_bits)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(self.input_fake_quant(x), self.weight_fake_quant(self.weight), self.bias)

    @classmethod
    def from_float(cls, mod: nn.Linear, *, weight_spec: QuantSpec | None = None,
                   act_bits: int | None = 8) -> "FakeQuantLinear":
        """A fake-quant copy of `mod` sharing its parameters."""
        new = cls(mod.in_features, mod.out_features, mod.bias is not None, weight_spec=weight_spec,
                  act_bits=act_bits)
        new.weight, new.bias = mod.weight, mod.bias
        return new

    def to_float(self) -> nn.Linear:
        """A plain `nn.Linear` with the (trained) float weights."""
        out = nn.Linear(self.in_features, self.out_features, self.bias is not None)
        out.weight, out.bias = self.weight, self.bias
        return out


class FakeQuantConv2d(nn.Conv2d):
    """`nn.Conv2d` whose input and weight are fake-quantized (weight per `weight_spec`, input `act_bits` uint8).

    Example:
        >>> m = FakeQuantConv2d.from_float(nn.Conv2d(1, 4, 3, padding=1))
        >>> m(torch.randn(2, 1, 8, 8)).shape
        torch.Size([2, 4, 8, 8])
    """

    def __init__(self, *args: Any, weight_spec: QuantSpec | None = None, act_bits: int | None = 8, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.weight_fake_quant = WeightFakeQuantize(weight_spec)
        self.input_fake_quant = _act(act_bits)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._conv_forward(self.input_fake_quant(x), self.weight_fake_quant(self.weight), self.bias)

    @classmethod
    def from_float(cls, mod: nn.Conv2d, *, weight_spec: QuantSpec | None = None,
                   act_bits: int | None = 8) -> "FakeQuantConv2d":
        """A fake-quant copy of `mod` sharing its parameters."""
        new = cls(**_conv_args(mod), weight_spec=weight_spec, act_bits=act_bits)
        new.weight, new.bias = mod.weight, mod.bias
        return new

    def to_float(self) -> nn.Conv2d:
        """A plain `nn.Conv2d` with the (trained) float weights."""
        out = nn.Conv2d(**_conv_args(self))
        out.weight, out.bias = self.weight, self.bias
        return out


def _conv_args(m: nn.Conv2d) -> dict[str, Any]:
    return dict(in_channels=m.in_channels, out_channels=m.out_channels, kernel_size=m.kernel_size, stride=m.stride,
                padding=m.padding, dilation=m.dilation, groups=m.groups, bias=m.bias is not None,
                padding_mode=m.padding_mode)


# float layer type -> its fake-quant counterpart (exact types: a fake-quant layer is never swapped again)
FAKE_QUANT_MODULES: dict[type, type] = {nn.Linear: FakeQuantLinear, nn.Conv2d: FakeQuantConv2d}


def swap_fake_quant_(model: nn.Module, names: list[str], *, weight_spec: QuantSpec | None = None,
                     act_bits: int | None = 8) -> nn.Module:
    """Replace the named Linear/Conv2d layers of `model` by fake-quant ones (in place); returns the model.

    Example:
        >>> from condense.testing import TinyMLP
        >>> type(swap_fake_quant_(TinyMLP(), ["fc1"]).fc1).__name__
        'FakeQuantLinear'
    """
    for name in names:
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name)
        mod = getattr(parent, child)
        cls = FAKE_QUANT_MODULES.get(type(mod))
        if cls is None:
            raise ConfigError(f"cannot fake-quantize {name!r} ({type(mod).__name__}); supported layer types: "
                              f"{', '.join(t.__name__ for t in FAKE_QUANT_MODULES)}")
        setattr(parent, child, cls.from_float(mod, weight_spec=weight_spec, act_bits=act_bits))
    return model
