"""Run a model over calibration batches while hooks record what they need, and always remove the hooks."""
from __future__ import annotations

from typing import Any, Callable, Iterable

import torch
from torch import nn
from torch.utils.hooks import RemovableHandle


def run_with_hooks(model: nn.Module, batches: Iterable[Any], run: Callable[[nn.Module, Any], Any],
                   handles: Iterable[RemovableHandle]) -> None:
    """Run `run(model, batch)` for every batch without autograd, then remove `handles` (also on error).

    Example:
        >>> net, seen = nn.Linear(2, 2), []
        >>> h = net.register_forward_pre_hook(lambda m, args: seen.append(args[0].shape[0]))
        >>> run_with_hooks(net, [torch.zeros(3, 2), torch.zeros(5, 2)], lambda m, b: m(b), [h])
        >>> seen, len(net._forward_pre_hooks)
        ([3, 5], 0)
    """
    handles = list(handles)
    try:
        with torch.inference_mode():
            for b in batches:
                run(model, b)
    finally:
        for h in handles:
            h.remove()
