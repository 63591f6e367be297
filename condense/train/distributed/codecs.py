"""Gradient codecs for the parameter server's push path: what a worker sends instead of its fp32 gradients.

The same compressors as the DDP communication hooks (`condense.train.distributed.hooks`), for one worker's
gradients rather than an all-reduce: "fp16"/"bf16" (half the bytes), "int8" (the hook's blockwise absmax code,
`int8_pack`, about 3.9x fewer bytes) and "powersgd" (torch's PowerSGD algorithm per worker: for each matrix M worth
compressing, P = orth(M Q), Q = M^T P, send P and Q; Q warm-starts the next step and the error M - P Q^T is fed
back into the next step's gradient; plain fp32 before `powersgd_start` pushes). The DDP hook all-reduces P before
computing Q so that every rank agrees on one approximation; a parameter server decodes each worker's P Q^T and
averages the products, so no collective is needed.

A codec is built once per worker from the TrainConfig (`PUSH_CODECS.get(name)(cfg)`); `encode(grads)` returns the
payload (a list of tensors, what crosses RPC), `decode(payload, shapes)` (on the server) the fp32 gradients.
"""
from __future__ import annotations

from typing import Any, Callable

import torch

from condense.core.registry import Registry
from condense.train.distributed.hooks import int8_pack, int8_unpack


class Codec:
    """No compression: the fp32 gradients themselves."""

    def encode(self, grads: list[torch.Tensor]) -> list[torch.Tensor]:
        return [g.detach().float().contiguous() for g in grads]

    def decode(self, payload: list[torch.Tensor], shapes: list[torch.Size]) -> list[torch.Tensor]:
        return [p.float().view(s) for p, s in zip(payload, shapes)]


def _flat(grads: list[torch.Tensor]) -> torch.Tensor:
    return torch.cat([g.detach().reshape(-1).float() for g in grads])  # (n,)


def _split(flat: torch.Tensor, shapes: list[torch.Size]) -> list[torch.Tensor]:
    return [t.view(s) for t, s in zip(flat.split([s.numel() for s in shapes]), shapes)]


class HalfCodec(Codec):
    """One flat fp16 or bf16 tensor: 2 bytes per gradient."""

    def __init__(self, dtype: torch.dtype):
        self.dtype = dtype

    def encode(self, grads: list[torch.Tensor]) -> list[torch.Tensor]:
        return [_flat(grads).to(self.dtype)]

    def decode(self, payload: list[torch.Tensor], shapes: list[torch.Size]) -> list[torch.Tensor]:
        return _split(payload[0].float(), shapes)


class Int8Codec(Codec):
    """One packed uint8 tensor (`int8_pack`): `int8_bytes(n)` bytes for n gradients."""

    def encode(self, grads: list[torch.Tensor]) -> list[torch.Tensor]:
        return [int8_pack(_flat(grads))]

    def decode(self, payload: list[torch.Tensor], shapes: list[torch.Size]) -> list[torch.Tensor]:
        return _split(int8_unpack(payload[0], sum(s.numel() for s in shapes)), shapes)


def powersgd_compresses(shape: torch.Size, rank: int) -> bool:
    """Whether PowerSGD sends a gradient of `shape` as rank-`rank` factors: a matrix (dims after the first
    flattened) whose factors are at least 2x smaller (torch's min_compression_rate=2).

    Example:
        >>> powersgd_compresses(torch.Size([64, 64]), 4), powersgd_compresses(torch.Size([8]), 1)
        (True, False)
    """
    if len(shape) < 2:
        return False
    rows, cols = shape[0], shape.numel() // shape[0]
    return 2 * rank * (rows + cols) <= rows * cols


class PowerSGDCodec(Codec):
    """Per-worker PowerSGD with error feedback and warm start. Payload: [rest (fp32, flat), P_1, Q_1, P_2, ...],
    the matrices in parameter order; before `start` pushes, everything in `rest`."""

    def __init__(self, rank: int, start: int, seed: int):
        self.rank, self.start, self.seed = rank, start, seed
        self.pushes = 0
        self.q: dict[int, torch.Tensor] = {}
        self.error: dict[int, torch.Tensor] = {}

    def _compressed(self, shapes: list[torch.Size], pushes: int) -> list[int]:
        return [i for i, s in enumerate(shapes) if pushes >= self.start and powersgd_compresses(s, self.rank)]

    def encode(self, grads: list[torch.Tensor]) -> list[torch.Tensor]:
        shapes = [g.shape for g in grads]
        mats = self._compressed(shapes, self.pushes)
        self.pushes += 1
        rest = [grads[i] for i in range(len(grads)) if i not in set(mats)]
        payload = [_flat(rest) if rest else torch.zeros(0)]
        for i in mats:
            m = grads[i].detach().float().reshape(shapes[i][0], -1)  # (rows, cols)
            if i in self.error:
                m = m + self.error[i]
            if i not in self.q:
                gen = torch.Generator().manual_seed(self.seed + i)
                self.q[i] = torch.randn(m.shape[1], self.rank, generator=gen)  # (cols, r)
            p = torch.linalg.qr(m @ self.q[i]).Q   # (rows, r), orthonormal columns
            q = m.T @ p                             # (cols, r)
            self.error[i] = m - p @ q.T             # (rows, cols): what this push leaves out, sent next time
            self.q[i] = q
            payload += [p.contiguous(), q.contiguous()]
        return payload

    def decode(self, payload: list[torch.Tensor], shapes: list[torch.Size]) -> list[torch.Tensor]:
        n_mats = (len(payload) - 1) // 2
        mats = [i for i, s in enumerate(shapes) if powersgd_compresses(s, self.rank)] if n_mats else []
        if len(mats) != n_mats:
            raise ValueError(f"PowerSGD payload holds {n_mats} matrices, the model {len(mats)}; the workers and the "
                             "server must use the same powersgd_rank")
        rest_shapes = [s for i, s in enumerate(shapes) if i not in set(mats)]
        rest = iter(_split(payload[0], rest_shapes)) if rest_shapes else iter(())
        out, k = [], 1
        for i, s in enumerate(shapes):
            if i in set(mats):
                out.append((payload[k] @ payload[k + 1].T).view(s))  # (rows, cols) -> shape
                k += 2
            else:
                out.append(next(rest))
        return out


# name (the TrainConfig.comm_hook value) -> fn(cfg) -> Codec
PUSH_CODECS: Registry[Callable[[Any], Codec]] = Registry("push codec")
PUSH_CODECS.register("none", lambda cfg: Codec())
PUSH_CODECS.register("fp16", lambda cfg: HalfCodec(torch.float16))
PUSH_CODECS.register("bf16", lambda cfg: HalfCodec(torch.bfloat16))
PUSH_CODECS.register("int8", lambda cfg: Int8Codec())
PUSH_CODECS.register("powersgd", lambda cfg: PowerSGDCodec(cfg.powersgd_rank, cfg.powersgd_start, cfg.seed))


def payload_bytes(payload: list[torch.Tensor]) -> int:
    """Tensor bytes in a payload (what RPC carries besides a few bytes of framing)."""
    return sum(t.numel() * t.element_size() for t in payload)
