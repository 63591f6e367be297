"""The demo's numbers, side by side in one process: fp32 eager vs `Int8Config()` (what `make demo` applies: the
int8 backend measured fastest within the quality budget) vs torch dynamic int8 (the peer a user would pick first).

Usage: .venv/bin/python bench/bench_demo.py [--task minilm] [--threads 2] [--repeats 30]
Writes the `demo-<task>` section of BENCHMARKS.md.
"""
from __future__ import annotations

import argparse
import sys

import _common  # noqa: F401  (sets sys.path)
import torch

import condense
from condense.core.lineage import lineage
from condense.measurement.api import MeasureConfig


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--task", default="minilm")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=30)
    ap.add_argument("--batch-sizes", default=None, help="comma separated; default: the task's")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    with torch.inference_mode():
        _run(args)


def _run(args: argparse.Namespace) -> None:
    task = condense.get_task(args.task)
    bss = tuple(int(b) for b in args.batch_sizes.split(",")) if args.batch_sizes else task.batch_sizes
    # quality, size and counts from condense.measure; latency from one interleaved pass over all variants
    cfg = MeasureConfig(batch_sizes=bss, repeats=1, warmup=0, min_time_s=0.0, threads=args.threads, memory=False)
    auto = condense.quantize_(task.build_model(), condense.Int8Config(), task=task)
    picked = lineage(auto)["transforms"][-1]["details"]["backend"]
    models = {"fp32 eager": task.build_model(),
              f"int8 auto (Int8Config -> {picked})": auto,
              "int8 dynamic (torch x86)": condense.quantize_(task.build_model(), condense.DynamicInt8Config())}
    rows = [condense.measure(m, task, cfg, label=label) for label, m in models.items()]
    load_before = _common.load_average()
    for b in bss:
        batch = task.batch(b)
        p50 = _common.interleaved_p50({label: (lambda m=m: task.run_batch(m, batch)) for label, m in models.items()},
                                      rounds=args.repeats)
        for m in rows:
            m.latency[str(b)]["p50_s"] = p50[m.label]
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
    body = (f"## Demo: {task.name}, fp32 vs Int8Config() vs dynamic int8\n\n"
            + _common.header(cmd.strip(), args.threads,
                             f"Baseline: fp32 eager. Latency: median of {args.repeats} rounds, variants timed "
                             f"round-robin within each round; inputs as the task runs them (minilm: tokenisation "
                             f"included). Machine {load_before} at the start of timing.")
            + "\n\n" + "\n".join(lines) + "\n")
    _common.write_section(f"demo-{task.name}", body)
    print(body)


if __name__ == "__main__":
    main()
