import copy

import pytest
import torch
from torch.ao.nn.quantized import dynamic as nnqd

import condense
from condense.core.lineage import lineage
from condense.errors import ConfigError
from condense.quantize.sensitivity import MixedPrecisionConfig, layer_sensitivity
from condense.tasks import get_task


def _task_with_fragile_fc2():
    """The tiny task whose fc2 has one output row 1000x larger: per-tensor int8 crushes its other rows."""
    task = get_task("condense.testing:tiny_task")
    model = task.build_model()
    with torch.no_grad():
        model.fc2.weight[0] *= 1000.0
    with torch.no_grad():
        ref = model(torch.randn(256, 8, generator=torch.Generator().manual_seed(1))).argmax(-1)
    xs = torch.randn(256, 8, generator=torch.Generator().manual_seed(1))
    task.model = model
    task.evaluate = lambda m: {"agreement": float((m(xs).argmax(-1) == ref).float().mean())}
    return task, None


def test_sensitivity_ranks_the_fragile_layer_first():
    task, _ = _task_with_fragile_fc2()
    model = task.build_model()
    base, sens = layer_sensitivity(model, task, condense.DynamicInt8Config(per_channel=False))
    assert base == 1.0 and [s.name for s in sens] == ["fc2", "fc1"]
    assert sens[0].drop > 0.05 and sens[0].drop > sens[1].drop
    assert isinstance(model.fc2, torch.nn.Linear)  # analysis leaves the model untouched


def test_mixed_precision_keeps_the_sensitive_layer_and_meets_the_budget():
    task, _ = _task_with_fragile_fc2()
    model = task.build_model()
    full = condense.quantize_(copy.deepcopy(model), condense.DynamicInt8Config(per_channel=False))
    assert task.metrics(full)["agreement"] < 0.98  # quantizing everything misses a 2% budget
    cfg = MixedPrecisionConfig(base=condense.DynamicInt8Config(per_channel=False), budget=0.02)
    mixed = condense.quantize_(copy.deepcopy(model), cfg, task=task)
    assert isinstance(mixed.fc2, torch.nn.Linear) and isinstance(mixed.fc1, nnqd.Linear)
    assert task.metrics(mixed)["agreement"] >= 0.98
    details = lineage(mixed)["transforms"][-1]["details"]
    assert details["kept"] == ["fc2"] and details["sensitivity"][0]["name"] == "fc2"
    # a 0% budget cannot afford fc1's small loss either: both stay float
    strict = condense.quantize_(copy.deepcopy(model), MixedPrecisionConfig(base=cfg.base, budget=0.0), task=task)
    assert lineage(strict)["transforms"][-1]["details"]["kept"] == ["fc2", "fc1"]
    assert task.metrics(strict)["agreement"] == 1.0


def test_mixed_precision_needs_a_task_and_a_base():
    with pytest.raises(ConfigError, match="needs base="):
        MixedPrecisionConfig()
    with pytest.raises(Exception, match="pass a task"):
        condense.quantize_(get_task("condense.testing:tiny_task").build_model(),
                           MixedPrecisionConfig(base=condense.DynamicInt8Config()))
