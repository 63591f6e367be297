"""Query -> document pairs from the system's English manual pages: real text that is not Python.

Why: a model distilled or calibrated on standard-library docstrings can learn that domain, so a budget checked
only on docstrings says little about a user's own text. A manual page's NAME line ("ls \\- list directory
contents") is a natural query for its DESCRIPTION, written by other people about other software, and every Debian
machine with man pages installed has thousands of them offline. Only sections 1 and 8 in the top folder are read
(the language subfolders hold translations); pages written with the mdoc macros, `.so` redirects and links are
skipped. Pages are taken in a stable hash order of their names with at most `PER_FAMILY` pages per command family
("gcloud", "git", "llvm": the name up to its first `_`, `-` or `.`), so one package's thousands of near-identical
pages cannot make up the set. The pairs depend only on which pages are installed, not on run or machine order.
"""
from __future__ import annotations

import gzip
import hashlib
import re
import warnings
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from condense.data.stdlib_docs import RetrievalSet
from condense.errors import CondenseError

MAN_ROOT = Path("/usr/share/man")
SECTIONS = ("man1", "man8")
PER_FAMILY = 4  # pages per command family at most
MIN_QUERY_WORDS, MAX_QUERY_WORDS = 3, 30
MIN_BODY_WORDS = 15
MAX_BODY_CHARS = 600  # the docstring set's cap: documents of the same length, evaluation time alike
MIN_ASCII_LETTERS = 0.97  # share of letters that are ASCII: English text, not a translation left in man1

_COMMENT = re.compile(r'\\".*$')
_FONT = re.compile(r"\\f(\[[^\]]*\]|\(..|.)")
_SIZE = re.compile(r"\\s[-+]?\d+|\\s\([-+]?\d\d|\\s\[[^\]]*\]")
_STRING = re.compile(r"\\\*(\[[^\]]*\]|\(..|.)")
_REGISTER = re.compile(r"\\n[-+]?(\[[^\]]*\]|\(..|.)")
_NAMED = re.compile(r"\\(\[[^\]]*\]|\(..)")
_NAMED_CHARS = {"em": " - ", "en": "-", "hy": "-", "aq": "'", "lq": '"', "rq": '"', "oq": "'", "cq": "'",
                "dq": '"', "co": "(c)", "rg": "(R)", "tm": "(TM)", "bu": "*", "mi": "-", "pl": "+", "ti": "~",
                "ha": "^", "rs": "\\", "dg": "+", "ga": "`", "at": "@", "sl": "/"}
_SIMPLE = {"\\-": "-", "\\e": "\0", "\\&": "", "\\|": "", "\\^": "", "\\ ": " ", "\\~": " ", "\\0": " ",
           "\\c": "", "\\,": "", "\\/": "", "\\%": "", "\\:": "", "\\'": "'", "\\`": "`", "\\.": "."}
_ESCAPE_REST = re.compile(r"\\.")
_ARGS = re.compile(r'"((?:[^"]|"")*)"|(\S+)')
_JOINED = {"BR", "RB", "BI", "IB", "IR", "RI"}  # alternating fonts: the arguments touch, no spaces between
_TEXT_MACROS = {"B", "I", "SM", "SB"} | _JOINED
_BREAKS = {"PP", "P", "LP", "sp", "br", "HP", "RS", "RE", "in", "ti", "ne", "ad", "na", "hy", "nh", "UE", "ME"}
_LIST_START = {"TP", "IP", "TQ", "SS", "SH", "nf", "EX", "TS"}  # where DESCRIPTION's prose ends
_SKIP_BLOCKS = {"nf": "fi", "EX": "EE", "TS": "TE", "EQ": "EN", "de": ".."}


@dataclass(frozen=True)
class ManPage:
    """One page's query (what the NAME line says it does) and document (its DESCRIPTION prose, capped)."""

    name: str  # e.g. "ls.1"
    query: str
    document: str


def unescape(text: str) -> str:
    """Roff escapes -> plain text: fonts, sizes, strings and registers dropped, named characters mapped.

    Example:
        >>> unescape(r"list \\fBdirectory\\fR contents\\(emsee \\fIls\\-l\\fP")
        'list directory contents - see ls-l'
    """
    text = _COMMENT.sub("", text)
    text = _FONT.sub("", text)
    text = _SIZE.sub("", text)
    text = _STRING.sub("", text)
    text = _REGISTER.sub("", text)
    text = _NAMED.sub(lambda m: _NAMED_CHARS.get(m.group(1).strip("[]()"), ""), text)
    for k, v in _SIMPLE.items():
        text = text.replace(k, v)
    return _ESCAPE_REST.sub("", text).replace("\0", "\\")  # \e kept aside from the escapes dropped


def _macro_text(name: str, rest: str) -> str:
    args = [a.replace('""', '"') if a is not None and q else (a or q)
            for q, a in ((m.group(1), m.group(2)) for m in _ARGS.finditer(rest))]
    args = [a for a in args if a]
    return unescape(("" if name in _JOINED else " ").join(args))


def sections(source: str) -> dict[str, list[list[str]]]:
    """A man(7) page -> {SECTION NAME: paragraphs (each a list of text lines)}; prose after a list, table or
    example block in a section is not kept (a paragraph list ends there).

    Example:
        >>> sections('.SH NAME\\nls \\\\- list\\n.SH DESCRIPTION\\n.PP\\nList \\\\fBfiles\\\\fR.\\n.TP\\n-a')
        {'NAME': [['ls - list']], 'DESCRIPTION': [['List files.']]}
    """
    out: dict[str, list[list[str]]] = {}
    current: str | None = None
    para: list[str] = []
    closed = False  # the section's prose has ended (a list or block began)
    skip_until: str | None = None

    def flush() -> None:
        nonlocal para
        if current is not None and para and not closed:
            out[current].append(para)
        para = []

    for raw in source.splitlines():
        line = raw.rstrip()
        if skip_until is not None:
            if line.lstrip(".'").split(maxsplit=1)[:1] == [skip_until] or (skip_until == ".." and line == ".."):
                skip_until = None
            continue
        if line[:1] in (".", "'"):
            parts = line[1:].lstrip().split(maxsplit=1)
            name, rest = (parts + ["", ""])[:2] if parts else ("", "")
            if name.startswith('\\"') or not name:
                continue
            if name == "SH":
                flush()
                current = " ".join(_macro_text("", rest).upper().split())
                out.setdefault(current, [])
                closed = False
                continue
            if name in _SKIP_BLOCKS:
                flush()
                closed = closed or name != "de"
                skip_until = _SKIP_BLOCKS[name]
                continue
            if name in _LIST_START:
                flush()
                closed = True
                continue
            if name in _BREAKS:
                flush()
                continue
            if name in _TEXT_MACROS:
                text = _macro_text(name, rest)
                if text.strip():
                    para.append(text)
            continue  # any other request: formatting only
        if not line.strip():
            flush()
            continue
        text = unescape(line)
        if text.strip():
            para.append(text)
    flush()
    return out


def _words(text: str) -> str:
    return " ".join(text.split())


def _cap(text: str, limit: int = MAX_BODY_CHARS) -> str:
    if len(text) <= limit:
        return text
    cut = text[:limit + 1].rsplit(" ", 1)[0]
    return cut if cut else text[:limit]


def _english(text: str) -> bool:
    letters = [c for c in text if c.isalpha()]
    return bool(letters) and sum(c.isascii() for c in letters) >= MIN_ASCII_LETTERS * len(letters)


def parse_page(name: str, source: str) -> ManPage | None:
    """(query, document) of one page's roff source, or None where it has no fair pair (mdoc, a `.so` redirect,
    no NAME description, a DESCRIPTION under 15 words, or not English).

    Example:
        >>> src = ".TH LS 1\\n.SH NAME\\nls \\\\- list directory contents\\n.SH DESCRIPTION\\n" + "Word " * 20
        >>> parse_page("ls.1", src).query
        'list directory contents'
    """
    head = source[:4000]
    if re.search(r"^\.(Dd|Sh)\b", head, re.M) or re.match(r"\s*\.so\s", source):
        return None
    secs = sections(source)
    name_text = _words(" ".join(" ".join(p) for p in secs.get("NAME", [])))
    _, dash, query = name_text.partition(" - ")
    query = _words(query).rstrip(".")
    if not dash or not MIN_QUERY_WORDS <= len(query.split()) <= MAX_QUERY_WORDS:
        return None
    body = _words(" ".join(" ".join(p) for p in secs.get("DESCRIPTION", [])))
    if len(body.split()) < MIN_BODY_WORDS or not _english(query + " " + body):
        return None
    return ManPage(name, query, _cap(body))


def family(page: str) -> str:
    """The command family a page belongs to: its name up to the first `_`, `-` or `.` ("git-log.1" -> "git")."""
    return re.split(r"[_.\-]", page, maxsplit=1)[0].lower()


def _stable_key(page: str) -> str:
    return hashlib.sha1(page.encode("utf-8")).hexdigest()


def page_files(root: Path) -> list[Path]:
    """Regular gzipped or plain page files of `SECTIONS` under `root`, links left out, in stable hash order of name
    with at most `PER_FAMILY` per family."""
    files = []
    for sec in SECTIONS:
        d = root / sec
        if not d.is_dir():
            continue
        for p in d.iterdir():
            if p.is_file() and not p.is_symlink():
                files.append(p)
    files.sort(key=lambda p: (_stable_key(_page_name(p)), p.name))
    taken: dict[str, int] = {}
    out = []
    for p in files:
        fam = family(_page_name(p))
        if taken.get(fam, 0) < PER_FAMILY:
            taken[fam] = taken.get(fam, 0) + 1
            out.append(p)
    return out


def _page_name(path: Path) -> str:
    return path.name[:-3] if path.name.endswith(".gz") else path.name


def _read(path: Path) -> str | None:
    try:
        data = gzip.decompress(path.read_bytes()) if path.name.endswith(".gz") else path.read_bytes()
    except (OSError, EOFError, gzip.BadGzipFile):
        return None
    return data.decode("utf-8", errors="replace")


@lru_cache(maxsize=8)
def man_pairs(n: int, root: Path) -> tuple[ManPage, ...]:
    """Up to `n` pages' pairs, in page order (`page_files`), with repeated queries or documents dropped.

    Reads pages only until `n` pairs are found, so the set is quick to build (about a second for 500 pairs).
    """
    seen_q: set[str] = set()
    seen_d: set[str] = set()
    out: list[ManPage] = []
    for path in page_files(root):
        if len(out) >= n:
            break
        source = _read(path)
        page = parse_page(_page_name(path), source) if source is not None else None
        if page is None:
            continue
        qk, dk = page.query.lower(), page.document.lower()
        if qk in seen_q or dk in seen_d:
            continue
        seen_q.add(qk)
        seen_d.add(dk)
        out.append(page)
    return tuple(out)



def _missing(need: str, found: str, root: Path) -> str:
    return (f"the off-source evaluation set needs {need} from English manual pages with a NAME line and a "
            f"DESCRIPTION under {root}/{{{','.join(SECTIONS)}}}, found {found}; install the system's man pages "
            "(Debian: remove the `path-exclude=/usr/share/man/*` line from /etc/dpkg/dpkg.cfg.d/ if present, then "
            "`apt-get install --reinstall man-db coreutils util-linux`)")


def _pages(k: int, enough, root: Path, keep=lambda p: True) -> list[ManPage]:
    """The first pages (in `man_pairs` order) passing `keep`, until `enough(pages)` or the pages run out; reads
    `k` pages' worth first, twice as many each time that is not enough."""
    while True:
        pages = man_pairs(k, root)
        kept = [p for p in pages if keep(p)]
        if enough(kept) or len(pages) < k:
            return kept
        k *= 2


def retrieval_set(n: int = 500, root: Path | None = None, exclude: frozenset[str] = frozenset()) -> RetrievalSet:
    """`n` (NAME description -> DESCRIPTION) pairs from manual pages, none with a text (lower-cased) in `exclude`.

    `exclude` holds the texts a task trains or calibrates on, so that no evaluation text is one of them.
    Raises a CondenseError naming the fix where the pages are missing.

    Example:
        >>> s = retrieval_set(20)  # doctest: +SKIP
        >>> len(s), s.sources[0]  # doctest: +SKIP
        (20, 'openssl-prime.1ssl')
    """
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise CondenseError(f"n must be a positive integer, got {n!r}; e.g. n=500")
    root = MAN_ROOT if root is None else Path(root)
    pages = _pages(n + n // 8 + 8, lambda ps: len(ps) >= n, root,
                   lambda p: p.query.lower() not in exclude and p.document.lower() not in exclude)[:n]
    if len(pages) < n:
        raise CondenseError(_missing(f"{n} pairs", str(len(pages)), root) + f", or ask for at most {len(pages)}")
    return RetrievalSet(tuple(p.query for p in pages), tuple(p.document for p in pages),
                        tuple(p.name for p in pages))


def _chunk(p: ManPage) -> bytes:
    return f"{p.query}\n{p.document}\n\n".encode("utf-8")


def text_corpus(max_bytes: int, root: Path | None = None) -> bytes:
    """The first `max_bytes` of manual-page text (per page: NAME description, DESCRIPTION prose, a blank line) in
    page order: English text that is not Python, for a language model's held-out score.

    Example:
        >>> text_corpus(40)  # doctest: +SKIP
        b'compute prime numbers\\nThis command checks'
    """
    if isinstance(max_bytes, bool) or not isinstance(max_bytes, int) or max_bytes < 1:
        raise CondenseError(f"max_bytes must be a positive integer, got {max_bytes!r}")
    root = MAN_ROOT if root is None else Path(root)
    pages = _pages(max_bytes // 400 + 8, lambda ps: sum(len(_chunk(p)) for p in ps) >= max_bytes, root)
    data = b"".join(_chunk(p) for p in pages)
    if len(data) < max_bytes:
        raise CondenseError(_missing(f"{max_bytes} bytes of text", f"{len(data)} bytes", root)
                            + f", or ask for at most {len(data)}")
    return data[:max_bytes]


_warned: set[str] = set()


def warn_missing(task: str, metric: str, error: Exception) -> None:
    """Warn once per process and reason that `task` measures no `metric` (its second source is missing)."""
    msg = f"{task}: no second evaluation source ({metric} not measured): {error}"
    if msg not in _warned:
        _warned.add(msg)
        warnings.warn(msg, stacklevel=3)
