"""Greedy speculative decoding returns the target's own greedy tokens, token for token, whatever the draft."""
import pytest
import torch
from torch import nn

from condense.errors import ConfigError
from condense.speculative import speculative_generate
from condense.tasks.gpt import GPT, GPTConfig, generate

pytestmark = pytest.mark.usefixtures("one_thread")


def _gpt(n_layer, seed, block=48):
    torch.manual_seed(seed)
    return GPT(GPTConfig(block_size=block, n_layer=n_layer, n_head=2, n_embd=16)).eval()


@pytest.mark.parametrize("k", [1, 3, 5])
@pytest.mark.parametrize("batch", [1, 3])
def test_gpt_output_equals_the_targets_greedy_output(k, batch):
    target, draft = _gpt(3, 0), _gpt(1, 1)  # an unrelated draft: most of its tokens are rejected
    x = torch.randint(0, 256, (batch, 5), generator=torch.Generator().manual_seed(2))
    out, stats = speculative_generate(target, draft, x, 20, k=k)
    assert torch.equal(out, generate(target, x, 20))
    assert 0 <= stats.accepted <= stats.drafted and stats.new_tokens == 20 * batch


def test_a_draft_that_agrees_is_always_accepted_and_needs_fewer_target_passes():
    target = _gpt(2, 0)
    x = torch.tensor([[1, 2, 3]])
    out, stats = speculative_generate(target, target, x, 8, k=3)
    assert torch.equal(out, generate(target, x, 8))
    # prefill gives 1 token, then rounds of k+1 = 4: 1 + 4 + 4 >= 8 -> 3 target passes instead of 8
    assert (stats.target_calls, stats.drafted, stats.accepted, stats.acceptance_rate) == (3, 6, 6, 1.0)


def test_the_heuristic_schedule_grows_k_after_full_acceptance_up_to_max_k():
    target = _gpt(2, 0)
    x = torch.tensor([[1, 2, 3]])
    want = generate(target, x, 20)
    out, s = speculative_generate(target, target, x, 20, k=1, schedule="heuristic", max_k=8)
    # prefill 1 token, then rounds drafting k = 1, 3, 5 (+1 bonus each): 13 tokens, then the 7 left (no bonus)
    assert torch.equal(out, want)
    assert (s.rounds, s.drafted, s.accepted, s.target_calls) == (4, 16, 16, 5)
    out, s = speculative_generate(target, target, x, 20, k=1, schedule="heuristic")  # max_k = 2 * k + 2 = 4
    # k = 1, 3, 4, 4 -> 1 + 2 + 4 + 5 + 5 = 17, then the 3 left
    assert torch.equal(out, want)
    assert (s.rounds, s.drafted, s.target_calls) == (5, 15, 6)


def test_the_heuristic_schedule_shrinks_k_to_one_after_rejections():
    target, draft = _gpt(2, 0), _gpt(1, 1)
    nn.init.zeros_(draft.lm_head.weight)  # the draft always proposes token 0, which this target never picks
    x = torch.tensor([[1, 2, 3]])
    out, s = speculative_generate(target, draft, x, 20, k=4, schedule="heuristic")
    assert torch.equal(out, generate(target, x, 20))
    # every round is rejected and yields the target's token: 19 rounds drafting 4, 3, 2, then 1 token each
    assert (s.accepted, s.rounds, s.drafted) == (0, 19, 4 + 3 + 2 + 16)


def test_min_confidence_stops_drafting_after_an_unsure_token():
    target = _gpt(2, 0)
    x = torch.randint(0, 256, (2, 4), generator=torch.Generator().manual_seed(3))
    out, s = speculative_generate(target, target, x, 16, k=4, min_confidence=0.5)
    # an untrained model is never 50% sure of a byte: each round drafts one token (then one draft pass)
    assert torch.equal(out, generate(target, x, 16))
    assert s.drafted == s.rounds == s.draft_calls == s.accepted
    out, s = speculative_generate(target, target, x, 16, k=4, min_confidence=0.001)  # always sure enough
    # prefill 1 token, then 3 rounds of 4 drafted + 1 = 16
    assert torch.equal(out, generate(target, x, 16)) and (s.rounds, s.drafted) == (3, 12)


def test_a_layer_dropped_draft_of_the_same_model():
    import condense
    from condense.prune import LayerDropConfig

    target = _gpt(4, 3)
    draft = condense.prune_(_gpt(4, 3), LayerDropConfig(n_drop=2), calibration=[torch.randint(0, 256, (2, 16))])
    assert len(draft.blocks) == 2
    x = torch.randint(0, 256, (1, 4), generator=torch.Generator().manual_seed(0))
    out, stats = speculative_generate(target, draft, x, 24, k=4)
    assert torch.equal(out, generate(target, x, 24))


def test_hugging_face_causal_lm_matches_its_own_greedy_generate():
    transformers = pytest.importorskip("transformers")
    cfg = dict(hidden_size=32, intermediate_size=64, num_attention_heads=4, num_key_value_heads=2, vocab_size=256,
               max_position_embeddings=128)
    torch.manual_seed(0)
    target = transformers.LlamaForCausalLM(transformers.LlamaConfig(num_hidden_layers=3, **cfg)).eval()
    draft = transformers.LlamaForCausalLM(transformers.LlamaConfig(num_hidden_layers=1, **cfg)).eval()
    x = torch.randint(0, 256, (2, 6), generator=torch.Generator().manual_seed(1))
    out, stats = speculative_generate(target, draft, x, 16, k=4)
    want = target.generate(x, attention_mask=torch.ones_like(x), max_new_tokens=16, do_sample=False,
                           pad_token_id=0)
    assert torch.equal(out, want)
    assert stats.target_calls < 16 or stats.accepted == 0


def test_bad_requests_name_the_fix():
    target = _gpt(1, 0, block=16)
    x = torch.tensor([[1, 2]])
    with pytest.raises(ConfigError, match="k >= 1"):
        speculative_generate(target, target, x, 4, k=0)
    with pytest.raises(ConfigError, match="exceed the 16 positions"):
        speculative_generate(target, target, x, 14, k=4)
    with pytest.raises(ConfigError, match="register a DecoderAdapter"):
        speculative_generate(target, nn.Linear(2, 2), x, 4)
    with pytest.raises(ConfigError, match="choose one of \\['constant', 'heuristic'\\]"):
        speculative_generate(target, target, x, 4, schedule="adaptive")
    with pytest.raises(ConfigError, match="raise max_k or lower k"):
        speculative_generate(target, target, x, 4, k=3, max_k=2)
    with pytest.raises(ConfigError, match="min_confidence is a probability"):
        speculative_generate(target, target, x, 4, min_confidence=1.0)


@pytest.mark.parametrize("kernel", ["dequantize", "torch-int4"])
def test_weight_only_quantized_draft_and_target(kernel):
    """A 4-bit draft only changes which tokens are proposed; a 4-bit target verifying k+1 rows at once must give its
    own one-row-at-a-time greedy output, whatever kernel runs it."""
    import copy

    import condense
    from condense.quantize.weight_only import WeightOnlyConfig
    from condense.quantize.weight_only.kernels import why_not

    if why_not(4, kernel, 32, 32, 32):
        pytest.skip(f"{kernel}: {why_not(4, kernel, 32, 32, 32)}")
    torch.manual_seed(0)
    target = GPT(GPTConfig(block_size=48, n_layer=2, n_head=2, n_embd=32)).eval()
    draft = condense.quantize_(copy.deepcopy(target), WeightOnlyConfig(bits=4, kernel=kernel))
    qtarget = condense.quantize_(copy.deepcopy(target), WeightOnlyConfig(bits=4, kernel=kernel))
    assert {m.kernel for m in qtarget.modules() if hasattr(m, "kernel")} == {kernel}
    x = torch.randint(0, 256, (2, 5), generator=torch.Generator().manual_seed(4))
    out, s = speculative_generate(target, draft, x, 24, k=4)
    assert torch.equal(out, generate(target, x, 24)) and s.accepted > 0
    out, s = speculative_generate(qtarget, draft, x, 24, k=4)
    assert torch.equal(out, generate(qtarget, x, 24)) and s.acceptance_rate == 1.0  # the same 4-bit model
