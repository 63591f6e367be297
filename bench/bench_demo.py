"""The demo's numbers, side by side in one process: fp32 eager vs dynamic int8 (x86 int8 kernels).

Usage: .venv/bin/python bench/bench_demo.py [--task minilm] [--threads 2] [--repeats 30]
Writes the `demo-<task>` section of BENCHMARKS.md.
"""
from __future__ import annotations

import argparse
import sys

import _common  # noqa: F401  (sets sys.path)
import torch

import condense
from condense.measurement.api import MeasureConfig


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--task", default="minilm")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=30)
    ap.add_argument("--batch-sizes", default=None, help="comma separated; default: the task's")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    task = condense.get_task(args.task)
    bss = tuple(int(b) for b in args.batch_sizes.split(",")) if args.batch_sizes else task.batch_sizes
    cfg = MeasureConfig(batch_sizes=bss, repeats=args.repeats, min_time_s=3.0, threads=args.threads)
    fp32 = task.build_model()
    int8 = condense.quantize_(task.build_model(), condense.DynamicInt8Config())
    rows = [condense.measure(fp32, task, cfg, label="fp32 eager"),
            condense.measure(int8, task, cfg, label="int8 dynamic (torch x86)")]
    base = rows[0]
    head = "| variant | " + " | ".join(f"p50 @ batch {b}" for b in bss) + " | " + \
        " | ".join(f"speedup @ {b}" for b in bss) + " | size on disk | " + \
        " | ".join(base.quality) + " |"
    lines = [head, "|" + "---|" * (len(bss) * 2 + 2 + len(base.quality))]
    for m in rows:
        lines.append(f"| {m.label} | " + " | ".join(f"{m.p50(b) * 1e3:.2f} ms" for b in bss) + " | "
                     + " | ".join(f"{base.p50(b) / m.p50(b):.2f}x" for b in bss) + " | "
                     + f"{m.size_bytes / 2**20:.1f} MB ({m.size_bytes / base.size_bytes:.2f}x) | "
                     + " | ".join(f"{m.quality[k]:.4f}" for k in base.quality) + " |")
    cmd = "python bench/bench_demo.py " + " ".join(sys.argv[1:])
    body = (f"## Demo: {task.name}, fp32 vs dynamic int8\n\n"
            + _common.header(cmd.strip(), args.threads,
                             f"Baseline: fp32 eager. Timed {args.repeats}+ runs and >= 3 s per batch size; "
                             f"inputs as the task runs them (minilm: tokenisation included).")
            + "\n\n" + "\n".join(lines) + "\n")
    _common.write_section(f"demo-{task.name}", body)
    print(body)


if __name__ == "__main__":
    main()
