"""Tiny fixture models and tasks for tests and examples (seconds to build, no caches)."""
from __future__ import annotations

import time

import torch
from torch import nn

from condense.core.task import Task


class TinyMLP(nn.Module):
    """Linear(8->16) -> ReLU -> Linear(16->4)."""

    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(8, 16)
        self.act = nn.ReLU()
        self.fc2 = nn.Linear(16, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))  # (B, 4)


def tiny_task(seed: int = 0) -> Task:
    """A task around a random TinyMLP: the primary metric is agreement with the original model's argmax."""
    g = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    model = TinyMLP().eval()
    x = torch.randn(64, 8, generator=g)
    with torch.no_grad():
        ref = model(x).argmax(-1)

    def evaluate(m: nn.Module) -> dict[str, float]:
        return {"agreement": float((m(x).argmax(-1) == ref).float().mean())}

    return Task("tiny", model, evaluate=evaluate, primary_metric="agreement", inputs=x[:1],
                calibration_data=lambda: iter([x[:32], x[32:]]), batch_sizes=(1, 8),
                description="random MLP; agreement with its own predictions")


def slow_tiny_task(seed: int = 0, evaluate_s: float = 1.0) -> Task:
    """`tiny_task` whose evaluation takes at least `evaluate_s` seconds: trials long enough that several search
    processes started together all get some (the tiny model alone measures in microseconds)."""
    task = tiny_task(seed)
    fast = task.evaluate

    def evaluate(m: nn.Module) -> dict[str, float]:
        time.sleep(evaluate_s)
        return fast(m)

    task.evaluate = evaluate
    return task
