"""Structured pruning through concatenation and splits, Conv1d / ConvTranspose1d, Embedding, norms and tied weights.

Each model is cut at ratio 0.5; the checks are the exact groups (offsets of each producer's slice in its
consumers), the exact parameter count after the cut, and the cut model equal to the dense model with the removed
units zeroed (`check_cut_equals_mask`), or, for norms that mix channels, equal to a hand-written reference.
"""
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import condense
from condense.errors import ConfigError
from condense.prune import StructuredConfig, prune_
from condense.prune.check import check_cut_equals_mask
from condense.prune.graph import build_graph

pytestmark = pytest.mark.usefixtures("one_thread")


def n_params(model):
    return sum(p.numel() for p in model.parameters())  # a tied Parameter counts once


def members(g):
    return sorted((m.module, m.dim, m.unit, m.offset) for m in g.members)


def randomised(model):
    gen = torch.Generator().manual_seed(1)
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.running_mean.copy_(torch.randn(m.num_features, generator=gen))
            m.running_var.copy_(torch.rand(m.num_features, generator=gen) + 0.5)
        if isinstance(m, (nn.modules.batchnorm._BatchNorm, nn.GroupNorm, nn.LayerNorm)):
            nn.init.normal_(m.weight, generator=gen)
            nn.init.normal_(m.bias, generator=gen)
    return model.eval()


def cut_and_check(model, batch, before, after, **cfg):
    check = check_cut_equals_mask(model, StructuredConfig(ratio=0.5, **cfg), batch, rtol=0)
    assert check.ok and check.max_error <= 1e-5, check.max_error
    assert (n_params(model), n_params(check.model)) == (before, after)
    return check


class ConvBranches(nn.Module):
    """Two conv branches concatenated along the channels, a BatchNorm over both, then a conv that reads both."""

    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Conv2d(2, 4, 3, padding=1), nn.Conv2d(2, 6, 1)
        self.bn, self.c = nn.BatchNorm2d(10), nn.Conv2d(10, 3, 3, padding=1)

    def forward(self, x):
        return self.c(torch.relu(self.bn(torch.cat([self.a(x), self.b(x)], 1))))


class LinearBranches(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b, self.c, self.d = nn.Linear(4, 6), nn.Linear(4, 10), nn.Linear(16, 8), nn.Linear(8, 2)

    def forward(self, x):
        return self.d(torch.relu(self.c(torch.cat([torch.relu(self.a(x)), self.b(x)], dim=-1))))


class Dense(nn.Module):
    """DenseNet-style: every block reads the concatenation of everything before it."""

    def __init__(self):
        super().__init__()
        self.stem, self.b1, self.b2 = nn.Conv2d(1, 4, 3, padding=1), nn.Conv2d(4, 2, 3, padding=1), \
            nn.Conv2d(6, 2, 3, padding=1)
        self.fc = nn.Linear(8, 3)

    def forward(self, x):
        x = self.stem(x)
        x = torch.cat([x, self.b1(torch.relu(x))], 1)
        x = torch.cat([x, self.b2(torch.relu(x))], 1)
        return self.fc(x.mean((2, 3)))


IMAGES = torch.randn(2, 2, 6, 6, generator=torch.Generator().manual_seed(0))


def test_conv_branches_concatenated_are_cut_at_their_offsets():
    torch.manual_seed(0)
    model = randomised(ConvBranches())
    g = build_graph(model, run=lambda m: m(IMAGES))
    assert g.method == "recorded"  # fx traces it, but the widths of a concatenation come from the recorded shapes
    assert [(x.name, x.size, members(x)) for x in g.groups] == [
        ("a", 4, [("a", "out", 1, 0), ("bn", "out", 1, 0), ("c", "in", 1, 0)]),
        ("b", 6, [("b", "out", 1, 0), ("bn", "out", 1, 4), ("c", "in", 1, 4)])]
    # a: 2*4*9+4 -> 2*2*9+2; b: 2*6+6 -> 2*3+3; bn: 20 -> 10; c: 10*3*9+3 -> 5*3*9+3
    check = cut_and_check(model, IMAGES, 387, 195)
    assert (check.model.bn.num_features, check.model.c.in_channels) == (5, 5)


def test_linear_branches_concatenated_feed_one_linear():
    torch.manual_seed(0)
    model = LinearBranches().eval()
    x = torch.randn(3, 4)
    g = build_graph(model, run=lambda m: m(x))
    assert [(y.name, members(y)) for y in g.groups] == [
        ("a", [("a", "out", 1, 0), ("c", "in", 1, 0)]), ("b", [("b", "out", 1, 0), ("c", "in", 1, 6)]),
        ("c", [("c", "out", 1, 0), ("d", "in", 1, 0)])]
    check = cut_and_check(model, x, 234, 86)  # a 30 -> 15, b 50 -> 25, c 136 -> 36, d 18 -> 10
    kept_a, kept_b = check.plan.keep["a"], check.plan.keep["b"]
    cols = kept_a + [6 + k for k in kept_b]
    assert torch.equal(check.model.c.weight, model.c.weight[check.plan.keep["c"]][:, cols])
    assert "calibration data" in build_graph(model).blocked["a"]  # fx alone does not know the widths


def test_densenet_style_nested_concatenation():
    torch.manual_seed(0)
    model = Dense().eval()
    x = IMAGES[:, :1]
    g = build_graph(model, run=lambda m: m(x))
    assert [(y.name, members(y)) for y in g.groups] == [
        ("stem", [("b1", "in", 1, 0), ("b2", "in", 1, 0), ("fc", "in", 1, 0), ("stem", "out", 1, 0)]),
        ("b1", [("b1", "out", 1, 0), ("b2", "in", 1, 4), ("fc", "in", 1, 4)]),
        ("b2", [("b2", "out", 1, 0), ("fc", "in", 1, 6)])]
    # stem 40 -> 20, b1 4*2*9+2=74 -> 2*1*9+1=19, b2 6*2*9+2=110 -> 3*1*9+1=28, fc 27 -> 4*3+3=15
    cut_and_check(model, x, 251, 82)


def test_concatenated_with_the_model_input_is_cut_after_it():
    class Grow(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.c = nn.Conv2d(2, 4, 1), nn.Conv2d(6, 3, 1)

        def forward(self, x):
            return self.c(torch.cat([x, self.a(x)], 1))  # x's 2 channels first: a's are inputs 2..5 of c

    torch.manual_seed(0)
    model = Grow().eval()
    g = build_graph(model, run=lambda m: m(IMAGES))
    assert [(y.name, members(y)) for y in g.groups] == [("a", [("a", "out", 1, 0), ("c", "in", 1, 2)])]
    cut_and_check(model, IMAGES, 12 + 21, 6 + 15)  # a 2*4+4 -> 2*2+2, c 6*3+3 -> 4*3+3


def test_concatenated_with_itself_is_blocked():
    class Twice(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.c = nn.Linear(4, 3), nn.Linear(6, 2)

        def forward(self, x):
            h = self.a(x)
            return self.c(torch.cat([h, torch.relu(h)], -1))

    g = build_graph(Twice(), run=lambda m: m(torch.randn(2, 4)))
    assert g.groups == [] and "concatenated with itself" in g.blocked["a"]


class TokenSplit(nn.Module):
    """Split and concatenated again along the tokens: the channels pass; a split of the channels blocks."""

    def __init__(self, channels: bool = False):
        super().__init__()
        self.fc, self.out, self.channels = nn.Linear(4, 8), nn.Linear(8, 2), channels

    def forward(self, x):  # x (B, T, 4)
        if self.channels:
            a, b = self.fc(x).split([3, 5], dim=-1)  # sizes fixed in the forward
            return self.out(torch.cat([b, a], -1))
        a, b = self.fc(x).split([2, 3], dim=1)  # (B, 2, 8), (B, 3, 8)
        return self.out(torch.cat([torch.relu(a), b], dim=1))


@pytest.mark.parametrize("fx_first", [True, False])
def test_split_along_tokens_passes_the_channels(fx_first):
    torch.manual_seed(0)
    model, x = TokenSplit().eval(), torch.randn(2, 5, 4)
    g = build_graph(model, run=lambda m: m(x), fx_first=fx_first)
    assert [(y.name, members(y)) for y in g.groups] == [("fc", [("fc", "out", 1, 0), ("out", "in", 1, 0)])]
    cut_and_check(model, x, 58, 30)  # fc 40 -> 20, out 18 -> 10
    g = build_graph(TokenSplit(channels=True), run=lambda m: m(x))
    assert "split along its channels by `split`" in g.blocked["fc"]

    class Prefix(nn.Module):  # a fixed prefix of tokens fixes the width
        def __init__(self):
            super().__init__()
            self.fc, self.out = nn.Linear(4, 8), nn.Linear(8, 2)

        def forward(self, x, prefix):
            return self.out(torch.cat([prefix, self.fc(x)], dim=1))

    g = build_graph(Prefix(), run=lambda m: m(x, torch.zeros(2, 1, 8)), fx_first=fx_first)
    assert g.groups == [] and "no traced layer produces" in g.blocked["fc"]


def test_conv1d_and_conv_transpose1d_net():
    torch.manual_seed(0)
    model = randomised(nn.Sequential(
        nn.Conv1d(3, 8, 3, padding=1), nn.BatchNorm1d(8), nn.ReLU(), nn.ConvTranspose1d(8, 6, 2, stride=2), nn.ReLU(),
        nn.Conv1d(6, 4, 1), nn.ReLU(), nn.AdaptiveAvgPool1d(1), nn.Flatten(), nn.Linear(4, 2)))
    x = torch.randn(2, 3, 7)
    g = build_graph(model)
    assert g.method == "fx" and [(y.name, y.kind, members(y)) for y in g.groups] == [
        ("0", "channels", [("0", "out", 1, 0), ("1", "out", 1, 0), ("3", "in", 1, 0)]),
        ("3", "channels", [("3", "out", 1, 0), ("5", "in", 1, 0)]),
        ("5", "channels", [("5", "out", 1, 0), ("9", "in", 1, 0)])]
    # conv 3*8*3+8=80 -> 40, bn 16 -> 8, convT 8*6*2+6=102 -> 4*3*2+3=27, conv 6*4+4=28 -> 3*2+2=8, fc 10 -> 6
    check = cut_and_check(model, x, 236, 89)
    assert (check.model[3].in_channels, check.model[3].out_channels) == (4, 3)


class EmbedMLP(nn.Module):
    def __init__(self, tied: bool = False, through: bool = False):
        super().__init__()
        self.emb, self.fc, self.fc2 = nn.Embedding(20, 8), nn.Linear(8, 6), nn.Linear(6, 8)
        self.head = nn.Linear(8, 20, bias=False)
        self.through = through
        if tied:
            self.head.weight = self.emb.weight

    def forward(self, ids):
        h = self.emb(ids)
        if self.through:  # the head reads what fc2 writes; the embedding is cut with fc only
            return self.head(self.fc2(torch.relu(self.fc(h))))
        return self.head(torch.relu(h)), self.fc(h)


IDS = torch.randint(0, 20, (2, 5), generator=torch.Generator().manual_seed(0))


def test_embedding_width_feeds_linears():
    torch.manual_seed(0)
    model = EmbedMLP().eval()
    g = build_graph(model, run=lambda m: m(IDS))
    assert [(y.name, y.kind, members(y)) for y in g.groups] == [
        ("emb", "neurons", [("emb", "out", 1, 0), ("fc", "in", 1, 0), ("head", "in", 1, 0)])]
    check = cut_and_check(model, IDS, 160 + 54 + 56 + 160, 80 + 30 + 56 + 80)  # fc2 is not called
    assert check.model.emb.weight.shape == (20, 4)


def test_tied_embedding_and_head_stay_tied(tmp_path):
    torch.manual_seed(0)
    model = EmbedMLP(tied=True).eval()
    check = cut_and_check(model, IDS, 160 + 54 + 56, 80 + 30 + 56)  # the head's weight is the embedding's
    assert check.model.head.weight is check.model.emb.weight and check.model.emb.weight.shape == (20, 4)
    prune_(model, StructuredConfig(ratio=0.5), calibration=[IDS])
    loaded = condense.load(condense.save(model, tmp_path / "tied"), model=EmbedMLP(tied=True))
    assert loaded.head.weight is loaded.emb.weight
    with torch.no_grad():
        assert all(torch.equal(a, b) for a, b in zip(loaded(IDS), model(IDS)))


def test_tied_weight_cut_in_one_holder_only_is_blocked():
    g = build_graph(EmbedMLP(tied=True, through=True), run=lambda m: m(IDS))
    assert [y.name for y in g.groups] == ["fc"]
    assert "tied to ['head']" in g.blocked["emb"] and "tied to ['emb']" in g.blocked["fc2"]


def test_group_norm_per_channel_is_exact_and_grouped_needs_renormalize():
    torch.manual_seed(0)
    model = randomised(nn.Sequential(nn.Conv2d(2, 8, 3), nn.GroupNorm(8, 8), nn.ReLU(), nn.Conv2d(8, 3, 1)))
    cut_and_check(model, IMAGES, 2 * 8 * 9 + 8 + 16 + 27, 2 * 4 * 9 + 4 + 8 + 15)
    grouped = randomised(nn.Sequential(nn.Conv2d(2, 8, 3), nn.GroupNorm(2, 8), nn.ReLU(), nn.Conv2d(8, 3, 1)))
    assert "renormalize=True" in build_graph(grouped).blocked["0"]
    cut = prune_(grouped, StructuredConfig(ratio=0.5, renormalize=True))
    assert (cut[1].num_groups, cut[1].num_channels) == (2, 4)
    odd = randomised(nn.Sequential(nn.Conv2d(2, 6, 3), nn.GroupNorm(2, 6), nn.ReLU(), nn.Conv2d(6, 3, 1)))
    with pytest.raises(ConfigError, match="round_to=2"):  # 3 channels kept cannot make 2 groups
        prune_(odd, StructuredConfig(ratio=0.5, renormalize=True))
    assert odd[1].num_channels == 6  # refused before anything changed


@pytest.mark.parametrize("norm", ["layernorm", "rmsnorm", "llama"])
def test_norms_over_the_channels_cut_their_weights_with_renormalize(norm):
    torch.manual_seed(0)
    if norm == "llama":
        transformers = pytest.importorskip("transformers")
        layer = transformers.models.llama.modeling_llama.LlamaRMSNorm(8)
    else:
        layer = nn.LayerNorm(8) if norm == "layernorm" else nn.RMSNorm(8)
    with torch.no_grad():
        layer.weight.normal_()
    model = nn.Sequential(nn.Linear(4, 8), layer, nn.ReLU(), nn.Linear(8, 2)).eval()
    assert "renormalize=True" in build_graph(model).blocked["0"]
    x = torch.randn(3, 4)
    dense = {k: v.clone() for k, v in model.state_dict().items()}
    cut = prune_(model, StructuredConfig(ratio=0.5, renormalize=True), calibration=[x])
    keep = [i for i in range(8) if any(torch.equal(dense["0.weight"][i], r) for r in cut[0].weight)]
    assert len(keep) == 4 and cut[1].weight.shape == (4,)
    h = F.linear(x, dense["0.weight"][keep], dense["0.bias"][keep])  # the reference: a norm over the kept channels
    if norm == "layernorm":
        h = F.layer_norm(h, (4,), dense["1.weight"][keep], dense["1.bias"][keep])
    else:
        eps = layer.variance_epsilon if norm == "llama" else torch.finfo(torch.float32).eps  # nn.RMSNorm(eps=None)
        h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + eps) * dense["1.weight"][keep]
    ref = F.linear(torch.relu(h), dense["3.weight"][:, keep], dense["3.bias"])
    with torch.no_grad():
        assert torch.allclose(cut(x), ref, atol=1e-5)


def test_a_custom_layer_is_registered_in_one_place():
    from condense.prune.cutters import Cutter, register_cutter, slice_
    from condense.prune.rules import channelwise

    class Gain(nn.Module):  # a per-channel scale of a conv map
        def __init__(self, n):
            super().__init__()
            self.weight = nn.Parameter(torch.randn(n, 1, 1))

        def forward(self, x):
            return x * self.weight

    @register_cutter(Gain, rule=channelwise)
    class GainCutter(Cutter):
        def cut(self, m, dim, idx):
            slice_(m, "weight", 0, idx)

        def shape(self, m):
            return {"features": len(m.weight)}

        def weights(self, m, dim):
            return [(m.weight, 0)]

    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(2, 8, 3), Gain(8), nn.ReLU(), nn.ConvTranspose2d(8, 4, 2, stride=2),
                          nn.Conv2d(4, 3, 1)).eval()
    assert [(y.name, members(y)) for y in build_graph(model).groups] == [
        ("0", [("0", "out", 1, 0), ("1", "out", 1, 0), ("3", "in", 1, 0)]),
        ("3", [("3", "out", 1, 0), ("4", "in", 1, 0)])]
    # conv 2*8*9+8=152 -> 76, gain 8 -> 4, convT 8*4*4+4=132 -> 4*2*4+2=34, conv 4*3+3=15 -> 2*3+3=9
    check = cut_and_check(model, IMAGES, 307, 123)
    assert check.model[1].weight.shape == (4, 1, 1)


class GLU(nn.Module):
    """A fused gate/up projection chunked in two along the channels (Phi-3's MLP): both halves lose the same units."""

    def __init__(self):
        super().__init__()
        self.fc, self.down = nn.Linear(4, 16), nn.Linear(8, 3)

    def forward(self, x):
        gate, up = self.fc(x).chunk(2, dim=-1)
        return self.down(torch.sigmoid(gate) * up)


@pytest.mark.parametrize("fx_first", [True, False])
def test_chunk_along_the_channels_folds_the_group(fx_first):
    torch.manual_seed(0)
    model, x = GLU().eval(), torch.randn(3, 4)
    g = build_graph(model, run=lambda m: m(x), fx_first=fx_first)
    assert [(y.name, y.kind, y.size, sorted((m.module, m.dim, m.blocks) for m in y.members)) for y in g.groups] == [
        ("fc", "neurons", 8, [("down", "in", ()), ("fc", "out", ((0, 1), (8, 1)))])]
    check = cut_and_check(model, x, 107, 55)  # fc 4*16+16 -> 4*8+8, down 8*3+3 -> 4*3+3
    kept = check.plan.keep["fc"]
    assert torch.equal(check.model.fc.weight, model.fc.weight[kept + [8 + k for k in kept]])


def test_phi3_fused_gate_up_ffn_prunes_exactly():
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    cfg = transformers.Phi3Config(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                                  num_key_value_heads=2, vocab_size=256, pad_token_id=0, bos_token_id=0,
                                  eos_token_id=0)
    model = transformers.Phi3ForCausalLM(cfg).eval()
    ids = torch.randint(0, 256, (2, 7), generator=torch.Generator().manual_seed(0))
    g = build_graph(model, run=lambda m: m(ids))
    assert [(y.name, y.kind, y.size) for y in g.groups] == [
        (f"model.layers.{i}.mlp.gate_up_proj", "ffn", 64) for i in range(2)]
    check = check_cut_equals_mask(model, StructuredConfig(ratio=0.25, target="ffn"), ids, rtol=0)
    assert check.ok and check.max_error <= 1e-5, check.max_error
    # per layer: gate_up 32*128 -> 32*96, down 64*32 -> 48*32 (no biases)
    assert (n_params(model), n_params(check.model)) == (34976, 34976 - 2 * (32 * 32 + 16 * 32))
    mlp = check.model.model.layers[0].mlp
    assert (mlp.gate_up_proj.out_features, mlp.down_proj.in_features) == (96, 48)
