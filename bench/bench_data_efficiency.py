"""Data efficiency on digits, side by side in one run: 5% of the training labels, supervised only, + augmentation,
+ semi-supervised (FixMatch on the unlabelled rest), against 100% of the labels; and transfer learning: the
pretrained MiniLM with a new head against the same architecture from scratch on minilm-topics (10 labels per class).

Usage: .venv/bin/python bench/bench_data_efficiency.py [--part all|digits|transfer] [--steps 600] [--seeds 0,1,2]
       [--semi-seeds 0,1,2] [--transfer-steps 40] [--threads 1]
Writes the `data-efficiency` and `data-efficiency-transfer` sections of BENCHMARKS.md (CONDENSE_BENCHMARKS=/tmp/x.md:
elsewhere).
Every run trains from scratch through `condense.train.api.train` (AdamW, one-cycle LR) and is scored on the
held-out test split (360 images) the labels never came from.
"""
from __future__ import annotations

import argparse
import platform
import statistics
import sys
import time
from concurrent.futures import ProcessPoolExecutor

import _common
import torch

from condense.data.digits import digits_split, labelled_subset
from condense.tasks import get_task
from condense.train.api import TrainConfig, train
from condense.train.semi import SemiConfig
from condense.train.transfer import TransferConfig, compare_transfer


def COMMAND() -> str:  # noqa: N802  (the command line as run, for the section header)
    return " ".join(["python bench/bench_data_efficiency.py", *sys.argv[1:]])


def _ints(text: str) -> list[int]:
    return [int(v) for v in text.split(",") if v]


def run_variant(options: dict, cfg: TrainConfig) -> tuple[float, float, int]:
    """(test accuracy, wall seconds, steps) of one from-scratch run."""
    task = get_task("digits", **options)
    t0 = time.perf_counter()
    model, result = train(task, cfg)
    wall = time.perf_counter() - t0
    return task.metrics(model)["accuracy"], wall, result.steps


def transfer(args: argparse.Namespace) -> None:
    """Pretrained vs from scratch on minilm-topics: accuracy, time and samples to the task's stated target."""
    task = get_task("minilm-topics", labels_per_class=args.labels_per_class)
    cfg = TransferConfig(**{**task.extras["transfer"], "steps": args.transfer_steps})
    load_before, t0 = _common.load_average(), time.perf_counter()
    _, rows = compare_transfer(task, cfg)
    target = cfg.target
    miss = "not reached"
    table = []
    for r in rows:
        curve = ", ".join(f"{e['accuracy']:.3f}" for e in r.evals)
        table.append(f"| {r.variant} | {r.accuracy:.4f} | {r.train_s:.0f} s | {r.samples} | "
                     f"{r.step_to_target if r.step_to_target is not None else miss} | "
                     f"{r.samples_to_target if r.samples_to_target is not None else miss} | "
                     f"{f'{r.time_to_target_s:.0f} s' if r.time_to_target_s is not None else miss} | {curve} |")
    pre, scratch = rows
    margin = (pre.accuracy - scratch.accuracy) * 100
    notes = (f"Task `minilm-topics`: standard-library docstrings (Python {platform.python_version()}) labelled by "
             f"their top-level package, 10 topics, {args.labels_per_class} labelled docstrings per topic "
             f"(`--set labels_per_class={args.labels_per_class}`), scored on 25 held-out docstrings per topic "
             f"(250; 1 docstring = 0.4 pt); texts truncated to 64 tokens. Model: BERT (all-MiniLM-L6-v2's "
             f"architecture, 22.7 M parameters) -> mean pooling -> L2 norm x 10 -> new linear head (the same seeded "
             f"head in both runs). Pretrained: the minilm task's weights, the embedding layer (word, position and type "
             f"embeddings, their LayerNorm) frozen, block k from the top at lr {cfg.lr} x {cfg.lr_decay}^k, head lr "
             f"{cfg.head_lr}. From scratch: random "
             f"weights, every layer trained at lr {cfg.lr}, head lr {cfg.head_lr}. Both: {cfg.steps} AdamW steps of "
             f"16 labelled texts, cosine after {cfg.warmup_steps} warm-up steps, fp32, evaluated every "
             f"{cfg.eval_every} steps (accuracy curve in the last column); one seed (0). Train time excludes "
             f"evaluation. {_common.load_average().capitalize()} after, {load_before} before (shared machine; "
             f"{time.perf_counter() - t0:.0f} s in all).")
    lines = [f"## Data efficiency: transfer learning, MiniLM with {args.labels_per_class} labels per class", "",
             _common.header(COMMAND(), args.threads, notes), "",
             f"| start | test accuracy | train time | samples seen | steps to {target} | samples to {target} | "
             f"time to {target} | accuracy every {cfg.eval_every} steps |", "|---|---|---|---|---|---|---|---|",
             *table, "",
             f"Target: pretrained beats from scratch by a wide margin ({margin:+.1f} points) and reaches the stated "
             f"accuracy {target}: {'met' if pre.step_to_target is not None and margin >= 20 else 'NOT met'} "
             f"(wide margin taken as >= 20 points)."]
    print("\n".join(lines))
    if not args.no_write:
        _common.write_section("data-efficiency-transfer", "\n".join(lines))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=600, help="optimizer steps of every run")
    ap.add_argument("--channels", default="16,32,64", help="DigitsCNN channels")
    ap.add_argument("--fraction", type=float, default=0.05, help="fraction of each class's training labels kept")
    ap.add_argument("--seeds", default="0,1,2", help="training seeds of the supervised runs")
    ap.add_argument("--semi-seeds", default="0,1,2", help="training seeds of the semi-supervised runs (the costly ones)")
    ap.add_argument("--mu", type=int, default=SemiConfig.mu, help="unlabelled batches per labelled batch")
    ap.add_argument("--threshold", type=float, default=SemiConfig.threshold, help="FixMatch confidence threshold")
    ap.add_argument("--ema", type=float, default=0.99, help="FixMatch runs: FitConfig.ema (weight averaging)")
    ap.add_argument("--semi-steps", type=int, default=2000, help="optimizer steps of the FixMatch runs")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--part", choices=("all", "digits", "transfer"), default="all")
    ap.add_argument("--labels-per-class", type=int, default=10, help="transfer: labelled docstrings per topic")
    ap.add_argument("--transfer-steps", type=int, default=40, help="transfer: optimizer steps of both runs")
    ap.add_argument("--jobs", type=int, default=1, help="digits runs in parallel processes (each --threads threads)")
    ap.add_argument("--no-write", action="store_true")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    if args.part in ("all", "transfer"):
        transfer(args)
    if args.part == "transfer":
        return
    channels = _ints(args.channels)
    load_before, t_all = _common.load_average(), time.perf_counter()
    base = dict(steps=args.steps, lr=3e-3, optimizer="adamw", weight_decay=1e-4, grad_clip=None,
                schedule="onecycle", min_lr_ratio=0.0, precision="fp32", tensorboard=False)
    few = {"channels": channels, "labels_fraction": args.fraction}
    semi = SemiConfig(method="fixmatch", threshold=args.threshold, mu=args.mu)
    variants = [  # name, task options, config fields, seeds
        ("100% labels, supervised", {"channels": channels}, {}, _ints(args.seeds)),
        (f"100% labels, supervised, ema {args.ema}", {"channels": channels}, {"ema": args.ema}, _ints(args.seeds)),
        (f"{args.fraction:.0%} labels, supervised", few, {}, _ints(args.seeds)),
        (f"{args.fraction:.0%} labels + augmentation", few, {"augment": "auto"}, _ints(args.seeds)),
        (f"{args.fraction:.0%} labels + FixMatch, ema {args.ema}", few,
         {"augment": "image-shift", "semi": semi, "ema": args.ema, "steps": args.semi_steps}, _ints(args.semi_seeds)),
    ]
    n_labelled = labelled_subset(digits_split().y_train, fraction=args.fraction).numel()
    rows, means = [], {}
    jobs = {(name, s): (options, TrainConfig(**{**base, **fields}, seed=s)) for name, options, fields, seeds in variants
            for s in seeds}
    with ProcessPoolExecutor(args.jobs, initializer=torch.set_num_threads, initargs=(args.threads,)) as pool:
        longest_first = sorted(jobs, key=lambda key: -jobs[key][1].steps * (1 + (jobs[key][1].semi is not None)))
        futures = {key: pool.submit(run_variant, *jobs[key]) for key in longest_first}
        results = {key: f.result() for key, f in futures.items()}
    for name, options, fields, seeds in variants:
        runs = [results[name, s] for s in seeds]
        accs = [a for a, _, _ in runs]
        means[name] = statistics.mean(accs)
        print(f"{name}: {[round(a, 4) for a in accs]}", flush=True)
        spread = f" ({min(accs):.4f} .. {max(accs):.4f})" if len(accs) > 1 else ""
        rows.append(f"| {name} | {means[name]:.4f}{spread} | {runs[0][2]} | "
                    f"{statistics.mean(w for _, w, _ in runs):.1f} s | {', '.join(map(str, seeds))} |")
    full, semi_name = variants[0][0], variants[-1][0]
    gap = (means[full] - means[semi_name]) * 100
    total = time.perf_counter() - t_all
    verdict = "met" if gap <= 2.0 else "NOT met"
    sel = ("tried on the validation split (`bench/select_semi.py`, its table in the `data-efficiency-selection` "
           "section: 20% of the training images held out, labels and unlabelled data from the rest; the test "
           "split is never used to choose)")
    notes = (f"Digits CNN channels {tuple(channels)}, trained from scratch for {args.steps} steps of 64 labelled "
             f"images (AdamW, lr 3e-3 one-cycle, weight decay 1e-4), scored on the held-out test split (360 images, "
             f"1 image = 0.28 pt). {args.fraction:.0%} labels: {n_labelled} of the 1,437 training images keep "
             f"their labels (a fixed stratified subset, `--task-option labels_fraction={args.fraction}`, label "
             f"seed 0); the rest are unlabelled. Augmentation: `augment=\"auto\"` (digits: `image`, 1-px shifts, "
             f"+-10 degree rotations, Gaussian noise 0.05). FixMatch: `semi=SemiConfig()` (its defaults: threshold "
             f"{semi.threshold}, mu {semi.mu}, lambda_u {semi.lambda_u}, weak view `image-shift`, strong view "
             f"`image-strong`: 1-px shifts, +-10 degrees, 2x2 cutout, noise 0.05"
             + (f", distribution alignment over the last {semi.align} batches" if semi.align else "")
             + f") on the unlabelled rest, labelled "
             f"batches with the weak view (`augment=\"image-shift\"`), `ema={args.ema}` (evaluated and kept: the "
             f"moving average of the weights), {args.semi_steps} steps. These settings were the best of those "
             f"{sel}; the EMA row shows what the average alone gives fully supervised. Accuracy: mean over the "
             f"seeds (min .. max). Wall time per run includes data set-up; {args.jobs} runs at a time. "
             f"{_common.load_average().capitalize()} after, {load_before} before (shared machine; {total:.0f} s "
             f"in all).")
    lines = [f"## Data efficiency: digits with {args.fraction:.0%} of the labels", "",
             _common.header(COMMAND(), args.threads, notes), "",
             "| variant | test accuracy | steps | wall time per run | seeds |", "|---|---|---|---|---|", *rows, "",
             f"Target: semi-supervised within 2 points of fully supervised: {verdict} (gap "
             f"{gap:+.2f} points: {means[semi_name]:.4f} vs {means[full]:.4f})."]
    print("\n".join(lines))
    if not args.no_write:
        _common.write_section("data-efficiency", "\n".join(lines))


if __name__ == "__main__":
    main()
