"""`FuseConfig`: swap a model's blocks for leaner equivalents (same outputs, fewer calls per token).

A block type finds its fused form in `FUSERS` (a type registry), so another architecture adds one entry. The
swap changes the state dict's names (q/k/v become one `qkv`), so it is recorded in the lineage and replayed on
the task's skeleton when an artifact loads, before the tensors are read.

Example:
    >>> import torch
    >>> from condense.tasks.gpt import GPT, GPTConfig
    >>> from condense.core.transforms import apply_
    >>> m = GPT(GPTConfig(block_size=8, n_layer=2, n_head=2, n_embd=8)).eval()
    >>> x = torch.zeros(1, 4, dtype=torch.long)
    >>> ref = m(x)
    >>> f = apply_(m, FuseConfig())
    >>> type(f.blocks[0]).__name__, bool(torch.allclose(f(x), ref, atol=1e-6))
    ('FusedBlock', True)
"""
from __future__ import annotations

from typing import Any, Callable

from torch import nn

from condense.core.config import config
from condense.core.registry import TypeRegistry
from condense.core.transforms import TransformContext, register_family, register_transform
from condense.errors import ConfigError
from condense.fusion.gpt import FusedBlock

# block type -> fn(block) -> its fused replacement; registered by the module defining the block (tinygpt's
# condense/tasks/gpt.py registers `FusedBlock.from_block` for `Block`).
FUSERS: TypeRegistry[Callable[[nn.Module], nn.Module]] = TypeRegistry("block fuser")


@config
class FuseConfig:
    """Replace every block that has a registered fused form (e.g. tinygpt's `gpt.Block` -> `FusedBlock`).

    Args:
        include: module-name prefixes to fuse under ("" = the whole model).

    Apply it after pruning (the fused block has one qkv projection, which head pruning does not know) and
    before or after quantization (quantized Linears inside a fused block run through their own modules).

    Example:
        >>> FuseConfig().to_dict()
        {'type': 'FuseConfig', 'version': 1, 'include': ''}
    """

    include: str = ""

    def __post_init__(self) -> None:
        if not isinstance(self.include, str):
            raise ConfigError(f"FuseConfig.include must be a module-name prefix string, got {self.include!r}")


def _fuse(model: nn.Module, prefix: str) -> list[str]:
    names = [n for n, m in model.named_modules() if n.startswith(prefix) and n and FUSERS.find(m) is not None
             and not isinstance(m, FusedBlock)]
    modules = dict(model.named_modules())
    for name in names:
        parent_name, _, child = name.rpartition(".")
        parent = modules[parent_name] if parent_name else model
        new = FUSERS.find(modules[name])(modules[name])
        new.train(modules[name].training)
        if isinstance(parent, (nn.ModuleList, nn.Sequential)):
            parent[int(child)] = new
        else:
            setattr(parent, child, new)
    return names


def fuse_blocks(model: nn.Module, cfg: FuseConfig, ctx: TransformContext) -> nn.Module:
    """Swap the blocks in place; a ConfigError if there is nothing to fuse."""
    names = _fuse(model, cfg.include)
    if not names:
        raise ConfigError(f"FuseConfig found no block it knows how to fuse under {cfg.include or 'the model'} "
                          f"({type(model).__name__}); fusers are registered by the module defining a block type, "
                          "e.g. condense.fusion.api.FUSERS.register(MyBlock)(my_fuser) (tinygpt's gpt.Block has one)")
    ctx.record(fused=names)
    return model


def _replay(model: nn.Module, cfg: FuseConfig, details: dict[str, Any]) -> nn.Module:
    _fuse(model, cfg.include)
    return model


# -- registered transforms ----------------------------------------------------------------------------------------
register_family("fuse", default="blocks", noun="fusion config")
register_transform(FuseConfig, family="fuse", name="blocks", replay=_replay)(fuse_blocks)
