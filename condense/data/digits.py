"""scikit-learn's bundled 8x8 digits (1,797 images, shipped with the package: no download), fixed split."""
from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import torch


@dataclass(frozen=True)
class DigitsSplit:
    x_train: torch.Tensor  # (N, 1, 8, 8) float32 in [0, 1]
    y_train: torch.Tensor  # (N,) int64
    x_test: torch.Tensor
    y_test: torch.Tensor


@lru_cache(maxsize=1)
def digits_split(test_fraction: float = 0.2, seed: int = 0) -> DigitsSplit:
    """The fixed, stratified train/test split (same every run).

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
    return DigitsSplit(torch.from_numpy(xtr), torch.from_numpy(ytr), torch.from_numpy(xte), torch.from_numpy(yte))
