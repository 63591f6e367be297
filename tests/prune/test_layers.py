"""Layer removal: the block that changes its input least goes; exact outputs vs a hand-built reference; replay."""
import copy
import json

import pytest
import torch
from torch import nn

import condense
from condense.core.config import config_from_dict
from condense.core.lineage import lineage
from condense.errors import CondenseError, ConfigError
from condense.prune import LayerDropConfig, prune_
from condense.prune.layers import find_block_list
from condense.tasks.bert import Bert, BertConfig
from condense.tasks.gpt import GPT, GPTConfig
from condense.train.loop import FitConfig

GPT_CFG = GPTConfig(block_size=16, n_layer=4, n_head=2, n_embd=16)


def gpt_with_identity_block(i: int) -> GPT:
    """A random GPT whose block `i` adds nothing to the residual stream (its output equals its input)."""
    torch.manual_seed(0)
    m = GPT(GPT_CFG).eval()
    with torch.no_grad():
        for lin in (m.blocks[i].attn.o_proj, m.blocks[i].mlp.fc_out):
            lin.weight.zero_()
            lin.bias.zero_()
    return m


def reference_without(model: GPT, drop: list[int]) -> GPT:
    ref = copy.deepcopy(model)
    ref.blocks = nn.ModuleList(b for i, b in enumerate(ref.blocks) if i not in drop)
    return ref


def test_config_round_trips_and_validates():
    for cfg in (LayerDropConfig(n_drop=2, criterion="output", container="bert.layers"),
                LayerDropConfig(keep=(0, 2, 3), finetune=FitConfig(steps=5))):
        assert config_from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg
    for bad in (dict(), dict(n_drop=1, keep=(0,)), dict(n_drop=0), dict(keep=()), dict(keep=(1, 1)),
                dict(n_drop=1, criterion="random")):
        with pytest.raises(ConfigError):
            LayerDropConfig(**bad)


@pytest.mark.parametrize("criterion", ["importance", "output"])
def test_identity_block_is_the_one_dropped_and_outputs_equal_reference(criterion):
    model = gpt_with_identity_block(2)
    ref = reference_without(model, [2])
    idx = torch.randint(0, 256, (3, 12))
    prune_(model, LayerDropConfig(n_drop=1, criterion=criterion), calibration=[idx])
    assert len(model.blocks) == 3 and model.config.n_layer == 3
    details = lineage(model)["transforms"][-1]["details"]
    assert details["container"] == "blocks" and details["kept"] == [0, 1, 3] and details["n_before"] == 4
    assert min(details["scores"], key=details["scores"].get) == "2"
    with torch.no_grad():
        assert torch.equal(model(idx), ref(idx))


def cancelling_stages() -> nn.Sequential:
    """Four square stages: 0 rotates, 1 undoes that rotation, 2 and 3 are small perturbations of the identity.

    Alone, removing 0 or 1 moves the output most; together they cancel, so keeping (2, 3) reproduces the model
    exactly, which only a search over sets of blocks (not one block at a time) can see.
    """
    torch.manual_seed(0)
    q, _ = torch.linalg.qr(torch.randn(8, 8))  # orthogonal
    stages = [nn.Linear(8, 8, bias=False) for _ in range(4)]
    with torch.no_grad():
        stages[0].weight.copy_(q)
        stages[1].weight.copy_(q.T)
        for s in stages[2:]:
            s.weight.copy_(torch.eye(8) + 0.05 * torch.randn(8, 8))
    return nn.Sequential(*stages).eval()


def test_subset_finds_the_pair_that_cancels_where_one_at_a_time_does_not():
    x = torch.randn(32, 8)
    picked = {}
    for criterion in ("subset", "output"):
        model = cancelling_stages()
        ref = copy.deepcopy(model)
        prune_(model, LayerDropConfig(n_drop=2, criterion=criterion, container=""), calibration=[x])
        picked[criterion] = lineage(model)["transforms"][-1]["details"]["kept"]
        err = (model(x) - ref(x)).abs().max().item()
        if criterion == "subset":
            assert err < 1e-5  # q.T @ q = I up to rounding
    assert picked == {"subset": [2, 3], "output": [0, 1]}


def test_subset_falls_back_to_greedy_removal_past_the_subset_limit():
    from condense.prune.layers import subset_scores

    model, x = cancelling_stages(), torch.randn(32, 8)
    keep, err = subset_scores(model, model, 3, [0, 1, 2, 3], [x], lambda m, b: m(b), max_subsets=1)
    exhaustive, best = subset_scores(model, model, 3, [0, 1, 2, 3], [x], lambda m, b: m(b))
    assert keep == exhaustive and err == pytest.approx(best)  # one block to drop: greedy is exhaustive
    greedy, _ = subset_scores(model, model, 2, [0, 1, 2, 3], [x], lambda m, b: m(b), max_subsets=1)
    assert greedy == [0, 1]  # removing 2, then 3, each the least harmful alone: greedy misses the cancelling pair
    assert len(model) == 4  # the blocks are back in place


def test_last_needs_no_data_and_keep_is_exact():
    model = gpt_with_identity_block(0)
    prune_(model, LayerDropConfig(n_drop=2, criterion="last"))
    assert lineage(model)["transforms"][-1]["details"]["kept"] == [0, 1]
    bert = Bert(BertConfig(vocab_size=50, hidden_size=32, num_layers=6, num_heads=4, intermediate_size=64)).eval()
    ref = copy.deepcopy(bert)
    ref.layers = nn.ModuleList(ref.layers[i] for i in (0, 2, 5))
    ids = torch.randint(0, 50, (2, 7))
    prune_(bert, LayerDropConfig(keep=(5, 0, 2)), calibration=[ids])
    assert len(bert.layers) == 3 and bert.config.num_layers == 3
    with torch.no_grad():
        assert torch.equal(bert(ids), ref(ids))


def test_save_load_replays_the_drop(tmp_path):
    model = gpt_with_identity_block(1)
    idx = torch.randint(0, 256, (2, 8))
    prune_(model, LayerDropConfig(n_drop=1), calibration=[idx])
    d = condense.save(model, tmp_path / "dropped")
    loaded = condense.load(d, model=GPT(GPT_CFG))
    assert len(loaded.blocks) == 3
    with torch.no_grad():
        assert torch.equal(loaded(idx), model(idx))


class StagedCNN(nn.Module):
    """stem -> stages (two 8->8 conv-bn-relu stages, then an 8->16 one) -> mean -> classifier."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(1, 8, 3, padding=1)

        def stage(cin, cout):
            return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1), nn.BatchNorm2d(cout), nn.ReLU())

        self.stages = nn.Sequential(stage(8, 8), stage(8, 8), stage(8, 16))
        self.head = nn.Linear(16, 3)

    def forward(self, x):
        return self.head(self.stages(self.stem(x)).mean(dim=(2, 3)))


def test_cnn_stages_drop_only_identity_shape_blocks():
    model = StagedCNN().eval()
    x = torch.randn(2, 1, 8, 8)
    ref = copy.deepcopy(model)
    ref.stages = nn.Sequential(ref.stages[0], ref.stages[2])
    prune_(model, LayerDropConfig(keep=(0, 2), container="stages"), calibration=[x])
    with torch.no_grad():
        assert torch.equal(model(x), ref(x))
    model = StagedCNN().eval()
    with pytest.raises(ConfigError, match=r"blocks \[2\].*change the tensor shape"):
        prune_(model, LayerDropConfig(keep=(0, 1), container="stages"), calibration=[x])
    with pytest.raises(ConfigError, match="n_drop <= 2"):
        prune_(model, LayerDropConfig(n_drop=3, container="stages"), calibration=[x])
    with pytest.raises(CondenseError, match="needs calibration data"):
        prune_(model, LayerDropConfig(n_drop=1, criterion="last", container="stages"))
    assert len(model.stages) == 3


def test_block_list_errors_name_the_fix():
    with pytest.raises(ConfigError, match="container=.*stages"):
        find_block_list(StagedCNN())
    with pytest.raises(ConfigError, match="not a ModuleList or Sequential"):
        find_block_list(StagedCNN(), "head")
    with pytest.raises(ConfigError, match="n_drop <= 3"):
        prune_(GPT(GPT_CFG), LayerDropConfig(n_drop=4, criterion="last"))
