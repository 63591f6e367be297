"""The `digits` task: a small CNN on scikit-learn's 8x8 digits, trained in seconds and cached.

The network is wide enough that convolutions dominate its cost at batch 256, so channel pruning and int8
kernels have real work to remove.
"""
from __future__ import annotations

import hashlib
import json
from functools import partial
from dataclasses import asdict, dataclass
from typing import Iterator

import torch
import torch.nn.functional as F
from torch import nn

from condense.core.atomic import atomic_write, atomic_write_json
from condense.core.paths import cache_dir
from condense.core.task import Task
from condense.data.digits import digits_split, labelled_subset
from condense.errors import ConfigError
from condense.train.loop import FitConfig, fit

# Part of the cache key: bump when the training code changes the weights a DigitsConfig gives, so cached models
# from older code are not mixed with new ones. 2: trained by condense.train's engine (was a hand-written loop).
_FORMAT = 2


@dataclass(frozen=True)
class DigitsConfig:
    channels: tuple[int, ...] = (32, 64, 128)
    epochs: int = 30
    batch_size: int = 64
    lr: float = 3e-3
    seed: int = 0

    def fit_config(self, n_train: int) -> FitConfig:
        """How `train_digits` trains on `n_train` images: AdamW, one-cycle LR peaking at `lr`, `epochs` epochs.

        Example:
            >>> DigitsConfig(epochs=2, batch_size=64).fit_config(100).steps  # 2 epochs of 2 batches
            4
        """
        steps = self.epochs * -(-n_train // self.batch_size)
        return FitConfig(steps=steps, lr=self.lr, optimizer="adamw", weight_decay=1e-4, grad_clip=None,
                         schedule="onecycle", min_lr_ratio=0.0, seed=self.seed)


def _block(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU())


class DigitsCNN(nn.Module):
    """conv-bn-relu x3 (a 2x2 max-pool after the second) -> global average pool -> linear classifier.

    Example:
        >>> DigitsCNN((8, 16, 32))(torch.zeros(2, 1, 8, 8)).shape
        torch.Size([2, 10])
    """

    def __init__(self, channels: tuple[int, ...] = (32, 64, 128), n_classes: int = 10):
        super().__init__()
        c1, c2, c3 = channels
        self.features = nn.Sequential(_block(1, c1), _block(c1, c2), nn.MaxPool2d(2), _block(c2, c3))
        self.classifier = nn.Linear(c3, n_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.features(x)                 # (B, C3, 4, 4)
        h = h.mean(dim=(2, 3))               # (B, C3)
        return self.classifier(h)            # (B, 10)


def cross_entropy_loss(model: nn.Module, batch: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
    """The task's loss: cross-entropy of `model` on one `(x, y)` batch."""
    x, y = batch
    return F.cross_entropy(model(x), y)


def train_digits(cfg: DigitsConfig) -> DigitsCNN:
    """Train a DigitsCNN on the fixed split with condense's training engine (deterministic for a given config).

    Each epoch visits the training images in a fresh order drawn from a generator seeded with `cfg.seed`.
    """
    torch.manual_seed(cfg.seed)
    data = digits_split()
    model = DigitsCNN(cfg.channels)
    n = data.x_train.shape[0]
    g = torch.Generator().manual_seed(cfg.seed)

    def epoch() -> Iterator[tuple[torch.Tensor, torch.Tensor]]:  # called once per epoch by the engine
        perm = torch.randperm(n, generator=g)
        for i in range(0, n, cfg.batch_size):
            idx = perm[i:i + cfg.batch_size]
            yield data.x_train[idx], data.y_train[idx]

    fit(model, epoch, cross_entropy_loss, cfg.fit_config(n), description="training digits")
    return model.eval()


def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int = 512) -> float:
    """Top-1 accuracy of `model` on (x, y), on the device of the model's parameters."""
    dev = _device_of(model)
    correct = 0
    with torch.inference_mode():
        for i in range(0, x.shape[0], batch_size):
            logits = model(x[i:i + batch_size].to(dev))
            correct += int((logits.argmax(-1).cpu() == y[i:i + batch_size]).sum())
    return correct / x.shape[0]


def _device_of(model: nn.Module) -> torch.device:
    for p in model.parameters():
        return p.device
    return torch.device("cpu")


def load_digits_model(cfg: DigitsConfig = DigitsConfig()) -> DigitsCNN:
    """The trained model for `cfg`, from the cache if present, else trained (seconds) and cached atomically."""
    from safetensors.torch import load_file, save_file

    key = hashlib.sha1(json.dumps({"format": _FORMAT, **asdict(cfg)}, sort_keys=True).encode()).hexdigest()[:12]
    path = cache_dir() / f"digits-{key}.safetensors"
    model = DigitsCNN(cfg.channels)
    if path.exists():
        try:
            model.load_state_dict(load_file(str(path)))
            return model.eval()
        except Exception:  # a corrupt cache entry is retrained, never trusted
            path.unlink(missing_ok=True)
    model = train_digits(cfg)
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    atomic_write(path, lambda tmp: save_file(state, tmp))
    atomic_write_json(path.with_suffix(".json"), {"format": _FORMAT, "config": asdict(cfg)})
    return model


def make_task(channels: tuple[int, ...] | list[int] = (32, 64, 128), epochs: int = 30,
              labels_fraction: float | None = None, labels_per_class: int | None = None, label_seed: int = 0,
              validation: float = 0.0) -> Task:
    """The built-in digits task (test accuracy on the fixed 20% split).

    Args:
        labels_fraction, labels_per_class: keep the labels of only this fraction / count of each class's training
            images (a fixed, stratified subset drawn with `label_seed`); `train_data` then yields as many batches
            per epoch as the full set would, drawn from reshuffles of the labelled images, and `unlabelled_data`
            yields the rest without labels (semi-supervised training: `TrainConfig(semi=...)`).
        validation: choose settings on a validation split, never the test split: this fraction of the training
            images (fixed, stratified) is held out and the metric is computed on it; training (labelled and
            unlabelled) uses the rest. 0: the usual train/test split.

    Example:
        >>> t = make_task(labels_per_class=5)
        >>> sum(y.numel() for _, y in t.train_data()) == 23 * 50  # 23 batches of the 50 labelled images
        True
    """
    cfg = DigitsConfig(channels=tuple(channels), epochs=epochs)
    if isinstance(validation, bool) or not isinstance(validation, (int, float)) or not 0 <= validation < 1:
        raise ConfigError(f"validation must be a fraction in [0, 1), got {validation!r}; e.g. 0.2")
    data = digits_split(validation=float(validation))
    labelled = None
    if labels_fraction is not None or labels_per_class is not None:
        if labels_fraction is not None and (isinstance(labels_fraction, bool) or
                                            not isinstance(labels_fraction, (int, float)) or
                                            not 0 < labels_fraction <= 1):
            raise ConfigError(f"labels_fraction must be in (0, 1], got {labels_fraction!r}; e.g. 0.05")
        if labels_per_class is not None and (isinstance(labels_per_class, bool) or
                                             not isinstance(labels_per_class, int) or labels_per_class < 1):
            raise ConfigError(f"labels_per_class must be a positive integer, got {labels_per_class!r}; e.g. 5")
        labelled = labelled_subset(data.y_train, fraction=labels_fraction, per_class=labels_per_class,
                                   seed=label_seed)

    def evaluate(model: nn.Module) -> dict[str, float]:
        return {"accuracy": accuracy(model, data.x_test, data.y_test)}

    def inputs(batch_size: int) -> torch.Tensor:
        reps = -(-batch_size // data.x_test.shape[0])
        return data.x_test.repeat(reps, 1, 1, 1)[:batch_size].clone()  # (B, 1, 8, 8)

    def calibration_data() -> Iterator[torch.Tensor]:
        for i in range(0, 512, 64):
            yield data.x_train[i:i + 64]

    def train_data() -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        g = torch.Generator().manual_seed(0)
        perm = torch.randperm(data.x_train.shape[0], generator=g)
        for i in range(0, perm.numel(), 64):
            idx = perm[i:i + 64]
            yield data.x_train[idx], data.y_train[idx]

    unlabelled_data = None
    if labelled is not None:
        train_data = partial(_subset_batches, data.x_train, data.y_train, labelled)  # type: ignore[assignment]
        unlabelled_data = partial(_unlabelled_batches, data.x_train, labelled)
    return Task(
        name="digits",
        model=lambda: load_digits_model(cfg),
        evaluate=evaluate,
        primary_metric="accuracy",
        higher_is_better=True,
        inputs=inputs,
        calibration_data=calibration_data,
        train_data=train_data,
        loss=cross_entropy_loss,
        skeleton=lambda: DigitsCNN(cfg.channels),
        batch_sizes=(1, 256),
        description=f"small CNN on scikit-learn's 8x8 digits; {'validation' if validation else 'test'} accuracy"
                    + (f"; {labelled.numel()} labelled training images" if labelled is not None else ""),
        input_kind="image",
        unlabelled_data=unlabelled_data,
    )


def _subset_batches(x: torch.Tensor, y: torch.Tensor, keep: torch.Tensor,
                    batch_size: int = 64) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """One epoch of the labelled subset `keep`: as many batches as the full set gives (so step counts and
    schedules mean the same), cut from a stream of fresh shuffles of `keep` (the same stream every call)."""
    b = min(batch_size, keep.numel())
    n_batches = -(-x.shape[0] // batch_size)
    g = torch.Generator().manual_seed(1)
    stream = torch.cat([keep[torch.randperm(keep.numel(), generator=g)]
                        for _ in range(-(-n_batches * b // keep.numel()))])
    for i in range(n_batches):
        idx = stream[i * b:(i + 1) * b]
        yield x[idx], y[idx]


def _unlabelled_batches(x: torch.Tensor, keep: torch.Tensor, batch_size: int = 64) -> Iterator[torch.Tensor]:
    """One shuffled pass (the same every call) over the training images outside `keep`, full batches only."""
    rest = torch.ones(x.shape[0], dtype=torch.bool)
    rest[keep] = False
    idx = rest.nonzero().flatten()
    idx = idx[torch.randperm(idx.numel(), generator=torch.Generator().manual_seed(2))]
    for i in range(0, idx.numel() - batch_size + 1, batch_size):
        yield x[idx[i:i + batch_size]]


def _register() -> None:  # what techniques need to know about DigitsCNN (techniques never import tasks)
    from condense.early_exit.model import SPLITTERS, split_digits_cnn

    SPLITTERS.register(DigitsCNN)(split_digits_cnn)


_register()
