"""A model's lineage: which task built it and which transformations were applied, in order.

Saved with every artifact so `condense.load` can rebuild the architecture (task model, then each transformation
replayed) before it loads the weights. It lives on the model as a plain dict, never as module objects.
"""
from __future__ import annotations

import copy
from typing import Any

from torch import nn

_ATTR = "_condense_lineage"


def lineage(model: nn.Module) -> dict[str, Any]:
    """The lineage record of `model`: {"task": spec | None, "transforms": [config dicts]} (a copy)."""
    rec = getattr(model, _ATTR, None) or {"task": None, "transforms": []}
    return copy.deepcopy(rec)


def set_task(model: nn.Module, spec: dict[str, Any] | None) -> None:
    """Stamp `model` as built by the task described by `spec` ({"name": ..., "options": {...}})."""
    rec = getattr(model, _ATTR, None) or {"task": None, "transforms": []}
    rec["task"] = copy.deepcopy(spec)
    object.__setattr__(model, _ATTR, rec)


def record_transform(model: nn.Module, config: Any, **details: Any) -> None:
    """Append a transformation (its config, plus JSON-able details such as new shapes) to the lineage."""
    rec = getattr(model, _ATTR, None) or {"task": None, "transforms": []}
    entry = {"config": config.to_dict() if hasattr(config, "to_dict") else dict(config)}
    if details:
        entry["details"] = copy.deepcopy(details)
    rec["transforms"].append(entry)
    object.__setattr__(model, _ATTR, rec)


def copy_lineage(src: nn.Module, dst: nn.Module) -> None:
    object.__setattr__(dst, _ATTR, lineage(src))
