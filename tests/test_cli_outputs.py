"""Output paths are refused before any work (exit 2, one line, nothing written); a run folder's model and report
come from the same run, and `condense info` says so when a killed run left them apart."""
import json
import os
import subprocess
import sys

import pytest

import condense
from condense.cli import main


def _tree(p):
    return sorted(str(x.relative_to(p)) for x in p.rglob("*"))


COMMANDS = {  # every command that writes, with the flag that names where
    "quantize": ["quantize", "--task", "condense.testing:tiny_task", "--out"],
    "prune": ["prune", "--task", "condense.testing:tiny_task", "--out"],
    "distill": ["distill", "--task", "digits", "--out"],
    "factorize": ["factorize", "--task", "condense.testing:tiny_task", "--out"],
    "early-exit": ["early-exit", "--task", "digits", "--out"],
    "run": ["run", "recipes/digits.yaml", "--out"],
    "search": ["search", "--task", "condense.testing:tiny_task", "--budget", "1%", "--out"],
    "train": ["train", "--task", "digits", "--steps", "1", "--out"],
    "export": ["export", "--model", "no-such-artifact", "--out"],
    "export.onnx": ["export", "--model", "no-such-artifact", "--out"],
    "measure": ["measure", "--task", "condense.testing:tiny_task", "--json"],
    "demo": ["demo", "--task", "digits", "--runs-dir"],
}


def _bad_paths(tmp_path):
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "thesis.txt").write_text("precious")
    (tmp_path / "file").write_text("a file")
    return {"foreign": (str(foreign), "exists and is not a condense run folder (it holds thesis.txt); choose a new "
                                      "or empty folder"),
            "proc": ("/proc/x", "cannot be written (in /proc)"),
            "file": (str(tmp_path / "file"), "is an existing file, not a folder"),
            "under-file": (str(tmp_path / "file" / "sub"), "is a file, not a folder; choose another path")}


FILE_COMMANDS = ("export.onnx", "measure")  # a file may replace a file, or be new in any folder


@pytest.mark.parametrize("command,kind", [(c, k) for c in sorted(COMMANDS) for k in ("foreign", "proc", "file",
                                          "under-file") if not (c in FILE_COMMANDS and k in ("foreign", "file"))])
def test_unwritable_or_foreign_outputs_are_refused_before_any_work(command, kind, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # recipes/ is relative
    path, needle = _bad_paths(tmp_path)[kind]
    if command in FILE_COMMANDS:
        path += "/out.onnx" if command == "export.onnx" else "/m.json"
    if command == "demo":  # the run folder is RUNS_DIR/demo-digits
        if kind == "foreign":
            (tmp_path / "runs" / "demo-digits").mkdir(parents=True)
            (tmp_path / "runs" / "demo-digits" / "thesis.txt").write_text("precious")
            path = str(tmp_path / "runs")
        elif kind == "file":
            needle = "is a file, not a folder; choose another path"
    before = _tree(tmp_path)
    code = main([*COMMANDS[command], path])
    err = capsys.readouterr().err
    assert code == 2, err
    assert needle in err and len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
    assert _tree(tmp_path) == before  # nothing written


def test_the_real_command_refuses_a_foreign_out_folder(tmp_path):
    d = tmp_path / "mine"
    d.mkdir()
    (d / "thesis.txt").write_text("precious")
    r = subprocess.run([sys.executable, "-m", "condense", "quantize", "--task", "digits", "--out", str(d)],
                       capture_output=True, text=True, env=dict(os.environ), timeout=300)
    assert r.returncode == 2 and r.stderr == (f"condense: error: output folder {d} exists and is not a condense run "
                                              "folder (it holds thesis.txt); choose a new or empty folder\n")
    assert _tree(tmp_path) == ["mine", "mine/thesis.txt"]


def test_a_run_killed_between_model_and_report_is_detected_and_a_rerun_mends_it(tmp_path, capsys, monkeypatch):
    from condense.measurement.api import MeasureConfig
    from condense.pipeline import Step, run_pipeline
    from condense.quantize.dynamic import DynamicInt8Config
    from condense.tasks import get_task

    task = get_task("condense.testing:tiny_task")
    mcfg = MeasureConfig(batch_sizes=(1,), repeats=1, warmup=0, min_time_s=0, memory=False)
    d = tmp_path / "run"

    def run():
        return run_pipeline(task, [Step("fp32"), Step("int8", DynamicInt8Config())], d, name="run",
                            measure_config=mcfg)

    run()
    first = json.loads((d / "report.json").read_text())["run_id"]
    assert condense.core.artifact.read_metadata(d / "model")["metadata"]["run_id"] == first
    assert main(["info", str(d)]) == 0
    assert f"run:        {first}" in capsys.readouterr().out

    import condense.pipeline as pl

    def killed(*a, **k):
        raise KeyboardInterrupt  # stands for SIGKILL after the model was saved, before the report
    monkeypatch.setattr(pl, "render_html", killed)
    with pytest.raises(KeyboardInterrupt):
        run()
    capsys.readouterr()
    second = condense.core.artifact.read_metadata(d / "model")["metadata"]["run_id"]
    assert second != first and json.loads((d / "report.json").read_text())["run_id"] == first
    assert main(["info", str(d)]) == 2
    err = capsys.readouterr().err
    assert err.strip() == (f"condense: error: {d / 'report.json'} (run {first}) and {d / 'model'} (run {second}) "
                           "come from different runs: the last run was interrupted before its record was written; "
                           "rerun the command that made this folder")

    monkeypatch.undo()
    run()
    third = json.loads((d / "report.json").read_text())["run_id"]
    assert condense.core.artifact.read_metadata(d / "model")["metadata"]["run_id"] == third != second
    assert main(["info", str(d)]) == 0


def test_train_records_one_run_id_in_its_model_and_train_json(tmp_path, capsys, monkeypatch):
    run = tmp_path / "run"
    args = ["train", "--task", "digits", "--steps", "2", "--set", "precision=fp32", "--set", "tensorboard=false",
            "--out", str(run)]
    assert main(args) == 0
    rid = json.loads((run / "train.json").read_text())["run_id"]
    assert condense.core.artifact.read_metadata(run / "model")["metadata"]["run_id"] == rid
    capsys.readouterr()
    assert main(["info", str(run)]) == 0 and f"run:        {rid}" in capsys.readouterr().out

    import condense.train.api as api

    def killed(*a, **k):
        raise KeyboardInterrupt  # stands for SIGKILL after the model was saved, before train.json
    monkeypatch.setattr(api, "atomic_write_json", killed)
    assert main(args) == 130
    capsys.readouterr()
    assert main(["info", str(run)]) == 2
    err = capsys.readouterr().err
    assert f"train.json (run {rid}) and" in err and "come from different runs" in err
