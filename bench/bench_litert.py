"""Digits CNN: PyTorch eager vs ONNX Runtime (fp32, int8) vs LiteRT (fp32, int8) on the same threads, side by side.

Usage: .venv/bin/python bench/bench_litert.py [--threads 2] [--rounds 7] [--no-write]
Writes the `litert-digits` section of BENCHMARKS.md. Every variant is a module a task can run (ORT and LiteRT run
the exported graph in their own runtime with intra-op threads = torch's), timed in interleaved rounds; the p50 is
the median of the rounds' medians. Quality is the task's test accuracy through each runtime; size is the condense
artifact (the graph's bytes for ORT and LiteRT). minilm is not in the table: litert-torch 0.10 does not convert its
encoder with dynamic axes (see the section's notes).
"""
from __future__ import annotations

import argparse
import copy
import os
import sys
import time

import _common  # also sets sys.path
import torch

import condense
from condense.core.transforms import apply_
from condense.export import LiteRtConfig, OnnxRuntimeConfig
from condense.measurement.api import artifact_bytes
from condense.quantize.ort import OrtInt8Config

BASE = "PyTorch eager fp32 (baseline)"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--no-write", action="store_true")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    load_before = os.getloadavg()
    t_start = time.time()
    task = condense.get_task("digits")
    fp32 = task.build_model()

    def port(cfg):
        return apply_(copy.deepcopy(fp32), cfg, task=task)

    variants = {
        BASE: fp32,
        "ONNX Runtime fp32": port(OnnxRuntimeConfig()),
        "ONNX Runtime int8 (dynamic, Conv+Gemm)": port(OrtInt8Config(op_types=("Conv", "Gemm", "MatMul"))),
        "LiteRT fp32 (XNNPACK)": port(LiteRtConfig()),
        "LiteRT int8 dynamic (int8 weights)": port(LiteRtConfig(quantize="dynamic")),
        "LiteRT int8 full-integer (calibrated)": port(LiteRtConfig(quantize="full")),
    }
    bss = (256, 1)
    p50: dict[str, dict[int, float]] = {k: {} for k in variants}
    for bs in bss:
        x = task.batch(bs)
        r = _common.interleaved_rounds_p50({name: (lambda m=m: m(x)) for name, m in variants.items()},
                                           rounds=args.rounds, warmup=3, repeats=20, min_time_s=0.2)
        for name in variants:
            p50[name][bs] = r[name]
    acc = {name: task.metrics(m)["accuracy"] for name, m in variants.items()}
    size = {name: artifact_bytes(m) for name, m in variants.items()}
    load_after = os.getloadavg()
    lines = ["| variant | p50 @ batch 256 | p50 @ batch 1 | speedup @ 256 | speedup @ 1 | accuracy | vs fp32 | "
             "size on disk |", "|---|---|---|---|---|---|---|---|"]
    for name in variants:
        lines.append(f"| {name} | {p50[name][256] * 1e3:.2f} ms | {p50[name][1] * 1e3:.3f} ms | "
                     f"{p50[BASE][256] / p50[name][256]:.2f}x | {p50[BASE][1] / p50[name][1]:.2f}x | "
                     f"{acc[name]:.2%} | {(acc[name] - acc[BASE]) * 100:+.2f} pt | {size[name] / 1024:.0f} KB |")
    lit, ort = "LiteRT fp32 (XNNPACK)", "ONNX Runtime fp32"
    verdict = ", ".join(f"batch {bs}: LiteRT fp32 is {p50[ort][bs] / p50[lit][bs]:.2f}x ONNX Runtime fp32's speed "
                        f"({'faster' if p50[lit][bs] < p50[ort][bs] else 'slower'})" for bs in bss)
    cmd = "python bench/bench_litert.py " + " ".join(sys.argv[1:])
    notes = (f"Baseline: PyTorch eager fp32. {args.rounds} interleaved rounds per batch size, {args.threads} threads "
             f"for every runtime; test split of sklearn digits (360 images). LiteRT: litert-torch conversion, "
             f"ai-edge-quantizer int8 (full-integer calibrated on 8 batches of 64 training images), "
             f"ai_edge_litert interpreter with XNNPACK. {verdict}. Load average (1/5/15 min) before: "
             f"{' / '.join(f'{v:.2f}' for v in load_before)}, after: {' / '.join(f'{v:.2f}' for v in load_after)} "
             f"(the machine is shared with other jobs; {time.time() - t_start:.0f} s in all).  \n"
             "minilm: litert-torch 0.10.0 does not convert the BERT encoder with dynamic batch/sequence axes (the "
             "converter fails at `aten.slice.Tensor` on the attention mask's `[:, None, None, :]`, and at "
             "`aten.arange` for the positions), so it has no LiteRT row.")
    body = ("## LiteRT vs ONNX Runtime vs PyTorch on the digits CNN\n\n"
            + _common.header(cmd.strip(), args.threads, notes) + "\n\n" + "\n".join(lines) + "\n")
    if not args.no_write:
        _common.write_section("litert-digits", body)
    print(body)


if __name__ == "__main__":
    main()
