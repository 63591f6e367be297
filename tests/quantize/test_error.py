import math

import pytest
import torch
import torch.nn.functional as F

from condense.errors import ConfigError
from condense.quantize.error import layer_error, mse, sqnr_db
from condense.quantize.primitives import Granularity, QuantSpec, fake_quantize
from condense.testing import TinyMLP


def test_mse_and_sqnr_known_values():
    assert mse(torch.tensor([0.0, 0.0]), torch.tensor([1.0, 3.0])) == 5.0
    assert sqnr_db(torch.tensor([5.0, 5.0]), torch.tensor([5.5, 4.5])) == 20.0  # 50 / 0.5 = 100
    assert sqnr_db(torch.tensor([2.0, 0.0]), torch.tensor([2.0, 2.0])) == 0.0  # noise power = signal power
    assert sqnr_db(torch.ones(3), torch.ones(3)) == math.inf
    with pytest.raises(ConfigError, match="same shape"):
        mse(torch.zeros(2), torch.zeros(3))
    with pytest.raises(ConfigError, match="same shape"):
        sqnr_db(torch.zeros(2), torch.zeros(2, 1))


def test_sqnr_of_uniform_rounding_is_about_6_db_per_bit():
    torch.manual_seed(0)
    x = torch.rand(100000) * 2 - 1  # uniform signal on the full range: SQNR = 6.02 b dB (b bits over [-1, 1])
    for bits in (6, 8):
        got = sqnr_db(x, fake_quantize(x, QuantSpec(bits=bits)))
        assert got == pytest.approx(6.02 * bits, abs=0.3)


def test_layer_error_equals_manual_computation_and_restores_the_weight():
    torch.manual_seed(0)
    m = TinyMLP().eval()
    x = torch.randn(64, 8)
    w0 = m.fc1.weight.detach().clone()
    spec = QuantSpec(bits=4, granularity=Granularity.PER_CHANNEL)
    e = layer_error(m, "fc1", spec, x)
    ref = F.linear(x, w0, m.fc1.bias)
    quant = F.linear(x, fake_quantize(w0, spec), m.fc1.bias)
    assert e.mse == pytest.approx(mse(ref, quant), rel=1e-6)
    assert e.sqnr_db == pytest.approx(sqnr_db(ref, quant), rel=1e-6)
    assert torch.equal(m.fc1.weight, w0)
    # the second layer sees the float first layer's output (only its own weight is quantized)
    h = torch.relu(ref)
    e2 = layer_error(m, "fc2", spec, x)
    assert e2.mse == pytest.approx(mse(m.fc2(h), F.linear(h, fake_quantize(m.fc2.weight, spec), m.fc2.bias)),
                                   rel=1e-6)


def test_layer_error_falls_with_more_bits():
    torch.manual_seed(0)
    m = TinyMLP().eval()
    x = torch.randn(64, 8)
    errs = [layer_error(m, "fc1", QuantSpec(bits=b), x).sqnr_db for b in (2, 4, 8)]
    assert errs == sorted(errs) and errs[2] > 35


def test_layer_error_names_the_fix():
    with pytest.raises(ConfigError, match="no module named 'fc9'"):
        layer_error(TinyMLP(), "fc9", QuantSpec(), torch.randn(2, 8))
    with pytest.raises(ConfigError, match="has no weight tensor"):
        layer_error(TinyMLP(), "act", QuantSpec(), torch.randn(2, 8))
