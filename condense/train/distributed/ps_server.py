"""The parameter server: the weights and the optimizer state, updated by the gradients workers push over
torch.distributed.rpc (the pattern of PyTorch's RPC parameter-server and batch-update tutorials).

One server lives on rank 0 (module global `_SERVER`, reached by the module-level RPC functions below, which is how
RPC finds code: by module and name). A push carries a worker's encoded gradients (`condense.train.distributed.
codecs`), the weights' version it computed them on, and its loss and sample counts; the reply is the weights after
the update (a fused push + pull, one round trip per step).

- sync: the server waits for every worker's gradients of version v (`@rpc.functions.async_execution`: the RPC
  threads are not blocked while waiting), averages them in rank order, takes one optimizer step and answers all
  workers with version v + 1: the same step as one process on the union of the batches.
- async: each gradient is applied as it arrives, unless it is stale: staleness = the server's version minus the
  version it was computed on; a gradient older than `max_staleness` is dropped (counted, never applied) and the
  worker gets the current weights back.

Bytes are counted where RPC carries them: the tensor bytes of remote pushes (payload) and of the weights sent back
(rank 0's own worker calls the server in-process and moves nothing).
"""
from __future__ import annotations

import threading
from typing import Any

import torch
import torch.distributed.rpc as rpc
from torch import nn

from condense.train.distributed.codecs import PUSH_CODECS, payload_bytes
from condense.train.optim import build_optimizer
from condense.train.schedules import lr_factor

_SERVER: "ParameterServer | None" = None


class ParameterServer:
    """Holds fp32 CPU copies of `model`'s trainable parameters and the optimizer over them."""

    def __init__(self, model: nn.Module, cfg: Any, world: int):
        self.cfg, self.world = cfg, world
        self.names = [n for n, p in model.named_parameters() if p.requires_grad]
        self.params = [p.detach().cpu().float().clone().requires_grad_(True)
                       for p in model.parameters() if p.requires_grad]
        self.shapes = [p.shape for p in self.params]
        self.weight_bytes = sum(p.numel() * 4 for p in self.params)
        self.opt = build_optimizer(self.params, cfg)
        self.base_lrs = [g["lr"] for g in self.opt.param_groups]
        self.codec = PUSH_CODECS.get(cfg.comm_hook)(cfg)  # the server only decodes
        self.version = 0
        self.lock = threading.Lock()
        self.losses: list[float] = []   # one per applied update (sync: the workers' mean)
        self.samples = self.tokens = 0  # in applied gradients
        self.staleness: list[int] = []  # of every applied gradient (async)
        self.dropped = 0                # stale gradients refused (async)
        self.bytes = 0                  # tensor bytes RPC carried so far
        self.bytes_at: list[int] = []   # self.bytes after each update
        self._grads: dict[int, list[torch.Tensor]] = {}
        self._meta: dict[int, tuple[float, int, int]] = {}
        self._fut: torch.futures.Future = torch.futures.Future()

    def snapshot(self) -> tuple[int, list[torch.Tensor]]:
        """(version, a copy of the weights): the copy is taken under the lock, so it is never half-updated."""
        return self.version, [p.detach().clone() for p in self.params]

    def _apply(self, grads: list[torch.Tensor], loss: float, samples: int, tokens: int) -> None:
        factor = lr_factor(self.version, self.cfg)
        for g, base in zip(self.opt.param_groups, self.base_lrs):
            g["lr"] = base * factor
        for p, g in zip(self.params, grads):
            p.grad = g
        if self.cfg.grad_clip:
            torch.nn.utils.clip_grad_norm_(self.params, self.cfg.grad_clip)
        self.opt.step()
        self.version += 1
        self.losses.append(loss)
        self.samples += samples
        self.tokens += tokens
        self.bytes_at.append(self.bytes)

    def _count(self, rank: int, payload: list[torch.Tensor]) -> None:
        if rank != 0:
            self.bytes += payload_bytes(payload) + self.weight_bytes  # the push and the weights sent back

    def push_sync(self, rank: int, version: int, payload: list[torch.Tensor], loss: float, samples: int,
                  tokens: int) -> torch.futures.Future:
        """Worker `rank`'s gradients of `version`; the future resolves to (version + 1, weights) once all have
        pushed and the averaged step is taken."""
        grads = self.codec.decode(payload, self.shapes)
        done = None
        with self.lock:
            if version != self.version or rank in self._grads:
                raise RuntimeError(f"sync push from rank {rank} for version {version}, server at {self.version}")
            self._grads[rank], self._meta[rank] = grads, (loss, samples, tokens)
            self._count(rank, payload)
            fut = self._fut
            if len(self._grads) == self.world:
                ranks = range(self.world)  # rank order: the average does not depend on arrival order
                avg = [torch.stack(gs).sum(0) / self.world for gs in zip(*(self._grads[r] for r in ranks))]
                self._apply(avg, sum(self._meta[r][0] for r in ranks) / self.world,
                            sum(self._meta[r][1] for r in ranks), sum(self._meta[r][2] for r in ranks))
                self._grads, self._meta, self._fut = {}, {}, torch.futures.Future()
                done = self.snapshot()
        if done is not None:
            fut.set_result(done)  # outside the lock: completing it sends the RPC replies
        return fut

    def push_async(self, rank: int, version: int, payload: list[torch.Tensor], loss: float, samples: int,
                   tokens: int) -> tuple[int, list[torch.Tensor]]:
        """Apply worker `rank`'s gradients of `version` now unless staler than `max_staleness` (or training is
        over); returns the current (version, weights)."""
        grads = self.codec.decode(payload, self.shapes)
        with self.lock:
            self._count(rank, payload)
            if self.version < self.cfg.steps:
                stale = self.version - version
                if stale > self.cfg.max_staleness:
                    self.dropped += 1
                else:
                    self.staleness.append(stale)
                    self._apply(grads, loss, samples, tokens)
            return self.snapshot()

    def pull(self) -> tuple[int, list[torch.Tensor]]:
        with self.lock:
            return self.snapshot()

    def stats(self) -> dict[str, Any]:
        """What the run's summary reports about the server."""
        s = self.staleness
        return {"ps_mode": self.cfg.ps_mode, "updates": self.version, "dropped_stale": self.dropped,
                "max_staleness_seen": max(s) if s else 0, "mean_staleness": sum(s) / len(s) if s else 0.0,
                "rpc_bytes": self.bytes, "push_codec": self.cfg.comm_hook}


# -- what workers call over RPC (module-level functions: RPC pickles them by name) -------------------------------
@rpc.functions.async_execution
def remote_push_sync(*args: Any) -> torch.futures.Future:
    assert _SERVER is not None
    return _SERVER.push_sync(*args)


def remote_push_async(*args: Any) -> tuple[int, list[torch.Tensor]]:
    assert _SERVER is not None
    return _SERVER.push_async(*args)


def remote_pull() -> tuple[int, list[torch.Tensor]]:
    assert _SERVER is not None
    return _SERVER.pull()


def start_server(model: nn.Module, cfg: Any, world: int) -> ParameterServer:
    """Create this process's server (rank 0), reachable by the functions above."""
    global _SERVER
    _SERVER = ParameterServer(model, cfg, world)
    return _SERVER


def stop_server() -> None:
    global _SERVER
    _SERVER = None
