"""Dependency graph: exact groups and members for CNNs, MLPs, residual models, our BERT and GPT; clear reports."""
import pytest
import torch
from torch import nn

from condense.prune.graph import Member, build_graph
from condense.tasks.bert import Bert, BertConfig
from condense.tasks.digits import DigitsCNN
from condense.tasks.gpt import GPT, GPTConfig


def members(g):
    return [(m.module, m.dim, m.unit) for m in g.members]


class ResidualMLP(nn.Module):
    """fc0 -> x + fc2(relu(fc1(x))) -> head: only fc1's width is free; the residual stream is shared."""

    def __init__(self, d: int = 8, hidden: int = 16):
        super().__init__()
        self.fc0 = nn.Linear(4, d)
        self.fc1 = nn.Linear(d, hidden)
        self.fc2 = nn.Linear(hidden, d)
        self.head = nn.Linear(d, 3)

    def forward(self, x):
        h = self.fc0(x)
        h = h + self.fc2(torch.relu(self.fc1(h)))
        return self.head(h)


class Untraceable(nn.Module):
    """Data-dependent control flow (like our BERT's input checks): torch.fx cannot trace it."""

    def __init__(self):
        super().__init__()
        self.a = nn.Linear(4, 8)
        self.b = nn.Linear(8, 2)

    def forward(self, x):
        if x.dim() != 2:
            raise ValueError("x must be (B, 4)")
        return self.b(torch.relu(self.a(x)))


def tiny_bert():
    return Bert(BertConfig(vocab_size=50, hidden_size=32, num_layers=2, num_heads=4, intermediate_size=64)).eval()


def test_digits_cnn_couples_conv_batchnorm_and_next_layer():
    g = build_graph(DigitsCNN())
    assert g.method == "fx"
    assert [(x.name, x.kind, x.size) for x in g.groups] == [
        ("features.0.0", "channels", 32), ("features.1.0", "channels", 64), ("features.3.0", "channels", 128)]
    assert members(g.group("features.1.0")) == [("features.1.0", "out", 1), ("features.1.1", "out", 1),
                                                ("features.3.0", "in", 1)]  # through ReLU and MaxPool
    assert members(g.group("features.3.0"))[-1] == ("classifier", "in", 1)  # through mean over (H, W)
    assert g.blocked == {"classifier": "its output is a model output"}


def test_flatten_maps_each_channel_to_its_spatial_block_of_linear_inputs():
    net = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(), nn.Linear(4 * 16, 5),
                        nn.ReLU(), nn.Linear(5, 2))
    g = build_graph(net)
    assert members(g.group("0")) == [("0", "out", 1), ("4", "in", 16)]
    assert members(g.group("4")) == [("4", "out", 1), ("6", "in", 1)]


def test_mlp_with_batchnorm1d_is_one_group():
    net = nn.Sequential(nn.Linear(4, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, 2)).eval()
    assert members(build_graph(net).group("0")) == [("0", "out", 1), ("1", "out", 1), ("3", "in", 1)]


@pytest.mark.parametrize("name", ["digits", "flatten", "bn1d", "residual"])
def test_recorded_forward_pass_finds_the_same_groups_as_fx(name):
    nets = {"digits": (DigitsCNN(), torch.randn(2, 1, 8, 8)),
            "flatten": (nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 36, 3)),
                        torch.randn(2, 1, 8, 8)),
            "bn1d": (nn.Sequential(nn.Linear(4, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, 2)), torch.randn(3, 4)),
            "residual": (ResidualMLP(), torch.randn(3, 4))}
    net, x = nets[name]
    traced = build_graph(net.eval())
    recorded = build_graph(net, run=lambda m: m(x), fx_first=False)
    assert (traced.method, recorded.method) == ("fx", "recorded")
    assert recorded.groups == traced.groups and recorded.blocked.keys() == traced.blocked.keys()


class ResidualOut(ResidualMLP):
    """The residual sum is the model's output: its width cannot change."""

    def forward(self, x):
        h = self.fc0(x)
        return h + self.fc2(torch.relu(self.fc1(h)))


def test_residual_add_couples_both_producers_and_all_consumers():
    g = build_graph(ResidualMLP())
    assert [(x.name, x.kind, x.size) for x in g.groups] == [("fc0", "neurons", 8), ("fc1", "ffn", 16)]
    assert sorted(members(g.group("fc0"))) == [("fc0", "out", 1), ("fc1", "in", 1), ("fc2", "out", 1),
                                                ("head", "in", 1)]
    assert members(g.group("fc1")) == [("fc1", "out", 1), ("fc2", "in", 1)]  # maps 8 back to 8: an FFN by shape
    assert g.blocked == {"head": "its output is a model output"}


def test_residual_add_that_reaches_the_output_stays_blocked():
    g = build_graph(ResidualOut())
    assert [x.name for x in g.groups] == ["fc1"]
    assert g.blocked["fc0"] == g.blocked["fc2"] == "its output is a model output"


def test_bert_heads_and_ffn_groups_from_a_recorded_forward_pass():
    m = tiny_bert()
    g = build_graph(m, run=lambda net: net(torch.randint(0, 50, (2, 7))))
    assert g.method == "recorded"  # fx fails on the input checks
    assert [(x.name, x.kind, x.size) for x in g.groups] == [
        ("layers.0.attn", "heads", 4), ("layers.1.attn", "heads", 4),
        ("layers.0.ffn_in", "ffn", 64), ("layers.1.ffn_in", "ffn", 64)]
    assert members(g.group("layers.0.attn")) == [
        ("layers.0.attn.query", "out", 8), ("layers.0.attn.key", "out", 8), ("layers.0.attn.value", "out", 8),
        ("layers.0.attn.out", "in", 8), ("layers.0.attn", "heads", 1)]
    assert members(g.group("layers.1.ffn_in")) == [("layers.1.ffn_in", "out", 1), ("layers.1.ffn_out", "in", 1)]
    assert "residual add" in g.blocked["layers.0.ffn_out"]  # hidden size stays


def test_patterns_still_give_heads_and_ffn_without_data():
    g = build_graph(GPT(GPTConfig(block_size=16, n_layer=2, n_head=2, n_embd=8)))
    assert g.method == "patterns"
    assert sorted((x.name, x.kind) for x in g.groups) == [
        ("blocks.0.attn", "heads"), ("blocks.0.mlp.fc_in", "ffn"), ("blocks.1.attn", "heads"),
        ("blocks.1.mlp.fc_in", "ffn")]
    assert "lm_head" in g.unsupported and "calibration" in g.blocked["lm_head"]


def test_gpt_recorded_graph_blocks_lm_head_as_output():
    m = GPT(GPTConfig(block_size=16, n_layer=2, n_head=2, n_embd=8)).eval()
    g = build_graph(m, run=lambda net: net(torch.zeros(2, 5, dtype=torch.long)))
    assert g.blocked["lm_head"] == "its output is a model output"
    assert members(g.group("blocks.0.mlp.fc_in")) == [("blocks.0.mlp.fc_in", "out", 1),
                                                      ("blocks.0.mlp.fc_out", "in", 1)]


def test_untraceable_model_is_reported_then_recorded_with_data():
    g = build_graph(Untraceable())
    assert g.groups == [] and g.unsupported == ["a", "b"]
    assert "cannot be traced by torch.fx" in g.blocked["a"] and "calibration" in g.blocked["a"]
    g = build_graph(Untraceable(), run=lambda net: net(torch.randn(3, 4)))
    assert g.method == "recorded" and members(g.group("a")) == [("a", "out", 1), ("b", "in", 1)]


def test_layers_without_a_cutter_are_reported_unsupported():
    class WithConv1d(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(4, 6)
            self.conv = nn.Conv1d(6, 2, 1)

        def forward(self, x):  # x (B, L, 4)
            return self.conv(torch.relu(self.fc(x)).transpose(1, 2))

    g = build_graph(WithConv1d())
    assert g.groups == [] and "`transpose`" in g.blocked["fc"]
    net = nn.Sequential(nn.Linear(4, 6), nn.ReLU(), nn.PReLU(6), nn.Linear(6, 2))
    g = build_graph(net)
    assert g.unsupported == ["2"] and "PReLU" in g.blocked["0"] and "no pruning rule" in g.blocked["0"]


def test_layernorm_blocks_unless_renormalize():
    net = nn.Sequential(nn.Linear(4, 6), nn.ReLU(), nn.LayerNorm(6), nn.Linear(6, 2))
    g = build_graph(net)
    assert g.groups == [] and g.unsupported == [] and "renormalize=True" in g.blocked["0"]
    g = build_graph(net, renormalize=True)
    assert members(g.group("0")) == [("0", "out", 1), ("2", "out", 1), ("3", "in", 1)]


@pytest.mark.parametrize("case", ["shared", "grouped", "concat"])
def test_unsafe_couplings_are_blocked(case):
    if case == "shared":
        class Net(nn.Module):
            def __init__(self):
                super().__init__()
                self.a, self.b = nn.Linear(4, 4), nn.Linear(4, 4)

            def forward(self, x):
                return self.b(self.b(torch.relu(self.a(x))))
        g = build_graph(Net())
        assert "more than once" in g.blocked["a"] and "more than once" in g.blocked["b"]
    elif case == "grouped":
        net = nn.Sequential(nn.Conv2d(1, 4, 1), nn.Conv2d(4, 4, 3, groups=2), nn.Conv2d(4, 2, 1))
        g = build_graph(net)
        assert "groups=2" in g.blocked["0"] and "grouped" in g.blocked["1"]
    else:
        class Net(nn.Module):
            def __init__(self):
                super().__init__()
                self.a, self.b, self.c = nn.Linear(4, 3), nn.Linear(4, 3), nn.Linear(6, 2)

            def forward(self, x):
                return self.c(torch.cat([self.a(x), self.b(x)], dim=-1))
        g = build_graph(Net())
        assert g.groups == [] and "`cat`" in g.blocked["a"]


def test_member_is_hashable_and_frozen():
    m = Member("fc", "out")
    assert {m: 1}[Member("fc", "out")] == 1
    with pytest.raises(Exception):
        m.unit = 2
