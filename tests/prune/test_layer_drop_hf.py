"""Layer drop on Hugging Face causal LMs (tiny configs, offline): blocks found by structure, config and KV-cache
indices renumbered, generate() works, and the artifact replays the same drop."""
import math

import pytest
import torch

import condense
from condense.prune import LayerDropConfig, prune_
from condense.prune.layers import find_block_list

transformers = pytest.importorskip("transformers")


def _gpt2():
    return transformers.GPT2LMHeadModel(transformers.GPT2Config(n_embd=32, n_layer=3, n_head=4, vocab_size=256,
                                                                n_positions=64))


def _llama():  # grouped-query attention: 4 heads, 2 KV heads
    return transformers.LlamaForCausalLM(transformers.LlamaConfig(
        hidden_size=32, intermediate_size=88, num_hidden_layers=3, num_attention_heads=4, num_key_value_heads=2,
        vocab_size=256, max_position_embeddings=64))


def _qwen2():
    return transformers.Qwen2ForCausalLM(transformers.Qwen2Config(
        hidden_size=32, intermediate_size=88, num_hidden_layers=3, num_attention_heads=4, num_key_value_heads=2,
        vocab_size=256, max_position_embeddings=64))


BUILDERS = {"gpt2": _gpt2, "llama": _llama, "qwen2": _qwen2}


def _layer_idx(blocks):
    return [m.layer_idx for b in blocks for m in b.modules() if isinstance(m.__dict__.get("layer_idx"), int)]


@pytest.mark.parametrize("arch", sorted(BUILDERS))
def test_drop_middle_block_keeps_config_and_cache_consistent(arch, tmp_path):
    torch.manual_seed(0)
    model = BUILDERS[arch]().eval()
    fresh = BUILDERS[arch]().eval()
    name, blocks = find_block_list(model)
    kept_before = [blocks[0], blocks[2]]
    ref = {k: v.clone() for k, v in model.state_dict().items()}
    calib = [{"input_ids": torch.randint(0, 256, (2, 8))}]  # dict batches, as Hugging Face models take
    prune_(model, LayerDropConfig(keep=(0, 2)), calibration=calib)
    _, blocks = find_block_list(model, name)
    assert len(blocks) == 2 and list(blocks) == kept_before
    assert model.config.num_hidden_layers == 2
    assert sorted(set(_layer_idx(blocks))) == [0, 1]
    prefix = name + "."
    for k, v in model.state_dict().items():  # kept block 1 is the original block 2, same weights
        src = k
        if k.startswith(prefix + "1."):
            src = prefix + "2." + k[len(prefix + "1."):]
        assert torch.equal(v, ref[src]), k
    ids = torch.randint(0, 256, (2, 6))
    with torch.no_grad():
        out = model(input_ids=ids).logits
        gen = model.generate(ids, max_new_tokens=4, do_sample=False, pad_token_id=0)
    assert out.shape == (2, 6, 256) and gen.shape == (2, 10)
    d = condense.save(model, tmp_path / "a")
    loaded = condense.load(d, model=fresh).eval()
    assert loaded.config.num_hidden_layers == 2
    assert sorted(set(_layer_idx(find_block_list(loaded, name)[1]))) == [0, 1]
    with torch.no_grad():
        torch.testing.assert_close(loaded(input_ids=ids).logits, out, rtol=0, atol=0)
        assert torch.equal(loaded.generate(ids, max_new_tokens=4, do_sample=False, pad_token_id=0), gen)


def test_block_list_found_by_structure_not_name():
    from torch import nn

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.stem = nn.Linear(4, 8)
            self.stack = nn.ModuleList([nn.Linear(8, 8) for _ in range(3)])
            self.heads = nn.ModuleList([nn.Linear(8, 2), nn.Linear(8, 3)])  # mixed shapes, smaller: not chosen

        def forward(self, x):
            h = self.stem(x)
            for b in self.stack:
                h = torch.relu(b(h))
            return self.heads[0](h)

    assert find_block_list(Net())[0] == "stack"


def test_search_probe_finds_layer_drop_applies_to_hf_llama(tmp_path):
    """The search's probe applies layer drop (n_drop=1) to the hf: task's model and measures it: no error."""
    from condense.searching.sensitivity import prune_probe
    from condense.tasks import hf_task

    _llama().save_pretrained(tmp_path / "llama")
    task = hf_task(str(tmp_path / "llama"), eval_windows=2, eval_texts=8, seq_len=16)
    model = task.build_model()
    base = float(task.metrics(model)[task.primary_metric])
    out = prune_probe(model, task, base, threshold=1.0, per_group=False, max_groups=1)
    assert out["layer_drop_1"]["error"] is None, out["layer_drop_1"]
    assert out["layer_drop_1"]["metric"] is not None and math.isfinite(out["layer_drop_1"]["metric"])
