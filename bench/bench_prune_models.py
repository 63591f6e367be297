"""Structured pruning on any architecture: one fixed ratio on every model, what the dependency graph found and bought.

Usage: .venv/bin/python bench/bench_prune_models.py [--rows llama,resnet] [--ratio 0.25] [--threads 1]
       [--batch 8] [--rounds 7] [--quick] [--no-write]
Writes the `prune-models` section of BENCHMARKS.md (between `<!-- bench:prune-models -->` markers).

Rows: the models condense did not write (condense.testing.zoo: the pretrained Hugging Face BertModel of MiniLM,
Llama with grouped-query attention, Mistral, GPT-2, Qwen2, a torchvision-style ResNet, a MobileNet-style net with
depthwise convolutions) and condense's built-in models (tinygpt, minilm, digits). For each, at one ratio:
the groups the traced graph found (by kind) and the layers it left alone, parameters and MACs before/after,
the cut model against the dense model with the same units masked (zeroed consumer inputs: the parts that were kept
must compute exactly what they did), speed of `task.run_batch` at --batch against dense (median of interleaved
rounds), the primary metric before/after (no recovery), and condense.save -> condense.load reproducing the
pruned model's outputs exactly. A model that does not prune says why.
"""
from __future__ import annotations

import argparse
import copy
import dataclasses
import os
import sys
import tempfile
import time
from dataclasses import dataclass, field
from typing import Any

import _common  # noqa: F401  (sets sys.path)
import torch

import condense
from condense.core.task import Task
from condense.core.transforms import TransformContext, apply_
from condense.errors import first_line
from condense.measurement.macs import count_macs
from condense.prune.structured import StructuredConfig
from condense.train.loop import FitConfig
from condense.testing.matrix import compare, speed_ratio, Baseline
from condense.prune.check import check_cut_equals_mask
from condense.testing.zoo import ROWS as ZOO_ROWS, ResNetSpec, mobilenet_task, zoo_task

BUILTIN = ("tinygpt", "minilm", "digits")
EXTRA = ("mobilenet",)
ALL_ROWS = (*ZOO_ROWS, *EXTRA, *BUILTIN)


def _task(name: str, quick: bool, tinygpt_preset: str = "default") -> Task:
    if name in ZOO_ROWS:
        opts = {} if name == "resnet" else {"eval_windows": 16, "eval_texts": 32}
        return zoo_task(name, quick=quick, **opts)
    if name == "mobilenet":
        return mobilenet_task(ResNetSpec(steps=80 if quick else 400))
    from condense.tasks import get_task

    return get_task(name, **({"preset": tinygpt_preset} if name == "tinygpt" else {}))


@dataclass
class Row:
    name: str
    status: str = "ok"
    why: str = ""
    graph: str = ""
    groups: dict[str, int] = field(default_factory=dict)
    blocked: int = 0
    params: tuple[int, int] = (0, 0)
    macs: tuple[int, int] = (0, 0)
    mask_diff: float = float("nan")
    mask_ok: bool = False
    speed: float = float("nan")
    metric: str = ""
    quality: tuple[float, float] = (float("nan"), float("nan"))
    recovered: float = float("nan")
    reload_diff: float = float("nan")
    seconds: float = 0.0


def _params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def _macs(task: Task, model: torch.nn.Module, batch: Any) -> int:
    with torch.inference_mode():
        return count_macs(model, lambda: task.run_batch(model, batch))


def run_row(name: str, args: argparse.Namespace) -> Row:
    row = Row(name)
    t0 = time.perf_counter()
    try:
        task = _task(name, args.quick, args.tinygpt_preset)
        dense = task.build_model().eval()
        batch = task.batch(args.batch)
        cfg = StructuredConfig(ratio=args.ratio)
        with torch.inference_mode():
            want = task.run_batch(dense, batch)
            q0 = float(task.evaluate(dense)[task.primary_metric])
        check = check_cut_equals_mask(dense, cfg, batch, TransformContext(task=task))
        plan = check.plan
        row.graph = plan.graph.method
        for g in plan.graph.groups:
            row.groups[g.kind] = row.groups.get(g.kind, 0) + 1
        row.blocked = len(plan.graph.blocked)
        row.mask_diff, row.mask_ok = check.max_error, check.ok
        cut = apply_(copy.deepcopy(dense), cfg, task=task).eval()
        with torch.inference_mode():
            q1 = float(task.evaluate(cut)[task.primary_metric])
            got = task.run_batch(cut, batch)
        row.metric, row.quality = task.primary_metric, (q0, q1)
        if args.recover_steps:
            fit = FitConfig(steps=args.recover_steps, lr=args.recover_lr, schedule="cosine")
            rec = apply_(copy.deepcopy(dense), dataclasses.replace(cfg, finetune=fit), task=task).eval()
            with torch.inference_mode():
                row.recovered = float(task.evaluate(rec)[task.primary_metric])
        row.params = (_params(dense), _params(cut))
        row.macs = (_macs(task, dense, batch), _macs(task, cut, batch))
        with torch.inference_mode():
            row.speed = speed_ratio(task, Baseline(dense, batch, want, q0), cut, rounds=args.rounds)
        with tempfile.TemporaryDirectory() as tmp:
            back = condense.load(condense.save(cut, os.path.join(tmp, "a")), model=task.build_model()).eval()
            with torch.inference_mode():
                row.reload_diff = compare(task.run_batch(back, batch), got)[0]
    except Exception as e:  # noqa: BLE001  (a row records any failure and the run goes on)
        row.status, row.why = "failed", first_line(e, 160)
    row.seconds = time.perf_counter() - t0
    print(f"  {name}: {row.status} {row.why} ({row.seconds:.0f} s)", flush=True)
    return row


def _fmt(n: int) -> str:
    return f"{n / 1e6:.2f} M" if n >= 1e5 else f"{n / 1e3:.1f} k"


def table(rows: list[Row]) -> list[str]:
    lines = ["| model | graph | groups found | layers left alone | params before → after | MACs before → after | "
             "cut vs masked (max abs) | speed vs dense | metric: dense → cut → recovered | save/load (max abs) |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        if r.status != "ok":
            lines.append(f"| {r.name} | {r.status}: {r.why} |  |  |  |  |  |  |  |  |")
            continue
        groups = ", ".join(f"{n} {k}" for k, n in sorted(r.groups.items())) or "none"
        lines.append(f"| {r.name} | {r.graph} | {groups} | {r.blocked} | {_fmt(r.params[0])} → {_fmt(r.params[1])} "
                     f"({r.params[1] / r.params[0]:.2f}x) | {_fmt(r.macs[0])} → {_fmt(r.macs[1])} "
                     f"({r.macs[1] / max(r.macs[0], 1):.2f}x) | {r.mask_diff:.1e} {'ok' if r.mask_ok else 'DIFFERS'} | "
                     f"{r.speed:.2f}x | "
                     f"{r.metric} {r.quality[0]:.4f} → {r.quality[1]:.4f} → {r.recovered:.4f} | {r.reload_diff:.1e} |")
    return lines


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", default="", help=f"comma separated, from {','.join(ALL_ROWS)} (default: all)")
    ap.add_argument("--ratio", type=float, default=0.25)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--quick", action="store_true", help="zoo models trained 80 steps instead of a few hundred")
    ap.add_argument("--recover-steps", type=int, default=60, help="recovery fine-tuning steps (0: none)")
    ap.add_argument("--recover-lr", type=float, default=5e-4)
    ap.add_argument("--tinygpt-preset", default="default", help="the built-in tinygpt row's preset")
    ap.add_argument("--no-write", action="store_true")
    args = ap.parse_args(argv)
    names = [n.strip() for n in args.rows.split(",") if n.strip()] or list(ALL_ROWS)
    bad = [n for n in names if n not in ALL_ROWS]
    if bad:
        raise SystemExit(f"bench_prune_models: unknown rows {', '.join(bad)}; choose from: {', '.join(ALL_ROWS)}")
    torch.set_num_threads(args.threads)
    load0, t0 = os.getloadavg(), time.perf_counter()
    rows = [run_row(n, args) for n in names]
    load1 = os.getloadavg()
    pruned = sum(r.status == "ok" for r in rows)
    notes = (f"StructuredConfig(ratio={args.ratio}) (target auto, l2 importance) on every model, then the same cut with "
             f"{args.recover_steps} steps of recovery (the task's loss; embedding distillation from the dense model "
             f"for encoders; lr {args.recover_lr}, cosine); batch "
             f"{args.batch}, {args.rounds} interleaved rounds. {pruned} of {len(rows)} models pruned. Run time "
             f"{(time.perf_counter() - t0) / 60:.1f} min; load average {' / '.join(f'{v:.2f}' for v in load0)} at "
             f"start, {' / '.join(f'{v:.2f}' for v in load1)} at the end.")
    cmd = "python bench/bench_prune_models.py" + "".join(f" {a}" for a in (sys.argv[1:] if argv is None else argv))
    body = "\n".join(["## Structured pruning on any architecture", "", _common.header(cmd, args.threads, notes), "",
                      *table(rows)])
    print(body)
    if not args.no_write:
        _common.write_section("prune-models", body)


if __name__ == "__main__":
    main()
