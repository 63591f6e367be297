"""The transform contract: every registered transform applies to a small model, records lineage, and its artifact
loads back (through its registered replay) into a model whose outputs equal the transformed model's.

A new transform must add an example to EXAMPLES: `test_every_registered_transform_has_an_example` fails otherwise.
"""
import importlib.util

import pytest
import torch
import torch.nn.functional as F

import condense
from condense.core.lineage import lineage
from condense.core.task import Task
from condense.core.transforms import TRANSFORMS, apply_
from condense.tasks.digits import DigitsCNN
from condense.tasks.gpt import GPT, GPTConfig

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models: one thread (tests/conftest.py)

GPT_CFG = GPTConfig(block_size=16, n_layer=3, n_head=2, n_embd=16)


def gpt_task(device: str = "cpu") -> Task:
    torch.manual_seed(0)
    model = GPT(GPT_CFG).eval().to(device)
    g = torch.Generator().manual_seed(1)
    data = torch.randint(0, 256, (8, 17), generator=g).to(device)
    batches = [(data[:4, :-1], data[:4, 1:]), (data[4:, :-1], data[4:, 1:])]
    return Task("toygpt", model, evaluate=lambda m: {"loss": 0.0}, primary_metric="loss", higher_is_better=False,
                inputs=data[:2, :-1], train_data=lambda: batches, calibration_data=lambda: iter([b[0] for b in batches]),
                loss=lambda m, b: F.cross_entropy(m(b[0]).reshape(-1, 256), b[1].reshape(-1)))


def cnn_task(device: str = "cpu") -> Task:
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(0)
    x = torch.rand(32, 1, 8, 8, generator=g).to(device)
    y = torch.randint(0, 10, (32,), generator=g).to(device)
    model = DigitsCNN((4, 8, 16)).eval().to(device)
    return Task("toy-digits", model, evaluate=lambda m: {"accuracy": 0.0}, primary_metric="accuracy",
                inputs=x[:2], train_data=lambda: [(x[:16], y[:16]), (x[16:], y[16:])],
                calibration_data=lambda: iter([x[:16], x[16:]]),
                loss=lambda m, b: F.cross_entropy(m(b[0]), b[1]))


def _fit(steps=2):
    from condense.train.loop import FitConfig

    return FitConfig(steps=steps, lr=1e-3)


def _cfg(path: str, **fields):
    mod, _, name = path.rpartition(".")
    return getattr(importlib.import_module(mod), name)(**fields)


# (family, name) -> (task factory, config factory, output tolerance)
EXAMPLES = {
    ("quantize", "int8"): (cnn_task, lambda: _cfg("condense.quantize.backends.Int8Config", backend="torch-static"), 0),
    ("quantize", "dynamic"): (gpt_task, lambda: _cfg("condense.quantize.dynamic.DynamicInt8Config"), 0),
    ("quantize", "static"): (cnn_task, lambda: _cfg("condense.quantize.static.StaticInt8Config"), 0),
    ("quantize", "bf16"): (gpt_task, lambda: _cfg("condense.quantize.bf16.Bf16Config", exclude=("lm_head",)), 0),
    ("quantize", "onednn"): (gpt_task, lambda: _cfg("condense.quantize.onednn.OneDnnInt8Config"), 0),
    ("quantize", "ort"): (cnn_task, lambda: _cfg("condense.quantize.ort.OrtInt8Config"), 1e-5),
    ("quantize", "qat"): (cnn_task, lambda: _cfg("condense.quantize.qat.QATConfig", steps=2), 0),
    ("quantize", "weight-only"): (gpt_task, lambda: _cfg("condense.quantize.weight_only.WeightOnlyConfig",
                                                         bits=4, group_size=16), 0),
    ("quantize", "mixed"): (cnn_task, lambda: _cfg("condense.quantize.sensitivity.MixedPrecisionConfig",
                                                  base=_cfg("condense.quantize.dynamic.DynamicInt8Config")), 0),
    ("prune", "unstructured"): (gpt_task, lambda: _cfg("condense.prune.unstructured.UnstructuredConfig",
                                                       sparsity=0.5), 0),
    ("prune", "bake-masks"): (gpt_task, lambda: _cfg("condense.prune.unstructured.BakeMasksConfig"), 0),
    ("prune", "nm"): (gpt_task, lambda: _cfg("condense.prune.nm.NMConfig", n=2, m=4), 0),
    ("prune", "gradual"): (gpt_task, lambda: _cfg("condense.prune.schedule.GradualPruneConfig", final_sparsity=0.5,
                                                  steps=2, finetune_steps_per_event=1), 0),
    ("prune", "structured"): (gpt_task, lambda: _cfg("condense.prune.structured.StructuredConfig", ratio=0.5), 0),
    ("prune", "layer-drop"): (gpt_task, lambda: _cfg("condense.prune.layers.LayerDropConfig", n_drop=1), 0),
    ("fine-tune", "task-loss"): (gpt_task, lambda: _cfg("condense.train.finetune.FineTuneConfig", finetune=_fit()), 0),
    ("fuse", "blocks"): (gpt_task, lambda: _cfg("condense.fusion.FuseConfig"), 1e-6),
    ("distill", "kd"): (gpt_task, lambda: _cfg("condense.distillation.DistillConfig", layers=2, finetune=_fit()), 0),
    ("factorize", "svd"): (gpt_task, lambda: _cfg("condense.factorize.FactorizeConfig", rank_ratio=0.5), 0),
    ("early-exit", "confidence"): (cnn_task, lambda: _cfg("condense.early_exit.EarlyExitConfig", threshold=0.9,
                                                          finetune=_fit()), 0),
    ("export", "onnx"): (cnn_task, lambda: _cfg("condense.export.runtime.OnnxRuntimeConfig"), 1e-5),
    ("export", "tflite"): (cnn_task, lambda: _cfg("condense.export.litert_runtime.LiteRtConfig"), 1e-5),
    ("export", "tflite-int8"): (cnn_task, lambda: _cfg("condense.export.litert_runtime.LiteRtInt8Config"), 1e-5),
}
NEEDS = {("export", "tflite"): "litert_torch", ("export", "tflite-int8"): "litert_torch"}


def test_every_registered_transform_has_an_example_and_a_replay():
    registered = {(t.family, t.name) for t in TRANSFORMS}
    assert registered == set(EXAMPLES), f"add an example for {registered - set(EXAMPLES)}"
    for t in TRANSFORMS:
        assert callable(t.handler) and callable(t.replay), t


@pytest.mark.parametrize("key", sorted(EXAMPLES), ids=lambda k: f"{k[0]}-{k[1]}")
def test_transform_records_lineage_and_reloads_to_the_same_outputs(key, tmp_path):
    if key in NEEDS and importlib.util.find_spec(NEEDS[key]) is None:
        pytest.skip(f"{NEEDS[key]} is not installed")
    if key == ("quantize", "onednn"):
        from condense.quantize.onednn import onednn_int8

        if not onednn_int8()[0]:
            pytest.skip(f"no native oneDNN int8 here: {onednn_int8()[1]}")
    make_task, make_cfg, tol = EXAMPLES[key]
    task, cfg = make_task(), make_cfg()
    model = task.build_model()
    if key == ("prune", "bake-masks"):  # baking needs masks: prune first (lineage then has both)
        model = apply_(model, _cfg("condense.prune.unstructured.UnstructuredConfig", sparsity=0.5,
                                       permanent=False), task=task)
    out = apply_(model, cfg, task=task)
    entries = lineage(out)["transforms"]
    assert entries and entries[-1]["config"]["type"] == type(cfg).__name__, entries
    with torch.no_grad():
        want = out(task.inputs)
    path = condense.save(out, tmp_path / "a")
    back = condense.load(path, model=make_task().build_model())
    with torch.no_grad():
        got = back(task.inputs)
    assert got.shape == want.shape
    assert (got - want).abs().max().item() <= tol


def test_the_verbs_record_lineage_too(tmp_path):
    """`condense.early_exit_` then save/load used to fail ("artifact does not fit the model")."""
    from condense.early_exit import EarlyExitConfig

    task = cnn_task()
    model = condense.early_exit_(task.build_model(), EarlyExitConfig(threshold=0.9, finetune=_fit()), task=task)
    with torch.no_grad():
        want = model(task.inputs)
    back = condense.load(condense.save(model, tmp_path / "ee"), model=cnn_task().build_model())
    with torch.no_grad():
        assert torch.equal(back(task.inputs), want)
