import math

import pytest
import torch
from torch import nn

from condense.errors import ConfigError
from condense.train.loop import FitConfig
from condense.train.optim import OPTIMIZERS, build_optimizer
from condense.train.schedules import batches_per_step, lr_factor


def _torch_factors(make_sched, steps):
    opt = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=1.0)
    sched = make_sched(opt)
    out = []
    for _ in range(steps):
        out.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    return out


def test_step_and_exponential_schedules_match_torch_until_the_floor():
    cfg = FitConfig(steps=40, schedule="step", lr_gamma=0.5, lr_step_size=7, min_lr_ratio=0.0)
    ref = _torch_factors(lambda o: torch.optim.lr_scheduler.StepLR(o, 7, gamma=0.5), 40)
    assert [lr_factor(s, cfg) for s in range(40)] == pytest.approx(ref, rel=1e-12)
    cfg = FitConfig(steps=30, schedule="exponential", lr_gamma=0.9, min_lr_ratio=0.1)
    ref = _torch_factors(lambda o: torch.optim.lr_scheduler.ExponentialLR(o, gamma=0.9), 30)
    assert [lr_factor(s, cfg) for s in range(30)] == pytest.approx([max(r, 0.1) for r in ref], rel=1e-9)


def test_cosine_linear_onecycle_shapes_and_clipping():
    cfg = FitConfig(steps=110, warmup_steps=10, schedule="cosine", min_lr_ratio=0.2)
    f = [lr_factor(s, cfg) for s in range(111)]
    assert f[0] == pytest.approx(0.1) and f[9] == 1.0 and f[10] == 1.0 and f[110] == pytest.approx(0.2)
    assert f[60] == pytest.approx(0.2 + 0.8 * 0.5)  # half-way through the cosine
    lin = FitConfig(steps=100, schedule="linear", min_lr_ratio=0.1)
    assert lr_factor(50, lin) == pytest.approx(0.55)
    oc = FitConfig(steps=100, schedule="onecycle", min_lr_ratio=0.01, max_lr_ratio=0.8)
    g = [lr_factor(s, oc) for s in range(100)]
    assert g[0] == pytest.approx(0.04) and max(g) == 0.8 and g.index(0.8) < 30 and g[-1] < 0.02


def test_batch_size_schedules():
    cfg = FitConfig(steps=10, batch_schedule="exponential", batch_every=2, batch_growth=2.0, batch_max=8,
                    grad_accum=2)
    assert [batches_per_step(s, cfg) for s in range(10)] == [2 * min(8, round(2 ** (s / 2))) for s in range(10)]
    assert batches_per_step(5, FitConfig()) == 1


@pytest.mark.parametrize("name, ref", [
    ("sgd", lambda p: torch.optim.SGD(p, lr=0.1, momentum=0.8, nesterov=True)),
    ("adam", lambda p: torch.optim.Adam(p, lr=0.1, betas=(0.8, 0.9))),
    ("adamw", lambda p: torch.optim.AdamW(p, lr=0.1, betas=(0.8, 0.9), weight_decay=0.0)),
    ("adagrad", lambda p: torch.optim.Adagrad(p, lr=0.1)),
    ("rmsprop", lambda p: torch.optim.RMSprop(p, lr=0.1, momentum=0.8)),
])
def test_every_optimizer_matches_torch(name, ref):
    torch.manual_seed(0)
    a, b = nn.Linear(3, 2), nn.Linear(3, 2)
    b.load_state_dict(a.state_dict())
    oa = build_optimizer(a.parameters(), FitConfig(optimizer=name, lr=0.1, momentum=0.8, nesterov=True,
                                                   betas=(0.8, 0.9)))
    ob = ref(b.parameters())
    x = torch.randn(5, 3)
    for _ in range(3):
        for m, o in ((a, oa), (b, ob)):
            o.zero_grad()
            m(x).pow(2).sum().backward()
            o.step()
    assert torch.equal(a.weight, b.weight)
    assert set(OPTIMIZERS) == {"sgd", "adam", "adamw", "adagrad", "rmsprop"}


def test_decay_matrices_only_and_config_errors():
    opt = build_optimizer(nn.Linear(3, 2).parameters(), FitConfig(weight_decay=0.1, decay_matrices_only=True))
    assert [g["weight_decay"] for g in opt.param_groups] == [0.1, 0.0]
    with pytest.raises(ConfigError, match="unknown batch_schedule 'linear'"):
        FitConfig(batch_schedule="linear")
    with pytest.raises(ConfigError, match="precision"):
        FitConfig(precision="int4")
    with pytest.raises(ConfigError, match="batch_growth"):
        FitConfig(batch_growth=0.5)
    assert math.isfinite(lr_factor(10**6, FitConfig(schedule="exponential", lr_gamma=0.5)))
