"""Low-bit matmul kernels a `WeightOnlyLinear` can execute on, in a registry keyed by (bits, kernel name).

Why: dequantizing the packed weight on every call (the "dequantize" kernel) reads the small weight but then
writes and re-reads a float copy, so a 4-bit model decoded slower than fp32. torch ships CPU kernels that read
the low-bit weight directly at batch 1:

    torch-int4  `aten._weight_int4pack_mm_for_cpu` on a weight converted once by
                `aten._convert_weight_to_int4pack_for_cpu`; groupwise scale and zero; 2, 3 and 4 bits (3-bit and
                2-bit integers are 4-bit integers that do not use the top values). Needs group size 32/64/128/256
                and out_features a multiple of 16.
    torch-int8  `aten._weight_int8pack_mm` with one scale per output channel (group_size=-1 only); an
                asymmetric zero point becomes an exact rank-1 correction: y += sum(x) * (128 - z) * s.
    ort-nbits   ONNX Runtime's `MatMulNBits` (com.microsoft) in a one-node session per layer: float32
                activations and w = (q - zp) * scale exactly as condense stores it; 2/3/4-bit integers as 4-bit
                ones, 8-bit as 8-bit; a power-of-two group size >= 16. Optional (needs onnxruntime).
    ort-nbits-a8  the same op with accuracy_level=4, 8-bit weights: ONNX Runtime quantizes each block of
                activations to int8 and multiplies integers (AVX512-VNNI where present). At batch 1 here: a
                2048x2048 stack 3.9x fp32 F.linear (torch-int8 1.8x, float32 MatMulNBits 0.09x), tinygpt-large
                decode 2.1-2.3x fp32 (torch-int8 1.8-2.0x). The int8 activations cost ~0.5% of the output's scale
                (bfloat16 torch kernels: ~0.3%). At 4 bits it was faster per layer too (4.5x vs torch-int4's 4.2x on
                the stack) but decoded tinygpt-large slower (2.1x fp32 vs 2.6-2.9x), so it is not offered there.

The two torch kernels run their fast path on bfloat16 activations only (with float32 activations the same ops measured 4-7x
slower than fp32 F.linear here), so each rounds x, the scales and the output to bfloat16: the integers are kept
exactly (GPTQ's result is what runs), the arithmetic around them is bfloat16. tests/quantize/test_kernels.py
bounds the difference to the dequantized reference.

A kernel builds its own weight layout once from the module's packed integers (`prepare`, from the
`QuantizedWeight` it unpacks to: no re-quantizing), kept beside the packed bytes, which stay what is saved.
`unavailable()` says why a kernel cannot run on this machine (op missing, or it fails on a small smoke test), and
`unsupported(...)` why it cannot take a layer; callers fall back to "dequantize" then, with a warning.
"""
from __future__ import annotations

import functools
from typing import Any, ClassVar

import torch

from condense.errors import ConfigError, first_line
from condense.quantize.weight_only.packing import pack
from condense.quantize.weight_only.rtn import QuantizedWeight, rtn_quantize

DEQUANTIZE = "dequantize"


class WeightKernel:
    """One way to compute y = x Wᵀ (no bias) from a quantized weight. Subclasses set `name` and `bits`."""

    name: ClassVar[str]
    bits: ClassVar[tuple[int, ...]]
    ops: ClassVar[tuple[str, ...]] = ()  # aten ops it needs
    # True when each output column is computed on its own, so the rows of several weights stacked into one state
    # give every layer's output bit for bit (`SharedInputLinears` then runs q/k/v as one call)
    stackable: ClassVar[bool] = False

    def unsupported(self, in_features: int, out_features: int, group_size: int, bits: int) -> str | None:
        """Why this kernel cannot run a layer of that shape (None: it can)."""
        return None if bits in self.bits else f"{self.name} runs {self.bits}-bit weights, not {bits}-bit"

    def prepare(self, qw: QuantizedWeight) -> Any:
        """The kernel's weight state built from the exact integers, scales and zero points."""
        raise NotImplementedError

    def run(self, state: Any, x: torch.Tensor) -> torch.Tensor:
        """(rows, in) float -> (rows, out) float32, columns of x already in stored order."""
        raise NotImplementedError

    def run_linear(self, state: Any, x: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        """(rows, in) float32 -> (rows, out) float32 plus `bias` (float32 or None): exactly `run(...) + bias`;
        a kernel may override it to save an op per call."""
        y = self.run(state, x)
        return y if bias is None else y + bias

    def unavailable(self) -> str | None:
        """Why this kernel cannot run on this machine (None: it can); checked once per process."""
        return _smoke(type(self))


@functools.lru_cache(maxsize=None)
def _smoke(cls: type) -> str | None:
    kernel = cls()
    missing = [op for op in kernel.ops if not hasattr(torch.ops.aten, op)]
    if missing:
        return f"this torch ({torch.__version__}) has no aten.{', aten.'.join(missing)}"
    try:  # the op may exist but not run on this CPU or build: try a small layer
        with torch.inference_mode(False), torch.no_grad():
            bits = kernel.bits[-1]
            group = -1 if kernel.name == "torch-int8" else 32
            qw = rtn_quantize(torch.randn(16, 64), bits=bits, group_size=group)
            kernel.run(kernel.prepare(qw), torch.randn(1, 64))
    except Exception as e:  # noqa: BLE001  (any failure means: not here)
        return f"{kernel.name} failed a smoke test here: {first_line(e, typed=True)}"
    return None


KERNELS: dict[tuple[int, str], WeightKernel] = {}


def register_kernel(cls: type[WeightKernel]) -> type[WeightKernel]:
    """Register `cls` under (bits, cls.name) for each of its bits."""
    for b in cls.bits:
        if (b, cls.name) in KERNELS:
            raise KeyError(f"weight-only kernel {(b, cls.name)} is registered twice")
        KERNELS[(b, cls.name)] = cls()
    return cls


def kernel_names(bits: int) -> list[str]:
    """Names of the kernels registered for `bits`, "dequantize" first.

    Example:
        >>> kernel_names(4)
        ['dequantize', 'ort-nbits', 'torch-int4']
    """
    return sorted((n for b, n in KERNELS if b == bits), key=lambda n: (n != DEQUANTIZE, n))


def get_kernel(bits: int, name: str) -> WeightKernel:
    """The kernel `name` for `bits`-bit weights; an unknown pair raises a ConfigError listing the valid names."""
    try:
        return KERNELS[(bits, name)]
    except KeyError:
        raise ConfigError(f"no weight-only kernel {name!r} for {bits}-bit weights; choose one of "
                          f"{kernel_names(bits) + ['auto']}") from None


def why_not(bits: int, name: str, in_features: int, out_features: int, group_size: int) -> str | None:
    """Why kernel `name` cannot run this layer here (machine first, then shape); None when it can."""
    kernel = get_kernel(bits, name)
    return kernel.unavailable() or kernel.unsupported(in_features, out_features, group_size, bits)


def matmul_nbits_inputs(qw: QuantizedWeight) -> tuple[dict[str, torch.Tensor], dict[str, int]]:
    """ONNX Runtime MatMulNBits' inputs for `qw`, from its exact integers: ({"B", "scales", "zero_points"} as CPU
    tensors, {K, N, bits, block_size} attributes). w = (q - zp) * scale exactly as condense stores it; 2/3-bit
    integers are valid 4-bit ones, 8-bit stay 8-bit; scales become float32 (the op's activation type).
    Used by the one-node `OrtNBits` sessions and by the whole-graph export (`ort_graph`).

    Example:
        >>> arrays, attrs = matmul_nbits_inputs(rtn_quantize(torch.randn(16, 64), bits=4, group_size=32))
        >>> tuple(arrays["B"].shape), attrs["bits"], attrs["block_size"]
        ((16, 2, 16), 4, 32)
    """
    nbits = 8 if qw.bits == 8 else 4  # 2/3-bit integers are valid 4-bit ones
    out, n = qw.q.shape
    blocks = n // qw.group_size
    b = pack(qw.q.cpu(), nbits).view(out, blocks, qw.group_size * nbits // 8)  # row-major blocks: ORT's layout
    per_row = -(-blocks * nbits // 8)  # zero points are packed per row, padded to a whole byte
    z = torch.nn.functional.pad(qw.zeros.cpu(), (0, per_row * 8 // nbits - blocks))  # (out, padded blocks)
    arrays = {"B": b, "scales": qw.scales.detach().cpu().float().reshape(out, blocks),
              "zero_points": pack(z, nbits).view(out, per_row)}  # 2-D, as ORT's own quantizer writes them
    return arrays, {"K": n, "N": out, "bits": nbits, "block_size": qw.group_size}


# -- the kernels --------------------------------------------------------------------------------------------------
@register_kernel
class Dequantize(WeightKernel):
    """Unpack, scale and F.linear in float on every call (always available; the reference)."""

    name = DEQUANTIZE
    bits = (2, 3, 4, 8)

    def unavailable(self) -> str | None:
        return None

    def prepare(self, qw: QuantizedWeight) -> Any:
        return None  # the module's own dequantizing forward runs instead


@register_kernel
class TorchInt4(WeightKernel):
    """`aten._weight_int4pack_mm_for_cpu`: w = (q - 8) * s + zt per group, with zt = (8 - z) * s (bfloat16)."""

    name = "torch-int4"
    bits = (2, 3, 4)
    stackable = True
    ops = ("_weight_int4pack_mm_for_cpu", "_convert_weight_to_int4pack_for_cpu")
    GROUPS: ClassVar[tuple[int, ...]] = (32, 64, 128, 256)

    def unsupported(self, in_features: int, out_features: int, group_size: int, bits: int) -> str | None:
        g = in_features if group_size == -1 else group_size
        if bits not in self.bits:
            return f"torch-int4 runs 2/3/4-bit weights, not {bits}-bit"
        if g not in self.GROUPS:
            return f"torch-int4 needs group_size in {self.GROUPS}, the layer has {g}"
        if out_features % 16:
            return f"torch-int4 needs out_features divisible by 16, the layer has {out_features}"
        return None

    def prepare(self, qw: QuantizedWeight) -> Any:
        # Fewer bits are centred on the kernel's fixed offset 8 (3-bit 0..7 -> 4..11): the same integers
        # q - z, but zt = (8 - z) * s stays small, so its bfloat16 rounding does not swamp the weight.
        shift = 8 - (1 << (qw.bits - 1))
        q = qw.q.to(torch.int32) + shift  # (out, in) in [0, 16)
        packed = torch.ops.aten._convert_weight_to_int4pack_for_cpu(q.contiguous(), 8)
        s = qw.scales.float()  # (out, G)
        zt = (8 - shift - qw.zeros.float()) * s
        sz = torch.stack([s, zt], dim=-1).transpose(0, 1).contiguous().to(torch.bfloat16)  # (G, out, 2)
        return packed, sz, qw.group_size

    def run(self, state: Any, x: torch.Tensor) -> torch.Tensor:
        packed, sz, group = state
        return torch.ops.aten._weight_int4pack_mm_for_cpu(x.to(torch.bfloat16).contiguous(), packed, group,
                                                          sz).float()

    def run_linear(self, state: Any, x: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        packed, sz, group = state
        y = torch.ops.aten._weight_int4pack_mm_for_cpu(x.to(torch.bfloat16).contiguous(), packed, group, sz)
        return y.float() if bias is None else y + bias  # bfloat16 + float32 adds in float32: run() + bias exactly


@register_kernel
class TorchInt8(WeightKernel):
    """`aten._weight_int8pack_mm`: int8 (q - 128) times one scale per output channel, plus the zero-point term."""

    name = "torch-int8"
    bits = (8,)
    stackable = True
    ops = ("_weight_int8pack_mm",)

    def unsupported(self, in_features: int, out_features: int, group_size: int, bits: int) -> str | None:
        if bits != 8:
            return f"torch-int8 runs 8-bit weights, not {bits}-bit"
        if group_size not in (-1, in_features):
            return (f"torch-int8 takes one scale per output channel: quantize with group_size=-1 "
                    f"(the layer has groups of {group_size})")
        return None

    def prepare(self, qw: QuantizedWeight) -> Any:
        w8 = (qw.q.to(torch.int16) - 128).to(torch.int8).contiguous()  # (out, in), exact
        s = qw.scales.float()[:, 0]  # (out,)
        z = qw.zeros.float()[:, 0]
        shift = None if bool((z == 128).all()) else (128 - z) * s  # (out,) float32
        return w8, s.to(torch.bfloat16), shift

    def run(self, state: Any, x: torch.Tensor) -> torch.Tensor:
        w8, s, shift = state
        xb = x.to(torch.bfloat16).contiguous()
        y = torch.ops.aten._weight_int8pack_mm(xb, w8, s).float()  # (rows, out)
        if shift is not None:
            y += xb.float().sum(dim=-1, keepdim=True) * shift
        return y


@register_kernel
class OrtNBits(WeightKernel):
    """ONNX Runtime's MatMulNBits in a one-node session (float32 activations, the exact integers and scales)."""

    name = "ort-nbits"
    bits = (2, 3, 4, 8)
    accuracy_level: ClassVar[int] = 0  # 0: float32 compute; 4: int8 activations (see OrtNBitsA8)

    def unsupported(self, in_features: int, out_features: int, group_size: int, bits: int) -> str | None:
        g = in_features if group_size == -1 else group_size
        if g < 16 or g & (g - 1):
            return f"{self.name} needs a power-of-two group size >= 16, the layer has {g}"
        return None

    def unavailable(self) -> str | None:
        try:
            import onnxruntime  # noqa: F401
        except ImportError:
            return "onnxruntime is not installed (pip install onnxruntime)"
        return _smoke(type(self))

    def prepare(self, qw: QuantizedWeight) -> Any:
        import onnxruntime as ort
        from onnx import TensorProto, helper, numpy_helper

        arrays, attrs = matmul_nbits_inputs(qw)
        n, out = attrs["K"], attrs["N"]
        inits = [numpy_helper.from_array(a.numpy(), name) for name, a in arrays.items()]
        node = helper.make_node("MatMulNBits", ["x", "B", "scales", "zero_points"], ["y"], domain="com.microsoft",
                                **attrs, accuracy_level=self.accuracy_level)
        graph = helper.make_graph([node], "weight_only_linear",
                                  [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["rows", n])],
                                  [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["rows", out])], inits)
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17),
                                                        helper.make_opsetid("com.microsoft", 1)])
        so = ort.SessionOptions()
        so.intra_op_num_threads, so.inter_op_num_threads = torch.get_num_threads(), 1  # fixed at creation
        so.log_severity_level = 3
        return ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])

    def run(self, state: Any, x: torch.Tensor) -> torch.Tensor:
        (y,) = state.run(None, {"x": x.detach().float().contiguous().numpy()})
        return torch.from_numpy(y)


@register_kernel
class OrtNBitsA8(OrtNBits):
    """MatMulNBits with accuracy_level=4 on 8-bit weights: activations quantized to int8 per block, integer dot
    products (see the module docstring for why not at 2/3/4 bits)."""

    name = "ort-nbits-a8"
    bits = (8,)
    accuracy_level = 4
