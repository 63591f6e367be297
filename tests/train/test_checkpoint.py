import hashlib

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from condense.errors import ArtifactError
from condense.train import checkpoint as ckpt
from condense.train.api import TrainConfig
from condense.train.metrics import read_jsonl
from condense.train.trainer import run_loop


class Net(nn.Module):
    """Dropout makes the loss depend on the RNG state, so resume must restore it to match."""

    def __init__(self, width=16):
        super().__init__()
        self.body = nn.Sequential(nn.Linear(4, width), nn.ReLU(), nn.Dropout(0.3), nn.Linear(width, 1))

    def forward(self, x):
        return self.body(x)


def _data():  # 5 batches per epoch: a resume at step 7 lands mid-epoch
    g = torch.Generator().manual_seed(0)
    xs = [torch.randn(8, 4, generator=g) for _ in range(5)]
    return lambda: [(x, x.sum(1, keepdim=True)) for x in xs]


def _loss(m, b):
    return F.mse_loss(m(b[0]), b[1])


def _cfg(**kw):
    base = dict(steps=12, lr=0.01, optimizer="adamw", schedule="cosine", warmup_steps=3, precision="fp32",
                checkpoint_every=7, tensorboard=False, batch_schedule="step", batch_every=5, batch_max=2)
    return TrainConfig(**{**base, **kw})


def _fresh(width=16):
    torch.manual_seed(1)
    return Net(width)


def _tree_hash(root):
    h = hashlib.sha1()
    for p in sorted(root.rglob("*")):
        h.update(str(p.relative_to(root)).encode())
        if p.is_file():
            h.update(p.read_bytes())
    return h.hexdigest()


def test_resume_reproduces_the_uninterrupted_run_exactly(tmp_path):
    full = _fresh()
    ref = run_loop(full, _data(), _loss, _cfg(), out=tmp_path / "full").losses
    part = _fresh()
    first = run_loop(part, _data(), _loss, _cfg(steps=12), out=tmp_path / "part")
    assert (tmp_path / "part/checkpoints/latest").read_text().strip() == "step-00000012"
    resumed_model = _fresh()
    resumed = run_loop(resumed_model, _data(), _loss, _cfg(), resume=tmp_path / "part/checkpoints/step-00000007")
    assert first.losses == ref
    assert resumed.losses == ref  # bit-exact, not approximately
    for p, q in zip(full.parameters(), resumed_model.parameters()):
        assert torch.equal(p, q)


def test_a_crash_mid_write_leaves_the_previous_checkpoint_latest(tmp_path, monkeypatch):
    run_loop(_fresh(), _data(), _loss, _cfg(steps=7), out=tmp_path)
    root = tmp_path / "checkpoints"
    before = _tree_hash(root)
    calls = {"n": 0}
    real = ckpt.save_tensors

    def crash(path, obj):  # the model file is written, then the process "dies" writing the next part
        calls["n"] += 1
        raise KeyboardInterrupt("killed mid-write")

    monkeypatch.setattr(ckpt, "save_tensors", crash)
    with pytest.raises(KeyboardInterrupt):
        run_loop(_fresh(), _data(), _loss, _cfg(steps=12), out=tmp_path, resume=tmp_path)
    monkeypatch.setattr(ckpt, "save_tensors", real)
    assert calls["n"] == 1
    assert (root / "latest").read_text().strip() == "step-00000007"
    assert not (root / "step-00000012").exists() and _tree_hash(root) == before
    assert ckpt.find_checkpoint(tmp_path).name == "step-00000007"


def test_a_checkpoint_from_a_different_model_is_refused_and_left_untouched(tmp_path):
    run_loop(_fresh(), _data(), _loss, _cfg(steps=7), out=tmp_path)
    before = _tree_hash(tmp_path / "checkpoints")
    with pytest.raises(ArtifactError, match="different model.*new --out folder"):
        run_loop(_fresh(width=32), _data(), _loss, _cfg(), out=tmp_path, resume=tmp_path)
    assert _tree_hash(tmp_path / "checkpoints") == before
    with pytest.raises(ArtifactError, match="no checkpoint in"):
        ckpt.find_checkpoint(tmp_path / "nowhere")


def test_keep_last_checkpoints(tmp_path):
    run_loop(_fresh(), _data(), _loss, _cfg(steps=9, checkpoint_every=2, keep_checkpoints=2), out=tmp_path)
    names = sorted(p.name for p in (tmp_path / "checkpoints").iterdir())
    assert names == ["latest", "step-00000008", "step-00000009"]
    assert ckpt.load_tensors(tmp_path / "checkpoints/step-00000009/optim.pt")["state"]  # weights_only loads


def test_a_resumed_run_logs_every_step_once(tmp_path):
    """A run killed after its checkpoint at step 7 has logged steps 8..10; the resume replays them: each step
    index appears once in metrics.jsonl, and the rows up to the checkpoint are the first run's, unchanged."""
    def evaluate(m):  # deterministic, no RNG: eval rows at steps 3, 6, 9, 12
        return {"w": float(sum(p.detach().double().sum() for p in m.parameters()))}

    kw = dict(evaluate=evaluate, primary="w")
    ref = run_loop(_fresh(), _data(), _loss, _cfg(eval_every=3), out=tmp_path / "ref", **kw).losses
    calls = {"n": 0}

    def dies_in_step_11(m, b):  # steps 1-5 take one batch each, steps 6-10 two: 15 calls, then the "kill"
        calls["n"] += 1
        if calls["n"] > 15:
            raise KeyboardInterrupt("killed")
        return _loss(m, b)

    run = tmp_path / "run"
    with pytest.raises(KeyboardInterrupt):
        run_loop(_fresh(), _data(), dies_in_step_11, _cfg(eval_every=3), out=run, **kw)
    before = read_jsonl(run / "metrics.jsonl")
    assert [r["step"] for r in before if r["kind"] == "train"] == list(range(1, 11))
    assert ckpt.find_checkpoint(run).name == "step-00000007"
    with open(run / "metrics.jsonl", "a") as f:
        f.write('{"kind": "train", "st')  # the kill cut the last line short
    resumed = run_loop(_fresh(), _data(), _loss, _cfg(eval_every=3), out=run, resume=run, **kw)
    rows = read_jsonl(run / "metrics.jsonl")
    train_rows = [r for r in rows if r["kind"] == "train"]
    assert [r["step"] for r in train_rows] == list(range(1, 13))
    assert [r["step"] for r in rows if r["kind"] == "eval"] == [3, 6, 9, 12]
    assert [r for r in rows if r["step"] <= 7] == [r for r in before if r["step"] <= 7]  # kept as they were
    assert resumed.losses == ref and [r["loss"] for r in train_rows] == ref  # bit-exact
    # a fresh run (no resume) into the same folder starts the log over
    run_loop(_fresh(), _data(), _loss, _cfg(steps=3, checkpoint_every=0), out=run)
    assert [r["step"] for r in read_jsonl(run / "metrics.jsonl")] == [1, 2, 3]
