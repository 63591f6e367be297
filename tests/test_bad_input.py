"""The bad-input battery: every input a user can get wrong (arguments, recipes, artifacts, config values) ends in
exit code 2 and exactly one line `condense: error: ...` naming the fix, with no traceback, before any work starts.

Run in-process through `cli.main` (fast); two cases as the user runs them, in a subprocess with a timeout."""
import json
import os
import subprocess
import sys
import time

import pytest

import condense
from condense import cli
from condense.tasks import get_task

ARTIFACT_CASES = {  # name -> edit of a real artifact's condense.json
    "format-version-string": lambda m: m.update(format_version="2"),
    "transforms-mapping": lambda m: m.update(transforms={"0": {"config": {"type": "DynamicInt8Config"}}}),
    "transform-not-mapping": lambda m: m.update(transforms=["quantize"]),
    "encoded-list": lambda m: m.update(encoded=["fc1.weight"]),
    "aliases-list": lambda m: m.update(aliases=["fc1.weight"]),
    "alias-to-missing-tensor": lambda m: m.update(aliases={"fc3.weight": "fc9.weight"}),
    "deep": lambda m: m.update(metadata="__DEEP__"),
    "huge-int": lambda m: m.update(weights_bytes="__HUGE__"),
    "task-of-wrong-type": lambda m: m.update(task=["digits"]),
}


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """A real small artifact (tiny task, int8) with edited copies, and recipe files."""
    root = tmp_path_factory.mktemp("bad-input")
    task = get_task("condense.testing:tiny_task")
    good = condense.save(condense.quantize_(task.build_model(), condense.DynamicInt8Config()), root / "good")
    meta = json.loads((good / "condense.json").read_text())
    for name, edit in ARTIFACT_CASES.items():
        d = root / name
        d.mkdir()
        (d / meta["weights_file"]).write_bytes((good / meta["weights_file"]).read_bytes())
        m = json.loads(json.dumps(meta))
        edit(m)
        text = json.dumps(m).replace('"__DEEP__"', "[" * 5000 + "]" * 5000).replace('"__HUGE__"', "9" * 5000)
        (d / "condense.json").write_text(text)
    folder = root / "meta-folder"
    (folder / "condense.json").mkdir(parents=True)
    digits = root / "digits-artifact"  # an artifact recorded for the digits task (the check comes before loading)
    digits.mkdir()
    (digits / meta["weights_file"]).write_bytes((good / meta["weights_file"]).read_bytes())
    (digits / "condense.json").write_text(json.dumps({**meta, "task": {"name": "digits", "options": {}}}))
    recipes = {
        "ok": "task: digits\nsteps: [{quantize: {scheme: dynamic}}]\n",
        "deep": "steps: " + "[" * 5000 + "]" * 5000 + "\n",
        "huge-int": "steps:\n  - fine-tune: {finetune: {steps: " + "9" * 5000 + "}}\n",
        "steps-mapping": "steps: {quantize: {scheme: dynamic}}\n",
        "step-not-mapping": "steps: [quantize]\n",
        "unknown-step": "steps: [{sharpen: {}}]\n",
        "scheme-list": "steps: [{quantize: {scheme: [dynamic]}}]\n",
        "alias-loop": "steps: &a [*a]\n",
        "lr": "task: digits\nsteps: [{fine-tune: {finetune: {steps: 2, lr: -5}}}]\n",
    }
    for name, text in recipes.items():
        (root / f"{name}.yaml").write_text(text)
    (root / "latin1.yaml").write_bytes(b"name: caf\xe9\nsteps: [{quantize: {scheme: dynamic}}]\n")
    return root


def _no_task(args):
    raise RuntimeError("the task was built before the bad input was refused")


# (argv with {d} = the fixture folder, text the error must contain, whether the task may be built first)
CASES = [
    # command-line arguments
    (["train", "--task", "digits", "--nproc", "0", "--out", "{d}/o"], "argument --nproc: '0' is not a positive"),
    (["train", "--task", "digits", "--nnodes", "2", "--node-rank", "2", "--out", "{d}/o"],
     "--node-rank 2 is not below --nnodes 2"),
    (["train", "--task", "digits", "--master-port", "70000", "--out", "{d}/o"], "port '70000' is not in 1..65535"),
    (["measure", "--task", "digits", "--device", "cpu:99"], "device 'cpu:99': there is one CPU device; use 'cpu'"),
    (["measure", "--task", "digits", "--device", "banana"], "unknown device 'banana'; use 'cpu' or 'cuda'"),
    (["train", "--task", "digits", "--device", "cuda:99", "--out", "{d}/o"], "cuda:99"),
    (["export", "--model", "{d}/good", "--out", "{d}/x.onnx", "--opset", "5"],
     "opset 5 is not supported; use one of 17, 18"),
    (["run", "{d}/ok.yaml", "--out", "{d}/o", "--set", "steps.²=1"], "'steps.²' is not a dotted path"),
    (["run", "{d}/ok.yaml", "--out", "{d}/o", "--set", "bits"], "--set 'bits' must be PATH=VALUE"),
    (["quantize", "--task", "digits", "--out", "{d}/o", "--set", "bits"], "--set 'bits' must be KEY=VALUE"),
    (["train", "--task", "digits", "--out", "{d}/o", "--set", "lr"], "--set 'lr' must be KEY=VALUE"),
    (["measure", "--task", "digits", "--task-option", "novalue"], "--task-option 'novalue' must be KEY=VALUE"),
    (["measure", "--task", "digits", "--batch-sizes", "99999999999"], "give integers from 1 to 65536"),
    (["measure", "--task", "digits", "--repeats", "0"], "'0' is not a positive integer"),
    (["measure", "--task", "digits", "--task-option", "bogus=1"],
     "unknown option 'bogus' for task 'digits'; valid options: channels, epochs"),
    (["quantize", "--task", "minilm", "--model", "{d}/digits-artifact", "--out", "{d}/o"],
     "this artifact is for task digits; use --task digits or omit --task"),
    (["quantize", "--out", "{d}/o"], "give --task NAME"),
    (["search", "--task", "digits", "--budget", "1%", "--knobs", "", "--out", "{d}/o"], "knobs is empty; name at least one of: auto"),
    # recipes
    (["run", "{d}/deep.yaml", "--out", "{d}/o"], "is nested too deeply to read"),
    (["run", "{d}/latin1.yaml", "--out", "{d}/o"], "is not UTF-8 text"),
    (["run", "{d}/huge-int.yaml", "--out", "{d}/o"], "has a value YAML cannot read"),
    (["run", "{d}/steps-mapping.yaml", "--out", "{d}/o"], "'steps' must be a list, got a mapping"),
    (["run", "{d}/step-not-mapping.yaml", "--out", "{d}/o"], "steps[0]: each step must be a one-key mapping"),
    (["run", "{d}/unknown-step.yaml", "--out", "{d}/o"], "steps[0]: unknown step 'sharpen'"),
    (["run", "{d}/scheme-list.yaml", "--out", "{d}/o"], "unknown scheme ['dynamic']"),
    (["run", "{d}/alias-loop.yaml", "--out", "{d}/o"], "contains itself"),
    (["run", "{d}/nope.yaml", "--out", "{d}/o"], "does not exist"),
    # artifacts
    (["info", "{d}/meta-folder"], "cannot be read"),
    (["measure", "--model", "{d}/format-version-string"], "format_version must be a positive integer"),
    (["measure", "--model", "{d}/transforms-mapping"], "transforms must be a list"),
    (["info", "{d}/transforms-mapping"], "transforms must be a list"),
    (["measure", "--model", "{d}/transform-not-mapping"], "transforms[0] must be a mapping"),
    (["measure", "--model", "{d}/encoded-list"], "encoded must be a mapping"),
    (["measure", "--model", "{d}/aliases-list"], "aliases must be a mapping"),
    (["measure", "--model", "{d}/alias-to-missing-tensor", "--task", "condense.testing:tiny_task"],
     "alias 'fc3.weight' points to 'fc9.weight', which is not in the weights file"),
    (["info", "{d}/deep"], "is corrupt"),
    (["info", "{d}/huge-int"], "is corrupt"),
    (["measure", "--model", "{d}/task-of-wrong-type"], "task must be null or a mapping"),
    # config values, refused before the task is built (no training, no search)
    (["distill", "--task", "digits", "--set", 'finetune={"steps": 1e400}', "--out", "{d}/o"], "is not a finite number"),
    (["train", "--task", "digits", "--set", "lr=Infinity", "--out", "{d}/o"], "is not a finite number"),
    (["train", "--task", "digits", "--set", "lr=1e400", "--out", "{d}/o"], "is not a finite number"),
    (["train", "--task", "digits", "--set", "grad_clip=NaN", "--out", "{d}/o"], "is not a finite number"),
    (["train", "--task", "digits", "--set", "steps=1.5", "--out", "{d}/o"], "--set: TrainConfig.steps must be "
     "an integer (not a fraction), got 1.5; e.g. steps=100"),
    (["train", "--task", "digits", "--set", "steps=99999999999999999999999999", "--out", "{d}/o"],
     "does not fit in 64 bits"),
    (["train", "--task", "digits", "--set", "seed=abc", "--out", "{d}/o"], "--set: TrainConfig.seed must be an "
     "integer, got 'abc'; e.g. seed=0"),
    (["early-exit", "--task", "digits", "--set", "finetune=[1,2]", "--out", "{d}/o"],
     '--set: EarlyExitConfig.finetune must be a mapping of FitConfig fields, got [1, 2]; e.g. finetune={"steps": '),
    (["quantize", "--task", "digits", "--scheme", "static", "--set", "include=[3]", "--out", "{d}/o"],
     "--set: StaticInt8Config.include must be a list of strings, got [3]; e.g. include=[\"*\"]"),
    (["quantize", "--task", "digits", "--set", "nosuch=1", "--out", "{d}/o"], "Int8Config has no field 'nosuch'"),
    (["run", "{d}/lr.yaml", "--out", "{d}/o"],
     "steps[0] (fine-tune): FineTuneConfig.finetune: FitConfig.lr must be > 0, got -5.0"),
]
# range checks of TrainConfig's own validation (torch's optimizer used to refuse eps/betas only once training
# started, and a huge step count ran on)
CONFIG_RANGE_CASES = [
    (["train", "--task", "digits", "--set", "eps=-5", "--out", "{d}/o"], "eps"),
    (["train", "--task", "digits", "--set", "betas=[2,3]", "--out", "{d}/o"], "betas"),
    (["train", "--task", "digits", "--set", "steps=1000000000000000000", "--out", "{d}/o"], "steps"),
]


def _run_main(argv, files, capsys, monkeypatch):
    # nothing may be built or trained before the refusal (raising=False: the helpers may be renamed)
    monkeypatch.setattr(cli, "_task_from_meta", _no_task, raising=False)
    if not any(a.startswith("--task-option") for a in argv) and "--model" not in argv:
        monkeypatch.setattr(cli, "_task", _no_task, raising=False)
    monkeypatch.setattr("condense.recipes.run.run_pipeline", _no_task, raising=False)
    argv = [a.replace("{d}", str(files)) for a in argv]
    t0 = time.perf_counter()
    try:
        code = cli.main(argv)
    except SystemExit as e:  # argparse's errors
        code = e.code
    elapsed = time.perf_counter() - t0
    cap = capsys.readouterr()
    return code, cap.err, cap.out, elapsed


def _check(code, err, out, elapsed, needle):
    lines = err.strip().splitlines()
    assert "Traceback" not in err + out
    assert code == 2, err
    assert len(lines) == 1 and lines[0].startswith("condense: error: "), err
    assert needle in lines[0], lines[0]
    assert elapsed < 30, f"took {elapsed:.0f}s: the input must be refused before any work starts"


@pytest.mark.parametrize("argv, needle", CASES, ids=[" ".join(a)[:60] for a, _ in CASES])
def test_bad_input_is_one_line_exit_2(argv, needle, files, capsys, monkeypatch):
    _check(*_run_main(argv, files, capsys, monkeypatch), needle)


@pytest.mark.parametrize("argv, needle", CONFIG_RANGE_CASES, ids=[" ".join(a)[:60] for a, _ in CONFIG_RANGE_CASES])
def test_out_of_range_config_values_are_one_line_exit_2(argv, needle, files, capsys, monkeypatch):
    _check(*_run_main(argv, files, capsys, monkeypatch), needle)


@pytest.mark.parametrize("argv, needle", [
    (["train", "--task", "digits", "--nproc", "0", "--out", "{d}/o"], "argument --nproc"),
    (["run", "{d}/deep.yaml", "--out", "{d}/o"], "is nested too deeply to read"),
])
def test_as_the_user_runs_it(argv, needle, files):
    t0 = time.perf_counter()
    r = subprocess.run([sys.executable, "-m", "condense", *[a.replace("{d}", str(files)) for a in argv]],
                       capture_output=True, text=True, timeout=120, env=dict(os.environ))
    _check(r.returncode, r.stderr, r.stdout, time.perf_counter() - t0, needle)
