"""Low-rank factorization of tinygpt's MLPs, side by side in one process: fp32 vs plain SVD vs activation-aware SVD.

Usage: .venv/bin/python bench/bench_factorize.py [--ratio 0.5] [--threads 2] [--finetune-steps 0] [--no-write]
Writes the `factorize-tinygpt` section of BENCHMARKS.md.

Every MLP Linear (`blocks.*.mlp.fc_in`, `fc_out`) is replaced by two factors holding `--ratio` of its weights
(0.5: 50% fewer MLP parameters). Plain SVD minimises the weight error; activation-aware SVD (SVD-LLM style)
whitens with the calibration inputs' X^T X so the error of the layers' outputs is minimised. Measured: val bits per
byte and per-byte perplexity (task.metrics), MLP and total parameters, forward latency at batch 32 (interleaved
rounds, medians), and factorization time.
"""
from __future__ import annotations

import argparse
import copy
import sys
import time

import _common
import torch

from condense.factorize import FactorizeConfig, factorize_
from condense.tasks.tinygpt import make_task
from condense.train.loop import FitConfig

MLP = ("blocks.*.mlp.fc_in", "blocks.*.mlp.fc_out")


def mlp_params(model: torch.nn.Module) -> int:
    return sum(p.numel() for n, p in model.named_parameters() if ".mlp." in n)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", default="default")
    ap.add_argument("--ratio", type=float, default=0.5, help="fraction of each MLP Linear's weights kept")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--calibration-batches", type=int, default=16)
    ap.add_argument("--finetune-steps", type=int, default=0, help="also fine-tune both for this many steps")
    ap.add_argument("--rounds", type=int, default=15)
    ap.add_argument("--no-write", action="store_true")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    load0 = _common.load_average()
    task = make_task(args.preset)
    fp32 = task.build_model()
    variants: list[tuple[str, torch.nn.Module, float]] = [("fp32", fp32, 0.0)]
    for label, aware in (("plain SVD", False), ("activation-aware SVD", True)):
        ft = FitConfig(steps=args.finetune_steps, lr=3e-4, schedule="cosine") if args.finetune_steps else None
        cfg = FactorizeConfig(rank_ratio=args.ratio, activation_aware=aware, include=MLP,
                              calibration_batches=args.calibration_batches, finetune=ft)
        t0 = time.perf_counter()
        model = factorize_(copy.deepcopy(fp32), cfg, task=task)
        variants.append((label + (f" + {args.finetune_steps} steps" if ft else ""), model, time.perf_counter() - t0))
        print(f"factorized: {label}", file=sys.stderr)
    rows = []
    for label, model, secs in variants:
        m = task.metrics(model)
        rows.append({"label": label, "bpb": m["bits_per_byte"], "ppl": m["perplexity"], "mlp": mlp_params(model),
                     "total": sum(p.numel() for p in model.parameters()), "secs": secs})
    x = task.batch(32)
    with torch.inference_mode():
        p50 = _common.interleaved_p50({r["label"]: (lambda m=m: task.run_batch(m, x)) for r, (_, m, _) in
                                       zip(rows, variants)}, rounds=args.rounds)
    load1 = _common.load_average()
    base = rows[0]
    lines = ["| variant | bits/byte | perplexity | vs fp32 | MLP params | MLP params vs fp32 | total params | "
             "forward @ batch 32 | speed vs fp32 | factorize time |", "|" + "---|" * 10]
    for r in rows:
        lat = p50[r["label"]]
        lines.append(f"| {r['label']} | {r['bpb']:.4f} | {r['ppl']:.4f} | {r['ppl'] - base['ppl']:+.4f} | "
                     f"{r['mlp']:,} | {r['mlp'] / base['mlp']:.3f}x | {r['total']:,} | {lat * 1e3:.1f} ms | "
                     f"{p50['fp32'] / lat:.2f}x | {r['secs']:.1f} s |")
    plain, aware = rows[1], rows[2]
    ok = aware["ppl"] < plain["ppl"]
    checks = [f"- MLP parameters: {1 - aware['mlp'] / base['mlp']:.1%} fewer (target 50%)",
              f"- activation-aware SVD perplexity {aware['ppl']:.4f} vs plain SVD {plain['ppl']:.4f} "
              f"(target: lower): {'met' if ok else 'MISSED'}"]
    cmd = "python bench/bench_factorize.py " + " ".join(sys.argv[1:])
    notes = (f"Baseline: fp32 tinygpt (`{args.preset}`). Every MLP Linear factorized to rank "
             f"floor({args.ratio} * out * in / (out + in)); activation-aware: {args.calibration_batches} calibration "
             f"batches of 8x128 bytes from the train split, damp 0.01. Perplexity per byte on the val split. Latency: "
             f"forward of 32x128 bytes, median of {args.rounds} interleaved rounds. {load0} at start, {load1} after "
             "timing.")
    body = (f"## Low-rank factorization: tinygpt ({args.preset}) MLPs, plain vs activation-aware SVD\n\n"
            + _common.header(cmd.strip(), args.threads, notes) + "\n\n" + "\n".join(lines) + "\n\n"
            + "\n".join(checks) + "\n")
    if not args.no_write:
        _common.write_section("factorize-tinygpt", body)
    print(body)


if __name__ == "__main__":
    main()
