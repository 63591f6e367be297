"""Recovery after structured pruning of a Hugging Face encoder (no labels, no condense tokenizer): embedding
distillation from the dense model through the task's `embed`, embedding tables frozen."""
import copy

import pytest
import torch
import torch.nn.functional as F

transformers = pytest.importorskip("transformers")

from condense.core.task import Task  # noqa: E402
from condense.core.transforms import TransformContext  # noqa: E402
from condense.distillation.outputs import mean_pooled  # noqa: E402
from condense.errors import ConfigError  # noqa: E402
from condense.prune import StructuredConfig, prune_  # noqa: E402
from condense.prune.recover import check_recovery, recover_  # noqa: E402
from condense.train.loop import FitConfig  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")
V = 64


def bert(**kw):
    torch.manual_seed(0)
    cfg = transformers.BertConfig(vocab_size=V, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                  intermediate_size=64, max_position_embeddings=64, initializer_range=0.3, **kw)
    return transformers.BertModel(cfg).eval()  # a large init: blocks that matter


def batches(n, seed):
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        ids = torch.randint(0, V, (8, 16), generator=g)
        mask = torch.ones_like(ids)
        mask[:, 12:] = 0  # padding the pooling skips
        out.append({"input_ids": ids, "attention_mask": mask})
    return out


def embed(model, inputs):
    return mean_pooled(model(**inputs).last_hidden_state, inputs)


def cosine(a, b, data):
    with torch.no_grad():
        return float(torch.cat([F.cosine_similarity(embed(a, x), embed(b, x), dim=-1) for x in data]).mean())


def encoder_task(model, train, **kw):
    return Task("bert", model, evaluate=lambda m: {"x": 0.0}, primary_metric="x", inputs=train[0],
                calibration_data=lambda: train, train_data=lambda: train, **kw)


def test_pruned_hf_encoder_recovers_by_embedding_distillation():
    dense, train, held_out = bert(), batches(8, 1), batches(2, 99)
    cut = StructuredConfig(ratio=0.5)
    task = encoder_task(dense, train, embed=embed)
    assert check_recovery(dense, TransformContext(task=task)) == "distill"
    plain = prune_(copy.deepcopy(dense), cut, task=task)
    recovered = prune_(copy.deepcopy(dense), StructuredConfig(
        ratio=0.5, finetune=FitConfig(steps=40, lr=3e-3)), task=task)
    for model in (plain, recovered):  # half the FFN width (64 -> 32) and half the heads (4 of head_dim 8 -> 2)
        assert [(b.intermediate.dense.out_features, b.attention.self.query.out_features)
                for b in model.encoder.layer] == [(32, 16), (32, 16)]
    before, after = cosine(dense, plain, held_out), cosine(dense, recovered, held_out)
    assert before < 0.95, before  # the cut changed the embeddings
    assert after > before + 0.5 * (1 - before), (before, after)  # at least half of the gap closed
    # the embedding tables were frozen, the blocks trained
    torch.testing.assert_close(recovered.embeddings.word_embeddings.weight, dense.embeddings.word_embeddings.weight)
    assert not torch.equal(recovered.encoder.layer[0].output.dense.weight, plain.encoder.layer[0].output.dense.weight)


def test_recovery_leaves_the_teacher_trainable_for_the_next_student():
    dense, train = bert(), batches(2, 1)
    task = encoder_task(dense, train, embed=embed)
    ctx = TransformContext(task=task)
    for _ in range(2):  # two students copied from the same dense model, as a bench of variants does
        student = copy.deepcopy(dense)
        recover_(student, dense, ctx, FitConfig(steps=2, lr=1e-3))
        assert not torch.equal(student.encoder.layer[0].output.dense.weight, dense.encoder.layer[0].output.dense.weight)
    assert all(p.requires_grad for p in dense.parameters())


def test_encoder_without_embed_or_loss_cannot_recover():
    dense, train = bert(), batches(2, 1)
    with pytest.raises(ConfigError, match="embed"):
        prune_(dense, StructuredConfig(ratio=0.5, target="ffn", finetune=FitConfig(steps=2)),
               task=encoder_task(dense, train))


def test_block_match_loss_against_a_reference():
    """Layer-wise term: per block, MSE over the real tokens / the teacher's mean square there; mean over blocks."""
    from condense.distillation.losses import block_match_loss, block_outputs

    dense = bert()
    assert list(block_outputs(dense)) == ["encoder.layer.0", "encoder.layer.1"]
    g = torch.Generator().manual_seed(0)
    t = {n: torch.randn(2, 5, 4, generator=g) for n in ("a", "b")}
    s = {n: torch.randn(2, 5, 4, generator=g) for n in ("a", "b")}
    s["c"] = torch.randn(2, 5, 4, generator=g)  # no teacher block of that name: not counted
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]])
    keep = mask.bool()
    want = sum(((s[n][keep] - t[n][keep]) ** 2).mean() / (t[n][keep] ** 2).mean() for n in "ab") / 2
    torch.testing.assert_close(block_match_loss(s, t, mask), want)
    assert float(block_match_loss({}, t)) == 0.0


def test_recovery_adds_the_layer_wise_term_by_default():
    """recover_ of an encoder = 1 - cosine + relation + BLOCK_WEIGHT x block_match_loss (checked on the first
    step's loss against a reference); layer drop, whose blocks no longer pair up by index, leaves the term out."""
    from condense.distillation.losses import block_match_loss, embedding_match_loss
    from condense.prune.recover import BLOCK_WEIGHT

    dense, train = bert(hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0), batches(2, 1)  # train = eval
    task = encoder_task(dense, train, embed=embed)
    cut = prune_(copy.deepcopy(dense), StructuredConfig(ratio=0.5), task=task)
    outs = {}

    def grab(name):
        return lambda m, a, o: outs.__setitem__(name, o if isinstance(o, torch.Tensor) else o[0])

    with torch.no_grad():
        base = float(embedding_match_loss(dense, embed)(cut, train[0]))
    hooks = [m.register_forward_hook(grab(f"{w}{i}")) for w, model in (("t", dense), ("s", cut))
             for i, m in enumerate(model.encoder.layer)]
    with torch.no_grad():
        embed(dense, train[0]), embed(cut, train[0])
    for h in hooks:
        h.remove()
    term = float(block_match_loss({i: outs[f"s{i}"] for i in range(2)}, {i: outs[f"t{i}"] for i in range(2)},
                                  train[0]["attention_mask"]))
    assert term > 0.01
    losses = recover_(copy.deepcopy(cut), dense, TransformContext(task=task), FitConfig(steps=1, lr=1e-9))
    assert BLOCK_WEIGHT == 1.0
    assert losses[0] == pytest.approx(base + BLOCK_WEIGHT * term, rel=1e-4)
    plain = recover_(copy.deepcopy(cut), dense, TransformContext(task=task), FitConfig(steps=1, lr=1e-9),
                     block_weight=0.0)
    assert plain[0] == pytest.approx(base, rel=1e-4)


def test_layer_drop_recovery_has_no_layer_wise_term(monkeypatch):
    import condense.prune.recover as rec
    from condense.prune import LayerDropConfig

    seen = []
    monkeypatch.setattr(rec, "distill_embed_fn_", lambda *a, block_weight, **k: seen.append(block_weight) or [0.0])
    dense, train = bert(), batches(2, 1)
    prune_(dense, LayerDropConfig(n_drop=1, finetune=FitConfig(steps=1)), task=encoder_task(dense, train, embed=embed))
    assert seen == [0.0]
