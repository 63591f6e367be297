"""Hugging Face layers condense did not write: GPT-2's Conv1D (a transposed Linear), tied lm_head / token
embedding, and Llama widths a group size does not divide, through dynamic int8, weight-only, pruning and
factorization. Tiny models built from configs offline; every check compares with the float model or counts."""
from __future__ import annotations

import copy

import pytest
import torch
from torch import nn
from torch.ao.nn.quantized import dynamic as nnqd

import condense
from condense.core.lineage import lineage
from condense.core.linear_like import linear_like_types, linear_weight, linearize_, restore_, tied_weights
from condense.errors import ConfigError
from condense.factorize.api import FactorizeConfig, factorize_
from condense.prune import prune_
from condense.prune.nm import NMConfig
from condense.prune.unstructured import UnstructuredConfig
from condense.quantize import quantize_
from condense.quantize.dynamic import DynamicInt8Config
from condense.quantize.weight_only import WeightOnlyConfig, WeightOnlyLinear, WeightOnlyMethod

transformers = pytest.importorskip("transformers")
from transformers.pytorch_utils import Conv1D  # noqa: E402

N_LAYER = 2
CONV1D_PER_BLOCK = 4  # attn.c_attn, attn.c_proj, mlp.c_fc, mlp.c_proj


def _gpt2() -> nn.Module:
    torch.manual_seed(0)
    cfg = transformers.GPT2Config(n_embd=32, n_layer=N_LAYER, n_head=4, vocab_size=256, n_positions=64,
                                  bos_token_id=0, eos_token_id=0)
    return transformers.GPT2LMHeadModel(cfg).eval()


def _llama() -> nn.Module:
    torch.manual_seed(0)
    cfg = transformers.LlamaConfig(hidden_size=32, intermediate_size=88, num_hidden_layers=2, num_attention_heads=4,
                                   num_key_value_heads=2, vocab_size=256, bos_token_id=0, eos_token_id=0)
    return transformers.LlamaForCausalLM(cfg).eval()


def _logits(model: nn.Module, ids: torch.Tensor) -> torch.Tensor:
    with torch.inference_mode():
        return model(input_ids=ids).logits


IDS = torch.randint(0, 256, (2, 16), generator=torch.Generator().manual_seed(1))
CONV1D_NAMES = [f"transformer.h.{i}.{s}" for i in range(N_LAYER)
                for s in ("attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj")]


# -- the registry itself ----------------------------------------------------------------------------------------
def test_conv1d_is_linear_like_and_converts_both_ways_exactly():
    conv = Conv1D(6, 4)  # nf=6 out, nx=4 in: weight (4, 6)
    assert Conv1D in linear_like_types()
    assert torch.equal(linear_weight(conv), conv.weight.T)
    holder = nn.Sequential(conv)
    x = torch.randn(3, 4)
    want = conv(x)
    assert linearize_(holder, ["0"]) == {"0": Conv1D}
    assert isinstance(holder[0], nn.Linear) and holder[0].weight.shape == (6, 4)
    torch.testing.assert_close(holder[0](x), want, rtol=1e-6, atol=1e-6)
    restore_(holder, {"0": Conv1D})
    assert isinstance(holder[0], Conv1D) and torch.equal(holder[0].weight, conv.weight)


def test_tied_weights_are_found_by_parameter_identity():
    m = _gpt2()
    assert tied_weights(m, ["lm_head", *CONV1D_NAMES]) == {"lm_head": ["transformer.wte.weight"]}


# -- dynamic int8 ------------------------------------------------------------------------------------------------
def test_dynamic_int8_converts_every_conv1d_and_reloads_to_the_same_outputs(tmp_path):
    base = _gpt2()
    with pytest.warns(UserWarning, match=r"lm_head with transformer.wte.weight.*tie is broken"):
        q = quantize_(copy.deepcopy(base), DynamicInt8Config())
    assert sum(isinstance(m, Conv1D) for m in q.modules()) == 0
    assert sum(isinstance(m, nnqd.Linear) for m in q.modules()) == N_LAYER * CONV1D_PER_BLOCK + 1  # + lm_head
    details = lineage(q)["transforms"][-1]["details"]
    assert details["linearized"] == sorted(CONV1D_NAMES)
    assert details["tied"] == {"lm_head": ["transformer.wte.weight"]}
    ref, out = _logits(base, IDS), _logits(q, IDS)
    # int8 per-channel weights + per-batch int8 activations: logits (std ~0.6 here) move by well under 0.05
    assert (out - ref).abs().max() < 0.05
    back = condense.load(condense.save(q, tmp_path / "q"), model=_gpt2())
    torch.testing.assert_close(_logits(back, IDS), out, rtol=0, atol=0)


# -- weight-only ------------------------------------------------------------------------------------------------
def test_weight_only_on_gpt2_quantizes_conv1d_layers():
    base = _gpt2()
    q = quantize_(copy.deepcopy(base), WeightOnlyConfig(bits=8, group_size=32))
    assert sum(isinstance(m, WeightOnlyLinear) for m in q.modules()) == N_LAYER * CONV1D_PER_BLOCK
    assert (_logits(q, IDS) - _logits(base, IDS)).abs().max() < 0.05  # 8-bit weights, group 32
    # kernel="auto" tries the whole ONNX Runtime graph only on models with a KV-step adapter: GPT2LMHeadModel has
    # none, so it stays itself on per-layer kernels and no graph is timed
    assert type(q) is type(base) and "graph_candidate" not in lineage(q)["transforms"][-1]["details"]


def test_weight_only_group_size_not_dividing_llama_mlp_picks_the_nearest_divisor_and_reloads(tmp_path):
    base = _llama()
    with pytest.warns(UserWarning, match=r"group_size=32 does not divide the in_features of 2 layer"):
        q = quantize_(copy.deepcopy(base), WeightOnlyConfig(bits=4, group_size=32))
    down = [f"model.layers.{i}.mlp.down_proj" for i in range(2)]  # in_features = intermediate_size = 88
    details = lineage(q)["transforms"][-1]["details"]
    assert details["group_sizes"] == {n: 22 for n in down}  # divisors of 88 nearest 32: 22 (44 is farther)
    assert [q.get_submodule(n).group_size for n in down] == [22, 22]
    assert q.model.layers[0].mlp.up_proj.group_size == 32
    ref, out = _logits(base, IDS), _logits(q, IDS)
    assert (out - ref).abs().max() < 0.1  # 4-bit RTN of a random init: small, bounded logit change
    back = condense.load(condense.save(q, tmp_path / "w"), model=_llama())
    torch.testing.assert_close(_logits(back, IDS), out, rtol=0, atol=0)


def test_gptq_act_order_uses_the_per_layer_group_sizes_and_reloads(tmp_path):
    base = _llama()
    cal = [{"input_ids": torch.randint(0, 256, (2, 16), generator=torch.Generator().manual_seed(i))}
           for i in range(4)]
    with pytest.warns(UserWarning, match="nearest divisor"):
        q = quantize_(copy.deepcopy(base), WeightOnlyConfig(method=WeightOnlyMethod.GPTQ, bits=4, group_size=32,
                                                            act_order=True), calibration=cal)
    assert q.model.layers[1].mlp.down_proj.group_size == 22
    out = _logits(q, IDS)
    assert (out - _logits(base, IDS)).abs().max() < 0.1
    back = condense.load(condense.save(q, tmp_path / "g"), model=_llama())
    torch.testing.assert_close(_logits(back, IDS), out, rtol=0, atol=0)


# -- pruning ----------------------------------------------------------------------------------------------------
def test_unstructured_prunes_conv1d_to_exact_sparsity_and_leaves_the_tied_embedding_whole():
    base = _gpt2()
    with pytest.warns(UserWarning, match=r"left out 1 tied layer.*lm_head with transformer.wte.weight"):
        p = prune_(copy.deepcopy(base), UnstructuredConfig(sparsity=0.5))
    assert int((p.transformer.wte.weight == 0).sum()) == 0
    assert p.lm_head.weight is p.transformer.wte.weight  # still tied
    for n in CONV1D_NAMES:
        layer = p.get_submodule(n)
        assert isinstance(layer, Conv1D)  # given back in its own layout
        assert int((layer.weight == 0).sum()) == layer.weight.numel() // 2
    details = lineage(p)["transforms"][-1]["details"]
    assert details["tied_skipped"] == {"lm_head": ["transformer.wte.weight"]}
    assert details["layers"] == CONV1D_NAMES


def test_row_scope_on_conv1d_prunes_each_output_row():
    p = prune_(_gpt2(), UnstructuredConfig(sparsity=0.5, scope="row", exclude=("lm_head",)))
    w = p.transformer.h[0].mlp.c_fc.weight  # (in=32, out=128): an output row is a column here
    assert (w == 0).sum(dim=0).tolist() == [16] * 128


def test_masked_pruning_of_conv1d_reloads_to_the_same_outputs(tmp_path):
    p = prune_(_gpt2(), NMConfig(n=2, m=4, permanent=False, exclude=("lm_head",)))
    out = _logits(p, IDS)
    back = condense.load(condense.save(p, tmp_path / "p"), model=_gpt2())
    torch.testing.assert_close(_logits(back, IDS), out, rtol=0, atol=0)


def test_pruning_only_a_tied_layer_is_refused_with_the_fix():
    with pytest.raises(ConfigError, match="Untie it first"):
        prune_(_gpt2(), UnstructuredConfig(include=("lm_head",)))


# -- factorization ----------------------------------------------------------------------------------------------
def test_factorize_gpt2_shrinks_it_and_leaves_the_tie(tmp_path):
    base = _gpt2()
    before = sum(t.numel() for t in base.parameters())
    with pytest.warns(UserWarning, match=r"left out 1 tied layer"):
        f = factorize_(copy.deepcopy(base), FactorizeConfig(rank_ratio=0.5))
    assert f.lm_head.weight is f.transformer.wte.weight
    assert sorted(lineage(f)["transforms"][-1]["details"]["ranks"]) == sorted(CONV1D_NAMES)
    assert sum(t.numel() for t in f.parameters()) < before
    out = _logits(f, IDS)
    back = condense.load(condense.save(f, tmp_path / "f"), model=_gpt2())
    torch.testing.assert_close(_logits(back, IDS), out, rtol=0, atol=0)


def test_factorize_at_full_rank_matches_conv1d_outputs():
    base = _gpt2()
    f = factorize_(copy.deepcopy(base), FactorizeConfig(rank=32, include=("*.attn.c_proj",)))
    torch.testing.assert_close(_logits(f, IDS), _logits(base, IDS), rtol=1e-4, atol=1e-4)
