"""Quantization-aware training (QAT) that ends in a real int8 model on torch's x86 kernels.

The route is torch.fx: `prepare_qat_fx` traces the model, fuses conv-bn-relu, swaps the selected Linear/Conv2d
layers for QAT layers whose weights go through our `WeightFakeQuantize`, and puts an `ActivationFakeQuantize`
wherever the int8 graph will hold a quantized tensor. A short fine-tune (straight-through gradients) lets the
weights adapt to rounding; `convert_fx` then folds batch norm and lowers every layer to int8 kernels
(`torch.ao.nn.quantized` Conv2d/Linear, quantize/dequantize only at the edges). The result is checked: a
selected layer that did not become an int8 kernel is an error, never a fake-quant model passed off as int8.

Artifacts: the converted model is a `GraphModule`. Loading replays prepare + convert on the task's skeleton (the
graph is a function of the config and the architecture) and then loads the int8 weights, output scales and the
graph's `*_scale_*`/`*_zero_point_*` buffers through the codecs below.
"""
from __future__ import annotations

import copy
import itertools
import math
import warnings
from typing import Any, Callable, Iterable, Iterator

import torch
import torch.nn.functional as F
from torch import nn
from torch.ao.nn import quantized as nnq
from torch.ao.quantization import FakeQuantizeBase, QConfig, QConfigMapping
from torch.ao.quantization.backend_config.x86 import get_x86_backend_config
from torch.ao.quantization.quantize_fx import convert_fx, prepare_qat_fx

from condense.core import lineage
from condense.core.artifact import CODECS
from condense.core.config import MAX_COUNT, check_patterns, config, show
from condense.core.transforms import TransformContext, register_transform
from condense.errors import ConfigError
from condense.quantize import static as _static  # noqa: F401  (registers the int8 layer codecs QAT output uses)
from condense.quantize.fake import ActivationFakeQuantize, WeightFakeQuantize
from condense.quantize.primitives import Granularity, QuantSpec
from condense.core.select import select_modules

INT8_LAYERS = (nnq.Conv2d, nnq.Linear)  # fused ConvReLU2d / LinearReLU are subclasses


@config
class QATConfig:
    """Quantization-aware fine-tuning, then conversion to int8 kernels (static: activations int8 too).

    `quantize_(model, QATConfig(), task=task)` returns a new int8 `GraphModule` (use the return value); the
    input model is left unchanged. It needs the task's training batches (`steps=0`: calibration batches only).

    Args:
        weight_bits: weight bits (2..8), symmetric, stored in int8 (fewer bits = a coarser grid in int8).
        act_bits: activation bits (2..8), asymmetric uint8.
        per_channel: one weight scale per output channel (default) instead of one per tensor.
        reduce_range: one activation bit less, as torch's x86 default: fbgemm kernels can saturate with full
            8-bit activations on CPUs without VNNI.
        steps: fine-tuning steps over the task's training batches (0 = calibrate ranges only from one batch).
        lr: AdamW learning rate of the fine-tune (small: the model is already trained).
        include: module-name patterns (fnmatch) of Linear/Conv2d layers to quantize.
        exclude: module-name patterns to keep in float.

    Example:
        >>> QATConfig(steps=50, exclude=("classifier",)).to_dict()["steps"]
        50
    """

    weight_bits: int = 8
    act_bits: int = 8
    per_channel: bool = True
    reduce_range: bool = True
    steps: int = 100
    lr: float = 1e-4
    include: tuple[str, ...] = ("*",)
    exclude: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if isinstance(self.weight_bits, bool) or not isinstance(self.weight_bits, int) \
                or not 2 <= self.weight_bits <= 8:
            raise ConfigError(f"weight_bits must be in 2..8, got {self.weight_bits!r}; use weight_bits=8 for int8")
        if isinstance(self.act_bits, bool) or not isinstance(self.act_bits, int) or not 2 <= self.act_bits <= 8:
            raise ConfigError(f"act_bits must be in 2..8, got {self.act_bits!r}; use act_bits=8 for uint8")
        if self.reduce_range and self.act_bits < 3:
            raise ConfigError(f"reduce_range leaves act_bits-1 = {self.act_bits - 1} bit; use act_bits >= 3 or "
                              "reduce_range=False")
        if isinstance(self.steps, bool) or not isinstance(self.steps, int) or not 0 <= self.steps <= MAX_COUNT:
            raise ConfigError(f"steps must be an int >= 0 (at most {MAX_COUNT}), got {show(self.steps)}; "
                              "e.g. steps=100")
        if isinstance(self.lr, bool) or not isinstance(self.lr, (int, float)) or not 0 < self.lr < math.inf:
            raise ConfigError(f"lr must be a positive number (finite), got {show(self.lr)}; e.g. lr=1e-4")
        check_patterns(self, example="('features.*',)")

    def weight_spec(self) -> QuantSpec:
        """The weights' `QuantSpec` (symmetric, per channel or per tensor)."""
        return QuantSpec(bits=self.weight_bits, symmetric=True,
                         granularity=Granularity.PER_CHANNEL if self.per_channel else Granularity.PER_TENSOR)


# -- the three steps: prepare, fine-tune, convert ---------------------------------------------------------------
def _prepare(model: nn.Module, cfg: QATConfig, names: list[str], example: torch.Tensor) -> nn.Module:
    """Trace `model` and insert fake-quantizers for the layers in `names` (the others stay float)."""
    qconfig = QConfig(activation=ActivationFakeQuantize.with_args(bits=cfg.act_bits, reduce_range=cfg.reduce_range),
                      weight=WeightFakeQuantize.with_args(spec=cfg.weight_spec()))
    mapping = QConfigMapping().set_global(qconfig)
    chosen = set(names)
    for n, m in model.named_modules():
        if isinstance(m, (nn.Linear, nn.Conv2d)) and n not in chosen:
            mapping.set_module_name(n, None)
    model.train()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torch.ao warns that it is deprecated in favour of torchao
            return prepare_qat_fx(model, mapping, (example,), backend_config=get_x86_backend_config())
    except Exception as e:  # symbolic tracing fails in many ways (TraceError, TypeError, AttributeError...)
        raise ConfigError(f"QATConfig converts through torch.fx, and {type(model).__name__} cannot be traced "
                          f"({type(e).__name__}: {e}); make forward() free of data-dependent Python control flow, "
                          "or use DynamicInt8Config") from None


def _finetune(model: nn.Module, batches: Iterable[Any], steps: int, lr: float,
              run: Callable[[nn.Module, Any], Any] | None = None) -> int:
    """Train `model` for `steps` steps of AdamW on `(inputs, targets)` batches; returns the steps taken.

    Integer targets use cross-entropy (classification), float targets of the output's shape use MSE.
    """
    run = run or (lambda m, x: m(x))
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr, weight_decay=0.0)
    model.train()
    done = 0
    for inputs, targets in itertools.islice(batches, steps):
        out = run(model, inputs)
        loss = _loss(out, targets)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        done += 1
    return done


def _loss(out: Any, targets: torch.Tensor) -> torch.Tensor:
    if not isinstance(out, torch.Tensor):
        raise ConfigError(f"QATConfig fine-tunes models that return a tensor, got {type(out).__name__}; "
                          "wrap the model so forward() returns logits")
    if not targets.is_floating_point():
        return F.cross_entropy(out, targets)
    if targets.shape == out.shape:
        return F.mse_loss(out, targets)
    raise ConfigError(f"QATConfig needs integer class targets (cross-entropy) or float targets shaped like the "
                      f"output {tuple(out.shape)} (MSE); got {targets.dtype} {tuple(targets.shape)}")


def _convert(prepared: nn.Module, names: list[str]) -> nn.Module:
    """Fold batch norm and lower to int8 kernels; error if a selected layer did not become one."""
    prepared.eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = convert_fx(prepared, backend_config=get_x86_backend_config())
    modules = dict(model.named_modules())
    stuck = {n: type(modules.get(n)).__name__ for n in names if not isinstance(modules.get(n), INT8_LAYERS)}
    if stuck:
        raise ConfigError(f"QATConfig could not lower {stuck} to int8 kernels (the x86 backend has no int8 pattern "
                          f"for them here); exclude them with exclude={tuple(stuck)!r}")
    leftover = [n for n, m in model.named_modules() if isinstance(m, FakeQuantizeBase)]
    if leftover:
        raise ConfigError(f"QATConfig: fake-quant modules {leftover[:3]} survived conversion, so the model would "
                          "not run on int8 kernels; exclude the layers around them")
    unsaved = [f"{n} ({type(m).__name__})" for n, m in model.named_modules()
               if type(m).__module__.startswith("torch.ao.nn") and isinstance(getattr(m, "scale", None), float)
               and CODECS.find(m) is None]
    if unsaved:  # a scale held as a Python number would be lost by condense.save
        raise ConfigError(f"QATConfig produced int8 modules condense cannot save yet: {unsaved[:3]}; exclude the "
                          "layers they come from (exclude=(...)) or register a TensorCodec for their type")
    return model


def _batches(ctx: TransformContext) -> Iterator[Any]:
    """The task's training batches, restarted when they run out (steps may exceed one epoch)."""
    while True:
        n = 0
        for b in ctx.train_batches():
            n += 1
            yield b
        if n == 0:
            raise ConfigError("QATConfig needs training batches, and the task's train_data yielded none")


def _example_input(batch: Any) -> torch.Tensor:
    if not (isinstance(batch, (tuple, list)) and len(batch) == 2 and isinstance(batch[0], torch.Tensor)):
        raise ConfigError("QATConfig traces the model with one input tensor and trains on (input tensor, targets) "
                          f"batches; this task yields {type(batch).__name__} batches")
    return batch[0][:1].detach().clone()


def quantize_qat(model: nn.Module, cfg: QATConfig, ctx: TransformContext) -> nn.Module:
    """Fine-tune with fake quantization, then convert to an int8 `GraphModule` (returned; `model` is unchanged)."""
    if any(p.device.type != "cpu" for p in model.parameters()):
        raise ConfigError("QATConfig converts to CPU int8 kernels; move the model to CPU first (model.cpu())")
    names = select_modules(model, (nn.Linear, nn.Conv2d), cfg.include, cfg.exclude, what="QATConfig")
    if cfg.steps:
        batches = _batches(ctx)
        first = next(batches)
        example = _example_input(first)
        prepared = _prepare(copy.deepcopy(model), cfg, names, example)
        _finetune(prepared, itertools.chain([first], batches), cfg.steps, cfg.lr, run=ctx.run_batch)
    else:  # no training: observe ranges on calibration data (post-training static quantization)
        calib = ctx.calibration_batches(what="QATConfig(steps=0)")
        example = _example_input((calib[0], None))
        prepared = _prepare(copy.deepcopy(model), cfg, names, example)
        prepared.eval()
        with torch.no_grad():
            for b in calib:
                ctx.run_batch(prepared, b)
    converted = _convert(prepared, names)
    lineage.copy_lineage(model, converted)
    ctx.record(layers=names, example_shape=list(example.shape),
                             example_dtype=str(example.dtype).removeprefix("torch."))
    return converted


def _replay(model: nn.Module, cfg: QATConfig, details: dict) -> nn.Module:
    example = torch.zeros(details["example_shape"], dtype=getattr(torch, details.get("example_dtype", "float32")))
    names = list(details["layers"])
    converted = _convert(_prepare(model, cfg, names, example), names)
    lineage.copy_lineage(model, converted)
    return converted


# -- registered transforms ----------------------------------------------------------------------------------------
register_transform(QATConfig, family="quantize", name="qat", replay=_replay)(quantize_qat)
