"""An exponential moving average (EMA) of a model's weights, for evaluation and as the trained model.

`FitConfig.ema=0.99` keeps, after every optimizer step, `avg = d * avg + (1 - d) * weights` over the model's
floating-point state (parameters and buffers such as BatchNorm statistics; integer buffers are copied), with the
decay warmed up as `d = min(ema, (1 + step) / (10 + step))` so that the first steps do not dominate. Evaluation
during training runs on the averaged weights and the model ends training holding them (as FixMatch, Mean Teacher
and timm's ModelEmaV2 evaluate the averaged model). The average is part of every checkpoint, so resume is exact.
"""
from __future__ import annotations

import contextlib
from typing import Iterator

import torch
from torch import nn

__all__ = ["WeightEMA"]


class WeightEMA:
    """The running average of `model`'s state (a copy, on the model's devices).

    Example:
        >>> net = nn.Linear(1, 1, bias=False)
        >>> with torch.no_grad():
        ...     _ = net.weight.fill_(3.0)
        >>> ema = WeightEMA(net, 0.5)
        >>> with torch.no_grad():
        ...     _ = net.weight.fill_(1.0)
        >>> ema.update(net)  # step 0: d = min(0.5, 1/10) = 0.1
        >>> round(float(ema.shadow["weight"]), 4)  # 0.1 * 3 + 0.9 * 1
        1.2
    """

    def __init__(self, model: nn.Module, decay: float):
        self.decay = decay
        self.steps = 0
        self.shadow = {k: v.detach().clone() for k, v in model.state_dict().items()}

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        """Fold the model's current state into the average (call after each optimizer step)."""
        d = min(self.decay, (1 + self.steps) / (10 + self.steps))
        for k, v in model.state_dict().items():
            s = self.shadow[k]
            if s.is_floating_point():
                s.mul_(d).add_(v.detach().to(s.dtype), alpha=1 - d)
            else:
                s.copy_(v)
        self.steps += 1

    @contextlib.contextmanager
    def swapped(self, model: nn.Module) -> Iterator[nn.Module]:
        """Run the block with the averaged weights in `model`, then put the trained ones back."""
        live = {k: v.detach().clone() for k, v in model.state_dict().items()}
        model.load_state_dict(self.shadow)
        try:
            yield model
        finally:
            model.load_state_dict(live)

    def copy_to(self, model: nn.Module) -> None:
        """Make `model` hold the averaged weights (the end of training)."""
        model.load_state_dict(self.shadow)

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {**{f"shadow.{k}": v for k, v in self.shadow.items()}, "steps": torch.tensor(self.steps)}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        for k in self.shadow:
            self.shadow[k].copy_(state[f"shadow.{k}"])
        self.steps = int(state["steps"])
