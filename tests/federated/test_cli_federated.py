"""`condense federated`: runs, writes metrics and a model, resumes; bad input exits 2 with one line."""
import json
import os
import subprocess
import sys

import pytest

pytest.importorskip("flwr")

from condense.cli import main

pytestmark = pytest.mark.usefixtures("one_thread")

SMALL = ["--task", "digits", "--task-option", "channels=[8,16,32]", "--clients", "3", "--local-steps", "5"]


def test_cli_runs_writes_metrics_and_resumes(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["federated", *SMALL, "--rounds", "2", "--codec", "int8", "--out", str(out)]) == 0
    captured = capsys.readouterr()
    assert "round 2/2" in captured.err and "federated rounds" in captured.out
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["round"] for r in rows] == [0, 1, 2] and rows[2]["bytes_per_client"] > 0
    assert (out / "model").is_dir() and json.loads((out / "federated.json").read_text())["final"] == rows[2]
    # the same command with more rounds continues
    assert main(["federated", *SMALL, "--rounds", "3", "--codec", "int8", "--out", str(out)]) == 0
    assert "resuming after round 2" in capsys.readouterr().err
    assert len((out / "metrics.jsonl").read_text().splitlines()) == 4


def test_round_lines_reach_a_redirected_log(tmp_path):
    log = tmp_path / "log.txt"
    with open(log, "w") as f:
        code = subprocess.call([sys.executable, "-m", "condense", "federated", *SMALL, "--rounds", "2", "--out",
                                str(tmp_path / "run")], stdout=f, stderr=subprocess.STDOUT,
                               env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert code == 0
    lines = log.read_text().splitlines()
    assert [sum(line.startswith(f"round {r}/2") for line in lines) for r in range(3)] == [1, 1, 1]


@pytest.mark.parametrize("flags", [["--clients", "0"], ["--rounds", "0"], ["--alpha", "0"], ["--alpha", "-0.5"],
                                   ["--codec", "gzip"], ["--topk-fraction", "0"], ["--set", "split=zipf"]])
def test_bad_input_exits_2_with_one_line(tmp_path, flags, capsys):
    with pytest.raises(SystemExit) as e:  # argparse errors exit from the parser
        code = main(["federated", "--task", "digits", *flags, "--out", str(tmp_path / "x")])
        raise SystemExit(code)
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("condense: error:") and err.count("\n") == 1
    assert not (tmp_path / "x").exists()


def test_a_foreign_out_folder_is_refused_before_any_work(tmp_path, capsys):
    d = tmp_path / "mine"
    d.mkdir()
    (d / "thesis.txt").write_text("precious")
    assert main(["federated", *SMALL, "--rounds", "1", "--out", str(d)]) == 2
    err = capsys.readouterr().err
    assert "exists and is not a condense run folder" in err and err.count("\n") == 1
    assert sorted(p.name for p in d.iterdir()) == ["thesis.txt"]
