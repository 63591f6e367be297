"""Update codecs against references: error bounds, exact top-k, Eckart-Young for low rank, error feedback."""
import numpy as np
import pytest

pytest.importorskip("flwr")
import torch

from condense.errors import ConfigError
from condense.federated import messages
from condense.federated.compress import ErrorFeedback, Layout, make_codec

LAYOUT = Layout(("conv", "bias", "fc"), ((16, 4, 3, 3), (16,), (10, 64)))


def _update(seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(LAYOUT.numel, generator=g)
    x[:576] *= torch.linspace(0.01, 10, 576)  # rows of very different magnitude in the conv weight
    return x


def test_dense_round_trips_exactly():
    c = make_codec("none", LAYOUT)
    x = _update()
    assert torch.equal(c.decode(c.encode(x)), x)


@pytest.mark.parametrize("per_row", [False, True])
def test_int8_error_is_at_most_half_a_scale_per_entry(per_row):
    c = make_codec("int8", LAYOUT, per_row=per_row)
    x = _update()
    p = c.encode(x)
    assert p["q"].dtype == np.int8 and p["q"].size == LAYOUT.numel
    assert p["scales"].size == (16 + 1 + 10 if per_row else 3)
    err = (c.decode(p) - x).abs()
    assert bool((err <= c.scales_per_entry(p) / 2 + 1e-6).all())
    assert float(err.max()) > 0  # lossy: the bound is not vacuous


def test_int8_per_row_is_more_accurate_than_per_tensor_on_uneven_rows():
    x = _update()
    errs = {}
    for per_row in (False, True):
        c = make_codec("int8", LAYOUT, per_row=per_row)
        errs[per_row] = float((c.decode(c.encode(x)) - x).pow(2).sum())
    assert errs[True] < 0.5 * errs[False]


def test_topk_keeps_exactly_the_k_largest_entries():
    c = make_codec("topk", LAYOUT, fraction=0.05)
    x = _update()
    k = round(0.05 * LAYOUT.numel)
    p = c.encode(x)
    assert p["indices"].size == k == len(set(p["indices"].tolist()))
    y = c.decode(p)
    assert int((y != 0).sum()) == k
    ref = set(torch.topk(x.abs(), k).indices.tolist())
    assert set(p["indices"].tolist()) == ref
    kept = torch.tensor(sorted(ref))
    assert torch.equal(y[kept], x[kept])


def test_error_feedback_carries_the_residual():
    c = make_codec("topk", LAYOUT, fraction=0.01)
    ef = ErrorFeedback(c)
    xs = [_update(s) for s in range(4)]
    sent = torch.zeros(LAYOUT.numel)
    for i, x in enumerate(xs):
        before = ef.residual.clone()
        y = c.decode(ef.encode(x))
        assert torch.allclose(ef.residual, x + before - y, atol=1e-6)  # what was dropped is kept
        sent += y
    # nothing is lost: what was sent plus what is still held is the sum of the updates
    assert torch.allclose(sent + ef.residual, torch.stack(xs).sum(0), atol=1e-4)
    # and the second round sends an entry the first one dropped, pushed up by its residual
    small = torch.zeros(LAYOUT.numel)
    small[5] = 0.9
    small[7] = 1.0
    k_one = make_codec("topk", LAYOUT, fraction=1 / LAYOUT.numel)
    ef2 = ErrorFeedback(k_one)
    assert ef2.encode(small)["indices"].tolist() == [7]
    assert ef2.encode(small)["indices"].tolist() == [5]  # 0.9 + 0.9 residual beats 1.0


def test_lowrank_matches_the_best_rank_r_approximation():
    c = make_codec("lowrank", LAYOUT, rank=2)
    x = _update()
    y = c.decode(c.encode(x))
    parts_x, parts_y = torch.split(x, LAYOUT.sizes), torch.split(y, LAYOUT.sizes)
    for (name, shape), px, py in zip(zip(LAYOUT.names, LAYOUT.shapes), parts_x, parts_y):
        if len(shape) == 1:
            assert torch.equal(px, py)  # 1-D tensors go dense
            continue
        m = px.reshape(shape[0], -1)
        s = torch.linalg.svdvals(m)
        best = float(s[2:].pow(2).sum().sqrt())  # Eckart-Young: the rank-2 optimum
        assert abs(float((m - py.reshape(shape[0], -1)).norm()) - best) <= 1e-3 * best
    sent = c.encode(x)["values"].size
    assert sent == 2 * (16 + 36) + 16 + 2 * (10 + 64)


def test_lowrank_reconstructs_a_low_rank_update():
    lay = Layout(("w",), ((32, 48),))
    m = torch.randn(32, 3) @ torch.randn(3, 48)
    c = make_codec("lowrank", lay, rank=3)
    assert torch.allclose(c.decode(c.encode(m.reshape(-1))), m.reshape(-1), atol=1e-4)


def test_unknown_codec_and_bad_options_raise_config_errors():
    with pytest.raises(ConfigError, match="unknown codec 'gzip'"):
        make_codec("gzip", LAYOUT)
    with pytest.raises(ConfigError):
        make_codec("topk", LAYOUT, fraction=0.0)
    with pytest.raises(ConfigError):
        make_codec("lowrank", LAYOUT, rank=0)


def test_bytes_are_those_of_the_serialized_message():
    lay = Layout(("w",), ((100_000,),))
    x = torch.randn(100_000)
    sizes = {}
    for name, opts in (("none", {}), ("int8", {}), ("topk", {"fraction": 0.01})):
        content = messages.reply(make_codec(name, lay, **opts).encode(x), 10, 0.5)
        received, n = messages.wire(content)
        assert n == messages.message_bytes(content)
        raw = sum(a.nbytes for a in messages.payload_of(received).values())
        assert raw < n < raw + 1000  # the payload plus headers, keys and metrics
        sizes[name] = n
    assert sizes["none"] / sizes["int8"] >= 3.9
    assert sizes["none"] / sizes["topk"] >= 10


def test_layout_counts_tied_weights_once():
    emb = torch.nn.Embedding(10, 4)
    head = torch.nn.Linear(4, 10, bias=False)
    head.weight = emb.weight
    net = torch.nn.ModuleDict({"emb": emb, "head": head, "norm": torch.nn.LayerNorm(4)})
    lay = Layout.of(net.state_dict())
    assert lay.names == ("emb.weight", "norm.weight", "norm.bias") and lay.numel == 48
