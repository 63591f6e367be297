"""Prose the standard library ships besides docstrings: what is read, what is left out, order, pairs."""
from pathlib import Path

from condense.data import stdlib_prose as sp

PARA = "The interpreter reads each statement of the program in turn and executes it before it reads the next one."
NEXT = ("It keeps the names it binds in a namespace that lasts as long as the block that created them, and it "
        "looks names up there first.")


def _root(tmp_path: Path) -> Path:
    root = tmp_path / "lib"
    (root / "pydoc_data").mkdir(parents=True)
    topics = {"b": f"Heading\n*******\n\n{PARA} {NEXT}\n\n   if x:\n       pass  # indented code is not prose\n",
              "a": "Short line.\n\nx ::= y | z ; grammar ( ) [ ] { } :: = = = = = = = = = = = = = = = = = =\n"}
    (root / "pydoc_data" / "topics.py").write_text(f"# generated\ntopics = {topics!r}\n")
    (root / "LICENSE.txt").write_text(f"TITLE\n=====\n\n- {NEXT}\n\n{PARA}\n")  # PARA again: kept once
    (root / "idlelib").mkdir()
    (root / "idlelib" / "help.html").write_text(
        "<html><body><h1>IDLE</h1><p>The editor colours the <em>keywords</em> of the language and shows a tip "
        "with the arguments of a call.</p><ul><li>one two</li></ul></body></html>")
    return root


def test_paragraphs_from_each_kind_of_file_code_and_headings_left_out(tmp_path):
    root = _root(tmp_path)
    texts = sp.prose_texts(root)
    assert sorted(texts) == sorted([f"{PARA} {NEXT}", NEXT, PARA,
                                    "The editor colours the keywords of the language and shows a tip with the "
                                    "arguments of a call."])
    assert sp.prose_sources(root) == {"pydoc_data/topics.py": 1, "LICENSE.txt": 2, "idlelib/help.html": 1}
    assert sp.prose_texts(root) == texts  # deterministic
    assert sp.prose_pairs(root) == ((PARA, NEXT),)  # first sentence -> rest; one-sentence paragraphs make no pair


def test_missing_files_are_skipped_and_none_found_gives_nothing(tmp_path):
    root = _root(tmp_path)
    (root / "LICENSE.txt").unlink()
    (root / "pydoc_data" / "topics.py").write_text("topics = {")  # unparsable: skipped, not an error
    assert sp.prose_sources(root) == {"idlelib/help.html": 1}
    assert sp.prose_texts(tmp_path / "empty") == () and sp.prose_pairs(tmp_path / "empty") == ()


def test_installed_python_ships_enough_prose_outside_docstrings():
    from condense.data.stdlib_docs import unlabelled_texts

    texts = sp.prose_texts()
    assert sp.prose_sources().get(sp.TOPICS_FILE, 0) >= 500  # the language reference is in every CPython
    assert len(texts) == len(set(texts)) >= 1000 and len(sp.prose_pairs()) >= 300
    assert not set(texts) & set(unlabelled_texts())  # other text than the docstrings
