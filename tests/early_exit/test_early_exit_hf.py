"""Early exit on Hugging Face models built from tiny configs (offline): the generic splitter finds the blocks by
structure and takes the model's own inputs (keyword / dict batches), returning a ModelOutput."""
import pytest
import torch

import condense
from condense.early_exit import EarlyExitConfig, EarlyExitModel, early_exit_
from condense.train.loop import FitConfig

transformers = pytest.importorskip("transformers")


def _llama():
    return transformers.LlamaForCausalLM(transformers.LlamaConfig(
        hidden_size=32, intermediate_size=88, num_hidden_layers=3, num_attention_heads=4, num_key_value_heads=2,
        vocab_size=256, max_position_embeddings=64)).eval()


def _bert():
    return transformers.BertForSequenceClassification(transformers.BertConfig(
        hidden_size=32, intermediate_size=64, num_hidden_layers=3, num_attention_heads=4, vocab_size=256,
        max_position_embeddings=64, num_labels=3)).eval()


def _attach(model, threshold, batch, target):
    return early_exit_(model, EarlyExitConfig(threshold=threshold, finetune=FitConfig(steps=2, lr=1e-2)),
                       data=[(batch, target)])


def test_llama_threshold_zero_is_first_exit_and_one_is_the_model(tmp_path):
    torch.manual_seed(0)
    model, fresh = _llama(), _llama()
    ids = torch.randint(0, 256, (3, 7))
    with torch.no_grad():
        ref = model(input_ids=ids).logits
    wrapped = _attach(model, 0.0, ids, ids)
    assert isinstance(wrapped, EarlyExitModel) and wrapped.exits == (0, 1)
    with torch.no_grad():
        first = wrapped.all_exits(ids)[0]
        out = wrapped(input_ids=ids)
        assert not torch.equal(first, ref)  # the trained head differs from the model's own
        torch.testing.assert_close(out.logits, first, rtol=0, atol=1e-6)
        assert wrapped.exit_counts[0] == 3
        wrapped.threshold = 1.0
        torch.testing.assert_close(wrapped({"input_ids": ids}).logits, ref, rtol=0, atol=1e-6)
        wrapped.threshold = 0.0
    d = condense.save(wrapped, tmp_path / "ee")
    loaded = condense.load(d, model=fresh).eval()
    loaded.threshold = 0.0
    with torch.no_grad():
        torch.testing.assert_close(loaded(input_ids=ids).logits, out.logits, rtol=0, atol=0)


def test_llama_mixed_exits_match_rowwise():
    """Rows that leave early get their exit's logits, the rest the model's own (batch shrinks with its masks)."""
    torch.manual_seed(1)
    model = _llama()
    ids = torch.randint(0, 256, (4, 5))
    mask = torch.ones_like(ids)
    mask[1, :2] = 0  # left padding on one row: the attention mask must follow the rows that stay
    wrapped = _attach(model, 0.0, ids, ids)
    with torch.no_grad():
        exits = wrapped.all_exits({"input_ids": ids, "attention_mask": mask})
        from condense.early_exit import confidence
        conf = confidence(exits[0])
        wrapped.threshold = float(conf.median())
        out = wrapped(input_ids=ids, attention_mask=mask).logits
        full = model(input_ids=ids, attention_mask=mask).logits
    early = conf > wrapped.threshold
    assert 0 < int(early.sum()) < 4
    torch.testing.assert_close(out[early], exits[0][early], rtol=0, atol=1e-5)
    later = ~early
    ok = [torch.allclose(out[r], exits[1][r], atol=1e-5) or torch.allclose(out[r], full[r], atol=1e-5)
          for r in later.nonzero().flatten().tolist()]
    assert all(ok)


def test_bert_classifier_threshold_one_is_the_model():
    torch.manual_seed(0)
    model = _bert()
    batch = {"input_ids": torch.randint(0, 256, (3, 6)), "attention_mask": torch.ones(3, 6, dtype=torch.long)}
    with torch.no_grad():
        ref = model(**batch).logits
    wrapped = _attach(model, 1.0, batch, torch.tensor([0, 1, 2]))
    with torch.no_grad():
        torch.testing.assert_close(wrapped(**batch).logits, ref, rtol=0, atol=1e-6)
        wrapped.threshold = 0.0
        torch.testing.assert_close(wrapped(**batch).logits, wrapped.all_exits(batch)[0], rtol=0, atol=1e-6)


def test_search_offers_early_exit_where_it_applies(tmp_path):
    """`condense search` checks (by building the exit heads) that early exit applies to an hf: causal LM; a bare
    encoder without an output head is refused with the reason."""
    from condense.errors import ConfigError
    from condense.early_exit.model import with_exits
    from condense.searching.config import SearchConfig
    from condense.searching.knobs import select_knobs
    from condense.tasks import hf_task

    _llama().save_pretrained(tmp_path / "llama")
    task = hf_task(str(tmp_path / "llama"), eval_windows=2, eval_texts=8, seq_len=16)
    knobs, skipped = select_knobs(("early_exit",), model=task.build_model(), task=task, cfg=SearchConfig())
    assert [k.name for k in knobs] == ["early_exit"] and not skipped
    bare = transformers.BertModel(transformers.BertConfig(
        hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4, vocab_size=256,
        max_position_embeddings=64))
    with pytest.raises(ConfigError, match=r"output head.*BertModel returns hidden states, no logits.*LayerDropConfig"):
        with_exits(bare, None, 0.9, "max_prob")
