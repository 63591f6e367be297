import pytest
import torch
from torch.ao.nn.quantized import dynamic as nnqd

import condense
from condense.core.lineage import lineage
from condense.errors import ConfigError
from condense.testing import TinyMLP


def _sqnr_db(ref: torch.Tensor, x: torch.Tensor) -> float:
    ref, x = ref.detach(), x.detach()
    return float(10 * torch.log10(ref.pow(2).mean() / (ref - x).pow(2).mean()))


def test_swaps_linears_for_int8_kernels_and_stays_close():
    torch.manual_seed(0)
    m = TinyMLP().eval()
    x = torch.randn(64, 8)
    ref = m(x)
    condense.quantize_(m, condense.DynamicInt8Config())
    assert isinstance(m.fc1, nnqd.Linear) and isinstance(m.fc2, nnqd.Linear)
    assert m.fc1.weight().dtype == torch.qint8
    assert _sqnr_db(ref, m(x)) > 30  # int8 per-channel: well above 30 dB on a small MLP
    assert lineage(m)["transforms"][0]["details"]["layers"] == ["fc1", "fc2"]


def test_per_channel_beats_per_tensor_when_channel_ranges_differ():
    torch.manual_seed(0)
    base = TinyMLP().eval()
    with torch.no_grad():
        base.fc1.weight[0] *= 50  # one channel with a far larger range
    x = torch.randn(256, 8)
    ref = base(x)
    import copy

    pc = condense.quantize_(copy.deepcopy(base), condense.DynamicInt8Config(per_channel=True))
    pt = condense.quantize_(copy.deepcopy(base), condense.DynamicInt8Config(per_channel=False))
    assert _sqnr_db(ref, pc(x)) > _sqnr_db(ref, pt(x))


def test_include_exclude_patterns():
    m = condense.quantize_(TinyMLP(), condense.DynamicInt8Config(exclude=("fc2",)))
    assert isinstance(m.fc1, nnqd.Linear) and isinstance(m.fc2, torch.nn.Linear)
    with pytest.raises(ConfigError, match="include pattern 'nothing.*' matches no Linear"):
        condense.quantize_(TinyMLP(), condense.DynamicInt8Config(include=("nothing.*",)))
    with pytest.raises(ConfigError, match="no Linear module left"):
        condense.quantize_(TinyMLP(), condense.DynamicInt8Config(exclude=("*",)))
    with pytest.raises(ConfigError, match="tuple of patterns"):
        condense.DynamicInt8Config(include="fc1")


def test_unknown_config_type_is_rejected():
    with pytest.raises(ConfigError, match="is not a quantization config"):
        condense.quantize_(TinyMLP(), condense.MeasureConfig())
