import pytest
import torch
import torch.nn.functional as F
from torch import nn

from condense.core.task import Task
from condense.core.transforms import TransformContext
from condense.errors import ConfigError
from condense.prune import StructuredConfig, prune_
from condense.prune.graph import build_graph
from condense.prune.group_importance import group_scores


def _task():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3))
    g = torch.Generator().manual_seed(1)
    x, y = torch.randn(16, 4, generator=g), torch.randint(0, 3, (16,), generator=g)
    return Task("toy", net, evaluate=lambda m: {"acc": 0.0}, primary_metric="acc", inputs=x[:2],
                train_data=lambda: [(x[:8], y[:8]), (x[8:], y[8:])], loss=lambda m, b: F.cross_entropy(m(b[0]), b[1]))


def test_taylor_scores_equal_the_first_order_estimate_computed_by_hand():
    task = _task()
    net = task.build_model()
    groups = build_graph(net).groups
    scores = group_scores(net, groups, "taylor", {"0": 4}, TransformContext(task=task), n_batches=2)
    assert all(p.grad is None for p in net.parameters())  # the caller's gradients are left as they were
    ref = _task().build_model()
    for b in task.train_data():
        task.loss(ref, b).backward()
    w0, b0, w2 = ref[0].weight, ref[0].bias, ref[2].weight
    producer = ((w0 * w0.grad).sum(1) + b0 * b0.grad).abs()
    consumer = (w2 * w2.grad).sum(0).abs()
    want = producer / producer.mean() + consumer / consumer.mean()
    assert torch.allclose(scores["0"], want.detach(), rtol=1e-5, atol=1e-6)


def test_taylor_prunes_through_the_config_and_needs_a_loss():
    task = _task()
    net = prune_(task.build_model(), StructuredConfig(ratio=0.5, importance="taylor"), task=task)
    assert net[0].out_features == 4 and net[2].in_features == 4
    no_loss = Task("toy", nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3)), evaluate=lambda m: {"a": 0.0},
                   primary_metric="a", inputs=torch.randn(2, 4))
    with pytest.raises(ConfigError, match="needs a task with a loss"):
        prune_(no_loss.build_model(), StructuredConfig(ratio=0.5, importance="taylor"), task=no_loss)
