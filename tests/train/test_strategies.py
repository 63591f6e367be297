"""Training strategies come from a registry keyed by name: a registered one is checked and run by `train`."""
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from condense.core.task import Task
from condense.errors import ConfigError
from condense.train.api import TrainConfig, train
from condense.train.strategies import TRAINING_STRATEGIES, LoopStrategy, TrainingStrategy
from condense.train.trainer import TrainResult


def _toy_task():
    torch.manual_seed(0)
    x = torch.randn(64, 4)
    y = (x[:, 0] > 0).long()
    evaluate = lambda m: {"accuracy": float((m(x).argmax(-1) == y).float().mean())}  # noqa: E731
    return Task("toy", lambda: nn.Linear(4, 2), evaluate, "accuracy", inputs=x[:1], skeleton=lambda: nn.Linear(4, 2),
                train_data=lambda: [(x[i:i + 16], y[i:i + 16]) for i in range(0, 64, 16)],
                loss=lambda m, b: F.cross_entropy(m(b[0]), b[1]))


class FixedSteps(TrainingStrategy):
    """Takes `cfg.steps` plain SGD steps on the task's first batch; refuses gradient accumulation."""

    def __init__(self):
        self.calls = 0

    def check(self, cfg):
        if cfg.grad_accum != 1:
            raise ConfigError("strategy='tests_fixed' takes no grad_accum; leave it at 1")

    def run(self, task, model, cfg, *, device, out, resume):
        self.calls += 1
        batch = next(iter(task.train_data()))
        losses = []
        for _ in range(cfg.steps):
            model.zero_grad()
            loss = task.loss(model, batch)
            loss.backward()
            with torch.no_grad():  # plain SGD by hand (torch.optim's first use imports dynamo: seconds)
                for p in model.parameters():
                    p -= cfg.lr * p.grad
            losses.append(float(loss.detach()))
        return TrainResult(losses=losses, steps=len(losses))


def test_a_registered_strategy_is_checked_and_run(monkeypatch):
    with pytest.raises(ConfigError, match="unknown strategy 'tests_fixed'; choose one of .*'pipeline'"):
        TrainConfig(strategy="tests_fixed")
    strategy = FixedSteps()
    monkeypatch.setitem(TRAINING_STRATEGIES._items, "tests_fixed", strategy)
    with pytest.raises(ConfigError, match="takes no grad_accum"):
        TrainConfig(strategy="tests_fixed", grad_accum=2)
    _, r = train(_toy_task(), TrainConfig(steps=3, lr=0.5, strategy="tests_fixed", tensorboard=False))
    assert strategy.calls == 1 and r.steps == 3 and len(r.losses) == 3
    assert r.losses[-1] < r.losses[0]  # the same batch three times: plain SGD lowers its loss


def test_the_builtin_strategies_are_registered_with_their_checks():
    assert {"auto", "single", "ddp", "fsdp", "pipeline"} <= set(TRAINING_STRATEGIES)
    assert all(isinstance(TRAINING_STRATEGIES.get(n), LoopStrategy) for n in ("auto", "single", "ddp", "fsdp"))
    with pytest.raises(ConfigError, match="DDP only"):
        TrainConfig(strategy="fsdp", comm_hook="fp16")
    with pytest.raises(ConfigError, match="plain training only"):
        TrainConfig(strategy="pipeline", eval_every=5)
    assert TrainConfig(strategy="ddp", comm_hook="fp16").comm_hook == "fp16"
