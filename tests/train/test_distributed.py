"""Two processes on gloo (torch.multiprocessing spawn), one session shared by the checks below."""
import json

import pytest
import torch
import torch.multiprocessing as mp

from condense.train.distributed.hooks import int8_bytes
from condense.train.loop import FitConfig
from condense.train.trainer import run_loop
from tests.train import _dist_worker as w


@pytest.fixture(scope="module")
def session(tmp_path_factory):
    out = tmp_path_factory.mktemp("dist")
    mp.spawn(w.worker, args=(2, w.free_port(), str(out)), nprocs=2, join=True)
    return out, json.loads((out / "results.json").read_text())


def test_ddp_with_batch_b_per_process_matches_one_process_with_batch_2b(session):
    out, _ = session
    ref = w.make_model()
    run_loop(ref, w.global_batches(), w.mse, FitConfig(steps=5, lr=0.1, optimizer="sgd", grad_clip=None))
    ddp = torch.load(out / "ddp.pt", weights_only=True)
    moved = 0.0
    for k, v in ref.state_dict().items():
        assert torch.allclose(ddp[k], v, atol=1e-6), k
        moved += float((v - w.make_model().state_dict()[k]).abs().sum())
    assert moved > 0.1  # the weights did change: the comparison is not trivially true


def test_comm_hook_bytes_are_exact(session):
    _, res = session
    shapes = [p.shape for p in w.make_model().parameters()]
    n = sum(s.numel() for s in shapes)  # 58 gradients, one DDP bucket
    assert res["allreduce"]["bytes"] == [4 * n] * 4
    assert res["fp16"]["bytes"] == [2 * n] * 4 and res["bf16"]["bytes"] == [2 * n] * 4
    assert res["int8"]["bytes"] == [int8_bytes(n)] * 4 == [n + 4] * 4
    # PowerSGD rank 1: a matrix (rows x cols) is sent as P (rows x 1) + Q (cols x 1) when that is at least 2x
    # smaller, otherwise uncompressed with the biases; steps 0-1 are plain all-reduce (start_powerSGD_iter=2).
    compressed = sum(4 * (s[0] + s[1]) for s in shapes if len(s) == 2 and 2 * (s[0] + s[1]) < s[0] * s[1])
    plain = sum(4 * s.numel() for s in shapes if not (len(s) == 2 and 2 * (s[0] + s[1]) < s[0] * s[1]))
    assert res["powersgd"]["bytes"][:2] == [4 * n] * 2
    assert res["powersgd"]["bytes"][2:] == [compressed + plain] * 2
    shapes = [p.shape for p in w.make_model("blocks").parameters()]
    small = lambda s: not (len(s) == 2 and 2 * (s[0] + s[1]) < s[0] * s[1])  # noqa: E731  (sent uncompressed)
    assert res["powersgd_buckets"]["bytes"][2:] == [sum(4 * s.numel() if small(s) else 4 * (s[0] + s[1])
                                                       for s in shapes)] * 2
    ref = res["allreduce"]["losses"]
    for hook in ("fp16", "bf16", "int8"):
        assert res[hook]["losses"] == pytest.approx(ref, rel=2e-2), hook


def test_fsdp2_matches_ddp_and_resumes_exactly(session):
    _, res = session
    assert res["fsdp_curve"] == pytest.approx(res["ddp_curve"], rel=1e-5)
    assert res["fsdp_curve"][-1] < res["fsdp_curve"][0]
    assert res["fsdp_resumed"] == res["fsdp_curve"]


def test_pipeline_stages_match_one_process(session):
    from condense.tasks.tinygpt import lm_loss

    out, res = session
    ref = w.tiny_gpt()
    ref_losses = run_loop(ref, w.gpt_batches(), lm_loss, FitConfig(steps=4, **w.PP_CFG)).losses
    assert res["pp_losses"] == pytest.approx(ref_losses, rel=1e-5)
    ranks = [torch.load(out / f"pp-rank{r}.pt", weights_only=True) for r in (0, 1)]
    owner = lambda k: 0 if k.startswith(("wte", "wpe", "blocks.0.")) else 1  # noqa: E731
    init = w.tiny_gpt().state_dict()
    for k, v in ref.state_dict().items():
        assert torch.allclose(ranks[owner(k)][k], v, atol=1e-5), k
        if k.startswith("lm_head"):
            assert not torch.equal(v, init[k])  # trained
