import json

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import condense
from condense.core import lineage
from condense.core.artifact import read_metadata
from condense.core.config import config_from_dict
from condense.core.transforms import apply_
from condense.errors import ConfigError
from condense.prune import prune_
from condense.prune.nm import NMConfig
from condense.prune.schedule import GradualPruneConfig
from condense.prune.unstructured import (BakeMasksConfig, Scope, UnstructuredConfig, compute_masks, current_mask,
                                         make_permanent)
from condense.testing import TinyMLP
from condense.train.loop import FitConfig, fit


pytestmark = pytest.mark.usefixtures("one_thread")


def known_linear(values: torch.Tensor) -> nn.Linear:
    lin = nn.Linear(values.shape[1], values.shape[0], bias=False)
    with torch.no_grad():
        lin.weight.copy_(values)
    return lin


class Mixed(nn.Module):
    """Embedding -> Conv1x1 (as Conv2d) -> Linear head: embeddings must never be pruned."""

    def __init__(self):
        super().__init__()
        self.emb = nn.Embedding(10, 8)
        self.conv = nn.Conv2d(8, 8, 1)
        self.head = nn.Linear(8, 10)

    def forward(self, idx):
        h = self.emb(idx)[:, :, None, None]             # (B, 8, 1, 1)
        return self.head(self.conv(h).flatten(1))       # (B, 10)


def test_sparsity_half_prunes_exactly_the_smallest_half():
    w = torch.tensor([[0.5, -8.0, 3.0, -0.1], [7.0, -2.0, 0.2, 6.0]])
    lin = prune_(known_linear(w), UnstructuredConfig(sparsity=0.5))
    assert lin.weight.tolist() == [[0.0, -8.0, 3.0, 0.0], [7.0, 0.0, 0.0, 6.0]]
    row = prune_(known_linear(w), UnstructuredConfig(sparsity=0.5, scope="row"))
    assert row.weight.tolist() == [[0.0, -8.0, 3.0, 0.0], [7.0, 0.0, 0.0, 6.0]]
    quarter = prune_(known_linear(w), UnstructuredConfig(sparsity=0.25, scope="row"))
    assert (quarter.weight == 0).sum(1).tolist() == [1, 1]


def test_exact_counts_on_a_random_layer():
    torch.manual_seed(0)
    m = TinyMLP()
    w = m.fc1.weight.detach().clone()
    prune_(m, UnstructuredConfig(sparsity=0.7))
    assert int((m.fc1.weight == 0).sum()) == round(0.7 * 128) and int((m.fc2.weight == 0).sum()) == round(0.7 * 64)
    assert (m.fc1.bias != 0).all()  # biases are never pruned
    zero = m.fc1.weight == 0
    assert w[~zero].abs().min() > w[zero].abs().max() and torch.equal(m.fc1.weight[~zero], w[~zero])


def test_threshold_alpha_prunes_exactly_the_entries_below():
    torch.manual_seed(0)
    w = torch.randn(6, 10)
    lin = prune_(known_linear(w), UnstructuredConfig(threshold_alpha=0.3))
    below = w.abs() < 0.3 * w.abs().max()
    assert torch.equal(lin.weight == 0, below) and torch.equal(lin.weight[~below], w[~below])
    rows = prune_(known_linear(w), UnstructuredConfig(threshold_alpha=0.3, scope="row"))
    assert torch.equal(rows.weight == 0, w.abs() < 0.3 * w.abs().amax(dim=1, keepdim=True))


def test_global_scope_takes_more_from_the_smaller_scale_layer():
    small = torch.arange(1.0, 17.0).view(4, 4)            # |w| in 1..16
    big = 100 + torch.arange(16.0).view(4, 4)             # |w| in 100..115
    net = nn.Sequential(known_linear(small), known_linear(big))
    layer = prune_(net, UnstructuredConfig(sparsity=0.5))
    assert [int((lay.weight == 0).sum()) for lay in layer] == [8, 8]
    net = nn.Sequential(known_linear(small), known_linear(big))
    glob = prune_(net, UnstructuredConfig(sparsity=0.5, scope="global"))
    assert [int((lay.weight == 0).sum()) for lay in glob] == [16, 0]
    net = nn.Sequential(known_linear(small), known_linear(big))
    glob = prune_(net, UnstructuredConfig(sparsity=0.25, scope="global"))
    assert [int((lay.weight == 0).sum()) for lay in glob] == [8, 0]


def test_default_is_half_sparsity():
    assert UnstructuredConfig() == UnstructuredConfig(sparsity=0.5)
    assert UnstructuredConfig(threshold_alpha=0.1).sparsity is None


def test_compute_masks_keeps_prior_masks():
    prior = {"a": torch.tensor([[True, False, True, True]])}
    keep = compute_masks({"a": torch.tensor([[1.0, 9.0, 2.0, 3.0]])}, sparsity=0.5, prior=prior)["a"]
    assert keep.tolist() == [[False, False, True, True]]  # the prior zero counts towards the half


@pytest.mark.parametrize("kwargs, match", [
    ({"sparsity": 1.0}, r"sparsity must be in \[0, 1\), got 1.0; .*e.g. use 0.9"),
    ({"sparsity": -0.1}, r"sparsity must be in \[0, 1\), got -0.1"),
    ({"sparsity": 0.5, "threshold_alpha": 0.1}, "one of sparsity .* or threshold_alpha .*, not both"),
    ({"threshold_alpha": 1.5}, r"threshold_alpha must be in \[0, 1\)"),
    ({"sparsity": 0.5, "scope": "model"}, "scope must be one of"),
    ({"sparsity": 0.5, "criterion": "size"}, "unknown criterion 'size'; choose one of"),
    ({"sparsity": 0.5, "include": "fc1"}, "include must be a tuple of patterns"),
])
def test_bad_configs_name_the_fix(kwargs, match):
    with pytest.raises(ConfigError, match=match):
        UnstructuredConfig(**kwargs)


@pytest.mark.parametrize("cfg, ctx, match", [
    (UnstructuredConfig(sparsity=0.5, include=("blocks.*",)), {}, "include pattern 'blocks.*' matches no"),
    (UnstructuredConfig(sparsity=0.5, exclude=("classifier",)), {}, "exclude pattern 'classifier' matches no"),
    (UnstructuredConfig(sparsity=0.5, exclude=("fc*",)), {}, "no Linear module left to prune"),
    (UnstructuredConfig(sparsity=0.5, criterion="wanda"), {}, "criterion 'wanda' needs calibration data"),
])
def test_failed_prune_leaves_the_model_unchanged(cfg, ctx, match):
    torch.manual_seed(0)
    m = TinyMLP()
    before = {k: v.clone() for k, v in m.state_dict().items()}
    with pytest.raises(condense.CondenseError, match=match):
        prune_(m, cfg, **ctx)
    assert type(m.fc1) is nn.Linear and not hasattr(m.fc1, "parametrizations")
    assert m.state_dict().keys() == before.keys() and all(torch.equal(m.state_dict()[k], v) for k, v in before.items())
    assert lineage.lineage(m)["transforms"] == []


def test_default_layers_are_linear_and_conv_not_embeddings():
    torch.manual_seed(0)
    m = prune_(Mixed(), UnstructuredConfig(sparsity=0.5))
    assert (m.emb.weight != 0).all()
    assert int((m.conv.weight == 0).sum()) == 32 and int((m.head.weight == 0).sum()) == 40
    assert lineage.lineage(m)["transforms"][0]["details"]["layers"] == ["conv", "head"]


def test_kept_masks_hold_zeros_through_training_and_bake():
    torch.manual_seed(0)
    m = prune_(TinyMLP(), UnstructuredConfig(sparsity=0.6, permanent=False))
    keep = current_mask(m.fc1).clone()
    orig = m.fc1.weight.detach().clone()
    data = [(torch.randn(16, 8), torch.randint(0, 4, (16,)))]
    fit(m, data, lambda mod, b: F.cross_entropy(mod(b[0]), b[1]), FitConfig(steps=20, lr=0.05, weight_decay=0.1))
    w = m.fc1.weight.detach()
    assert (w[~keep] == 0).all() and not torch.equal(w[keep], orig[keep])  # trained, yet pruned stay zero
    assert (m.fc1.parametrizations.weight.original[~keep] == 0).all()
    make_permanent(m)
    assert type(m.fc1) is nn.Linear and torch.equal(m.fc1.weight.detach(), w)
    assert [t["config"]["type"] for t in lineage.lineage(m)["transforms"]] == ["UnstructuredConfig",
                                                                                 "BakeMasksConfig"]


@pytest.mark.parametrize("permanent, bake_after", [(True, False), (False, False), (False, True)])
def test_save_load_round_trip(tmp_path, permanent, bake_after):
    task = condense.get_task("condense.testing:tiny_task")
    m = apply_(task.build_model(), UnstructuredConfig(sparsity=0.8, permanent=permanent))
    if bake_after:
        m = prune_(m, BakeMasksConfig())
    x = task.batch(16)
    loaded = condense.load(condense.save(m, tmp_path / "a"))
    assert torch.equal(loaded(x), m(x))
    assert torch.equal(loaded.fc1.weight, m.fc1.weight) and int((loaded.fc1.weight == 0).sum()) == round(0.8 * 128)
    assert (current_mask(loaded.fc1) is not None) == (not permanent and not bake_after)
    if current_mask(loaded.fc1) is not None:
        assert torch.equal(current_mask(loaded.fc1), current_mask(m.fc1))


@pytest.mark.parametrize("cfg", [
    UnstructuredConfig(sparsity=0.5, scope=Scope.GLOBAL, criterion="wanda", exclude=("lm_head",)),
    UnstructuredConfig(threshold_alpha=0.05, permanent=False),
    NMConfig(n=4, m=8, criterion="taylor"),
    GradualPruneConfig(final_sparsity=0.8, steps=3, distill_from_dense=True, scope="row"),
    BakeMasksConfig(),
])
def test_configs_round_trip_through_json(cfg):
    assert config_from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg


def test_lineage_records_config_layers_and_sparsity(tmp_path):
    m = prune_(TinyMLP(), UnstructuredConfig(sparsity=0.25, exclude=("fc2",)))
    d = condense.save(m, tmp_path / "l", metadata={})
    entry = read_metadata(d)["transforms"][0]
    assert entry["config"]["sparsity"] == 0.25 and entry["details"]["layers"] == ["fc1"]
    assert entry["details"]["sparsity"] == {"fc1": 0.25} and entry["details"]["masked"] is False


def test_mixed_kept_and_baked_masks_round_trip(tmp_path):
    task = condense.get_task("condense.testing:tiny_task")
    m = prune_(task.build_model(), UnstructuredConfig(sparsity=0.5, permanent=False))   # both layers masked
    m = prune_(m, UnstructuredConfig(sparsity=0.75, include=("fc1",)))                  # fc1 further, baked
    assert current_mask(m.fc1) is None and current_mask(m.fc2) is not None
    assert int((m.fc1.weight == 0).sum()) == 96 and int((m.fc2.weight == 0).sum()) == 32
    loaded = condense.load(condense.save(m, tmp_path / "mix"))
    assert current_mask(loaded.fc1) is None and torch.equal(current_mask(loaded.fc2), current_mask(m.fc2))
    x = task.batch(8)
    assert torch.equal(loaded(x), m(x))
