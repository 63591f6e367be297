"""Federated learning on digits, side by side in one run: centralized training for the same total samples, FedAvg
uncompressed, and FedAvg with int8 / top-k / low-rank client updates; accuracy per round, rounds-to-target and
bytes-to-target (bytes measured from the serialized Flower messages the clients send).

Usage: .venv/bin/python bench/bench_federated.py [--part digits|tinygpt|all] [--rounds 30] [--gpt-rounds 30] [--clients 20] [--alpha 0.5] [--topk 0.01]
       [--target 0.95] [--threads 2] [--no-write]
Writes the `federated` (digits) and `federated-tinygpt` sections of BENCHMARKS.md. The tinygpt case: one stdlib
package per client (split="groups"), validation bits/byte per round.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time

import _common
import torch

from condense.federated import FederatedConfig, federated
from condense.federated.splits import gather, label_skew
from condense.tasks import get_task
from condense.train.api import TrainConfig, fresh_model, train


def centralized(task, cfg: FederatedConfig, total_samples: int, samples_per_round: int) -> list[float]:
    """Accuracy after each round's worth of samples, training one model on all the data (the task's batches of
    64), SGD with the clients' lr and momentum."""
    batch = next(iter(task.train_data()))[0].shape[0]
    steps = total_samples // batch
    every = max(1, samples_per_round // batch)
    tc = TrainConfig(steps=steps, lr=cfg.lr, optimizer="sgd", momentum=cfg.momentum, grad_clip=None,
                     precision="fp32", eval_every=every, tensorboard=False, seed=cfg.seed, strategy="single")
    model = fresh_model(task, cfg.seed)
    _, res = train(task, tc, model=model)
    return [e[task.primary_metric] for e in res.evals]


PACKAGES = ("asyncio", "email", "json", "xml", "http", "unittest", "multiprocessing", "importlib")



def _run_all(task, cfg0, variants, *, tag):
    """Centralized training on the samples one federated round sees, then every variant: (samples per round,
    centralized curve, its seconds, runs, seconds per run)."""
    per_round = cfg0.clients * cfg0.local_steps * cfg0.batch_size
    t0 = time.perf_counter()
    central = centralized(task, cfg0, per_round * cfg0.rounds, per_round)
    t_central = time.perf_counter() - t0
    runs, secs = {}, {}
    for name, cfg in variants.items():
        t0 = time.perf_counter()
        runs[name] = federated(task, cfg, log=lambda line, n=name: print(f"[{tag}{n}] {line}", file=sys.stderr))
        secs[name] = time.perf_counter() - t0
    return per_round, central, t_central, runs, secs

def stdlib_package_task(packages: tuple[str, ...] = PACKAGES, windows: int = 256, preset: str = "tiny",
                        seed: int = 0):
    """tinygpt (`preset`) whose training data is `windows` random byte windows from each stdlib package's training
    files, grouped one package per client (`extras["client_groups"]`); evaluation is tinygpt's own (val bits/byte
    on held-out stdlib files)."""
    import dataclasses

    from condense.data.stdlib import read_source, stdlib_dir, stdlib_files
    from condense.data.stdlib_source import separator, split_of
    from condense.tasks.tinygpt import get_preset, make_task, random_windows

    base = make_task(preset)
    T = get_preset(preset).model.block_size
    root = stdlib_dir()
    xs, ys, groups = [], [], []
    for k, pkg in enumerate(packages):
        rels = [p.relative_to(root).as_posix() for p in stdlib_files() if p.relative_to(root).parts[0] == pkg]
        data = b"".join(separator(r) + read_source(root / r).encode("utf-8") for r in rels if split_of(r) == "train")
        x, y = next(random_windows(torch.frombuffer(bytearray(data), dtype=torch.uint8), windows, T, seed=seed + k))
        xs.append(x)
        ys.append(y)
        groups.append(torch.full((windows,), k))
    X, Y = torch.cat(xs), torch.cat(ys)  # (clients * windows, T)

    def train_data():
        return [(X[i:i + 64], Y[i:i + 64]) for i in range(0, X.shape[0], 64)]

    task = dataclasses.replace(base, train_data=train_data, extras={**base.extras, "client_groups": torch.cat(groups)})
    return task, packages


def first(values: list[float], target: float) -> int | None:
    return next((i for i, v in enumerate(values) if v >= target), None)


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=30)
    ap.add_argument("--clients", type=int, default=20)
    ap.add_argument("--alpha", type=float, default=0.5)
    ap.add_argument("--local-steps", type=int, default=10)
    ap.add_argument("--topk", type=float, default=0.01)
    ap.add_argument("--rank", type=int, default=4)
    ap.add_argument("--target", type=float, default=0.95)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--part", choices=("digits", "tinygpt", "all"), default="all")
    ap.add_argument("--gpt-rounds", type=int, default=30)
    ap.add_argument("--gpt-target", type=float, default=3.6, help="tinygpt: val bits/byte target")
    ap.add_argument("--no-write", action="store_true")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    if args.part in ("tinygpt", "all"):
        tinygpt_part(args)
    if args.part == "tinygpt":
        return 0
    load = _common.load_average()
    task = get_task("digits")
    base = dict(clients=args.clients, rounds=args.rounds, local_steps=args.local_steps, split="dirichlet",
                alpha=args.alpha)
    variants = {"FedAvg, uncompressed": FederatedConfig(**base),
                "FedAvg, int8 updates": FederatedConfig(codec="int8", **base),
                f"FedAvg, top-{args.topk:.0%} + error feedback": FederatedConfig(codec="topk",
                                                                                 topk_fraction=args.topk, **base),
                f"FedAvg, low-rank r={args.rank} + error feedback": FederatedConfig(codec="lowrank", rank=args.rank,
                                                                                    **base)}
    cfg0 = variants["FedAvg, uncompressed"]
    _, y = gather(task)
    from condense.federated.rounds import Federation

    skew = label_skew(y, Federation(task, cfg0).parts)
    per_round, central, t_central, runs, secs = _run_all(task, cfg0, variants, tag="")
    print(f"centralized: {central[-1]:.4f} after {len(central)} evaluations ({t_central:.0f} s)", file=sys.stderr)

    dense = runs["FedAvg, uncompressed"]
    dense_final = dense.rows[-1]["accuracy"]
    dense_bytes = dense.rows[-1]["cum_bytes"]
    lines = ["| run | acc. after round 1 / 5 / 10 / 20 / last | mean acc. last 5 rounds | rounds to "
             f"{args.target:.0%} | MB uploaded to {args.target:.0%} | kB per client per round | bytes vs "
             "uncompressed | acc. vs uncompressed (last round) | time |",
             "|---|---|---|---|---|---|---|---|---|"]

    def marks(acc: list[float]) -> str:
        return " / ".join(f"{acc[r]:.4f}" if r < len(acc) else "-" for r in (1, 5, 10, 20)) + f" / {acc[-1]:.4f}"

    c = [float("nan")] + central  # central[i] = accuracy after i+1 rounds' worth of samples
    ct = first(c, args.target)
    lines.append(f"| centralized SGD, same samples ({per_round:,} per round) | {marks(c)} | "
                 f"{statistics.mean(c[-5:]):.4f} | {ct if ct is not None else 'not reached'} | (no upload) | - | - | "
                 f"{c[-1] - dense_final:+.4f} | {t_central:.0f} s |")
    results = {}
    for name, res in runs.items():
        acc = [r["accuracy"] for r in res.rows]
        rt = first(acc, args.target)
        mb = f"{res.rows[rt]['cum_bytes'] / 1e6:.1f}" if rt is not None else "not reached"
        ratio = dense_bytes / res.rows[-1]["cum_bytes"]
        kb = res.rows[-1]["bytes_per_client"] / 1e3
        results[name] = (acc[-1], ratio)
        lines.append(f"| {name} | {marks(acc)} | {statistics.mean(acc[-5:]):.4f} | "
                     f"{rt if rt is not None else 'not reached'} | {mb} | {kb:.1f} | {ratio:.2f}x fewer | "
                     f"{acc[-1] - dense_final:+.4f} | {secs[name]:.0f} s |")

    def verdict(ok: bool) -> str:
        return "met" if ok else "MISSED"

    int8_name = "FedAvg, int8 updates"
    topk_name = next(n for n in runs if n.startswith("FedAvg, top-"))
    checks = [
        f"non-IID FedAvg within 1 point of centralized: {dense_final:.4f} vs {central[-1]:.4f} "
        f"({(dense_final - central[-1]) * 100:+.2f} points): {verdict(dense_final >= central[-1] - 0.01)}",
        f"int8 >= 3.9x fewer bytes: {results[int8_name][1]:.2f}x: {verdict(results[int8_name][1] >= 3.9)}; "
        f"within 1 point of uncompressed after {cfg0.rounds} rounds: {(results[int8_name][0] - dense_final) * 100:+.2f}"
        f" points: {verdict(results[int8_name][0] >= dense_final - 0.01)}",
        f"top-k >= 10x fewer bytes: {results[topk_name][1]:.2f}x: {verdict(results[topk_name][1] >= 10)}; "
        f"within 1 point of uncompressed: {(results[topk_name][0] - dense_final) * 100:+.2f} points: "
        f"{verdict(results[topk_name][0] >= dense_final - 0.01)}",
    ]
    notes = (f"digits CNN (default channels, {Federation(task, cfg0).layout.numel:,} float weights and BN "
             f"statistics, from scratch), {cfg0.clients} clients, non-IID: Dirichlet alpha {cfg0.alpha} label split "
             f"(mean total-variation distance of client label distributions from the global one {skew:.2f}); every "
             f"client trains every round: {cfg0.local_steps} local SGD steps (lr {cfg0.lr}, momentum "
             f"{cfg0.momentum}, batch {cfg0.batch_size}); FedAvg weighted by client samples; the server evaluates "
             f"the global model on the test split (360 images; one image = 0.28 points) after each round. "
             f"Bytes: each client reply (a Flower RecordDict: the encoded update as an ArrayRecord + metrics) "
             f"serialized with Flower's protobuf serde and counted. Centralized: one model, SGD with the same lr "
             f"and momentum on all the data in the task's batches of 64, for the same total samples "
             f"({per_round * cfg0.rounds:,}). Engine: in-process (Flower messages and aggregation; Ray start-up "
             f"excluded). Machine {load} at the start.")
    body = ("## Federated learning: digits, 20 non-IID clients, compressed client updates\n\n"
            + _common.header(f"python bench/bench_federated.py --rounds {args.rounds} --clients {args.clients} "
                             f"--alpha {args.alpha} --topk {args.topk} --target {args.target}", args.threads, notes)
            + "\n\n" + "\n".join(lines) + "\n\nTargets (issue 20):\n\n" + "\n".join(f"- {c}" for c in checks) + "\n")
    print(body)
    if not args.no_write:
        _common.write_section("federated", body)
    return 0


def tinygpt_part(args) -> None:
    """tinygpt (tiny) from scratch, one stdlib package per client: val bits/byte per round, bytes uploaded."""
    load = _common.load_average()
    task, packages = stdlib_package_task()
    base = dict(clients=len(packages), rounds=args.gpt_rounds, local_steps=10, batch_size=16, lr=0.3,
                split="groups")
    variants = {"FedAvg, uncompressed": FederatedConfig(**base),
                "FedAvg, int8 updates": FederatedConfig(codec="int8", **base),
                f"FedAvg, top-{args.topk:.0%} + error feedback": FederatedConfig(codec="topk", topk_fraction=args.topk,
                                                                                 **base),
                f"FedAvg, low-rank r={args.rank} + error feedback": FederatedConfig(codec="lowrank", rank=args.rank,
                                                                                    **base)}
    cfg0 = variants["FedAvg, uncompressed"]
    per_round, central, t_central, runs, secs = _run_all(task, cfg0, variants, tag="gpt ")
    dense = runs["FedAvg, uncompressed"]
    d_last, d_bytes = dense.rows[-1]["bits_per_byte"], dense.rows[-1]["cum_bytes"]
    tgt = args.gpt_target

    def reach(v: list[float]) -> int | None:
        return next((i for i, x in enumerate(v) if x <= tgt), None)

    def marks(v: list[float]) -> str:
        return " / ".join(f"{v[r]:.3f}" if r < len(v) else "-" for r in (1, 5, 10, 20)) + f" / {v[-1]:.3f}"

    lines = [f"| run | val bits/byte after round 1 / 5 / 10 / 20 / last | rounds to <= {tgt} | MB uploaded to "
             f"<= {tgt} | kB per client per round | bytes vs uncompressed | bits/byte vs uncompressed (last round) "
             "| time |", "|---|---|---|---|---|---|---|---|"]
    c = [float("nan")] + central
    rc = reach(c)
    lines.append(f"| centralized SGD, same samples ({per_round:,} windows per round) | {marks(c)} | "
                 f"{rc if rc is not None else 'not reached'} | (no upload) | - | - | {c[-1] - d_last:+.3f} | "
                 f"{t_central:.0f} s |")
    for name, res in runs.items():
        v = [r["bits_per_byte"] for r in res.rows]
        rt = reach(v)
        mb = f"{res.rows[rt]['cum_bytes'] / 1e6:.2f}" if rt is not None else "not reached"
        lines.append(f"| {name} | {marks(v)} | {rt if rt is not None else 'not reached'} | {mb} | "
                     f"{res.rows[-1]['bytes_per_client'] / 1e3:.1f} | {d_bytes / res.rows[-1]['cum_bytes']:.2f}x "
                     f"fewer | {v[-1] - d_last:+.3f} | {secs[name]:.0f} s |")
    numel = _numel(task, cfg0)
    notes = (f"tinygpt (tiny preset: 2 layers, 32 wide, block 64; {numel:,} weights, from scratch), "
             f"{cfg0.clients} clients, one standard-library package each ({', '.join(packages)}): 256 random "
             f"64-byte windows of the package's training files per client. Every client trains every round: "
             f"{cfg0.local_steps} local SGD steps (lr {cfg0.lr} cosine over rounds to 0.1x, momentum "
             f"{cfg0.momentum}, batch {cfg0.batch_size}). The server evaluates tinygpt's validation bits per byte "
             f"(held-out stdlib files of every package) after each round. Centralized: one model on all clients' "
             f"windows (batches of 64, constant lr {cfg0.lr}) for the same total samples. Bytes as in the digits "
             f"table. Machine {load} at the start.")
    body = ("## Federated learning: tinygpt, one stdlib package per client\n\n"
            + _common.header(f"python bench/bench_federated.py --part tinygpt --gpt-rounds {args.gpt_rounds} "
                             f"--topk {args.topk} --gpt-target {tgt}", args.threads, notes)
            + "\n\n" + "\n".join(lines) + "\n")
    print(body)
    if not args.no_write:
        _common.write_section("federated-tinygpt", body)


def _numel(task, cfg) -> int:
    from condense.federated.rounds import Federation

    return Federation(task, cfg).layout.numel


if __name__ == "__main__":
    sys.exit(main())
