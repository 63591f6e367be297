"""A small search shared by worker processes through a real PostgreSQL server (started by the fixture)."""
from __future__ import annotations

import subprocess
import sys

import optuna

from condense.searching.storage import storage_url

from .conftest import cli_env


def test_two_processes_share_one_study_in_postgres(postgres_url, tmp_path):
    # each trial evaluates for >= 1 s, so the 8 trials outlast the later processes' start-up (with the plain tiny
    # task, whose trials take milliseconds, the first process to start could finish the whole budget alone)
    common = ["--task", "condense.testing:slow_tiny_task", "--budget", "20%", "--trials", "8", "--knobs",
              "prune", "--batch-size", "8", "--storage", postgres_url, "--study", "shared",
              "--set", "timing_min_s=0.1", "--set", "sensitivity=false", "--set", "final_min_s=0",
              "--set", "final_repeats=3"]
    procs = [subprocess.Popen([sys.executable, "-m", "condense.cli", "search", *common, *extra, "--out",
                               str(tmp_path / name)], env=cli_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True)
             for name, extra in (("a", ["--workers", "2"]), ("b", []))]
    outs = [p.communicate(timeout=300) for p in procs]
    for p, (out, err) in zip(procs, outs):
        assert p.returncode == 0, err[-2000:]
    study = optuna.load_study(study_name="shared", storage=storage_url(postgres_url, None))
    finished = [t for t in study.trials if t.state.name in ("COMPLETE", "FAIL")]
    assert 8 <= len(finished) <= 11  # one budget for all workers (each may finish the trial it had started)
    workers = {t.user_attrs["worker"].rsplit(":", 1)[0] for t in finished}  # host:pid of the process
    assert len(workers) >= 2, workers  # trials from more than one process landed in this one study
    assert sorted(t.number for t in study.trials) == list(range(len(study.trials)))
