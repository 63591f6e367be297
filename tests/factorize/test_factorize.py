"""Low-rank factorization: exact at full rank, rank rules, activation-aware beats plain on its data, save/load."""
import copy
import json

import pytest
import torch
from torch import nn

import condense
from condense.core.config import config_from_dict
from condense.core.transforms import apply_
from condense.errors import ConfigError
from condense.factorize import FactorizeConfig, LowRankConv2d, LowRankLinear, factor, factorize_
from condense.factorize.svd import rank_for_energy, rank_for_ratio
from condense.tasks.gpt import GPT, GPTConfig
from condense.testing import tiny_task


pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models: one thread (tests/conftest.py)


def test_config_round_trips_and_validates():
    assert FactorizeConfig().rank_ratio == 0.5
    for cfg in (FactorizeConfig(energy=0.9, activation_aware=True, include=("*.mlp.*",)), FactorizeConfig(rank=3)):
        assert config_from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg
    for bad in (dict(rank_ratio=0.5, energy=0.9), dict(rank_ratio=0.0), dict(rank_ratio=1.5), dict(energy=0),
                dict(rank=0), dict(include="*"), dict(calibration_batches=0)):
        with pytest.raises(ConfigError):
            FactorizeConfig(**bad)


def test_full_rank_reproduces_linear_and_conv_exactly():
    torch.manual_seed(0)
    lin, conv = nn.Linear(12, 7), nn.Conv2d(3, 5, 3, stride=2, padding=1)
    x, xc = torch.randn(4, 12), torch.randn(2, 3, 9, 9)
    new = factorize_(copy.deepcopy(lin), FactorizeConfig(rank=7))
    assert isinstance(new, LowRankLinear) and new.first.out_features == 7
    torch.testing.assert_close(new(x), lin(x), atol=1e-5, rtol=1e-5)
    net = nn.Sequential(copy.deepcopy(conv))
    factorize_(net, FactorizeConfig(rank=5))
    assert isinstance(net[0], LowRankConv2d)
    torch.testing.assert_close(net(xc), conv(xc), atol=1e-5, rtol=1e-5)


def test_rank_larger_than_matrix_is_a_clear_error():
    with pytest.raises(ConfigError, match="rank 9 is larger than layer 0's 8x4 weight matrix allows .at most 4"):
        factorize_(nn.Sequential(nn.Linear(4, 8)), FactorizeConfig(rank=9))
    with pytest.raises(ConfigError, match="at most 4"):
        factor(torch.randn(8, 4), rank=5)


def test_rank_rules_budget_and_energy():
    layer = nn.Linear(160, 640)
    r = rank_for_ratio(layer, 0.5)
    assert r * (160 + 640) <= 0.5 * 160 * 640 < (r + 1) * (160 + 640)
    s = torch.tensor([4.0, 2.0, 1.0, 1.0])  # energies 16, 4, 1, 1 of 22
    assert [rank_for_energy(s, e) for e in (0.5, 16 / 22, 0.9, 21 / 22, 1.0)] == [1, 1, 2, 3, 4]
    net = nn.Sequential(nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 64))
    factorize_(net, FactorizeConfig(rank_ratio=0.25))
    assert [m.rank for m in (net[0], net[2])] == [8, 8]
    assert sum(p.numel() for p in net.parameters()) == 2 * (8 * 128 + 64)


def test_activation_aware_output_error_is_not_larger_than_plain_on_calibration_data():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(32, 48), nn.ReLU(), nn.Linear(48, 8))
    mix = torch.randn(32, 32) * torch.logspace(0, -2, 32)  # correlated, anisotropic inputs
    calib = [torch.randn(64, 32) @ mix for _ in range(4)]
    x = torch.cat(calib)
    errs = {}
    for aware in (False, True):
        m = factorize_(copy.deepcopy(net), FactorizeConfig(rank=6, activation_aware=aware, include=("0",), damp=0.0),
                       calibration=calib)
        with torch.no_grad():
            errs[aware] = float((m[0](x) - net[0](x)).pow(2).sum())
    assert errs[True] <= errs[False] * 0.8  # strictly better here, and never worse by construction


def test_energy_skips_layers_where_no_parameters_are_saved():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, 16))
    with torch.no_grad():
        net[0].weight.copy_(torch.randn(16, 2) @ torch.randn(2, 16))  # rank 2: factorized
    factorize_(net, FactorizeConfig(energy=0.99))
    assert isinstance(net[0], LowRankLinear) and net[0].rank == 2 and isinstance(net[2], nn.Linear)


def test_pipeline_step_and_artifact_round_trip(tmp_path):
    torch.manual_seed(0)
    cfg = GPTConfig(block_size=16, n_layer=2, n_head=2, n_embd=16)
    model = GPT(cfg).eval()
    calib = [torch.randint(0, 256, (4, 16)) for _ in range(2)]
    task = condense.Task("toy", model, evaluate=lambda m: {"x": 0.0}, primary_metric="x", inputs=calib[0],
                         calibration_data=lambda: calib)
    out = apply_(model, FactorizeConfig(rank_ratio=0.5, activation_aware=True, include=("blocks.*.mlp.*",)),
                 task=task)
    assert isinstance(out.blocks[1].mlp.fc_out, LowRankLinear) and isinstance(out.blocks[1].attn.q_proj, nn.Linear)
    loaded = condense.load(condense.save(out, tmp_path / "svd"), model=GPT(cfg))
    with torch.no_grad():
        assert torch.equal(loaded(calib[1]), out(calib[1]))


def test_finetune_after_factorization_runs_on_task_data():
    task = tiny_task()
    x = task.batch(32)
    task.train_data = lambda: [(x, task.build_model()(x).argmax(-1).detach())]
    task.loss = lambda m, b: nn.functional.cross_entropy(m(b[0]), b[1])
    from condense.train.loop import FitConfig

    m = apply_(task.build_model(), FactorizeConfig(rank=2, finetune=FitConfig(steps=20, lr=1e-2)), task=task)
    assert isinstance(m.fc1, LowRankLinear) and not m.training
    with pytest.raises(condense.CondenseError, match="calibration"):
        apply_(task.build_model(), FactorizeConfig(activation_aware=True), task=None)
