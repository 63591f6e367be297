"""The GPT model: parameter count, causality, KV cache agreement, pruned layers, generation."""
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from condense.errors import CondenseError
from condense.tasks.gpt import GPT, GPTConfig, KVCache, generate, num_params

CFG = GPTConfig(block_size=32, n_layer=2, n_head=4, n_embd=16, mlp_ratio=3)


def make_model(cfg: GPTConfig = CFG, seed: int = 0) -> GPT:
    """A model with large random weights, so logits are well separated and greedy ties cannot happen."""
    torch.manual_seed(seed)
    model = GPT(cfg).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0.0, 0.5)
    return model


def tokens(b: int, t: int, seed: int = 1) -> torch.Tensor:
    return torch.randint(0, CFG.vocab_size, (b, t), generator=torch.Generator().manual_seed(seed))


def test_parameter_count_matches_formula():
    C, V, L, P, h = CFG.n_embd, CFG.vocab_size, CFG.n_layer, CFG.block_size, CFG.mlp_ratio * CFG.n_embd
    per_block = 2 * (2 * C)            # ln_1, ln_2 (weight + bias)
    per_block += 4 * (C * C + C)       # q, k, v, o projections with bias
    per_block += (C * h + h) + (h * C + C)  # fc_in, fc_out
    expected = V * C + P * C + L * per_block + 2 * C + C * V  # wte, wpe, blocks, ln_f, lm_head (no bias)
    assert num_params(GPT(CFG)) == expected


def test_linears_are_separate_and_untied():
    model = GPT(CFG)
    attn = model.blocks[0].attn
    assert all(isinstance(m, nn.Linear) for m in (attn.q_proj, attn.k_proj, attn.v_proj, attn.o_proj,
                                                   model.blocks[0].mlp.fc_in, model.blocks[0].mlp.fc_out,
                                                   model.lm_head))
    assert model.lm_head.weight.data_ptr() != model.wte.weight.data_ptr()
    ptrs = [p.data_ptr() for p in model.parameters()]
    assert len(ptrs) == len(set(ptrs))


def test_loss_is_cross_entropy_of_logits():
    model = make_model()
    x, y = tokens(2, 10), tokens(2, 10, seed=2)
    logits, loss = model(x, y)
    assert torch.allclose(loss, F.cross_entropy(logits.reshape(-1, CFG.vocab_size), y.reshape(-1)))


def test_hidden_states_are_embeddings_plus_each_block():
    model = make_model()
    x = tokens(2, 7)
    logits, hidden = model(x, output_hidden_states=True)
    assert len(hidden) == CFG.n_layer + 1
    assert all(h.shape == (2, 7, CFG.n_embd) for h in hidden)
    assert torch.allclose(model.lm_head(model.ln_f(hidden[-1])), logits)
    assert torch.allclose(hidden[0], model.wte(x) + model.wpe(torch.arange(7)))


def test_changing_a_future_token_leaves_earlier_logits_unchanged():
    model = make_model()
    x = tokens(2, 12)
    t = 6
    x2 = x.clone()
    x2[:, t] = (x2[:, t] + 1) % CFG.vocab_size
    a, b = model(x), model(x2)
    assert torch.allclose(a[:, :t], b[:, :t], atol=1e-6)
    assert not torch.allclose(a[:, t], b[:, t], atol=1e-3)


def test_one_step_cached_decode_matches_full_forward():
    model = make_model()
    x = tokens(3, 11)
    full = model(x)  # (B, T, V)
    cache = KVCache(CFG.n_layer, CFG.block_size)
    model(x[:, :-1], kv_cache=cache)
    assert cache.length == x.shape[1] - 1
    step = model(x[:, -1:], kv_cache=cache)  # (B, 1, V)
    assert step.shape == (3, 1, CFG.vocab_size)
    assert torch.allclose(step[:, -1], full[:, -1], atol=1e-5)


def test_chunk_after_cached_prefix_matches_full_forward():
    model = make_model()
    x = tokens(2, 12)
    full = model(x)
    cache = KVCache(CFG.n_layer, CFG.block_size)
    model(x[:, :5], kv_cache=cache)
    chunk = model(x[:, 5:], kv_cache=cache)  # several new tokens: needs the offset causal mask
    assert torch.allclose(chunk, full[:, 5:], atol=1e-5)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_greedy_generation_same_with_and_without_cache(seed):
    model = make_model(seed=seed)
    prompt = tokens(2, 5, seed=seed)
    new = CFG.block_size - prompt.shape[1]
    with_cache = generate(model, prompt, new, use_cache=True)
    without = generate(model, prompt, new, use_cache=False)
    assert with_cache.shape == (2, CFG.block_size)
    assert torch.equal(with_cache[:, :5], prompt)
    assert torch.equal(with_cache, without)


def test_generation_past_block_size_runs():
    model = make_model()
    for prompt_len in (3, CFG.block_size + 4):  # a prompt longer than the block is cropped
        out = generate(model, tokens(1, prompt_len), CFG.block_size + 5)
        assert out.shape == (1, prompt_len + CFG.block_size + 5)


def test_generate_decodes_in_inference_mode_and_returns_an_ordinary_tensor():
    model, modes = make_model(), []
    model.blocks[0].register_forward_hook(lambda m, i, o: modes.append(torch.is_inference_mode_enabled()))
    prompt = tokens(1, 3)
    out = generate(model, prompt, 4)
    assert modes == [True] * 4 and not out.is_inference()
    out[0, 0] = 7  # writable outside inference mode
    with torch.inference_mode():
        assert torch.equal(generate(model, prompt, 4)[:, 1:], out[:, 1:])


def test_sampling_is_reproducible_and_top_k_1_is_greedy():
    model = make_model()
    prompt = tokens(2, 4)
    a = generate(model, prompt, 8, temperature=1.0, generator=torch.Generator().manual_seed(3))
    b = generate(model, prompt, 8, temperature=1.0, generator=torch.Generator().manual_seed(3))
    assert torch.equal(a, b)
    top1 = generate(model, prompt, 8, temperature=0.7, top_k=1, generator=torch.Generator().manual_seed(4))
    assert torch.equal(top1, generate(model, prompt, 8))


def _shrink_block(model: GPT, layer: int, keep_heads: list[int], keep_hidden: int) -> None:
    """Remove heads (rows of q/k/v, columns of o_proj) and MLP units (rows of fc_in, columns of fc_out)."""
    attn, mlp = model.blocks[layer].attn, model.blocks[layer].mlp
    D = attn.head_dim
    rows = torch.cat([torch.arange(h * D, (h + 1) * D) for h in keep_heads])
    for name in ("q_proj", "k_proj", "v_proj"):
        old = getattr(attn, name)
        new = nn.Linear(old.in_features, len(rows))
        new.weight.data, new.bias.data = old.weight.data[rows].clone(), old.bias.data[rows].clone()
        setattr(attn, name, new)
    o = nn.Linear(len(rows), attn.o_proj.out_features)
    o.weight.data, o.bias.data = attn.o_proj.weight.data[:, rows].clone(), attn.o_proj.bias.data.clone()
    attn.o_proj, attn.n_heads = o, len(keep_heads)
    fi = nn.Linear(mlp.fc_in.in_features, keep_hidden)
    fi.weight.data = mlp.fc_in.weight.data[:keep_hidden].clone()
    fi.bias.data = mlp.fc_in.bias.data[:keep_hidden].clone()
    fo = nn.Linear(keep_hidden, mlp.fc_out.out_features)
    fo.weight.data, fo.bias.data = mlp.fc_out.weight.data[:, :keep_hidden].clone(), mlp.fc_out.bias.data.clone()
    mlp.fc_in, mlp.fc_out = fi, fo


def test_layer_with_fewer_heads_and_narrower_mlp_matches_zeroed_reference():
    model = make_model()
    keep_heads, keep_hidden = [0, 2], 20
    D = model.blocks[1].attn.head_dim
    # reference: the same model with the removed heads' and units' outputs zeroed
    ref = make_model()
    with torch.no_grad():
        for h in range(CFG.n_head):
            if h not in keep_heads:
                ref.blocks[1].attn.o_proj.weight[:, h * D:(h + 1) * D] = 0
        ref.blocks[1].mlp.fc_out.weight[:, keep_hidden:] = 0
    _shrink_block(model, 1, keep_heads, keep_hidden)
    assert model.blocks[1].attn.q_proj.out_features == len(keep_heads) * D
    x = tokens(2, 9)
    out = model(x)
    assert out.shape == (2, 9, CFG.vocab_size)
    assert torch.allclose(out, ref(x), atol=1e-4)
    prompt = tokens(1, 4)
    assert torch.equal(generate(model, prompt, 10), generate(model, prompt, 10, use_cache=False))


def test_head_count_mismatch_names_the_fix():
    model = make_model()
    _shrink_block(model, 0, [1], CFG.mlp_ratio * CFG.n_embd)
    model.blocks[0].attn.n_heads = CFG.n_head  # forgot to update
    with pytest.raises(CondenseError, match="n_heads"):
        model(tokens(1, 3))


def test_errors_name_the_fix():
    with pytest.raises(CondenseError, match="divisible"):
        GPTConfig(n_embd=10, n_head=4)
    with pytest.raises(CondenseError, match="block_size"):
        make_model()(tokens(1, CFG.block_size + 1))
    with pytest.raises(CondenseError, match="positive"):
        GPTConfig(n_layer=0)
