"""Early exit on digits, side by side in one process: the CNN alone vs the CNN with two exit heads, over thresholds.

Usage: .venv/bin/python bench/bench_early_exit.py [--threads 1] [--steps 600] [--batch-sizes 1,64] [--no-write]
Writes the `early-exit-digits` section of BENCHMARKS.md.

Exit heads (average pool to 4x4 + one Linear) go after the first and second conv blocks and train on the task's
training split with the backbone frozen, so the model's own predictions do not change. For each threshold the
test set (360 images) is evaluated and timed: every image in turn at batch 1 (or in batches of B), mean latency
per image, median over interleaved rounds (backbone and every threshold in each round). The chosen operating point
is the fastest threshold whose accuracy is within --budget (0.005 = 0.5 points) of the CNN alone. The threshold is
chosen on the test set itself (the task has no separate validation split), so the chosen point is optimistic.
"""
from __future__ import annotations

import argparse
import sys
import time

import _common
import torch

from condense.early_exit import EarlyExitConfig, early_exit_, sweep_thresholds
from condense.tasks import get_task
from condense.train.loop import FitConfig


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--steps", type=int, default=600)
    ap.add_argument("--thresholds", default="0.5,0.8,0.9,0.95,0.99,0.999")
    ap.add_argument("--batch-sizes", default="1,64")
    ap.add_argument("--budget", type=float, default=0.005)
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--criterion", default="max_prob")
    ap.add_argument("--no-write", action="store_true")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    load0 = _common.load_average()
    task = get_task("digits")
    cnn = task.build_model()
    t0 = time.perf_counter()
    cfg = EarlyExitConfig(criterion=args.criterion, finetune=FitConfig(steps=args.steps, lr=3e-3, schedule="cosine"))
    model = early_exit_(cnn, cfg, task=task)
    train_s = time.perf_counter() - t0
    with torch.inference_mode():
        from condense.data.digits import digits_split

        d = digits_split()
        head_acc = [float((o.argmax(-1) == d.y_test).float().mean()) for o in model.all_exits(d.x_test)]
    thresholds = tuple(float(t) for t in args.thresholds.split(","))
    n = 360
    sections, checks = [], []
    for bs in (int(b) for b in args.batch_sizes.split(",")):
        curve = sweep_thresholds(model, task, thresholds, quality_budget=args.budget, samples=n, rounds=args.rounds,
                                 batch_size=bs)
        print(f"swept thresholds at batch {bs}", file=sys.stderr)
        base = curve.baseline
        lines = [f"Batch {bs}: mean latency per image over the {n} test images.\n",
                 "| threshold | accuracy | vs CNN alone | mean latency / image | speed vs CNN alone | left at exit 1 / "
                 "exit 2 / final |", "|" + "---|" * 6,
                 f"| CNN alone (no early exit) | {base.quality['accuracy']:.4f} | +0.0 pt | "
                 f"{base.latency_s * 1e6:.1f} us | 1.00x | - |"]
        for p in curve.points:
            mark = " **chosen**" if curve.chosen is not None and p.threshold == curve.chosen.threshold else ""
            lines.append(f"| {p.threshold:g}{mark} | {p.quality['accuracy']:.4f} | "
                         f"{(p.quality['accuracy'] - base.quality['accuracy']) * 100:+.2f} pt | "
                         f"{p.latency_s * 1e6:.1f} us | {p.speedup:.2f}x | "
                         f"{' / '.join(f'{f:.0%}' for f in p.exit_fractions)} |")
        sections.append("\n".join(lines))
        c = curve.chosen
        if c is None:
            checks.append(f"- batch {bs}: no threshold is faster than the CNN alone within {args.budget * 100:g} "
                          "accuracy points: target (>= 1.5x) MISSED")
        else:
            drop = (base.quality["accuracy"] - c.quality["accuracy"]) * 100 + 0.0  # + 0.0: no "-0.00"
            checks.append(f"- batch {bs}: chosen threshold {c.threshold:g}: {c.speedup:.2f}x lower mean latency per "
                          f"image (target >= 1.5x), accuracy change {0.0 - drop:+.2f} pt (target: at most 0.5 lower): "
                          f"{'met' if c.speedup >= 1.5 and drop <= 0.5 + 1e-9 else 'MISSED'}")
    load1 = _common.load_average()
    cmd = "python bench/bench_early_exit.py " + " ".join(sys.argv[1:])
    notes = (f"Baseline: the digits CNN alone. Exits after conv blocks 1 and 2 ({args.criterion} confidence); heads "
             f"trained {args.steps} steps (AdamW lr 3e-3 cosine, batch 64, backbone frozen) in {train_s:.0f} s. "
             f"Test accuracy of each exit alone: {' / '.join(f'{a:.4f}' for a in head_acc)} (exit 1 / exit 2 / "
             f"final). Latency: median over {args.rounds} interleaved rounds. The threshold is chosen on the test "
             f"set (no validation split). {load0} at start, {load1} at the end.")
    body = ("## Early exit: digits CNN, quality vs mean latency per image over thresholds\n\n"
            + _common.header(cmd.strip(), args.threads, notes) + "\n\n" + "\n\n".join(sections) + "\n\n"
            + "\n".join(checks) + "\n")
    if not args.no_write:
        _common.write_section("early-exit-digits", body)
    print(body)


if __name__ == "__main__":
    main()
