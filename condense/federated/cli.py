"""`condense federated`: its arguments and what it prints (the per-round table)."""
from __future__ import annotations

import argparse
import math
from typing import Any

from condense.federated.config import CODEC_NAMES, ENGINES, SPLITS

EPILOG = """examples:
  condense federated --task digits --clients 20 --rounds 30 --out runs/fed-digits
  condense federated --task digits --clients 20 --rounds 30 --codec int8 --out runs/fed-int8
  condense federated --task digits --clients 20 --rounds 30 --codec topk --topk-fraction 0.02 --out runs/fed-topk
  condense federated --task digits --clients 20 --rounds 30 --split iid --codec lowrank --rank 4 --out runs/fed-lr
  condense federated --task digits --clients 4 --rounds 3 --engine flower --out runs/fed-flower  # Flower on Ray
Rerunning a command (or adding --resume) continues after the last completed round; a larger --rounds trains on.
Outputs: OUT/metrics.jsonl (a row per round: metrics, bytes uploaded), OUT/model, OUT/federated.json,
OUT/federated-state.safetensors (what a resumed run continues from).
"""

# flag -> FederatedConfig field
FLAGS = {"clients": "clients", "rounds": "rounds", "local_steps": "local_steps", "batch_size": "batch_size",
         "lr": "lr", "split": "split", "alpha": "alpha", "codec": "codec", "topk_fraction": "topk_fraction",
         "rank": "rank", "engine": "engine", "seed": "seed"}


def _number(text: str) -> float:
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not math.isfinite(v):
        raise argparse.ArgumentTypeError(f"{text!r} is not a finite number")
    return v


def add_arguments(p: argparse.ArgumentParser, positive_int: Any) -> None:
    p.epilog, p.formatter_class = EPILOG, argparse.RawDescriptionHelpFormatter
    p.add_argument("--clients", type=positive_int, default=None, help="simulated clients (default: 20)")
    p.add_argument("--rounds", type=positive_int, default=None, help="communication rounds (default: 20)")
    p.add_argument("--local-steps", type=positive_int, default=None, help="local optimizer steps per round (10)")
    p.add_argument("--batch-size", type=positive_int, default=None, help="local batch size (32)")
    p.add_argument("--lr", type=_number, default=None, help="local learning rate (0.05; SGD, momentum 0.9; cosine over rounds to 0.1x)")
    p.add_argument("--split", choices=SPLITS, default=None, help="how data is shared out (default: dirichlet)")
    p.add_argument("--alpha", type=_number, default=None, help="Dirichlet alpha > 0; smaller: more label skew (0.5)")
    p.add_argument("--codec", choices=CODEC_NAMES, default=None, help="client update compression (default: none)")
    p.add_argument("--per-row", action="store_true", help="int8: a scale per row, not per tensor")
    p.add_argument("--topk-fraction", type=_number, default=None, help="topk: share of entries kept (0.01)")
    p.add_argument("--rank", type=positive_int, default=None, help="lowrank: rank of each update (4)")
    p.add_argument("--no-error-feedback", action="store_true", help="drop what a lossy codec loses, do not carry it")
    p.add_argument("--engine", choices=ENGINES, default=None,
                   help="inprocess (default: fast) or flower (Flower's simulation engine on Ray)")
    p.add_argument("--seed", type=int, default=None, help="weights, split and batch-order seed (0)")
    p.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE",
                   help="any FederatedConfig field, e.g. --set momentum=0 --set optimizer=adamw")
    p.add_argument("--out", required=True, metavar="DIR", help="run folder (metrics, state, model)")
    p.add_argument("--resume", action="store_true", help="continue DIR's run (an error if there is none)")


def overrides(args: argparse.Namespace, base: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for flag, field in FLAGS.items():
        v = getattr(args, flag)
        if v is not None:
            out[field] = v
    if args.per_row:
        out["per_row"] = True
    if args.no_error_feedback:
        out["error_feedback"] = False
    return out


def table(rows: list[dict[str, Any]], primary: str) -> Any:
    from rich.table import Table

    t = Table(title="federated rounds")
    for col in ("round", primary, "train loss", "kB up / client", "MB up (total)", "s"):
        t.add_column(col, justify="right")
    for r in rows:
        loss = r.get("train_loss")
        t.add_row(str(r["round"]), f"{r[primary]:.4f}", "" if loss is None else f"{loss:.4f}",
                  f"{r['bytes_per_client'] / 1e3:.1f}", f"{r['cum_bytes'] / 1e6:.2f}", f"{r['round_s']:.1f}")
    return t
