"""Parameter-server training side by side with DDP (2 processes, gloo / torch.distributed.rpc on CPU), on digits and
tinygpt: steps/s, bytes moved per step, final quality after the same steps, asynchronous staleness and push
compression (int8, PowerSGD).

Usage: .venv/bin/python bench/bench_ps.py [--digits-steps 50] [--gpt-steps 100] [--gpt-preset tiny] [--rounds 2]
       [--variants ddp,ps,...] [--no-write]
Writes the `train-ps` section of BENCHMARKS.md. Every variant trains from the same initial weights on the same
shards (rank r takes batches r, r + 2, ...); rounds repeat all variants round-robin and report the median speed;
quality and bytes are those of the first round.
"""
from __future__ import annotations

import argparse
import json
import socket
import statistics
import sys
import tempfile
import time
from pathlib import Path

import _common
import torch

from condense.tasks import get_task
from condense.tasks.tinygpt import get_preset
from condense.train.api import TrainConfig, fresh_model

# name -> (strategy, TrainConfig fields, updates per step of a sync run: async applies one worker's batch each)
VARIANTS = {
    "ddp": ("ddp", {"comm_hook": "allreduce"}, 1),
    "ddp-int8": ("ddp", {"comm_hook": "int8"}, 1),
    "ps": ("ps", {}, 1),
    "ps-int8": ("ps", {"comm_hook": "int8"}, 1),
    "ps-powersgd4": ("ps", {"comm_hook": "powersgd", "powersgd_rank": 4}, 1),
    "ps-async4": ("ps", {"ps_mode": "async", "max_staleness": 4}, 2),
    "ps-async0": ("ps", {"ps_mode": "async", "max_staleness": 0}, 2),
    "ps-async4-int8": ("ps", {"ps_mode": "async", "max_staleness": 4, "comm_hook": "int8"}, 2),
}
LABELS = {"ddp": "DDP, fp32 all-reduce (baseline)", "ddp-int8": "DDP, int8 all-gather hook",
          "ps": "PS sync", "ps-int8": "PS sync, int8 pushes", "ps-powersgd4": "PS sync, PowerSGD rank 4 pushes",
          "ps-async4": "PS async, max_staleness 4", "ps-async0": "PS async, max_staleness 0",
          "ps-async4-int8": "PS async, max_staleness 4, int8 pushes"}


def _cfg(task_name: str, steps: int, preset: str, **kw) -> TrainConfig:
    base = dict(steps=steps, warmup_steps=max(1, steps // 10), schedule="cosine", precision="fp32",
                tensorboard=False, optimizer="adamw")
    if task_name == "digits":
        return TrainConfig(**base, lr=3e-3, **kw)
    p = get_preset(preset)
    return TrainConfig(**base, lr=p.lr, betas=(0.9, 0.95), weight_decay=p.weight_decay, decay_matrices_only=True,
                       grad_clip=p.grad_clip, **kw)


def _run(task, name: str, steps: int, preset: str) -> dict:
    import torch.distributed as dist

    from condense.train.distributed.ps import ps_fit
    from condense.train.trainer import run_loop

    strategy, extra, per_step = VARIANTS[name]
    if "powersgd_rank" in extra:
        extra = {**extra, "powersgd_start": max(2, steps // 10)}
    cfg = _cfg(task.name, steps * per_step, preset, strategy=strategy, **extra)
    model = fresh_model(task, 0)
    fn = ps_fit if strategy == "ps" else run_loop
    r = fn(model, task.train_data, task.loss, cfg, input_kind=task.input_kind)
    row = None
    if dist.get_rank() == 0:
        payload = r.bytes_per_step
        # all processes together: DDP's 2 ranks each send their payload once to the other (2 processes: ring
        # all-reduce and all-gather alike); the PS count is already what crossed RPC (pushes + weights back)
        wire = [2 * b for b in payload] if strategy == "ddp" else payload
        start = cfg.powersgd_start if "powersgd_rank" in extra else 0  # PowerSGD: once it compresses
        row = {"name": name, "updates": r.steps, "samples": r.samples, "train_s": r.train_s,
               "bytes": sum(wire[start:]) / len(wire[start:]), "bytes_mean": sum(wire) / len(wire),
               "quality": task.evaluate(model), "stats": r.stats}
    dist.barrier()
    return row


def _worker(rank: int, world: int, port: int, args: argparse.Namespace, out: str) -> None:
    import os

    import torch.distributed as dist

    torch.set_num_threads(1)
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank), MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port))
    dist.init_process_group("gloo")
    jobs = [("digits", get_task("digits"), args.digits_steps),
            (f"tinygpt ({args.gpt_preset})", get_task("tinygpt", preset=args.gpt_preset), args.gpt_steps)]
    rows: dict = {}
    for label, task, steps in jobs:
        for name in ("ddp", "ps"):  # untimed: first-use costs (optimizer imports, DDP and RPC set-up paths)
            _run(task, name, 2, args.gpt_preset)
        for rnd in range(args.rounds):
            for name in args.variants:
                t0 = time.perf_counter()
                row = _run(task, name, steps, args.gpt_preset)
                if rank == 0:
                    row["wall_s"] = time.perf_counter() - t0
                    rows.setdefault(label, {}).setdefault(name, []).append(row)
                    print(f"{label} round {rnd} {name}: {row['updates'] / row['train_s']:.2f} updates/s, "
                          f"{row['quality']}, {row['wall_s']:.1f} s with evaluation", flush=True)
    if rank == 0:
        Path(out).write_text(json.dumps(rows))
    dist.barrier()
    dist.destroy_process_group()


def _table(task_rows: dict, primary: str) -> list[str]:
    lines = [f"| variant | updates | samples | updates/s (median) | samples/s | bytes/step, all processes | "
             f"vs DDP bytes | {primary} | vs DDP | staleness max / mean | stale dropped |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    base = task_rows["ddp"][0] if "ddp" in task_rows else None
    base_speed = statistics.median(r["samples"] / r["train_s"] for r in task_rows["ddp"]) if base else None
    for name, rs in task_rows.items():
        r0 = rs[0]
        ups = statistics.median(r["updates"] / r["train_s"] for r in rs)
        sps = statistics.median(r["samples"] / r["train_s"] for r in rs)
        q = r0["quality"][primary]
        st = r0["stats"]
        stale = f"{st['max_staleness_seen']} / {st['mean_staleness']:.2f}" if st.get("ps_mode") == "async" else "-"
        dropped = str(st["dropped_stale"]) if st.get("ps_mode") == "async" else "-"
        lines.append(
            f"| {LABELS[name]} | {r0['updates']} | {r0['samples']:,} | {ups:.2f} | {sps:,.0f}"
            + (f" ({sps / base_speed:.2f}x)" if base_speed else "") + f" | {r0['bytes'] / 1e3:,.1f} kB | "
            + (f"{r0['bytes'] / base['bytes']:.2f}x" if base else "-") + f" | {q:.4f} | "
            + (f"{q - base['quality'][primary]:+.4f}" if base else "-") + f" | {stale} | {dropped} |")
    return lines


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--digits-steps", type=int, default=50, help="sync steps (async: twice as many updates)")
    ap.add_argument("--gpt-steps", type=int, default=100)
    ap.add_argument("--gpt-preset", default="tiny")
    ap.add_argument("--rounds", type=int, default=2, help="round-robin repetitions of every variant (speed median)")
    ap.add_argument("--variants", type=lambda v: v.split(","), default=list(VARIANTS),
                    help=f"comma-separated, from {','.join(VARIANTS)}")
    ap.add_argument("--no-write", action="store_true")
    args = ap.parse_args()
    unknown = sorted(set(args.variants) - set(VARIANTS))
    if unknown:
        ap.error(f"--variants: unknown {unknown}; choose from {','.join(VARIANTS)}")
    import torch.multiprocessing as mp

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    load = _common.load_average()
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as d:
        out = Path(d) / "rows.json"
        mp.spawn(_worker, args=(2, port, args, str(out)), nprocs=2, join=True)
        rows = json.loads(out.read_text())
    wall = time.perf_counter() - t0
    parts = []
    for label, task_rows in rows.items():
        primary = "accuracy" if label == "digits" else "bits_per_byte"
        parts += [f"### {label}", "", *_table(task_rows, primary), ""]
    notes = (f"2 processes (1 torch thread each), fp32, AdamW with warm-up + cosine, from the same initial weights; "
             f"digits {args.digits_steps} steps at batch 64 per worker, tinygpt `{args.gpt_preset}` "
             f"{args.gpt_steps} steps at batch {get_preset(args.gpt_preset).batch_size} x "
             f"{get_preset(args.gpt_preset).model.block_size} per worker. DDP and PS sync take one optimizer step "
             f"per round of both workers' batches; PS async applies each worker's gradient alone, so it runs twice "
             f"the updates to see the same samples (its LR schedule spans them). PS: rank 0 hosts the server "
             f"(weights + optimizer state) and trains too; rank 1 pushes over torch.distributed.rpc (TensorPipe) and "
             f"gets the fp32 weights back in the same call. Bytes/step: tensor bytes crossing between the processes "
             f"per optimizer update (mean over updates), all processes together: PS = rank 1's push payload + the "
             f"weights sent back; "
             f"DDP = each rank's all-reduce/all-gather payload (counted at the collective) x 2 (with 2 processes, "
             f"each rank's payload crosses once to the other); PowerSGD: the mean over updates after it starts "
             f"(10% of the steps); async: rank 0's updates move nothing, rank 1's a push and a pull, and a dropped "
             f"push still costs its bytes. Speed: updates/s and samples/s of training time (excludes RPC start-up "
             f"and evaluation; samples in applied gradients: the batches of dropped ones are computed, not counted), "
             f"median of {args.rounds} interleaved round(s), ratio vs DDP. Quality after the run: digits test "
             f"accuracy (higher is better), tinygpt validation bits/byte (lower is better); async runs are not "
             f"deterministic. Staleness: updates between the weights a gradient was computed on and the one it was "
             f"applied to; dropped: gradients older than max_staleness, never applied. Machine {load} at the start; "
             f"whole run {wall:.0f} s.")
    cmd = "python bench/bench_ps.py" + "".join(f" {a}" for a in sys.argv[1:])
    body = "\n".join(["## Training: parameter server vs DDP", "", _common.header(cmd, 1, notes), "", *parts])
    print(body)
    if not args.no_write:
        _common.write_section("train-ps", body)


if __name__ == "__main__":
    main()
