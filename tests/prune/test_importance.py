import pytest
import torch
import torch.nn.functional as F
from torch import nn

from condense.core.transforms import TransformContext
from condense.errors import CondenseError, ConfigError
from condense.prune.importance import IMPORTANCE, group_scores, score
from condense.prune.unstructured import apply_masks
from condense.testing import TinyMLP


pytestmark = pytest.mark.usefixtures("one_thread")


class ConvNet(nn.Module):
    def __init__(self, groups: int = 1):
        super().__init__()
        self.conv = nn.Conv2d(4, 6, 3, padding=1, stride=2, groups=groups)
        self.bn = nn.BatchNorm2d(6)
        self.fc = nn.Linear(6, 3)

    def forward(self, x):
        return self.fc(self.bn(self.conv(x)).mean(dim=(2, 3)))


def loss_task(loss, batches):
    """The parts of a Task that the criteria read."""
    return type("T", (), {"loss": staticmethod(loss), "train_data": staticmethod(lambda: iter(batches)),
                          "calibration_data": None, "run_batch": staticmethod(lambda m, b: m(b))})()


def test_registry_has_the_criteria():
    assert {"magnitude", "l1", "l2", "taylor", "wanda"} <= set(IMPORTANCE)
    with pytest.raises(ConfigError, match="unknown importance criterion 'size'; choose one of: .*wanda"):
        score(TinyMLP(), ["fc1"], criterion="size")


def test_magnitude_l1_l2_and_group_norms():
    torch.manual_seed(0)
    m = TinyMLP()
    w = m.fc1.weight.detach()
    s = {c: score(m, ["fc1"], criterion=c)["fc1"] for c in ("magnitude", "l1", "l2")}
    assert torch.equal(s["magnitude"], w.abs()) and torch.equal(s["l1"], w.abs())
    assert torch.equal(s["l2"], w ** 2)
    torch.testing.assert_close(group_scores(s["l2"], 0, "l2"), torch.linalg.vector_norm(w, dim=1))
    torch.testing.assert_close(group_scores(s["l1"], 1, "l1"), w.abs().sum(0))


def test_wanda_linear_matches_reference_over_all_tokens():
    torch.manual_seed(0)
    m = TinyMLP()
    batches = [torch.randn(5, 8), torch.randn(7, 8)]
    got = score(m, ["fc1", "fc2"], TransformContext(calibration=batches), criterion="wanda")
    x = torch.cat(batches)                                   # (12, 8): every token
    h = torch.relu(m.fc1(x)).detach()                       # fc2's inputs
    torch.testing.assert_close(got["fc1"], m.fc1.weight.detach().abs() * x.norm(dim=0))
    torch.testing.assert_close(got["fc2"], m.fc2.weight.detach().abs() * h.norm(dim=0))


@pytest.mark.parametrize("groups", [1, 2])
def test_wanda_conv_matches_reference_from_padded_input(groups):
    torch.manual_seed(0)
    m = ConvNet(groups).eval()
    x = torch.randn(3, 4, 7, 7)
    got = score(m, ["conv"], TransformContext(calibration=[x]), criterion="wanda")["conv"]
    xp = F.pad(x, (1, 1, 1, 1))                              # (3, 4, 9, 9)
    norms = torch.zeros(4, 3, 3)                             # per input channel and kernel offset
    for i in range(3):
        for j in range(3):
            patch = xp[:, :, i:i + 7:2, j:j + 7:2]           # positions this offset touches with stride 2
            norms[:, i, j] = patch.pow(2).sum(dim=(0, 2, 3)).sqrt()
    cin = 4 // groups
    w = m.conv.weight.detach()                               # (6, cin, 3, 3)
    ref = torch.stack([w[o].abs() * norms[(o // (6 // groups)) * cin:(o // (6 // groups) + 1) * cin]
                       for o in range(6)])
    torch.testing.assert_close(got, ref)


def test_taylor_matches_reference_and_leaves_model_untouched():
    torch.manual_seed(0)
    m = ConvNet().train()
    m.fc.bias.requires_grad_(False)
    batches = [(torch.randn(4, 4, 6, 6), torch.randint(0, 3, (4,))) for _ in range(3)]
    before = {k: v.clone() for k, v in m.state_dict().items()}
    task = loss_task(lambda mod, b: F.cross_entropy(mod(b[0]), b[1]), batches)
    got = score(m, ["conv", "fc"], TransformContext(task=task), criterion="taylor", batches=2)
    ref = {"conv": 0, "fc": 0}
    ref_m = ConvNet()
    ref_m.load_state_dict(before)
    ref_m.eval()
    for x, y in batches[:2]:  # only `batches` batches are used
        ref_m.zero_grad()
        F.cross_entropy(ref_m(x), y).backward()
        for n in ref:
            lay = getattr(ref_m, n)
            ref[n] = ref[n] + (lay.weight * lay.weight.grad).abs().detach()
    for n in ref:
        torch.testing.assert_close(got[n], ref[n])
    assert m.training and all(p.grad is None for p in m.parameters())
    assert not m.fc.bias.requires_grad and m.conv.weight.requires_grad
    assert all(torch.equal(v, before[k]) for k, v in m.state_dict().items())  # BN statistics untouched


def test_masked_weights_score_zero():
    torch.manual_seed(0)
    m = TinyMLP()
    keep = torch.rand(16, 8) > 0.5
    apply_masks(m, {"fc1": keep})
    x, y = torch.randn(4, 8), torch.randint(0, 4, (4,))
    ctx = TransformContext(task=loss_task(lambda mod, b: F.cross_entropy(mod(b[0]), b[1]), [(x, y)]),
                           calibration=[x])
    for c in ("magnitude", "wanda", "taylor"):
        s = score(m, ["fc1"], ctx, criterion=c)["fc1"]
        assert s.shape == (16, 8) and (s[~keep] == 0).all(), c
        assert (s[keep] > 0).float().mean() > 0.5, c  # (taylor: a dead ReLU unit's weights also score 0)


def test_data_criteria_without_data_name_the_fix():
    with pytest.raises(CondenseError, match="criterion 'wanda' needs calibration data"):
        score(TinyMLP(), ["fc1"], TransformContext(), criterion="wanda")
    with pytest.raises(ConfigError, match="'taylor' needs a loss"):
        score(TinyMLP(), ["fc1"], TransformContext(calibration=[torch.randn(2, 8)]), criterion="taylor")
