"""Dynamic int8 post-training quantization on torch's x86 (fbgemm) int8 kernels.

Weights are stored int8 (per output channel by default); activations are quantized on the fly per batch, so no
calibration data is needed. Each `nn.Linear` becomes `torch.ao.nn.quantized.dynamic.Linear`, whose matmul runs
in the int8 GEMM kernel: a real kernel path, not a simulation. Linear-like layers (Hugging Face GPT-2's `Conv1D`,
see `condense.core.linear_like`) are turned into `nn.Linear` first (weight transposed), so they are quantized too.

Tied weights: a selected layer sharing its weight with another module (GPT-2's lm_head and token embedding) is
quantized like any other, because the output projection is often the largest matmul of a language model; its int8
copy unties it (the embedding stays float), which a warning says and the lineage records under "tied". Exclude it
(e.g. `exclude=("lm_head",)`) to keep one shared float matrix.
"""
from __future__ import annotations

import warnings
from typing import ClassVar

import torch
from torch import nn
from torch.ao.nn.quantized import dynamic as nnqd

from condense.core.artifact import CODECS, TensorCodec
from condense.core.config import check_patterns, config
from condense.core.linear_like import linear_like_types, linearize_, prepare_linears_
from condense.core.transforms import TransformContext, register_transform
from condense.errors import ConfigError
from condense.measurement.counts import PARAM_VIEWS
from condense.measurement.macs import MAC_COUNTERS
from condense.core.select import select_modules


@config
class DynamicInt8Config:
    """Dynamic int8 quantization of `nn.Linear` and linear-like layers (GPT-2's Conv1D).

    Args:
        per_channel: one scale per output channel (more accurate) instead of one per tensor.
        include: module-name patterns to quantize (fnmatch, e.g. "layers.*.ffn_*").
        exclude: module-name patterns to keep in float.

    Example:
        >>> DynamicInt8Config(exclude=("classifier",)).to_dict()["exclude"]
        ['classifier']
    """

    LAYER_TYPES: ClassVar[tuple[type, ...]] = (nn.Linear,)  # what it quantizes (not a field), with linear-like ones

    per_channel: bool = True
    include: tuple[str, ...] = ("*",)
    exclude: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        check_patterns(self, example="('layers.*',)")


def _quantize_layers(model: nn.Module, names: list[str], per_channel: bool) -> nn.Module:
    qconfig = (torch.ao.quantization.per_channel_dynamic_qconfig if per_channel
               else torch.ao.quantization.default_dynamic_qconfig)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.ao warns that it is deprecated in favour of torchao
        return torch.ao.quantization.quantize_dynamic(model, {n: qconfig for n in names}, dtype=torch.qint8,
                                                      inplace=True)


def quantize_dynamic_int8(model: nn.Module, cfg: DynamicInt8Config, ctx: TransformContext) -> nn.Module:
    """Swap the selected Linears (and linear-like layers, converted first) for int8 dynamic ones (in place)."""
    names = select_modules(model, cfg.LAYER_TYPES + linear_like_types(), cfg.include, cfg.exclude,
                           what="DynamicInt8Config")
    if any(p.device.type != "cpu" for p in model.parameters()):
        raise ConfigError("DynamicInt8Config runs on CPU int8 kernels; move the model to CPU first (model.cpu())")
    prepared = prepare_linears_(model, names, "DynamicInt8Config")
    model = _quantize_layers(model, names, cfg.per_channel)
    ctx.record(layers=names, **prepared)
    return model


def _replay(model: nn.Module, cfg: DynamicInt8Config, details: dict) -> nn.Module:
    linearize_(model, list(details["layers"]))
    return _quantize_layers(model, list(details["layers"]), cfg.per_channel)


class DynamicLinearCodec(TensorCodec):
    """int8 weights + scales + zero points + float bias, exactly as the packed kernel holds them."""

    def export(self, m: nn.Module) -> dict[str, torch.Tensor]:
        w, b = m._weight_bias()
        out = {"weight.int8": w.int_repr()}
        if w.qscheme() in (torch.per_channel_affine, torch.per_channel_symmetric):
            out["weight.scales"] = w.q_per_channel_scales().to(torch.float64)
            out["weight.zero_points"] = w.q_per_channel_zero_points().to(torch.int64)
            out["weight.axis"] = torch.tensor(w.q_per_channel_axis())
        else:
            out["weight.scale"] = torch.tensor(w.q_scale(), dtype=torch.float64)
            out["weight.zero_point"] = torch.tensor(w.q_zero_point(), dtype=torch.int64)
        if b is not None:
            out["bias"] = b.detach()
        return out

    def load(self, m: nn.Module, t: dict[str, torch.Tensor]) -> None:
        q = t["weight.int8"]
        if "weight.scales" in t:
            w = torch._make_per_channel_quantized_tensor(q, t["weight.scales"], t["weight.zero_points"],
                                                         int(t["weight.axis"]))
        else:
            w = torch._make_per_tensor_quantized_tensor(q, float(t["weight.scale"]), int(t["weight.zero_point"]))
        m.set_weight_bias(w, t.get("bias"))


CODECS.register(nnqd.Linear)(DynamicLinearCodec())
PARAM_VIEWS.register(nnqd.Linear)(lambda m: dict(zip(("weight", "bias"), m._weight_bias())))
MAC_COUNTERS.register(nnqd.Linear)(
    lambda m, inp, out: (inp[0].numel() // m.in_features) * m.in_features * m.out_features)


# -- registered transforms ----------------------------------------------------------------------------------------
register_transform(DynamicInt8Config, family="quantize", name="dynamic", replay=_replay, search=True)(quantize_dynamic_int8)
