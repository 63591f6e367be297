"""Runs in each of 2 spawned processes: parameter-server training (sync equivalence, checkpoint + resume, async
staleness, push codecs). Results go to files in `out` that tests/train/test_ps.py compares with references."""
import json
import os
import time
from pathlib import Path

import torch
import torch.distributed as dist

from tests.train._dist_worker import make_model, mse, rank_batches

CODECS = ("none", "fp16", "int8", "powersgd")
SGD = dict(lr=0.1, optimizer="sgd", grad_clip=None, precision="fp32", tensorboard=False)


def _slow_mse(rank):
    def loss(m, b):  # rank 1 is 5x slower than rank 0: its gradients arrive several updates stale
        time.sleep(0.05 if rank == 1 else 0.01)
        return mse(m, b)

    return loss


def worker(rank, world, port, out):
    from condense.train.api import TrainConfig
    from condense.train.distributed.ps import ps_fit

    torch.set_num_threads(1)
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank), MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port))
    out = Path(out)
    res = {}
    # 1. sync, per-worker batch B, SGD with momentum: compared with one process on batch 2B
    model = make_model()
    r = ps_fit(model, rank_batches(), mse, TrainConfig(steps=5, strategy="ps", **SGD))
    if rank == 0:
        torch.save(model.state_dict(), out / "ps.pt")
        res["sync"] = {"losses": r.losses, "stats": r.stats, "samples": r.samples}
    # 2. checkpoint at step 3 of 6 (AdamW, cosine), then resume from it
    cfg = TrainConfig(steps=6, strategy="ps", lr=0.01, optimizer="adamw", schedule="cosine", precision="fp32",
                      tensorboard=False, checkpoint_every=3)
    full = make_model()
    res["full"] = ps_fit(full, rank_batches(), mse, cfg, out=out / "ckpt").losses
    resumed = make_model(seed=5)  # other initial weights: the checkpoint must replace them
    res["resumed"] = ps_fit(resumed, rank_batches(), mse, cfg, out=out / "resumed",
                            resume=out / "ckpt/checkpoints/step-00000003").losses
    res["weights_equal"] = all(torch.equal(a, b) for a, b in zip(full.state_dict().values(),
                                                                   resumed.state_dict().values()))
    # early stopping decided on rank 0 (a score that never improves, patience 2): every worker stops at step 3
    r = ps_fit(make_model(), rank_batches(), mse, TrainConfig(steps=20, strategy="ps", eval_every=1, patience=2, **SGD),
               evaluate=lambda m: {"score": 0.5}, primary="score")
    (out / f"early-rank{rank}.json").write_text(json.dumps({"steps": r.steps, "stopped": r.stopped_early,
                                                            "evals": len(r.evals)}))
    # 3. async: unbounded, then bounded staleness, with a slow worker
    for name, bound in (("async_unbounded", 1000), ("async_bounded", 1)):
        r = ps_fit(make_model(), rank_batches(), _slow_mse(rank),
                   TrainConfig(steps=24, strategy="ps", ps_mode="async", max_staleness=bound, **SGD))
        if rank == 0:
            res[name] = {"stats": r.stats, "losses": r.losses, "steps": r.steps}
    # 4. bytes per step through each push codec
    for codec in CODECS:
        r = ps_fit(make_model(), rank_batches(), mse, TrainConfig(steps=4, strategy="ps", comm_hook=codec,
                                                                  powersgd_rank=1, **{**SGD, "lr": 0.05}))
        if rank == 0:
            res[codec] = {"bytes": r.bytes_per_step, "losses": r.losses}
    if rank == 0:
        (out / "results.json").write_text(json.dumps(res))
    dist.barrier()
    dist.destroy_process_group()
