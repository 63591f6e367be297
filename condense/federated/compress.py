"""Codecs for client updates (local weights - global weights): none, int8, top-k and low-rank.

An update is one flat float32 vector over the model's floating-point state (see `Layout`); a codec turns it into a
few numpy arrays (the payload a client sends) and back. Payloads are packed into as few arrays as possible (one
int8 array and one array of scales for int8; indices and values for top-k), because every array in a message
carries a header: on a 100k-parameter model, per-tensor arrays would cost int8 more than 2% of its bytes.

`ErrorFeedback` wraps any codec: what the codec dropped this round (the residual) is added to the next update, so
the error does not accumulate (the usual companion of top-k).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch

from condense.errors import ConfigError

Payload = dict[str, np.ndarray]


@dataclass(frozen=True)
class Layout:
    """Names and shapes of the tensors a flat update vector is made of, in order."""

    names: tuple[str, ...]
    shapes: tuple[tuple[int, ...], ...]

    @classmethod
    def of(cls, state: dict[str, torch.Tensor]) -> "Layout":
        """The floating-point tensors of `state`; a tensor shared under two names (tied weights) counts once."""
        keys, seen = [], set()
        for k, v in state.items():
            ident = (v.untyped_storage().data_ptr(), v.storage_offset(), tuple(v.shape), tuple(v.stride()))
            if v.is_floating_point() and ident not in seen:
                seen.add(ident)
                keys.append(k)
        return cls(tuple(keys), tuple(tuple(state[k].shape) for k in keys))

    @property
    def sizes(self) -> list[int]:
        return [math.prod(s) for s in self.shapes]

    @property
    def numel(self) -> int:
        return sum(self.sizes)

    def flatten(self, state: dict[str, torch.Tensor]) -> torch.Tensor:
        return torch.cat([state[k].detach().reshape(-1).float().cpu() for k in self.names])  # (numel,)

    def unflatten(self, flat: torch.Tensor) -> dict[str, torch.Tensor]:
        return {k: p.reshape(s) for k, p, s in zip(self.names, torch.split(flat, self.sizes), self.shapes)}


class Codec:
    """encode(flat update) -> payload arrays; decode(payload) -> flat update (an approximation when lossy)."""

    lossy = True

    def __init__(self, layout: Layout):
        self.layout = layout

    def encode(self, x: torch.Tensor) -> Payload:
        raise NotImplementedError

    def decode(self, payload: Payload) -> torch.Tensor:
        raise NotImplementedError


CODECS: dict[str, Callable[..., Codec]] = {}


def register(name: str) -> Callable[[type], type]:
    def deco(cls: type) -> type:
        CODECS[name] = cls
        return cls
    return deco


def make_codec(name: str, layout: Layout, **options: float) -> Codec:
    """The codec `name` for `layout` (options: per_row for int8, fraction for topk, rank for lowrank).

    Example:
        >>> c = make_codec("topk", Layout(("w",), ((10,),)), fraction=0.2)
        >>> c.encode(torch.arange(10.0))["indices"].tolist()
        [9, 8]
    """
    cls = CODECS.get(name)
    if cls is None:
        raise ConfigError(f"unknown codec {name!r}; choose one of {sorted(CODECS)}")
    return cls(layout, **options)


@register("none")
class Dense(Codec):
    """The update as float32, one array."""

    lossy = False

    def __init__(self, layout: Layout, **_: float):
        super().__init__(layout)

    def encode(self, x: torch.Tensor) -> Payload:
        return {"values": x.float().numpy()}

    def decode(self, payload: Payload) -> torch.Tensor:
        return torch.from_numpy(np.asarray(payload["values"], dtype=np.float32).copy())


@register("int8")
class Int8(Codec):
    """Symmetric int8 with a float32 scale per tensor, or per row (first dimension) with per_row=True.

    Each entry is off by at most half its scale (scale = max |x| / 127 over the tensor or row).
    """

    def __init__(self, layout: Layout, per_row: bool = False, **_: float):
        super().__init__(layout)
        self.per_row = bool(per_row)
        rows = [(s[0] if (per_row and len(s) >= 2) else 1) for s in layout.shapes]
        # (groups,) group lengths: each tensor split into its rows (or kept whole)
        self.group_sizes = [n // r for n, r in zip(layout.sizes, rows) for _ in range(r)]

    def _groups(self, x: torch.Tensor) -> list[torch.Tensor]:
        return list(torch.split(x, self.group_sizes))

    def encode(self, x: torch.Tensor) -> Payload:
        groups = self._groups(x.float())
        scales = torch.stack([g.abs().max() if g.numel() else torch.zeros(()) for g in groups]) / 127.0  # (G,)
        safe = torch.where(scales > 0, scales, torch.ones_like(scales))
        per_entry = torch.repeat_interleave(safe, torch.tensor(self.group_sizes))  # (numel,)
        q = torch.round(x.float() / per_entry).clamp(-127, 127).to(torch.int8)
        return {"q": q.numpy(), "scales": scales.numpy()}

    def scales_per_entry(self, payload: Payload) -> torch.Tensor:
        return torch.repeat_interleave(torch.from_numpy(np.asarray(payload["scales"], dtype=np.float32).copy()),
                                       torch.tensor(self.group_sizes))

    def decode(self, payload: Payload) -> torch.Tensor:
        q = torch.from_numpy(np.asarray(payload["q"], dtype=np.int8).copy()).float()
        return q * self.scales_per_entry(payload)


@register("topk")
class TopK(Codec):
    """The k = max(1, round(fraction * numel)) entries of largest magnitude: int32 indices and float32 values."""

    def __init__(self, layout: Layout, fraction: float = 0.01, **_: float):
        super().__init__(layout)
        if not 0 < fraction <= 1:
            raise ConfigError(f"topk fraction must be in (0, 1], got {fraction}; e.g. 0.01 keeps 1% of entries")
        self.k = max(1, round(fraction * layout.numel))

    def encode(self, x: torch.Tensor) -> Payload:
        idx = torch.topk(x.abs(), self.k, sorted=True).indices
        return {"indices": idx.to(torch.int32).numpy(), "values": x[idx].float().numpy()}

    def decode(self, payload: Payload) -> torch.Tensor:
        out = torch.zeros(self.layout.numel)
        idx = torch.from_numpy(np.asarray(payload["indices"], dtype=np.int32).astype(np.int64))
        out[idx] = torch.from_numpy(np.asarray(payload["values"], dtype=np.float32).copy())
        return out


@register("lowrank")
class LowRank(Codec):
    """Each tensor of 2+ dimensions, viewed as (rows, rest), as its best rank-r approximation P @ Q (truncated
    SVD); tensors where P and Q would not be smaller than the tensor, and 1-D ones, are sent dense. One float32
    array holds everything; the decoder knows the shapes from the layout."""

    def __init__(self, layout: Layout, rank: int = 4, **_: float):
        super().__init__(layout)
        rank = int(rank)
        if rank < 1:
            raise ConfigError(f"lowrank rank must be >= 1, got {rank}; e.g. rank=4")
        self.plan: list[tuple[int, int, int]] = []  # per tensor (rows, cols, r); r == 0: dense
        for s, n in zip(layout.shapes, layout.sizes):
            m, c = (s[0], n // s[0]) if len(s) >= 2 else (1, n)
            r = min(rank, m, c)
            self.plan.append((m, c, r if len(s) >= 2 and r * (m + c) < m * c else 0))

    def encode(self, x: torch.Tensor) -> Payload:
        parts = []
        for t, (m, c, r) in zip(torch.split(x.float(), self.layout.sizes), self.plan):
            if r == 0:
                parts.append(t)
                continue
            u, s, vh = torch.linalg.svd(t.reshape(m, c), full_matrices=False)
            parts += [(u[:, :r] * s[:r]).reshape(-1), vh[:r].reshape(-1)]  # P (m, r), Q (r, c)
        return {"values": torch.cat(parts).numpy()}

    def decode(self, payload: Payload) -> torch.Tensor:
        v = torch.from_numpy(np.asarray(payload["values"], dtype=np.float32).copy())
        out, at = [], 0
        for m, c, r in self.plan:
            if r == 0:
                out.append(v[at:at + m * c])
                at += m * c
                continue
            p = v[at:at + m * r].reshape(m, r)
            q = v[at + m * r:at + m * r + r * c].reshape(r, c)
            out.append((p @ q).reshape(-1))
            at += r * (m + c)
        return torch.cat(out)


class ErrorFeedback:
    """Adds last round's residual (what the codec dropped) to the update before encoding; keeps the new one.

    Example:
        >>> ef = ErrorFeedback(make_codec("topk", Layout(("w",), ((4,),)), fraction=0.25))
        >>> ef.encode(torch.tensor([1.0, 0.5, 0.0, 0.0]))["values"].tolist(), ef.residual.tolist()
        ([1.0], [0.0, 0.5, 0.0, 0.0])
    """

    def __init__(self, codec: Codec, residual: torch.Tensor | None = None):
        self.codec = codec
        self.residual = residual if residual is not None else torch.zeros(codec.layout.numel)

    def encode(self, x: torch.Tensor) -> Payload:
        u = x.float() + self.residual
        payload = self.codec.encode(u)
        self.residual = u - self.codec.decode(payload)
        return payload
