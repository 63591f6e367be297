"""scikit-learn's bundled 8x8 digits (1,797 images, shipped with the package: no download), fixed split."""
from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import torch

from condense.errors import ConfigError


@dataclass(frozen=True)
class DigitsSplit:
    x_train: torch.Tensor  # (N, 1, 8, 8) float32 in [0, 1]
    y_train: torch.Tensor  # (N,) int64
    x_test: torch.Tensor
    y_test: torch.Tensor


@lru_cache(maxsize=1)
def digits_split(test_fraction: float = 0.2, seed: int = 0, validation: float = 0.0) -> DigitsSplit:
    """The fixed, stratified train/test split (same every run).

    `validation` > 0: a split for choosing settings without looking at the test images: this fraction of the
    training images (stratified, fixed) takes the place of the test split, and training uses the rest.

    Example:
        >>> s = digits_split()
        >>> s.x_train.shape[1:], int(s.y_test.max())
        (torch.Size([1, 8, 8]), 9)
    """
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    d = load_digits()
    x = (d.images.astype(np.float32) / 16.0)[:, None]  # (N, 1, 8, 8)
    y = d.target.astype(np.int64)
    xtr, xte, ytr, yte = train_test_split(x, y, test_size=test_fraction, random_state=seed, stratify=y)
    if validation:
        if not 0 < validation < 1:
            raise ConfigError(f"validation must be a fraction in (0, 1), got {validation!r}; e.g. 0.2")
        xtr, xte, ytr, yte = train_test_split(xtr, ytr, test_size=validation, random_state=seed, stratify=ytr)
    return DigitsSplit(torch.from_numpy(xtr), torch.from_numpy(ytr), torch.from_numpy(xte), torch.from_numpy(yte))


def labelled_subset(y: torch.Tensor, *, fraction: float | None = None, per_class: int | None = None,
                    seed: int = 0) -> torch.Tensor:
    """Indices (sorted) of the samples of `y` whose labels are kept: a fixed, stratified, seeded subset.

    Each class c keeps `per_class` samples, or round(fraction * n_c) of its n_c (at least 1), drawn by a generator
    seeded with `seed`; the rest are the unlabelled data of semi-supervised training.

    Example:
        >>> y = torch.tensor([0] * 10 + [1] * 20)
        >>> torch.bincount(y[labelled_subset(y, fraction=0.1)]).tolist()
        [1, 2]
    """
    if (fraction is None) == (per_class is None):
        raise ConfigError("give exactly one of fraction= (e.g. 0.05) and per_class= (e.g. 5)")
    g = torch.Generator().manual_seed(seed)
    keep = []
    for c in torch.unique(y).tolist():
        idx = (y == c).nonzero().flatten()
        k = per_class if per_class is not None else max(1, round(float(fraction) * idx.numel()))
        if k > idx.numel():
            raise ConfigError(f"class {c} has {idx.numel()} samples, fewer than the {k} labels asked for; lower it")
        keep.append(idx[torch.randperm(idx.numel(), generator=g)[:k]])
    return torch.cat(keep).sort().values
