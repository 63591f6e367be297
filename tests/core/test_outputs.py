"""Output paths checked before work (`check_output_dir` / `check_output_file`) and run folders whose model and
record can be matched (`run_mismatch`)."""
import json
import os

import pytest

import condense
from condense.core.outputs import check_output_dir, check_output_file, run_mismatch
from condense.errors import CondenseError
from condense.testing import TinyMLP


def _tree(p):
    return sorted(str(x.relative_to(p)) for x in p.rglob("*"))


def test_new_empty_and_condense_run_folders_are_accepted(tmp_path):
    assert check_output_dir(tmp_path / "a" / "b") == tmp_path / "a" / "b"
    assert not (tmp_path / "a").exists()  # nothing written
    (tmp_path / "empty").mkdir()
    check_output_dir(tmp_path / "empty")
    for marker in ("report.json", "train.json", "metrics.jsonl", "search.db"):
        d = tmp_path / f"run-{marker}"
        d.mkdir()
        (d / marker).write_text("{}")
        (d / "notes.txt").write_text("a user's file next to condense's outputs")
        check_output_dir(d)
    condense.save(TinyMLP(), tmp_path / "run-model" / "model")
    check_output_dir(tmp_path / "run-model")
    before = _tree(tmp_path)
    check_output_dir(tmp_path / "run-model")
    assert _tree(tmp_path) == before  # the write probe leaves nothing


def test_a_folder_of_other_files_is_refused_naming_the_fix(tmp_path):
    d = tmp_path / "mine"
    (d / "sub").mkdir(parents=True)
    for n in ("a.txt", "b.txt", "c.txt"):
        (d / n).write_text("precious")
    with pytest.raises(CondenseError, match=r"exists and is not a condense run folder \(it holds a.txt, b.txt, "
                                            r"c.txt, \.\.\.\); choose a new or empty folder"):
        check_output_dir(d)
    with pytest.raises(CondenseError, match="holds files that are not a condense artifact"):
        (tmp_path / "r" / "model").mkdir(parents=True)
        (tmp_path / "r" / "model" / "config.json").write_text("{}")  # e.g. a Hugging Face checkout
        check_output_dir(tmp_path / "r")
    with pytest.raises(CondenseError, match="is a file where condense writes a folder"):
        (tmp_path / "f").mkdir()
        (tmp_path / "f" / "report.json").write_text("{}")
        (tmp_path / "f" / "model").write_text("not a folder")
        check_output_dir(tmp_path / "f")


def test_export_folders_accept_an_earlier_export(tmp_path):
    d = tmp_path / "onnx"
    d.mkdir()
    (d / "model.onnx").write_bytes(b"x")
    check_output_dir(d, kind="export")
    with pytest.raises(CondenseError, match="not a condense run folder"):
        check_output_dir(d)


@pytest.mark.parametrize("bad,needle", [
    ("/proc/x", "cannot be written \\(in /proc\\)"),
    ("FILE", "is an existing file, not a folder"),
    ("FILE/sub", "cannot be created: .* is a file, not a folder"),
])
def test_paths_that_cannot_be_written_are_refused(tmp_path, bad, needle):
    (tmp_path / "FILE").write_text("x")
    path = bad if bad.startswith("/") else str(tmp_path / bad)
    with pytest.raises(CondenseError, match=needle):
        check_output_dir(path)
    with pytest.raises(CondenseError, match="cannot be"):
        check_output_file(f"{path}/m.json")


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_a_read_only_folder_is_refused(tmp_path):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    try:
        with pytest.raises(CondenseError, match="cannot be written"):
            check_output_dir(ro / "run")
    finally:
        ro.chmod(0o755)


def test_an_existing_folder_is_not_an_output_file(tmp_path):
    with pytest.raises(CondenseError, match="is an existing folder; give a file path"):
        check_output_file(tmp_path)
    assert check_output_file(tmp_path / "new" / "m.json") == tmp_path / "new" / "m.json"


def test_run_mismatch_compares_the_run_ids_of_model_and_record(tmp_path):
    condense.save(TinyMLP(), tmp_path / "model", metadata={"run_id": "aaa"})
    assert run_mismatch(tmp_path) is None  # no record yet
    (tmp_path / "train.json").write_text(json.dumps({"run_id": "aaa"}))
    assert run_mismatch(tmp_path) is None
    (tmp_path / "report.json").write_text(json.dumps({"run_id": "bbb"}))
    assert "report.json (run bbb) and" in run_mismatch(tmp_path) and "(run aaa) come from different runs" in \
        run_mismatch(tmp_path)
    (tmp_path / "report.json").write_text(json.dumps({"name": "written before run ids"}))
    assert run_mismatch(tmp_path) is None
