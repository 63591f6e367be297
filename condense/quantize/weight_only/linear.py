"""`WeightOnlyLinear`: a Linear whose weight is stored packed (2/3/4/8 bits), run on a low-bit kernel or dequantized.

Why packed: the packed bytes are what is saved, so a 4-bit model really is ~8x smaller on disk. How it runs is
the module's `kernel` (see `kernels`): "dequantize" (default) unpacks, applies the per-group scales and zero
points and calls `F.linear` on every call (no weight cache; slow on CPU); "torch-int4"/"torch-int8" (torch's
low-bit CPU matmuls) and "ort-nbits" (ONNX Runtime's MatMulNBits) run on a layout they build once from the packed
integers (kept beside them, not saved).
`WeightOnlyConfig(kernel="auto")` measures which is fastest here. `SharedInputLinears` runs layers that read one
input (attention's q/k/v) as one stacked matmul on kernels where that is bit-identical.

Stored tensors (exactly what the artifact holds, see `WeightOnlyLinearCodec`):
    qweight  uint8 (ceil(out·in·bits/8),)   weight integers, row-major (out, in), packed (see `packing`)
    scales   fp16/fp32 (out, groups)       one scale per row and group of `group_size` input columns
    qzeros   uint8 (ceil(out·groups·bits/8),)  zero points, packed like qweight
    bias     float (out,)                  if the Linear had one
    perm     int32 (in,)                   only for GPTQ act-order: stored column j is input column perm[j]
    input_scale float32 (in,)              only for AWQ layers whose scale could not be folded into the layer
                                           before them: the input is multiplied by it first (x * 1/s)
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.modules import module as _module_hooks

from condense.core.artifact import CODECS, TensorCodec
from condense.errors import ArtifactError
from condense.measurement.counts import PARAM_VIEWS
from condense.measurement.macs import MAC_COUNTERS
from condense.quantize.weight_only.kernels import DEQUANTIZE, get_kernel, why_not
from condense.quantize.weight_only.packing import pack, packed_nbytes, unpack
from condense.quantize.weight_only.rtn import QuantizedWeight, effective_group_size


class WeightOnlyLinear(nn.Module):
    """y = x Wᵀ + b with W held as packed low-bit integers plus per-group scales and zero points.

    Build one with `from_quantized` (or empty, then fill it from an artifact).

    Example:
        >>> from condense.quantize.weight_only.rtn import rtn_quantize
        >>> lin = nn.Linear(64, 8)
        >>> q = WeightOnlyLinear.from_quantized(rtn_quantize(lin.weight, bits=4, group_size=32), lin.bias)
        >>> q.qweight.numel(), q(torch.zeros(2, 64)).shape   # 8 * 64 / 2 bytes
        (256, torch.Size([2, 8]))
    """

    def __init__(self, in_features: int, out_features: int, *, bits: int, group_size: int, bias: bool = True,
                 act_order: bool = False, input_scale: bool = False, scale_dtype: torch.dtype = torch.float16,
                 device: torch.device | str | None = None):
        super().__init__()
        self.in_features, self.out_features, self.bits = in_features, out_features, bits
        self.group_size = effective_group_size(group_size, in_features)
        groups = in_features // self.group_size
        self.register_buffer("qweight", torch.zeros(packed_nbytes(out_features * in_features, bits),
                                                    dtype=torch.uint8, device=device))
        self.register_buffer("scales", torch.ones(out_features, groups, dtype=scale_dtype, device=device))
        self.register_buffer("qzeros", torch.zeros(packed_nbytes(out_features * groups, bits), dtype=torch.uint8,
                                                   device=device))
        self.bias = nn.Parameter(torch.zeros(out_features, device=device), requires_grad=False) if bias else None
        self.register_buffer("perm", torch.arange(in_features, dtype=torch.int32, device=device)
                             if act_order else None)
        self.register_buffer("input_scale", torch.ones(in_features, device=device) if input_scale else None)
        self.kernel = DEQUANTIZE  # which registered kernel forward runs on (see `kernels`)
        self._kernel_state = None  # that kernel's weight layout, built from the packed bytes on first use
        self._epoch = 0  # counts resets of that layout (new kernel, loaded tensors): stacked states follow it

    def set_kernel(self, name: str) -> str | None:
        """Run on kernel `name` from now on; returns why not (and keeps "dequantize") when it cannot here."""
        reason = None if name == DEQUANTIZE else \
            why_not(self.bits, name, self.in_features, self.out_features, self.group_size)
        if reason is None and name != DEQUANTIZE and self.qweight.device.type != "cpu":
            reason = f"{name} is a CPU kernel; the layer is on {self.qweight.device}"
        self.kernel = DEQUANTIZE if reason else name
        self._kernel_state = None
        self._epoch = self.__dict__.get("_epoch", 0) + 1
        return reason

    def __getstate__(self) -> dict:
        """Copies and pickles leave the kernel's layout behind (an ONNX Runtime session cannot be copied); it is
        rebuilt from the packed bytes on first use."""
        state = self.__dict__.copy()
        state["_kernel_state"] = None
        return state

    @classmethod
    def from_quantized(cls, qw: QuantizedWeight, bias: torch.Tensor | None = None, *,
                       input_scale: torch.Tensor | None = None) -> "WeightOnlyLinear":
        """A module holding `qw` packed (and a copy of `bias`; `input_scale` (in,) multiplies the input first)."""
        out, n = qw.q.shape
        m = cls(n, out, bits=qw.bits, group_size=qw.group_size, bias=bias is not None,
                act_order=qw.perm is not None, input_scale=input_scale is not None, scale_dtype=qw.scales.dtype,
                device=qw.q.device)
        if input_scale is not None:
            m.input_scale.copy_(input_scale)
        m.qweight.copy_(pack(qw.q, qw.bits))
        m.scales.copy_(qw.scales)
        m.qzeros.copy_(pack(qw.zeros, qw.bits))
        if bias is not None:
            m.bias.data.copy_(bias.detach())
        if qw.perm is not None:
            m.perm.copy_(qw.perm)
        return m

    @property
    def groups(self) -> int:
        """Groups per row."""
        return self.in_features // self.group_size

    def quantized(self) -> QuantizedWeight:
        """The unpacked integers, scales and zero points (columns in stored order)."""
        out, n, G = self.out_features, self.in_features, self.groups
        return QuantizedWeight(q=unpack(self.qweight, self.bits, out * n).view(out, n), scales=self.scales,
                               zeros=unpack(self.qzeros, self.bits, out * G).view(out, G), bits=self.bits,
                               group_size=self.group_size, perm=None if self.perm is None else self.perm.long())

    def _stored_weight(self) -> torch.Tensor:
        """(out, in) float32 weight with columns in stored order (perm order under act-order)."""
        out, G = self.out_features, self.groups
        w = unpack(self.qweight, self.bits, out * self.in_features, dtype=torch.float32)
        z = unpack(self.qzeros, self.bits, out * G, dtype=torch.float32).view(out, G, 1)
        s = self.scales.view(out, G, 1).float()
        return w.view(out, G, self.group_size).sub_(z).mul_(s).view(out, self.in_features)  # (out, in)

    def dequantized_weight(self) -> torch.Tensor:
        """The float32 (out, in) weight this module computes with, in the original column order (times the
        input scale, if any)."""
        w = self._stored_weight()
        if self.perm is not None:
            full = torch.empty_like(w)
            full[:, self.perm.long()] = w
            w = full
        return w if self.input_scale is None else w * self.input_scale.float()

    def kernel_state(self) -> object:
        """The current kernel's weight layout (built from the packed integers the first time)."""
        if self._kernel_state is None:
            with torch.inference_mode(False), torch.no_grad():  # plain tensors, usable outside inference_mode
                self._kernel_state = get_kernel(self.bits, self.kernel).prepare(self.quantized())
        return self._kernel_state

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # buffers and the bias read from the module's dicts: nn.Module's attribute lookup of them costs about a
        # microsecond each, several per call, on a path that runs 50 times per decoded token
        buffers = self._buffers
        input_scale, perm, bias = buffers["input_scale"], buffers["perm"], _bias(self)
        if input_scale is not None:
            x = x * input_scale.to(x.dtype)  # (..., in): AWQ's 1/s where no earlier layer could take it
        if perm is not None:
            x = x.index_select(-1, perm)  # (..., in) in stored column order
        if self.kernel != DEQUANTIZE and x.device.type == "cpu":
            kernel, state = get_kernel(self.bits, self.kernel), self.kernel_state()
            x2 = x.reshape(-1, self.in_features)  # (rows, in)
            if x.dtype == torch.float32 and (bias is None or bias.dtype == torch.float32):
                y = kernel.run_linear(state, x2, bias)  # the bias added in the kernel's call: one op fewer
                return y if x.dim() == 2 else y.view(*x.shape[:-1], self.out_features)  # (..., out)
            b = None if bias is None else bias.to(x.dtype)
            y = kernel.run(state, x2).view(*x.shape[:-1], self.out_features).to(x.dtype)  # (..., out)
            return y if b is None else y + b
        b = None if bias is None else bias.to(x.dtype)
        w = self._stored_weight()  # (out, in)
        return F.linear(x, w.to(x.dtype), b)  # (..., out)

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, bits={self.bits}, "
                f"group_size={self.group_size}, bias={self.bias is not None}, act_order={self.perm is not None}"
                + ("" if self.input_scale is None else ", input_scale=True")
                + ("" if self.kernel == DEQUANTIZE else f", kernel={self.kernel}"))


def _bias(m: nn.Module) -> torch.Tensor | None:
    """`m.bias` without nn.Module's slow attribute lookup (a Parameter, or None/a tensor set as a plain attribute)."""
    params = m._parameters
    return params["bias"] if "bias" in params else m.__dict__.get("bias")


def _layer_key(m: nn.Module) -> tuple:
    """What a stacked state depends on: the kernel name, the layer's layout resets (set_kernel, loading) and its
    tensors' identities (`.to()` replaces them), read from the module's dicts (nn.Module's attribute lookup of
    buffers is slow on this path)."""
    if type(m) is not WeightOnlyLinear:
        return (None,)
    b = m._buffers
    return (m.kernel, m.__dict__.get("_epoch", 0), id(b["qweight"]), id(b["scales"]), id(b["qzeros"]), id(_bias(m)))


class SharedInputLinears:
    """Runs Linears that read the same input (attention's q/k/v) and returns their outputs, as one low-bit matmul
    where that gives the same bits.

    Why: at batch 1 a 512x512 4-bit matmul takes about as long as the dispatch, dtype casts and module call around
    it, so three calls cost nearly three times one call on the stacked rows. When every layer is a
    `WeightOnlyLinear` on the same `stackable` kernel (each output column its own dot product) with equal bits,
    group size and input width, no act-order permutation or input scale, all or none with a bias, no hooks, a
    float32 CPU input and no tracing, their integers, scales and zero points are stacked into one kernel state
    (built once from the packed bytes, rebuilt whenever a layer's own layout would be, after `set_kernel` or
    loading, and when its tensors are replaced; never saved: the artifact keeps the separate layers) and the output is split: each layer's output is
    bit for bit what its own forward gives (tests/quantize/test_shared_input.py). Otherwise the layers run one by
    one. Copies start without the stacked state.

    Example:
        >>> lins = [nn.Linear(8, 4), nn.Linear(8, 2)]
        >>> [tuple(y.shape) for y in SharedInputLinears()(lins, torch.zeros(3, 8))]
        [(3, 4), (3, 2)]
    """

    def __init__(self) -> None:
        self._key: tuple = ()
        # while stacked, the tensors the key names by id, held so that no other tensor can take their ids (a
        # mistaken match without a stacked state only runs the layers one by one)
        self._held: tuple = ()
        self._run = None  # (kernel, state, bias, sizes), or None when these layers cannot run stacked

    def __getstate__(self) -> dict:
        return {"stacked": None}

    def __setstate__(self, state: dict) -> None:
        self.__init__()

    def __call__(self, layers: Sequence[nn.Module], x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """Each layer's output for input `x` (..., in)."""
        if (type(layers[0]) is not WeightOnlyLinear or x.dtype != torch.float32 or x.device.type != "cpu"
                or _module_hooks._global_forward_hooks
                or _module_hooks._global_forward_pre_hooks or torch.jit.is_tracing()
                or torch.compiler.is_compiling() or any(m._forward_hooks or m._forward_pre_hooks for m in layers)):
            return tuple(m(x) for m in layers)
        key = tuple(_layer_key(m) for m in layers)
        if key != self._key:
            self._run, self._key = self._stack(layers), key
            self._held = () if self._run is None else \
                tuple(t for m in layers for t in (*m._buffers.values(), _bias(m)))
        if self._run is None:
            return tuple(m(x) for m in layers)
        kernel, state, bias, sizes = self._run
        y = kernel.run_linear(state, x.reshape(-1, x.shape[-1]), bias)  # (rows, sum of outs)
        if x.dim() != 2:
            y = y.view(*x.shape[:-1], y.shape[-1])
        return y.split(sizes, dim=-1)

    @staticmethod
    def _stack(layers: Sequence[nn.Module]) -> tuple | None:
        first = layers[0]
        if len(layers) < 2 or any(type(m) is not WeightOnlyLinear for m in layers):
            return None
        same = (first.kernel, first.bits, first.group_size, first.in_features, first.bias is None)
        if any((m.kernel, m.bits, m.group_size, m.in_features, m.bias is None) != same or m.perm is not None
               or m.input_scale is not None or (m.bias is not None and m.bias.dtype != torch.float32)
               for m in layers) or first.kernel == DEQUANTIZE:
            return None
        kernel = get_kernel(first.bits, first.kernel)
        if not kernel.stackable:
            return None
        qws = [m.quantized() for m in layers]
        with torch.inference_mode(False), torch.no_grad():  # plain tensors, usable outside inference_mode
            state = kernel.prepare(QuantizedWeight(
                q=torch.cat([q.q for q in qws]), scales=torch.cat([q.scales for q in qws]),
                zeros=torch.cat([q.zeros for q in qws]), bits=first.bits, group_size=first.group_size))
            bias = None if first.bias is None else torch.cat([m.bias.detach() for m in layers])
        return kernel, state, bias, [m.out_features for m in layers]


class WeightOnlyLinearCodec(TensorCodec):
    """Saves exactly the packed tensors (qweight, scales, qzeros, bias, perm) and checks shapes on load."""

    def export(self, m: WeightOnlyLinear) -> dict[str, torch.Tensor]:
        out = {"qweight": m.qweight, "scales": m.scales, "qzeros": m.qzeros}
        if m.bias is not None:
            out["bias"] = m.bias.detach()
        if m.perm is not None:
            out["perm"] = m.perm
        if m.input_scale is not None:
            out["input_scale"] = m.input_scale
        return out

    def load(self, m: WeightOnlyLinear, t: dict[str, torch.Tensor]) -> None:
        want = self.export(m)
        if set(t) != set(want):
            raise ArtifactError(f"WeightOnlyLinear expects tensors {sorted(want)} but the artifact has {sorted(t)}; "
                                "load it with the task (or model) that produced it")
        for k, target in want.items():
            if tuple(t[k].shape) != tuple(target.shape) or t[k].dtype != target.dtype:
                raise ArtifactError(f"WeightOnlyLinear tensor {k!r} is {t[k].dtype} {tuple(t[k].shape)} in the "
                                    f"artifact but {target.dtype} {tuple(target.shape)} in the model; the artifact "
                                    "was made with other bits/group size: load it with the lineage it recorded")
            with torch.no_grad():
                target.copy_(t[k])
        m._kernel_state = None  # rebuilt from the loaded bytes on the next forward
        m._epoch = m.__dict__.get("_epoch", 0) + 1


CODECS.register(WeightOnlyLinear)(WeightOnlyLinearCodec())
PARAM_VIEWS.register(WeightOnlyLinear)(lambda m: {"weight": m.dequantized_weight(), "bias": m.bias})
# On "dequantize" forward ends in a plain F.linear, which FlopCounterMode already counts as rows x in x out MACs;
# `count_macs` adds registered counts on top of the aten count, so the counter adds MACs only for a low-bit kernel
# (an op FlopCounterMode does not know), never twice.
MAC_COUNTERS.register(WeightOnlyLinear)(
    lambda m, inp, out: 0 if m.kernel == DEQUANTIZE or inp[0].device.type != "cpu"
    else inp[0].numel() // m.in_features * m.in_features * m.out_features)
