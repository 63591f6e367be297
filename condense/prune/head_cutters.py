"""Head cutters: what an attention module must change when it loses heads, one entry per module type.

The projections of a head group are cut by their own cutters (`condense.prune.cutters`); the attention module
itself may hold head counts that its forward reads (BERT's `num_attention_heads` and `all_head_size`, GPT-2's
`num_heads` and `split_size`, condense's `n_heads`). A `HeadCounts` names those attributes; it is registered in
`condense.prune.cutters.CUTTERS` under the module type, so `cutter_for(attn, "heads")` finds it (through the MRO) for
the cut and for `resize_` when a pruned artifact is loaded. Llama, Mistral and Qwen2 attention hold only
`num_key_value_groups` (their views use -1): it stays when whole key/value groups go, and follows the query heads
kept per group when heads go inside groups (`StructuredConfig(gqa="queries")`).

A module type with no entry gets `GENERIC` (the well-known names, where present) and a warning naming the type.
Register one for a custom attention layer in one place:

    >>> class MyAttention(nn.Module):
    ...     def __init__(self): super().__init__(); self.nh, self.inner = 4, 32
    >>> _ = register_head_counts(MyAttention, HeadCounts(heads=("nh",), widths=("inner",)))
    >>> a = MyAttention(); cutter_for(a, "heads")(a, "heads", torch.tensor([0, 2])); (a.nh, a.inner, shape_of(a))
    (2, 16, {'heads': 2})

Transformers' classes are registered lazily (`register_optional`), only once their modules are imported.
"""
from __future__ import annotations

import sys
import warnings
from dataclasses import dataclass
from typing import Callable

import torch
from torch import nn

from condense.errors import CondenseError
from condense.prune.cutters import CUTTERS, Cutter, cutter_for, shape_of  # noqa: F401 (docstring example)

__all__ = ["HeadCounts", "GENERIC", "register_head_counts", "register_optional", "ensure_head_cutter"]


@dataclass(frozen=True)
class HeadCounts(Cutter):
    """Attributes of an attention module that count heads; a cut keeps `len(idx)` query heads.

    `dim` "heads" / "q_heads": `len(idx)` query heads are kept, whole key/value groups (the group size stays);
    "group_heads": `len(idx)` query heads are kept in every key/value group (the key/value heads stay).

    Args:
        heads: attributes holding the number of query heads.
        kv_heads: attributes holding the number of key/value heads (kept at heads // query heads per kv head).
        widths: attributes holding heads * head_dim (scaled with the heads).
        groups: attributes holding the query heads per key/value head (`num_key_value_groups`).
    """

    heads: tuple[str, ...] = ()
    kv_heads: tuple[str, ...] = ()
    widths: tuple[str, ...] = ()
    groups: tuple[str, ...] = ()

    def _first(self, m: nn.Module, names: tuple[str, ...]) -> int | None:
        return next((getattr(m, a) for a in names if isinstance(getattr(m, a, None), int)), None)

    def _set(self, m: nn.Module, names: tuple[str, ...], value: Callable[[int], int]) -> None:
        for a in names:
            if isinstance(getattr(m, a, None), int):
                setattr(m, a, value(getattr(m, a)))

    def cut(self, m: nn.Module, dim: str, idx: torch.Tensor) -> None:
        n = len(idx)
        if dim == "group_heads":  # n query heads in each group: heads and widths scale by n / group size
            g = self._first(m, self.groups)
            if g is None:
                raise CondenseError(f"{type(m).__name__} keeps no query-heads-per-group attribute, so query heads "
                                    "cannot be removed inside groups; register HeadCounts(groups=(...)) for it, or "
                                    "use StructuredConfig(gqa='groups')")
            self._set(m, self.heads + self.widths, lambda v: v * n // g)
            self._set(m, self.groups, lambda v: n)
            return
        old = self._first(m, self.heads)
        kv = self._first(m, self.kv_heads)
        self._set(m, self.heads, lambda v: n)
        self._set(m, self.kv_heads if old and kv else (), lambda v: n * kv // old)
        self._set(m, self.widths if old else (), lambda v: v * n // old)

    def shape(self, m: nn.Module) -> dict[str, int]:
        g, n = self._first(m, self.groups), self._first(m, self.heads)  # group size first: resize_ replays in order
        return {**({} if g is None else {"group_heads": g}), **({} if n is None else {"heads": n})}

    def weights(self, m: nn.Module, dim: str) -> list[tuple[torch.Tensor, int]]:
        return []


# Used for attention modules of a type with no entry: every well-known name the module has.
GENERIC = HeadCounts(heads=("num_heads", "num_attention_heads", "n_heads", "n_head"),
                     kv_heads=("num_key_value_heads", "num_kv_heads", "n_kv_heads"),
                     widths=("all_head_size", "split_size"), groups=("num_key_value_groups",))
_GQA = HeadCounts(groups=("num_key_value_groups",))


def register_head_counts(module_type: type, counts: HeadCounts) -> HeadCounts:
    """Cut heads of `module_type` (and its subclasses) with `counts`."""
    CUTTERS[module_type] = counts
    return counts


_BERT = HeadCounts(heads=("num_attention_heads",), widths=("all_head_size",))
# module -> {class name: counts}; read only once the module is imported (a model holding the class implies it)
OPTIONAL: dict[str, dict[str, HeadCounts]] = {
    "condense.tasks.bert": {"SelfAttention": HeadCounts(heads=("n_heads",))},
    "condense.tasks.gpt": {"CausalSelfAttention": HeadCounts(heads=("n_heads",))},
    "transformers.models.bert.modeling_bert": {"BertSelfAttention": _BERT},
    "transformers.models.roberta.modeling_roberta": {"RobertaSelfAttention": _BERT},
    "transformers.models.gpt2.modeling_gpt2": {"GPT2Attention": HeadCounts(heads=("num_heads",),
                                                                           widths=("split_size",))},
    "transformers.models.llama.modeling_llama": {"LlamaAttention": _GQA},
    "transformers.models.mistral.modeling_mistral": {"MistralAttention": _GQA},
    "transformers.models.qwen2.modeling_qwen2": {"Qwen2Attention": _GQA},
}


def register_optional() -> None:
    """Register the entries of `OPTIONAL` whose library modules are imported (Conv1D's cutter: `cutters`)."""
    for mod, entries in OPTIONAL.items():
        for cls_name, counts in entries.items():
            cls = getattr(sys.modules.get(mod), cls_name, None)
            if cls is not None and cls not in CUTTERS:
                CUTTERS[cls] = counts


def ensure_head_cutter(attn: nn.Module, name: str) -> list[str]:
    """Make sure `attn` has a head cutter; a type with none gets `GENERIC` (warned). Returns the attributes it
    will update."""
    register_optional()
    found = next((CUTTERS[t] for t in type(attn).__mro__ if t in CUTTERS), None)
    if isinstance(found, HeadCounts):
        return [a for a in (*found.heads, *found.kv_heads, *found.widths, *found.groups) if hasattr(attn, a)]
    if found is not None:
        return []
    attrs = [a for a in (*GENERIC.heads, *GENERIC.kv_heads, *GENERIC.widths, *GENERIC.groups)
             if isinstance(getattr(attn, a, None), int)]
    CUTTERS[type(attn)] = GENERIC
    warnings.warn(f"pruning heads of {name} ({type(attn).__name__}): no head cutter is registered for its type, so "
                  f"the generic one updates {attrs or 'no attribute'}; if its forward reads a head count under "
                  "another name, register one with condense.prune.head_cutters.register_head_counts", stacklevel=3)
    return attrs
