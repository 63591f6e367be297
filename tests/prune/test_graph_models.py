"""Structured pruning on models condense did not write: Llama/Mistral/Qwen2 (SwiGLU), GPT-2 (Conv1D), Hugging Face
BERT, a torchvision-style ResNet (one ReLU reused, residual adds) and a MobileNet-style net (depthwise convs).

For each: the exact groups, the exact parameter count after a 25% cut, the cut equal to the masked dense model,
and save/load through condense reproducing the outputs exactly.
"""
import copy

import pytest
import torch
from torch import nn

import condense
from condense.core.transforms import TransformContext
from condense.prune import StructuredConfig, prune_
from condense.prune.check import check_cut_equals_mask, masked_copy
from condense.prune.graph import build_graph
from condense.prune.structured import plan_structured
from condense.testing.zoo import ResNet, mobilenet_like

transformers = pytest.importorskip("transformers")
pytestmark = pytest.mark.usefixtures("one_thread")

IDS = torch.randint(0, 256, (2, 7), generator=torch.Generator().manual_seed(0))


def n_params(model):
    return sum(p.numel() for p in model.parameters())


def llama():
    torch.manual_seed(0)
    return transformers.LlamaForCausalLM(transformers.LlamaConfig(
        hidden_size=32, intermediate_size=88, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
        vocab_size=256)).eval()


def gpt2():
    torch.manual_seed(0)
    return transformers.GPT2LMHeadModel(transformers.GPT2Config(n_embd=32, n_layer=2, n_head=4, vocab_size=256,
                                                                bos_token_id=0, eos_token_id=0)).eval()


def bert():
    torch.manual_seed(0)
    return transformers.BertModel(transformers.BertConfig(vocab_size=256, hidden_size=32, num_hidden_layers=2,
                                                          num_attention_heads=4, intermediate_size=64)).eval()


def randomised_bn(model):
    g = torch.Generator().manual_seed(1)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.copy_(torch.randn(m.num_features, generator=g))
            m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            nn.init.normal_(m.weight, generator=g)
            nn.init.normal_(m.bias, generator=g)
    return model.eval()


def resnet():
    torch.manual_seed(0)
    return randomised_bn(ResNet((8, 16)))


def mobilenet():
    torch.manual_seed(0)
    return randomised_bn(mobilenet_like((8, 16, 32)))


IMAGES = torch.randn(2, 1, 16, 16, generator=torch.Generator().manual_seed(0))
# name -> (builder, batch, [(group, kind, size, sorted members)], parameters before, after ratio 0.25)
CASES = {
    "llama": (llama, IDS, [(f"model.layers.{i}.mlp.gate_proj", "ffn", 88, [
        (f"model.layers.{i}.mlp.down_proj", "in"), (f"model.layers.{i}.mlp.gate_proj", "out"),
        (f"model.layers.{i}.mlp.up_proj", "out")]) for i in range(2)], 39584, 35360),
    "gpt2": (gpt2, IDS, [(f"transformer.h.{i}.mlp.c_fc", "ffn", 128, [
        (f"transformer.h.{i}.mlp.c_fc", "out"), (f"transformer.h.{i}.mlp.c_proj", "in")]) for i in range(2)],
        66432, 62272),
    "bert": (bert, IDS, [(f"encoder.layer.{i}.intermediate.dense", "ffn", 64, [
        (f"encoder.layer.{i}.intermediate.dense", "out"), (f"encoder.layer.{i}.output.dense", "in")])
        for i in range(2)], 42848, 40768),
    "resnet": (resnet, IMAGES, [
        ("conv1", "channels", 8, [("bn1", "out"), ("conv1", "out"), ("layers.0.bn2", "out"), ("layers.0.conv1", "in"),
                                  ("layers.0.conv2", "out"), ("layers.1.conv1", "in"),
                                  ("layers.1.downsample.0", "in")]),
        ("layers.0.conv1", "channels", 8, [("layers.0.bn1", "out"), ("layers.0.conv1", "out"),
                                           ("layers.0.conv2", "in")]),
        ("layers.1.conv1", "channels", 16, [("layers.1.bn1", "out"), ("layers.1.conv1", "out"),
                                            ("layers.1.conv2", "in")]),
        ("layers.1.conv2", "channels", 16, [("fc", "in"), ("layers.1.bn2", "out"), ("layers.1.conv2", "out"),
                                            ("layers.1.downsample.0", "out"), ("layers.1.downsample.1", "out")])],
        5122, 2956),
    "mobilenet": (mobilenet, IMAGES, [
        ("stem.0", "channels", 8, [("blocks.0.0.0", "out"), ("blocks.0.0.1", "out"), ("blocks.0.1.0", "in"),
                                   ("stem.0", "out"), ("stem.1", "out")]),
        ("blocks.0.1.0", "channels", 8, [("blocks.0.1.0", "out"), ("blocks.0.1.1", "out"), ("blocks.1.0.0", "out"),
                                         ("blocks.1.0.1", "out"), ("blocks.1.1.0", "in")]),
        ("blocks.1.1.0", "channels", 16, [("blocks.1.1.0", "out"), ("blocks.1.1.1", "out"), ("blocks.2.0.0", "out"),
                                          ("blocks.2.0.1", "out"), ("blocks.2.1.0", "in")]),
        ("blocks.2.1.0", "channels", 32, [("blocks.2.1.0", "out"), ("blocks.2.1.1", "out"), ("fc", "in")])],
        1586, 1060),
}


@pytest.mark.parametrize("name", list(CASES))
def test_groups_parameters_masked_equality_and_save_load(name, tmp_path):
    build, batch, groups, before, after = CASES[name]
    model = build()
    g = build_graph(model, run=lambda m: m(batch))  # heads are tests/prune/test_heads.py's
    assert [(x.name, x.kind, x.size, sorted((m.module, m.dim) for m in x.members)) for x in g.groups
            if x.kind != "heads"] == groups
    cfg = StructuredConfig(ratio=0.25, include=tuple(x[0] for x in groups))
    check = check_cut_equals_mask(model, cfg, batch, rtol=0)
    assert check.ok and check.max_error <= 1e-5, check.max_error
    assert (n_params(model), n_params(check.model)) == (before, after)  # the check cuts a copy
    prune_(model, cfg, calibration=[batch])
    assert n_params(model) == after
    with torch.no_grad():
        out = condense.load(condense.save(model, tmp_path / name), model=build())(batch)
        ref = model(batch)
    out, ref = (out, ref) if isinstance(out, torch.Tensor) else (out[0], ref[0])
    assert torch.equal(out, ref)


@pytest.mark.parametrize("arch", ["MistralForCausalLM", "Qwen2ForCausalLM"])
def test_other_gated_mlps_prune_gate_and_up_together(arch):
    cls = getattr(transformers, arch)
    torch.manual_seed(0)
    model = cls(cls.config_class(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                                 num_key_value_heads=2, vocab_size=256)).eval()
    check = check_cut_equals_mask(model, StructuredConfig(ratio=0.25, target="ffn"), IDS)
    assert check.ok, check.max_error
    mlps = [layer.mlp for layer in check.model.model.layers]
    assert [(m.gate_proj.out_features, m.up_proj.out_features, m.down_proj.in_features) for m in mlps] == [(48,) * 3] * 2


def test_gate_and_up_keep_the_same_units_scored_over_both():
    model = llama()
    with torch.no_grad():  # unit 5 of layer 0 weak in gate only: its score summed over gate, up, down is lowest
        model.model.layers[0].mlp.gate_proj.weight[5] *= 1e-3
    plan = plan_structured(model, StructuredConfig(ratio=0.25), TransformContext(calibration=[IDS]))
    kept = plan.keep["model.layers.0.mlp.gate_proj"]
    assert len(kept) == 66 and 5 not in kept
    prune_(model, StructuredConfig(ratio=0.25), calibration=[IDS])
    mlp, dense = model.model.layers[0].mlp, llama().model.layers[0].mlp
    for layer, ref in ((mlp.gate_proj, dense.gate_proj), (mlp.up_proj, dense.up_proj)):
        assert torch.equal(layer.weight, ref.weight[kept])
    assert torch.equal(mlp.down_proj.weight, dense.down_proj.weight[:, kept])


def test_pruned_llama_generates_with_its_kv_cache_like_the_masked_model():
    model = llama()
    plan = plan_structured(model, StructuredConfig(ratio=0.25), TransformContext(calibration=[IDS]))
    ref = masked_copy(model, plan)
    prune_(model, StructuredConfig(ratio=0.25), calibration=[IDS])
    kw = dict(max_new_tokens=6, do_sample=False, attention_mask=torch.ones_like(IDS), pad_token_id=0)
    cached = model.generate(IDS, use_cache=True, **kw)
    assert cached.shape == (2, 13)
    assert torch.equal(cached, model.generate(IDS, use_cache=False, **kw))
    assert torch.equal(cached, ref.generate(IDS, use_cache=True, **kw))


def test_ffn_target_finds_hf_ffns_and_only_them():
    model = bert()
    check = check_cut_equals_mask(model, StructuredConfig(ratio=0.5, target="ffn"), IDS)
    assert check.ok and sorted(check.plan.keep) == ["encoder.layer.0.intermediate.dense",
                                                    "encoder.layer.1.intermediate.dense"]
    layer = check.model.encoder.layer[0]
    assert (layer.intermediate.dense.out_features, layer.output.dense.in_features,
            layer.attention.self.query.out_features) == (32, 32, 32)


def test_reused_relu_is_independent_ops_but_reused_weights_stay_blocked():
    class Twice(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b, self.c, self.act = nn.Linear(4, 8), nn.Linear(8, 6), nn.Linear(6, 2), nn.ReLU()

        def forward(self, x):
            return self.c(self.act(self.b(self.act(self.a(x)))))

    g = build_graph(Twice())
    assert [(x.name, x.size) for x in g.groups] == [("a", 8), ("b", 6)]
    net = copy.deepcopy(Twice())
    net.b = net.a = nn.Linear(4, 4)
    net.c = nn.Linear(4, 2)
    assert "more than once" in build_graph(net).blocked["a"]


def test_a_join_with_a_tensor_no_layer_produces_blocks_every_producer():
    class Gated(nn.Module):  # up(x) * mask: the mask's width is not ours to cut
        def __init__(self):
            super().__init__()
            self.gate, self.up, self.down = nn.Linear(4, 8), nn.Linear(4, 8), nn.Linear(8, 4)

        def forward(self, x, mask):
            return self.down(torch.relu(self.gate(x)) * self.up(x) * mask)

    g = build_graph(Gated())
    assert g.groups == [] and "e.g. a residual add" in g.blocked["gate"] and "e.g. a residual add" in g.blocked["up"]


@pytest.mark.parametrize("fx_first", [True, False])
def test_in_place_residual_add_couples_a_conv_with_its_own_input(fx_first):
    class Block(nn.Module):  # torchvision style: out += identity, one ReLU(inplace=True) for both
        def __init__(self):
            super().__init__()
            self.c0, self.c1 = nn.Conv2d(1, 4, 3, padding=1), nn.Conv2d(4, 4, 3, padding=1)
            self.relu, self.fc = nn.ReLU(inplace=True), nn.Linear(4, 2)

        def forward(self, x):
            x = self.relu(self.c0(x))
            out = self.c1(x)
            out += x
            return self.fc(torch.flatten(nn.functional.adaptive_avg_pool2d(self.relu(out), 1), 1))

    torch.manual_seed(0)
    net, x = Block().eval(), torch.randn(2, 1, 8, 8)
    g = build_graph(net, run=lambda m: m(x), fx_first=fx_first)
    assert g.method == ("fx" if fx_first else "recorded")
    assert [(x.name, sorted((m.module, m.dim) for m in x.members)) for x in g.groups] == [
        ("c0", [("c0", "out"), ("c1", "in"), ("c1", "out"), ("fc", "in")])]
    assert check_cut_equals_mask(net, StructuredConfig(ratio=0.5), x).ok


def test_reconstruct_says_which_consumers_it_cannot_refit():
    with pytest.warns(UserWarning, match=r"refits nn.Linear consumers only; 4 other layer\(s\)"):
        plan_structured(gpt2(), StructuredConfig(ratio=0.25, reconstruct=True), TransformContext(calibration=[IDS]))


def test_mask_check_catches_a_wrong_rule(monkeypatch):
    from condense.prune.rules import OP_RULES

    class Mixing(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = nn.Linear(4, 8), nn.Linear(8, 2)

        def forward(self, x):
            return self.b(torch.cumsum(self.a(x), -1))  # mixes the channels: unit c is not only unit c

    torch.manual_seed(0)
    x = torch.randn(3, 4)
    assert "`cumsum`" in build_graph(Mixing()).blocked["a"]
    monkeypatch.setitem(OP_RULES, "cumsum", lambda site, flow: flow)  # claims cumsum is element-wise
    check = check_cut_equals_mask(Mixing(), StructuredConfig(ratio=0.5), x)
    assert not check.ok and check.max_error > 1e-3


def test_hf_residual_stream_is_blocked_at_the_add_with_its_reason():
    g = build_graph(bert(), run=lambda m: m(IDS))
    assert g.method == "recorded" and g.unsupported == []  # the add is the reason, not the LayerNorm after it
    for name in ("encoder.layer.0.output.dense", "encoder.layer.1.output.dense"):  # attention.output.dense: heads
        assert g.blocked[name] == ("meets another tensor in `add` (e.g. a residual add) that no prunable layer "
                                   "produces: its width is shared")
    assert g.blocked["pooler.dense"] == "its output is a model output"
