import dataclasses

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from condense.errors import ConfigError
from condense.train.loop import FitConfig
from condense.train.trainer import run_loop


def _mse(m, b):
    return F.mse_loss(m(b[0]), b[1])


def _data(n=6, bs=4):
    g = torch.Generator().manual_seed(0)
    return [(torch.randn(bs, 3, generator=g), torch.randn(bs, 1, generator=g)) for _ in range(n)]


def _start():
    torch.manual_seed(0)
    return nn.Linear(3, 1)


CFG = dict(lr=0.1, optimizer="sgd", momentum=0.0, grad_clip=None)


def test_ema_model_is_the_warmed_up_average_of_the_step_weights():
    steps, decay = 5, 0.8
    # reference: the weights after k plain steps (the same data and init), averaged by hand
    weights = [_start().weight.detach().clone()]
    for k in range(1, steps + 1):
        m = _start()
        run_loop(m, _data(), _mse, FitConfig(steps=k, **CFG))
        weights.append(m.weight.detach().clone())
    avg = weights[0]
    for t in range(steps):
        d = min(decay, (1 + t) / (10 + t))
        avg = d * avg + (1 - d) * weights[t + 1]
    m = _start()
    run_loop(m, _data(), _mse, FitConfig(steps=steps, ema=decay, **CFG))
    assert torch.allclose(m.weight, avg, atol=1e-6)
    assert not torch.allclose(m.weight, weights[-1], atol=1e-4)  # not simply the last weights


def test_evaluation_sees_the_averaged_weights_and_resume_is_exact(tmp_path):
    seen = []
    from condense.train.api import TrainConfig

    cfg = TrainConfig(steps=4, ema=0.5, checkpoint_every=2, eval_every=4, precision="fp32", tensorboard=False,
                      **CFG)
    full = _start()
    r = run_loop(full, _data(), _mse, cfg, evaluate=lambda model: seen.append(model.weight.detach().clone()) or {})
    assert len(seen) == 1 and torch.allclose(seen[0], full.weight)  # evaluated on what the model ends with
    half = _start()
    run_loop(half, _data(), _mse, dataclasses.replace(cfg, steps=2), out=tmp_path / "a")
    resumed = _start()
    run_loop(resumed, _data(), _mse, cfg, out=tmp_path / "b", resume=tmp_path / "a")
    assert torch.allclose(resumed.weight, full.weight, atol=1e-6)
    assert r.steps == 4


def test_ema_is_checked():
    with pytest.raises(ConfigError, match="ema"):
        FitConfig(ema=1.0)
