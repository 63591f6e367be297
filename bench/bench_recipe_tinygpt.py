"""The tinygpt recipe (recipes/tinygpt.yaml) against fp32, side by side in one process: decode tokens/s at batch 1
and perplexity, with what each step bought.

Usage: .venv/bin/python bench/bench_recipe_tinygpt.py [--recipe recipes/tinygpt.yaml] [--threads 2] [--no-write]
Writes the `recipe-tinygpt` section of BENCHMARKS.md. Targets (issue 7): decode tokens/s at batch 1 at least 2x
fp32's, with per-byte perplexity within 10% of fp32's.

Variants: fp32; fp32 + the recipe's fuse step alone (what fusion buys without dropping blocks); the model after
each recipe step (applied in order with `apply_`, exactly as `condense run` does). Quality: the task's val bits
per byte and perplexity. Speed: `task.generate` (KV cache, greedy) of `--tokens` new tokens at batch 1, timed with
`time_call` in round-robin rounds over all variants (median of the per-round medians), so background load lands on
every variant alike. Size: the saved artifact.
"""
from __future__ import annotations

import argparse
import copy
import os
import sys
import time

import _common  # noqa: F401  (sets sys.path)
import torch

from condense.core.transforms import apply_
from condense.measurement.api import artifact_bytes
from condense.recipes import load_recipe
from condense.tasks import get_task


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--recipe", default=str(_common.ROOT / "recipes" / "tinygpt.yaml"))
    ap.add_argument("--set", action="append", default=[], metavar="PATH=VALUE", help="recipe override")
    ap.add_argument("--threads", type=int, default=2)
    _common.add_decode_args(ap, rounds=7)
    args = ap.parse_args()
    from condense.recipes import parse_overrides

    torch.set_num_threads(args.threads)
    load0 = os.getloadavg()
    recipe = load_recipe(args.recipe, overrides=parse_overrides(args.set))
    task = get_task(recipe.task or "tinygpt", **recipe.task_options)
    fp32 = task.build_model()

    variants: list[tuple[str, torch.nn.Module, float]] = [("fp32", fp32, 0.0)]
    fuse = [s for s in recipe.steps if s.kind == "fuse"]
    if fuse:
        variants.append(("fp32 + fuse only (reference)", apply_(copy.deepcopy(fp32), fuse[0].config, task=task), 0.0))
    model = copy.deepcopy(fp32)
    for i, step in enumerate(recipe.steps):
        t0 = time.perf_counter()
        model = apply_(model, step.config, task=task)
        label = "recipe: " + " + ".join(s.label for s in recipe.steps[:i + 1])
        variants.append((label, copy.deepcopy(model), time.perf_counter() - t0))
        print(f"applied {step.label} in {time.perf_counter() - t0:.0f} s", file=sys.stderr)

    rows = []
    for label, m, secs in variants:
        met = task.metrics(m)
        print(f"evaluated {label}: {met['bits_per_byte']:.4f} bits/byte", file=sys.stderr)
        rows.append({"label": label, "bpb": met["bits_per_byte"], "ppl": met["perplexity"], "size": artifact_bytes(m),
                     "secs": secs, "blocks": len(m.blocks)})
    for r, tok_s in zip(rows, _common.decode_tokens_per_s(task, [v[1] for v in variants], args, min_time_s=0.5)):
        r["tok_s"] = tok_s
    load1 = os.getloadavg()

    base, final = rows[0], rows[-1]
    lines = ["| variant | blocks | bits/byte | perplexity | vs fp32 | size on disk | decode tokens/s @ batch 1 | "
             "vs fp32 | step time |", "|" + "---|" * 9]
    for r in rows:
        lines.append(f"| {r['label']} | {r['blocks']} | {r['bpb']:.4f} | {r['ppl']:.4f} | "
                     f"{r['ppl'] / base['ppl']:.3f}x | {r['size'] / 2**20:.3f} MiB | {r['tok_s']:.0f} | "
                     f"{r['tok_s'] / base['tok_s']:.2f}x | {r['secs']:.0f} s |")
    speed, ppl = final["tok_s"] / base["tok_s"], final["ppl"] / base["ppl"]
    checks = [f"- decode tokens/s at batch 1: {speed:.2f}x fp32 (target >= 2x): {'met' if speed >= 2 else 'MISSED'}",
              f"- perplexity: {ppl:.3f}x fp32 (target <= 1.10x): {'met' if ppl <= 1.10 else 'MISSED'}"]
    cmd = "python bench/bench_recipe_tinygpt.py " + " ".join(sys.argv[1:])
    steps = "; ".join(f"`{s.kind}` {s.config.to_dict()}" for s in recipe.steps)
    notes = (f"Baseline: fp32 (tinygpt {recipe.task_options.get('preset', 'default')} preset). Recipe "
             f"`{os.path.relpath(args.recipe, _common.ROOT)}` ({recipe.name}): {steps}. Decode: {args.tokens} new "
             f"tokens after the 4-byte prompt at batch 1 with the KV cache (median over {args.rounds} round-robin "
             f"rounds of the per-round median of >= {args.repeats} runs and >= 0.5 s). Perplexity is per byte "
             f"(2^bits-per-byte) on the val split. Load average %.2f / %.2f / %.2f before, %.2f / %.2f / %.2f after "
             "timing (2 vCPUs shared with other work: timings are only comparable when it is near or below the "
             "thread count)." % (*load0, *load1))
    body = (f"## Recipe: tinygpt decode speed ({recipe.name})\n\n" + _common.header(cmd.strip(), args.threads, notes)
            + "\n\n" + "\n".join(lines) + "\n\n" + "\n".join(checks) + "\n")
    if not args.no_write:
        _common.write_section("recipe-tinygpt", body)
    print(body)


if __name__ == "__main__":
    main()
