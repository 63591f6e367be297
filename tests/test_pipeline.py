import json

import torch

import condense
from condense.pipeline import Step, run_pipeline
from condense.tasks import get_task


def test_pipeline_measures_every_step_and_saves_a_loadable_artifact(tmp_path):
    task = get_task("condense.testing:tiny_task")
    cfg = condense.MeasureConfig(batch_sizes=(1, 8), repeats=3, min_time_s=0)
    res = run_pipeline(task, [Step("fp32"), Step("int8", condense.DynamicInt8Config())], tmp_path / "run",
                       name="run", measure_config=cfg)
    assert [m.label for m in res.measurements] == ["fp32", "int8"]
    rep = json.loads((tmp_path / "run" / "report.json").read_text())
    assert rep["steps"][1]["transforms"][0]["type"] == "DynamicInt8Config"
    assert (tmp_path / "run" / "report.html").read_text().startswith("<!doctype html>")
    loaded = condense.load(res.artifact)
    x = task.batch(8)
    model = condense.quantize_(task.build_model(), condense.DynamicInt8Config())
    assert torch.equal(loaded(x), model(x))
