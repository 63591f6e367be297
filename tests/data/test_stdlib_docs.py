"""Retrieval pairs from stdlib docstrings: exact sizes, no repeats, deterministic, eval text kept out of training."""
import sys

import pytest

from condense.data import stdlib_docs as sd
from condense.data.stdlib_docs import RetrievalSet, available_pairs, retrieval_pairs, unlabelled_texts
from condense.errors import CondenseError


def test_paragraphs_drop_doctests_and_rules():
    doc = "Summary line here.\n\nExamples\n--------\n>>> f(1)\n2\n\nLast   words\n  wrapped."
    assert sd._paragraphs(doc) == ("Summary line here.", "Examples", "Last words wrapped.")


def test_split_summary_takes_first_sentence():
    body = " ".join(["word"] * 15)
    doc = sd._Doc("x.py:f", ("Return the sum of two numbers. It works on ints", body))
    assert sd._split_summary(doc) == ("Return the sum of two numbers.", f"It works on ints {body}")
    assert sd._split_summary(sd._Doc("x.py:f", ("Too short.", body))) is None
    assert sd._split_summary(sd._Doc("x.py:f", ("S.split(sep) -> list of strings", body))) is None
    assert sd._split_summary(sd._Doc("x.py:f", ("Return the sum of two numbers.", "too few words"))) is None


def test_cap_cuts_at_word_boundary():
    text = "abc " * 300
    capped = sd._cap(text)
    assert len(capped) <= sd.MAX_BODY_CHARS and capped.endswith("abc")


def test_pairs_exact_size_unique_and_nonempty():
    s = retrieval_pairs(200)
    assert isinstance(s, RetrievalSet)
    assert len(s) == len(s.queries) == len(s.documents) == len(s.sources) == 200
    assert len(set(q.lower() for q in s.queries)) == 200
    assert len(set(d.lower() for d in s.documents)) == 200
    assert len(set(s.sources)) == 200
    for q, d in zip(s.queries, s.documents):
        assert q.strip() and d.strip() and q != d
        assert sd.MIN_QUERY_WORDS <= len(q.split()) <= sd.MAX_QUERY_WORDS
        assert len(d.split()) >= sd.MIN_BODY_WORDS and len(d) <= sd.MAX_BODY_CHARS
        assert ">>>" not in d and "  " not in d and "\n" not in d


def test_pairs_deterministic_and_nested():
    a = retrieval_pairs(150)
    imported_before = "this" in sys.modules or "antigravity" in sys.modules
    sd._candidates.cache_clear()
    sd._docstrings.cache_clear()
    retrieval_pairs.cache_clear()
    b = retrieval_pairs(150)
    assert a == b and a is not b  # rebuilt from scratch, same answer
    # parsed, never imported: importing `this` prints the Zen of Python, `antigravity` opens a browser
    assert imported_before or ("this" not in sys.modules and "antigravity" not in sys.modules)
    small = retrieval_pairs(40)
    assert small.queries == b.queries[:40] and small.sources == b.sources[:40]


def test_pairs_spread_over_the_library():
    s = retrieval_pairs(500)
    packages = {src.split(":")[0].split("/")[0] for src in s.sources}
    assert len(packages) > 50  # hash order, not file order


def test_sources_are_docstrings_of_the_named_definitions():
    import ast

    from condense.data.stdlib import stdlib_dir

    s = retrieval_pairs(20)
    for src, q in zip(s.sources, s.queries):
        rel, qual = src.split(":")
        tree = ast.parse((stdlib_dir() / rel).read_text(encoding="utf-8", errors="replace"))
        node = tree
        if qual != "<module>":
            for part in qual.split("."):
                node = next(n for n in ast.walk(node) if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef,
                                                                          ast.ClassDef)) and n.name == part)
        assert " ".join(ast.get_docstring(node).split()).startswith(q)


def test_bad_sizes_are_clear_errors():
    with pytest.raises(CondenseError, match="n must be"):
        retrieval_pairs(0)
    with pytest.raises(CondenseError, match="n must be"):
        retrieval_pairs(available_pairs() + 1)
    with pytest.raises(CondenseError, match="n must be"):
        unlabelled_texts(10**9)


def test_unlabelled_texts_exclude_the_eval_set():
    ev = retrieval_pairs(300)
    texts = unlabelled_texts(500, exclude=ev)
    assert len(texts) == 500 and len(set(texts)) == 500
    assert not set(texts) & set(ev.queries + ev.documents)
    # nothing from an evaluated docstring, even a paragraph the pair did not use
    every = unlabelled_texts(None, exclude=ev)
    all_texts = unlabelled_texts(None)
    assert len(every) < len(all_texts)
    assert texts == every[:500] == unlabelled_texts(500, exclude=ev)
    for t in texts:
        assert len(t.split()) >= sd.MIN_TEXT_WORDS and len(t) <= sd.MAX_BODY_CHARS
    ev_paragraphs = {p for doc in sd._docstrings() if doc.source in set(ev.sources) for p in doc.paragraphs}
    assert not set(every) & {sd._cap(p) for p in ev_paragraphs}


def test_training_pairs_come_from_docstrings_outside_the_eval_set():
    from condense.data.stdlib_docs import training_pairs

    ev = retrieval_pairs(300)
    pairs = training_pairs(ev)
    everything = {(q, d): s for q, d, s in sd._candidates()}
    assert len(pairs) == available_pairs() - 300 and len(set(pairs)) == len(pairs)
    assert not {everything[p] for p in pairs} & set(ev.sources)
    assert not {t for p in pairs for t in p} & set(ev.queries + ev.documents)
    assert training_pairs(None) == tuple((q, d) for q, d, _ in sd._candidates())
    others = retrieval_pairs(available_pairs())
    outside = [q for q, src in zip(others.queries, others.sources) if src not in set(ev.sources)]
    assert outside and set(outside) == {q for q, _ in pairs}  # every other docstring's summary sentence is there
