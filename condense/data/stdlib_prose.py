"""English prose the installed Python ships besides its docstrings: unlabelled training text of other kinds.

Why: a student distilled only on docstrings learns that domain (issue 22: 97.6% of fp32 on text of another
source). The standard library also ships the language reference as plain text (`pydoc_data/topics.py`, what
`help("if")` prints), its license history, the email package's design notes and IDLE's manual, news and read-me
files: prose about other things, in other registers, present on every machine with the Python that runs condense.
Files are read (`topics.py` parsed with `ast`, never imported); a missing one is skipped (some distributions split
IDLE off), and `prose_sources()` says which were found. Paragraphs are whitespace-normalised, code, grammar
and tables (indented blocks, lines mostly of symbols) left out, capped like the docstring set, and put in a stable
hash order. Manual pages are never read here: they are the minilm task's second evaluation source.
"""
from __future__ import annotations

import ast
import hashlib
import re
from functools import lru_cache
from html.parser import HTMLParser
from pathlib import Path

from condense.data.stdlib import stdlib_dir
from condense.data.stdlib_docs import MAX_QUERY_WORDS, MIN_BODY_WORDS, MIN_QUERY_WORDS, _SENTENCE_END, _cap

MIN_WORDS = 8  # a paragraph shorter than this is a heading or a fragment
MIN_LETTER_SHARE = 0.75  # letters and spaces among the characters: prose, not code, grammar or a table
TEXT_FILES = ("LICENSE.txt", "email/architecture.rst", "idlelib/README.txt", "idlelib/NEWS.txt",
              "idlelib/NEWS2x.txt", "idlelib/HISTORY.txt", "idlelib/TODO.txt", "idlelib/extend.txt",
              "idlelib/CREDITS.txt")
HTML_FILES = ("idlelib/help.html",)
TOPICS_FILE = "pydoc_data/topics.py"

_RULE = re.compile(r"^\s*([-=~^*+#])\1{2,}\s*$")
_BULLET = re.compile(r"^\s*(?:[-*+]|\(?\d+[.)]|[a-z][.)])\s+")


def _clean(block: str) -> str | None:
    """One blank-line separated block -> a paragraph on one line, or None where it is not prose."""
    lines = [ln for ln in block.splitlines() if ln.strip() and not _RULE.match(ln)]
    if not lines or lines[0].startswith(("   ", "\t", ">>>", "...")):  # indented: code, grammar, an example
        return None
    text = " ".join(" ".join(_BULLET.sub("", ln, count=1) if i == 0 else ln for i, ln in enumerate(lines)).split())
    if len(text.split()) < MIN_WORDS:
        return None
    if sum(c.isalpha() or c == " " for c in text) < MIN_LETTER_SHARE * len(text):
        return None
    return _cap(text)


def _blocks(text: str) -> list[str]:
    return re.split(r"\n\s*\n", text.replace("\r\n", "\n"))


def _topics(path: Path) -> list[str]:
    """The language reference's topics (the `topics = {...}` literal of pydoc_data/topics.py), in key order."""
    tree = ast.parse(path.read_text(encoding="utf-8", errors="replace"))
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(isinstance(t, ast.Name) and t.id == "topics" for t in node.targets):
            value = ast.literal_eval(node.value)
            return [value[k] for k in sorted(value)] if isinstance(value, dict) else []
    return []


class _Paragraphs(HTMLParser):
    """Text of <p>, <li> and <dd> elements of an HTML page, one string each."""

    KEEP = {"p", "li", "dd"}

    def __init__(self) -> None:
        super().__init__()
        self.out: list[str] = []
        self.depth = 0
        self.buf: list[str] = []

    def handle_starttag(self, tag: str, attrs: list) -> None:
        if tag in self.KEEP:
            if self.depth and self.buf:  # a list inside a paragraph: close the text so far
                self.out.append("".join(self.buf))
                self.buf = []
            self.depth += 1

    def handle_endtag(self, tag: str) -> None:
        if tag in self.KEEP and self.depth:
            self.depth -= 1
            self.out.append("".join(self.buf))
            self.buf = []

    def handle_data(self, data: str) -> None:
        if self.depth:
            self.buf.append(data)


def _html(path: Path) -> list[str]:
    p = _Paragraphs()
    p.feed(path.read_text(encoding="utf-8", errors="replace"))
    return p.out


def _read(root: Path) -> dict[str, list[str]]:
    """{relative path: its raw paragraphs} for each prose file present under `root`."""
    out: dict[str, list[str]] = {}
    topics = root / TOPICS_FILE
    if topics.is_file():
        try:
            out[TOPICS_FILE] = [b for t in _topics(topics) for b in _blocks(t)]
        except (SyntaxError, ValueError, RecursionError):
            pass
    for rel in TEXT_FILES:
        if (root / rel).is_file():
            out[rel] = _blocks((root / rel).read_text(encoding="utf-8", errors="replace"))
    for rel in HTML_FILES:
        if (root / rel).is_file():
            out[rel] = _html(root / rel)
    return out


@lru_cache(maxsize=4)
def _paragraphs(root: Path) -> tuple[tuple[str, str], ...]:
    """(source file, paragraph) for every prose paragraph under `root`, no repeats, stable hash order."""
    seen: set[str] = set()
    keyed = []
    for rel, blocks in _read(root).items():
        for i, block in enumerate(blocks):
            text = _clean(block)
            if text is None or text.lower() in seen:
                continue
            seen.add(text.lower())
            keyed.append((hashlib.sha1(f"{rel}#{i}".encode()).hexdigest(), rel, text))
    keyed.sort()
    return tuple((rel, text) for _, rel, text in keyed)


def prose_sources(root: Path | None = None) -> dict[str, int]:
    """{file: paragraphs used} for the prose files found (an empty dict where none is installed).

    Example:
        >>> sum(prose_sources().values()) == len(prose_texts())
        True
    """
    out: dict[str, int] = {}
    for rel, _ in _paragraphs(root or stdlib_dir()):
        out[rel] = out.get(rel, 0) + 1
    return out


def prose_texts(root: Path | None = None) -> tuple[str, ...]:
    """Every prose paragraph (>= 8 words, ~600 characters at most), deterministic order; () where none is found.

    Example:
        >>> texts = prose_texts()
        >>> len(texts) == len(set(texts)) and all(len(t.split()) >= 8 for t in texts)
        True
    """
    return tuple(text for _, text in _paragraphs(root or stdlib_dir()))


def prose_pairs(root: Path | None = None) -> tuple[tuple[str, str], ...]:
    """(first sentence, rest of the paragraph) of the prose paragraphs that split as the docstring pairs do (a
    4-30 word sentence, then >= 15 words): text that pairs with itself, no labels (the inverse cloze task). A first
    sentence seen before is left out.

    Example:
        >>> all(q and len(d.split()) >= 15 for q, d in prose_pairs())
        True
    """
    out = []
    seen: set[str] = set()  # a sentence that opens two paragraphs would be a question with two answers
    for text in prose_texts(root):
        first = _SENTENCE_END.split(text, maxsplit=1)
        if len(first) == 2 and MIN_QUERY_WORDS <= len(first[0].split()) <= MAX_QUERY_WORDS \
                and len(first[1].split()) >= MIN_BODY_WORDS and first[0].lower() not in seen:
            seen.add(first[0].lower())
            out.append((first[0], first[1]))
    return tuple(out)
