import pytest
import torch

from condense.errors import ConfigError
from condense.quantize.nonuniform import kmeans_dequantize, kmeans_quantize, pow2_quantize
from condense.quantize.primitives import Granularity, QuantKind, QuantSpec, fake_quantize


def _mse(a, b):
    return float((a - b).pow(2).mean())


@pytest.fixture(scope="module")
def gaussian():
    return torch.randn(128, 128, generator=torch.Generator().manual_seed(0))


@pytest.mark.parametrize("bits", [2, 3, 4])
def test_kmeans_inertia_within_5_percent_of_sklearn(gaussian, bits):
    from sklearn.cluster import KMeans

    w = gaussian.flatten()[:8192]
    cb, idx = kmeans_quantize(w, bits=bits)
    ours = float((kmeans_dequantize(cb, idx) - w).pow(2).sum())
    ref = KMeans(n_clusters=2 ** bits, n_init=4, random_state=0).fit(w.reshape(-1, 1).double().numpy()).inertia_
    assert ours <= ref * 1.05


def test_kmeans_hand_example_and_determinism(gaussian):
    cb, idx = kmeans_quantize(torch.tensor([0.0, 0.1, 5.0, 5.2]), 2)
    assert cb.tolist() == pytest.approx([0.05, 5.1]) and idx.tolist() == [0, 0, 1, 1]
    a, b = kmeans_quantize(gaussian, bits=3), kmeans_quantize(gaussian, bits=3)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert a[1].dtype == torch.uint8 and a[1].shape == gaussian.shape and a[0].shape == (8,)
    assert torch.equal(a[0], a[0].sort().values)


def test_kmeans_per_channel_codebooks_fit_each_channel(gaussian):
    w = gaussian[:16] * torch.logspace(-2, 0, 16)[:, None]  # channel scales differ 100x
    cb, idx = kmeans_quantize(w, bits=2, per_channel=True)
    assert cb.shape == (16, 4)
    deq = kmeans_dequantize(cb, idx)
    assert torch.equal(deq[3], cb[3][idx[3].long()])
    assert _mse(deq, w) < _mse(kmeans_dequantize(*kmeans_quantize(w, bits=2)), w)
    assert torch.equal(fake_quantize(w, QuantSpec(bits=2, kind=QuantKind.KMEANS,
                                                 granularity=Granularity.PER_CHANNEL)), deq)


def test_kmeans_argument_errors():
    with pytest.raises(ConfigError, match="exactly one of n_clusters= or bits="):
        kmeans_quantize(torch.randn(10), 4, bits=2)
    with pytest.raises(ConfigError, match="bits must be in 1..8"):
        kmeans_quantize(torch.randn(10), bits=9)


@pytest.mark.parametrize("bits", [2, 3, 4, 8])
def test_pow2_values_are_powers_of_two_or_zero_and_nearest(gaussian, bits):
    q = pow2_quantize(gaussian, bits)
    nz = q[q != 0].abs()
    assert torch.equal(torch.exp2(torch.log2(nz).round()), nz)  # exactly 2^k
    mags = torch.unique(nz)
    assert len(mags) <= 2 ** (bits - 1) - 1
    assert torch.equal(torch.sign(q[q != 0]), torch.sign(gaussian[q != 0]))
    # brute force: each value went to its nearest allowed level (0 or +-2^k, k from the top exponent down)
    kmax = torch.log2(mags.max())
    levels = torch.cat([torch.zeros(1), torch.exp2(kmax - torch.arange(2 ** (bits - 1) - 1))])
    nearest = levels[(gaussian.abs().flatten()[:, None] - levels).abs().argmin(dim=1)]
    assert torch.equal(q.abs().flatten(), nearest)


def test_pow2_hand_example():
    assert pow2_quantize(torch.tensor([0.9, -0.3, 0.01, 0.2]), bits=3).tolist() == [1.0, -0.25, 0.0, 0.25]


def test_nonuniform_beats_uniform_on_gaussian(gaussian):
    w = gaussian
    for bits in (2, 3, 4):
        uniform = _mse(fake_quantize(w, QuantSpec(bits=bits)), w)
        kmeans = _mse(fake_quantize(w, QuantSpec(bits=bits, kind=QuantKind.KMEANS)), w)
        assert kmeans < uniform
    for bits in (2, 3):  # powers of two crowd levels near 0: better at low bits (not at 8, where a grid wins)
        assert _mse(pow2_quantize(w, bits), w) < _mse(fake_quantize(w, QuantSpec(bits=bits)), w)
