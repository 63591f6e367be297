"""Structured pruning: exact shapes, equality with a masked reference, coupled cuts, errors, save/load."""
import copy
import json

import pytest
import torch
from torch import nn

import condense
from condense.core.artifact import artifact_size
from condense.core.config import config_from_dict
from condense.core.lineage import lineage
from condense.core.transforms import TransformContext
from condense.errors import CondenseError, ConfigError
from condense.prune import StructuredConfig, prune_
from condense.prune.graph import build_graph
from condense.prune.recover import obs_scores, reconstruct_
from condense.prune.structured import (activation_scores, apply_plan, consumer_statistics, kept_count,
                                       magnitude_scores, plan_structured)
from condense.tasks.bert import Bert, BertConfig
from condense.tasks.digits import DigitsCNN
from condense.tasks.gpt import GPT, GPTConfig
from condense.train.loop import FitConfig
from tests.prune.test_graph import ResidualMLP, Untraceable


def masked_reference(model, plan):
    """A copy of `model` whose pruned units are zeroed where they are consumed: equal to removing them."""
    ref = copy.deepcopy(model)
    mods = dict(ref.named_modules())
    for g in plan.graph.groups:
        if g.name not in plan.keep:
            continue
        drop = sorted(set(range(g.size)) - set(plan.keep[g.name]))
        for mem in g.members:
            if mem.dim == "in":
                cols = [u * mem.unit + j for u in drop for j in range(mem.unit)]
                with torch.no_grad():
                    mods[mem.module].weight[:, cols] = 0
    return ref


def randomise_bn(model):
    g = torch.Generator().manual_seed(1)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.copy_(torch.randn(m.num_features, generator=g))
            m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            nn.init.normal_(m.weight)
    return model.eval()


def test_config_round_trips_through_json_and_validates():
    cfg = StructuredConfig(ratio=0.25, target="heads", importance="activation", layer_ratios=(("layers.0.*", 0.5),),
                           round_to=8, exclude=("layers.5.*",), finetune=FitConfig(steps=3, lr=1e-4))
    assert config_from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg
    for bad in (dict(ratio=1.0), dict(ratio=-0.1), dict(target="rows"), dict(importance="random"),
                dict(round_to=0), dict(layer_ratios=(("fc*", 1.0),)), dict(include="fc1")):
        with pytest.raises(ConfigError):
            StructuredConfig(**bad)


def test_kept_count_rounds_features():
    assert kept_count(64, 1, 0.5, 1) == 32
    assert kept_count(30, 1, 0.5, 8) == 16
    assert kept_count(12, 32, 0.5, 8) == 6  # a head is 32 features: any head count is a multiple of 8
    assert kept_count(10, 1, 0.0, 1) == 10


def test_digits_cnn_half_channels_exact_shapes_and_masked_reference():
    model = randomise_bn(DigitsCNN())
    x = torch.randn(5, 1, 8, 8)
    plan = plan_structured(model, StructuredConfig(ratio=0.5))
    ref = masked_reference(model, plan)
    prune_(model, StructuredConfig(ratio=0.5))
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    bns = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    assert [(c.in_channels, c.out_channels, tuple(c.weight.shape)) for c in convs] == [
        (1, 16, (16, 1, 3, 3)), (16, 32, (32, 16, 3, 3)), (32, 64, (64, 32, 3, 3))]
    assert [(b.num_features, b.running_mean.numel(), b.weight.numel()) for b in bns] == [
        (16,) * 3, (32,) * 3, (64,) * 3]
    assert tuple(model.classifier.weight.shape) == (10, 64)
    with torch.no_grad():
        torch.testing.assert_close(model(x), ref(x), rtol=1e-5, atol=1e-5)
    details = lineage(model)["transforms"][-1]["details"]
    assert details["shapes"]["features.1.0"] == {"in": 16, "out": 32}
    assert details["shapes"]["features.1.1"] == {"features": 32} and details["kept"]["features.3.0"] == 64


def test_flatten_cnn_and_mlp_equal_masked_reference():
    net = randomise_bn(nn.Sequential(nn.Conv2d(1, 6, 3, padding=1), nn.BatchNorm2d(6), nn.ReLU(), nn.MaxPool2d(2),
                                     nn.Flatten(), nn.Linear(6 * 16, 12), nn.ReLU(), nn.Linear(12, 3)))
    plan = plan_structured(net, StructuredConfig(ratio=0.5))
    ref = masked_reference(net, plan)
    prune_(net, StructuredConfig(ratio=0.5))
    assert (net[0].out_channels, net[5].in_features, net[5].out_features, net[7].in_features) == (3, 48, 6, 6)
    x = torch.randn(4, 1, 8, 8)
    with torch.no_grad():
        torch.testing.assert_close(net(x), ref(x), rtol=1e-5, atol=1e-5)


def test_bert_heads_12_to_6_and_ffn_halved_equal_masked_reference():
    torch.manual_seed(0)
    bert = Bert(BertConfig(vocab_size=100, hidden_size=384, num_layers=1, num_heads=12, intermediate_size=1536)).eval()
    ids = torch.randint(0, 100, (2, 9))
    ctx = TransformContext(calibration=[ids])
    plan = plan_structured(bert, StructuredConfig(ratio=0.5), ctx)
    ref = masked_reference(bert, plan)
    prune_(bert, StructuredConfig(ratio=0.5), calibration=[ids])
    att = bert.layers[0].attn
    assert (att.n_heads, att.head_dim, att.query.out_features, att.key.out_features, att.value.out_features,
            att.out.in_features, att.out.out_features) == (6, 32, 192, 192, 192, 192, 384)
    assert (bert.layers[0].ffn_in.out_features, bert.layers[0].ffn_out.in_features) == (768, 768)
    assert bert.layers[0].attn_norm.normalized_shape == (384,)  # hidden size kept
    with torch.no_grad():
        torch.testing.assert_close(bert(ids), ref(ids), rtol=1e-4, atol=1e-5)
    assert lineage(bert)["transforms"][-1]["details"]["shapes"]["layers.0.attn"] == {"heads": 6}


def test_gpt_mlp_width_halved_heads_untouched_equal_masked_reference():
    torch.manual_seed(0)
    gpt = GPT(GPTConfig(block_size=16, n_layer=2, n_head=4, n_embd=32)).eval()
    cfg = StructuredConfig(ratio=0.5, target="ffn")
    plan = plan_structured(gpt, cfg)  # no data: fx fails, FFN patterns still apply
    assert plan.graph.method == "patterns" and "lm_head" in plan.unsupported
    ref = masked_reference(gpt, plan)
    prune_(gpt, cfg)
    for b in gpt.blocks:
        assert (b.mlp.fc_in.out_features, b.mlp.fc_out.in_features, b.attn.n_heads) == (64, 64, 4)
    idx = torch.randint(0, 256, (2, 10))
    with torch.no_grad():
        torch.testing.assert_close(gpt(idx), ref(idx), rtol=1e-4, atol=1e-5)
    assert lineage(gpt)["transforms"][-1]["details"]["unsupported"] == plan.unsupported


def test_residual_stream_is_cut_through_the_add_and_kept_where_it_is_the_output():
    from tests.prune.test_graph import ResidualOut

    net, x = ResidualMLP(), torch.randn(2, 4)
    plan = plan_structured(net, StructuredConfig(ratio=0.5))
    ref = masked_reference(net, plan)
    prune_(net, StructuredConfig(ratio=0.5))
    assert (net.fc0.out_features, net.fc1.in_features, net.fc1.out_features, net.fc2.in_features,
            net.fc2.out_features, net.head.in_features) == (4, 4, 8, 8, 4, 4)
    torch.testing.assert_close(net(x), ref(x), rtol=1e-5, atol=1e-6)
    net = ResidualOut()
    prune_(net, StructuredConfig(ratio=0.5))
    assert (net.fc0.out_features, net.fc1.out_features, net.fc2.out_features) == (8, 8, 8)


def test_round_to_overrides_include_exclude():
    net = nn.Sequential(nn.Linear(4, 30), nn.ReLU(), nn.Linear(30, 20), nn.ReLU(), nn.Linear(20, 2))
    prune_(net, StructuredConfig(ratio=0.5, round_to=8, layer_ratios=(("2", 0.25),)))
    assert (net[0].out_features, net[2].in_features, net[2].out_features, net[4].in_features) == (16, 16, 16, 16)
    net = nn.Sequential(nn.Linear(4, 30), nn.ReLU(), nn.Linear(30, 20), nn.ReLU(), nn.Linear(20, 2))
    prune_(net, StructuredConfig(ratio=0.5, exclude=("0",)))
    assert (net[0].out_features, net[2].out_features) == (30, 10)
    with pytest.raises(ConfigError, match="matches no prunable"):
        prune_(net, StructuredConfig(include=("nothing*",)))


def test_magnitude_and_activation_scores_match_hand_computation():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(4, 6), nn.ReLU(), nn.Linear(6, 2))
    g = build_graph(net).group("0")
    w1, b1, w2 = net[0].weight, net[0].bias, net[2].weight
    a = torch.cat([w1, b1[:, None]], 1).norm(dim=1)
    c = w2.norm(dim=0)
    torch.testing.assert_close(magnitude_scores(net, g), (a / a.mean() + c / c.mean()).detach())
    x = torch.randn(16, 4)
    act = torch.relu(net[0](x)).abs().mean(0) * c
    stats = consumer_statistics(net, ["2"], [x], lambda m, b: m(b))
    got = activation_scores(net, [g], stats)["0"]
    torch.testing.assert_close(got, (act / act.mean()).detach())


@pytest.mark.parametrize("inputs", ["dense", "pruned"])
def test_reconstruct_equals_lstsq_and_reduces_error(inputs):
    torch.manual_seed(0)
    dense = nn.Sequential(nn.Linear(6, 12), nn.ReLU(), nn.Linear(12, 10), nn.ReLU(), nn.Linear(10, 5)).eval()
    x = torch.randn(256, 6)
    plan = plan_structured(dense, StructuredConfig(ratio=0.5, reconstruct=True), TransformContext(calibration=[x]))
    k0, k2 = plan.keep["0"], plan.keep["2"]
    assert plan.refit == {"2": (k0, k2), "4": (k2, None)}
    cut = copy.deepcopy(dense)
    apply_plan(cut, plan)
    before = float((cut(x) - dense(x)).pow(2).mean().detach())
    reconstruct_(cut, dense, plan.refit, [x], lambda m, b: m(b), inputs=inputs, damp=0.0)
    assert float((cut(x) - dense(x)).pow(2).mean().detach()) < 0.5 * before
    # the last layer's reference: lstsq of the dense output on its inputs at the kept features
    h = (dense[:4](x)[:, k2] if inputs == "dense" else cut[:4](x)).detach().double()  # (256, 5)
    z = torch.cat([h, torch.ones(256, 1, dtype=h.dtype)], 1)
    ref = torch.linalg.lstsq(z, dense(x).detach().double()).solution  # (6, 5)
    torch.testing.assert_close(cut[4].weight.detach(), ref[:-1].T.float(), rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(cut[4].bias.detach(), ref[-1].float(), rtol=1e-4, atol=1e-5)


def test_prune_with_reconstruct_runs_it_and_needs_calibration():
    torch.manual_seed(0)
    dense = nn.Sequential(nn.Linear(6, 12), nn.ReLU(), nn.Linear(12, 5)).eval()
    x = torch.randn(128, 6)
    errors = []
    for reconstruct in (False, True):
        m = copy.deepcopy(dense)
        prune_(m, StructuredConfig(ratio=0.5, reconstruct=reconstruct), calibration=[x])
        errors.append(float((m(x) - dense(x)).pow(2).mean().detach()))
    assert errors[1] < 0.5 * errors[0]
    with pytest.raises(CondenseError, match="reconstruct=True.*needs calibration"):
        prune_(dense, StructuredConfig(reconstruct=True))
    assert dense[0].out_features == 12


@pytest.mark.parametrize("unit", [1, 3])
def test_obs_removes_first_the_unit_least_squares_misses_least(unit):
    torch.manual_seed(0)
    layer = nn.Linear(12, 4)
    x = torch.randn(500, 12).double()
    ones = torch.ones(500, 1, dtype=x.dtype)
    z = torch.cat([x, ones], 1)
    scores = obs_scores(layer, z.T @ z / 500, n_remove=2, unit=unit, damp=0.0)
    y = layer(x.float()).detach().double()

    def error_without(units):  # least-squares refit (with intercept) on the other inputs
        zk = torch.cat([x[:, [c for c in range(12) if c // unit not in units]], ones], 1)
        return float(((zk @ torch.linalg.lstsq(zk, y).solution - y) ** 2).sum())

    first = min(range(12 // unit), key=lambda u: error_without({u}))
    second = min((u for u in range(12 // unit) if u != first), key=lambda u: error_without({first, u}))
    assert scores.argsort()[:2].tolist() == [first, second]
    assert sorted(scores.tolist())[2:] == [12 // unit] * (12 // unit - 2)


def test_obs_with_reconstruct_on_bert_heads_and_ffn_beats_plain_cut():
    torch.manual_seed(0)
    bert = Bert(BertConfig(vocab_size=100, hidden_size=32, num_layers=2, num_heads=4, intermediate_size=64)).eval()
    ids = [torch.randint(0, 100, (8, 12)) for _ in range(4)]
    errors = {}
    for name, cfg in (("plain", StructuredConfig(ratio=0.5)),
                      ("obs", StructuredConfig(ratio=0.5, importance="obs", reconstruct=True))):
        m = copy.deepcopy(bert)
        prune_(m, cfg, calibration=ids)
        assert [b.attn.n_heads for b in m.layers] == [2, 2] and m.layers[1].ffn_in.out_features == 32
        with torch.no_grad():
            errors[name] = sum(float((m(x) - bert(x)).pow(2).mean()) for x in ids)
    assert errors["obs"] < 0.5 * errors["plain"]


def test_ratio_removing_a_whole_layer_is_an_error_and_model_unchanged():
    net = nn.Sequential(nn.Linear(4, 2), nn.ReLU(), nn.Linear(2, 64), nn.ReLU(), nn.Linear(64, 1))
    before = copy.deepcopy(net.state_dict())
    with pytest.raises(ConfigError, match=r"pruning 0 \(2 neurons\).*remove all.*exclude=\('0',\)"):
        prune_(net, StructuredConfig(ratio=0.9))
    assert all(torch.equal(before[k], v) for k, v in net.state_dict().items()) and net[0].out_features == 2
    with pytest.raises(ConfigError, match=r"\[0, 1\)"):
        StructuredConfig(ratio=1.0)


def test_untraceable_model_errors_clearly_without_data_and_prunes_with_it():
    net = Untraceable()
    before = copy.deepcopy(net.state_dict())
    with pytest.raises(ConfigError, match="cannot be traced.*calibration"):
        prune_(net, StructuredConfig(ratio=0.5))
    assert all(torch.equal(before[k], v) for k, v in net.state_dict().items())
    prune_(net, StructuredConfig(ratio=0.5), calibration=[torch.randn(3, 4)])
    assert (net.a.out_features, net.b.in_features) == (4, 4)
    assert lineage(net)["transforms"][-1]["details"]["graph"] == "recorded"


def test_finetune_needs_a_task_and_leaves_the_model_unchanged():
    net = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
    with pytest.raises(ConfigError, match="finetune"):
        prune_(net, StructuredConfig(finetune=FitConfig(steps=2)))
    assert net[0].out_features == 8


def test_digits_prune_finetune_save_load_round_trip(tmp_path):
    task = condense.get_task("digits", epochs=3)  # a few seconds of training into the test cache
    dense = task.build_model()
    dense_dir = condense.save(dense, tmp_path / "dense")
    model = copy.deepcopy(dense)
    prune_(model, StructuredConfig(ratio=0.5), task=task)
    cut_acc = task.metrics(model)["accuracy"]
    model = copy.deepcopy(dense)
    prune_(model, StructuredConfig(ratio=0.5, finetune=FitConfig(steps=40, lr=2e-3)), task=task)
    assert task.metrics(model)["accuracy"] > cut_acc
    d = condense.save(model, tmp_path / "pruned")
    loaded = condense.load(d)
    x = task.batch(32)
    with torch.no_grad():
        assert torch.equal(loaded(x), model(x))
    assert loaded.classifier.in_features == 64
    assert artifact_size(d) < 0.35 * artifact_size(dense_dir)


def test_gpt_heads_and_ffn_save_load_round_trip(tmp_path):
    torch.manual_seed(0)
    gpt = GPT(GPTConfig(block_size=16, n_layer=2, n_head=4, n_embd=32)).eval()
    idx = torch.randint(0, 256, (2, 10))
    prune_(gpt, StructuredConfig(ratio=0.5), calibration=[idx])
    assert [b.attn.n_heads for b in gpt.blocks] == [2, 2] and gpt.blocks[0].attn.q_proj.out_features == 16
    d = condense.save(gpt, tmp_path / "gpt")
    loaded = condense.load(d, model=GPT(GPTConfig(block_size=16, n_layer=2, n_head=4, n_embd=32)))
    with torch.no_grad():
        assert torch.equal(loaded(idx), gpt(idx))
