"""Query -> document retrieval pairs from the standard library's docstrings: real text, offline, deterministic.

A docstring's summary line is a natural query for the rest of the docstring, so "find the body that answers
this summary among all bodies" is a retrieval test with known answers. Sources are parsed with `ast`, never
imported, so nothing in the standard library runs. Docstrings outside an evaluation set give unlabelled text for
calibration and distillation without leaking the test answers.
"""
from __future__ import annotations

import ast
import hashlib
import re
from dataclasses import dataclass
from functools import lru_cache

from condense.data.stdlib import read_source, stdlib_dir, stdlib_files
from condense.errors import CondenseError

MIN_QUERY_WORDS, MAX_QUERY_WORDS = 4, 30
MIN_BODY_WORDS = 15
MAX_BODY_CHARS = 600
MIN_TEXT_WORDS = 5  # unlabelled paragraphs shorter than this say too little to calibrate on

_SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[A-Z(\"'`])")
_SIGNATURE = re.compile(r"^[\w.]+\(.*\)|->")  # "S.split(sep=None) -> list": a signature, not a summary
_RULE = re.compile(r"^\s*([-=~^*])\1{2,}\s*$")  # section underlines: "-----", "====="


@dataclass(frozen=True)
class RetrievalSet:
    """Queries and the one document answering each: `documents[i]` answers `queries[i]`.

    Example:
        >>> s = retrieval_pairs(3)
        >>> len(s.queries) == len(s.documents) == len(s.sources) == 3
        True
    """

    queries: tuple[str, ...]
    documents: tuple[str, ...]
    sources: tuple[str, ...]  # "path/in/stdlib.py:Qual.name" of each docstring ("<module>" for module docs)

    def __len__(self) -> int:
        return len(self.queries)


@dataclass(frozen=True)
class _Doc:
    source: str
    paragraphs: tuple[str, ...]  # whitespace-normalised, doctests and rules removed


def _paragraphs(doc: str) -> tuple[str, ...]:
    """A cleaned docstring -> its paragraphs, each on one line; doctest examples and underlines dropped."""
    out = []
    for block in re.split(r"\n\s*\n", doc):
        lines = []
        for line in block.splitlines():
            if line.lstrip().startswith(">>>"):  # a doctest runs to the end of its paragraph
                break
            if not _RULE.match(line):
                lines.append(line)
        text = " ".join(" ".join(lines).split())
        if text:
            out.append(text)
    return tuple(out)


def _walk(node: ast.AST, prefix: str, rel: str, out: list[_Doc]) -> None:
    for child in ast.iter_child_nodes(node):
        if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            name = f"{prefix}{child.name}"
            doc = ast.get_docstring(child, clean=True)
            if doc:
                out.append(_Doc(f"{rel}:{name}", _paragraphs(doc)))
            _walk(child, f"{name}.", rel, out)
        elif not isinstance(child, (ast.expr, ast.Lambda)):
            _walk(child, prefix, rel, out)  # defs nested in if/try/with blocks


@lru_cache(maxsize=1)
def _docstrings() -> tuple[_Doc, ...]:
    """Every docstring in the standard library, in file order (a few seconds; cached)."""
    root = stdlib_dir()
    out: list[_Doc] = []
    for path in stdlib_files():
        try:
            tree = ast.parse(read_source(path))
        except (SyntaxError, ValueError, RecursionError):  # a few files are templates or other Pythons' syntax
            continue
        rel = path.relative_to(root).as_posix()
        doc = ast.get_docstring(tree, clean=True)
        if doc:
            out.append(_Doc(f"{rel}:<module>", _paragraphs(doc)))
        _walk(tree, "", rel, out)
    return tuple(out)


def _cap(text: str, limit: int = MAX_BODY_CHARS) -> str:
    """Cut text to at most `limit` characters, at a word boundary."""
    if len(text) <= limit:
        return text
    cut = text[:limit + 1].rsplit(" ", 1)[0]
    return cut if cut else text[:limit]


def _split_summary(doc: _Doc) -> tuple[str, str] | None:
    """(query, body) for one docstring, or None where the pair would not make a fair retrieval question."""
    if not doc.paragraphs:
        return None
    first = _SENTENCE_END.split(doc.paragraphs[0], maxsplit=1)
    query = first[0]
    body = " ".join(first[1:] + list(doc.paragraphs[1:]))
    if _SIGNATURE.search(query) or not MIN_QUERY_WORDS <= len(query.split()) <= MAX_QUERY_WORDS:
        return None
    if len(body.split()) < MIN_BODY_WORDS:
        return None
    return query, _cap(body)


def _stable_key(source: str) -> str:
    return hashlib.sha1(source.encode("utf-8")).hexdigest()


@lru_cache(maxsize=1)
def _candidates() -> tuple[tuple[str, str, str], ...]:
    """All usable (query, document, source) triples, with repeated queries or documents dropped; hash order."""
    seen_q: set[str] = set()
    seen_d: set[str] = set()
    out = []
    for doc in _docstrings():
        pair = _split_summary(doc)
        if pair is None:
            continue
        q, d = pair
        qk, dk = q.lower(), d.lower()
        if qk in seen_q or dk in seen_d:
            continue
        seen_q.add(qk)
        seen_d.add(dk)
        out.append((q, d, doc.source))
    out.sort(key=lambda t: (_stable_key(t[2]), t[2]))  # spread over the library, same on every run
    return tuple(out)


def available_pairs() -> int:
    """How many retrieval pairs this Python's standard library yields."""
    return len(_candidates())


@lru_cache(maxsize=8)
def retrieval_pairs(n: int = 500) -> RetrievalSet:
    """`n` query -> document pairs from stdlib docstrings, the same on every run of the same Python.

    Example:
        >>> s = retrieval_pairs(100)
        >>> len(s), len(set(s.queries)), len(set(s.documents))
        (100, 100, 100)
    """
    cands = _candidates()
    if isinstance(n, bool) or not isinstance(n, int) or not 1 <= n <= len(cands):
        raise CondenseError(f"n must be an integer in 1..{len(cands)} (pairs this Python's standard library "
                            f"yields), got {n!r}; e.g. n=500")
    picked = cands[:n]
    return RetrievalSet(tuple(q for q, _, _ in picked), tuple(d for _, d, _ in picked),
                        tuple(s for _, _, s in picked))


def _excluded(exclude: RetrievalSet | None) -> tuple[set[str], set[str]]:
    """(docstring sources, lower-cased texts) that data built outside `exclude` must not use."""
    if exclude is None:
        return set(), set()
    return set(exclude.sources), {t.lower() for t in exclude.queries + exclude.documents}


@lru_cache(maxsize=8)
def training_pairs(exclude: RetrievalSet | None = None) -> tuple[tuple[str, str], ...]:
    """(summary sentence, rest of the docstring) pairs from docstrings outside `exclude`, deterministic order.

    Split as the retrieval pairs are, but from other docstrings: text that pairs itself, with no labels (the
    inverse cloze task). Pairs from a docstring in `exclude.sources`, or sharing a text with `exclude`, are left out.

    Example:
        >>> ev = retrieval_pairs(50)
        >>> pairs = training_pairs(ev)
        >>> len(pairs) == available_pairs() - 50, bool({q for q, _ in pairs} & set(ev.queries))
        (True, False)
    """
    banned_sources, banned = _excluded(exclude)
    return tuple((q, d) for q, d, src in _candidates()
                 if src not in banned_sources and q.lower() not in banned and d.lower() not in banned)


@lru_cache(maxsize=8)
def unlabelled_texts(n: int | None = None, exclude: RetrievalSet | None = None) -> tuple[str, ...]:
    """`n` docstring paragraphs (all if None) from docstrings outside `exclude`; deterministic, no repeats.

    Paragraphs are capped to ~600 characters and need at least 5 words. Docstrings in `exclude.sources` are left
    out, and so is any paragraph elsewhere with the same text as one of theirs or as a query or document.

    Example:
        >>> ev = retrieval_pairs(50)
        >>> texts = unlabelled_texts(64, exclude=ev)
        >>> len(texts), bool(set(texts) & set(ev.queries + ev.documents))
        (64, False)
    """
    banned_sources, banned = _excluded(exclude)
    docs = _docstrings()
    banned |= {_cap(p).lower() for doc in docs if doc.source in banned_sources for p in doc.paragraphs}
    seen: set[str] = set()
    keyed = []
    for doc in docs:
        if doc.source in banned_sources:
            continue
        for i, para in enumerate(doc.paragraphs):
            text = _cap(para)
            key = text.lower()
            if len(text.split()) < MIN_TEXT_WORDS or key in seen or key in banned:
                continue
            seen.add(key)
            keyed.append((_stable_key(f"{doc.source}#{i}"), text))
    keyed.sort()
    if n is None:
        n = len(keyed)
    if isinstance(n, bool) or not isinstance(n, int) or not 1 <= n <= len(keyed):
        raise CondenseError(f"n must be an integer in 1..{len(keyed)} (unlabelled paragraphs available), "
                            f"got {n!r}; ask for fewer texts")
    return tuple(t for _, t in keyed[:n])
