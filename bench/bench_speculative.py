"""Speculative decoding on tinygpt: the target's plain greedy decode vs the same target verifying a draft condense made.

Usage: .venv/bin/python bench/bench_speculative.py [--preset default] [--draft-layers 1] [--distill-steps 300]
       [--draft-bits 4] [--ks 2,3,4,6] [--heuristic] [--target-bits 4,8] [--tokens 64] [--rounds 5]
       [--threads 1] [--fresh-draft] [--no-write]
Writes the `speculative` section of BENCHMARKS.md.

The draft is a student of the target made by condense itself: `DistillConfig(layers=N)` keeps N of the target's
blocks and distils the target's logits into it on the task's training text (the target's own training data: no
evaluation text), once: the distilled draft is cached (safetensors + JSON with the distillation time) under
condense's cache folder, keyed by preset, layers and steps (`--fresh-draft` distils again); `--draft-bits 4` then quantizes it with `WeightOnlyConfig(bits=4)` (RTN, kernel "auto"): the
draft's tokens are only proposals, so its rounding costs acceptance, never correctness, and a draft that reads
fewer bytes per step is cheaper. Each variant decodes `--tokens` greedy tokens at batch 1 from the task's prompt;
the timings are medians of interleaved rounds, and every speculative output is checked token for token against
its target's own greedy output (a mismatch fails the bench). `--heuristic` adds a row with k adapted between
rounds (`schedule="heuristic"`, starting from the best fixed k); `--target-bits` adds weight-only quantized targets
(4-bit RTN group 32, 8-bit per channel, kernel "auto") verifying the same draft, with speed-ups over both the
fp32 target and the quantized target's own plain decode.
"""
from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import os
import sys
import time

import _common  # noqa: F401  (sets sys.path)
import torch
from safetensors.torch import load_file, save_file

import condense
from condense.core.paths import cache_dir
from condense.distillation import DistillConfig
from condense.measurement.timing import interleaved_p50
from condense.quantize.weight_only import WeightOnlyConfig
from condense.speculative import speculative_generate
from condense.tasks.gpt import GPT, generate
from condense.tasks.tinygpt import PROMPT
from condense.train.loop import FitConfig

QUANT = {4: WeightOnlyConfig(bits=4), 8: WeightOnlyConfig(bits=8, group_size=-1)}  # RTN, kernel "auto"


def _fmt_load(v: tuple[float, float, float]) -> str:
    return " / ".join(f"{x:.2f}" for x in v)


def distilled_draft(task, target: GPT, layers: int, steps: int, preset: str, fresh: bool) -> tuple[GPT, float]:
    """The target's `layers`-block student distilled `steps` steps (cached), and the seconds distilling took."""
    stem = cache_dir() / f"speculative-draft-{preset}-{layers}l-{steps}s"
    weights, meta = stem.with_suffix(".safetensors"), stem.with_suffix(".json")
    if weights.exists() and meta.exists() and not fresh:
        draft = GPT(dataclasses.replace(target.config, n_layer=layers))
        draft.load_state_dict(load_file(str(weights)))
        return draft.eval(), json.loads(meta.read_text())["distill_s"]
    t = time.perf_counter()
    draft = condense.distill(target, None, DistillConfig(layers=layers, finetune=FitConfig(
        steps=steps, lr=1e-3, schedule="cosine")), task=task).eval()
    distill_s = time.perf_counter() - t
    weights.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in draft.state_dict().items()}, str(weights))
    meta.write_text(json.dumps({"distill_s": distill_s, "load_average": os.getloadavg()}))
    return draft, distill_s


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", default="default")
    ap.add_argument("--draft-layers", type=int, default=1)
    ap.add_argument("--distill-steps", type=int, default=300)
    ap.add_argument("--draft-bits", type=int, default=0, choices=[0, *QUANT], help="0: float32 draft")
    ap.add_argument("--ks", default="2,3,4,6")
    ap.add_argument("--heuristic", action="store_true", help="add a schedule='heuristic' row")
    ap.add_argument("--target-bits", default="", help="e.g. 4,8: quantized targets verifying the same draft")
    ap.add_argument("--tokens", type=int, default=64)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--fresh-draft", action="store_true", help="distil the draft again (ignore the cached one)")
    ap.add_argument("--no-write", action="store_true")
    args = ap.parse_args(argv)
    ks = [int(k) for k in args.ks.split(",")]
    tbits = [int(b) for b in args.target_bits.split(",") if b]
    torch.set_num_threads(args.threads)
    load0, t0 = os.getloadavg(), time.perf_counter()
    task = condense.get_task("tinygpt", preset=args.preset)
    target = task.build_model().eval()
    draft, distill_s = distilled_draft(task, target, args.draft_layers, args.distill_steps, args.preset,
                                       args.fresh_draft)
    drafts = {"float32": draft}
    if args.draft_bits:
        drafts[f"{args.draft_bits}-bit"] = condense.quantize_(copy.deepcopy(draft), QUANT[args.draft_bits]).eval()
    dname = list(drafts)[-1]  # the draft the speculative rows use
    d = drafts[dname]
    targets = {"float32": target, **{f"{b}-bit": condense.quantize_(copy.deepcopy(target), QUANT[b]).eval()
                                     for b in tbits}}
    prompt = torch.tensor([list(PROMPT)], dtype=torch.long)
    fns = {f"target {t}": (lambda m=m: generate(m, prompt, args.tokens)) for t, m in targets.items()}
    fns.update({f"draft {n}": (lambda m=m: generate(m, prompt, args.tokens)) for n, m in drafts.items()})
    spec = {f"k={k}": dict(k=k) for k in ks}  # speculative variants on the float32 target
    stats = {}

    def check(name: str, tname: str, kw: dict) -> None:
        out, s = speculative_generate(targets[tname], d, prompt, args.tokens, **kw)
        if not torch.equal(out, generate(targets[tname], prompt, args.tokens)):
            raise SystemExit(f"bench_speculative: {name} output differs from its target's greedy output")
        stats[name] = s
        fns[name] = lambda: speculative_generate(targets[tname], d, prompt, args.tokens, **kw)

    for name, kw in spec.items():
        check(name, "float32", kw)
    best = max(ks, key=lambda k: (stats[f"k={k}"].tokens_per_target_call, -k))  # by passes saved (untimed yet)
    if args.heuristic:
        check(f"heuristic from k={best}", "float32", dict(k=best, schedule="heuristic"))
    for t in targets:
        if t != "float32":
            check(f"{t} target, k={best}", t, dict(k=best))
    with torch.inference_mode():
        p50 = interleaved_p50(fns, rounds=args.rounds, warmup=1, repeats=3)
    tps = {n: args.tokens / s for n, s in p50.items()}
    base = tps["target float32"]
    q_t = task.evaluate(target)["bits_per_byte"]
    n_t = sum(p.numel() for p in target.parameters())
    n_d = sum(p.numel() for p in draft.parameters())
    load1 = os.getloadavg()
    lines = ["| variant | decode tokens/s @ batch 1 | vs float32 target | vs its target's plain decode | acceptance | "
             "tokens per target pass | same greedy text as its target |", "|---|---|---|---|---|---|---|",
             f"| target float32 ({n_t / 1e6:.2f} M params, {q_t:.3f} bits/byte) | {base:.0f} | 1.00x | 1.00x | | "
             "1.00 | reference |"]
    for t in targets:
        if t != "float32":
            lines.append(f"| target {t} weight-only (plain decode) | {tps[f'target {t}']:.0f} | "
                         f"{tps[f'target {t}'] / base:.2f}x | 1.00x | | 1.00 | reference for its rows |")
    for n, m in drafts.items():
        lines.append(f"| draft {n} alone ({args.draft_layers} block(s), {n_d / 1e6:.2f} M params, "
                     f"{task.evaluate(m)['bits_per_byte']:.3f} bits/byte) | {tps[f'draft {n}']:.0f} | "
                     f"{tps[f'draft {n}'] / base:.2f}x | | | | no |")
    for name, s in stats.items():
        t = name.split(" target")[0] if " target" in name else "float32"
        own = tps[f"target {t}"]
        lines.append(f"| speculative, {t} target, {dname} draft, {name.split(', ')[-1]} | {tps[name]:.0f} | "
                     f"{tps[name] / base:.2f}x | {tps[name] / own:.2f}x | {s.acceptance_rate:.0%} | "
                     f"{s.tokens_per_target_call:.2f} | yes (token for token) |")
    fp32_rows = [n for n in stats if " target" not in n]
    top = max(fp32_rows, key=lambda n: tps[n])
    notes = (f"Target: tinygpt preset `{args.preset}`; draft: `DistillConfig(layers={args.draft_layers})` distilled "
             f"{args.distill_steps} steps on the task's training text ({distill_s:.0f} s, once; cached)"
             + (f", then `WeightOnlyConfig(bits={args.draft_bits})` RTN (kernel auto)" if args.draft_bits else "")
             + f". Quantized targets: RTN, kernel auto. {args.tokens} new tokens from the task's prompt, greedy, "
             f"batch 1, medians of {args.rounds} interleaved rounds. Best on the float32 target: {top}, "
             f"{tps[top] / base:.2f}x its plain decode (target: >= 1.5x). Run time "
             f"{(time.perf_counter() - t0) / 60:.1f} min; load average {_fmt_load(load0)} at start, "
             f"{_fmt_load(load1)} at the end.")
    cmd = "python bench/bench_speculative.py" + "".join(f" {a}" for a in (sys.argv[1:] if argv is None else argv))
    body = "\n".join(["## Speculative decoding", "", _common.header(cmd, args.threads, notes), "", *lines])
    print(body)
    if not args.no_write:
        _common.write_section("speculative", body)


if __name__ == "__main__":
    main()
