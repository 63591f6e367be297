"""Early exit: thresholds 0 / 1 give the first / last exit exactly, frozen training, the sweep, save/load, CLI."""
import copy
import json

import pytest
import torch

import condense
from condense.core.config import config_from_dict
from condense.core.task import Task
from condense.core.transforms import apply_
from condense.early_exit import EarlyExitConfig, EarlyExitModel, confidence, early_exit_, sweep_thresholds
from condense.errors import ConfigError
from condense.tasks.digits import DigitsCNN
from condense.tasks.gpt import GPT, GPTConfig
from condense.train.loop import FitConfig


pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models: one thread (tests/conftest.py)

CH = (4, 8, 16)


def digits_like_task() -> Task:
    """A random small DigitsCNN and 8x8 inputs labelled by which quadrant is brightest (learnable early)."""
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(0)
    x = torch.rand(96, 1, 8, 8, generator=g)
    y = x.unfold(2, 4, 4).unfold(3, 4, 4).sum((-1, -2)).reshape(96, 4).argmax(-1)  # (96,) in 0..3
    model = DigitsCNN(CH).eval()

    def evaluate(m):
        with torch.no_grad():
            return {"accuracy": float((m(x).argmax(-1) == y).float().mean())}

    return Task("toy-digits", model, evaluate=evaluate, primary_metric="accuracy", inputs=x[:1],
                train_data=lambda: [(x[:48], y[:48]), (x[48:], y[48:])], batch_sizes=(1, 8),
                loss=lambda m, b: torch.nn.functional.cross_entropy(m(b[0]), b[1]))


def test_config_round_trips_and_validates():
    for cfg in (EarlyExitConfig(threshold=0.5, criterion="entropy", exits=(1,)),
                EarlyExitConfig(thresholds=(0.5, 0.9), finetune=FitConfig(steps=3), mode="joint")):
        assert config_from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg
    for bad in (dict(threshold=1.5), dict(criterion="margin"), dict(mode="both"), dict(exits=()),
                dict(thresholds=(0.5, -1.0)), dict(quality_budget=-1)):
        with pytest.raises(ConfigError):
            EarlyExitConfig(**bad)


def test_confidence_criteria():
    z = torch.tensor([[0.0, 0.0], [100.0, 0.0]])
    assert confidence(z).tolist() == [0.5, 1.0]
    assert confidence(z, "entropy").tolist() == pytest.approx([0.0, 1.0], abs=1e-6)
    seq = torch.stack([z, z])  # (B=2, T=2, K=2): the mean over positions
    assert confidence(seq).tolist() == [0.75, 0.75]


@pytest.mark.parametrize("criterion", ["max_prob", "entropy"])
def test_threshold_zero_and_one_equal_first_and_last_exit_exactly_cnn(criterion):
    torch.manual_seed(0)
    m = EarlyExitModel(DigitsCNN(CH).eval(), criterion=criterion).eval()
    x = torch.randn(7, 1, 8, 8)
    with torch.no_grad():
        exits = m.all_exits(x)
        m.threshold = 0.0
        assert torch.equal(m(x), exits[0]) and m.exit_counts == [7, 0, 0]
        m.threshold = 1.0
        assert torch.equal(m(x), m.backbone(x)) and torch.equal(m(x), exits[-1])
        m.threshold = float(confidence(exits[0], criterion).median())  # a mix: each row equals its exit's row
        m.exit_counts = [0, 0, 0]
        y = m(x)
        first = confidence(exits[0], criterion) > m.threshold
        assert torch.equal(y[first], exits[0][first]) and m.exit_counts[0] == int(first.sum())


def test_threshold_zero_and_one_on_gpt():
    torch.manual_seed(0)
    g = GPT(GPTConfig(block_size=16, n_layer=3, n_head=2, n_embd=16)).eval()
    m = EarlyExitModel(g).eval()
    idx = torch.randint(0, 256, (3, 10))
    with torch.no_grad():
        m.threshold = 1.0
        assert torch.equal(m(idx), g(idx)) and len(m.heads) == 2
        m.threshold = 0.0
        assert torch.equal(m(idx), m.all_exits(idx)[0])
        assert m(idx, idx)[1].dim() == 0  # extra arguments: the backbone (targets -> loss)


def test_frozen_training_keeps_the_backbone_and_teaches_the_heads():
    task = digits_like_task()
    model = task.build_model()
    x, y = next(iter(task.train_data()))
    with torch.no_grad():
        before = model(x).clone()
    untrained = EarlyExitModel(copy.deepcopy(model)).eval()
    m = early_exit_(model, EarlyExitConfig(fit=FitConfig(steps=60, lr=1e-2)), task=task)
    with torch.no_grad():
        assert torch.equal(m.backbone(x), before)  # not a single weight or BN statistic moved
        loss = lambda mm: float(torch.nn.functional.cross_entropy(mm.all_exits(x)[0], y))
        assert loss(m) < 0.7 * loss(untrained)
    with pytest.raises(ConfigError, match="labelled data"):
        early_exit_(DigitsCNN(CH), EarlyExitConfig())


def test_sweep_curve_and_chosen_point_follow_the_rules():
    task = digits_like_task()
    m = early_exit_(task.build_model(), EarlyExitConfig(fit=FitConfig(steps=30, lr=1e-2)), task=task)
    curve = sweep_thresholds(m, task, (0.0, 0.6, 1.0), samples=8, rounds=1, quality_budget=0.05)
    assert curve.baseline.threshold is None and [p.threshold for p in curve.points] == [0.0, 0.6, 1.0]
    assert curve.points[0].exit_fractions == [1.0, 0.0, 0.0] and curve.points[2].exit_fractions == [0.0, 0.0, 1.0]
    assert curve.points[2].quality == curve.baseline.quality  # threshold 1 is the backbone
    for p in curve.points:
        assert sum(p.exit_fractions) == pytest.approx(1.0)
    if curve.chosen is not None:
        assert curve.chosen.speedup > 1
        assert curve.baseline.quality["accuracy"] - curve.chosen.quality["accuracy"] <= 0.05 + 1e-12
        assert curve.chosen.latency_s == min(p.latency_s for p in curve.points if p.speedup > 1 and
                                             curve.baseline.quality["accuracy"] - p.quality["accuracy"] <= 0.05 + 1e-12)
    else:  # None only when no point is both faster and within the budget
        assert not any(p.speedup > 1 and curve.baseline.quality["accuracy"] - p.quality["accuracy"] <= 0.05 + 1e-12
                       for p in curve.points)
    json.dumps(curve.to_dict())


def test_pipeline_step_records_curve_and_artifact_reloads(tmp_path):
    task = digits_like_task()
    cfg = EarlyExitConfig(finetune=FitConfig(steps=5), thresholds=(0.3, 0.9), exits=(1,))
    m = apply_(task.build_model(), cfg, task=task)
    assert isinstance(m, EarlyExitModel) and m.exits == (1,)
    details = condense.core.lineage.lineage(m)["transforms"][-1]["details"]
    assert details["exits"] == [1] and details["curve"]["metric"] == "accuracy" and details["threshold"] == m.threshold
    loaded = condense.load(condense.save(m, tmp_path / "ee"), model=DigitsCNN(CH))
    x = task.batch(5)
    with torch.no_grad():
        assert isinstance(loaded, EarlyExitModel) and loaded.threshold == m.threshold and torch.equal(loaded(x), m(x))


def test_a_deep_copy_runs_its_own_layers():
    torch.manual_seed(0)
    m = EarlyExitModel(DigitsCNN(CH).eval(), threshold=1.0).eval()
    c = copy.deepcopy(m)
    x = torch.randn(3, 1, 8, 8)
    with torch.no_grad():
        ref = m(x).clone()
        c.backbone.classifier.bias.add_(1.0)
        assert torch.equal(m(x), ref) and torch.allclose(c(x), ref + 1.0)


def test_joint_training_also_trains_the_backbone():
    task = digits_like_task()
    model = task.build_model()
    w0 = model.features[0][0].weight.detach().clone()
    m = early_exit_(model, EarlyExitConfig(mode="joint", fit=FitConfig(steps=3, lr=1e-2)), task=task)
    assert not torch.equal(m.backbone.features[0][0].weight, w0) and not m.training


def test_a_model_without_a_registered_splitter_is_told_what_to_register():
    with pytest.raises(ConfigError, match=r"no early-exit splitter is registered for Sequential.*"
                                          r"SPLITTERS\.register\(Sequential\)"):
        EarlyExitModel(torch.nn.Sequential(torch.nn.Linear(2, 2)))
