"""Keep a pruned Hugging Face model's config consistent with its layers, or say that it cannot be.

After heads or FFN width are cut, `model.config` still describes the dense model, so `save_pretrained` followed by
`from_pretrained` would build the wrong shapes. Where every layer keeps the same head count and FFN width, the
config gets the new values (`num_attention_heads`, `num_key_value_heads`, `head_dim` kept explicit, and the FFN
width key such as `intermediate_size` or GPT-2's `n_inner`). A proposal is accepted only if the model class built
from the changed config (on the meta device: no memory, no weights) has exactly the pruned model's parameter and
buffer shapes. Otherwise (widths per layer, or a config that derives head_dim from hidden_size / heads, as BERT's
and GPT-2's do) the config is left as it was and the caller warns that the Hugging Face folder cannot express the
model: `condense.save` / `condense.load` still reload it exactly (the lineage holds every layer's shape).
"""
from __future__ import annotations

import copy
from typing import Any

import torch
from torch import nn

__all__ = ["FFN_KEYS", "propose", "expressible", "sync_config_"]

# Config keys that hold a transformer FFN's hidden width.
FFN_KEYS = ("intermediate_size", "n_inner", "ffn_dim", "d_ff", "encoder_ffn_dim", "decoder_ffn_dim")


def _hf_config(model: nn.Module) -> Any:
    cfg = getattr(model, "config", None)
    return cfg if cfg is not None and hasattr(cfg, "to_dict") and hasattr(model, "save_pretrained") else None


def propose(cfg: Any, heads: list[tuple[int, int, int]], changes: dict[int, set[int]], pruned_heads: bool
            ) -> list[dict[str, Any]]:
    """Candidate config updates: from every attention layer's (query heads, key/value heads, head_dim) after the
    cut, and from {old width: new widths} of the other layers cut (FFN). Per-layer values give no candidate."""
    base: dict[str, Any] = {}
    if pruned_heads and len(set(heads)) == 1:
        n_q, n_kv, hd = heads[0]
        base = {"num_attention_heads": n_q, "head_dim": hd}
        if getattr(cfg, "num_key_value_heads", None) is not None:
            base["num_key_value_heads"] = n_kv
    out = []
    for key in FFN_KEYS:
        if not hasattr(cfg, key):
            continue
        old = getattr(cfg, key)
        olds = [old] if isinstance(old, int) else sorted(changes) if old is None else []
        out += [{**base, key: next(iter(changes[o]))} for o in olds if len(changes.get(o, ())) == 1]
    return out + ([base] if base else [])


def expressible(model: nn.Module, update: dict[str, Any]) -> bool:
    """Whether `config + update` passes the config's own validation (what `save_pretrained` checks) and
    `type(model)(config + update)` has exactly `model`'s parameter and buffer shapes."""
    cfg = copy.deepcopy(model.config)
    for k, v in update.items():
        setattr(cfg, k, v)
    try:
        if callable(getattr(cfg, "validate", None)):  # transformers >= 5 validates on save_pretrained (e.g. Llama:
            cfg.validate()  # hidden_size a multiple of num_attention_heads, even with head_dim explicit)
        with torch.device("meta"):
            fresh = type(model)(cfg)
    except Exception:  # a config the class rejects cannot express the model
        return False

    def shapes(m: nn.Module) -> dict[str, tuple[int, ...]]:
        return {n: tuple(t.shape) for n, t in (*m.named_parameters(), *m.named_buffers())}

    return shapes(fresh) == shapes(model)


def sync_config_(model: nn.Module, heads: list[tuple[int, int, int]], changes: dict[int, set[int]],
                 pruned_heads: bool) -> tuple[dict[str, Any], str | None]:
    """Update `model.config` with the first expressible candidate of `propose`; returns (the update, None) or
    ({}, why the Hugging Face config cannot describe the pruned model). No config: ({}, None)."""
    cfg = _hf_config(model)
    if cfg is None or (not pruned_heads and not changes):
        return {}, None
    for update in propose(cfg, heads, changes, pruned_heads):
        if expressible(model, update):
            for k, v in update.items():
                setattr(cfg, k, v)
            return update, None
    per_layer = pruned_heads and len(set(heads)) > 1
    why = ("layers keep different head counts" if per_layer else
           f"no {type(cfg).__name__} field set gives these shapes (e.g. head_dim derived from hidden_size / heads)")
    return {}, (f"model.config ({type(cfg).__name__}) cannot describe the pruned model: {why}; save_pretrained "
                "would write a folder that does not load: save and load it with condense.save / condense.load")


def apply_update_(model: nn.Module, update: dict[str, Any]) -> None:
    """Set a recorded config update again (when a pruned artifact is loaded)."""
    cfg = _hf_config(model)
    for k, v in update.items() if cfg is not None else ():
        setattr(cfg, k, v)


def sync_after_cut_(model: nn.Module, groups: list[Any], keep: dict[str, list[int]],
                    before: dict[str, dict[str, int]], after: dict[str, dict[str, int]]
                    ) -> tuple[dict[str, Any], str | None]:
    """`sync_config_` from a structured cut: `groups` (every group found, "heads" ones give each attention layer's
    counts), `keep` (kept units of the groups cut), and the touched layers' shapes `before` and `after`."""
    heads, in_heads = [], set()
    for g in groups:
        if g.kind != "heads":
            continue
        in_heads |= {m.module for m in g.members}
        kept = len(keep.get(g.name, range(g.size)))
        o = next(m for m in g.members if m.dim == "in")
        if g.members[-1].dim == "group_heads":  # units: query heads inside each of len(o.blocks) kv groups
            heads.append((kept * len(o.blocks), len(o.blocks), o.unit))
            continue
        per_unit = g.members[-1].unit  # the attention module's member: query heads per unit
        heads.append((kept * per_unit, kept, o.unit // per_unit))
    changes: dict[int, set[int]] = {}
    for n, shape in after.items():
        for key, new in shape.items() if n not in in_heads else ():
            old = before.get(n, {}).get(key, new)
            if old != new:
                changes.setdefault(old, set()).add(new)
    return sync_config_(model, heads, changes, any(g.kind == "heads" and g.name in keep for g in groups))
