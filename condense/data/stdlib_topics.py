"""A labelled text classification set from the standard library: docstrings labelled by their top-level package.

"Which package is this docstring from?" (asyncio, email, logging, ...) is a real topic classification task, built
offline and deterministically from the installed Python's sources (parsed, never imported; the same docstrings as
condense.data.stdlib_docs). Each class's docstrings are put in a fixed hash order; the first `test_per_class` are
the held-out test split, the next `labels_per_class` (drawn with `label_seed`) the labelled training texts, and the
rest stay unlabelled.
"""
from __future__ import annotations

import hashlib
import random
from dataclasses import dataclass
from functools import lru_cache

from condense.data.stdlib_docs import MIN_TEXT_WORDS, _cap, _docstrings
from condense.errors import ConfigError

# packages with >= 45 usable docstrings on Python 3.10 .. 3.13 (distutils left out: gone in 3.12; encodings: codec
# boilerplate)
TOPICS: tuple[str, ...] = ("asyncio", "collections", "email", "http", "importlib", "logging", "multiprocessing",
                           "unittest", "urllib", "xml")
MIN_WORDS = 8  # a docstring shorter than this names too little to classify


@dataclass(frozen=True)
class TopicSplit:
    """Texts and class indices (into `topics`) of the labelled training, test and unlabelled parts."""

    topics: tuple[str, ...]
    train_texts: tuple[str, ...]
    train_labels: tuple[int, ...]
    test_texts: tuple[str, ...]
    test_labels: tuple[int, ...]
    unlabelled_texts: tuple[str, ...]


@lru_cache(maxsize=1)
def topic_texts() -> dict[str, tuple[str, ...]]:
    """Each topic's docstrings (whole docstring, capped to ~600 characters, no repeats), in a fixed hash order.

    Example:
        >>> texts = topic_texts()
        >>> sorted(texts) == sorted(TOPICS) and min(len(v) for v in texts.values()) >= 40
        True
    """
    seen: set[str] = set()
    keyed: dict[str, list[tuple[str, str]]] = {t: [] for t in TOPICS}
    for doc in _docstrings():
        top = doc.source.split(":", 1)[0].split("/", 1)[0]
        if top not in keyed:
            continue
        text = _cap(" ".join(doc.paragraphs))
        if len(text.split()) < max(MIN_WORDS, MIN_TEXT_WORDS) or text.lower() in seen:
            continue
        seen.add(text.lower())
        keyed[top].append((hashlib.sha1(doc.source.encode()).hexdigest(), text))
    return {t: tuple(text for _, text in sorted(v)) for t, v in keyed.items()}


@lru_cache(maxsize=8)
def topic_split(labels_per_class: int = 10, test_per_class: int = 25, label_seed: int = 0) -> TopicSplit:
    """The fixed split: `test_per_class` test texts per topic, `labels_per_class` labelled ones, the rest unlabelled.

    Example:
        >>> s = topic_split(labels_per_class=4, test_per_class=5)
        >>> len(s.train_texts), len(s.test_texts), bool(set(s.train_texts) & set(s.test_texts))
        (40, 50, False)
    """
    texts = topic_texts()
    train, test, rest = [], [], []
    for c, topic in enumerate(TOPICS):
        docs = list(texts[topic])
        if labels_per_class + test_per_class > len(docs):
            raise ConfigError(f"topic {topic!r} has {len(docs)} docstrings on this Python, fewer than "
                              f"labels_per_class + test_per_class = {labels_per_class + test_per_class}; lower them")
        test += [(t, c) for t in docs[:test_per_class]]
        pool = docs[test_per_class:]
        random.Random(f"{label_seed}:{topic}").shuffle(pool)
        train += [(t, c) for t in pool[:labels_per_class]]
        rest += pool[labels_per_class:]
    random.Random(label_seed).shuffle(train)  # classes mixed in every batch
    return TopicSplit(TOPICS, tuple(t for t, _ in train), tuple(c for _, c in train), tuple(t for t, _ in test),
                      tuple(c for _, c in test), tuple(rest))
