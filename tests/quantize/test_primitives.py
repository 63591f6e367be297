import json

import pytest
import torch

from condense.core.config import config_from_dict
from condense.errors import ConfigError
from condense.quantize.primitives import (Granularity, QuantKind, QuantSpec, compute_qparams, dequantize,
                                          fake_quantize, quantize)

PT, PC, PG = Granularity.PER_TENSOR, Granularity.PER_CHANNEL, Granularity.PER_GROUP


def _mse(a, b):
    return float((a - b).pow(2).mean())


# -- config -----------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("spec", [
    QuantSpec(),
    QuantSpec(bits=4, symmetric=False, granularity=PC, axis=1),
    QuantSpec(bits=3, granularity=PG, group_size=32),
    QuantSpec(bits=1, kind=QuantKind.BINARY, granularity=PC),
    QuantSpec(bits=2, kind=QuantKind.TERNARY),
    QuantSpec(bits=4, kind=QuantKind.KMEANS, granularity=PC),
    QuantSpec(bits=3, kind=QuantKind.POW2),
])
def test_spec_round_trips_through_json(spec):
    assert config_from_dict(json.loads(json.dumps(spec.to_dict()))) == spec


@pytest.mark.parametrize("kwargs, match", [
    (dict(bits=16), r"bits must be in 1\.\.8, got 16; use bits=8 for int8"),
    (dict(bits=0), r"bits must be in 1\.\.8"),
    (dict(bits=True), r"bits must be in 1\.\.8"),
    (dict(bits=1), r"use kind=QuantKind.BINARY"),
    (dict(bits=8, kind=QuantKind.BINARY), r"set bits=1"),
    (dict(bits=4, kind=QuantKind.TERNARY), r"set bits=2"),
    (dict(granularity=PG), r"PER_GROUP needs a positive group_size"),
    (dict(group_size=32), r"only applies to granularity=PER_GROUP"),
    (dict(granularity="per_channel"), r"must be a Granularity"),
    (dict(bits=2, kind=QuantKind.TERNARY, symmetric=False), r"drop symmetric=False"),
])
def test_spec_errors_name_the_fix(kwargs, match):
    with pytest.raises(ConfigError, match=match):
        QuantSpec(**kwargs)


def test_group_size_must_divide_in_features():
    with pytest.raises(ConfigError, match=r"group_size=32 must divide the 100 in-features"):
        fake_quantize(torch.randn(4, 100), QuantSpec(granularity=PG, group_size=32))


def test_ranges_and_integer_dtypes():
    assert QuantSpec(bits=8).qrange() == (-127, 127)
    assert QuantSpec(bits=8, symmetric=False).qrange() == (0, 255)
    assert QuantSpec(bits=4).qrange() == (-7, 7)
    x = torch.randn(1000) * 3
    for spec, dtype in ((QuantSpec(bits=4), torch.int8), (QuantSpec(bits=4, symmetric=False), torch.uint8)):
        q = quantize(x, *compute_qparams(x, spec), spec)
        lo, hi = spec.qrange()
        assert q.dtype == dtype and int(q.min()) >= lo and int(q.max()) <= hi
        assert int(q.min()) == lo or int(q.max()) == hi  # min-max range uses an end of the grid


# -- references -------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("bits", [8, 4])
@pytest.mark.parametrize("symmetric", [True, False])
def test_per_tensor_equals_torch_fake_quantize(bits, symmetric):
    torch.manual_seed(0)
    x = torch.randn(64, 33) * 2 + 0.3
    spec = QuantSpec(bits=bits, symmetric=symmetric)
    scale, zp = compute_qparams(x, spec)
    assert scale.shape == () and zp.dtype == torch.int32
    ref = torch.fake_quantize_per_tensor_affine(x, float(scale), int(zp), *spec.qrange())
    assert torch.equal(fake_quantize(x, spec), ref)
    assert torch.equal(dequantize(quantize(x, scale, zp, spec), scale, zp, spec), ref)


@pytest.mark.parametrize("bits", [8, 4])
@pytest.mark.parametrize("symmetric", [True, False])
@pytest.mark.parametrize("shape, axis", [((16, 3, 3, 3), 0), ((8, 40), 0), ((8, 40), 1)])
def test_per_channel_equals_torch_fake_quantize(bits, symmetric, shape, axis):
    torch.manual_seed(1)
    x = torch.randn(*shape) * torch.rand(shape[axis]).add(0.1).reshape([-1 if i == axis else 1
                                                                        for i in range(len(shape))])
    spec = QuantSpec(bits=bits, symmetric=symmetric, granularity=PC, axis=axis)
    scale, zp = compute_qparams(x, spec)
    assert scale.shape == (shape[axis],)
    ref = torch.fake_quantize_per_channel_affine(x, scale, zp, axis, *spec.qrange())
    assert torch.equal(fake_quantize(x, spec), ref)


def test_hand_computed_examples():
    x = torch.tensor([-1.0, 0.0, 0.5, 2.0])
    spec = QuantSpec(bits=2, symmetric=False)  # range [-1, 2] on codes 0..3: scale 1, zero point 1
    scale, zp = compute_qparams(x, spec)
    assert float(scale) == 1.0 and int(zp) == 1
    assert quantize(x, scale, zp, spec).tolist() == [0, 1, 1, 3]  # 0.5 rounds half to even: 0
    assert fake_quantize(x, spec).tolist() == [-1.0, 0.0, 0.0, 2.0]
    spec = QuantSpec(bits=3)  # codes -3..3, scale 2/3: x/scale = -1.5, 0, 0.75, 3
    assert quantize(x, *compute_qparams(x, spec), spec).tolist() == [-2, 0, 1, 3]
    assert torch.allclose(fake_quantize(x, spec), torch.tensor([-4 / 3, 0.0, 2 / 3, 2.0]))


def test_binary_is_sign_times_mean_abs_per_channel():
    w = torch.tensor([[1.0, -3.0], [0.5, 0.5]])
    spec = QuantSpec(bits=1, kind=QuantKind.BINARY, granularity=PC)
    scale, _ = compute_qparams(w, spec)
    assert scale.tolist() == [2.0, 0.5]
    assert fake_quantize(w, spec).tolist() == [[2.0, -2.0], [0.5, 0.5]]
    # mean|w| is the L2-optimal scale for sign(w): any other scale is worse
    torch.manual_seed(0)
    g = torch.randn(4096)
    spec = QuantSpec(bits=1, kind=QuantKind.BINARY)
    best = _mse(fake_quantize(g, spec), g)
    a = float(g.abs().mean())
    for f in (0.9, 1.1):
        assert _mse(torch.sign(g) * a * f, g) > best


def test_ternary_uses_twn_threshold_and_scale():
    w = torch.tensor([1.0, -0.1, 0.2, -2.0, 0.05])  # mean|w| = 0.67, threshold 0.469: keeps 1.0 and -2.0
    spec = QuantSpec(bits=2, kind=QuantKind.TERNARY)
    scale, zp = compute_qparams(w, spec)
    assert float(scale) == pytest.approx(1.5) and int(zp) == 0
    assert quantize(w, scale, zp, spec).tolist() == [1, 0, 0, -1, 0]
    assert fake_quantize(w, spec).tolist() == [1.5, 0.0, 0.0, -1.5, 0.0]


# -- error bounds -----------------------------------------------------------------------------------------------
def test_error_shrinks_with_more_bits():
    torch.manual_seed(0)
    x = torch.randn(256, 256)
    errs = [_mse(fake_quantize(x, QuantSpec(bits=b)), x) for b in (8, 4, 3, 2)]
    assert errs == sorted(errs) and len(set(errs)) == 4
    scale = float(compute_qparams(x, QuantSpec(bits=8))[0])
    assert errs[0] <= scale ** 2 / 12 * 1.1  # rounding noise of a uniform grid: step^2 / 12


def test_per_channel_beats_per_tensor_and_per_group_beats_per_channel():
    torch.manual_seed(0)
    w = torch.randn(64, 256) * torch.logspace(-2, 0, 64)[:, None]  # channel ranges differ 100x
    e_t = _mse(fake_quantize(w, QuantSpec(bits=4)), w)
    e_c = _mse(fake_quantize(w, QuantSpec(bits=4, granularity=PC)), w)
    e_g = _mse(fake_quantize(w, QuantSpec(bits=4, granularity=PG, group_size=32)), w)
    assert e_c < e_t
    assert e_g <= e_c
    scale, zp = compute_qparams(w, QuantSpec(bits=4, granularity=PG, group_size=32))
    assert scale.shape == (64, 8) and zp.shape == (64, 8)


def test_constant_and_zero_tensors_do_not_divide_by_zero():
    for spec in (QuantSpec(), QuantSpec(symmetric=False), QuantSpec(granularity=PC)):
        z = torch.zeros(3, 4)
        assert torch.equal(fake_quantize(z, spec), z)
