"""Progress in a log: off a terminal (redirected output, a pipe, pytest's capture) every long step writes a line
when it starts and ends and progress lines in between, so `condense run recipe.yaml > log 2>&1` is never silent."""
import re
import time

import pytest
import torch

from condense import progress
from condense.testing import tiny_task


def _lines(err: str) -> list[str]:
    return err.splitlines()


def test_a_line_per_start_advance_and_end_when_every_advance_may_write(monkeypatch, capsys):
    monkeypatch.setattr(progress, "LOG_EVERY_S", 0.0)
    with progress.steps("measuring fp32", 2) as bar:
        bar.start("size")
        bar.advance()
        bar.advance()
    assert _lines(capsys.readouterr().err) == [
        "measuring fp32: started (2 steps)",
        "measuring fp32: 0/2 (0%), size, 0 s elapsed",
        "measuring fp32: 1/2 (50%), size, 0 s elapsed, ~0 s left",
        "measuring fp32: 2/2 (100%), size, 0 s elapsed",
        "measuring fp32: done (2/2) in 0 s",
    ]


def test_no_progress_lines_within_the_interval_only_start_and_end(monkeypatch, capsys):
    monkeypatch.setattr(progress, "LOG_EVERY_S", 3600.0)
    with progress.steps("training", 100) as bar:
        for _ in range(100):
            bar.advance()
    assert _lines(capsys.readouterr().err) == ["training: started (100 steps)", "training: done (100/100) in 0 s"]


def test_the_heartbeat_writes_while_one_step_takes_longer_than_the_interval(monkeypatch, capsys):
    monkeypatch.setattr(progress, "LOG_EVERY_S", 0.05)
    with progress.steps("quality", 1) as bar:
        time.sleep(0.5)  # one slow step, no advance: ~10 heartbeats
        bar.advance()
    lines = _lines(capsys.readouterr().err)
    assert lines[0] == "quality: started (1 steps)" and lines[-1].startswith("quality: done (1/1) in ")
    assert sum(ln.startswith("quality: 0/1 (0%), ") for ln in lines) >= 2, lines


def test_a_failing_step_says_where_it_stopped_and_the_error_propagates(monkeypatch, capsys):
    monkeypatch.setattr(progress, "LOG_EVERY_S", 3600.0)
    with pytest.raises(ValueError):
        with progress.steps("fitting", 3) as bar:
            bar.advance()
            raise ValueError("boom")
    assert _lines(capsys.readouterr().err)[-1] == "fitting: stopped at 1/3 after 0 s (ValueError)"


def test_an_activity_writes_elapsed_lines_only_while_nothing_inside_writes(monkeypatch, capsys):
    monkeypatch.setattr(progress, "LOG_EVERY_S", 0.05)
    with progress.activity("step 1/2 export"):
        time.sleep(0.3)  # silent work: the activity's heartbeat writes
        with progress.steps("calibrating", 1) as bar:  # inner work that writes: only the innermost heartbeat
            time.sleep(0.3)
            bar.advance()
    lines = _lines(capsys.readouterr().err)
    assert lines[0] == "step 1/2 export: started" and lines[-1].startswith("step 1/2 export: done in ")
    inner = lines.index("calibrating: started (1 steps)")
    outer_beats = [i for i, ln in enumerate(lines) if re.fullmatch(r"step 1/2 export: \d+ s elapsed", ln)]
    assert outer_beats and max(outer_beats) < inner, lines
    assert sum(ln.startswith("calibrating: 0/1 (0%), ") for ln in lines) >= 2, lines


def trainable_task():
    """tiny_task with training data and a loss, so a recipe can fine-tune it (fit loop)."""
    import dataclasses

    task = tiny_task()
    x = torch.randn(32, 8, generator=torch.Generator().manual_seed(1))
    y = task.build_model()(x).argmax(-1).detach()
    return dataclasses.replace(task, train_data=lambda: [(x[:16], y[:16]), (x[16:], y[16:])],
                               loss=lambda m, b: torch.nn.functional.cross_entropy(m(b[0]), b[1]))


def test_a_redirected_recipe_run_logs_every_step(tmp_path, monkeypatch, capsys):
    """`condense run` with its output captured (not a terminal, as in `> log 2>&1`): a line per recipe step,
    the fit loop's and each measurement's start, progress and end lines."""
    from condense.cli import main

    monkeypatch.setattr(progress, "LOG_EVERY_S", 0.0)
    recipe = tmp_path / "r.yaml"
    recipe.write_text("""name: logged
measure: {batch_sizes: [1], repeats: 2, min_time_s: 0, memory: false, macs: false, size: false}
steps:
  - fine-tune: {fit: {steps: 3}}
  - quantize: {scheme: dynamic}
""")
    assert main(["run", str(recipe), "--task", "tests.test_progress:trainable_task", "--out",
                 str(tmp_path / "run")]) == 0
    log = _lines(capsys.readouterr().err)
    steps = [ln.rsplit(" in ", 1)[0] for ln in log if ln.startswith("step ")]  # durations vary
    assert steps == ["step 2/3 fine-tune:task-loss (FineTuneConfig): started",
                     "step 2/3 fine-tune:task-loss (FineTuneConfig): done",
                     "step 3/3 quantize:dynamic (DynamicInt8Config): started",
                     "step 3/3 quantize:dynamic (DynamicInt8Config): done"], steps
    for label in ("baseline", "fine-tune:task-loss", "quantize:dynamic"):
        mine = [ln for ln in log if ln.startswith(f"measuring {label}: ")]
        assert mine[0] == f"measuring {label}: started (4 steps)" and mine[-1].startswith(
            f"measuring {label}: done (4/4) in "), mine
    fit = [ln for ln in log if ln.startswith("fine-tuning: ")]
    assert fit[0] == "fine-tuning: started (3 steps)" and fit[-1].startswith("fine-tuning: done (3/3) in ")
    assert {f"fine-tuning: {k}/3" for k in (0, 1, 2, 3)} == {ln.split(" (", 1)[0] for ln in fit[1:-1]}, fit
