"""Manual-page retrieval pairs: roff parsing, which pages count, per-family cap, determinism, clear errors."""
import gzip
import os
import shutil
from pathlib import Path

import pytest

from condense.data import manpages as mp
from condense.errors import CondenseError

BODY = "This command reads every file named on its command line and writes a short report of what it found there."


def page(name: str, query: str, body: str = BODY, extra: str = "") -> str:
    return (f'.\\" generated\n.TH {name.upper()} 1 "2024" "tools" "User Commands"\n.SH NAME\n{name} \\- {query}\n'
            f".SH SYNOPSIS\n.B {name}\n[\\fIOPTION\\fR]\n.SH DESCRIPTION\n.PP\n{body}\n{extra}"
            ".TP\n\\fB\\-a\\fR\nan option, not prose\n.SH SEE ALSO\nls(1)\n")


def write(root: Path, rel: str, text: str, gz: bool = True) -> Path:
    path = root / (rel + (".gz" if gz else ""))
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(gzip.compress(text.encode()) if gz else text.encode())
    return path


@pytest.fixture(autouse=True)
def _fresh_cache():
    mp.man_pairs.cache_clear()
    yield
    mp.man_pairs.cache_clear()


def test_roff_escapes_fonts_and_macros_become_plain_text():
    src = (".SH NAME\nfoo \\- frob the \\fBwidgets\\fP\n.SH \"DESCRIPTION\"\n.PP\n"
           "\\fBfoo\\fR reads \\*(lqfiles\\*(rq \\(em see\n.BR bar (1)\nand\n.I quoted \"two words\"\n"
           "\\s-1SMALL\\s0 text \\e end\\&.\n.nf\ncode block dropped\n.fi\nafter the block\n")
    secs = mp.sections(src)
    assert secs["NAME"] == [["foo - frob the widgets"]]
    assert secs["DESCRIPTION"] == [["foo reads files  -  see", "bar(1)", "and", "quoted two words",
                                    "SMALL text \\ end."]]  # prose ends at the .nf block


def test_parse_page_takes_name_description_and_description_prose():
    p = mp.parse_page("frob.1", page("frob", "frob the widgets of a file", extra=".PP\nA second paragraph.\n"))
    assert p == mp.ManPage("frob.1", "frob the widgets of a file", BODY + " A second paragraph.")
    assert mp.parse_page("x.1", page("x", "too short")) is None  # 2 words: no fair query
    assert mp.parse_page("x.1", page("x", "frob the widgets", body="Too few words here.")) is None
    assert mp.parse_page("x.1", ".so man1/other.1\n") is None
    assert mp.parse_page("x.1", ".Dd March 1 2020\n.Dt X 1\n.Sh NAME\n.Nm x\n.Nd frob the widgets\n") is None
    french = page("x", "répertoire de fichiers à lister", body="Lister " + "élément " * 20)
    assert mp.parse_page("x.1", french) is None
    long_body = " ".join(["word"] * 400)
    assert len(mp.parse_page("x.1", page("x", "frob the widgets", body=long_body)).document) <= mp.MAX_BODY_CHARS


def _tree(root: Path) -> None:
    for i in range(6):
        write(root, f"man1/tool{i}.1", page(f"tool{i}", f"do task number {i} for the user", body=BODY + f" Tool {i}."))
    for i in range(6):  # one family: at most PER_FAMILY of these are read
        write(root, f"man1/gcloud_sub{i}.1", page(f"gcloud sub{i}", f"manage cloud thing {i} for projects",
                                                  body=BODY + f" Thing {i}."))
    write(root, "man8/daemon.8", page("daemon", "run the background service", body=BODY + " Daemon."), gz=False)
    write(root, "man1/dup.1", page("dup", "do task number 0 for the user", body=BODY + " Dup."))  # tool0's query
    write(root, "man1/redirect.1", ".so man1/tool0.1\n")
    os.symlink(root / "man1/tool1.1.gz", root / "man1/alias.1.gz")
    write(root, "fr/man1/outil.1", page("outil", "faire la tâche pour l'utilisateur"))  # translations: not read
    write(root, "man3/printf.3", page("printf", "formatted output conversion for C"))  # library calls: not read


def test_pairs_from_a_tree_exact_set_capped_per_family_and_deduplicated(tmp_path):
    _tree(tmp_path)
    got = mp.retrieval_set(11, root=tmp_path)
    names = set(got.sources)
    assert len(got) == 11 and len(names) == 11
    gcloud = {n for n in names if n.startswith("gcloud")}
    assert len(gcloud) == mp.PER_FAMILY
    # tool0 and dup share a query: whichever comes first in hash order is kept, never both
    assert names - gcloud in ({f"tool{i}.1" for i in range(6)} | {"daemon.8"},
                              {f"tool{i}.1" for i in range(1, 6)} | {"daemon.8", "dup.1"})
    assert not names & {"redirect.1", "alias.1", "outil.1", "printf.3"}
    with pytest.raises(CondenseError, match=r"needs 12 pairs .*found 11.*apt-get install.*ask for at most 11"):
        mp.retrieval_set(12, root=tmp_path)  # link, .so, translation, man3 and the repeated query left out
    assert mp.retrieval_set(7, root=tmp_path).sources == got.sources[:7]  # a smaller set is a prefix


def test_pairs_are_deterministic_and_do_not_depend_on_file_order(tmp_path):
    _tree(tmp_path / "a")
    first = mp.retrieval_set(8, root=tmp_path / "a")
    mp.man_pairs.cache_clear()
    assert mp.retrieval_set(8, root=tmp_path / "a") == first
    b = tmp_path / "b"  # the same pages written in reverse order
    for p in sorted((tmp_path / "a").rglob("*"), reverse=True):
        if p.is_file() and not p.is_symlink():
            (b / p.relative_to(tmp_path / "a")).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(p, b / p.relative_to(tmp_path / "a"))
    assert mp.retrieval_set(8, root=b) == first


def test_exclude_keeps_training_texts_out(tmp_path):
    _tree(tmp_path)
    full = mp.retrieval_set(11, root=tmp_path)
    banned = frozenset({full.queries[0].lower(), full.documents[1].lower()})
    got = mp.retrieval_set(9, root=tmp_path, exclude=banned)
    assert got.sources == full.sources[2:]


def test_text_corpus_is_the_pages_text_and_a_missing_folder_names_the_fix(tmp_path):
    _tree(tmp_path)
    pairs = mp.retrieval_set(3, root=tmp_path)
    want = "".join(f"{q}\n{d}\n\n" for q, d in zip(pairs.queries, pairs.documents)).encode()
    assert mp.text_corpus(len(want) - 5, root=tmp_path) == want[:-5]
    with pytest.raises(CondenseError, match=r"needs 50 pairs .*/nowhere/\{man1,man8\}, found 0; install"):
        mp.retrieval_set(50, root=tmp_path / "nowhere")
    with pytest.raises(CondenseError, match=r"needs 100 bytes of text .*found 0 bytes"):
        mp.text_corpus(100, root=tmp_path / "nowhere")


@pytest.mark.skipif(len(mp.page_files(mp.MAN_ROOT)) < 100, reason="this machine has few English man pages")
def test_real_pages_give_fair_pairs():
    s = mp.retrieval_set(40)
    assert len(s) == 40 and len({q.lower() for q in s.queries}) == 40 and len({d.lower() for d in s.documents}) == 40
    assert all(n.rsplit(".", 1)[1][:1] in "18" for n in s.sources)  # sections 1 and 8 only
    for q, d in zip(s.queries, s.documents):
        assert mp.MIN_QUERY_WORDS <= len(q.split()) <= mp.MAX_QUERY_WORDS and "\\" not in q + d
        assert mp.MIN_BODY_WORDS <= len(d.split()) and len(d) <= mp.MAX_BODY_CHARS
