"""Digits CNN: fp32 eager vs static int8 (torch.ao FX, x86 kernels, conv-bn-relu fused), side by side in one process.

Usage: .venv/bin/python bench/bench_static_digits.py [--threads 2] [--rounds 7]
Writes the `static-digits` section of BENCHMARKS.md. Interleaved rounds; the p50 reported is the median of the
rounds' medians.
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
from condense.measurement.api import MeasureConfig
from condense.quantize.static import StaticInt8Config


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=7)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    load_before = os.getloadavg()
    t_start = time.time()
    task = condense.get_task("digits")
    fp32 = task.build_model()
    variants = {
        "fp32 eager (baseline)": fp32,
        "static int8, histogram observer (default)": condense.quantize_(copy.deepcopy(fp32), StaticInt8Config(),
                                                                         task=task),
        "static int8, minmax observer": condense.quantize_(copy.deepcopy(fp32), StaticInt8Config(observer="minmax"),
                                                           task=task),
    }
    bss = (256, 1)
    p50: dict[str, dict[int, float]] = {k: {} for k in variants}
    for bs in bss:
        x = task.batch(bs)
        r = _common.interleaved_rounds_p50({name: (lambda m=m: m(x)) for name, m in variants.items()},
                                           rounds=args.rounds, warmup=3, repeats=20, min_time_s=0.2)
        for name in variants:
            p50[name][bs] = r[name]
    qcfg = MeasureConfig(batch_sizes=(1,), warmup=0, repeats=1, min_time_s=0, memory=False)
    ms = {name: condense.measure(m, task, qcfg, label=name) for name, m in variants.items()}
    load_after = os.getloadavg()
    b = "fp32 eager (baseline)"
    lines = ["| variant | p50 @ batch 256 | p50 @ batch 1 | speedup @ 256 | speedup @ 1 | accuracy | vs fp32 | "
             "size on disk |", "|---|---|---|---|---|---|---|---|"]
    for name, m in ms.items():
        acc = m.quality["accuracy"]
        lines.append(f"| {name} | {p50[name][256] * 1e3:.2f} ms | {p50[name][1] * 1e3:.3f} ms | "
                     f"{p50[b][256] / p50[name][256]:.2f}x | {p50[b][1] / p50[name][1]:.2f}x | {acc:.2%} | "
                     f"{(acc - ms[b].quality['accuracy']) * 100:+.2f} pt | {m.size_bytes / 1024:.0f} KB |")
    cmd = "python bench/bench_static_digits.py " + " ".join(sys.argv[1:])
    notes = (f"Baseline: fp32 eager. {args.rounds} interleaved rounds per batch size; test split of sklearn digits "
             f"(360 images). Calibration: 8 batches of 64 training images. Load average (1/5/15 min) before: "
             f"{' / '.join(f'{v:.2f}' for v in load_before)}, after: {' / '.join(f'{v:.2f}' for v in load_after)} "
             f"(the machine is shared; {time.time() - t_start:.0f} s in all).")
    body = ("## Static int8 on the digits CNN (torch.ao FX, x86)\n\n"
            + _common.header(cmd.strip(), args.threads, notes) + "\n\n" + "\n".join(lines) + "\n")
    _common.write_section("static-digits", body)
    print(body)


if __name__ == "__main__":
    main()
