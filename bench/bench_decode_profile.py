"""Where one decode step's time goes: tinygpt at batch 1, fp32 vs 4-bit and 8-bit RTN on their default kernel.

Usage: .venv/bin/python bench/bench_decode_profile.py [--preset large] [--cache 20] [--rounds 5] [--threads 1]
       [--no-write]
Writes the `decode-profile` section of BENCHMARKS.md. Method (ablation): one decode step (one new token after
`--cache` cached ones) is timed in CPU time as it is and with one part replaced by a free stand-in that returns an
empty tensor of the right shape (or its input): the step's drop is that part's cost. Parts: the matmuls (the
low-bit kernel calls and float `F.linear`, lm_head included), the attention core (`scaled_dot_product_attention`),
the layer norms and GELU; "everything else" is the step with all four replaced: the other aten ops (bias and
residual adds, dtype casts, views, KV-cache writes, embeddings), dispatch and Python. The generate loop's own cost
is its time per token minus one step. Medians of interleaved rounds; CPU time, since this machine is shared.
"""
from __future__ import annotations

import argparse
import contextlib
import os
import time

import _common
import numpy as np
import torch
import torch.nn.functional as F

from condense.quantize.weight_only import WeightOnlyLinear
from condense.quantize.weight_only.kernels import KERNELS
from condense.tasks.gpt import KVCache


_OUT: dict[int, int] = {}  # id(kernel state) -> out features


def _empty_out(state, x, *rest):  # the kernels' run/run_linear stand-in: an empty (rows, out)
    return torch.empty(x.shape[0], _OUT[id(state)])


def _note_out_features(models) -> None:
    for m in models:
        for q in m.modules():
            if isinstance(q, WeightOnlyLinear) and q.kernel != "dequantize":
                _OUT[id(q.kernel_state())] = q.out_features
        for b in getattr(m, "blocks", ()):
            run = b.attn.qkv._run  # q/k/v stacked into one state (see SharedInputLinears)
            if run is not None:
                _OUT[id(run[1])] = sum(run[3])


STAND_INS = {  # part -> [(object, attribute, stand-in)]
    "matmuls": [(F, "linear", lambda x, w, b=None: torch.empty(*x.shape[:-1], w.shape[0]))]
    + [(cls, m, _empty_out) for cls in {type(k) for (_, n), k in KERNELS.items() if n != "dequantize"}
       for m in ("run", "run_linear") if m in cls.__dict__],
    "attention core": [(F, "scaled_dot_product_attention", lambda q, k, v, **kw: q)],
    "layer norms": [(F, "layer_norm", lambda x, *a, **k: x)],
    "GELU": [(F, "gelu", lambda x, *a, **k: x)],
}


@contextlib.contextmanager
def without(parts: tuple[str, ...]):
    saved = [(obj, attr, obj.__dict__[attr]) for p in parts for obj, attr, _ in STAND_INS[p]]
    try:
        for p in parts:
            for obj, attr, fn in STAND_INS[p]:
                setattr(obj, attr, fn if obj is F else staticmethod(fn))
        yield
    finally:
        for obj, attr, fn in saved:
            setattr(obj, attr, fn)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", default="large")
    ap.add_argument("--cache", type=int, default=20)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--no-write", action="store_true")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    task, models = _common.tinygpt_decode_models(args.preset)
    variants = {"step": (), **{p: (p,) for p in STAND_INS}, "everything else": tuple(STAND_INS)}
    samples = {(n, v): [] for n in models for v in [*variants, "generate"]}
    tok = torch.tensor([[5]])
    with torch.inference_mode():
        caches = {}
        for n, m in models.items():
            caches[n] = KVCache(len(m.blocks), m.config.block_size)
            m(task.inputs(1)[:, :args.cache], kv_cache=caches[n])
        _note_out_features(models.values())
        for _ in range(args.rounds):
            for n, m in models.items():
                def step(m=m, c=caches[n]):
                    c.crop(args.cache)
                    return m(tok, kv_cache=c)
                for v, parts in variants.items():
                    with without(parts):
                        step()
                        t = time.process_time()
                        for _ in range(10):
                            step()
                        samples[(n, v)].append((time.process_time() - t) / 10)
                t = time.process_time()
                task.generate(m, 1, 32)
                samples[(n, "generate")].append((time.process_time() - t) / 32)
    med = {k: float(np.median(v)) * 1e6 for k, v in samples.items()}
    lines = ["| part | " + " | ".join(models) + " |", "|---|" + "---|" * len(models)]
    row = lambda label, f: lines.append(f"| {label} | " + " | ".join(f(n) for n in models) + " |")  # noqa: E731
    row("decode step (CPU us)", lambda n: f"{med[(n, 'step')]:.0f}")
    for v in STAND_INS:
        row(v, lambda n, v=v: f"{med[(n, 'step')] - med[(n, v)]:.0f} "
                              f"({(med[(n, 'step')] - med[(n, v)]) / med[(n, 'step')]:.0%})")
    row("everything else (other ops, dispatch, Python)",
        lambda n: f"{med[(n, 'everything else')]:.0f} ({med[(n, 'everything else')] / med[(n, 'step')]:.0%})")
    row("generate loop per token, outside the step", lambda n: f"{med[(n, 'generate')] - med[(n, 'step')]:.0f}")
    notes = (f"tinygpt preset `{args.preset}`, batch 1, one new token after {args.cache} cached; CPU microseconds "
             f"(median of {args.rounds} interleaved rounds) and share of the step. Each part's cost is the step's drop "
             "when that part alone is replaced by a free stand-in; \"everything else\" is the step with all four "
             f"replaced. Machine load average {os.getloadavg()[0]:.2f} at the end.")
    _common.publish("decode-profile", "Where a decode step's time goes (batch 1)", "bench_decode_profile.py",
                    argv, args.threads, notes, lines, write=not args.no_write)


if __name__ == "__main__":
    main()
