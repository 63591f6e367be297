"""Parameter-server training: two processes (torch.multiprocessing spawn, RPC + gloo), one session shared by the
checks below; codecs and config checks in one process."""
import json

import pytest
import torch
import torch.multiprocessing as mp

from condense.cli import main
from condense.errors import ConfigError
from condense.train.api import TrainConfig
from condense.train.distributed.codecs import PUSH_CODECS, PowerSGDCodec, powersgd_compresses
from condense.train.distributed.hooks import int8_bytes
from condense.train.distributed.ps import ps_fit
from condense.train.loop import FitConfig
from condense.train.trainer import run_loop
from tests.train import _dist_worker as dw
from tests.train import _ps_worker as w


@pytest.fixture(scope="module")
def session(tmp_path_factory):
    out = tmp_path_factory.mktemp("ps")
    mp.spawn(w.worker, args=(2, dw.free_port(), str(out)), nprocs=2, join=True)
    return out, json.loads((out / "results.json").read_text())


def test_sync_ps_with_batch_b_per_worker_matches_one_process_with_batch_2b(session):
    out, res = session
    ref = dw.make_model()
    ref_losses = run_loop(ref, dw.global_batches(), dw.mse,
                          FitConfig(steps=5, lr=0.1, optimizer="sgd", grad_clip=None)).losses
    ps = torch.load(out / "ps.pt", weights_only=True)
    moved = 0.0
    for k, v in ref.state_dict().items():
        assert torch.allclose(ps[k], v, atol=1e-6), k
        moved += float((v - dw.make_model().state_dict()[k]).abs().sum())
    assert moved > 0.1  # the weights did change: the comparison is not trivially true
    assert res["sync"]["losses"] == pytest.approx(ref_losses, rel=1e-5)  # the workers' mean = the 2B batch's loss
    assert res["sync"]["samples"] == 5 * 8
    assert res["sync"]["stats"]["updates"] == 5 and res["sync"]["stats"]["max_staleness_seen"] == 0


def test_sync_ps_resumes_from_a_checkpoint_exactly(session):
    out, res = session
    assert res["resumed"] == res["full"] and len(res["full"]) == 6
    assert res["weights_equal"]  # the resumed model started from other weights (seed 5): the checkpoint replaced them
    assert sorted(p.name for p in (out / "ckpt/checkpoints/step-00000003").iterdir()) == [
        "meta.json", "model.safetensors", "optim.pt", "rng-rank0.pt", "rng-rank1.pt"]


def test_sync_ps_stops_every_worker_at_the_step_rank_0_decides(session):
    out, _ = session
    ranks = [json.loads((out / f"early-rank{r}.json").read_text()) for r in (0, 1)]
    assert ranks[0] == {"steps": 3, "stopped": True, "evals": 3}  # evaluations at 1 (best), 2, 3: 2 without gain
    assert ranks[1]["steps"] == 3 and ranks[1]["evals"] == 0  # rank 1 only follows the broadcast decision


def test_async_ps_reports_staleness_and_never_applies_a_gradient_older_than_the_bound(session):
    _, res = session
    free, bounded = res["async_unbounded"]["stats"], res["async_bounded"]["stats"]
    # a worker 5x slower than the other computes on weights several updates old ...
    assert free["max_staleness_seen"] >= 2 and free["dropped_stale"] == 0 and 0 < free["mean_staleness"]
    # ... which max_staleness=1 refuses: those gradients are dropped, none older than 1 is applied
    assert bounded["max_staleness_seen"] <= 1 and bounded["dropped_stale"] >= 1
    assert res["async_bounded"]["steps"] == bounded["updates"] == 24


def test_push_codec_bytes_are_exact(session):
    _, res = session
    shapes = [p.shape for p in dw.make_model().parameters()]
    n = sum(s.numel() for s in shapes)  # 58 parameters; rank 1 pushes and gets the fp32 weights back each step
    pull = 4 * n
    assert res["none"]["bytes"] == [4 * n + pull] * 4
    assert res["fp16"]["bytes"] == [2 * n + pull] * 4
    assert res["int8"]["bytes"] == [int8_bytes(n) + pull] * 4
    low = sum(4 * (s[0] + s[1]) if powersgd_compresses(s, 1) else 4 * s.numel() for s in shapes)  # P, Q or all
    assert res["powersgd"]["bytes"] == [4 * n + pull] * 2 + [low + pull] * 2  # powersgd_start=2
    for codec in ("fp16", "int8", "powersgd"):
        assert res[codec]["losses"] == pytest.approx(res["none"]["losses"], rel=2e-2), codec


def test_codecs_round_trip_within_their_error():
    torch.manual_seed(0)
    grads = [torch.randn(16, 8), torch.randn(16), torch.randn(4, 3, 3)]
    shapes = [g.shape for g in grads]
    top = max(float(g.abs().max()) for g in grads)  # 180 values: one int8 block, one scale (top / 127)
    cfg = TrainConfig(strategy="ps", comm_hook="none", powersgd_rank=2, powersgd_start=0)
    for name, tol in (("none", 0.0), ("fp16", 1e-3), ("bf16", 1e-2), ("int8", 0.5 / 127)):
        codec = PUSH_CODECS.get(name)(cfg)
        back = codec.decode(codec.encode(grads), shapes)
        for g, b in zip(grads, back):
            assert b.shape == g.shape and float((b - g).abs().max()) <= tol * top + 1e-7, name


def test_powersgd_error_feedback_sends_everything_eventually():
    """Every push sends P Q^T and keeps M - P Q^T for the next: what was decoded so far plus the error kept equals
    the sum of the gradients, exactly up to float rounding."""
    torch.manual_seed(0)
    codec = PowerSGDCodec(rank=1, start=0, seed=0)
    shapes = [torch.Size([32, 16]), torch.Size([16])]
    sent, decoded = torch.zeros(32, 16), torch.zeros(32, 16)
    for _ in range(5):
        grads = [torch.randn(32, 16), torch.randn(16)]
        payload = codec.encode(grads)
        assert [t.shape for t in payload] == [(16,), (32, 1), (16, 1)]
        back = codec.decode(payload, shapes)
        assert torch.equal(back[1], grads[1])  # the bias travels uncompressed
        sent += grads[0]
        decoded += back[0]
    assert torch.allclose(decoded + codec.error[0], sent, atol=1e-4)
    assert (decoded - sent).abs().max() > 0.1  # the low-rank part alone is not the sum: the feedback matters


def test_config_and_cli_errors_name_the_fix(capsys):
    with pytest.raises(ConfigError, match="max_staleness must be an integer in 0"):
        TrainConfig(strategy="ps", ps_mode="async", max_staleness=-1)
    with pytest.raises(ConfigError, match="ps_mode must be 'sync' or 'async'"):
        TrainConfig(strategy="ps", ps_mode="stale")
    with pytest.raises(ConfigError, match="no push codec for strategy='ps'"):
        TrainConfig(strategy="ps", comm_hook="allreduce")
    with pytest.raises(ConfigError, match="use ps_mode='sync'"):
        TrainConfig(strategy="ps", ps_mode="async", checkpoint_every=5)
    with pytest.raises(ConfigError, match="at least 2 processes"):
        ps_fit(dw.make_model(), dw.rank_batches(), dw.mse, TrainConfig(steps=1, strategy="ps"))
    for argv, msg in ((["--strategy", "ps"], "needs at least 2 processes (rank 0 hosts the server and trains too), "
                                             "got 1; add --nproc 2"),
                      (["--strategy", "ps", "--nproc", "2", "--set", "max_staleness=-1"],
                       "max_staleness must be an integer in 0..1000000, got -1")):
        assert main(["train", "--task", "digits", *argv, "--out", "x"]) == 2
        err = capsys.readouterr().err
        assert msg in err and len(err.strip().splitlines()) == 1, err


def test_the_launcher_passes_the_strategy_to_every_worker():
    import argparse

    from condense.cli.train import _worker_args

    args = argparse.Namespace(task="digits", out="o", device="cpu", task_option=[], set=["ps_mode=async"], steps=3,
                              strategy="ps", resume=None, finetune=False)
    assert _worker_args(args) == ["--task", "digits", "--out", "o", "--device", "cpu", "--set", "ps_mode=async",
                                  "--steps", "3", "--strategy", "ps"]
