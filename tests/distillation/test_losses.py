"""Distillation losses against hand-computed values."""
import math

import pytest
import torch
import torch.nn.functional as F

from condense.distillation import attention_map_loss, hidden_state_loss, logit_kd_loss
from condense.distillation.losses import Projection


pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models: one thread (tests/conftest.py)


def test_logit_kd_equals_hand_computed_value():
    zs = torch.tensor([[1.0, 0.0, -1.0], [0.5, 0.5, 2.0]])
    zt = torch.tensor([[2.0, 1.0, 0.0], [0.0, 1.0, 1.0]])
    y = torch.tensor([0, 2])
    T, alpha = 2.0, 0.7
    kl = 0.0
    for s, t in zip(zs.tolist(), zt.tolist()):  # KL(p_t || p_s) at temperature T, by hand
        ps = [math.exp(v / T) for v in s]
        pt = [math.exp(v / T) for v in t]
        ps = [v / sum(ps) for v in ps]
        pt = [v / sum(pt) for v in pt]
        kl += sum(a * math.log(a / b) for a, b in zip(pt, ps))
    kl /= 2
    ce = -(math.log(math.exp(1) / (math.exp(1) + 1 + math.exp(-1))) +
           math.log(math.exp(2) / (2 * math.exp(0.5) + math.exp(2)))) / 2
    expected = alpha * T * T * kl + (1 - alpha) * ce
    got = logit_kd_loss(zs, zt, temperature=T, alpha=alpha, targets=y)
    assert got.item() == pytest.approx(expected, rel=1e-5)
    assert logit_kd_loss(zs, zt, temperature=T).item() == pytest.approx(T * T * kl, rel=1e-5)  # unlabelled


def test_token_level_kd_averages_every_position():
    zs, zt = torch.randn(2, 5, 7), torch.randn(2, 5, 7)  # (B, T, V)
    per_row = [logit_kd_loss(zs[b, t][None], zt[b, t][None], temperature=1.5) for b in range(2) for t in range(5)]
    assert logit_kd_loss(zs, zt, temperature=1.5).item() == pytest.approx(float(torch.stack(per_row).mean()),
                                                                          rel=1e-5)
    assert logit_kd_loss(zt, zt, temperature=1.5).item() == pytest.approx(0.0, abs=1e-6)


def test_hidden_state_loss_with_projection_and_attention_maps():
    hs, ht = torch.randn(2, 3, 4), torch.randn(2, 3, 8)
    proj = Projection(4, 8)
    expected = F.mse_loss(proj(hs), ht) / ht.pow(2).mean()
    assert hidden_state_loss([hs], [ht], [proj]).item() == pytest.approx(expected.item(), rel=1e-6)
    assert Projection(8, 8).proj is None and hidden_state_loss([ht], [ht]).item() == 0.0
    a_t = torch.tensor([[[[0.5, 0.5], [1.0, 0.0]]]])  # (B=1, H=1, T=2, T=2)
    a_s = torch.tensor([[[[0.25, 0.75], [0.5, 0.5]]]])
    row0 = 0.5 * math.log(0.5 / 0.25) + 0.5 * math.log(0.5 / 0.75)
    row1 = 1.0 * math.log(1.0 / 0.5)
    assert attention_map_loss([a_s], [a_t]).item() == pytest.approx((row0 + row1) / 2, rel=1e-6)
    mask = torch.tensor([[1, 0]])  # the second query is padding
    assert attention_map_loss([a_s], [a_t], mask).item() == pytest.approx(row0, rel=1e-6)


def test_contrastive_loss_equals_hand_computed_value():
    from condense.distillation.losses import contrastive_loss

    q = F.normalize(torch.tensor([[1.0, 0.0], [0.6, 0.8], [0.0, 1.0]]), dim=-1)
    d = F.normalize(torch.tensor([[0.8, 0.6], [0.0, 1.0], [-1.0, 0.2]]), dim=-1)
    scale = 5.0
    sims = [[scale * sum(a * b for a, b in zip(qi, dj)) for dj in d.tolist()] for qi in q.tolist()]

    def ce(rows):  # mean over rows of -log softmax(row)[i]
        return sum(math.log(sum(math.exp(v) for v in row)) - row[i] for i, row in enumerate(rows)) / len(rows)

    expected = 0.5 * (ce(sims) + ce([list(col) for col in zip(*sims)]))
    assert float(contrastive_loss(q, d, scale)) == pytest.approx(expected, rel=1e-5)


def _tiny_encoder():
    from tokenizers import Tokenizer

    from condense.tasks.bert import Bert, BertConfig
    from condense.tasks.encoder import SentenceEncoder, minilm_path

    torch.manual_seed(0)
    tok = Tokenizer.from_file(str(minilm_path() / "tokenizer.json"))
    return SentenceEncoder(Bert(BertConfig(hidden_size=32, num_layers=2, num_heads=2, intermediate_size=64)),
                           tok, max_seq_length=32).eval()


def test_text_pairs_add_the_contrastive_term_to_embedding_distillation():
    from condense.distillation.losses import contrastive_loss, embedding_distillation_loss
    from condense.errors import ConfigError
    from condense.tasks.encoder import TextPairs

    enc = _tiny_encoder()
    pairs = TextPairs(["return the sum", "open a file", "sort a list"],
                      ["adds numbers together", "reads bytes from disk", "orders items in place"])
    loss = embedding_distillation_loss(enc, contrastive_weight=0.5)
    emb = torch.tensor(enc.encode(pairs.queries + pairs.documents))
    with torch.no_grad():  # the student is the teacher: cosine and relation terms are 0, the pairs' term is left
        assert float(loss(enc, pairs)) == pytest.approx(0.5 * float(contrastive_loss(emb[:3], emb[3:])), abs=1e-4)
        assert float(loss(enc, pairs.queries + pairs.documents)) == pytest.approx(0.0, abs=1e-5)
        assert float(embedding_distillation_loss(enc, contrastive_weight=0.0)(enc, pairs)) == pytest.approx(
            0.0, abs=1e-5)
    with pytest.raises(ConfigError, match="one document per query"):
        loss(enc, TextPairs(["a query"], ["one", "two"]))


def test_embedding_distillation_of_an_unregistered_model_says_what_to_register():
    from condense.distillation.losses import embedding_distillation_loss
    from condense.errors import ConfigError

    with pytest.raises(ConfigError, match=r"Linear has none.*TOKEN_ENCODERS\.register\(Linear\)"):
        embedding_distillation_loss(torch.nn.Linear(2, 2))


def test_anchored_contrastive_loss_matches_a_hand_computed_reference():
    from condense.distillation.losses import anchored_contrastive_loss

    sq = F.normalize(torch.tensor([[1.0, 0.0], [0.6, 0.8]]), dim=-1)
    sd = F.normalize(torch.tensor([[0.8, 0.6], [0.0, 1.0]]), dim=-1)
    tq = F.normalize(torch.tensor([[0.9, 0.1], [0.5, 0.9]]), dim=-1)
    td = F.normalize(torch.tensor([[1.0, 0.3], [-0.2, 1.0]]), dim=-1)
    scale = 4.0

    def sym_ce(q, d):  # symmetric InfoNCE written out: rows are queries, columns documents, the diagonal right
        sims = [[scale * sum(a * b for a, b in zip(qi, dj)) for dj in d.tolist()] for qi in q.tolist()]
        cols = [list(c) for c in zip(*sims)]
        ce = lambda rows: sum(math.log(sum(math.exp(v) for v in r)) - r[i] for i, r in enumerate(rows)) / len(rows)
        return 0.5 * (ce(sims) + ce(cols))

    expected = 0.5 * (sym_ce(sq, td) + sym_ce(tq, sd))  # student queries -> teacher documents, and the reverse
    sq_, sd_ = sq.clone().requires_grad_(True), sd.clone().requires_grad_(True)
    tq_, td_ = tq.clone().requires_grad_(True), td.clone().requires_grad_(True)
    loss = anchored_contrastive_loss(sq_, sd_, tq_, td_, scale)
    assert loss.item() == pytest.approx(expected, rel=1e-5)
    loss.backward()  # the teacher's side is a target: no gradient reaches it
    assert tq_.grad is None and td_.grad is None and sq_.grad.abs().sum() > 0 and sd_.grad.abs().sum() > 0


def test_contrastive_target_teacher_is_the_anchored_pair_loss():
    from condense.distillation import DistillConfig
    from condense.distillation.losses import anchored_contrastive_loss, embedding_distillation_loss
    from condense.errors import ConfigError
    from condense.tasks.encoder import TextPairs

    teacher, student = _tiny_encoder(), _tiny_encoder()
    torch.manual_seed(1)
    with torch.no_grad():
        for p in student.parameters():
            p.add_(0.05 * torch.randn_like(p))
    pairs = TextPairs(["return the sum", "open a file", "sort a list"],
                      ["adds numbers together", "reads bytes from disk", "orders items in place"])
    texts = pairs.queries + pairs.documents
    s, t = torch.tensor(student.encode(texts)), torch.tensor(teacher.encode(texts))
    with torch.no_grad():
        plain = float(embedding_distillation_loss(teacher, contrastive_weight=0.0)(student, pairs))
        anchored = float(embedding_distillation_loss(teacher, contrastive_weight=0.5,
                                                     contrastive_target="teacher")(student, pairs))
    want = plain + 0.5 * float(anchored_contrastive_loss(s[:3], s[3:], t[:3], t[3:]))
    assert anchored == pytest.approx(want, abs=1e-4)
    with pytest.raises(ConfigError, match="contrastive_target must be one of 'student', 'teacher', got 'both'"):
        embedding_distillation_loss(teacher, contrastive_target="both")
    with pytest.raises(ConfigError, match="contrastive_target must be one of"):
        DistillConfig(contrastive_target="both")
