"""Speculative decoding on tinygpt: the target's plain greedy decode vs the same target verifying a draft condense made.

Usage: .venv/bin/python bench/bench_speculative.py [--preset default] [--draft-layers 1] [--distill-steps 300]
       [--ks 2,3,4,6] [--tokens 64] [--rounds 5] [--threads 1] [--no-write]
Writes the `speculative` section of BENCHMARKS.md.

The draft is a student of the target made by condense itself: `DistillConfig(layers=N)` keeps N of the target's
blocks and distils the target's logits into it on the task's training text (the target's own training data: no
evaluation text). Each variant decodes `--tokens` greedy tokens at batch 1 from the task's prompt; the timings are
medians of interleaved rounds, and every speculative output is checked token for token against the target's own
greedy output (a mismatch fails the bench).
"""
from __future__ import annotations

import argparse
import os
import sys
import time

import _common  # noqa: F401  (sets sys.path)
import torch

import condense
from condense.distillation import DistillConfig
from condense.measurement.timing import interleaved_p50
from condense.speculative import speculative_generate
from condense.tasks.gpt import generate
from condense.tasks.tinygpt import PROMPT
from condense.train.loop import FitConfig


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", default="default")
    ap.add_argument("--draft-layers", type=int, default=1)
    ap.add_argument("--distill-steps", type=int, default=300)
    ap.add_argument("--ks", default="2,3,4,6")
    ap.add_argument("--tokens", type=int, default=64)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--no-write", action="store_true")
    args = ap.parse_args(argv)
    ks = [int(k) for k in args.ks.split(",")]
    torch.set_num_threads(args.threads)
    load0, t0 = os.getloadavg(), time.perf_counter()
    task = condense.get_task("tinygpt", preset=args.preset)
    target = task.build_model().eval()
    t_d = time.perf_counter()
    draft = condense.distill(target, None, DistillConfig(layers=args.draft_layers, finetune=FitConfig(
        steps=args.distill_steps, lr=1e-3, schedule="cosine")), task=task).eval()
    distill_s = time.perf_counter() - t_d
    prompt = torch.tensor([list(PROMPT)], dtype=torch.long)
    want = generate(target, prompt, args.tokens)
    stats = {}
    for k in ks:
        out, s = speculative_generate(target, draft, prompt, args.tokens, k=k)
        if not torch.equal(out, want):
            raise SystemExit(f"bench_speculative: k={k} output differs from the target's greedy output")
        stats[k] = s
    fns = {"target": lambda: generate(target, prompt, args.tokens),
           "draft": lambda: generate(draft, prompt, args.tokens)}
    for k in ks:
        fns[f"k={k}"] = lambda k=k: speculative_generate(target, draft, prompt, args.tokens, k=k)
    with torch.inference_mode():
        p50 = interleaved_p50(fns, rounds=args.rounds, warmup=1, repeats=3)
    tps = {n: args.tokens / s for n, s in p50.items()}
    q_t = task.evaluate(target)["bits_per_byte"]
    q_d = task.evaluate(draft)["bits_per_byte"]
    n_t = sum(p.numel() for p in target.parameters())
    n_d = sum(p.numel() for p in draft.parameters())
    load1 = os.getloadavg()
    lines = ["| variant | decode tokens/s @ batch 1 | vs target | acceptance | tokens per target pass | "
             "same greedy text |", "|---|---|---|---|---|---|",
             f"| target ({n_t / 1e6:.2f} M params, {q_t:.3f} bits/byte) | {tps['target']:.0f} | 1.00x | | 1.00 | "
             "reference |",
             f"| draft alone ({args.draft_layers} block(s), {n_d / 1e6:.2f} M params, {q_d:.3f} bits/byte) | "
             f"{tps['draft']:.0f} | {tps['draft'] / tps['target']:.2f}x | | | no |"]
    for k in ks:
        s = stats[k]
        lines.append(f"| speculative k={k} | {tps[f'k={k}']:.0f} | {tps[f'k={k}'] / tps['target']:.2f}x | "
                     f"{s.acceptance_rate:.0%} | {s.tokens_per_target_call:.2f} | yes (token for token) |")
    best = max(ks, key=lambda k: tps[f"k={k}"])
    notes = (f"Target: tinygpt preset `{args.preset}`; draft: `DistillConfig(layers={args.draft_layers})` distilled "
             f"{args.distill_steps} steps on the task's training text ({distill_s:.0f} s). {args.tokens} new tokens "
             f"from the task's prompt, greedy, batch 1, medians of {args.rounds} interleaved rounds. Best: k={best}, "
             f"{tps[f'k={best}'] / tps['target']:.2f}x the target's plain decode (target: >= 1.5x). Run time "
             f"{(time.perf_counter() - t0) / 60:.1f} min; load average {' / '.join(f'{v:.2f}' for v in load0)} at "
             f"start, {' / '.join(f'{v:.2f}' for v in load1)} at the end.")
    cmd = "python bench/bench_speculative.py" + "".join(f" {a}" for a in (sys.argv[1:] if argv is None else argv))
    body = "\n".join(["## Speculative decoding", "", _common.header(cmd, args.threads, notes), "", *lines])
    print(body)
    if not args.no_write:
        _common.write_section("speculative", body)


if __name__ == "__main__":
    main()
