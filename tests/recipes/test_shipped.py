"""Every recipe in recipes/ runs end to end at small size (same steps, fewer training steps, tiny measurements),
and its result exports to ONNX with a parity check."""
import json
from pathlib import Path

import pytest
import torch

from condense.cli import main
from condense.loading import load
from condense.loading import load_exported
from condense.recipes import load_recipe
from condense.tasks import get_task

RECIPES = Path(__file__).resolve().parents[2] / "recipes"
QUICK = ["measure.repeats=1", "measure.warmup=0", "measure.min_time_s=0", "measure.batch_sizes=[2]",
         "measure.memory=false", "measure.macs=false", "measure.size=false", "measure.generate_tokens=4"]
SMALL = {  # per recipe: the same steps, scaled down
    "digits.yaml": ["task_options.epochs=3", "steps.0.prune.finetune.steps=3", "steps.1.fine-tune.finetune.steps=3"],
    # int8 on ONNX Runtime (the pick on CPUs without AMX/VNNI; Int8Config's timing of every backend is covered in
    # tests/quantize), so its result exports to an ONNX file below
    "minilm.yaml": ["task_options.n_pairs=16", "steps.0.distill.finetune.steps=2", "steps.1.quantize.backend=ort"],
    "tinygpt.yaml": ["task_options.preset=tiny", "steps.0.prune.n_drop=1", "steps.0.prune.finetune.steps=3"],
}


def test_every_shipped_recipe_is_covered_and_valid():
    files = sorted(p.name for p in RECIPES.glob("*.yaml"))
    assert set(files) == set(SMALL) and {"digits.yaml", "minilm.yaml", "tinygpt.yaml"} <= set(files)
    for f in files:
        r = load_recipe(RECIPES / f)
        assert r.task == f.removesuffix(".yaml") and r.steps


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    out = {}
    for f, small in SMALL.items():
        d = tmp_path_factory.mktemp("runs") / f.removesuffix(".yaml")
        args = ["run", str(RECIPES / f), "--out", str(d)]
        for s in QUICK + small:
            args += ["--set", s]
        assert main(args) == 0, f
        out[f] = d
    return out


@pytest.mark.parametrize("name", sorted(SMALL))
def test_recipe_runs_measures_every_step_and_saves(runs, name):
    d = runs[name]
    recipe = load_recipe(RECIPES / name)
    rep = json.loads((d / "report.json").read_text())
    assert [s["label"] for s in rep["steps"]] == ["baseline"] + [s.label for s in recipe.steps]
    assert rep["recipe"]["name"] == recipe.name and len(rep["recipe"]["steps"]) == len(recipe.steps)
    pm = rep["primary_metric"]
    assert all(pm in s["measurement"]["quality"] and s["measurement"]["latency"]["2"]["p50_s"] > 0
               for s in rep["steps"])
    html = (d / "report.html").read_text()
    assert html.count('class="point') == len(rep["steps"]) and "What each step bought and cost" in html
    meta = json.loads((d / "model" / "condense.json").read_text())
    task = get_task(meta["task"])
    model = load(d / "model", task=task)
    assert task.metrics(model)[pm] == pytest.approx(rep["steps"][-1]["measurement"]["quality"][pm], abs=1e-6)


def test_exports_of_recipe_results_run_in_onnx_runtime_with_parity(runs, tmp_path, capsys):
    # digits ends in ONNX Runtime int8: the file is its graph, identical outputs, PyTorch parity as recorded
    assert main(["export", "--model", str(runs["digits.yaml"]), "--out", str(tmp_path / "d.onnx")]) == 0
    rec = json.loads((tmp_path / "d.json").read_text())
    assert rec["int8"] and rec["parity_against"] == "onnxruntime" and rec["parity"]["max_abs_diff"] == 0
    assert rec["recorded_parity_vs_torch"]["cosine"] > 0.999
    assert "parity vs onnxruntime" in capsys.readouterr().out
    # tinygpt's result is a PyTorch model: fp32 export matches it, int8 stays close
    for int8 in (False, True):
        out = tmp_path / ("g8" if int8 else "g32")
        assert main(["export", "--model", str(runs["tinygpt.yaml"]), "--out", str(out)]
                    + (["--int8"] if int8 else [])) == 0
        rec = json.loads((out / "model.json").read_text())
        assert rec["int8"] is int8 and rec["parity_against"] == "pytorch"
        assert rec["parity"]["cosine"] > (0.99 if int8 else 0.99999)
        if not int8:
            assert rec["parity"]["max_abs_diff"] < 1e-3
    # minilm's export still offers encode, and agrees with the artifact it came from
    assert main(["export", "--model", str(runs["minilm.yaml"]), "--out", str(tmp_path / "m")]) == 0
    enc = load_exported(tmp_path / "m")
    src = load(runs["minilm.yaml"] / "model")
    texts = ["read a file", "sort a list in place"]
    a, b = enc.encode(texts), src.encode(texts)
    assert a.shape == (2, 384) and torch.allclose(torch.as_tensor(a), torch.as_tensor(b), atol=1e-5)


def test_run_and_export_bad_input_is_one_line_exit_2(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: x\nsteps:\n  - quantize: {scheme: dynamic, bitz: 4}\n")
    assert main(["run", str(bad), "--task", "digits", "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "steps[0] (quantize): DynamicInt8Config has no field 'bitz'" in err
    assert not (tmp_path / "o").exists()
    assert main(["run", str(RECIPES / "digits.yaml"), "--out", str(tmp_path / "o"), "--set", "steps.9.x=1"]) == 2
    assert "not a step index" in capsys.readouterr().err
    assert main(["export", "--model", str(tmp_path / "nothing"), "--out", str(tmp_path / "x.onnx")]) == 2
    assert main(["export", "--model", str(tmp_path), "--format", "coreml", "--out", str(tmp_path / "x")]) == 2
    assert "unknown export format 'coreml'; use one of ['onnx', 'tflite']" in capsys.readouterr().err
