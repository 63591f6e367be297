import json

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from condense.core.task import Task
from condense.errors import ConfigError
from condense.train.api import TrainConfig, train
from condense.train.loop import FitConfig
from condense.train.metrics import read_jsonl
from condense.train.trainer import run_loop


def _mse(m, b):
    return F.mse_loss(m(b[0]), b[1])


def _data(n=8, bs=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(bs, 3, generator=g), torch.randn(bs, 1, generator=g)) for _ in range(n)]


def test_grad_accumulation_equals_one_big_batch():
    torch.manual_seed(0)
    a, b = nn.Linear(3, 1), nn.Linear(3, 1)
    b.load_state_dict(a.state_dict())
    small = _data(8, 4)
    big = [(torch.cat([small[i][0], small[i + 1][0]]), torch.cat([small[i][1], small[i + 1][1]]))
           for i in range(0, 8, 2)]
    cfg = dict(steps=4, lr=0.1, optimizer="sgd", momentum=0.0, grad_clip=None)
    la = run_loop(a, small, _mse, FitConfig(grad_accum=2, **cfg)).losses
    lb = run_loop(b, big, _mse, FitConfig(**cfg)).losses
    assert la == pytest.approx(lb, rel=1e-5)
    assert torch.allclose(a.weight, b.weight, atol=1e-6)


def test_batch_size_schedule_consumes_growing_batches_and_rejects_more_than_the_data():
    r = run_loop(nn.Linear(3, 1), _data(8, 4), _mse,
                 FitConfig(steps=4, batch_schedule="step", batch_every=2, batch_growth=2, batch_max=4))
    assert r.samples == 4 * (1 + 1 + 2 + 2)
    with pytest.raises(ConfigError, match="needs 16 batches per step but the data has only 8"):
        run_loop(nn.Linear(3, 1), _data(8, 4), _mse,
                 FitConfig(steps=40, batch_schedule="step", batch_every=1, batch_growth=2, batch_max=16))
    gen = lambda: iter(_data(3, 4))  # noqa: E731  (length unknown until an epoch ends)
    with pytest.raises(ConfigError, match="reached 4 batches per step"):
        run_loop(nn.Linear(3, 1), gen, _mse, FitConfig(steps=5, batch_schedule="step", batch_every=1, batch_max=4))


def test_bf16_autocast_trains_close_to_fp32():
    torch.manual_seed(0)
    a = nn.Sequential(nn.Linear(3, 16), nn.ReLU(), nn.Linear(16, 1))
    b = nn.Sequential(nn.Linear(3, 16), nn.ReLU(), nn.Linear(16, 1))
    b.load_state_dict(a.state_dict())
    la = run_loop(a, _data(), _mse, FitConfig(steps=20, lr=0.01)).losses
    lb = run_loop(b, _data(), _mse, FitConfig(steps=20, lr=0.01, precision="bf16")).losses
    assert la != lb and lb[-1] == pytest.approx(la[-1], rel=0.05)
    with pytest.raises(ConfigError, match="fp16' needs a CUDA device"):
        run_loop(nn.Linear(3, 1), _data(), _mse, FitConfig(steps=1, precision="fp16"))


def _toy_task():
    torch.manual_seed(0)
    x = torch.randn(256, 4)
    y = (x[:, 0] > 0).long()

    def evaluate(m):
        with torch.no_grad():
            return {"accuracy": float((m(x).argmax(-1) == y).float().mean())}

    return Task("toy", lambda: nn.Linear(4, 2), evaluate=evaluate, primary_metric="accuracy", inputs=x[:1],
                train_data=lambda: [(x[i:i + 32], y[i:i + 32]) for i in range(0, 256, 32)],
                loss=lambda m, b: F.cross_entropy(m(b[0]), b[1]), skeleton=lambda: nn.Linear(4, 2))


def test_target_early_stopping_and_metrics_files(tmp_path):
    task = _toy_task()
    cfg = TrainConfig(steps=200, lr=0.05, precision="fp32", eval_every=5, target=0.9, stop_at_target=True)
    _, r = train(task, cfg, out=tmp_path / "run")
    assert r.step_to_target is not None and r.steps == r.step_to_target < 200
    assert r.evals[-1]["accuracy"] >= 0.9 and r.time_to_target_s <= r.train_s
    rows = read_jsonl(tmp_path / "run" / "metrics.jsonl")
    assert [row["step"] for row in rows if row["kind"] == "train"] == list(range(1, r.steps + 1))
    assert len([row for row in rows if row["kind"] == "eval"]) == len(r.evals)
    assert list((tmp_path / "run" / "tb").glob("events.out.tfevents.*"))
    summary = json.loads((tmp_path / "run" / "train.json").read_text())
    assert summary["steps"] == r.steps and summary["samples"] == 32 * r.steps
    # patience: a learning rate far too small never improves by min_delta -> stops after `patience` evaluations
    _, r2 = train(task, TrainConfig(steps=200, lr=1e-9, precision="fp32", eval_every=2, patience=3,
                                    min_delta=0.01, tensorboard=False))
    assert r2.stopped_early and r2.steps == 8  # evals at 2 (best), 4, 6, 8 (3 without improvement)


def test_train_config_round_trips_and_validates():
    from condense.core.config import config_from_dict

    cfg = TrainConfig(steps=5, betas=(0.8, 0.9), comm_hook="int8", target=0.5)
    assert config_from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg
    with pytest.raises(ConfigError, match="unknown comm_hook 'zip'"):
        TrainConfig(comm_hook="zip")
    with pytest.raises(ConfigError, match="DDP only"):
        TrainConfig(strategy="fsdp", comm_hook="fp16")
    with pytest.raises(ConfigError, match="needs several processes"):
        run_loop(nn.Linear(3, 1), _data(), _mse, TrainConfig(steps=1, strategy="ddp", precision="fp32"))


def test_a_comm_hook_registered_after_import_is_accepted(monkeypatch):
    from condense.train.distributed.hooks import COMM_HOOKS

    with pytest.raises(ConfigError, match="unknown comm_hook 'mine'"):
        TrainConfig(comm_hook="mine")
    monkeypatch.setitem(COMM_HOOKS._items, "mine", lambda cfg: (None, None))
    assert TrainConfig(comm_hook="mine").comm_hook == "mine"
