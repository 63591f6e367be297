"""Keeping a Hugging Face model consistent after blocks were removed from its block list.

`transformers` models know their depth twice besides the block list itself: the config's layer count
(`num_hidden_layers`, which GPT-2 maps to `n_layer`; per-layer lists such as `layer_types`) and each attention
module's `layer_idx`, the slot its keys and values take in the KV cache. A student keeping blocks (1, 3) of 4 has
attention modules numbered 1 and 3 and a config saying 4: the cache is sized and indexed wrong and `generate()`
fails. `renumber_blocks_` makes both say what the block list holds. It is plain structure (no `transformers`
import): any module with an integer `layer_idx` inside block i gets i, any config object reachable from the model
with a layer count gets the new count. Shared by whatever removes blocks (distillation students, layer drop).
"""
from __future__ import annotations

from typing import Any, Sequence

from torch import nn

LAYER_COUNT_FIELDS = ("num_hidden_layers", "n_layer", "num_layers")  # the names HF configs use for the depth
PER_LAYER_FIELDS = ("layer_types",)  # config lists with one entry per block, subset with the blocks


def _configs(model: nn.Module) -> list[Any]:
    """The distinct non-dataclass `config` objects of `model` and its submodules (HF configs are shared objects)."""
    seen: dict[int, Any] = {}
    for m in model.modules():
        cfg = getattr(m, "config", None)
        if cfg is not None and hasattr(cfg, "to_dict") and id(cfg) not in seen:  # a PretrainedConfig
            seen[id(cfg)] = cfg
    return list(seen.values())


def renumber_blocks_(model: nn.Module, blocks: Sequence[nn.Module], kept: Sequence[int], n_before: int) -> dict:
    """After keeping blocks `kept` (original indices, in order) of `n_before`, now `blocks`: renumber every
    `layer_idx` inside block i to i and set the configs' layer counts (and per-layer lists) to the new depth.

    Returns what changed, for the lineage: {"layer_idx": modules renumbered, "config": fields set}.

    Example:
        >>> from torch import nn
        >>> class Attn(nn.Module):
        ...     def __init__(self, i): super().__init__(); self.layer_idx = i
        >>> blocks = nn.ModuleList([Attn(1), Attn(3)])
        >>> renumber_blocks_(nn.Sequential(blocks), blocks, [1, 3], 4)["layer_idx"], [b.layer_idx for b in blocks]
        (2, [0, 1])
    """
    renumbered = 0
    for i, block in enumerate(blocks):
        for m in block.modules():
            idx = getattr(m, "layer_idx", None)
            if isinstance(idx, int) and not isinstance(idx, bool) and idx != i:
                m.layer_idx = i
                renumbered += 1
    fields: list[str] = []
    for cfg in _configs(model):
        for name in LAYER_COUNT_FIELDS:
            if getattr(cfg, name, None) == n_before:
                setattr(cfg, name, len(blocks))  # GPT2Config maps num_hidden_layers -> n_layer: both stay in step
                fields.append(name)
        for name in PER_LAYER_FIELDS:
            per = getattr(cfg, name, None)
            if isinstance(per, (list, tuple)) and len(per) == n_before:
                setattr(cfg, name, type(per)(per[i] for i in kept))
                fields.append(name)
    return {"layer_idx": renumbered, "config": sorted(set(fields))}
