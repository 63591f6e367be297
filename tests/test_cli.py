"""The CLI run as a user runs it: a subprocess, exit codes, one-line errors, no tracebacks."""
import json
import os
import subprocess
import sys

import pytest


def run(*args, cwd=None):
    env = dict(os.environ)
    return subprocess.run([sys.executable, "-m", "condense", *args], capture_output=True, text=True, env=env,
                          cwd=cwd, timeout=600)


def test_help_and_tasks():
    r = run("--help")
    assert r.returncode == 0 and "demo" in r.stdout and "examples:" in r.stdout
    r = run("tasks")
    assert r.returncode == 0 and [ln.split()[0] for ln in r.stdout.splitlines()] == ["digits", "minilm", "minilm-topics", "tinygpt"]


@pytest.mark.parametrize("args,needle", [
    (["measure", "--task", "nope"], "unknown task 'nope'; choose one of"),
    (["measure", "--task", "nosuchmodule:make"], "cannot import module 'nosuchmodule'"),
    (["measure", "--model", "/nonexistent/artifact"], "no condense artifact at /nonexistent/artifact"),
    (["measure", "--task", "digits", "--batch-sizes", "0,x"], "invalid batch sizes '0,x'"),
    (["measure", "--task", "digits", "--task-option", "novalue"], "must be KEY=VALUE"),
    (["info", "/nonexistent"], "no condense artifact"),
    (["demo", "--name", "../escape"], "run name '../escape' must be"),
])
def test_bad_input_gives_one_clear_line_and_nonzero_exit(args, needle):
    r = run(*args)
    assert r.returncode != 0
    assert needle in r.stderr
    assert "Traceback" not in r.stderr + r.stdout


def test_corrupt_artifact_is_reported(tmp_path):
    d = tmp_path / "bad"
    d.mkdir()
    (d / "condense.json").write_text("{broken")
    r = run("measure", "--model", str(d))
    assert r.returncode == 2 and "is corrupt" in r.stderr and "Traceback" not in r.stderr


def test_task_factory_from_current_folder_and_measure_json(tmp_path):
    (tmp_path / "mytasks.py").write_text("from condense.testing import tiny_task\n\ndef make():\n"
                                         "    return tiny_task(seed=1)\n")
    out = tmp_path / "m.json"
    r = run("measure", "--task", "mytasks:make", "--batch-sizes", "1,2", "--repeats", "2", "--json", str(out),
            cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    m = json.loads(out.read_text())
    assert m["params_total"] == 8 * 16 + 16 + 16 * 4 + 4 and set(m["latency"]) == {"1", "2"}


def test_quantize_then_measure_and_info_on_digits(tmp_path):
    out = tmp_path / "digits-int8"
    r = run("quantize", "--task", "digits", "--out", str(out), "--batch-sizes", "1,16", "--repeats", "2")
    assert r.returncode == 0, r.stderr
    assert (out / "report.html").exists() and (out / "model" / "condense.json").exists()
    r = run("info", str(out))
    assert r.returncode == 0 and '"type": "Int8Config"' in r.stdout  # the default scheme: measured backend choice
    r = run("measure", "--model", str(out), "--batch-sizes", "4", "--repeats", "2", "--json", "-")
    assert r.returncode == 0, r.stderr
    m = json.loads(r.stdout[r.stdout.index("{\n"):].rsplit("}", 1)[0] + "}")
    assert m["quality"]["accuracy"] > 0.9


def test_prepare_and_measure_tinygpt_reports_tokens_per_second(tmp_path):
    r = run("prepare", "tinygpt", "--preset", "tiny")
    assert r.returncode == 0, r.stderr
    assert "bits_per_byte" in r.stdout
    r = run("measure", "--task", "tinygpt", "--task-option", "preset=tiny", "--batch-sizes", "1", "--repeats", "2",
            "--json", "-")
    assert r.returncode == 0, r.stderr
    m = json.loads(r.stdout[r.stdout.index("{\n"):].rsplit("}", 1)[0] + "}")
    assert m["tokens_per_s"]["1"] > 0 and m["quality"]["bits_per_byte"] < 8
    d = m["decode"]["1"]  # time to first token and the share of the memory roof, from the same run
    assert d["ttft_s"] > 0 and abs(d["roofline"] - m["tokens_per_s"]["1"] * d["weight_bytes"] / d["bandwidth_bps"]) < 1e-6


def test_unknown_preset_names_the_valid_ones():
    r = run("prepare", "tinygpt", "--task-option", "preset=huge")
    assert r.returncode == 2 and "huge" in r.stderr and "tiny" in r.stderr and "Traceback" not in r.stderr
    r = run("prepare", "tinygpt", "--preset", "tiny", "--task-option", "preset=large")
    assert r.returncode == 2 and "disagree" in r.stderr and "Traceback" not in r.stderr
