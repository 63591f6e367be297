"""`condense distill / factorize / early-exit` as a user runs them: bad input is one line; a run saves and reloads."""
import json
import os
import subprocess
import sys

import pytest


def run(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "condense", *args], capture_output=True, text=True,
                          env=dict(os.environ), cwd=cwd, timeout=600)


@pytest.mark.parametrize("args,needle", [
    (["distill", "--task", "digits", "--set", "temperature=0"], "temperature must be > 0, got 0"),
    (["factorize", "--task", "digits", "--set", "rank_ratio=0.5", "--set", "energy=0.9"],
     "give one of rank_ratio, energy or rank"),
    (["early-exit", "--task", "digits", "--set", "criterion=margin"], "criterion must be one of"),
])
def test_bad_config_is_one_clear_line(args, needle, tmp_path, capsys):
    from condense.cli import main  # in-process (a subprocess per case costs seconds; the run below uses one)

    assert main([*args, "--out", str(tmp_path / "x")]) == 2
    err = capsys.readouterr().err
    assert needle in err and len(err.strip().splitlines()) == 1 and "Traceback" not in err


def test_factorize_run_saves_an_artifact_that_reloads_and_measures(tmp_path):
    (tmp_path / "mytasks.py").write_text("from condense.testing import tiny_task\n\ndef make():\n"
                                         "    return tiny_task(seed=1)\n")
    out = tmp_path / "svd"
    r = run("factorize", "--task", "mytasks:make", "--set", "rank=2", "--include", "fc1", "--out", str(out),
            "--batch-sizes", "1", "--repeats", "2", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    # the artifact records the user's own mytasks:make: rebuilding it from the file takes --trust-task
    r = run("measure", "--model", str(out), "--trust-task", "--batch-sizes", "1", "--repeats", "2", "--json", "-",
            cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    m = json.loads(r.stdout[r.stdout.index("{\n"):].rsplit("}", 1)[0] + "}")
    assert m["params_total"] == 2 * (8 + 16) + 16 + 16 * 4 + 4  # fc1 as rank-2 factors, fc2 dense
