"""What else must change when blocks leave a block list: registered adapters, found by attribute presence.

`drop_blocks_` calls every adapter in `BLOCK_ADAPTERS` after removing blocks, with a `Dropped` record. The
built-in ones: condense's own dataclass configs (`num_layers` / `n_layer` of the block list's parent), and
Hugging Face-style models (a config object with `num_hidden_layers`, attention modules with `layer_idx`, an
optional per-layer `config.layer_types`). The Hugging Face adapter reads attributes only, so `transformers` is never
imported here. Register another with `register_block_adapter(fn)`, fn(Dropped) -> None.

Example:
    >>> from torch import nn
    >>> class Attn(nn.Module):
    ...     def __init__(self, i): super().__init__(); self.layer_idx = i
    >>> blocks = nn.ModuleList([Attn(0), Attn(2)])  # blocks 0 and 2 kept of 3
    >>> renumber_layer_idx(Dropped(blocks, blocks, "", [0, 2], 3))
    >>> [b.layer_idx for b in blocks]
    [0, 1]
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable

from torch import nn


@dataclasses.dataclass
class Dropped:
    """The model, its block list (already shortened), the list's name, the kept original indices, the count before."""

    model: nn.Module
    blocks: nn.Module
    name: str
    kept: list[int]
    n_before: int


BLOCK_ADAPTERS: list[Callable[[Dropped], None]] = []


def register_block_adapter(fn: Callable[[Dropped], None]) -> Callable[[Dropped], None]:
    """Call `fn(Dropped)` after every layer drop (and its replay at load time)."""
    if fn not in BLOCK_ADAPTERS:
        BLOCK_ADAPTERS.append(fn)
    return fn


def adapt_after_drop(d: Dropped) -> None:
    for fn in BLOCK_ADAPTERS:
        fn(d)


@register_block_adapter
def dataclass_config(d: Dropped) -> None:
    """condense's own models: a dataclass `config` on the block list's parent with num_layers / n_layer."""
    parent = dict(d.model.named_modules())[d.name.rpartition(".")[0]] if d.name else None
    cfg = getattr(parent, "config", None)
    if dataclasses.is_dataclass(cfg) and not _is_hf_config(cfg):
        for field in ("num_layers", "n_layer"):
            if hasattr(cfg, field) and getattr(cfg, field) == d.n_before:
                object.__setattr__(parent, "config", dataclasses.replace(cfg, **{field: len(d.kept)}))


@register_block_adapter
def renumber_layer_idx(d: Dropped) -> None:
    """Every submodule of kept block j with an int `layer_idx` (Hugging Face attention: its KV-cache slot) gets j."""
    for j, block in enumerate(d.blocks):
        for m in block.modules():
            idx = m.__dict__.get("layer_idx")
            if isinstance(idx, int) and not isinstance(idx, bool):
                m.layer_idx = j


def _is_hf_config(cfg: Any) -> bool:
    """A mutable Hugging Face `PretrainedConfig` (shared by the model's modules; some versions make it a dataclass)."""
    return hasattr(cfg, "num_hidden_layers") and hasattr(cfg, "to_dict") and hasattr(cfg, "model_type")


def _hf_configs(model: nn.Module) -> list[Any]:
    """Distinct Hugging Face config objects in the model (the root's, and any a submodule holds)."""
    found: dict[int, Any] = {}
    for m in model.modules():
        cfg = m.__dict__.get("config")
        if cfg is not None and _is_hf_config(cfg):
            found.setdefault(id(cfg), cfg)
    return list(found.values())


@register_block_adapter
def hf_config(d: Dropped) -> None:
    """`config.num_hidden_layers` (GPT-2: `n_layer`, the same attribute) and `config.layer_types` follow the kept
    blocks, so the cache `generate()` builds and the per-layer masks match the shorter model."""
    for cfg in _hf_configs(d.model):
        if getattr(cfg, "num_hidden_layers", None) != d.n_before:
            continue
        types = getattr(cfg, "layer_types", None)
        if isinstance(types, (list, tuple)) and len(types) == d.n_before:
            cfg.layer_types = [types[i] for i in d.kept]
        cfg.num_hidden_layers = len(d.kept)
