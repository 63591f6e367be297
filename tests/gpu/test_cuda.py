"""Every registered transform on a CUDA model: it applies there (or refuses with an error that names the fix), its
outputs match the same transform applied on the CPU, and its artifact saved from the GPU loads on the CPU with the
same outputs. Skipped on machines without a CUDA GPU (CI has none; run on a GPU machine:
`python -m pytest -q tests/gpu`).
"""
import importlib.util

import pytest
import torch

import condense
from condense.core.transforms import apply_
from condense.errors import CondenseError
from tests.core.test_transform_contract import EXAMPLES, NEEDS, _cfg

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")

# Transforms that train a few steps: GPU and CPU arithmetic differ, so their results drift apart a little.
TRAINS = {("quantize", "qat"), ("prune", "gradual"), ("fine-tune", "task-loss"), ("distill", "kd"),
          ("early-exit", "confidence")}


def _apply(key, device):
    make_task, make_cfg, _ = EXAMPLES[key]
    task = make_task(device)
    model = task.build_model()
    if key == ("prune", "bake-masks"):
        model = apply_(model, _cfg("condense.prune.unstructured.UnstructuredConfig", sparsity=0.5,
                                   permanent=False), task=task)
    return task, apply_(model, make_cfg(), task=task)


def _first(out):
    return out[0] if isinstance(out, (tuple, list)) else out


@pytest.mark.parametrize("key", sorted(EXAMPLES), ids=lambda k: f"{k[0]}-{k[1]}")
def test_transform_on_cuda_matches_cpu_and_reloads_on_cpu(key, tmp_path):
    if key in NEEDS and importlib.util.find_spec(NEEDS[key]) is None:
        pytest.skip(f"{NEEDS[key]} is not installed")
    try:
        task, out = _apply(key, "cuda")
    except CondenseError as e:  # a CPU-only technique must say so and name the fix
        assert "cpu" in str(e).lower(), e
        print(f"{key}: refused on cuda: {e}")
        return
    cpu_task, ref = _apply(key, "cpu")
    with torch.no_grad():
        got = _first(out(task.inputs)).float().cpu()
        want = _first(ref(cpu_task.inputs)).float()
    scale = want.abs().max().item() + 1e-6
    tol = 5e-2 if key in TRAINS else 2e-3
    assert (got - want).abs().max().item() <= tol * scale, (key, (got - want).abs().max().item(), scale)
    back = condense.load(condense.save(out, tmp_path / "a"), model=EXAMPLES[key][0]("cpu").build_model())
    with torch.no_grad():
        again = _first(back(cpu_task.inputs)).float()
    assert (again - got).abs().max().item() <= 2e-3 * scale
