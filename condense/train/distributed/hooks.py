"""DDP communication hooks for gradient compression, and a counter of the bytes they hand to collectives.

Hooks: "allreduce" (plain fp32 all-reduce, the reference), "fp16"/"bf16" (torch's default_hooks: halve the
bytes), "powersgd" (torch's PowerSGD: low-rank P, Q factors with error feedback) and "int8" (ours, below).

Bytes are counted where the hooks call `torch.distributed.all_reduce`/`all_gather`: the payload each rank hands to
the collective per step (what it contributes; a ring all-reduce moves about 2(n-1)/n times that over the wire).
`count_bytes()` patches those two functions for its duration, so every hook (ours and torch's, including PowerSGD's
deferred second all-reduce) is counted the same way.
"""
from __future__ import annotations

import contextlib
import threading
from typing import Any, Callable, Iterator

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch.distributed.algorithms.ddp_comm_hooks import default_hooks, powerSGD_hook

from condense.core.registry import Registry

INT8_BLOCK = 256  # elements sharing one fp32 scale in the int8 hook

# name -> fn(cfg) -> (state, hook) for DistributedDataParallel.register_comm_hook
COMM_HOOKS: Registry[Callable[[Any], tuple[Any, Callable]]] = Registry("communication hook")


class ByteCounter:
    """Bytes handed to collectives (thread-safe: torch runs hook callbacks on its own threads)."""

    def __init__(self) -> None:
        self.bytes = 0
        self.calls = 0
        self._lock = threading.Lock()

    def add(self, n: int) -> None:
        with self._lock:
            self.bytes += n
            self.calls += 1


def _nbytes(t: torch.Tensor) -> int:
    return t.numel() * t.element_size()


@contextlib.contextmanager
def count_bytes(counter: ByteCounter) -> Iterator[ByteCounter]:
    """Count the payload bytes of every `dist.all_reduce` / `dist.all_gather` made inside the block.

    Example (single process: nothing is communicated):
        >>> with count_bytes(ByteCounter()) as c:
        ...     pass
        >>> c.bytes
        0
    """
    orig_ar, orig_ag = dist.all_reduce, dist.all_gather

    def all_reduce(tensor: torch.Tensor, *args: Any, **kwargs: Any) -> Any:
        counter.add(_nbytes(tensor))
        return orig_ar(tensor, *args, **kwargs)

    def all_gather(tensor_list: list, tensor: torch.Tensor, *args: Any, **kwargs: Any) -> Any:
        counter.add(_nbytes(tensor))
        return orig_ag(tensor_list, tensor, *args, **kwargs)

    dist.all_reduce, dist.all_gather = all_reduce, all_gather
    try:
        yield counter
    finally:
        dist.all_reduce, dist.all_gather = orig_ar, orig_ag


def int8_bytes(numel: int) -> int:
    """Bytes the int8 hook sends for a bucket of `numel` gradients: 1 per element + a 4-byte scale per block."""
    return numel + 4 * (-(-numel // INT8_BLOCK))


def int8_pack(flat: torch.Tensor) -> torch.Tensor:
    """Blockwise absmax int8 code of a flat tensor: (4 nb + n,) bytes, the nb fp32 scales first (aligned), then the
    n int8 codes; `int8_bytes(n)` long. Round-to-nearest keeps the error below half a step of each 256-element
    block's scale (max|g| / 127).

    Example:
        >>> x = torch.linspace(-1, 1, 300)
        >>> bool((int8_unpack(int8_pack(x), 300) - x).abs().max() <= 0.5 / 127 + 1e-7)
        True
    """
    n = flat.numel()
    nb = -(-n // INT8_BLOCK)
    x = F.pad(flat.detach().float(), (0, nb * INT8_BLOCK - n)).view(nb, INT8_BLOCK)    # (nb, BLOCK)
    scale = (x.abs().amax(dim=1) / 127.0).clamp_min(torch.finfo(torch.float32).tiny)   # (nb,)
    q = torch.round(x / scale[:, None]).clamp_(-127, 127).to(torch.int8).view(-1)[:n]  # (n,)
    return torch.cat([scale.view(torch.uint8), q.view(torch.uint8)])                   # (4 nb + n,)


def int8_unpack(packed: torch.Tensor, n: int) -> torch.Tensor:
    """The fp32 values (n,) that `int8_pack` coded into `packed`."""
    nb = -(-n // INT8_BLOCK)
    codes = F.pad(packed[4 * nb:].view(torch.int8).float(), (0, nb * INT8_BLOCK - n)).view(nb, INT8_BLOCK)
    return (codes * packed[:4 * nb].view(torch.float32)[:, None]).view(-1)[:n]


def int8_allreduce_hook(group, bucket):  # no annotations: DDP checks them at run time, strings fail
    """Average a gradient bucket across ranks in int8: blockwise absmax quantization (`int8_pack`), all-gather,
    dequantize, mean.

    Each rank sends `int8_bytes(n)` bytes instead of 4n (about 3.9x less). Summing int8 in the collective would
    overflow, so codes are gathered and summed after dequantization, in fp32.
    """
    buf = bucket.buffer()  # (n,) flat gradients
    n = buf.numel()
    world = dist.get_world_size(group)
    packed = int8_pack(buf)  # (4 nb + n,) bytes
    gathered = [torch.empty_like(packed) for _ in range(world)]
    fut = dist.all_gather(gathered, packed, group=group, async_op=True).get_future()

    def decode(_: Any) -> torch.Tensor:
        total = torch.zeros(n, dtype=torch.float32, device=buf.device)
        for p in gathered:
            total += int8_unpack(p, n)
        buf.copy_((total / world).to(buf.dtype))
        return buf

    return fut.then(decode)


@COMM_HOOKS.register("allreduce")
def _allreduce(cfg: Any) -> tuple[Any, Callable]:
    return None, default_hooks.allreduce_hook


@COMM_HOOKS.register("fp16")
def _fp16(cfg: Any) -> tuple[Any, Callable]:
    return None, default_hooks.fp16_compress_hook


def bf16_hook(state, bucket):  # no annotations: DDP checks them at run time
    """torch's bf16_compress_hook under another name: DDP refuses that name unless NCCL (CUDA), yet gloo
    all-reduces bf16 on CPU too."""
    return default_hooks.bf16_compress_hook(state, bucket)


@COMM_HOOKS.register("bf16")
def _bf16(cfg: Any) -> tuple[Any, Callable]:
    return None, bf16_hook


def serialized_powersgd_hook(state, bucket):  # no annotations: DDP checks them at run time
    """PowerSGD, one bucket at a time. PowerSGD all-reduces Q from a callback thread once P's all-reduce is done;
    with several buckets in flight the two processes can then issue their collectives in different orders, which
    gloo (CPU) detects as a size mismatch and aborts on. Waiting for each bucket keeps every process's order the
    same, at the cost of no longer overlapping communication with the rest of the backward pass. NCCL needs
    none of this: its futures complete as the work is enqueued, so the callback runs in order on the hook's thread."""
    fut = powerSGD_hook.powerSGD_hook(state, bucket)
    fut.wait()
    return fut


@COMM_HOOKS.register("powersgd")
def _powersgd(cfg: Any) -> tuple[Any, Callable]:
    state = powerSGD_hook.PowerSGDState(process_group=None, matrix_approximation_rank=cfg.powersgd_rank,
                                        start_powerSGD_iter=max(2, cfg.powersgd_start), min_compression_rate=2,
                                        use_error_feedback=True, warm_start=True, random_seed=cfg.seed)
    return state, (powerSGD_hook.powerSGD_hook if dist.get_backend() == "nccl" else serialized_powersgd_hook)


@COMM_HOOKS.register("int8")
def _int8(cfg: Any) -> tuple[Any, Callable]:
    return None, int8_allreduce_hook
