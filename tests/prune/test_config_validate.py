"""A pruned Hugging Face model's config is updated only to values its own validation accepts (what save_pretrained
checks): transformers' LlamaConfig wants hidden_size to be a multiple of num_attention_heads even when head_dim is
explicit, so 8 -> 6 heads at width 32 is warned about (config left alone), at width 48 written and round-tripped."""
import warnings

import pytest
import torch

from condense.prune import StructuredConfig, prune_

transformers = pytest.importorskip("transformers")
pytestmark = pytest.mark.usefixtures("one_thread")

IDS = torch.randint(0, 100, (2, 7), generator=torch.Generator().manual_seed(0))
QUARTER_OF_HEADS = StructuredConfig(ratio=0.25, target="heads", gqa="groups")  # 4 kv groups of 2 -> 3 groups


def llama(hidden):
    torch.manual_seed(0)
    return transformers.LlamaForCausalLM(transformers.LlamaConfig(
        hidden_size=hidden, intermediate_size=64, num_hidden_layers=2, num_attention_heads=8, num_key_value_heads=4,
        vocab_size=128, bos_token_id=0, eos_token_id=0)).eval()


def test_heads_not_dividing_hidden_size_are_warned_and_config_left_alone():
    model = llama(32)
    with pytest.warns(UserWarning, match="cannot describe the pruned model"):
        prune_(model, QUARTER_OF_HEADS, calibration=[{"input_ids": IDS}])
    assert model.model.layers[0].self_attn.q_proj.out_features == 6 * 4  # the cut happened
    assert (model.config.num_attention_heads, model.config.num_key_value_heads) == (8, 4)  # config untouched
    model.config.num_attention_heads = 6  # what the sync wrote before: a config save_pretrained refuses
    with pytest.raises(Exception, match="multiple of the number of attention heads"):
        model.config.validate()


def test_heads_dividing_hidden_size_update_the_config_and_round_trip(tmp_path):
    model = llama(48)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the config can say it: no warning
        prune_(model, QUARTER_OF_HEADS, calibration=[{"input_ids": IDS}])
    c = model.config
    assert (c.num_attention_heads, c.num_key_value_heads, c.head_dim) == (6, 3, 6)
    model.save_pretrained(tmp_path)
    back = type(model).from_pretrained(tmp_path).eval()
    with torch.no_grad():
        assert torch.equal(back(input_ids=IDS).logits, model(input_ids=IDS).logits)
