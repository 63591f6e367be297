"""oneDNN's int8 matmul (`torch.ops.onednn.qlinear_pointwise`, the kernel torch's x86 inductor backend emits for
quantized linears) called directly from eager code: AMX tiles where the CPU has `amx_int8`, VNNI dot products where
it has `avx512_vnni` / `avx_vnni`.

`Int8Matmul` is `y = x @ W^T + b` with W int8 per output channel and x quantized to uint8 with one static scale
and zero point (calibrated ahead of time). oneDNN fuses the bias, an optional GELU, an optional residual add
("sum", in place) and the output cast (float32, bfloat16, or uint8 at the next matmul's input scale) into the
same kernel call, so an FFN runs as two int8 kernels with nothing in between.

The weight is prepacked into oneDNN's blocked layout on first use and repacked whenever the stored weight or
scales change (an artifact loading into the module copies into the buffers in place), so the state dict holds
only plain tensors: int8 weight, float32 scales and bias, the activation scale and zero point, and, with
SmoothQuant, the per-input-channel divisor applied before quantizing.
"""
from __future__ import annotations

import warnings
from functools import lru_cache

import torch
from torch import nn

from condense.quantize.bf16 import cpu_flags
from condense.quantize.static_aids import smooth_scales

INT8_FLAGS = ("amx_int8", "avx512_vnni", "avx_vnni")  # /proc/cpuinfo flags of native int8 dot products on x86


@lru_cache(maxsize=1)
def onednn_int8() -> tuple[bool, str]:
    """(whether oneDNN's int8 matmul runs natively here, why).

    Example:
        >>> onednn_int8()[0] in (True, False)
        True
    """
    if not torch.backends.mkldnn.is_available():
        return False, "this torch build has no oneDNN (torch.backends.mkldnn.is_available() is False)"
    if not hasattr(torch.ops.onednn, "qlinear_pointwise") or not hasattr(torch.ops.onednn, "qlinear_prepack"):
        return False, f"torch {torch.__version__} lacks torch.ops.onednn.qlinear_pointwise"
    flags = cpu_flags()
    if flags is None:
        return False, "/proc/cpuinfo is unreadable: cannot tell whether int8 dot products are native"
    found = [f for f in INT8_FLAGS if f in flags]
    if not found:
        return False, (f"no {'/'.join(INT8_FLAGS)} in /proc/cpuinfo's flags "
                       f"({torch.backends.cpu.get_cpu_capability()}): int8 dot products would be emulated")
    return True, f"CPU flags {', '.join(found)} ({torch.backends.cpu.get_cpu_capability()})"


@lru_cache(maxsize=1)
def _consume_deprecation_warning() -> None:
    """torch deprecates creating quantized tensors and says so once per process; `quantize_per_tensor(...)
    .int_repr()` is still the one fused uint8 quantization op in eager mode (3x faster than the same arithmetic in
    separate ops), so the one warning is raised here, silenced, instead of at a user's first forward."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.quantize_per_tensor(torch.zeros(1), 1.0, 0, torch.quint8)


def uint8_range(lo: float, hi: float) -> tuple[float, int]:
    """(scale, zero point) of asymmetric uint8 covering [lo, hi] (widened to include 0, as int8 kernels need).

    Example:
        >>> uint8_range(-1.0, 3.0)
        (0.01568627450980392, 64)
    """
    lo, hi = min(float(lo), 0.0), max(float(hi), 0.0)
    scale = max((hi - lo) / 255.0, 1e-8)
    return scale, int(min(255, max(0, round(-lo / scale))))


def widen_range(ranges: dict, key: object, x: torch.Tensor) -> None:
    """Widen `ranges[key]`, the per-channel (min, max) of the activations seen so far, by `x` (..., channels).

    Example:
        >>> r = {}
        >>> widen_range(r, "a", torch.tensor([[1.0, -2.0]])); widen_range(r, "a", torch.tensor([[3.0, 0.0]]))
        >>> r["a"]
        (tensor([ 1., -2.]), tensor([3., 0.]))
    """
    x = x.detach().reshape(-1, x.shape[-1]).float()
    lo, hi = x.amin(dim=0), x.amax(dim=0)
    old = ranges.get(key)
    ranges[key] = (lo, hi) if old is None else (torch.minimum(old[0], lo), torch.maximum(old[1], hi))


class Int8Matmul(nn.Module):
    """`y = x @ W^T + b` on oneDNN's int8 kernel; x (M, K) is quantized with a static scale, W per output channel.

    Args:
        weight: float (N, K). bias: float (N,) or None. lo, hi: calibrated range of the (smoothed) input.
        smooth: SmoothQuant's per-input-channel s (K,): W's columns are multiplied by s and x divided by it before
            quantizing, the same product with the activation outliers moved into the per-channel weight scales.
    """

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None, lo: float, hi: float,
                 smooth: torch.Tensor | None = None) -> None:
        super().__init__()
        w = weight.detach().float()
        if smooth is not None:
            w = w * smooth[None, :]
            self.register_buffer("inv_smooth", (1.0 / smooth).float().contiguous())
        else:
            self.inv_smooth = None
        w_scale = (w.abs().amax(dim=1) / 127.0).clamp(min=1e-12)  # (N,)
        self.register_buffer("weight", torch.round(w / w_scale[:, None]).clamp(-127, 127).to(torch.int8))
        self.register_buffer("w_scale", w_scale)
        self.register_buffer("bias", torch.zeros(w.shape[0]) if bias is None else bias.detach().float().clone())
        scale, zp = uint8_range(lo, hi)
        self.register_buffer("x_scale", torch.tensor(scale, dtype=torch.float64))
        self.register_buffer("x_zero_point", torch.tensor(zp, dtype=torch.int64))
        self._cache: tuple | None = None

    @classmethod
    def calibrated(cls, weight: torch.Tensor, bias: torch.Tensor | None, lo: torch.Tensor, hi: torch.Tensor,
                   alpha: float = 0.0) -> "Int8Matmul":
        """From the per-input-channel range (lo, hi) of its calibration inputs, with SmoothQuant's `alpha` (0 = off):
        the input scale then covers the smoothed range."""
        s = smooth_scales(torch.maximum(lo.abs(), hi.abs()), [weight], alpha) if alpha else None
        if s is not None:
            lo, hi = lo / s, hi / s
        return cls(weight, bias, float(lo.min()), float(hi.max()), s)

    def sharing_input(self, weight: torch.Tensor, bias: torch.Tensor | None) -> "Int8Matmul":
        """Another matmul over the same uint8 input as this one (same SmoothQuant divisor, scale and zero point),
        so one quantized input feeds both."""
        smooth = None if self.inv_smooth is None else 1.0 / self.inv_smooth
        other = Int8Matmul(weight, bias, 0.0, 1.0, smooth)
        other.x_scale.copy_(self.x_scale)
        other.x_zero_point.copy_(self.x_zero_point)
        return other

    @property
    def in_features(self) -> int:
        return self.weight.shape[1]

    @property
    def out_features(self) -> int:
        return self.weight.shape[0]

    def _prepared(self) -> tuple:
        """(packed weight, x scale, x zero point, zero weight zero-points, bf16 bias, input multiplier), rebuilt
        when a buffer changed. The input multiplier (K,) is 1 / scale times the SmoothQuant divisor, per channel:
        what a fused producer multiplies by before rounding (`input_multiplier`)."""
        bufs = (self.weight, self.w_scale, self.bias, self.x_scale, self.x_zero_point)
        bufs += () if self.inv_smooth is None else (self.inv_smooth,)
        key = tuple((t._version, t.data_ptr()) for t in bufs)
        if self._cache is None or self._cache[0] != key:
            _consume_deprecation_warning()
            packed = torch.ops.onednn.qlinear_prepack(self.weight, [512, self.in_features])
            zeros = torch.zeros(self.out_features, dtype=torch.int64)
            scale = float(self.x_scale)
            mul = (torch.full((self.in_features,), 1.0 / scale) if self.inv_smooth is None
                   else (self.inv_smooth / scale).float().contiguous())
            self._cache = (key, (packed, scale, int(self.x_zero_point), zeros, self.bias.to(torch.bfloat16), mul))
        return self._cache[1]

    def input_multiplier(self) -> tuple[torch.Tensor, int]:
        """(per-channel multiplier (K,), zero point): this matmul's uint8 input is round(x * multiplier) + zero
        point, clamped to 0..255, for a producer that quantizes in its own kernel."""
        prepared = self._prepared()
        return prepared[5], prepared[2]

    @property
    def output_range(self) -> tuple[float, int]:
        """(scale, zero point) this matmul quantizes its input with: the uint8 output a producer may hand it."""
        return float(self.x_scale), int(self.x_zero_point)

    def quantize(self, x: torch.Tensor) -> torch.Tensor:
        """x (M, K) float -> uint8 at this matmul's input scale (after the SmoothQuant divisor, if any)."""
        _, scale, zp, _, _, _ = self._prepared()
        return self._quantize(x, scale, zp)

    def _quantize(self, x: torch.Tensor, scale: float, zp: int) -> torch.Tensor:
        x = x.float() if self.inv_smooth is None else x.float() * self.inv_smooth
        q = torch.quantize_per_tensor(x, scale, zp, torch.quint8)
        # its bytes as a plain uint8 tensor, without int_repr()'s copy
        return torch.empty(0, dtype=torch.uint8).set_(q.untyped_storage(), q.storage_offset(), q.shape, q.stride())

    def forward(self, x: torch.Tensor, *, out_dtype: torch.dtype = torch.float32, gelu: bool = False,
                out_range: tuple[float, int] = (1.0, 0), accumulate: torch.Tensor | None = None,
                quantized: bool = False) -> torch.Tensor:
        """x (M, K) float (or uint8 at `output_range` with `quantized=True`) -> (M, N) in `out_dtype`.

        gelu: exact GELU after the bias. out_range: (scale, zero point) of a uint8 output. accumulate: a float32
        (M, N) tensor the result is added to in place (and returned): a residual connection in the same kernel.
        """
        packed, scale, zp, wzp, bias_bf16, _ = self._prepared()
        xq = x if quantized else self._quantize(x, scale, zp)
        if accumulate is not None:
            return torch.ops.onednn.qlinear_pointwise.binary(
                xq, scale, zp, packed, self.w_scale, wzp, accumulate, self.bias, 1.0, 0, torch.float32, 1.0, 0,
                "sum", 1.0, "gelu" if gelu else "none", [None], "none" if gelu else "")
        bias = bias_bf16 if out_dtype is torch.bfloat16 else self.bias
        return torch.ops.onednn.qlinear_pointwise(xq, scale, zp, packed, self.w_scale, wzp, bias, out_range[0],
                                                  out_range[1], out_dtype, "gelu" if gelu else "none", [None],
                                                  "none" if gelu else "")

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, "
                f"smoothed={self.inv_smooth is not None}")


class Int8Linear(nn.Module):
    """A drop-in for `nn.Linear` (any leading dims, float in and out) computing on `Int8Matmul`."""

    def __init__(self, lin: nn.Linear, lo: torch.Tensor, hi: torch.Tensor, alpha: float = 0.0) -> None:
        """lo, hi: per-input-channel range of the calibration inputs; alpha: SmoothQuant's (0 = off)."""
        super().__init__()
        self.mm = Int8Matmul.calibrated(lin.weight, lin.bias, lo, hi, alpha)

    @property
    def in_features(self) -> int:
        return self.mm.in_features

    @property
    def out_features(self) -> int:
        return self.mm.out_features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        lead = x.shape[:-1]
        y = self.mm(x.reshape(-1, x.shape[-1]))
        return y.reshape(*lead, y.shape[-1]).to(x.dtype if x.is_floating_point() else torch.float32)
