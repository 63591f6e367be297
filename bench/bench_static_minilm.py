"""Static int8 with accuracy aids vs the dynamic path on MiniLM, ONNX Runtime, both evaluation sources.

Usage: .venv/bin/python bench/bench_static_minilm.py [--threads 2] [--rounds 5] [--float-layers 4] [--pairs 500]
       [--no-write]
Writes the `static-minilm` section of BENCHMARKS.md. Variants: fp32 eager; the dynamic path (OrtInt8Config with 8
float FFN outlier channels per block, what `Int8Config()` builds for its "ort" candidate); ORT static int8 (QDQ,
min-max calibration on the task's 8 calibration batches, 8-bit weights: this CPU has VNNI); the same with SmoothQuant
(alpha 0.5) and bias correction; and with the --float-layers Linears of largest simulated error kept in float.
Timing: batch 32 of the task's texts, tokenisation included, interleaved rounds, median of the rounds' medians.
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
from condense.quantize.ort import OrtInt8Config
from condense.quantize.static import StaticInt8Config


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--float-layers", type=int, default=4)
    ap.add_argument("--pairs", type=int, default=500, help="evaluation pairs per source (the task's default: 500)")
    ap.add_argument("--no-write", action="store_true")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    load_before = os.getloadavg()
    t_start = time.time()
    task = condense.get_task("minilm", n_pairs=args.pairs)
    fp32 = task.build_model()
    static = {"per_channel": True, "reduce_range": False, "observer": "minmax"}
    configs = {
        "dynamic: OrtInt8Config(float_channels=8)": OrtInt8Config(float_channels=8),
        "static int8 (QDQ, min-max)": StaticInt8Config(**static),
        "static + SmoothQuant 0.5 + bias correction": StaticInt8Config(**static, smooth_quant=0.5,
                                                                       bias_correction=True),
        f"static + SmoothQuant 0.5 + bias correction + {args.float_layers} float layers":
            StaticInt8Config(**static, smooth_quant=0.5, bias_correction=True, float_layers=args.float_layers),
    }
    base = "fp32 PyTorch eager (baseline)"
    variants, build_s = {base: fp32}, {}
    for name, cfg in configs.items():
        t0 = time.perf_counter()
        variants[name] = condense.quantize_(copy.deepcopy(fp32), cfg, task=task)
        build_s[name] = time.perf_counter() - t0
        print(f"built {name} in {build_s[name]:.0f} s", file=sys.stderr)
    batch = task.batch(32)
    p50 = _common.interleaved_rounds_p50({n: (lambda m=m: task.run_batch(m, batch)) for n, m in variants.items()},
                                         rounds=args.rounds, warmup=2, repeats=3)
    load_after = os.getloadavg()
    q = {n: task.metrics(m) for n, m in variants.items()}
    off = "mrr@10_offsource"
    lines = ["| variant | p50 @ batch 32 | speed vs fp32 eager | MRR@10 docstrings | vs fp32 | MRR@10 man pages | "
             "vs fp32 | build |", "|---|---|---|---|---|---|---|---|"]
    for n in variants:
        r = q[n]
        second = f"{r[off]:.4f} | {r[off] / q[base][off]:.1%}" if off in r else "n/a | n/a"
        lines.append(f"| {n} | {p50[n] * 1e3:.1f} ms | {p50[base] / p50[n]:.2f}x | {r['mrr@10']:.4f} | "
                     f"{r['mrr@10'] / q[base]['mrr@10']:.1%} | {second} | {build_s.get(n, 0):.0f} s |")
    from condense.core.lineage import lineage

    last = lineage(variants[list(configs)[-1]])["transforms"][-1]["details"].get("aids", {})
    kept = ", ".join(f"{n} ({last['relative_errors'][n]:.3f})" for n in last.get("float_layers", []))
    cmd = "python bench/bench_static_minilm.py " + " ".join(sys.argv[1:])
    notes = (f"Baseline: fp32 PyTorch eager. MRR@10 on {args.pairs} pairs per source. {args.rounds} interleaved rounds at batch 32, tokenisation included, "
             f"{args.threads} threads. Static configs: {static}. Layers kept in float by the last row (simulated "
             f"relative int8 error on the calibration batches): {kept or 'none'}. Load average (1/5/15 min) before: "
             f"{' / '.join(f'{x:.2f}' for x in load_before)}, after timing: "
             f"{' / '.join(f'{x:.2f}' for x in load_after)} (the machine is shared; {time.time() - t_start:.0f} s).")
    body = ("## Static int8 with accuracy aids vs dynamic int8 on MiniLM (ONNX Runtime)\n\n"
            + _common.header(cmd.strip(), args.threads, notes) + "\n\n" + "\n".join(lines) + "\n")
    if not args.no_write:
        _common.write_section("static-minilm", body)
    print(body)


if __name__ == "__main__":
    main()
