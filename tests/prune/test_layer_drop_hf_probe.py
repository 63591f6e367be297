"""The search's layer-drop probe on a Hugging Face causal LM (`hf:` task, tiny config, offline)."""
import math

import pytest

transformers = pytest.importorskip("transformers")


def _llama():  # grouped-query attention: 4 heads, 2 KV heads
    return transformers.LlamaForCausalLM(transformers.LlamaConfig(
        hidden_size=32, intermediate_size=88, num_hidden_layers=3, num_attention_heads=4, num_key_value_heads=2,
        vocab_size=256, max_position_embeddings=64))


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
