"""How the model is spread over processes: "single" (one process), "ddp" (DistributedDataParallel: full replica
per process, gradients averaged, optional compression hook) and "fsdp" (FSDP2 `fully_shard`: parameters, grads and
optimizer state sharded; each nn.ModuleList element, e.g. a transformer block, is its own unit).

A strategy also knows how to write and read the model + optimizer part of a checkpoint: a full safetensors file
and an optimizer state dict from rank 0 for single/DDP, and a sharded torch.distributed.checkpoint (every rank
writes its shards) for FSDP.
"""
from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any, ContextManager

import torch
import torch.distributed as dist
from torch import nn

from condense.core.registry import Registry
from condense.errors import ConfigError
from condense.train.checkpoint import load_tensors, save_tensors
from condense.train.distributed import World
from condense.train.distributed.hooks import COMM_HOOKS

STRATEGIES: Registry[type] = Registry("distribution strategy")


class Single:
    """One process (or a replica whose gradients someone else averages)."""

    def __init__(self, cfg: Any, world: World, device: torch.device):
        self.cfg, self.world, self.device = cfg, world, device

    @classmethod
    def check_config(cls, cfg: Any) -> None:
        """Refuse (ConfigError naming the fix) a TrainConfig this wrapper cannot run; called when it is built."""

    def wrap(self, model: nn.Module) -> nn.Module:
        return model

    def unwrap(self, wrapped: nn.Module) -> nn.Module:
        return wrapped

    def no_sync(self, wrapped: nn.Module) -> ContextManager:
        return contextlib.nullcontext()

    def write_parts(self, folder: Path, wrapped: nn.Module, opt: torch.optim.Optimizer) -> None:
        if self.world.is_main:
            from safetensors.torch import save_file

            state = {k: v.detach().cpu().contiguous() for k, v in self.unwrap(wrapped).state_dict().items()}
            save_file(state, str(folder / "model.safetensors"))
            save_tensors(folder / "optim.pt", opt.state_dict())

    def load_parts(self, folder: Path, wrapped: nn.Module, opt: torch.optim.Optimizer) -> None:
        from safetensors.torch import load_file

        self.unwrap(wrapped).load_state_dict(load_file(str(folder / "model.safetensors"), device=str(self.device)))
        opt.load_state_dict(load_tensors(folder / "optim.pt"))


STRATEGIES.register("single", Single)


@STRATEGIES.register("ddp")
class DDP(Single):
    def wrap(self, model: nn.Module) -> nn.Module:
        from torch.nn.parallel import DistributedDataParallel

        ids = [self.device.index] if self.device.type == "cuda" else None
        ddp = DistributedDataParallel(model, device_ids=ids, bucket_cap_mb=getattr(self.cfg, "ddp_bucket_mb", 25.0))
        if self.cfg.comm_hook != "none":
            ddp.register_comm_hook(*COMM_HOOKS.get(self.cfg.comm_hook)(self.cfg))
        return ddp

    def unwrap(self, wrapped: nn.Module) -> nn.Module:
        return wrapped.module

    def no_sync(self, wrapped: nn.Module) -> ContextManager:
        return wrapped.no_sync()


@STRATEGIES.register("fsdp")
class FSDP(Single):
    @classmethod
    def check_config(cls, cfg: Any) -> None:
        if getattr(cfg, "comm_hook", "none") != "none":
            raise ConfigError("comm_hook applies to DDP only; use strategy='ddp' or comm_hook='none'")

    def wrap(self, model: nn.Module) -> nn.Module:
        from torch.distributed.fsdp import fully_shard

        for m in model.modules():
            if isinstance(m, nn.ModuleList):
                for block in m:
                    fully_shard(block)
        fully_shard(model)
        return model

    def no_sync(self, wrapped: nn.Module) -> ContextManager:
        @contextlib.contextmanager
        def ctx() -> Any:
            wrapped.set_requires_gradient_sync(False)
            try:
                yield
            finally:
                wrapped.set_requires_gradient_sync(True)

        return ctx()

    def write_parts(self, folder: Path, wrapped: nn.Module, opt: torch.optim.Optimizer) -> None:
        import torch.distributed.checkpoint as dcp
        from torch.distributed.checkpoint.state_dict import get_state_dict

        msd, osd = get_state_dict(wrapped, opt)
        dcp.save({"model": msd, "optim": osd}, checkpoint_id=str(folder / "dcp"))

    def load_parts(self, folder: Path, wrapped: nn.Module, opt: torch.optim.Optimizer) -> None:
        from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict

        from condense.core.safe_pickle import safe_dcp_load

        msd, osd = get_state_dict(wrapped, opt)
        state = {"model": msd, "optim": osd}
        safe_dcp_load(state, folder / "dcp")  # dcp's own load unpickles .metadata and shard items: this runs none
        set_state_dict(wrapped, opt, model_state_dict=state["model"], optim_state_dict=state["optim"])


def strategy_for(cfg: Any, world: World, device: torch.device) -> Single:
    """The strategy `cfg.strategy` names; "auto" is DDP when more than one process runs, else single."""
    name = cfg.strategy
    if name == "auto":
        name = "ddp" if world.size > 1 else "single"
    if name != "single" and not dist.is_initialized():
        raise ConfigError(f"strategy={name!r} needs several processes: launch with `condense train --nproc N` "
                          "(torchrun), or use strategy='single'")
    return STRATEGIES.get(name)(cfg, world, device)
