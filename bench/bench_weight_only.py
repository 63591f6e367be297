"""Weight-only quantization of tinygpt (default preset), side by side in one process: fp32 vs RTN vs GPTQ.

Usage: .venv/bin/python bench/bench_weight_only.py [--bits 4,3] [--group-size 32] [--threads 2] [--act-order]
Writes the `weight-only-tinygpt` section of BENCHMARKS.md (pass --no-write to only print).

Measured per variant: validation bits per byte and per-byte perplexity (task.metrics), perplexity increase over
fp32, artifact size on disk (condense.save) and its ratio to fp32, decode tokens/s at batch 1 (task.generate with
the KV cache, timed with measurement.timing.time_call in round-robin rounds over the variants; median), and how
long quantization took.
"""
from __future__ import annotations

import argparse
import copy
import os
import sys
import time

import _common  # noqa: F401  (sets sys.path)
import torch

from condense.measurement.api import artifact_bytes
from condense.quantize import quantize_
from condense.quantize.weight_only import WeightOnlyConfig, WeightOnlyMethod
from condense.tasks.tinygpt import make_task


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", default="default")
    ap.add_argument("--bits", default="4,3", help="comma separated, from 2,3,4,8")
    ap.add_argument("--group-size", type=int, default=32,
                    help="32: the largest power of two dividing both widths (160, 640) of the default preset")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--act-order", action="store_true", help="GPTQ with act-order")
    ap.add_argument("--damp", type=float, default=0.01)
    ap.add_argument("--calibration-batches", type=int, default=16)
    ap.add_argument("--parallel", action="store_true", help="GPTQ from fp32 activations instead of sequential")
    _common.add_decode_args(ap, rounds=5)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    load0 = os.getloadavg()[0]
    task = make_task(args.preset)
    fp32 = task.build_model()

    variants: list[tuple[str, torch.nn.Module, float]] = [("fp32", fp32, 0.0)]
    for bits in (int(b) for b in args.bits.split(",")):
        for method in (WeightOnlyMethod.RTN, WeightOnlyMethod.GPTQ):
            gptq = method is WeightOnlyMethod.GPTQ
            cfg = WeightOnlyConfig(method=method, bits=bits, group_size=args.group_size,
                                   act_order=args.act_order and gptq, damp=args.damp,
                                   calibration_batches=args.calibration_batches, sequential=not args.parallel)
            t0 = time.perf_counter()
            model = quantize_(copy.deepcopy(fp32), cfg, task=task)
            label = f"{method.name} {bits}-bit" + (" act-order" if cfg.act_order else "")
            variants.append((label, model, time.perf_counter() - t0))

    rows = []
    for label, model, qtime in variants:
        metrics = task.metrics(model)
        rows.append({"label": label, "bpb": metrics["bits_per_byte"], "ppl": metrics["perplexity"],
                     "size": artifact_bytes(model), "qtime": qtime})
        print(f"measured quality and size of {label}", file=sys.stderr)
    # decode timing round-robin over the variants, so a change in machine load hits every variant alike
    for r, tok_s in zip(rows, _common.decode_tokens_per_s(task, [v[1] for v in variants], args, min_time_s=1.0)):
        r["tok_s"] = tok_s

    load = os.getloadavg()[0]  # other processes compete for the same cores: say how busy the machine was
    base = rows[0]
    lines = ["| variant | bits/byte | perplexity | perplexity increase vs fp32 | size on disk | size vs fp32 | "
             "decode tokens/s @ batch 1 | vs fp32 | quantize time |", "|" + "---|" * 9]
    for r in rows:
        r["inc"] = r["ppl"] - base["ppl"]
        lines.append(f"| {r['label']} | {r['bpb']:.4f} | {r['ppl']:.4f} | {r['inc']:+.4f} | "
                     f"{r['size'] / 2**20:.3f} MiB | {r['size'] / base['size']:.3f}x | {r['tok_s']:.1f} | "
                     f"{r['tok_s'] / base['tok_s']:.2f}x | {r['qtime']:.1f} s |")
    checks = []
    by = {r["label"]: r for r in rows}
    for bits in (int(b) for b in args.bits.split(",")):
        rtn = by[f"RTN {bits}-bit"]
        gptq = by[f"GPTQ {bits}-bit" + (" act-order" if args.act_order else "")]
        ok = gptq["inc"] <= 0.5 * rtn["inc"]
        ratio = gptq["inc"] / rtn["inc"] if rtn["inc"] else float("nan")
        checks.append(f"- {bits}-bit: GPTQ's perplexity increase is {ratio:.2f}x RTN's (target <= 0.50x): "
                      f"{'met' if ok else 'MISSED'}")
        if bits == 4:
            frac = rtn["size"] / base["size"]
            checks.append(f"- 4-bit artifact: {frac:.3f}x fp32's size on disk (target <= 0.30x): "
                          f"{'met' if frac <= 0.30 else 'MISSED'}")
    cmd = "python bench/bench_weight_only.py " + " ".join(sys.argv[1:])
    notes = (f"Baseline: fp32. tinygpt preset `{args.preset}`; group size {args.group_size} for every quantized "
             f"Linear (lm_head kept fp32, the default); asymmetric min-max grid, fp16 scales; GPTQ: damp "
             f"{args.damp}, {args.calibration_batches} calibration batches of 8x128 bytes from the train split, "
             f"{'from fp32 activations' if args.parallel else 'sequential'}"
             f"{', act-order' if args.act_order else ''}. Perplexity is per byte (2^bits-per-byte) on the val "
             f"split. Decode: {args.tokens} new tokens after the 4-byte prompt at batch 1 with the KV cache "
             f"(median over {args.rounds} round-robin rounds of the per-round median of >= {args.repeats} runs and "
             f">= 1 s); weights are dequantized on every call. Load average {load0:.1f} at start, {load:.1f} after "
             f"timing (decode timings are only comparable when it is near or below the thread count).")
    body = (f"## Weight-only quantization: tinygpt ({args.preset}), fp32 vs RTN vs GPTQ\n\n"
            + _common.header(cmd.strip(), args.threads, notes) + "\n\n" + "\n".join(lines) + "\n\n"
            + "\n".join(checks) + "\n")
    if not args.no_write:
        _common.write_section(f"weight-only-tinygpt{'' if args.preset == 'default' else '-' + args.preset}", body)
    print(body)


if __name__ == "__main__":
    main()
