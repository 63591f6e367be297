import torch

from condense.core.artifact import load, save
from condense.core.lineage import lineage
from condense.core.task import Task
from condense.core.transforms import apply_
from condense.testing import TinyMLP
from condense.train.finetune import FineTuneConfig
from condense.train.loop import FitConfig


def _task():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(256, 8, generator=g)
    y = (x[:, :4] * 2).sin()  # (256, 4) a target the MLP can learn

    def loss(m, b):
        return ((m(b[0]) - b[1]) ** 2).mean()

    return Task("fit", TinyMLP, evaluate=lambda m: {"mse": float(loss(m, (x, y)).detach())}, primary_metric="mse",
                higher_is_better=False, inputs=x[:1], train_data=lambda: iter([(x[i:i + 32], y[i:i + 32])
                                                                                for i in range(0, 256, 32)]),
                loss=loss), (x, y)


def test_finetune_step_trains_on_the_task_loss_and_reloads(tmp_path):
    task, (x, y) = _task()
    torch.manual_seed(0)
    m = TinyMLP()
    before = task.evaluate(m)["mse"]
    out = apply_(m, FineTuneConfig(finetune=FitConfig(steps=200, lr=1e-2)), task=task)
    assert out is m and not m.training
    after = task.evaluate(m)["mse"]
    assert after < 0.6 * before
    rec = lineage(m)["transforms"][-1]
    assert rec["config"]["type"] == "FineTuneConfig" and rec["details"]["steps"] == 200
    back = load(save(m, tmp_path / "ft"), model=TinyMLP())
    assert torch.equal(back(x), m(x))
