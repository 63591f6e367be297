"""Weight-only decode at batch 1 and 8 on tinygpt: fp32 vs 4-bit and 8-bit RTN on their default kernel (auto).

Usage: .venv/bin/python bench/bench_decode_batches.py [--preset large] [--batches 1,8] [--tokens 32] [--rounds 3]
       [--threads 1] [--no-write]
Writes the `decode-batches` section of BENCHMARKS.md. Each model generates `--tokens` greedy tokens with the KV
cache through the task's `generate`; medians of interleaved rounds; tokens/s counts every sequence of the batch.
"roof" is the share of the memory-bandwidth roof reached: tokens/s x the model's weight bytes / (batch x the
bandwidth `condense.measurement.bandwidth.memory_bandwidth` measures here), as `condense measure` reports it.
"""
from __future__ import annotations

import argparse
import os

import _common
import torch

from condense.measurement.bandwidth import cache_note, memory_bandwidth, roofline_fraction, weight_bytes
from condense.measurement.timing import interleaved_p50


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", default="large")
    ap.add_argument("--batches", default="1,8")
    ap.add_argument("--tokens", type=int, default=32)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--no-write", action="store_true")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    task, models = _common.tinygpt_decode_models(args.preset)
    bandwidth = memory_bandwidth()
    nbytes = {n: weight_bytes(m) for n, m in models.items()}
    lines = ["| batch | " + " | ".join(models) + " | load average |", "|---|" + "---|" * (len(models) + 1)]
    for bs in (int(b) for b in args.batches.split(",")):
        fns = {n: (lambda m=m, bs=bs: task.generate(m, bs, args.tokens)) for n, m in models.items()}
        with torch.inference_mode():
            p50 = interleaved_p50(fns, rounds=args.rounds, warmup=1, repeats=2)
        cells = [f"{bs * args.tokens / p50[n]:.1f} tokens/s ({p50['fp32'] / p50[n]:.2f}x; "
                 f"{roofline_fraction(bs * args.tokens / p50[n], bs, nbytes[n], bandwidth):.0%} roof)" for n in models]
        lines.append(f"| {bs} | " + " | ".join(cells) + f" | {os.getloadavg()[0]:.2f} |")
    notes = (f"tinygpt preset `{args.preset}`; RTN `WeightOnlyConfig(bits=4)` and `(bits=8, group_size=-1)`, "
             f"kernel auto (the default); {args.tokens} new tokens, {args.rounds} interleaved rounds. Roof: weight bytes "
             + ", ".join(f"{n} {b / 1e6:.1f} MB" for n, b in nbytes.items())
             + f"; measured bandwidth {bandwidth / 1e9:.1f} GB/s ({args.threads} thread(s)). "
             + cache_note(nbytes["fp32"]))
    _common.publish("decode-batches", "Weight-only decode at batch 1 and 8", "bench_decode_batches.py",
                    argv, args.threads, notes, lines, write=not args.no_write)


if __name__ == "__main__":
    main()
