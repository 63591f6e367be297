"""Choose the FixMatch settings of bench_data_efficiency.py on a validation split, never the test split.

Usage: .venv/bin/python bench/select_semi.py [--candidates all|NAME,NAME] [--seeds 0,1,2] [--threads 1]
Every candidate trains from scratch on digits with `--task-option validation=0.2` (a fixed, stratified 20% of the
training images held out and scored; the labels and the unlabelled data come from the other 80%) and 5% of the
labels; the test split is not touched. Writes the `data-efficiency-selection` section of BENCHMARKS.md.
"""
from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import _common
import torch

from condense.tasks import get_task
from condense.train.api import TrainConfig, train
from condense.train.semi import SemiConfig

BASE = dict(steps=600, lr=3e-3, optimizer="adamw", weight_decay=1e-4, grad_clip=None, schedule="onecycle",
            min_lr_ratio=0.0, precision="fp32", tensorboard=False)
OLD = dict(method="fixmatch", threshold=0.9, mu=3, lambda_u=1.0, weak="image-shift", strong="image-strong",
           ramp_steps=0, align=0)  # every field spelled out: SemiConfig's defaults move to the chosen settings
CANDIDATES = {  # name: (TrainConfig fields, SemiConfig fields); None semi: supervised on every label
    "100% labels": ({}, None),
    "100% labels, ema 0.99": ({"ema": 0.99}, None),
    "previous (tau 0.9, mu 3)": ({"augment": "image-shift"}, {}),
    "ema 0.99": ({"augment": "image-shift", "ema": 0.99}, {}),
    "ema 0.999": ({"augment": "image-shift", "ema": 0.999}, {}),
    "ema 0.99, 1200 steps": ({"augment": "image-shift", "ema": 0.99, "steps": 1200}, {}),
    "ema 0.99, tau 0.95": ({"augment": "image-shift", "ema": 0.99}, {"threshold": 0.95}),
    "ema 0.99, tau 0.8": ({"augment": "image-shift", "ema": 0.99}, {"threshold": 0.8}),
    "ema 0.99, tau 0.7": ({"augment": "image-shift", "ema": 0.99}, {"threshold": 0.7}),
    "ema 0.99, lambda_u 2": ({"augment": "image-shift", "ema": 0.99}, {"lambda_u": 2.0}),
    "ema 0.99, strong image-heavy": ({"augment": "image-shift", "ema": 0.99}, {"strong": "image-heavy"}),
    "ema 0.99, ramp 200": ({"augment": "image-shift", "ema": 0.99}, {"ramp_steps": 200}),
    "ema 0.99, tau 0.8, 1200 steps": ({"augment": "image-shift", "ema": 0.99, "steps": 1200}, {"threshold": 0.8}),
    "ema 0.99, tau 0.8, 1200 steps, align 32": ({"augment": "image-shift", "ema": 0.99, "steps": 1200},
                                                {"threshold": 0.8, "align": 32}),
    "ema 0.99, tau 0.8, 2000 steps": ({"augment": "image-shift", "ema": 0.99, "steps": 2000}, {"threshold": 0.8}),
    "ema 0.99, tau 0.8, 1200 steps, strong image-heavy": ({"augment": "image-shift", "ema": 0.99, "steps": 1200},
                                                          {"threshold": 0.8, "strong": "image-heavy"}),
    "ema 0.99, tau 0.8, mu 7, 1200 steps": ({"augment": "image-shift", "ema": 0.99, "steps": 1200},
                                            {"threshold": 0.8, "mu": 7}),
    "ema 0.99, tau 0.8, 2000 steps, lr 1e-3 cosine": ({"augment": "image-shift", "ema": 0.99, "steps": 2000,
                                                       "lr": 1e-3, "schedule": "cosine"}, {"threshold": 0.8}),
    "ema 0.99, tau 0.8, 2000 steps, align 32": ({"augment": "image-shift", "ema": 0.99, "steps": 2000},
                                                {"threshold": 0.8, "align": 32}),
    "ema 0.99, tau 0.8, 1200 steps, ramp 300": ({"augment": "image-shift", "ema": 0.99, "steps": 1200},
                                                {"threshold": 0.8, "ramp_steps": 300}),
}


def run(fields: dict, semi: dict | None, seed: int, validation: float) -> tuple[float, float]:
    options = {"channels": [16, 32, 64], "validation": validation}
    if semi is not None:
        options["labels_fraction"] = 0.05
    cfg = TrainConfig(**{**BASE, **fields}, seed=seed,
                      semi=SemiConfig(**{**OLD, **semi}) if semi is not None else None)
    task = get_task("digits", **options)
    t0 = time.perf_counter()
    model, _ = train(task, cfg)
    return task.metrics(model)["accuracy"], time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--candidates", default="all", help="names separated by ; (names hold commas), or all")
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--validation", type=float, default=0.2)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--results", default=None, help="a JSON file keeping every candidate's accuracies: candidates "
                    "already in it are not run again, and the table lists them all")
    ap.add_argument("--load-note", default=None, help="what the load was while the recorded candidates ran (when "
                    "the table is written from --results gathered by earlier runs)")
    ap.add_argument("--no-write", action="store_true")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    names = list(CANDIDATES) if args.candidates == "all" else args.candidates.split(";")
    seeds = [int(s) for s in args.seeds.split(",")]
    load_before, t_all = _common.load_average(), time.perf_counter()
    path = Path(args.results) if args.results else None
    done = json.loads(path.read_text()) if path is not None and path.exists() else {}
    for name in names:
        if name in done:
            continue
        fields, semi = CANDIDATES[name]
        runs = [run(fields, semi, s, args.validation) for s in seeds]
        done[name] = {"accuracy": [a for a, _ in runs], "wall_s": statistics.mean(w for _, w in runs)}
        print(f"{name}: {done[name]}", flush=True)
        if path is not None:
            path.write_text(json.dumps(done, indent=1))
    rows = []
    for name, r in done.items():
        accs = r["accuracy"]
        rows.append(f"| {name} | {statistics.mean(accs):.4f} ({min(accs):.4f} .. {max(accs):.4f}) | "
                    f"{r['wall_s']:.1f} s |")
    notes = (f"Validation accuracy (a fixed stratified {args.validation:.0%} of the training images, held out; "
             f"`--task-option validation={args.validation}`), mean over seeds 0, 1, 2 (min .. max); the test "
             f"split is not used. Digits CNN (16, 32, 64) from scratch, {BASE['steps']} steps unless stated, AdamW "
             f"lr 3e-3 one-cycle; 5% of the remaining training labels. Every FixMatch row starts from the previous "
             f"settings (threshold 0.9, mu 3, lambda_u 1, weak `image-shift`, strong `image-strong`, labelled "
             f"batches `image-shift`) and changes what its name says (`align 32`: `SemiConfig.align=32`, the "
             f"targets' distribution aligned to uniform over the last 32 batches; `ramp N`: `ramp_steps=N`). "
             + (args.load_note or
             f"{_common.load_average().capitalize()} after, {load_before} before "
             f"({time.perf_counter() - t_all:.0f} s in all)."))
    lines = ["## Data efficiency: choosing the semi-supervised settings on a validation split", "",
             _common.header("python bench/select_semi.py", args.threads, notes), "",
             "| candidate | validation accuracy | wall time per run |", "|---|---|---|", *rows]
    semi_rows = {n: statistics.mean(r["accuracy"]) for n, r in done.items() if CANDIDATES[n][1] is not None}
    if semi_rows and "100% labels" in done:
        best = max(semi_rows, key=semi_rows.get)
        full = statistics.mean(done["100% labels"]["accuracy"])
        lines += ["", f"Chosen (highest mean): {best}, {semi_rows[best]:.4f}, {100 * (full - semi_rows[best]):.2f} "
                      f"points below 100% labels ({full:.4f}) on the validation split; bench_data_efficiency.py's "
                      f"FixMatch row and `SemiConfig`'s defaults use it."]
    print("\n".join(lines))
    if not args.no_write:
        _common.write_section("data-efficiency-selection", "\n".join(lines))


if __name__ == "__main__":
    main()
