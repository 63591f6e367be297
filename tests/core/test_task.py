import pytest
import torch

from condense.core import lineage
from condense.core.task import Task
from condense.errors import CondenseError
from condense.tasks import get_task, list_tasks
from condense.testing import tiny_task


def test_tiling_inputs_to_any_batch_size():
    task = tiny_task()
    assert task.batch(5).shape == (5, 8)
    b = Task("t", torch.nn.Identity(), evaluate=lambda m: {"x": 1.0}, primary_metric="x",
             inputs=(torch.arange(3.0)[:, None], {"k": torch.zeros(3, 2)})).batch(7)
    assert b[0].shape == (7, 1) and b[1]["k"].shape == (7, 2)
    assert torch.equal(b[0][:, 0], torch.tensor([0.0, 1, 2, 0, 1, 2, 0]))


def test_build_model_is_a_fresh_copy_stamped_with_the_spec():
    task = get_task("condense.testing:tiny_task")
    a, b = task.build_model(), task.build_model()
    assert a is not b and torch.equal(a.fc1.weight, b.fc1.weight)
    assert lineage.lineage(a)["task"] == {"factory": "condense.testing:tiny_task", "options": {}}


@pytest.mark.parametrize("bad", [0, -1, 1.5, "3", True])
def test_invalid_batch_size_names_the_fix(bad):
    with pytest.raises(CondenseError, match="batch size must be a positive integer"):
        tiny_task().batch(bad)


def test_missing_primary_metric_is_an_error():
    task = tiny_task()
    task.evaluate = lambda m: {"other": 1.0}
    with pytest.raises(CondenseError, match="primary metric 'agreement'"):
        task.metrics(task.build_model())


def test_within_budget_respects_direction():
    up = tiny_task()
    assert up.within_budget(0.99, 1.0, 0.01) and not up.within_budget(0.98, 1.0, 0.01)
    up.higher_is_better = False
    assert up.within_budget(1.01, 1.0, 0.01) and not up.within_budget(1.02, 1.0, 0.01)


def test_task_lookup_errors():
    assert [n for n, _ in list_tasks()] == ["digits", "minilm", "minilm-topics", "tinygpt"]
    with pytest.raises(CondenseError, match="unknown task 'nope'; choose one of: digits, minilm, minilm-topics, tinygpt"):
        get_task("nope")
    with pytest.raises(CondenseError, match="cannot import module 'no_such_mod'"):
        get_task("no_such_mod:make")
    with pytest.raises(CondenseError, match="has no callable 'nothing'"):
        get_task("condense.testing:nothing")


def test_every_public_name_resolves_and_import_stays_light():
    import subprocess
    import sys

    import condense

    for name in condense.__all__:
        assert getattr(condense, name) is not None, name
    code = "import sys, condense; print(sorted(m for m in ('torch', 'onnxruntime', 'transformers') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


class _Seen(torch.nn.Module):
    """Records how it was called."""

    def forward(self, *args, **kwargs):
        self.called = (args, kwargs)
        return len(args) + len(kwargs)


@pytest.mark.parametrize("batch, n_args, n_kwargs", [
    (torch.zeros(2, 3), 1, 0),                                  # one tensor: one input
    ((torch.zeros(2), torch.ones(2)), 2, 0),                    # a tuple starting with a tensor: positional
    ([torch.zeros(2), torch.ones(2), torch.ones(2)], 3, 0),     # a list starting with a tensor: positional
    ({"input_ids": torch.zeros(2), "mask": torch.ones(2)}, 0, 2),  # a mapping: keywords
    (["some text", "more text"], 1, 0),                         # a list of texts is one input, not two
    ((), 1, 0),                                                 # an empty tuple: one (empty) input
])
def test_run_batch_convention_is_shared_by_task_and_module(batch, n_args, n_kwargs):
    from condense.core.task import run_batch

    m = _Seen()
    assert run_batch(m, batch) == n_args + n_kwargs
    assert (len(m.called[0]), len(m.called[1])) == (n_args, n_kwargs)
    task = Task("t", m, evaluate=lambda _: {"x": 1.0}, primary_metric="x", inputs=torch.zeros(1, 3))
    assert task.run_batch(m, batch) == n_args + n_kwargs  # Task without `run`: the same convention
    custom = Task("t", m, evaluate=lambda _: {"x": 1.0}, primary_metric="x", inputs=torch.zeros(1, 3),
                  run=lambda model, b: "custom")
    assert custom.run_batch(m, batch) == "custom"
