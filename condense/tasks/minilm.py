"""The built-in `minilm` task: all-MiniLM-L6-v2, judged by retrieval on standard-library docstrings.

Quality is MRR@10 of finding each docstring's body from its summary line among all bodies in the set, plus how
close each embedding stays to the uncompressed model's (`cosine_to_fp32`, 1.0 = unchanged). The same three
figures with the suffix `_offsource` come from a second source, manual pages (condense.data.manpages): its
calibration and distillation data are docstrings too, so a step can learn the docstring domain; text of another
kind, which no training data comes from, tells whether quality holds on a user's own text. The fp32 reference
embeddings are computed once, then kept in memory and on disk under the condense cache.
"""
from __future__ import annotations

import hashlib
import itertools
import random
from functools import partial
from typing import TYPE_CHECKING, Iterator, Sequence

import numpy as np
from torch import nn

from condense.core.task import Task
from condense.errors import CondenseError

if TYPE_CHECKING:
    from condense.data.stdlib_docs import RetrievalSet
    from condense.tasks.encoder import TextPairs

CALIBRATION_BATCHES = 8
TEXTS_PER_BATCH = 32
TRAIN_PASSES = 10  # passes over the training pairs per epoch of train_data, reshuffled each
_REFERENCE_FORMAT = 1  # bump when the reference computation changes, so stale cache files are not read

OFFSOURCE_SUFFIX = "_offsource"
OFFSOURCE_METRIC = "mrr@10" + OFFSOURCE_SUFFIX

_reference_memo: dict[str, np.ndarray] = {}


def retrieval_metrics(queries: np.ndarray, documents: np.ndarray, k: int = 10) -> dict[str, float]:
    """MRR@k and recall@1 where `documents[i]` answers `queries[i]`; ties rank the answer last (no free wins).

    Example:
        >>> e = np.eye(3, dtype=np.float32)
        >>> retrieval_metrics(e, e)
        {'mrr@10': 1.0, 'recall@1': 1.0}
    """
    if queries.shape != documents.shape or queries.ndim != 2:
        raise CondenseError(f"queries {queries.shape} and documents {documents.shape} must be matching (n, dim) "
                            "arrays, one document per query")
    q = _unit(queries)
    d = _unit(documents)
    sims = q @ d.T  # (n, n) cosine similarities
    right = np.diag(sims)[:, None]  # (n, 1)
    rank = (sims >= right).sum(axis=1)  # 1 + documents scoring at least as high as the answer (itself counted)
    rr = np.where(rank <= k, 1.0 / rank, 0.0)
    return {f"mrr@{k}": float(rr.mean()), "recall@1": float((rank == 1).mean())}


def _unit(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def reference_embeddings(texts: Sequence[str], max_seq_length: int) -> np.ndarray:
    """The uncompressed pretrained model's embeddings of `texts` (n, 384), cached in memory and on disk."""
    from condense.core.atomic import atomic_write
    from condense.core.paths import cache_dir
    from condense.tasks.encoder import load_minilm

    h = hashlib.sha1(f"v{_REFERENCE_FORMAT}|{max_seq_length}|".encode())
    for t in texts:
        h.update(t.encode("utf-8"))
        h.update(b"\0")
    key = h.hexdigest()[:20]
    if key in _reference_memo:
        return _reference_memo[key]
    path = cache_dir() / "minilm" / f"reference-{key}.npy"
    ref = None
    if path.is_file():
        try:
            ref = np.load(path, allow_pickle=False)
        except (OSError, ValueError):
            ref = None  # unreadable: recompute and overwrite below
        if ref is not None and (ref.ndim != 2 or ref.shape[0] != len(texts) or ref.dtype != np.float32):
            ref = None
    if ref is None:
        ref = load_minilm(max_seq_length).encode(list(texts))

        def write(tmp: str) -> None:
            with open(tmp, "wb") as f:
                np.save(f, ref, allow_pickle=False)

        atomic_write(path, write)
    _reference_memo[key] = ref
    return ref


def _score(model: nn.Module, queries: Sequence[str], documents: Sequence[str], max_seq_length: int,
           suffix: str = "") -> dict[str, float]:
    """MRR@10, recall@1 and cosine to the fp32 reference on one retrieval set; keys end in `suffix`."""
    n = len(queries)
    texts = list(queries) + list(documents)
    emb = np.asarray(model.encode(texts), dtype=np.float32)  # (2n, C)
    out = retrieval_metrics(emb[:n], emb[n:])
    ref = reference_embeddings(texts, max_seq_length)  # (2n, C)
    if ref.shape != emb.shape:
        raise CondenseError(f"the model gives {emb.shape[1]}-dim embeddings but the fp32 reference has "
                            f"{ref.shape[1]}; cosine_to_fp32 needs the embedding size unchanged")
    out["cosine_to_fp32"] = float((_unit(emb) * _unit(ref)).sum(axis=1).mean())
    return {k + suffix: v for k, v in out.items()}


def offsource_set(n_offsource: int, n_pairs: int) -> "RetrievalSet | None":
    """The second evaluation source: `n_offsource` manual-page pairs with no text that the task trains or
    calibrates on (its docstring pairs and paragraphs outside the `n_pairs` evaluation set). None, with a warning
    once, where this machine has too few manual pages (the primary metric is then the only one)."""
    from condense.data.manpages import retrieval_set, warn_missing
    from condense.data.stdlib_docs import retrieval_pairs, training_pairs, unlabelled_texts
    from condense.data.stdlib_prose import prose_pairs, prose_texts

    ev = retrieval_pairs(n_pairs)
    used = {t.lower() for pair in training_pairs(ev) + prose_pairs() for t in pair} \
        | {t.lower() for t in unlabelled_texts(None, ev) + prose_texts()}
    try:
        return retrieval_set(n_offsource, exclude=frozenset(used))
    except CondenseError as e:
        warn_missing("minilm", OFFSOURCE_METRIC, e)
        return None


def _evaluate(model: nn.Module, *, n_pairs: int, max_seq_length: int, n_offsource: int = 0) -> dict[str, float]:
    from condense.data.stdlib_docs import retrieval_pairs

    if not hasattr(model, "encode"):
        raise CondenseError(f"the minilm task evaluates a SentenceEncoder (with .encode(texts)), got "
                            f"{type(model).__name__}; build it with task.build_model()")
    pairs = retrieval_pairs(n_pairs)
    out = _score(model, pairs.queries, pairs.documents, max_seq_length)
    off = offsource_set(n_offsource, n_pairs) if n_offsource else None
    if off is not None:
        out.update(_score(model, off.queries, off.documents, max_seq_length, suffix=OFFSOURCE_SUFFIX))
    return out


def _build_model(max_seq_length: int) -> nn.Module:
    """The pretrained encoder (imported here so that making the task stays cheap)."""
    from condense.tasks.encoder import load_minilm

    return load_minilm(max_seq_length)


def _inputs(batch_size: int, *, n_pairs: int) -> list[str]:
    """`batch_size` real texts: the evaluation queries (tens of tokens each), cycled."""
    from condense.data.stdlib_docs import retrieval_pairs

    queries = retrieval_pairs(n_pairs).queries
    return [queries[i % len(queries)] for i in range(batch_size)]


def _run(model: nn.Module, batch: list[str]):
    """Time what a user does: tokenize and embed one batch."""
    return model.encode(batch, batch_size=len(batch))


def _batches(texts: Sequence[str], size: int = TEXTS_PER_BATCH) -> Iterator[list[str]]:
    it = iter(texts)
    while chunk := list(itertools.islice(it, size)):
        yield chunk


def _calibration_data(*, n_pairs: int) -> Iterator[list[str]]:
    """8 batches of 32 docstring paragraphs from outside the evaluation set."""
    from condense.data.stdlib_docs import retrieval_pairs, unlabelled_texts

    texts = unlabelled_texts(CALIBRATION_BATCHES * TEXTS_PER_BATCH, exclude=retrieval_pairs(n_pairs))
    return _batches(texts)


def _pair_batches(pairs: list[tuple[str, str]], seed: int) -> Iterator[TextPairs]:
    """`pairs` shuffled by `seed`, in TextPairs batches of `TEXTS_PER_BATCH` (a short last batch dropped)."""
    from condense.tasks.encoder import TextPairs

    pairs = list(pairs)
    random.Random(seed).shuffle(pairs)
    for i in range(0, len(pairs) - TEXTS_PER_BATCH + 1, TEXTS_PER_BATCH):
        chunk = pairs[i:i + TEXTS_PER_BATCH]
        yield TextPairs([q for q, _ in chunk], [d for _, d in chunk])


def _docstring_batches(n_pairs: int) -> Iterator[TextPairs]:
    """Docstring (summary sentence, rest of the docstring) pairs only: `TRAIN_PASSES` passes."""
    from condense.data.stdlib_docs import retrieval_pairs, training_pairs

    pairs = training_pairs(retrieval_pairs(n_pairs))
    for p in range(TRAIN_PASSES):
        yield from _pair_batches(pairs, p)


def _mixed_batches(n_pairs: int) -> Iterator[TextPairs | list[str]]:
    """Docstring pairs and prose pairs (condense.data.stdlib_prose: the language reference, license, email and IDLE
    documents) pooled, each pair batch followed by a batch of 2 x 32 whole prose paragraphs (embedding
    distillation only, no pair loss), `TRAIN_PASSES` passes; the prose batches cycle in their own shuffled order."""
    from condense.data.stdlib_docs import retrieval_pairs, training_pairs
    from condense.data.stdlib_prose import prose_pairs, prose_texts

    docs = training_pairs(retrieval_pairs(n_pairs))
    taken = {t.lower() for pair in docs for t in pair}
    pairs = docs + tuple(p for p in prose_pairs() if p[0].lower() not in taken and p[1].lower() not in taken)
    texts = list(prose_texts())
    size = 2 * TEXTS_PER_BATCH
    prose: list[list[str]] = []
    for p in range(TRAIN_PASSES):
        for batch in _pair_batches(pairs, p):
            yield batch
            if len(texts) >= size:
                if not prose:
                    random.Random(f"prose{p}").shuffle(texts)
                    prose = [texts[i:i + size] for i in range(0, len(texts) - size + 1, size)][::-1]
                yield prose.pop()


# the unlabelled text `train_data` distils on, by the task option `train_text`
TRAIN_TEXTS = {"docstrings": _docstring_batches, "mixed": _mixed_batches}


def _train_data(*, n_pairs: int, train_text: str = "mixed") -> Iterator[TextPairs | list[str]]:
    """Training batches from text outside both evaluation sets; no labels.

    "docstrings": batches of 32 (summary sentence, rest of the docstring) pairs from docstrings outside the
    evaluation set: each docstring pairs with itself (the inverse cloze task), and the teacher supplies the
    embedding targets; distillation adds an in-batch contrastive term on the pairs
    (`DistillConfig.contrastive_weight`). "mixed" (the default): the same with the prose the standard library ships
    besides docstrings pooled in (`_mixed_batches`), so that a student does not learn the docstring domain only
    (a student trained on docstrings alone kept 97.6% of fp32's MRR@10 on text of another source, issue 22).
    One call yields `TRAIN_PASSES` passes over the pairs, each in its own fixed shuffled order, so that the
    in-batch negatives change from pass to pass while every call (and a resumed run) sees the same sequence.
    """
    return TRAIN_TEXTS[train_text](n_pairs)


def make_task(n_pairs: int = 500, max_seq_length: int = 128, offsource_pairs: int | None = None,
              train_text: str = "mixed") -> Task:
    """The `minilm` task: pretrained all-MiniLM-L6-v2, MRR@10 on `n_pairs` stdlib docstring retrieval pairs, and
    `mrr@10_offsource` on `offsource_pairs` manual-page pairs (NAME description -> DESCRIPTION; no training or
    calibration text comes from them). `offsource_pairs` defaults to `n_pairs` (about as long to evaluate); 0 turns
    the second source off. `train_text`: what `train_data` (distillation, recovery) trains on: "mixed" (docstring
    pairs plus the other prose the standard library ships) or "docstrings" (docstring pairs only); see `_train_data`.

    Cheap to call: data is built on first use, weights load in `task.build_model()`.

    Example:
        >>> task = make_task(n_pairs=100)
        >>> task.primary_metric, task.offsource_metric, task.batch_sizes
        ('mrr@10', 'mrr@10_offsource', (1, 32))
    """
    if isinstance(n_pairs, bool) or not isinstance(n_pairs, int) or n_pairs < 2:
        raise CondenseError(f"n_pairs must be an integer >= 2, got {n_pairs!r}; e.g. n_pairs=500")
    if isinstance(max_seq_length, bool) or not isinstance(max_seq_length, int) or not 2 <= max_seq_length <= 512:
        raise CondenseError(f"max_seq_length must be an integer in 2..512, got {max_seq_length!r}; e.g. 128")
    if offsource_pairs is None:
        offsource_pairs = n_pairs
    if isinstance(offsource_pairs, bool) or not isinstance(offsource_pairs, int) or offsource_pairs == 1 \
            or offsource_pairs < 0:
        raise CondenseError(f"offsource_pairs must be 0 (no second source) or an integer >= 2, got "
                            f"{offsource_pairs!r}; e.g. offsource_pairs=500")
    if train_text not in TRAIN_TEXTS:
        raise CondenseError(f"train_text must be one of {', '.join(map(repr, TRAIN_TEXTS))}, got {train_text!r}; "
                            "e.g. train_text='mixed'")
    return Task(
        name="minilm",
        model=partial(_build_model, max_seq_length=max_seq_length),
        evaluate=partial(_evaluate, n_pairs=n_pairs, max_seq_length=max_seq_length, n_offsource=offsource_pairs),
        primary_metric="mrr@10",
        higher_is_better=True,
        inputs=partial(_inputs, n_pairs=n_pairs),
        run=_run,
        calibration_data=partial(_calibration_data, n_pairs=n_pairs),
        train_data=partial(_train_data, n_pairs=n_pairs, train_text=train_text),
        batch_sizes=(1, 32),
        description="all-MiniLM-L6-v2 sentence encoder; MRR@10 retrieving stdlib docstring bodies from summaries "
                    "(and manual-page DESCRIPTIONs from NAME lines: mrr@10_offsource)",
        offsource_metric=OFFSOURCE_METRIC if offsource_pairs else None,
    )
