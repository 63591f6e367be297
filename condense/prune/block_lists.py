"""A model's list of blocks: finding it (by name, else by structure) and removing blocks from it consistently.

Removing blocks is more than `del blocks[i]`: a model may count its blocks elsewhere. Hooks registered with
`register_after_drop` fix that up after every removal, whoever removes (layer drop, a distilled student, artifact
replay). Two are built in: a frozen dataclass `config` with `num_layers`/`n_layer` (condense's own models), and the
Hugging Face convention, read by attribute so `transformers` is never imported: every `config` object with
`num_hidden_layers`/`n_layer`/`num_layers` equal to the old count (and `layer_types` of that length) is updated,
and each kept block's modules that carry an integer `layer_idx` (the KV cache's layer slot in GPT-2, Llama,
Mistral, Qwen2, ...) are renumbered 0..k-1, so forward with a cache and `generate()` keep working.

Example:
    >>> from torch import nn
    >>> net = nn.Module(); net.layers = nn.ModuleList(nn.Linear(2, 2) for _ in range(3))
    >>> len(drop_blocks_(net, "layers", [0, 2]).layers)
    2
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable

from torch import nn

from condense.errors import ConfigError

BLOCK_LIST_NAMES = ("layers", "blocks", "layer", "h")  # ModuleLists preferred without `container=`

AfterDrop = Callable[[nn.Module, str, int, list[int]], None]  # (model, list name, old count, kept indices)
_AFTER_DROP: list[AfterDrop] = []


def register_after_drop(hook: AfterDrop) -> AfterDrop:
    """Run `hook(model, name, old_count, kept)` after blocks are removed from `model`'s list `name`."""
    _AFTER_DROP.append(hook)
    return hook


def _structural(modules: dict[str, nn.Module]) -> list[str]:
    """ModuleLists of >= 2 children all of one class: the repeated blocks of a model, found without a name."""
    out = []
    for n, m in modules.items():
        kids = list(m.children()) if isinstance(m, nn.ModuleList) else []
        if len(kids) >= 2 and len({type(k) for k in kids}) == 1 and not isinstance(kids[0], (nn.Linear, nn.Embedding)):
            out.append(n)
    return out


def find_block_list(model: nn.Module, name: str | None = None) -> tuple[str, nn.Module]:
    """(name, module) of the block list: `name`, else the one ModuleList named layers/blocks/layer/h, else the one
    ModuleList of repeated same-class blocks (found by structure)."""
    modules = dict(model.named_modules())
    lists = [n for n, x in modules.items() if isinstance(x, (nn.ModuleList, nn.Sequential))]
    if name is not None:
        m = modules.get(name)
        if not isinstance(m, (nn.ModuleList, nn.Sequential)):
            raise ConfigError(f"container {name!r} is not a ModuleList or Sequential of the model; choose one of "
                              f"{lists[:8]}")
        return name, m
    found = [n for n, m in modules.items() if isinstance(m, nn.ModuleList) and n.split(".")[-1] in BLOCK_LIST_NAMES]
    if not found:
        found = _structural(modules)
    if len(found) != 1:
        raise ConfigError(f"found {len(found)} block lists ({found or 'none named ' + '/'.join(BLOCK_LIST_NAMES)} "
                          f"and no single list of repeated blocks); pass container=... naming one of {lists[:8]}")
    return found[0], modules[found[0]]


def drop_blocks_(model: nn.Module, container: str, keep: list[int]) -> nn.Module:
    """Keep only blocks `keep` (original indices) of `container`, renumbered from 0; the after-drop hooks then
    update whatever else counts or indexes the blocks."""
    name, blocks = find_block_list(model, container)
    n = len(blocks)
    if any(i >= n for i in keep):
        raise ConfigError(f"keep={keep} names blocks past the {n} of {name or 'the model'}; indices are 0..{n - 1}")
    for i in sorted(set(range(n)) - set(keep), reverse=True):
        del blocks[i]
    for hook in _AFTER_DROP:
        hook(model, name, n, sorted(keep))
    return model


def _frozen(cfg: Any) -> bool:
    return dataclasses.is_dataclass(cfg) and getattr(cfg, "__dataclass_params__").frozen


@register_after_drop
def _frozen_config(model: nn.Module, name: str, n: int, keep: list[int]) -> None:
    parent = dict(model.named_modules())[name.rpartition(".")[0]] if name else None
    cfg = getattr(parent, "config", None)
    if _frozen(cfg):  # condense's own models: a frozen config on the block list's parent
        for field in ("num_layers", "n_layer"):
            if hasattr(cfg, field) and getattr(cfg, field) == n:
                object.__setattr__(parent, "config", dataclasses.replace(cfg, **{field: len(keep)}))


COUNT_FIELDS = ("num_hidden_layers", "n_layer", "num_layers")


@register_after_drop
def _hf_style(model: nn.Module, name: str, n: int, keep: list[int]) -> None:
    seen: set[int] = set()
    for m in model.modules():
        cfg: Any = getattr(m, "config", None)
        if cfg is None or _frozen(cfg) or id(cfg) in seen:  # mutable: Hugging Face (shared by the modules)
            continue
        seen.add(id(cfg))
        for field in COUNT_FIELDS:
            if isinstance(getattr(cfg, field, None), int) and getattr(cfg, field) == n:
                setattr(cfg, field, len(keep))
        types = getattr(cfg, "layer_types", None)
        if isinstance(types, (list, tuple)) and len(types) == n:
            cfg.layer_types = [types[i] for i in keep]
    blocks = dict(model.named_modules())[name]
    for new, block in enumerate(blocks):
        for sub in block.modules():
            if isinstance(getattr(sub, "layer_idx", None), int):
                sub.layer_idx = new
