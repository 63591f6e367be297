"""Extending structured pruning through its registries: a custom layer's rule and cutter, a custom op rule, a custom
group criterion and a custom block criterion are each used, with exact counts of what is removed."""
import pytest
import torch
from torch import nn

import condense
from condense.core.lineage import lineage
from condense.errors import ConfigError
from condense.prune import LayerDropConfig, StructuredConfig, prune_
from condense.prune import cutters, rules
from condense.prune.graph import build_graph
from condense.prune.importance import criteria, register_importance


class Scale(nn.Module):
    """Multiplies channel c by weight[c] (not a torch.nn layer, so the graph has no rule for it by default)."""

    def __init__(self, n: int):
        super().__init__()
        self.weight = nn.Parameter(torch.linspace(0.5, 2.0, n))

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x: (B, n)
        return x * self.weight


class Square(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.square(x)  # traced as the op "square"


class ScaleCutter(cutters.Cutter):
    def cut(self, m, dim, idx):
        cutters.slice_(m, "weight", 0, idx)

    def shape(self, m):
        return {"features": len(m.weight)}

    def weights(self, m, dim):
        return [(m.weight, 0)]


def _scale_rule(site, flow):
    if not flow.last:
        raise rules.Blocked(f"feeds {site.name} over another dimension")
    return rules.Reached((rules.Member(site.name, "out"),), flow)  # its weight loses entry c; the channels go on


# Group and block criteria that keep the first units: the kept indices are known exactly.
if "tests_first" not in criteria("groups"):
    register_importance("tests_first", scope="groups", needs_data=False)(
        lambda model, groups, ctx, *, kept, batches: {g.name: -torch.arange(g.size, dtype=torch.float)
                                                      for g in groups})
if "tests_first" not in criteria("blocks"):
    register_importance("tests_first", scope="blocks", needs_data=False)(
        lambda b, n_drop: (list(range(len(b.blocks) - n_drop)), {}))


def _scaled_mlp() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 8), Scale(8), nn.ReLU(), nn.Linear(8, 3)).eval()


def test_a_custom_layer_is_blocked_by_name_until_its_rule_and_cutter_are_registered(monkeypatch):
    graph = build_graph(_scaled_mlp())
    assert graph.groups == [] and "mul" in graph.blocked["0"]
    monkeypatch.setitem(rules.MODULE_RULES, Scale, _scale_rule)
    with pytest.raises(ConfigError, match="layer 1 .Scale. has no cutter.*register_cutter"):
        prune_(_scaled_mlp(), StructuredConfig(ratio=0.5))
    monkeypatch.setitem(cutters.CUTTERS, Scale, ScaleCutter())

    model = _scaled_mlp()
    x = torch.randn(5, 4)
    with torch.no_grad():  # reference: channels 5..7 removed = the dense model with them zeroed after Scale
        h = torch.relu(model[0](x)[:, :5] * model[1].weight[:5])  # (5, 5): the first 5 channels kept
        ref = nn.functional.linear(h, model[3].weight[:, :5], model[3].bias)
    prune_(model, StructuredConfig(ratio=0.375, importance="tests_first"))
    assert (model[0].out_features, len(model[1].weight), model[3].in_features) == (5, 5, 5)
    torch.testing.assert_close(model(x), ref)
    details = lineage(model)["transforms"][-1]["details"]
    assert details["kept"] == {"0": 5} and details["shapes"]["1"] == {"features": 5}


def test_a_custom_op_rule_lets_the_group_through(monkeypatch):
    def net():
        torch.manual_seed(0)
        return nn.Sequential(nn.Linear(4, 8), Square(), nn.Linear(8, 2))

    assert "goes through `square`, which has no pruning rule" in build_graph(net()).blocked["0"]
    monkeypatch.setitem(rules.OP_RULES, "square", lambda site, flow: flow)  # elementwise: channel c stays c
    model = net()
    prune_(model, StructuredConfig(ratio=0.25))
    assert (model[0].out_features, model[2].in_features) == (6, 6)
    assert model(torch.randn(3, 4)).shape == (3, 2)


def test_a_custom_block_criterion_is_used():
    torch.manual_seed(0)
    model = nn.Sequential(*(nn.Linear(4, 4) for _ in range(5)))
    prune_(model, LayerDropConfig(n_drop=2, criterion="tests_first", container=""), calibration=[torch.randn(2, 4)])
    assert len(model) == 3 and lineage(model)["transforms"][-1]["details"]["kept"] == [0, 1, 2]
    with pytest.raises(ConfigError, match="criterion"):
        LayerDropConfig(n_drop=1, criterion="no_such_criterion")
    assert "tests_first" in condense.prune.importance.criteria("groups")
