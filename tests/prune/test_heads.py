"""Attention heads found from the trace on Hugging Face models (BERT, GPT-2, Llama/Mistral/Qwen2 with grouped-query
attention): exact groups, exact parameter counts, equality with the dense model whose pruned heads are zeroed,
cached generation, and save/load both ways (Hugging Face folder where the config can say it, condense artifact)."""
import copy
import warnings

import pytest
import torch
from torch import nn

import condense
from condense.core.linear_like import linear_weight
from condense.core.transforms import TransformContext
from condense.prune import StructuredConfig, prune_
from condense.prune.config_sync import sync_after_cut_
from condense.prune.cutters import cutter_for, shape_of
from condense.prune.graph import build_graph
from condense.prune.head_cutters import CUTTERS, HeadCounts, register_head_counts, register_optional
from condense.prune.heads import member_elements
from condense.prune.structured import apply_plan, plan_structured

transformers = pytest.importorskip("transformers")
pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models: one thread (tests/conftest.py)

IDS = torch.randint(0, 100, (2, 7), generator=torch.Generator().manual_seed(0))
HEADS = StructuredConfig(ratio=0.5, target="heads")
T = transformers


def _gqa(config_cls, model_cls):
    def build():
        torch.manual_seed(0)
        return model_cls(config_cls(hidden_size=32, intermediate_size=88, num_hidden_layers=2, num_attention_heads=4,
                                    num_key_value_heads=2, vocab_size=256, bos_token_id=0, eos_token_id=0)).eval()
    return build


def gpt2():
    torch.manual_seed(0)
    return T.GPT2LMHeadModel(T.GPT2Config(n_embd=32, n_layer=2, n_head=4, vocab_size=256, bos_token_id=0,
                                          eos_token_id=0)).eval()


def bert():
    torch.manual_seed(0)
    return T.BertModel(T.BertConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
                                    vocab_size=100)).eval()


llama = _gqa(T.LlamaConfig, T.LlamaForCausalLM)
GQA = {"llama": llama, "mistral": _gqa(T.MistralConfig, T.MistralForCausalLM),
       "qwen2": _gqa(T.Qwen2Config, T.Qwen2ForCausalLM)}


def run(m):
    return m(input_ids=IDS)


def members(g):
    return [(m.module, m.dim, m.unit, getattr(m, "blocks", ())) for m in g.members]


@pytest.mark.parametrize("name", sorted(GQA))
def test_gqa_groups_one_key_value_head_with_its_two_query_heads(name):
    g = build_graph(GQA[name](), run=run)
    heads = [x for x in g.groups if x.kind == "heads"]
    assert [(x.name, x.size) for x in heads] == [("model.layers.0.self_attn", 2), ("model.layers.1.self_attn", 2)]
    p = "model.layers.0.self_attn."
    assert members(heads[0]) == [(p + "q_proj", "out", 16, ()), (p + "k_proj", "out", 8, ()),
                                 (p + "v_proj", "out", 8, ()), (p + "o_proj", "in", 16, ()),
                                 ("model.layers.0.self_attn", "q_heads", 2, ())]


def test_gpt2_fused_c_attn_gives_q_k_v_blocks_and_c_proj_reads_the_heads():
    g = build_graph(gpt2(), run=run).group("transformer.h.1.attn")
    p = "transformer.h.1.attn."
    assert (g.kind, g.size) == ("heads", 4)
    assert members(g) == [(p + "c_attn", "out", 8, ((0, 8), (32, 8), (64, 8))), (p + "c_proj", "in", 8, ()),
                          ("transformer.h.1.attn", "heads", 1, ())]


def test_bert_heads_end_in_the_sibling_self_output_dense():
    g = build_graph(bert(), run=run).group("encoder.layer.0.attention.self")
    p = "encoder.layer.0.attention."
    assert g.size == 4 and members(g) == [
        (p + "self.query", "out", 8, ()), (p + "self.key", "out", 8, ()), (p + "self.value", "out", 8, ()),
        (p + "output.dense", "in", 8, ()), (p + "self", "heads", 1, ())]


def zeroed_reference(model, plan):
    """`model` with the dropped heads' q/k/v rows (and biases) and output-projection inputs set to zero."""
    ref = copy.deepcopy(model)
    mods = dict(ref.named_modules())
    with torch.no_grad():
        for g in plan.graph.groups:
            if g.name not in plan.keep:
                continue
            drop = torch.tensor(sorted(set(range(g.size)) - set(plan.keep[g.name])), dtype=torch.long)
            for mem in g.members:
                m = mods[mem.module]
                if mem.dim not in ("out", "in"):
                    continue
                el = member_elements(mem, drop)
                w = linear_weight(m)  # (out, in) view
                if mem.dim == "out":
                    w[el] = 0
                    if m.bias is not None:
                        m.bias[el] = 0
                else:
                    w[:, el] = 0
    return ref


def params(m):
    return sum(p.numel() for p in m.parameters())


# (model, heads removed per layer * parameters per removed head) at ratio 0.5: q/k/v rows (+ bias) and o columns
CASES = {"llama": (llama, 2 * (2 * 8 * 32 + 8 * 32 * 2 + 32 * 2 * 8)),  # 1 of 2 kv groups: 2 q heads, 1 k, 1 v
         "gpt2": (gpt2, 2 * 2 * (3 * (8 * 32 + 8) + 8 * 32)),
         "bert": (bert, 2 * 2 * (3 * (8 * 32 + 8) + 8 * 32))}


@pytest.mark.parametrize("name", sorted(CASES))
def test_cut_equals_dense_with_pruned_heads_zeroed_and_counts_are_exact(name):
    build, removed = CASES[name]
    model = build()
    n0 = params(model)
    plan = plan_structured(model, HEADS, TransformContext(calibration=[{"input_ids": IDS}]))
    ref = zeroed_reference(model, plan)
    apply_plan(model, plan)
    assert params(model) == n0 - removed
    with torch.no_grad():
        assert (model(input_ids=IDS)[0] - ref(input_ids=IDS)[0]).abs().max() < 1e-5
    other = build()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        prune_(other, HEADS, calibration=[{"input_ids": IDS}])
    assert params(other) == n0 - removed


@pytest.mark.parametrize("build", [llama, gpt2], ids=["llama", "gpt2"])
def test_generate_with_kv_cache_gives_the_zeroed_dense_models_tokens(build):
    model = build()
    plan = plan_structured(model, HEADS, TransformContext(calibration=[{"input_ids": IDS}]))
    ref = zeroed_reference(model, plan)
    apply_plan(model, plan)
    prompt = IDS[:1, :4]
    want = ref.generate(prompt, max_new_tokens=8, do_sample=False, use_cache=True)
    got = model.generate(prompt, max_new_tokens=8, do_sample=False, use_cache=True)
    assert torch.equal(got, want) and got.shape == (1, 12)


@pytest.mark.parametrize("name", sorted(GQA))
def test_uniform_gqa_heads_update_the_config_and_the_hf_folder_round_trips(name, tmp_path):
    model = GQA[name]()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the config can say it: no warning
        prune_(model, HEADS, calibration=[{"input_ids": IDS}])
    c = model.config
    assert (c.num_attention_heads, c.num_key_value_heads, c.head_dim) == (2, 1, 8)
    assert [a.num_key_value_groups for a in (layer.self_attn for layer in model.model.layers)] == [2, 2]
    model.save_pretrained(tmp_path)
    back = type(model).from_pretrained(tmp_path).eval()
    with torch.no_grad():
        assert torch.equal(back(input_ids=IDS).logits, model(input_ids=IDS).logits)
    prompt = IDS[:1, :4]
    assert torch.equal(back.generate(prompt, max_new_tokens=6, do_sample=False),
                       model.generate(prompt, max_new_tokens=6, do_sample=False))


def test_bert_ffn_width_goes_to_intermediate_size_and_round_trips(tmp_path):
    model = bert()
    prune_(model, StructuredConfig(ratio=0.5, target="ffn"), calibration=[{"input_ids": IDS}])
    assert model.config.intermediate_size == 32
    model.save_pretrained(tmp_path)
    back = type(model).from_pretrained(tmp_path).eval()
    with torch.no_grad():
        assert torch.equal(back(input_ids=IDS).last_hidden_state, model(input_ids=IDS).last_hidden_state)


@pytest.mark.parametrize("build", [bert, gpt2], ids=["bert", "gpt2"])
def test_head_dim_derived_from_hidden_size_is_warned_and_config_left_alone(build):
    model = build()
    with pytest.warns(UserWarning, match="cannot describe the pruned model.*condense.save"):
        prune_(model, HEADS, calibration=[{"input_ids": IDS}])
    assert model.config.num_attention_heads == 4  # unchanged: BERT/GPT-2 derive head_dim = hidden / heads


def test_per_layer_head_counts_warn_and_still_generate():
    model = llama()
    cfg = StructuredConfig(ratio=0.5, target="heads", layer_ratios=(("model.layers.1.*", 0.0),))
    with pytest.warns(UserWarning, match="layers keep different head counts"):
        prune_(model, cfg, calibration=[{"input_ids": IDS}])
    assert model.config.num_attention_heads == 4
    assert [a.q_proj.out_features for a in (layer.self_attn for layer in model.model.layers)] == [16, 32]
    assert model.generate(IDS[:1, :4], max_new_tokens=4, do_sample=False).shape == (1, 8)


@pytest.mark.parametrize("build,ratios", [(llama, ()), (llama, (("model.layers.1.*", 0.0),)), (gpt2, ()),
                                          (bert, ())], ids=["llama", "llama-per-layer", "gpt2", "bert"])
def test_condense_save_load_is_exact(build, ratios, tmp_path):
    model = build()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        prune_(model, StructuredConfig(ratio=0.5, target="heads", layer_ratios=ratios),
               calibration=[{"input_ids": IDS}])
    d = condense.save(model, tmp_path / "m")
    back = condense.load(d, model=build())
    with torch.no_grad():
        assert torch.equal(back(input_ids=IDS)[0], model(input_ids=IDS)[0])
    assert back.config.num_attention_heads == model.config.num_attention_heads


class Attn(nn.Module):
    """A custom attention that reads its head count `nh` at run time (no well-known name)."""

    def __init__(self, heads=4, hd=4):
        super().__init__()
        self.nh, self.hd = heads, hd
        self.q, self.k, self.v = (nn.Linear(16, heads * hd) for _ in range(3))
        self.o = nn.Linear(heads * hd, 16)

    def forward(self, x):  # (B, T, 16)
        B, T, _ = x.shape
        q, k, v = (p(x).view(B, T, self.nh, self.hd).transpose(1, 2) for p in (self.q, self.k, self.v))
        y = nn.functional.scaled_dot_product_attention(q, k, v)  # (B, nh, T, hd)
        return self.o(y.transpose(1, 2).reshape(B, T, self.nh * self.hd))


def test_custom_attention_registered_once_is_pruned_and_reloaded(tmp_path):
    register_head_counts(Attn, HeadCounts(heads=("nh",)))
    try:
        torch.manual_seed(0)
        model, x = nn.Sequential(Attn()), torch.randn(2, 5, 16)
        prune_(model, HEADS, calibration=[x])
        assert (model[0].nh, model[0].q.out_features) == (2, 8)
        back = condense.load(condense.save(model, tmp_path / "a"), model=nn.Sequential(Attn()))
        assert back[0].nh == 2 and torch.equal(back(x), model(x))
    finally:
        CUTTERS.pop(Attn)


def test_unregistered_attention_is_warned_and_a_disagreeing_count_is_not_pruned():
    torch.manual_seed(0)
    model = nn.Sequential(Attn())
    model[0].num_heads = 3  # a well-known name that disagrees with the 4 heads the views show
    g = build_graph(model, run=lambda m: m(torch.randn(1, 3, 16)))
    assert not [x for x in g.groups if x.kind == "heads"] and "3 heads" in g.blocked["0"]
    del model[0].num_heads
    with pytest.warns(UserWarning, match="no head cutter is registered for its type"):
        g = build_graph(model, run=lambda m: m(torch.randn(1, 3, 16)))
    CUTTERS.pop(Attn)
    assert g.group("0").size == 4


@pytest.mark.parametrize("name", sorted(GQA))
def test_gqa_queries_inside_groups_keep_every_key_value_head(name, tmp_path):
    model = GQA[name]()
    cfg = StructuredConfig(ratio=0.5, target="heads", gqa="queries")
    plan = plan_structured(model, cfg, TransformContext(calibration=[{"input_ids": IDS}]))
    g = plan.graph.group("model.layers.0.self_attn")
    assert g.size == 2 and [(m.module.rsplit(".", 1)[-1], m.dim, m.unit, m.blocks if m.dim != "group_heads" else ())
                            for m in g.members] == [("q_proj", "out", 8, ((0, 8), (16, 8))),
                                                    ("o_proj", "in", 8, ((0, 8), (16, 8))),
                                                    ("self_attn", "group_heads", 1, ())]
    ref = zeroed_reference(model, plan)
    n0 = params(model)
    apply_plan(model, plan)
    bias = 2 * 8 if name == "qwen2" else 0  # Qwen2's q_proj has a bias
    assert params(model) == n0 - 2 * (2 * 8 * 32 + bias + 32 * 2 * 8)  # 2 query heads a layer, no key/value head
    attn = model.model.layers[0].self_attn
    assert (attn.q_proj.out_features, attn.k_proj.out_features, attn.num_key_value_groups) == (16, 16, 1)
    with torch.no_grad():
        assert (model(input_ids=IDS).logits - ref(input_ids=IDS).logits).abs().max() < 1e-5
    prompt = IDS[:1, :4]
    assert torch.equal(model.generate(prompt, max_new_tokens=6, do_sample=False),
                       ref.generate(prompt, max_new_tokens=6, do_sample=False))
    other = GQA[name]()
    prune_(other, cfg, calibration=[{"input_ids": IDS}])
    c = other.config
    assert (c.num_attention_heads, c.num_key_value_heads, c.head_dim) == (2, 2, 8)
    other.save_pretrained(tmp_path / "hf")
    back = type(other).from_pretrained(tmp_path / "hf").eval()
    loaded = condense.load(condense.save(other, tmp_path / "c"), model=GQA[name]())
    with torch.no_grad():
        want = other(input_ids=IDS).logits
        assert torch.equal(back(input_ids=IDS).logits, want) and torch.equal(loaded(input_ids=IDS).logits, want)


def test_gpt2_ffn_width_none_n_inner_becomes_explicit_and_round_trips(tmp_path):
    model = gpt2()
    register_optional()
    keep = torch.arange(0, 128, 2)  # half of each block's 4 * 32 FFN units, cut by the Conv1D cutter
    before, after = {}, {}
    for i, block in enumerate(model.transformer.h):
        for name, dim in (("c_fc", "out"), ("c_proj", "in")):
            full = f"transformer.h.{i}.mlp.{name}"
            layer = getattr(block.mlp, name)
            before[full] = shape_of(layer)
            cutter_for(layer, dim)(layer, dim, keep)
            after[full] = shape_of(layer)
    assert model.config.n_inner is None
    update, why = sync_after_cut_(model, [], {}, before, after)
    assert (update, why, model.config.n_inner) == ({"n_inner": 64}, None, 64)
    model.save_pretrained(tmp_path)
    back = type(model).from_pretrained(tmp_path).eval()
    with torch.no_grad():
        assert torch.equal(back(input_ids=IDS).logits, model(input_ids=IDS).logits)
