"""Distillation, side by side in one process: minilm 6 -> 3 layers on unlabelled text; tinygpt half-size student
trained with vs without distillation for the same steps.

Usage: .venv/bin/python bench/bench_distill.py [--part minilm|tinygpt|all] [--threads 2] [--minilm-steps 400]
       [--gpt-steps 300] [--no-write]
Writes the `distill-minilm` and `distill-tinygpt` sections of BENCHMARKS.md.

minilm: the student keeps 3 of the teacher's 6 blocks, the 3 whose output is closest to the teacher's on
calibration text (`DistillConfig(layers=3, layer_criterion="subset")`: blocks 0, 4, 5; compare the evenly spread
1, 3, 5 with --minilm-layer-criterion spread: the table's notes give MRR@10 before distilling) and learns the
teacher's sentence embeddings (cosine + in-batch similarity ranking) on the task's train_data: (summary sentence,
rest of the docstring) pairs from standard-library docstrings outside the evaluation set. One student adds the
in-batch contrastive loss on those pairs (`contrastive_weight=1`), one does not (0), same blocks, data and steps.
Speed: tokenize + embed a batch of 32 (the task's own run), interleaved rounds, medians. Quality: MRR@10 of the task's retrieval evaluation.
tinygpt: the student keeps 2 of 4 blocks and 85% of their MLP width (about half the parameters), initialised
from the teacher; one copy trains on the task loss only (alpha=0), the other with token-level distillation,
same data, steps and optimizer. Quality: val perplexity per byte. T=1 (the teacher's own next-byte distribution):
on 2026-11-22 a 200-step run with T=2, alpha=0.9 reached perplexity 10.05, worse than without distillation (9.55),
while T=1 reached 9.35 (alpha=0.5) and 9.28 (alpha=1.0).
"""
from __future__ import annotations

import argparse
import copy
import sys
import time

import _common
import torch

from condense.core.transforms import TransformContext
from condense.distillation import DistillConfig, distill, student_from_teacher
from condense.tasks import get_task
from condense.train.loop import FitConfig


def params(m: torch.nn.Module) -> int:
    return sum(p.numel() for p in m.parameters())


def _verdict(ok: bool) -> str:
    return "met" if ok else "MISSED"


def _section(title: str, args: argparse.Namespace, notes: str, lines: list[str], checks: list[str]) -> str:
    cmd = ("python bench/bench_distill.py " + " ".join(sys.argv[1:])).strip()
    return (f"## {title}\n\n" + _common.header(cmd, args.threads, notes) + "\n\n" + "\n".join(lines) + "\n\n"
            + "\n".join(checks) + "\n")


def bench_minilm(args: argparse.Namespace) -> str:
    load0 = _common.load_average()
    task = get_task("minilm")
    teacher = task.build_model()
    fit = FitConfig(steps=args.minilm_steps, lr=args.minilm_lr, schedule="cosine", warmup_steps=20)
    cfgs = [DistillConfig(layers=args.minilm_layers, layer_criterion=args.minilm_layer_criterion,
                          hidden_weight=args.minilm_hidden_weight, finetune=fit, max_tokens=args.minilm_tokens,
                          contrastive_weight=w) for w in args.minilm_contrastive]
    t0 = time.perf_counter()
    student0, details = student_from_teacher(teacher, cfgs[0], TransformContext(task=task))
    choose_s = time.perf_counter() - t0
    kept = details["kept"]
    q_init = task.metrics(student0)  # not timed
    students, train_s = {}, {}
    for cfg in cfgs:
        w = cfg.contrastive_weight  # one row per weight: the label names any weight but the default 1
        name = ("student, distilled only" if not w else "student, distilled + contrastive pairs"
                + ("" if w == 1 else f" (weight {w:g})"))
        t0 = time.perf_counter()
        students[name] = distill(teacher, copy.deepcopy(student0), cfg, task=task)
        train_s[name] = time.perf_counter() - t0
        print(f"minilm {name}: {train_s[name]:.0f} s", file=sys.stderr)
    q = {"teacher": task.metrics(teacher), **{k: task.metrics(m) for k, m in students.items()}}
    x = task.batch(32)
    models = {"teacher": teacher, **students}
    with torch.inference_mode():
        p50 = _common.interleaved_p50({k: (lambda m=m: task.run_batch(m, x)) for k, m in models.items()},
                                      rounds=args.rounds)
    load1 = _common.load_average()
    q_t = q["teacher"]
    lines = ["| model | blocks | parameters | batch 32 (tokenize + embed) | speed vs teacher | MRR@10 | vs teacher | "
             "recall@1 | cosine to teacher | training |", "|" + "---|" * 10]
    for name, m in models.items():
        label = "teacher (all-MiniLM-L6-v2)" if name == "teacher" else name
        lines.append(f"| {label} | {len(m.bert.layers)} | {params(m):,} | {p50[name] * 1e3:.1f} ms | "
                     f"{p50['teacher'] / p50[name]:.2f}x | {q[name]['mrr@10']:.4f} | "
                     f"{q[name]['mrr@10'] / q_t['mrr@10']:.1%} | {q[name]['recall@1']:.4f} | "
                     f"{q[name]['cosine_to_fp32']:.4f} | {train_s.get(name, 0):.0f} s |")
    best = max(students, key=lambda k: q[k]["mrr@10"])
    speed, rel = p50["teacher"] / p50[best], q[best]["mrr@10"] / q_t["mrr@10"]
    checks = [f"- best student ({best}): speed at batch 32 {speed:.2f}x the teacher (target >= 1.8x): "
              f"{_verdict(speed >= 1.8)}",
              f"- MRR@10: {rel:.1%} of the teacher's (target >= 97%): {_verdict(rel >= 0.97)}"]
    tokens = f"cut to {args.minilm_tokens} tokens" if args.minilm_tokens else "up to 128 tokens"
    notes = (f"Baseline: the 6-block teacher. Students: blocks {', '.join(map(str, kept))} of the teacher (chosen by "
             f"layer_criterion={args.minilm_layer_criterion!r}; MRR@10 {q_init['mrr@10']:.4f} = "
             f"{q_init['mrr@10'] / q_t['mrr@10']:.1%} of the teacher before training), embedding tables frozen, "
             f"{args.minilm_steps} steps of 32 (summary sentence, rest of the docstring) pairs from docstrings "
             f"outside the evaluation set (no labels: each docstring pairs with itself; {tokens}), AdamW lr "
             f"{args.minilm_lr:g} cosine. Loss: 1 - cos to the teacher + in-batch relation KL"
             + (f" + {args.minilm_hidden_weight:g} x token-level last-hidden-state MSE" if args.minilm_hidden_weight
                else "")
             + ", and for the contrastive student + in-batch contrastive loss between each pair's two texts (scale 20). "
             f"Choosing the blocks took {choose_s:.0f} s. Latency: median of {args.rounds} interleaved rounds. "
             f"{load0} at start, {load1} after timing.")
    return _section("Distillation: minilm, 6-block teacher -> 3-block student on unlabelled text", args, notes,
                    lines, checks)


def bench_tinygpt(args: argparse.Namespace) -> str:
    load0 = _common.load_average()
    task = get_task("tinygpt")
    teacher = task.build_model()
    fit = FitConfig(steps=args.gpt_steps, lr=args.gpt_lr, schedule="cosine", warmup_steps=20)
    shape = dict(layers=2, width_ratio=args.gpt_width)
    student0, _ = student_from_teacher(teacher, DistillConfig(**shape))
    rows = [("teacher", teacher, task.metrics(teacher), 0.0)]
    rows.append(("student, not trained", student0, task.metrics(student0), 0.0))
    for label, alpha in (("student, task loss only (alpha=0)", 0.0),
                         (f"student, distilled (alpha={args.alpha}, T={args.temperature})", args.alpha)):
        s = copy.deepcopy(student0)
        cfg = DistillConfig(alpha=alpha, temperature=args.temperature, finetune=fit, **shape)
        t0 = time.perf_counter()
        distill(teacher, s, cfg, task.train_data, task=task)
        rows.append((label, s, task.metrics(s), time.perf_counter() - t0))
        print(f"trained {label}", file=sys.stderr)
    load1 = _common.load_average()
    lines = ["| model | parameters | vs teacher | bits/byte | perplexity | training time |", "|" + "---|" * 6]
    for label, m, q, secs in rows:
        lines.append(f"| {label} | {params(m):,} | {params(m) / params(teacher):.3f}x | {q['bits_per_byte']:.4f} | "
                     f"{q['perplexity']:.4f} | {secs:.0f} s |")
    plain, kd = rows[2][2]["perplexity"], rows[3][2]["perplexity"]
    checks = [f"- student parameters: {params(student0) / params(teacher):.1%} of the teacher's (target: half)",
              f"- perplexity with distillation {kd:.4f} vs without {plain:.4f} after {args.gpt_steps} steps each "
              f"(target: lower): {_verdict(kd < plain)}"]
    notes = (f"Baseline: the same student trained without distillation. Teacher: tinygpt `default` (4 blocks, width "
             f"160). Student: blocks 1 and 3 of the teacher, MLP width kept {args.gpt_width:.0%} (L2 structured "
             f"pruning). Both: {args.gpt_steps} steps on the task's train batches (16 x 128 bytes), AdamW lr "
             f"{args.gpt_lr} cosine, warm-up 20, seed 0. Perplexity per byte on the val split. {load0} at start, "
             f"{load1} at the end.")
    return _section("Distillation: tinygpt, half-size student with vs without distillation", args, notes, lines,
                    checks)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--part", choices=("minilm", "tinygpt", "all"), default="all")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--minilm-layers", type=int, default=3)
    ap.add_argument("--minilm-steps", type=int, default=400)
    ap.add_argument("--minilm-lr", type=float, default=5e-5)
    ap.add_argument("--minilm-layer-criterion", default="subset")
    ap.add_argument("--minilm-hidden-weight", type=float, default=0.0)
    ap.add_argument("--minilm-tokens", type=int, default=None, help="cut texts to this many tokens while training")
    ap.add_argument("--minilm-contrastive", type=lambda v: list(dict.fromkeys(float(w) for w in v.split(","))),
                    default=[1.0, 0.0],
                    help="contrastive weights, one student each (default 1,0: with and without the pairs' loss)")
    ap.add_argument("--gpt-steps", type=int, default=200)
    ap.add_argument("--gpt-lr", type=float, default=1e-3)
    ap.add_argument("--gpt-width", type=float, default=0.85, help="fraction of the student's MLP width kept")
    ap.add_argument("--alpha", type=float, default=0.5)
    ap.add_argument("--temperature", type=float, default=1.0)
    ap.add_argument("--rounds", type=int, default=10)
    ap.add_argument("--no-write", action="store_true")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    for part, fn in (("minilm", bench_minilm), ("tinygpt", bench_tinygpt)):
        if args.part in (part, "all"):
            body = fn(args)
            if not args.no_write:
                _common.write_section(f"distill-{part}", body)
            print(body)


if __name__ == "__main__":
    main()
