"""PyTorch eager vs ONNX Runtime (fp32, int8) vs LiteRT (fp32, int8) on digits and minilm, same threads, side by side.

Usage: .venv/bin/python bench/bench_litert.py [--tasks digits,minilm] [--threads 2] [--rounds 7] [--no-write]
Writes the `litert-digits` and `litert-minilm` sections of BENCHMARKS.md. Every variant is a module the task runs
its own way (minilm: tokenize + encode; ORT and LiteRT run the exported graph in their own runtime with intra-op
threads = torch's), timed in interleaved rounds; the p50 is the median of the rounds' medians. Quality is the
task's metric through each runtime; size is the condense artifact (the graph's bytes for ORT and LiteRT).
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


def time_and_score(task, variants: dict, bss: tuple[int, ...], rounds: int) -> tuple[dict, dict, dict]:
    """p50 seconds per (variant, batch size) from interleaved rounds; quality; artifact bytes."""
    p50: dict[str, dict[int, float]] = {k: {} for k in variants}
    for bs in bss:
        batch = task.batch(bs)
        r = _common.interleaved_rounds_p50({name: (lambda m=m: task.run_batch(m, batch)) for name, m in
                                            variants.items()}, rounds=rounds, warmup=2, repeats=5, min_time_s=0.2)
        for name in variants:
            p50[name][bs] = r[name]
    quality = {name: task.metrics(m) for name, m in variants.items()}
    size = {name: artifact_bytes(m) for name, m in variants.items()}
    return p50, quality, size


def table(p50: dict, quality: dict, size: dict, bss: tuple[int, ...], metric: str, fmt: str) -> list[str]:
    big, one = bss
    lines = [f"| variant | p50 @ batch {big} | p50 @ batch {one} | speedup @ {big} | speedup @ {one} | {metric} | "
             "vs fp32 | size on disk |", "|---|---|---|---|---|---|---|---|"]
    base = quality[BASE][metric]
    for name in p50:
        q = quality[name][metric]
        rel = f"{(q - base) * 100:+.2f} pt" if fmt == "pct" else f"{q / base:.2%}"
        lines.append(f"| {name} | {p50[name][big] * 1e3:.2f} ms | {p50[name][one] * 1e3:.3f} ms | "
                     f"{p50[BASE][big] / p50[name][big]:.2f}x | {p50[BASE][one] / p50[name][one]:.2f}x | "
                     + (f"{q:.2%}" if fmt == "pct" else f"{q:.4f}") + f" | {rel} | {size[name] / 2**20:.2f} MB |")
    return lines


def verdict(p50: dict, bss: tuple[int, ...], suffix: str = "fp32") -> str:
    lit, ort = f"LiteRT {suffix}", f"ONNX Runtime {suffix}"
    lit = next(k for k in p50 if k.startswith(lit))
    ort = next(k for k in p50 if k.startswith(ort))
    return ", ".join(f"batch {bs}: LiteRT {suffix} runs at {p50[ort][bs] / p50[lit][bs]:.2f}x ONNX Runtime {suffix}'s "
                     f"speed ({'faster' if p50[lit][bs] < p50[ort][bs] else 'slower'})" for bs in bss)


def run(name: str, args: argparse.Namespace) -> None:
    load_before = _common.load_average()
    t_start = time.time()
    task = condense.get_task(name)
    fp32 = task.build_model()

    def port(cfg):
        return apply_(copy.deepcopy(fp32), cfg, task=task)

    if name == "digits":
        bss, metric, fmt = (256, 1), "accuracy", "pct"
        ort_int8 = ("ONNX Runtime int8 (dynamic, Conv+Gemm)", OrtInt8Config(op_types=("Conv", "Gemm", "MatMul")))
        what = "test split of sklearn digits (360 images); calibration: 8 batches of 64 training images"
    else:
        bss, metric, fmt = (32, 1), "mrr@10", "ratio"
        ort_int8 = ("ONNX Runtime int8 (dynamic)", OrtInt8Config())
        what = ("500 query/document pairs (MRR@10); calibration: 8 batches of 32 docstring paragraphs. LiteRT runs "
                "minilm at fixed shapes (batch 1, 128 tokens: litert-torch 0.10 does not lower BERT's mask indexing "
                "and position arange on dynamic axes), so each text costs 128 tokens there and a batch of 32 is 32 "
                "interpreter calls, while PyTorch and ONNX Runtime pad only to the batch's longest text")
    variants = {
        BASE: fp32,
        "ONNX Runtime fp32": port(OnnxRuntimeConfig()),
        ort_int8[0]: port(ort_int8[1]),
        "LiteRT fp32 (XNNPACK)": port(LiteRtConfig()),
        "LiteRT int8 dynamic (int8 weights)": port(LiteRtConfig(quantize="dynamic")),
        "LiteRT int8 full-integer (calibrated)": port(LiteRtConfig(quantize="full")),
    }
    p50, quality, size = time_and_score(task, variants, bss, args.rounds)
    load_after = _common.load_average()
    busy = os.getloadavg()[0] > (os.cpu_count() or 1) + 1
    cmd = "python bench/bench_litert.py " + " ".join(sys.argv[1:])
    notes = (f"Baseline: PyTorch eager fp32. {args.rounds} interleaved rounds per batch size, {args.threads} threads "
             f"for every runtime; {what}. LiteRT: litert-torch conversion, ai-edge-quantizer int8, ai_edge_litert "
             f"interpreter with XNNPACK. {verdict(p50, bss)}. Before: {load_before}; after: {load_after} "
             + ("(more load than CPUs: absolute times are inflated and noisy, PyTorch eager's spinning 2-thread pool "
                "the most; compare the runtimes with each other, not with its row; " if busy else "(")
             + f"{time.time() - t_start:.0f} s in all).")
    title = "the digits CNN" if name == "digits" else "minilm (sentence embeddings)"
    body = (f"## LiteRT vs ONNX Runtime vs PyTorch on {title}\n\n"
            + _common.header(cmd.strip(), args.threads, notes) + "\n\n"
            + "\n".join(table(p50, quality, size, bss, metric, fmt)) + "\n")
    if not args.no_write:
        _common.write_section(f"litert-{name}", body)
    print(body, flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tasks", default="digits,minilm", help="comma-separated: digits, minilm")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--no-write", action="store_true")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    for name in args.tasks.split(","):
        run(name.strip(), args)


if __name__ == "__main__":
    main()
