import pytest
import torch
from torch import nn

import condense
from condense.core import lineage
from condense.errors import ConfigError
from condense.prune import prune_
from condense.prune.nm import NMConfig, nm_mask
from condense.testing import TinyMLP


pytestmark = pytest.mark.usefixtures("one_thread")


def reference_nm(w: torch.Tensor, n: int, m: int) -> torch.Tensor:
    """Loop reference: in each run of m along the last dim keep the n largest |w| (ties: lower index)."""
    keep = torch.zeros(w.shape, dtype=torch.bool)
    rows = w.reshape(-1, w.shape[-1])
    out = keep.view(-1, w.shape[-1])
    for r in range(rows.shape[0]):
        for g in range(0, rows.shape[1], m):
            vals = [(-abs(float(rows[r, g + i])), i) for i in range(m)]
            for _, i in sorted(vals)[:n]:
                out[r, g + i] = True
    return keep


@pytest.mark.parametrize("n, m", [(2, 4), (4, 8), (1, 4), (2, 3)])
def test_every_group_keeps_exactly_n(n, m):
    torch.manual_seed(0)
    lin = nn.Linear(24, 5)
    w = lin.weight.detach().clone()
    prune_(lin, NMConfig(n=n, m=m))
    groups = (lin.weight != 0).view(5, 24 // m, m).sum(-1)
    assert (groups == n).all()
    assert torch.equal(lin.weight != 0, reference_nm(w, n, m))
    assert torch.equal(lin.weight[lin.weight != 0], w[lin.weight != 0])


def test_groups_with_original_zeros_keep_fewer():
    w = torch.tensor([[0.0, 0.0, 0.0, 5.0, 1.0, 2.0, 3.0, 4.0]])
    lin = nn.Linear(8, 1, bias=False)
    with torch.no_grad():
        lin.weight.copy_(w)
    prune_(lin, NMConfig(n=2, m=4))
    assert lin.weight.tolist() == [[0.0, 0.0, 0.0, 5.0, 0.0, 0.0, 3.0, 4.0]]
    assert (lin.weight != 0).view(2, 4).sum(-1).tolist() == [1, 2]


def test_conv_groups_run_along_input_channels():
    torch.manual_seed(0)
    conv = nn.Conv2d(8, 3, 3)
    w = conv.weight.detach().clone()                        # (3, 8, 3, 3)
    prune_(conv, NMConfig(n=2, m=4))
    nz = (conv.weight != 0).permute(0, 2, 3, 1)             # (3, 3, 3, 8): input channels last
    assert (nz.reshape(3, 3, 3, 2, 4).sum(-1) == 2).all()
    assert torch.equal(nz, reference_nm(w.permute(0, 2, 3, 1), 2, 4))


def test_nm_mask_ties_go_to_the_lower_index():
    assert nm_mask(torch.ones(1, 4), 2, 4).tolist() == [[True, True, False, False]]


def test_indivisible_layer_is_named_and_model_unchanged():
    m = nn.Sequential(nn.Linear(8, 6), nn.ReLU(), nn.Linear(6, 2))
    before = {k: v.clone() for k, v in m.state_dict().items()}
    with pytest.raises(ConfigError, match=r"layer '2' has 6 input features, not a multiple of m=4; exclude it, "
                                          r"e.g. exclude=\('2',\)"):
        prune_(m, NMConfig(n=2, m=4, include=("0", "2")))  # layers the user named must each hold 2:4
    assert all(torch.equal(m.state_dict()[k], v) for k, v in before.items()) and not lineage.lineage(m)["transforms"]
    prune_(m, NMConfig(n=2, m=4, exclude=("2",)))
    assert int((m[0].weight == 0).sum()) == 24 and int((m[2].weight == 0).sum()) == 0


@pytest.mark.parametrize("kwargs, match", [
    ({"n": 4, "m": 4}, "0 < n < m"), ({"n": 0, "m": 4}, "0 < n < m"), ({"n": 2.0, "m": 4}, "must be an integer"),
    ({"criterion": "random"}, "unknown criterion"),
])
def test_bad_patterns_name_the_fix(kwargs, match):
    with pytest.raises(ConfigError, match=match):
        NMConfig(**kwargs)


@pytest.mark.parametrize("permanent", [True, False])
def test_round_trip(tmp_path, permanent):
    task = condense.get_task("condense.testing:tiny_task")
    model = prune_(task.build_model(), NMConfig(n=2, m=4, permanent=permanent))
    assert lineage.lineage(model)["transforms"][0]["details"]["pattern"] == "2:4"
    x = task.batch(8)
    loaded = condense.load(condense.save(model, tmp_path / "nm"))
    assert torch.equal(loaded(x), model(x)) and torch.equal(loaded.fc2.weight, model.fc2.weight)


def test_wanda_nm_uses_calibration():
    torch.manual_seed(0)
    m = TinyMLP()
    x = torch.randn(32, 8)
    x[:, 0] *= 1e4  # input feature 0 dominates: wanda keeps its weights although they are small
    with torch.no_grad():
        m.fc1.weight[:, 0] = 1e-3
    prune_(m, NMConfig(n=2, m=4, criterion="wanda", include=("fc1",)), calibration=[x])
    assert (m.fc1.weight[:, 0] != 0).all()
    control = TinyMLP()
    with torch.no_grad():
        control.load_state_dict({k: v for k, v in TinyMLP().state_dict().items()})
        control.fc1.weight[:, 0] = 1e-3
    prune_(control, NMConfig(n=2, m=4, include=("fc1",)))
    assert (control.fc1.weight[:, 0] == 0).all()  # by magnitude alone they are pruned


def test_default_include_leaves_indivisible_layers_dense_warned_and_recorded():
    """A CNN's first conv has 1 input channel: with include="*" it stays dense, named in a warning and the lineage."""
    torch.manual_seed(0)
    m = nn.Sequential(nn.Conv2d(1, 8, 3), nn.ReLU(), nn.Conv2d(8, 3, 3), nn.Flatten(), nn.LazyLinear(6))
    m(torch.zeros(1, 1, 9, 9))  # the Linear takes 3 * 5 * 5 = 75 features
    first = m[0].weight.detach().clone()
    with pytest.warns(UserWarning, match=r"left 2 layer\(s\) dense, their input dimension is not a "
                                         r"multiple of m=4: 0 \(1 input channels\), 4 \(75 input features\)"):
        prune_(m, NMConfig(n=2, m=4, include=("*",)))
    assert torch.equal(m[0].weight, first) and int((m[2].weight == 0).sum()) == m[2].weight.numel() // 2
    entry = lineage.lineage(m)["transforms"][-1]["details"]
    assert set(entry["nm_skipped"]) == {"0", "4"} and entry["nm_skipped"]["0"] == "1 input channels"
    with pytest.raises(ConfigError, match="no chosen layer can hold 2:4"):
        prune_(nn.Sequential(nn.Linear(6, 3)), NMConfig(n=2, m=4))
