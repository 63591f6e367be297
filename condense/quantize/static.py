"""Static int8 post-training quantization on torch's x86 int8 kernels (torch.ao FX graph mode).

Activations are quantized with scales fixed ahead of time from calibration batches, so every conv/linear runs
int8 in and int8 out and consecutive layers never leave int8. Why FX (`prepare_fx`/`convert_fx`) rather than
eager mode: FX traces the model's own `forward`, inserts the quantize/dequantize steps and fuses conv-bn-relu by
itself, so a model needs no `QuantStub` edits, hand-written fusion lists or `FloatFunctional` rewrites. The cost:
the model must be traceable by `torch.fx`. Models it cannot trace (Hugging Face models: data-dependent control
flow, keyword inputs, `ModelOutput`s) and dict batches go to ONNX Runtime's static quantization instead
(condense/quantize/static_ort.py, which says why that route and not torch's PT2E); lineage records `path`
("fx" or "onnxruntime") so loading rebuilds the same one.

Saving: quantized modules keep packed weights and python-float scales, so `CODECS` below turn them into plain
tensors; FX's `*_scale_*`/`*_zero_point_*` attributes are ordinary buffers and are saved as they are. Loading
replays prepare/convert on the task's skeleton (no calibration data needed) and then overwrites every scale.
"""
from __future__ import annotations

import enum
import warnings
from typing import Any, ClassVar

import torch
from torch import nn

from condense.core import lineage
from condense.core.artifact import CODECS, TensorCodec
from condense.core.config import check_float, check_int, check_patterns, check_positive_int, config, show
from condense.core.task import batch_tensors
from condense.core.transforms import TransformContext, register_transform
from condense.errors import CondenseError, ConfigError
from condense.measurement.counts import PARAM_VIEWS
from condense.measurement.macs import MAC_COUNTERS
from condense.quantize.dynamic import DynamicLinearCodec
from condense.quantize.static_ort import quantize_static_ort, replay_static_ort
from condense.core.select import select_modules


class _FxTraceError(CondenseError):
    """torch.fx could not trace the model (the ONNX Runtime path is tried next)."""


_LAYERS = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)


class Observer(str, enum.Enum):
    """How calibration turns observed activations into a scale: range (minmax), histogram error, or EMA range."""

    MINMAX = "minmax"
    HISTOGRAM = "histogram"
    MOVING_AVERAGE = "moving_average"


@config
class StaticInt8Config:
    """Static int8 quantization of conv/linear layers (with fused BatchNorm/ReLU) from calibration batches.

    Args:
        observer: "histogram" (torch's x86 default, minimises quantization error), "minmax" or "moving_average".
        per_channel: one weight scale per output channel (more accurate) instead of one per tensor.
        reduce_range: 7-bit activations, torch's x86 default (avoids int16 overflow on CPUs without VNNI).
        calibration_batches: how many of the task's calibration batches to observe.
        include: module-name patterns to quantize (fnmatch); exclude: patterns to keep in float.
        smooth_quant: SmoothQuant's alpha (0.5 is the paper's and NNCF's choice for encoders; 0 = off): each
            Linear's input outliers move into its per-channel-quantized weight (condense/quantize/static_aids.py).
        bias_correction: subtract the output-mean shift that int8 weights cause (measured on the calibration
            batches) from each Linear's bias.
        float_layers: keep in float the this many Linears whose simulated int8 output error on the calibration
            batches is largest.
        The three aids run on the ONNX Runtime path (any of them set sends a model there); text models (batches of
        strings, e.g. minilm) always take it.

    Example:
        >>> StaticInt8Config(observer="minmax").to_dict()["observer"]
        'minmax'
    """

    LAYER_TYPES: ClassVar[tuple[type, ...]] = _LAYERS  # what it quantizes (not a field)

    observer: Observer = Observer.HISTOGRAM
    per_channel: bool = True
    reduce_range: bool = True
    calibration_batches: int = 8
    include: tuple[str, ...] = ("*",)
    exclude: tuple[str, ...] = ()
    smooth_quant: float = 0.0
    bias_correction: bool = False
    float_layers: int = 0

    def __post_init__(self) -> None:
        check_float(self, "smooth_quant", lo=0, hi=1, hi_open=True, example=0.5)
        check_int(self, "float_layers", lo=0, hi=1_000_000, example=4)
        try:
            object.__setattr__(self, "observer", Observer(self.observer))
        except (ValueError, TypeError):
            raise ConfigError(f"StaticInt8Config.observer must be one of {[o.value for o in Observer]}, got "
                              f"{show(self.observer)}; 'histogram' is torch's x86 default") from None
        check_positive_int(self, "calibration_batches", example=8)
        check_patterns(self, example="('features.*',)")


def _activation_observer(kind: Observer, reduce_range: bool) -> Any:
    from torch.ao.quantization import observer as obs

    cls = {Observer.MINMAX: obs.MinMaxObserver, Observer.HISTOGRAM: obs.HistogramObserver,
           Observer.MOVING_AVERAGE: obs.MovingAverageMinMaxObserver}[kind]
    return cls.with_args(dtype=torch.quint8, qscheme=torch.per_tensor_affine, reduce_range=reduce_range)


def _qconfig_mapping(cfg: StaticInt8Config, activation: Any, float_names: list[str]) -> Any:
    """torch's x86 mapping with our activation observer everywhere except ops with fixed or reused qparams."""
    from torch.ao.quantization import QConfig, QConfigMapping, get_default_qconfig_mapping
    from torch.ao.quantization import observer as obs

    default = get_default_qconfig_mapping("x86")
    weight = obs.default_per_channel_weight_observer if cfg.per_channel else obs.default_weight_observer
    mapping = QConfigMapping().set_global(QConfig(activation=activation, weight=weight))
    for obj, qc in default.object_type_qconfigs.items():
        if qc is None or isinstance(qc.activation(), (obs.FixedQParamsObserver, obs.ReuseInputObserver)):
            mapping.set_object_type(obj, qc)  # fixed-range ops (sigmoid, softmax, ...) and shape ops keep theirs
        else:  # e.g. ConvTranspose (per-tensor weights only), LayerNorm (no weight observer)
            keep_weight = qc.weight is not default.global_qconfig.weight
            mapping.set_object_type(obj, QConfig(activation=activation, weight=qc.weight if keep_weight else weight))
    for name in float_names:
        mapping.set_module_name(name, None)
    return mapping


def _convert(model: nn.Module, cfg: StaticInt8Config, activation: Any, float_names: list[str],
             example: tuple[torch.Tensor, ...], calibrate: Any = None) -> nn.Module:
    from torch.ao.quantization.quantize_fx import convert_fx, prepare_fx

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.ao warns that it is deprecated in favour of torchao
        try:
            prepared = prepare_fx(model, _qconfig_mapping(cfg, activation, float_names), example_inputs=example)
        except Exception as e:  # torch.fx raises several types (TraceError, TypeError, ...) for untraceable code
            raise _FxTraceError(f"StaticInt8Config could not trace {type(model).__name__} with torch.fx ({e}); "
                                "models with data-dependent control flow need DynamicInt8Config or "
                                "OrtInt8Config instead") from None
        if calibrate is not None:
            calibrate(prepared)
        return convert_fx(prepared)


def _float_layers(model: nn.Module) -> list[str]:
    """Leaf modules that still hold float weights (no int8 kernel was used for them)."""
    out = []
    for name, m in model.named_modules():
        if name and not list(m.children()) and any(p.is_floating_point() for p in m.parameters(recurse=False)):
            if not type(m).__module__.startswith("torch.ao.nn.quantized"):
                out.append(name)
    return out


def quantize_static_int8(model: nn.Module, cfg: StaticInt8Config, ctx: TransformContext) -> nn.Module:
    """Fuse, calibrate and convert `model` to int8 conv/linear kernels; returns a new (FX) module."""
    if any(p.device.type != "cpu" for p in model.parameters()):
        raise ConfigError("StaticInt8Config runs on CPU int8 kernels; move the model to CPU first (model.cpu())")
    names = select_modules(model, cfg.LAYER_TYPES, cfg.include, cfg.exclude, what="StaticInt8Config")
    kept_float = [n for n, m in model.named_modules() if isinstance(m, _LAYERS) and n and n not in names]
    batches = ctx.calibration_batches(cfg.calibration_batches, what="StaticInt8Config")
    fx_error = "dict batches (keyword inputs) are not traced by torch.fx"
    was_training = model.training
    if cfg.smooth_quant or cfg.bias_correction or cfg.float_layers:
        fx_error = "the accuracy aids (smooth_quant, bias_correction, float_layers) run on the ONNX Runtime path"
    elif _is_text(batches[0]) and hasattr(model, "tokenize"):
        fx_error = "text batches are tokenized by the model's export adapter on the ONNX Runtime path"
    elif not isinstance(batches[0], dict):
        example = batch_tensors(batches[0], "StaticInt8Config traces the model on tensor batches, but the "
                                "calibration batches are {type}; text batches need a model with `tokenize` "
                                "(e.g. minilm's encoder, exported to ONNX Runtime), or use "
                                "DynamicInt8Config or OrtInt8Config, which need no traced calibration")
        try:
            return _quantize_fx(model, cfg, ctx, names, kept_float, batches, example)
        except _FxTraceError as e:
            fx_error = str(e)

    def run(m: nn.Module) -> None:
        for b in batches:
            ctx.run_batch(m, b)

    q, details = quantize_static_ort(model.eval(), cfg, batches, kept_float, run)
    model.train(was_training)
    ctx.record(layers=names, excluded=kept_float, calibration_batches=len(batches), fx_error=fx_error[:500],
               **details)
    return q


def _is_text(batch: Any) -> bool:
    return isinstance(batch, (list, tuple)) and bool(batch) and all(isinstance(t, str) for t in batch)


def _quantize_fx(model: nn.Module, cfg: StaticInt8Config, ctx: TransformContext, names: list[str],
                 kept_float: list[str], batches: list, example: tuple[torch.Tensor, ...]) -> nn.Module:
    was_training = model.training
    model.eval()

    def calibrate(prepared: nn.Module) -> None:
        with torch.no_grad():  # observers update their buffers in place: no inference_mode here
            for b in batches:
                ctx.run_batch(prepared, b)

    q = _convert(model, cfg, _activation_observer(cfg.observer, cfg.reduce_range), kept_float, example, calibrate)
    model.train(was_training)
    quantized = [n for n, m in q.named_modules() if CODECS.find(m) is not None
                 and type(m).__module__.startswith("torch.ao.nn.")]
    skipped = [n for n in _float_layers(q) if n not in kept_float]
    if skipped:
        warnings.warn(f"StaticInt8Config: {len(skipped)} layer(s) kept in float because torch's x86 int8 backend "
                      f"has no kernel for them: {skipped[:8]}{' ...' if len(skipped) > 8 else ''}", stacklevel=2)
    lineage.copy_lineage(model, q)
    ctx.record(path="fx", layers=names, quantized=quantized, skipped=skipped, excluded=kept_float,
                             calibration_batches=len(batches), engine=torch.backends.quantized.engine,
                             example_inputs=[{"shape": list(t.shape), "dtype": str(t.dtype).removeprefix("torch.")}
                                             for t in example])
    return q


def _replay(model: nn.Module, cfg: StaticInt8Config, details: dict) -> nn.Module:
    """Rebuild the converted graph without data: placeholder scales, overwritten by the saved ones."""
    if details.get("path", "fx") == "onnxruntime":
        return replay_static_ort(model, details)
    from torch.ao.quantization.observer import MinMaxObserver

    example = tuple(torch.zeros(s["shape"], dtype=getattr(torch, s["dtype"])) for s in details["example_inputs"])
    activation = MinMaxObserver.with_args(dtype=torch.quint8, qscheme=torch.per_tensor_affine,
                                          reduce_range=cfg.reduce_range)
    q = _convert(model.eval(), cfg, activation, list(details.get("excluded", [])), example)
    lineage.copy_lineage(model, q)
    return q


class QuantizedModuleCodec(DynamicLinearCodec):
    """Static quantized conv/linear: int8 weights, weight scales, bias, plus the output scale and zero point."""

    def export(self, m: nn.Module) -> dict[str, torch.Tensor]:
        out = super().export(m)
        out["scale"] = torch.tensor(float(m.scale), dtype=torch.float64)
        out["zero_point"] = torch.tensor(int(m.zero_point), dtype=torch.int64)
        return out

    def load(self, m: nn.Module, t: dict[str, torch.Tensor]) -> None:
        super().load(m, t)
        m.scale, m.zero_point = float(t["scale"]), int(t["zero_point"])


_QPARAM_ATTRS = ("scale", "zero_point", "output_scale", "output_zero_point")


class OutputQParamsCodec(TensorCodec):
    """Quantized norms/activations: their plain tensors plus python-number output scale and zero point."""

    def export(self, m: nn.Module) -> dict[str, torch.Tensor]:
        out = {k: v for k, v in list(m._parameters.items()) + list(m._buffers.items()) if v is not None}
        for a in _QPARAM_ATTRS:
            v = getattr(m, a, None)
            if isinstance(v, (int, float)) and not isinstance(v, bool):
                out[f"qparams.{a}"] = torch.tensor(v, dtype=torch.float64 if "scale" in a else torch.int64)
        return out

    def load(self, m: nn.Module, t: dict[str, torch.Tensor]) -> None:
        with torch.no_grad():
            for k, v in t.items():
                if k.startswith("qparams."):
                    a = k.removeprefix("qparams.")
                    setattr(m, a, float(v) if "scale" in a else int(v))
                else:
                    getattr(m, k).copy_(v)


def _register() -> None:
    import torch.ao.nn.quantized as nnq

    weighted = (nnq.Linear, nnq.Conv1d, nnq.Conv2d, nnq.Conv3d, nnq.ConvTranspose1d, nnq.ConvTranspose2d,
                nnq.ConvTranspose3d)
    CODECS.register(*weighted)(QuantizedModuleCodec())
    CODECS.register(nnq.LayerNorm, nnq.GroupNorm, nnq.InstanceNorm1d, nnq.InstanceNorm2d, nnq.InstanceNorm3d,
                    nnq.BatchNorm2d, nnq.BatchNorm3d, nnq.Hardswish, nnq.ELU, nnq.LeakyReLU, nnq.Sigmoid,
                    nnq.Softmax)(OutputQParamsCodec())
    PARAM_VIEWS.register(*weighted)(lambda m: dict(zip(("weight", "bias"), m._weight_bias())))
    MAC_COUNTERS.register(nnq.Linear)(
        lambda m, inp, out: (inp[0].numel() // m.in_features) * m.in_features * m.out_features)
    MAC_COUNTERS.register(nnq.Conv1d, nnq.Conv2d, nnq.Conv3d)(
        lambda m, inp, out: out.numel() * (m.in_channels // m.groups) * _prod(m.kernel_size))


def _prod(xs: tuple[int, ...]) -> int:
    n = 1
    for x in xs:
        n *= int(x)
    return n


_register()


# -- registered transforms ----------------------------------------------------------------------------------------
register_transform(StaticInt8Config, family="quantize", name="static", replay=_replay)(quantize_static_int8)
