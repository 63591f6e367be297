"""Weight-only low-bit kernels at batch 1: fp32 vs the dequantizing path vs torch's int4/int8 CPU kernels.

Usage: .venv/bin/python bench/bench_lowbit_kernels.py [--threads 1,2] [--presets default,large] [--no-write]
Writes the `lowbit-kernels` section of BENCHMARKS.md (pass --no-write to only print).

Measured, side by side in one process, at each thread count:
  1. a stack of `--layers` x (`--width` x `--width`) Linears (no bias) at batch 1, which does not fit in the CPU
     caches: ms per step (all layers) and per matmul;
  2. tinygpt decode tokens/s at batch 1 with the KV cache for each preset's shape (weights untrained: speed does
     not depend on their values), RTN weights;
  3. quality of the trained `tiny` preset (bits per byte on the val split) on each path, since the kernels
     compute in bfloat16 around the exact integers.
Variants: 4-bit and 3-bit (group 32) on "dequantize" and on `kernel="auto"`; 8-bit per channel (group -1) on
"dequantize" and on `kernel="auto"`. "auto" picks per layer shape; the chosen kernels are printed. ONNX Runtime's MatMulNBits ("ort-nbits", float32)
at 4 and 8 bits as asked for, beside them.
"""
from __future__ import annotations

import argparse
import copy
import dataclasses
import os
import sys

import _common  # noqa: F401  (sets sys.path)
import torch
from torch import nn

from condense.core.lineage import lineage
from condense.quantize import quantize_
from condense.quantize.weight_only import WeightOnlyConfig
from condense.tasks.gpt import GPT, generate
from condense.tasks.tinygpt import PRESETS, make_task

VARIANTS = {  # label -> config (None: fp32)
    "fp32": None,
    "4-bit dequantize": WeightOnlyConfig(bits=4, group_size=32, kernel="dequantize"),
    "4-bit auto": WeightOnlyConfig(bits=4, group_size=32, kernel="auto"),
    "3-bit dequantize": WeightOnlyConfig(bits=3, group_size=32, kernel="dequantize"),
    "3-bit auto": WeightOnlyConfig(bits=3, group_size=32, kernel="auto"),
    "8-bit dequantize": WeightOnlyConfig(bits=8, group_size=-1, kernel="dequantize"),
    "8-bit auto": WeightOnlyConfig(bits=8, group_size=-1, kernel="auto"),
    "4-bit ort-nbits": WeightOnlyConfig(bits=4, group_size=32, kernel="ort-nbits"),
    "8-bit ort-nbits": WeightOnlyConfig(bits=8, group_size=-1, kernel="ort-nbits"),
}


def _build(fp32: nn.Module, cfg: WeightOnlyConfig | None, exclude: tuple[str, ...]) -> tuple[nn.Module, str]:
    if cfg is None:
        return fp32, "-"
    m = quantize_(copy.deepcopy(fp32), dataclasses.replace(cfg, exclude=exclude))
    kernel = lineage(m)["transforms"][-1]["details"].get("kernel", "dequantize")
    if isinstance(kernel, dict):
        kernel = ", ".join(f"{s}: {k}" for s, k in kernel.items())
    return m, kernel


def stack_rows(args, threads: int) -> list[str]:
    torch.manual_seed(0)
    fp32 = nn.Sequential(*[nn.Linear(args.width, args.width, bias=False) for _ in range(args.layers)]).eval()
    models = {label: _build(fp32, cfg, ()) for label, cfg in VARIANTS.items()}
    x = torch.randn(1, args.width)
    p50 = _common.interleaved_rounds_p50({k: (lambda m=m: m(x)) for k, (m, _) in models.items()},
                                         rounds=args.rounds, warmup=2, repeats=5, min_time_s=0.3)
    load = os.getloadavg()[0]
    base = p50["fp32"]
    return [f"| {threads} | {args.layers} x {args.width}x{args.width} | {k} | {p50[k] * 1e3:.2f} ms | "
            f"{p50[k] * 1e3 / args.layers:.3f} ms | {base / p50[k]:.2f}x | {models[k][1]} | {load:.2f} |"
            for k in models]


def decode_rows(args, threads: int, preset: str) -> list[str]:
    torch.manual_seed(0)
    fp32 = GPT(PRESETS[preset].model).eval()
    models = {label: _build(fp32, cfg, ("lm_head",)) for label, cfg in VARIANTS.items()}
    prompt = torch.tensor([list(b"def ")])
    p50 = _common.interleaved_rounds_p50({k: (lambda m=m: generate(m, prompt, args.tokens))
                                          for k, (m, _) in models.items()},
                                         rounds=args.rounds, warmup=1, repeats=2, min_time_s=0.5)
    load = os.getloadavg()[0]
    base = args.tokens / p50["fp32"]
    out = []
    for k, (m, kernel) in models.items():
        tok_s = args.tokens / p50[k]
        out.append(f"| {threads} | {preset} | {k} | {tok_s:.1f} | {tok_s / base:.2f}x | {kernel} | {load:.2f} |")
    return out


def quality_rows() -> list[str]:
    task = make_task("tiny")
    fp32 = task.build_model()
    out = []
    for label, cfg in VARIANTS.items():
        m, kernel = _build(fp32, cfg, ("lm_head",))
        out.append(f"| {label} | {task.metrics(m)['bits_per_byte']:.4f} | {kernel} |")
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", default="1,2")
    ap.add_argument("--layers", type=int, default=8)
    ap.add_argument("--width", type=int, default=2048)
    ap.add_argument("--presets", default="default,large")
    ap.add_argument("--tokens", type=int, default=32)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--no-write", action="store_true")
    args = ap.parse_args()
    load0 = os.getloadavg()[0]
    stack = ["| threads | stack | variant | p50 per step | per matmul | vs fp32 | kernel | load avg |",
             "|" + "---|" * 8]
    dec = ["| threads | tinygpt preset (untrained) | variant | decode tokens/s @ batch 1 | vs fp32 | kernel | "
           "load avg |", "|" + "---|" * 7]
    for threads in (int(t) for t in args.threads.split(",")):
        torch.set_num_threads(threads)
        stack += stack_rows(args, threads)
        print("\n".join(stack), file=sys.stderr)
        for preset in args.presets.split(","):
            dec += decode_rows(args, threads, preset)
            print("\n".join(dec), file=sys.stderr)
    torch.set_num_threads(int(args.threads.split(",")[0]))
    qual = ["| variant (trained tiny preset) | val bits/byte | kernel |", "|---|---|---|"] + quality_rows()
    cmd = "python bench/bench_lowbit_kernels.py " + " ".join(sys.argv[1:])
    notes = (f"Baseline: fp32 F.linear. RTN weights, asymmetric, fp16 scales; 4/3-bit group 32, 8-bit per channel. "
             f"\"auto\" = `WeightOnlyConfig(kernel='auto')`, which times each kernel per layer shape at batch 1 "
             f"and keeps the fastest (chosen kernels in the kernel column). Decode: {args.tokens} new tokens after a "
             f"4-byte prompt, KV cache, lm_head in fp32. Medians over {args.rounds} interleaved rounds. 2 vCPUs "
             f"shared with other jobs: load average {load0:.2f} at start; per-row load average after timing.")
    body = ("## Weight-only low-bit kernels at batch 1 (torch int4/int8 CPU kernels vs dequantize vs fp32)\n\n"
            + _common.header(cmd.strip(), int(args.threads.split(",")[-1]), notes) + "\n\n"
            + "\n".join(stack) + "\n\n" + "\n".join(dec) + "\n\n" + "\n".join(qual) + "\n")
    if not args.no_write:
        _common.write_section("lowbit-kernels", body)
    print(body)


if __name__ == "__main__":
    main()
