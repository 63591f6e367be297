import pytest
import torch
from torch import nn

from condense.errors import ConfigError
from condense.train.loop import FitConfig, fit, lr_factor


def test_fit_with_sgd_matches_a_hand_written_loop():
    torch.manual_seed(0)
    a = nn.Linear(3, 1)
    b = nn.Linear(3, 1)
    b.load_state_dict(a.state_dict())
    data = [(torch.randn(4, 3), torch.randn(4, 1)) for _ in range(3)]
    loss = lambda m, batch: ((m(batch[0]) - batch[1]) ** 2).mean()  # noqa: E731
    fit(a, data, loss, FitConfig(steps=5, lr=0.05, optimizer="sgd", grad_clip=None))
    opt = torch.optim.SGD(b.parameters(), lr=0.05, momentum=0.9)
    for step in range(5):
        opt.zero_grad()
        loss(b, data[step % 3]).backward()
        opt.step()
    for p, q in zip(a.parameters(), b.parameters()):
        assert torch.allclose(p, q, atol=1e-6)


def test_loss_falls_on_a_learnable_problem():
    torch.manual_seed(0)
    x = torch.randn(64, 4)
    y = x @ torch.tensor([[1.0], [-2.0], [0.5], [3.0]])
    net = nn.Linear(4, 1)
    losses = fit(net, [(x, y)], lambda m, b: ((m(b[0]) - b[1]) ** 2).mean(), FitConfig(steps=200, lr=0.05))
    assert losses[-1] < 0.01 * losses[0]


def test_schedules_and_errors():
    cfg = FitConfig(steps=10, warmup_steps=2, schedule="cosine")
    assert lr_factor(0, cfg) == 0.5 and lr_factor(1, cfg) == 1.0
    assert lr_factor(2, cfg) == pytest.approx(1.0) and lr_factor(10, cfg) == pytest.approx(0.1)
    with pytest.raises(ConfigError, match="unknown optimizer 'lion'"):
        FitConfig(optimizer="lion")
    with pytest.raises(ConfigError, match="no batches"):
        fit(nn.Linear(1, 1), [], lambda m, b: m(b).sum(), FitConfig(steps=1))
