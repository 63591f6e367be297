"""Small real searches on tiny tasks: the pick is within budget, the report and artifact exist, the history
survives an interrupted run and a budget no trial meets."""
from __future__ import annotations

import json
import re
import os
import signal
import subprocess
import sys
import time

import optuna
import pytest
import torch

import condense
from condense.searching import BudgetNotMet, SearchConfig, search
from condense.searching.trials import StageCache, counts
from condense.testing import tiny_task

from .conftest import cli_env

FAST = dict(batch_size=8, timing_repeats=2, timing_min_s=0.0, final_repeats=3, final_min_s=0.0)


def test_search_picks_fastest_within_budget_and_saves_it(tmp_path):
    cfg = SearchConfig(budget="15%", trials=6, knobs=("prune", "quantize"), **FAST)
    t0 = time.perf_counter()
    res = search("condense.testing:tiny_task", cfg, out_dir=tmp_path)
    wall = time.perf_counter() - t0
    base = res.baseline["metric"]
    done = [r for r in res.trials if r["state"] == "COMPLETE"]
    assert len(done) == 6
    assert all(0 < r["duration_s"] for r in done) and sum(r["duration_s"] for r in done) < wall
    ok = [r for r in done if r["metric"] >= base * (1 - 0.15) and r["steps"]]
    assert res.chosen["number"] == min(ok, key=lambda r: r["latency_s"])["number"]
    assert set(res.pareto) <= {r["number"] for r in done} and res.pareto
    # the report records the probes: tiny_task's one prunable group was probed, both int8 schemes apply
    rep = json.loads((tmp_path / "report.json").read_text())
    assert rep["met_budget"] and rep["chosen"]["number"] == res.chosen["number"]
    assert [g["name"] for g in rep["sensitivity"]["prune"]["groups"]] == ["fc1"]
    assert sorted(x["name"] for x in rep["sensitivity"]["quantize"]["layers"]) == ["fc1", "fc2"]
    html = (tmp_path / "report.html").read_text()
    assert "<svg" in html and "Pareto" in html and f"trial {res.chosen['number']}" in html
    # one marker per completed trial plus the baseline; the search's Pareto trials are the highlighted ones
    assert html.count('class="point') == len(done) + 1 and html.count('class="point front"') == len(res.pareto)
    # the saved artifact is the chosen model
    again = condense.load(tmp_path / "model")
    x = tiny_task().batch(8)
    torch.testing.assert_close(again(x), res.model(x))
    assert res.final["within_budget"] is True


def test_budget_no_trial_meets_keeps_history(tmp_path):
    cfg = SearchConfig(budget=0.0, trials=3, knobs=("quantize",), sensitivity=False, **FAST)
    with pytest.raises(BudgetNotMet, match=r"no trial met the 0\.00% budget.*closest, trial \d+.*missing the budget "
                       r"by \d\.\d+%") as e:
        search("tests.searching.search_tasks:fidelity_task", cfg, out_dir=tmp_path)
    assert e.value.result.chosen is None
    rep = json.loads((tmp_path / "report.json").read_text())
    assert rep["met_budget"] is False and len(rep["trials"]) == 3
    study = optuna.load_study(study_name="condense-fidelity", storage=f"sqlite:///{tmp_path}/search.db")
    assert len(study.trials) == 3  # the history is in the database


def test_cli_budget_miss_and_bad_storage_are_one_line_errors(tmp_path, capsys):
    from condense.cli import main

    rc = main(["search", "--task", "tests.searching.search_tasks:fidelity_task", "--budget", "0%", "--trials", "2",
               "--knobs", "quantize", "--batch-size", "8", "--set", "timing_min_s=0", "--set", "sensitivity=false",
               "--out", str(tmp_path / "miss")])
    err = capsys.readouterr().err
    assert rc == 2 and "Traceback" not in err
    assert "no trial met the 0.00% budget" in err and "missing the budget by" in err
    assert (tmp_path / "miss" / "report.html").exists()
    rc = main(["search", "--task", "condense.testing:tiny_task", "--budget", "1%", "--storage",
               "postgresql://u:pw@127.0.0.1:1/nope", "--out", str(tmp_path / "x")])
    err = capsys.readouterr().err
    assert rc == 2 and "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert "cannot reach the search database" in err and "pw" not in err


def test_interrupted_search_resumes_and_the_trial_count_continues(tmp_path):
    db = tmp_path / "search.db"
    args = [sys.executable, "-m", "condense.cli", "search", "--task", "condense.testing:tiny_task", "--budget", "20%",
            "--trials", "30", "--knobs", "prune,quantize", "--batch-size", "8", "--set", "timing_min_s=0.1",
            "--set", "sensitivity=false", "--out", str(tmp_path)]
    # SIGTERM, as a scheduler or `kill` sends it (SIGINT may be ignored in a background job's children)
    proc = subprocess.Popen(args, env=cli_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    seen = []
    for line in proc.stderr:  # one line per trial; interrupt once two trials are in the history
        seen.append(line)
        if line.startswith("trial 1:"):
            break
    proc.send_signal(signal.SIGTERM)
    try:
        out, err = proc.communicate(timeout=60)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate()
    assert proc.returncode == 130, "".join(seen) + err  # interrupted, not finished  # interrupted, not finished
    study = optuna.load_study(study_name="condense-tiny", storage=f"sqlite:///{db}")
    # enqueued first points (one per quantization scheme) the stop came before are WAITING: never started, they
    # run first when the search resumes
    before = {t.number: t.params for t in study.trials if t.state.name != "WAITING"}
    assert 2 <= len(before) < 30 and all(t.state.name != "RUNNING" for t in study.trials)
    # the trial the stop cut short (if one was running) failed without an error of its own: it does not count
    cut = [t.number for t in study.trials if not counts(t) and t.state.name != "WAITING"]
    assert all(t.state.name == "FAIL" and "error" not in t.user_attrs for t in study.trials if t.number in cut)
    assert len(cut) <= 1
    cfg = SearchConfig(budget="20%", trials=len(before) + 3, knobs=("prune", "quantize"), sensitivity=False, **FAST)
    res = search("condense.testing:tiny_task", cfg, out_dir=tmp_path)
    study = optuna.load_study(study_name="condense-tiny", storage=f"sqlite:///{db}")
    numbers = [t.number for t in study.trials]
    assert numbers == list(range(len(before) + 3 + len(cut)))  # the count continued where the run stopped
    assert sum(counts(t) for t in study.trials) == len(before) + 3
    assert {t.number: t.params for t in study.trials if t.number in before} == before  # nothing lost
    assert len(res.trials) == len(before) + 3 + len(cut)


def test_stage_cache_reuses_shared_prefix_and_matches_direct_application():
    from condense.core.transforms import apply_
    from condense.prune.structured import StructuredConfig
    from condense.quantize.dynamic import DynamicInt8Config

    task = tiny_task()
    base = task.build_model()
    cache = StageCache()
    steps = [StructuredConfig(ratio=0.25), DynamicInt8Config()]
    a = cache.build(base, steps, task)
    b = cache.build(base, steps, task)
    assert cache.hits == 1  # the pruned model was built once
    ref = apply_(apply_(task.build_model(), steps[0], task=task), steps[1], task=task)
    x = task.batch(8)
    torch.testing.assert_close(a(x), ref(x))
    torch.testing.assert_close(b(x), ref(x))
    assert base.fc1.out_features == 16  # the base model is never modified
    none = StageCache(size=0)  # rebuild's cache: nothing kept in memory
    none.build(base, steps, task)
    torch.testing.assert_close(none.build(base, steps, task)(x), ref(x))
    assert none.hits == 0 and not none._items


def test_probes_keep_out_steps_that_alone_break_the_budget(tmp_path):
    # removing 30% of tiny_task's hidden neurons alone changes > 0.5% of its predictions: the probe rules
    # structured pruning out, so no trial prunes, and the search says why instead of naming a "closest" trial
    cfg = SearchConfig(budget="0.5%", trials=3, knobs=("prune",), **FAST)
    with pytest.raises(BudgetNotMet, match="probes ruled every step out") as e:
        search("condense.testing:tiny_task", cfg, out_dir=tmp_path)
    res = e.value.result
    assert res.sensitivity["prune"]["exclude"] == ["fc1"]
    assert res.sensitivity["prune"]["groups"][0]["drop"] > 0.005
    assert all(r["steps"] == [] for r in res.trials) and len(res.trials) == 3


@pytest.mark.parametrize("steps", [0, 30])
def test_distill_knob_trains_the_student_with_the_search_recovery_run(steps):
    from condense.distillation import DistillConfig
    from condense.searching.knobs import Space, suggest_distill

    space = Space(cfg=SearchConfig(finetune={"steps": steps, "lr": 5e-5}, distill_layers=[3, 4]))
    cfg = suggest_distill(optuna.trial.FixedTrial({"distill.use": True, "distill.layers": 3}), space)
    assert cfg.layers == 3 and cfg.layer_criterion == "subset"
    if steps:
        assert (cfg.finetune.steps, cfg.finetune.lr) == (30, 5e-5)
    else:
        assert cfg.finetune == DistillConfig().finetune  # no recovery run (0 steps): DistillConfig's own default
    assert suggest_distill(optuna.trial.FixedTrial({"distill.use": False}), space) is None
    with pytest.raises(ValueError):  # a block count outside the configured choices
        suggest_distill(optuna.trial.FixedTrial({"distill.use": True, "distill.layers": 2}), space)


def test_stage_dir_lets_a_new_worker_load_a_slow_prefix_instead_of_rebuilding_it(tmp_path):
    from condense.core.transforms import apply_
    from condense.prune.structured import StructuredConfig
    from condense.quantize.dynamic import DynamicInt8Config

    task = tiny_task()
    steps = [StructuredConfig(ratio=0.25, importance="activation", reconstruct=True), DynamicInt8Config()]
    first = StageCache(directory=tmp_path / "stages", min_build_s=0.0)
    a = first.build(task.build_model(), steps, task)
    saved = sorted(p.name for p in (tmp_path / "stages").iterdir())
    assert len(saved) == 2 and not any(n.startswith(".") for n in saved)  # both prefixes, no leftovers
    second = StageCache(directory=tmp_path / "stages", min_build_s=0.0)  # another worker: empty memory
    b = second.build(task.build_model(), steps, task)
    assert (second.hits, second.disk_hits) == (0, 1)  # the whole pipeline came from disk
    ref = apply_(apply_(task.build_model(), steps[0], task=task), steps[1], task=task)
    x = task.batch(8)
    torch.testing.assert_close(a(x), ref(x))
    torch.testing.assert_close(b(x), ref(x))

    for d in (tmp_path / "stages").iterdir():  # a damaged stage is rebuilt, not trusted
        (d / "condense.json").write_text("{not json")
    third = StageCache(directory=tmp_path / "stages", min_build_s=0.0)
    c = third.build(task.build_model(), steps, task)
    assert third.disk_hits == 0
    torch.testing.assert_close(c(x), ref(x))
    fourth = StageCache(directory=tmp_path / "stages", min_build_s=0.0)
    fourth.build(task.build_model(), steps, task)
    assert fourth.disk_hits == 1  # saved again by the rebuild


def test_stage_dir_skips_fast_steps(tmp_path):
    from condense.prune.structured import StructuredConfig

    task = tiny_task()
    cache = StageCache(directory=tmp_path / "stages", min_build_s=3600.0)
    cache.build(task.build_model(), [StructuredConfig(ratio=0.25)], task)
    assert not (tmp_path / "stages").exists() or not any((tmp_path / "stages").iterdir())


def _study(tmp_path, name="condense-tiny"):
    from condense.searching.storage import open_storage

    return optuna.load_study(study_name=name, storage=open_storage(f"sqlite:///{tmp_path}/search.db", 30))


QUANT_ONLY = dict(budget="20%", knobs=("quantize",), sensitivity=False, **FAST)


@pytest.mark.filterwarnings("ignore:Heartbeat of storage")  # study.ask() below, as a dead worker's optimize did
def test_stale_running_trials_are_failed_on_resume_and_the_count_completes(tmp_path):
    import sqlite3

    from condense.searching.trials import INTERRUPTED, _process_id

    search("condense.testing:tiny_task", SearchConfig(trials=2, **QUANT_ONLY), out_dir=tmp_path, final_measure=False)
    study = _study(tmp_path)
    quiet = study.ask()  # a worker elsewhere that stopped sending heartbeats long ago
    study._storage.record_heartbeat(quiet._trial_id)
    with sqlite3.connect(tmp_path / "search.db") as db:
        db.execute("UPDATE trial_heartbeats SET heartbeat = '2000-01-01 00:00:00.000000' WHERE trial_id = ?",
                   (quiet._trial_id,))
    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True,
                          check=True)
    killed = study.ask()  # a search on this machine SIGKILLed a moment ago: fresh heartbeat, its process is gone
    study._storage.record_heartbeat(killed._trial_id)
    killed.set_user_attr("process", _process_id())
    killed.set_user_attr("pid", int(gone.stdout))
    live = study.ask()  # a live process on this machine (our parent) is still running this one: left alone
    study._storage.record_heartbeat(live._trial_id)
    live.set_user_attr("process", _process_id())
    live.set_user_attr("pid", os.getppid())

    res = search("condense.testing:tiny_task", SearchConfig(trials=4, **QUANT_ONLY), out_dir=tmp_path,
                 final_measure=False)
    states = {t.number: t.state.name for t in _study(tmp_path).trials}
    assert states == {0: "COMPLETE", 1: "COMPLETE", 2: "FAIL", 3: "FAIL", 4: "RUNNING", 5: "COMPLETE",
                      6: "COMPLETE"}
    assert sum(counts(t) for t in _study(tmp_path).trials) == 4  # the requested total, the failed two not counted
    assert {r["number"]: r["error"] for r in res.trials if r["state"] == "FAIL"} == {2: INTERRUPTED, 3: INTERRUPTED}


def test_a_search_killed_with_sigkill_resumes_and_completes_its_count(tmp_path):
    args = [sys.executable, "-m", "condense.cli", "search", "--task", "condense.testing:tiny_task", "--budget", "20%",
            "--trials", "30", "--knobs", "quantize", "--batch-size", "8", "--set", "timing_min_s=1.0",
            "--set", "sensitivity=false", "--out", str(tmp_path)]
    proc = subprocess.Popen(args, env=cli_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        for line in proc.stderr:
            if line.startswith("trial 0:"):
                break
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:  # the next trial has started (it measures for >= 1 s): kill -9 now
            # the next one: trial 0 prints its line before optuna records it COMPLETE (it is RUNNING a moment
            # longer); and its "pid" too: optuna marks a trial RUNNING before the objective records its process
            if any(t.number >= 1 and t.state.name == "RUNNING" and "pid" in t.user_attrs
                   for t in _study(tmp_path).trials):
                break
            time.sleep(0.02)
    finally:
        proc.kill()
        proc.wait(timeout=60)
    before = _study(tmp_path).trials
    killed = [t.number for t in before if t.state.name == "RUNNING"]
    assert len(killed) == 1, [(t.number, t.state.name) for t in before]  # no handler ran: it stays RUNNING
    done = sum(counts(t) for t in before)
    search("condense.testing:tiny_task", SearchConfig(trials=done + 2, **QUANT_ONLY), out_dir=tmp_path,
           final_measure=False)
    after = _study(tmp_path).trials
    assert [t.state.name for t in after if t.number in killed] == ["FAIL"]
    assert not [t for t in after if t.state.name == "RUNNING"]
    waiting = sum(t.state.name == "WAITING" for t in before)  # enqueued first points not started: they run first
    assert sum(counts(t) for t in after) == done + 2 and len(after) == len(before) + 2 - waiting


def test_knobs_that_cannot_apply_are_never_proposed(tmp_path):
    # tiny_task has no train_data (no student or exit heads to train) and TinyMLP no block list: both knobs are left
    # out up front, so no trial turns them on and none fails
    cfg = SearchConfig(budget="20%", trials=4, sensitivity=False, **FAST)
    res = search("condense.testing:tiny_task", cfg, out_dir=tmp_path, final_measure=False)
    assert sorted(res.skipped_knobs) == ["distill", "early_exit"]
    assert "early exit trains on the task's train_data, and task 'tiny' has none" in res.skipped_knobs["early_exit"]
    assert len(res.trials) == 4 and all(r["state"] == "COMPLETE" for r in res.trials)
    study = _study(tmp_path)
    assert not [p for t in study.trials for p in t.params if p.startswith(("distill.", "early_exit."))]


def test_a_trial_within_budget_on_the_primary_metric_but_not_the_second_source_is_rejected(tmp_path):
    cfg = SearchConfig(budget=0.0, trials=3, knobs=("quantize",), sensitivity=False, **FAST)
    with pytest.raises(BudgetNotMet, match=r"no trial met the 0\.00% budget on both agree and the second source "
                       r"fidelity_offsource \(3 trials\): 3 met it on agree but were rejected on the second source, "
                       r"e\.g\. the fastest, trial \d+: fidelity_offsource 0\.9\d+ vs baseline 1\.0000 on the second source"):
        search("tests.searching.search_tasks:two_source_task", cfg, out_dir=tmp_path)
    rep = json.loads((tmp_path / "report.json").read_text())
    assert rep["offsource_metric"] == "fidelity_offsource" and "and on fidelity_offsource" in rep["budget_checked_on"]
    done = [r for r in rep["trials"] if r["state"] == "COMPLETE"]
    assert len(done) == 3 and all(r["metric"] == 1.0 and not r["within_budget"] for r in done)
    assert all("fidelity_offsource" in r["rejected"] and "over the 0.00% budget" in r["rejected"] for r in done)
    html = (tmp_path / "report.html").read_text()
    assert "<th>fidelity_offsource</th>" in html and html.count("on the second source: a ") == 3 + 1  # + message


def test_a_trial_within_budget_on_both_sources_is_chosen_and_the_message_names_both(tmp_path):
    cfg = SearchConfig(budget="20%", trials=2, knobs=("quantize",), sensitivity=False, **FAST)
    res = search("tests.searching.search_tasks:two_source_task", cfg)
    assert res.chosen is not None and res.chosen["rejected"] is None
    assert re.search(r"within 20\.00% of the baseline's agree and fidelity_offsource: .* agree 1\.0000 vs 1\.0000, "
                     r"fidelity_offsource 0\.9\d+ vs 1\.0000", res.message)
    assert res.final["within_budget"] is True and res.final["rejected"] is None


def test_budget_verdict_checks_the_second_source_only_where_the_baseline_has_it():
    from condense.searching.budget import budget_verdict
    from tests.searching.search_tasks import two_source_task

    t = two_source_task()
    base = {"agree": 1.0, "fidelity_offsource": 0.8}
    assert budget_verdict(t, {"agree": 1.0, "fidelity_offsource": 0.79}, base, 0.02) == (True, None)
    assert budget_verdict(t, {"agree": 0.9, "fidelity_offsource": 0.8}, base, 0.02)[1].startswith("agree 0.9000")
    ok, why = budget_verdict(t, {"agree": 1.0}, base, 0.02)
    assert not ok and why.startswith("fidelity_offsource was not measured")
    assert budget_verdict(t, {"agree": 1.0}, {"agree": 1.0}, 0.02) == (True, None)  # no second source here
