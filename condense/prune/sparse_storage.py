"""Sparse storage: a mostly-zero float tensor is saved as a 1-bit-per-element bitmask plus its non-zero values.

Why: a pruned model computes with dense kernels, so it is not faster, but it should at least be smaller on disk.
At sparsity s a float32 tensor of n elements takes n/8 + 4·(1 - s)·n bytes instead of 4n: 13% of dense at 90%.
The encoding is lossless up to the sign of zero (a -0.0, which `w * mask` produces for negative w, is stored
as 0.0: equal in every comparison and product; NaNs are kept) and applies to any floating tensor
of at least `MIN_NUMEL` elements with at least `MIN_SPARSITY` zeros, whatever made it sparse. It is registered
in the artifact layer's `ENCODINGS`, so `condense.save` / `condense.load` use it with no option to set.

Example:
    >>> t = torch.zeros(4, 32); t[0, :3] = torch.tensor([1., -2., 3.])
    >>> parts = BitmaskEncoding().encode(t)
    >>> parts["bitmask"].numel(), parts["values"].tolist()
    (16, [1.0, -2.0, 3.0])
    >>> torch.equal(BitmaskEncoding().decode(parts, (4, 32)), t)
    True
"""
from __future__ import annotations

import math

import numpy as np
import torch

from condense.core.artifact import ENCODINGS, TensorEncoding
from condense.errors import ArtifactError

MIN_SPARSITY = 0.5  # below this, dense storage is simpler and the saving small
MIN_NUMEL = 64      # biases and norm vectors are not worth a bitmask


class BitmaskEncoding(TensorEncoding):
    """Parts: "bitmask" (uint8, element i is bit 7 - i % 8 of byte i // 8, row-major) and "values" (the kept
    elements in row-major order, in the tensor's own dtype)."""

    def encode(self, tensor: torch.Tensor) -> dict[str, torch.Tensor] | None:
        if not tensor.is_floating_point() or tensor.numel() < MIN_NUMEL:
            return None
        flat = tensor.detach().reshape(-1)
        keep = flat != 0  # (B,) True for non-zeros and NaN; -0.0 == 0 is dropped
        if int(keep.sum()) > (1 - MIN_SPARSITY) * flat.numel():
            return None
        bits = torch.from_numpy(np.packbits(keep.cpu().numpy()))  # (ceil(n / 8),) uint8
        return {"bitmask": bits, "values": flat[keep].clone()}

    def decode(self, parts: dict[str, torch.Tensor], shape: tuple[int, ...]) -> torch.Tensor:
        n = math.prod(shape)
        bits, values = parts["bitmask"], parts["values"]
        if bits.dtype != torch.uint8 or bits.dim() != 1 or bits.numel() != math.ceil(n / 8) or values.dim() != 1:
            raise ArtifactError(f"sparse tensor of shape {list(shape)} needs a 1-D uint8 bitmask of "
                                f"{math.ceil(n / 8)} bytes and 1-D values; got {bits.dtype} {list(bits.shape)} and "
                                f"{list(values.shape)}: re-create the artifact")
        keep = torch.from_numpy(np.unpackbits(bits.numpy(), count=n).astype(bool))  # (n,)
        if int(keep.sum()) != values.numel():
            raise ArtifactError(f"sparse tensor of shape {list(shape)}: its bitmask keeps {int(keep.sum())} elements "
                                f"but {values.numel()} values are stored: re-create the artifact")
        out = torch.zeros(n, dtype=values.dtype)
        out[keep] = values
        return out.view(shape)


ENCODINGS.register("sparse-bitmask", BitmaskEncoding())
