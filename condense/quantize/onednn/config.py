"""`OneDnnInt8Config`: static int8 on oneDNN's int8 matmul (AMX / VNNI), in eager PyTorch.

Two paths, chosen by the model:
- A model with a packed int8 encoder registered in `PACKED_ENCODERS` (condense's `Bert`, inside the minilm
  task's sentence encoder) gets it (condense/quantize/onednn/encoder.py): padding dropped, fused kernels, float
  FFN outlier channels.
- Any other model: each selected `nn.Linear` becomes an `Int8Linear` with its own calibrated input scale, so it
  works on models condense did not write; the rest of the model is untouched.

Both calibrate per-channel activation ranges on the task's calibration batches (real tokens only for the encoder)
and apply SmoothQuant (`smooth_quant` = alpha) before fixing one uint8 scale per matmul input.

Save/load: the int8 weights, scales, SmoothQuant divisors and float channels are plain buffers; the replay
rebuilds the same structure with placeholder ranges and the artifact's tensors overwrite them, so a loaded model
computes exactly what the saved one did.
"""
from __future__ import annotations

from typing import Callable

import torch
from torch import nn

from condense.core.config import check_float, check_int, check_patterns, check_positive_int, config, show
from condense.core.linear_like import linear_like_types, linearize_, prepare_linears_
from condense.core.registry import TypeRegistry
from condense.core.select import select_modules
from condense.core.transforms import TransformContext, register_transform
from condense.errors import CondenseError, ConfigError
from condense.measurement.counts import PARAM_VIEWS
from condense.measurement.macs import MAC_COUNTERS
from condense.quantize.onednn.kernels import Int8Linear, Int8Matmul, onednn_int8, widen_range
from condense.quantize.static_aids import _hooked, _replace


@config
class OneDnnInt8Config:
    """Static int8 on oneDNN's int8 kernels (AMX / VNNI), calibrated, with SmoothQuant and float outlier channels.

    Args:
        smooth_quant: SmoothQuant's alpha (0 = off): s_j = max|X_j|^alpha / max|W_:,j|^(1 - alpha) per input
            channel, weights scaled by s and inputs divided by it before quantizing (packed encoders: the LayerNorm
            outputs feeding q/k/v and ffn_in). On MiniLM (docstring pairs) cosine to the float embeddings 0.9991
            with 0.7, 0.9961 with 0: `condense quantize --task minilm --scheme onednn --set smooth_quant=0`.
        float_channels: packed encoders: per block, this many FFN hidden channels with the largest calibrated GELU
            output computed in float on a side path (one outlier channel otherwise sets the uint8 step of all
            1536; MiniLM's reaches 24.6 where the next is 6.5). On MiniLM cosine 0.9991 with 8, 0.9963 with 0.
        calibration_batches: how many of the task's calibration batches set the activation ranges.
        packed: None (default): the packed encoder where one is registered for the model, else per-Linear;
            False: always per-Linear (`Int8Linear`); True: the packed encoder or an error.
        include: module-name patterns to quantize (fnmatch); exclude: patterns to keep in float. Anything but the
            defaults selects the per-Linear path.

    Example:
        >>> OneDnnInt8Config(float_channels=4).to_dict()["smooth_quant"]
        0.7
    """

    smooth_quant: float = 0.7
    float_channels: int = 8
    calibration_batches: int = 8
    packed: bool | None = None
    include: tuple[str, ...] = ("*",)
    exclude: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        check_float(self, "smooth_quant", lo=0, hi=1, example=0.7)
        check_int(self, "float_channels", lo=0, hi=1_000_000, example=8)
        check_positive_int(self, "calibration_batches", example=8)
        if self.packed not in (None, True, False):
            raise ConfigError(f"OneDnnInt8Config.packed must be None (packed where the model has a packed encoder), "
                              f"True or False, got {show(self.packed)}")
        check_patterns(self, example="('bert.layers.*',)")


# model type -> build(module, run, cfg) -> its packed int8 replacement (`run` feeds the calibration batches; None
# when an artifact loads). Registered by the module defining the model (condense/tasks/bert.py), since techniques
# never import tasks; `condense.quantize.onednn.encoder.build_packed_bert` serves BERT-like encoders.
PACKED_ENCODERS: TypeRegistry[Callable[[nn.Module, Callable[[], None] | None, "OneDnnInt8Config"], nn.Module]] = \
    TypeRegistry("packed int8 encoder")


def _packed_targets(model: nn.Module) -> list[str]:
    """Names of the outermost modules with a registered packed encoder."""
    names: list[str] = []
    for name, mod in model.named_modules():
        if mod in PACKED_ENCODERS and not any(name.startswith(n + ".") or n == "" for n in names):
            names.append(name)
    return names


def _use_packed(model: nn.Module, cfg: OneDnnInt8Config) -> list[str]:
    targets = _packed_targets(model)
    defaults = cfg.include == ("*",) and cfg.exclude == ()
    if cfg.packed and not targets:
        raise ConfigError(f"OneDnnInt8Config(packed=True): {type(model).__name__} has no packed int8 encoder "
                          f"(registered: {', '.join(t.__name__ for t in PACKED_ENCODERS.types())}); use packed=None, "
                          "which quantizes each nn.Linear instead")
    if cfg.packed and not defaults:
        raise ConfigError("OneDnnInt8Config(packed=True) quantizes whole encoders: include/exclude select Linears "
                          "on the per-Linear path; drop them or use packed=None")
    return targets if (cfg.packed or (cfg.packed is None and defaults)) else []


def _set(model: nn.Module, name: str, new: nn.Module) -> nn.Module:
    """`model` with its submodule `name` replaced by `new` (`new` itself for the root, "")."""
    if name == "":
        return new
    _replace(model, name, new)
    return model


def _check_cpu(model: nn.Module) -> None:
    ok, why = onednn_int8()
    if not ok:
        raise ConfigError(f"OneDnnInt8Config needs oneDNN's native int8 kernels: {why}; use Int8Config() (it picks "
                          "an int8 backend that runs here) or OrtInt8Config")
    if any(p.device.type != "cpu" for p in model.parameters()):
        raise ConfigError("OneDnnInt8Config targets CPU inference; move the model to CPU first (model.cpu())")


def _linear_stats(model: nn.Module, names: list[str], run: Callable[[], None]
                  ) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """Per selected Linear, the per-input-channel (min, max) over the calibration batches."""
    stats: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
    _hooked(model, names, lambda name, x: widen_range(stats, name, x), lambda _m: run())
    missing = [n for n in names if n not in stats]
    if missing:
        raise CondenseError(f"OneDnnInt8Config: calibration never ran {missing[:4]}; exclude layers the task's "
                            "batches do not reach (exclude=(...))")
    return stats


def quantize_onednn_int8(model: nn.Module, cfg: OneDnnInt8Config, ctx: TransformContext) -> nn.Module:
    """Calibrate, then swap in the packed int8 encoder (where registered) or an `Int8Linear` per selected Linear."""
    _check_cpu(model)
    model.eval()
    batches = ctx.calibration_batches(cfg.calibration_batches, what="OneDnnInt8Config")

    def run() -> None:
        with torch.inference_mode():
            for b in batches:
                ctx.run_batch(model, b)

    targets = _use_packed(model, cfg)
    if targets:
        for name in targets:
            build = PACKED_ENCODERS.find(model.get_submodule(name))
            model = _set(model, name, build(model.get_submodule(name), run, cfg))
        ctx.record(path="packed", encoders=targets, calibration_batches=len(batches), cpu=onednn_int8()[1])
        return model
    names = select_modules(model, (nn.Linear, *linear_like_types()), cfg.include, cfg.exclude,
                           what="OneDnnInt8Config")
    prepared = prepare_linears_(model, names, "OneDnnInt8Config")  # GPT-2's Conv1D -> nn.Linear first
    stats = _linear_stats(model, names, run)
    with torch.no_grad():
        for n in names:
            model = _set(model, n, Int8Linear(model.get_submodule(n), *stats[n], cfg.smooth_quant))
    ctx.record(path="linear", layers=names, calibration_batches=len(batches), cpu=onednn_int8()[1], **prepared)
    return model


def _replay(model: nn.Module, cfg: OneDnnInt8Config, details: dict) -> nn.Module:
    """The same structure with placeholder ranges; the artifact's tensors then overwrite every buffer."""
    if details.get("path") == "packed":
        for name in details["encoders"]:
            build = PACKED_ENCODERS.find(model.get_submodule(name))
            model = _set(model, name, build(model.get_submodule(name), None, cfg))
        return model
    linearize_(model, list(details["layers"]))
    with torch.no_grad():
        for n in details["layers"]:
            lin = model.get_submodule(n)
            ones = torch.ones(lin.in_features)
            model = _set(model, n, Int8Linear(lin, -ones, ones, cfg.smooth_quant))
    return model


PARAM_VIEWS.register(Int8Matmul)(lambda m: {"weight": m.weight, "bias": m.bias})
MAC_COUNTERS.register(Int8Matmul)(lambda m, inp, out: inp[0].shape[0] * m.in_features * m.out_features)

# -- registered transforms ----------------------------------------------------------------------------------------
register_transform(OneDnnInt8Config, family="quantize", name="onednn", replay=_replay, search=True)(
    quantize_onednn_int8)
