import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import condense
from condense.core import lineage
from condense.errors import ConfigError
from condense.prune import prune_
from condense.prune.schedule import GradualPruneConfig, cubic_sparsity, distill_loss
from condense.prune.unstructured import current_mask
from condense.train.loop import FitConfig, fit


pytestmark = pytest.mark.usefixtures("one_thread")


def toy_task(seen=None):
    """A 2-layer MLP classifying 16-d points by a fixed random rule; `seen` collects (layer, weight) per step."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(512, 16, generator=g)
    y = (x @ torch.randn(16, 4, generator=g)).argmax(-1)

    torch.manual_seed(0)
    trained = nn.Sequential(nn.Linear(16, 64), nn.ReLU(), nn.Linear(64, 4))
    fit(trained, [(x, y)], lambda m, b: F.cross_entropy(m(b[0]), b[1]), FitConfig(steps=300, lr=1e-2))

    def model():
        return copy.deepcopy(trained)

    def loss(m, b):
        if seen is not None:
            seen.append({n: (m.get_submodule(n).weight.detach().clone(), current_mask(m.get_submodule(n)).clone())
                         for n in ("0", "2")})
        return F.cross_entropy(m(b[0]), b[1])

    return condense.Task("toy", model, evaluate=lambda m: {"acc": float((m(x).argmax(-1) == y).float().mean())},
                         primary_metric="acc", inputs=x[:1], calibration_data=lambda: iter([x[:64]]),
                         train_data=lambda: ((x[i:i + 64], y[i:i + 64]) for i in range(0, 512, 64)), loss=loss)


def test_cubic_schedule_matches_hand_computed_values():
    # s_f + (s_i - s_f)(1 - t/n)^3 with s_i = 0, s_f = 0.9, n = 3: 0.9 - 0.9 * 8/27, 0.9 - 0.9/27, 0.9
    got = [cubic_sparsity(t, final=0.9, n=3) for t in range(5)]
    assert got == pytest.approx([0.0, 0.9 - 0.9 * 8 / 27, 0.9 - 0.9 / 27, 0.9, 0.9], abs=1e-12)
    assert got[1] == pytest.approx(0.633333333, abs=1e-9) and got[2] == pytest.approx(0.866666667, abs=1e-9)
    # s_i = 0.2, s_f = 0.8, t0 = 10, dt = 5, n = 4: at t = 15, 0.8 - 0.6 * 0.75^3 = 0.546875 (exact in binary)
    assert cubic_sparsity(15, initial=0.2, final=0.8, n=4, t0=10, dt=5) == 0.546875
    assert cubic_sparsity(3, initial=0.2, final=0.8, n=4, t0=10, dt=5) == pytest.approx(0.2)
    assert GradualPruneConfig(final_sparsity=0.9, steps=3).sparsity_at(2) == pytest.approx(0.9 - 0.9 / 27)


def test_gradual_pruning_reaches_exact_sparsity_with_masks_fixed_while_finetuning():
    seen: list = []
    task = toy_task(seen)
    model = task.build_model()
    cfg = GradualPruneConfig(final_sparsity=0.75, steps=3, finetune={"steps": 8, "lr": 5e-3})
    prune_(model, cfg, task=task)
    assert [int((model.get_submodule(n).weight == 0).sum()) for n in ("0", "2")] == [768, 192]
    assert type(model[0]) is nn.Linear  # masks baked in
    assert len(seen) == 3 * 8
    targets = [cfg.sparsity_at(e) for e in (1, 2, 3)]
    for step, rec in enumerate(seen):
        for n, (w, keep) in rec.items():
            assert (w[~keep] == 0).all()  # pruned weights are zero at every step
            assert float((~keep).float().mean()) == pytest.approx(targets[step // 8], abs=0.01)
    for a, b in zip(seen, seen[1:]):  # masks only grow: nothing pruned comes back
        assert all(((a[n][0] == 0) & ~a[n][1] & (b[n][0] != 0)).sum() == 0 for n in a)
    w0, w7 = seen[0]["0"][0], seen[7]["0"][0]
    assert not torch.equal(w0[w0 != 0], w7[w0 != 0])  # fine-tuning did change the kept weights
    details = lineage.lineage(model)["transforms"][0]["details"]
    assert [h["sparsity"] for h in details["history"]] == [round(t, 6) for t in targets]


def test_without_masks_training_would_revive_zeros():
    """The control for the test above: plain fine-tuning does not keep zeros at zero."""
    task = toy_task()
    model = task.build_model()
    with torch.no_grad():
        model[0].weight[:, :8] = 0
    fit(model, task.train_data, task.loss, FitConfig(steps=4, lr=5e-3))
    assert (model[0].weight[:, :8] != 0).any()


def test_gradual_pruning_keeps_accuracy_on_the_toy_task_and_round_trips(tmp_path):
    task = toy_task()
    dense_acc = task.metrics(task.build_model())["acc"]
    cfg = GradualPruneConfig(final_sparsity=0.8, steps=4, finetune={"steps": 30, "lr": 5e-3}, distill_from_dense=True)
    model = prune_(task.build_model(), cfg, task=task)
    one_shot = prune_(task.build_model(), condense.prune.unstructured.UnstructuredConfig(sparsity=0.8))
    acc, one_shot_acc = task.metrics(model)["acc"], task.metrics(one_shot)["acc"]
    # measured: dense 1.00, gradual + distillation 0.87, one-shot 0.55
    assert acc >= one_shot_acc + 0.2 and acc >= dense_acc - 0.2, (acc, one_shot_acc, dense_acc)
    loaded = condense.load(condense.save(model, tmp_path / "g"), model=task.build_model())
    x = torch.randn(8, 16)
    assert torch.equal(loaded(x), model(x))


def test_distill_loss_matches_the_kl_formula():
    torch.manual_seed(0)
    s, t = torch.randn(2, 3, 5), torch.randn(2, 3, 5)
    p, q = F.softmax(t / 2, -1), F.softmax(s / 2, -1)
    ref = (p * (p.log() - q.log())).sum(-1).mean() * 4
    torch.testing.assert_close(distill_loss(s, t, 2.0), ref)
    assert float(distill_loss(t, t, 2.0)) == pytest.approx(0.0, abs=1e-6)


def test_needs_a_task_to_finetune_and_leaves_model_unchanged():
    model = toy_task().build_model()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(ConfigError, match="needs a task with train_data and loss .* or set finetune=None"):
        prune_(model, GradualPruneConfig(final_sparsity=0.5, steps=2))
    assert all(torch.equal(model.state_dict()[k], v) for k, v in before.items())
    prune_(model, GradualPruneConfig(final_sparsity=0.5, steps=2, finetune=None))
    assert int((model[0].weight == 0).sum()) == 512


@pytest.mark.parametrize("kwargs, match", [
    ({"final_sparsity": 1.0}, r"final_sparsity must be in \[0, 1\)"),
    ({"final_sparsity": 0.5, "initial_sparsity": 0.6}, "must not exceed final_sparsity"),
    ({"steps": 0}, "steps .* must be an integer >= 1"),
    ({"finetune": {"steps": -1}}, r"GradualPruneConfig.finetune: FitConfig.steps must be an integer in 0..1000000000"),
    ({"finetune": 50}, r"GradualPruneConfig.finetune must be a FitConfig or None \(or a mapping of its fields"),
    ({"scope": "net"}, "scope must be one of"),
])
def test_bad_configs_name_the_fix(kwargs, match):
    with pytest.raises(ConfigError, match=match):
        GradualPruneConfig(**kwargs)
