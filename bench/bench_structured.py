"""Structured pruning that removes what it prunes: dense vs pruned (+ recovery), side by side in one process.

Usage: .venv/bin/python bench/bench_structured.py [--part digits|minilm|all] [--threads 2] [--rounds 7]
       [--digits-steps 150] [--minilm-steps 400] [--minilm-variant heads25-ffn60|ffn70|...] [--no-write]
Writes the `structured-digits` and `structured-minilm` sections of BENCHMARKS.md. Latency: interleaved rounds,
the p50 reported is the median of the rounds' medians.
"""
from __future__ import annotations

import argparse
import copy
import dataclasses
import os
import sys
import time
from typing import Any, Callable

import _common  # also sets sys.path
import torch

import condense
from condense.measurement.api import MeasureConfig
from condense.prune import LayerDropConfig, StructuredConfig, prune_
from condense.train.loop import FitConfig

def _minilm_fit(steps: int) -> FitConfig:
    return FitConfig(steps=steps, lr=5e-5, schedule="cosine", warmup_steps=min(20, steps // 10))


MINILM_VARIANTS: dict[str, Callable[[int], list[Any]]] = {
    # 70% of every FFN's width, chosen by OBS and compensated by least squares, then embedding distillation
    "ffn70": lambda steps: [StructuredConfig(ratio=0.7, target="ffn", importance="obs", reconstruct=True,
                                             finetune=_minilm_fit(steps))],
    # 25% of the heads and 60% of the FFN width
    "heads25-ffn60": lambda steps: [StructuredConfig(ratio=0.6, layer_ratios=(("*.attn", 0.25),), importance="obs",
                                                     reconstruct=True, finetune=_minilm_fit(steps))],
    # 50% of the heads and 50% of the FFN width
    "heads50-ffn50": lambda steps: [StructuredConfig(ratio=0.5, importance="obs", reconstruct=True,
                                                     finetune=_minilm_fit(steps))],
    # drop the 2 blocks that change their input least, halve the remaining FFNs, then distil
    "drop2-ffn50": lambda steps: [LayerDropConfig(n_drop=2), StructuredConfig(
        ratio=0.5, target="ffn", importance="obs", reconstruct=True, finetune=_minilm_fit(steps))],
}


def _load() -> str:
    return " / ".join(f"{v:.2f}" for v in os.getloadavg())


def _verdict(value: float, target: float, what: str, higher: bool = True) -> str:
    met = value >= target if higher else value <= target
    gap = "" if met else f", missed by {abs(target - value):.3g}"
    return f"- {what}: {value:.3g} (target {'>=' if higher else '<='} {target:g}): {'met' if met else 'MISSED'}{gap}"


def run_part(name: str, task: Any, dense: torch.nn.Module, configs: list[Any], batch: int, rounds: int,
             quality_fmt: Callable[[dict, dict], list[str]], notes: str, threads: int) -> tuple[str, dict]:
    """Prune a copy of `dense`, time both interleaved, measure both; returns (notes + table, raw figures)."""
    load_before = _load()
    t0 = time.perf_counter()
    pruned = copy.deepcopy(dense)
    for cfg in configs:
        prune_(pruned, cfg, task=task)
    prune_s = time.perf_counter() - t0
    x = task.batch(batch)
    p50 = _common.interleaved_rounds_p50({"dense": lambda: task.run_batch(dense, x),
                                          "pruned": lambda: task.run_batch(pruned, x)},
                                         rounds=rounds, warmup=2, repeats=5, min_time_s=0.5)
    mcfg = MeasureConfig(batch_sizes=(1,), warmup=0, repeats=1, min_time_s=0, memory=False, threads=threads)
    ms = {k: condense.measure(m, task, mcfg, label=k) for k, m in (("dense", dense), ("pruned", pruned))}
    load_after = _load()
    shapes = condense.core.lineage.lineage(pruned)["transforms"]
    qcols = list(quality_fmt(ms["dense"].quality, ms["dense"].quality))
    head = (f"| variant | params | MACs / sample | p50 @ batch {batch} | speedup | size on disk | "
            + " | ".join(c.split("=")[0] for c in qcols) + " |")
    lines = [head, "|" + "---|" * (6 + len(qcols))]
    for k, m in ms.items():
        q = [c.split("=", 1)[1] for c in quality_fmt(m.quality, ms["dense"].quality)]
        lines.append(f"| {k} | {m.params_total / 1e6:.3f} M | {m.macs_per_sample / 1e6:.2f} M | "
                     f"{p50[k] * 1e3:.1f} ms | {p50['dense'] / p50[k]:.2f}x | {m.size_bytes / 2**20:.2f} MiB | "
                     + " | ".join(q) + " |")
    recipe = "; ".join(f"`{type(c).__name__}({_short(c)})`" for c in configs)
    notes = (f"Baseline: dense fp32 eager. Pruned with {recipe}, recovery included: {prune_s:.0f} s in all. "
             f"{notes} {rounds} interleaved rounds (each >= 5 runs and >= 0.5 s). Load average (1/5/15 min) "
             f"before: {load_before}, after: {load_after} (shared machine).")
    return notes + "\n\n" + "\n".join(lines) + "\n", {"p50": p50, "ms": ms, "shapes": shapes, "prune_s": prune_s,
                                                        "model": pruned}


def _short(cfg: Any) -> str:
    """The config's non-default fields (ratio always), FitConfig abbreviated."""
    parts = []
    for f in dataclasses.fields(cfg):
        v = getattr(cfg, f.name)
        if v == f.default and f.name != "ratio":
            continue
        if isinstance(v, FitConfig):
            parts.append(f"finetune=FitConfig(steps={v.steps}, lr={v.lr:g}, schedule={v.schedule!r})")
        else:
            parts.append(f"{f.name}={v!r}")
    return ", ".join(parts)


def bench_digits(args: argparse.Namespace) -> str:
    """Digits CNN: half of every conv's channels removed, then fine-tuned on the training split."""
    task = condense.get_task("digits")
    dense = task.build_model()
    cfg = StructuredConfig(ratio=0.5, finetune=FitConfig(steps=args.digits_steps, lr=1e-3, schedule="cosine"))

    def quality(q: dict, base: dict) -> list[str]:
        return [f"accuracy={q['accuracy']:.2%}", f"vs dense={(q['accuracy'] - base['accuracy']) * 100:+.2f} pt"]

    body, r = run_part("digits", task, dense, [cfg], 256, args.rounds, quality,
                       "Test split of sklearn digits (360 images); fine-tuning on the training split.", args.threads)
    speed = r["p50"]["dense"] / r["p50"]["pruned"]
    drop = (r["ms"]["dense"].quality["accuracy"] - r["ms"]["pruned"].quality["accuracy"]) * 100
    return body + "\n" + _verdict(speed, 1.8, "speedup @ batch 256") + "\n" + \
        _verdict(drop, 1.0, "accuracy drop vs dense (points)", higher=False) + "\n"


def bench_minilm(args: argparse.Namespace) -> str:
    """MiniLM: heads/FFN pruned (or blocks dropped), then distilled from the dense model on unlabelled text."""
    task = condense.get_task("minilm")
    dense = task.build_model()
    configs = MINILM_VARIANTS[args.minilm_variant](args.minilm_steps)

    def quality(q: dict, base: dict) -> list[str]:
        return [f"MRR@10={q['mrr@10']:.4f}", f"vs dense={q['mrr@10'] / base['mrr@10']:.1%}",
                f"recall@1={q['recall@1']:.3f}", f"cosine to fp32={q['cosine_to_fp32']:.4f}"]

    body, r = run_part("minilm", task, dense, configs, 32, args.rounds, quality,
                       "500 stdlib docstring retrieval pairs, inputs as the task runs them (tokenisation "
                       "included). Units chosen by Optimal Brain Surgeon and the consuming Linears refitted by "
                       "least squares on the task's 8 calibration batches of 32 texts; then embedding distillation "
                       "from the dense model (1 - cosine of sentence embeddings + KL between in-batch similarity "
                       "distributions at temperature 0.05 + in-batch contrastive loss between each pair's two "
                       "texts; up to 128 tokens; embedding tables frozen; AdamW lr 5e-5 cosine) on the task's "
                       "train_data: batches of 32 (summary sentence, rest of the docstring) pairs from docstrings "
                       "outside the evaluation set (no labels: each docstring pairs with itself).", args.threads)
    layers = r["model"].bert.layers
    att = [b.attn.n_heads for b in layers]
    ffn = [b.ffn_in.out_features for b in layers]
    speed = r["p50"]["dense"] / r["p50"]["pruned"]
    rel = r["ms"]["pruned"].quality["mrr@10"] / r["ms"]["dense"].quality["mrr@10"]
    return (body + f"\nPruned model: {len(layers)} of {len(dense.bert.layers)} layers; heads per layer {att}, "
            f"FFN width per layer {ffn} (dense: 12 heads, 1536).\n\n"
            + _verdict(speed, 1.6, "speedup @ batch 32") + "\n"
            + _verdict(rel, 0.97, "MRR@10 relative to dense") + "\n")


def main() -> None:
    """Run the chosen parts and write their sections."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--part", default="all", choices=("digits", "minilm", "all"))
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--digits-steps", type=int, default=150)
    ap.add_argument("--minilm-steps", type=int, default=400)
    ap.add_argument("--minilm-variant", default="heads25-ffn60", choices=sorted(MINILM_VARIANTS))
    ap.add_argument("--no-write", action="store_true")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    cmd = ("python bench/bench_structured.py " + " ".join(sys.argv[1:])).strip()
    parts = {"digits": ("Structured pruning: digits CNN, half the channels + fine-tuning", bench_digits),
             "minilm": (f"Structured pruning: minilm ({args.minilm_variant}) + embedding distillation", bench_minilm)}
    for key, (title, fn) in parts.items():
        if args.part not in (key, "all"):
            continue
        text = fn(args)
        body = f"## {title}\n\n" + _common.header(cmd, args.threads, text)
        if not args.no_write:
            _common.write_section(f"structured-{key}", body)
        print(body, flush=True)


if __name__ == "__main__":
    main()
