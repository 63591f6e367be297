"""Data augmentation for training: named, registered transformations of a batch's inputs (targets unchanged).

Why names in a registry: `FitConfig.augment` is a string that recipes, the CLI and saved configs carry, and a new
augmentation is one `AUGMENTATIONS.register(name, ...)` line. Each augmentation fits one kind of input
(`INPUT_KINDS`: "image" float (B, C, H, W), "tokens" integer ids (B, T)); a task declares its kind
(`Task.input_kind`) so that `augment="auto"` picks the kind's default and a mismatched name is refused.

Every random draw comes from a torch Generator on the CPU (default: the global one, which the training loop seeds
with `FitConfig.seed` and checkpoints), then moves to the batch's device: a run is reproducible, resumes exactly,
and draws the same augmentations on any device.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable

import torch
import torch.nn.functional as F

from condense.core.registry import Registry, TypeRegistry
from condense.errors import ConfigError

__all__ = ["ImageAugment", "TokenAugment", "InputKind", "AUGMENTATIONS", "INPUT_KINDS", "BATCH_INPUTS",
           "shift_images", "resolve_augmentation", "augment_batch", "batch_augmenter"]


@dataclass(frozen=True)
class InputKind:
    """A kind of model input: how to recognise it and which registered augmentations serve it."""

    describe: str
    matches: Callable[[torch.Tensor], bool]
    default: str  # augment="auto"
    weak: str  # semi-supervised pseudo-labels
    strong: str  # semi-supervised consistency target


def shift_images(x: torch.Tensor, dy: torch.Tensor, dx: torch.Tensor) -> torch.Tensor:
    """Move image b down by dy[b] and right by dx[b] whole pixels (negative: up/left), zero-filling what enters.

    Example:
        >>> shift_images(torch.eye(3)[None, None], torch.tensor([1]), torch.tensor([0]))[0, 0].tolist()
        [[0.0, 0.0, 0.0], [1.0, 0.0, 0.0], [0.0, 1.0, 0.0]]
    """
    B, _, H, W = x.shape
    s = int(max(dy.abs().max(), dx.abs().max())) if B else 0
    padded = F.pad(x, (s, s, s, s))  # (B, C, H + 2s, W + 2s)
    iy = torch.arange(H, device=x.device) + s - dy.to(x.device)[:, None]  # (B, H): source row of each output row
    ix = torch.arange(W, device=x.device) + s - dx.to(x.device)[:, None]  # (B, W)
    b = torch.arange(B, device=x.device)[:, None, None]
    out = padded.permute(0, 2, 3, 1)[b, iy[:, :, None], ix[:, None, :]]  # (B, H, W, C)
    return out.permute(0, 3, 1, 2).contiguous()


@dataclass(frozen=True)
class ImageAugment:
    """Random small geometric and photometric changes of float images (B, C, H, W), each image its own draw.

    Args:
        max_shift: whole-pixel shift, uniform in -max_shift..max_shift on each axis (exact, zero fill).
        max_degrees: rotation about the centre, uniform in +-max_degrees (bilinear).
        elastic: amplitude in pixels of a smooth random displacement field (a 3x3 grid of normal draws, upsampled).
        cutout: side of a square set to zero at a random place (0: off).
        noise_std: Gaussian noise added to every pixel.
    Results are clamped to the batch's own value range (with 0, the fill value).

    Example:
        >>> ImageAugment(max_shift=1)(torch.rand(4, 1, 8, 8), torch.Generator().manual_seed(0)).shape
        torch.Size([4, 1, 8, 8])
    """

    max_shift: int = 1
    max_degrees: float = 0.0
    elastic: float = 0.0
    cutout: int = 0
    noise_std: float = 0.0
    kind = "image"

    def __call__(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        B, _, H, W = x.shape
        lo, hi = x.min().clamp(max=0), x.max().clamp(min=0)
        g = dict(generator=generator)
        if self.max_degrees or self.elastic:
            ang = (torch.rand(B, **g) * 2 - 1) * math.radians(self.max_degrees)
            cos, sin, zero = ang.cos(), ang.sin(), torch.zeros(B)
            theta = torch.stack([torch.stack([cos, -sin, zero], 1), torch.stack([sin, cos, zero], 1)], 1)  # (B, 2, 3)
            grid = F.affine_grid(theta, [B, 1, H, W], align_corners=False)  # (B, H, W, 2) in [-1, 1]
            if self.elastic:
                coarse = torch.randn(B, 2, 3, 3, **g) * self.elastic
                field = F.interpolate(coarse, size=(H, W), mode="bilinear", align_corners=True)  # (B, 2, H, W)
                scale = torch.tensor([2.0 / W, 2.0 / H])  # pixels -> grid units, (x, y)
                grid = grid + field.permute(0, 2, 3, 1) * scale
            x = F.grid_sample(x, grid.to(x.device, x.dtype), mode="bilinear", padding_mode="zeros",
                              align_corners=False)
        if self.max_shift:
            d = torch.randint(-self.max_shift, self.max_shift + 1, (2, B), **g)
            x = shift_images(x, d[0], d[1])
        if self.cutout:
            c = min(self.cutout, H, W)
            y0 = torch.randint(0, H - c + 1, (B,), **g)[:, None, None]
            x0 = torch.randint(0, W - c + 1, (B,), **g)[:, None, None]
            rows, cols = torch.arange(H)[None, :, None], torch.arange(W)[None, None, :]
            hole = (rows >= y0) & (rows < y0 + c) & (cols >= x0) & (cols < x0 + c)  # (B, H, W)
            x = x.masked_fill(hole[:, None].to(x.device), 0.0)
        if self.noise_std:
            x = x + (torch.randn(x.shape, **g) * self.noise_std).to(x.device, x.dtype)
        return x.clamp(lo, hi)


@dataclass(frozen=True)
class TokenAugment:
    """Token dropout and span masking of integer ids (B, T): masked positions become `replace_id`.

    Args:
        rate: expected fraction of positions masked (before overlapping spans merge).
        span: tokens per masked span; spans start at each position with probability rate / span.
        replace_id: the id written over masked tokens (byte-level models: 0, a byte absent from source text).

    Example:
        >>> ids = torch.ones(2, 1000, dtype=torch.long)
        >>> 0.05 < float((TokenAugment(rate=0.1)(ids, torch.Generator().manual_seed(0)) == 0).float().mean()) < 0.15
        True
    """

    rate: float = 0.1
    span: int = 1
    replace_id: int = 0
    kind = "tokens"

    def mask(self, shape: tuple[int, ...], generator: torch.Generator | None = None) -> torch.Tensor:
        """The boolean (B, T) mask of positions to replace."""
        starts = torch.rand(shape, generator=generator) < self.rate / self.span  # (B, T)
        m = starts.clone()
        for k in range(1, self.span):  # a span starting at t covers t .. t + span - 1
            m[..., k:] |= starts[..., :-k]
        return m

    def __call__(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        return x.masked_fill(self.mask(tuple(x.shape), generator).to(x.device), self.replace_id)


INPUT_KINDS: Registry[InputKind] = Registry("input kind")
INPUT_KINDS.register("image", InputKind("float images (B, C, H, W)",
                                        lambda x: x.is_floating_point() and x.dim() == 4,
                                        default="image", weak="image-shift", strong="image-strong"))
INPUT_KINDS.register("tokens", InputKind("integer token ids (B, T)",
                                         lambda x: not x.is_floating_point() and x.dim() == 2,
                                         default="tokens", weak="tokens-light", strong="tokens-span"))

AUGMENTATIONS: Registry[Any] = Registry("augmentation")  # name -> callable(x, generator) with a .kind
AUGMENTATIONS.register("image-shift", ImageAugment(max_shift=1))
AUGMENTATIONS.register("image", ImageAugment(max_shift=1, max_degrees=10.0, noise_std=0.05))
AUGMENTATIONS.register("image-strong", ImageAugment(max_shift=1, max_degrees=10.0, cutout=2, noise_std=0.05))
AUGMENTATIONS.register("image-heavy", ImageAugment(max_shift=1, max_degrees=15.0, elastic=0.5, cutout=3,
                                                   noise_std=0.1))
AUGMENTATIONS.register("tokens-light", TokenAugment(rate=0.05))
AUGMENTATIONS.register("tokens", TokenAugment(rate=0.1))
AUGMENTATIONS.register("tokens-span", TokenAugment(rate=0.15, span=4))

# batch type -> (batch, fn) -> the batch with fn applied to its inputs (targets untouched)
BATCH_INPUTS: TypeRegistry[Callable[[Any, Callable[[torch.Tensor], torch.Tensor]], Any]] = \
    TypeRegistry("batch type")
_INPUT_KEYS = ("input_ids", "pixel_values", "x")


@BATCH_INPUTS.register(torch.Tensor)
def _tensor(batch: torch.Tensor, fn: Callable[[torch.Tensor], torch.Tensor]) -> torch.Tensor:
    return fn(batch)


@BATCH_INPUTS.register(tuple, list)
def _pair(batch: Any, fn: Callable[[torch.Tensor], torch.Tensor]) -> Any:
    if not batch or not isinstance(batch[0], torch.Tensor):
        raise ConfigError(f"augmentation needs the inputs as a batch's first tensor; got a {type(batch).__name__} "
                          f"starting with {type(batch[0]).__name__ if batch else 'nothing'}; set augment=None")
    items = [fn(batch[0]), *batch[1:]]
    return type(batch)(*items) if hasattr(batch, "_fields") else type(batch)(items)


@BATCH_INPUTS.register(dict)
def _mapping(batch: dict, fn: Callable[[torch.Tensor], torch.Tensor]) -> dict:
    key = next((k for k in _INPUT_KEYS if k in batch), None)
    if key is None:
        raise ConfigError(f"augmentation needs one of the keys {list(_INPUT_KEYS)} in a dict batch, got "
                          f"{sorted(batch)}; set augment=None")
    return {**batch, key: fn(batch[key])}


def augment_batch(batch: Any, fn: Callable[[torch.Tensor], torch.Tensor]) -> Any:
    """`batch` with `fn` applied to its inputs: a tensor, the first item of a tuple/list (the targets after it
    untouched), a dict's input_ids/pixel_values; other batch types register in `BATCH_INPUTS`.

    Example:
        >>> augment_batch((torch.ones(2), torch.zeros(2)), lambda x: -x)[0].tolist()
        [-1.0, -1.0]
    """
    handler = BATCH_INPUTS.find(batch)
    if handler is None:
        raise ConfigError(f"cannot augment a {type(batch).__name__} batch; register its inputs in "
                          "condense.train.augment.BATCH_INPUTS, or set augment=None")
    return handler(batch, fn)


def _inputs_of(batch: Any) -> Any:
    seen: list[Any] = []
    try:
        augment_batch(batch, lambda x: seen.append(x) or x)
    except ConfigError:
        return None
    return seen[0] if seen else None


def _kinds_for(x: Any) -> list[str]:
    return [k for k, kind in INPUT_KINDS.items() if isinstance(x, torch.Tensor) and kind.matches(x)]


def _names_of(kind: str) -> list[str]:
    return [n for n, a in AUGMENTATIONS.items() if a.kind == kind]


def resolve_augmentation(name: str, input_kind: str | None = None, example: Any = None, *,
                         role: str = "default") -> Any:
    """The registered augmentation for `name`, checked against the inputs it will see.

    Args:
        name: a registered name, or "auto": the `role` (default | weak | strong) augmentation of `input_kind`, or
            of the kind the `example` batch's inputs match when no kind is declared.
        input_kind: the task's declared `Task.input_kind` (None: not declared).
        example: a training batch, to check the augmentation fits its inputs.

    Example:
        >>> resolve_augmentation("auto", "image").max_degrees
        10.0
    """
    x = _inputs_of(example) if example is not None else None
    if input_kind is None and x is not None:
        found = _kinds_for(x)
        input_kind = found[0] if found else None
    if name == "auto":
        if input_kind is None:
            what = f"inputs {type(x).__name__}{tuple(x.shape) if isinstance(x, torch.Tensor) else ''}"
            raise ConfigError(f"augment='auto': the task declares no input_kind and its {what} are none of "
                              f"{[f'{k}: {v.describe}' for k, v in INPUT_KINDS.items()]}; name an augmentation "
                              f"({list(AUGMENTATIONS)}) or set augment=None")
        name = getattr(INPUT_KINDS.get(input_kind), role)
    aug = AUGMENTATIONS.get(name)
    if input_kind is not None and aug.kind != input_kind:
        raise ConfigError(f"augmentation {name!r} is for {aug.kind} inputs but these are {input_kind} "
                          f"({INPUT_KINDS.get(input_kind).describe}); choose one of {_names_of(input_kind)}, "
                          "'auto' or None")
    if x is not None and not INPUT_KINDS.get(aug.kind).matches(x):
        got = f"{x.dtype} {tuple(x.shape)}" if isinstance(x, torch.Tensor) else type(x).__name__
        raise ConfigError(f"augmentation {name!r} needs {INPUT_KINDS.get(aug.kind).describe}, got {got}; choose "
                          f"one of {[n for k in _kinds_for(x) for n in _names_of(k)]} or set augment=None")
    return aug


def batch_augmenter(name: str | None, input_kind: str | None = None) -> Callable[[Any], Any] | None:
    """A function batch -> augmented batch for `FitConfig.augment` (None when off); resolved on the first batch.

    Example:
        >>> aug = batch_augmenter("image-shift", "image")
        >>> aug((torch.rand(2, 1, 8, 8), torch.tensor([3, 4])))[1].tolist()
        [3, 4]
    """
    if name is None:
        return None
    chosen: list[Any] = []

    def apply(batch: Any) -> Any:
        if not chosen:
            chosen.append(resolve_augmentation(name, input_kind, batch))
        return augment_batch(batch, chosen[0])

    return apply
