"""Layer drop on Hugging Face decoders (built offline from tiny configs): the cache's layer slots and the config's
layer count follow the kept blocks, so cached decoding gives exactly what a model built with those blocks gives."""
import pytest
import torch

import condense
from condense.core.transforms import apply_
from condense.prune.block_lists import find_block_list
from condense.prune.layers import LayerDropConfig

transformers = pytest.importorskip("transformers")
pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models: one thread (tests/conftest.py)

KEEP = (0, 2)


def _gpt2(n):
    return transformers.GPT2LMHeadModel(transformers.GPT2Config(n_embd=32, n_layer=n, n_head=4, vocab_size=256,
                                                                n_positions=64, bos_token_id=0, eos_token_id=0))


def _llama(n):
    return transformers.LlamaForCausalLM(transformers.LlamaConfig(
        hidden_size=32, intermediate_size=64, num_hidden_layers=n, num_attention_heads=4, num_key_value_heads=2,
        vocab_size=256, bos_token_id=0, eos_token_id=0))


def _qwen2(n):
    return transformers.Qwen2ForCausalLM(transformers.Qwen2Config(
        hidden_size=32, intermediate_size=64, num_hidden_layers=n, num_attention_heads=4, num_key_value_heads=2,
        vocab_size=256, bos_token_id=0, eos_token_id=0))


@pytest.mark.parametrize("make", [_gpt2, _llama, _qwen2], ids=["gpt2", "llama-gqa", "qwen2"])
def test_dropping_a_middle_block_keeps_cached_decoding_exact(make, tmp_path):
    torch.manual_seed(0)
    model = make(3).eval()
    name, _ = find_block_list(model)
    reference = make(2).eval()  # the same weights, built with two blocks from the start
    state = {k.replace(f"{name}.2.", f"{name}.1."): v for k, v in model.state_dict().items()
             if not k.startswith(f"{name}.1.")}
    reference.load_state_dict(state)
    x = torch.randint(1, 256, (2, 8), generator=torch.Generator().manual_seed(1))
    mask = torch.ones_like(x)

    out = apply_(model, LayerDropConfig(keep=KEEP), calibration=[x])
    blocks = find_block_list(out)[1]
    assert len(blocks) == 2 and out.config.num_hidden_layers == 2
    assert sorted({s.layer_idx for s in blocks[1].modules() if isinstance(getattr(s, "layer_idx", None), int)}) == [1]
    with torch.no_grad():
        assert torch.equal(out(x).logits, reference(x).logits)
        got = out.generate(x, attention_mask=mask, max_new_tokens=5, do_sample=False, pad_token_id=0)
        want = reference.generate(x, attention_mask=mask, max_new_tokens=5, do_sample=False, pad_token_id=0)
    assert torch.equal(got, want)

    torch.manual_seed(0)
    back = condense.load(condense.save(out, tmp_path / "a"), model=make(3).eval())
    assert back.config.num_hidden_layers == 2
    with torch.no_grad():
        assert torch.equal(back(x).logits, out(x).logits)
        assert torch.equal(back.generate(x, attention_mask=mask, max_new_tokens=5, do_sample=False, pad_token_id=0),
                           got)


def test_a_block_list_is_found_by_structure_when_not_by_name():
    net = torch.nn.Module()
    net.stages = torch.nn.ModuleList(torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.ReLU()) for _ in range(3))
    assert find_block_list(net)[0] == "stages"
    net.other = torch.nn.ModuleList(torch.nn.Sequential(torch.nn.Linear(4, 4)) for _ in range(2))
    with pytest.raises(condense.CondenseError, match="found 2 block lists"):
        find_block_list(net)
