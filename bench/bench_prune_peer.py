"""Structured pruning side by side with Torch-Pruning (DepGraph): the same models, the same ratio, the same criterion.

Usage: .venv/bin/python bench/bench_prune_peer.py [--models llama,resnet] [--ratio 0.25] [--threads 1] [--batch 8]
       [--rounds 5] [--tp-timeout 60] [--tinygpt-preset large] [--quick] [--metric] [--no-write]
Writes the `prune-peer` section of BENCHMARKS.md (between `<!-- bench:prune-peer -->` markers).
The models are bench_prune_models.py's rows (condense.testing.zoo's Hugging Face BertModel of MiniLM, Llama with
grouped-query attention, Mistral, GPT-2, Qwen2, the torchvision-style ResNet, the MobileNet-style net, and
condense's tinygpt, minilm and digits). Each is pruned twice from the same dense weights:
- condense: `StructuredConfig(ratio)` (target auto, L2 importance): heads and FFN width of transformers (the
  residual width stays), channels of CNNs.
- Torch-Pruning (installed by this script into ~/.cache/condense/peers/torch-pruning, never a condense dependency):
  `tp.pruner.MetaPruner` with `tp.importance.MagnitudeImportance(p=2)` (L2), local pruning, `pruning_ratio=ratio`,
  and for attention (every module with q/k/v Linears) `num_heads`, `prune_num_heads=True`, `prune_head_dims=False`,
  `head_pruning_ratio=ratio` as in Torch-Pruning's Hugging Face examples; `ignored_layers`: the embeddings (so the
  residual width stays, as with condense), the last Linear (classifier / lm_head / BERT pooler). After the step
  the bench sets the attention modules' head counts from the cut shapes (what Torch-Pruning's examples do by hand).
Per model and tool: pruned or the error (one line), parameters and MACs (condense's counter, same batch) before and
after, the latency ratio vs dense of `task.run_batch` at --batch (dense, condense and Torch-Pruning in the same
interleaved rounds; medians), whether the pruned model still runs forward (same output shape as dense), with
--metric the primary metric without recovery (no recovery training runs here: parameter counts and speed only),
and save -> load reproducing the pruned model's outputs (condense.save/load; Torch-Pruning's tp.state_dict/
tp.load_state_dict).
"""
from __future__ import annotations

import argparse
import copy
import os
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import _common  # noqa: F401  (sets sys.path)
import torch
from torch import nn

import condense
from condense.core.transforms import apply_
from condense.errors import first_line
from condense.measurement.timing import interleaved_p50
from condense.prune.structured import StructuredConfig
from condense.testing.matrix import compare
from bench_prune_models import ALL_ROWS, _fmt, _macs, _params, _task

TP_VERSION = "1.6.1"
TP_DIR = Path.home() / ".cache" / "condense" / "peers" / "torch-pruning"
QKV = (("q_proj", "k_proj", "v_proj"), ("query", "key", "value"))  # attention projections by name (HF and condense)


def load_torch_pruning() -> tuple[Any, str]:
    """torch_pruning from its isolated folder (installed there once with pip --target --no-deps), or (None, why)."""
    if not (TP_DIR / "torch_pruning").is_dir():
        cmd = [sys.executable, "-m", "pip", "install", "--quiet", "--target", str(TP_DIR), "--no-deps",
               f"torch-pruning=={TP_VERSION}"]
        done = subprocess.run(cmd, capture_output=True, text=True)
        if done.returncode != 0:
            return None, f"pip install torch-pruning=={TP_VERSION} failed: {first_line(done.stderr.strip(), 120)}"
    sys.path.insert(0, str(TP_DIR))
    try:
        import torch_pruning as tp
    except Exception as e:  # noqa: BLE001  (the peer rows are skipped with the reason)
        return None, f"import torch_pruning failed: {first_line(e, 120)}"
    return tp, ""


@dataclass
class Side:
    """One tool's result on one model."""

    status: str = "ok"
    why: str = ""
    pruned: str = ""  # what was cut, e.g. "2/8 heads, 86/344 ffn"
    params: int = 0
    macs: int = 0
    forward: str = ""
    metric: float = float("nan")
    reload: str = ""
    model: nn.Module | None = field(default=None, repr=False)


@dataclass
class Row:
    name: str
    params: int = 0
    macs: int = 0
    metric_name: str = ""
    metric: float = float("nan")
    error: str = ""
    sides: dict[str, Side] = field(default_factory=dict)
    speed: dict[str, float] = field(default_factory=dict)


# -- what was cut, in words ------------------------------------------------------------------------------------
def _attention(model: nn.Module) -> list[tuple[nn.Module, nn.Linear, nn.Linear, nn.Linear]]:
    """(module, q, k, v) of every module holding three q/k/v Linears."""
    return [(m, *(getattr(m, a) for a in names)) for m in model.modules() for names in QKV
            if all(isinstance(getattr(m, a, None), nn.Linear) for a in names)]


def _head_dim(m: nn.Module) -> int | None:
    return next((getattr(m, a) for a in ("head_dim", "attention_head_size") if isinstance(getattr(m, a, None), int)),
                None)


def _widths(model: nn.Module) -> dict[str, int]:
    """Totals that say what a cut removed: query heads, kv heads, FFN units, conv channels."""
    out = {"heads": 0, "kv heads": 0, "ffn": 0, "channels": 0}
    attn = _attention(model)
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    skip = {id(x) for _, *lins in attn for x in lins} | {id(m) for m in linears[-1:]}
    hidden = {q.in_features for _, q, _, _ in attn}
    for m, q, k, _ in attn:
        hd = _head_dim(m)
        out["heads"] += q.out_features // hd if hd else 0
        out["kv heads"] += k.out_features // hd if hd else 0
        out["ffn"] -= q.out_features  # the attention output Linear reads the heads, not the FFN
    for m in linears:
        if attn and id(m) not in skip and m.out_features in hidden:
            out["ffn"] += m.in_features  # a Linear back into the residual width reads the FFN (or the heads)
    for m in model.modules():
        if isinstance(getattr(m, "c_attn", None), nn.Module) and isinstance(getattr(m, "head_dim", None), int):
            out["heads"] += m.c_attn.weight.shape[-1] // (3 * m.head_dim)  # GPT-2: fused qkv Conv1D (in, 3 * out)
            out["kv heads"] = out["heads"]
        if isinstance(getattr(m, "c_fc", None), nn.Module):
            out["ffn"] += m.c_fc.weight.shape[-1]
        if isinstance(m, nn.Conv2d):
            out["channels"] += m.out_channels
    return out


def _cut_words(before: dict[str, int], after: dict[str, int]) -> str:
    parts = [f"{before[k] - after[k]}/{before[k]} {k}" for k in before if before[k]]
    return ", ".join(parts) or "nothing"


# -- the two tools ------------------------------------------------------------------------------------------------
def prune_condense(task: Any, dense: nn.Module, ratio: float) -> nn.Module:
    return apply_(copy.deepcopy(dense), StructuredConfig(ratio=ratio), task=task).eval()


def _fix_heads_after_tp(model: nn.Module) -> None:
    """Set every attention module's head counts from its cut projections (Torch-Pruning's examples do this by hand)."""
    for m, q, k, _ in _attention(model):
        hd = _head_dim(m)
        if not hd:
            continue
        heads, kv = q.out_features // hd, k.out_features // hd
        for attr, value in (("n_heads", heads), ("num_attention_heads", heads), ("num_heads", heads),
                            ("all_head_size", heads * hd), ("num_key_value_heads", kv),
                            ("num_key_value_groups", heads // max(kv, 1))):
            if isinstance(getattr(m, attr, None), int):
                setattr(m, attr, value)
    cfg = getattr(model, "config", None)
    attn = _attention(model)
    if cfg is not None and attn and _head_dim(attn[0][0]):  # one config for every layer: set it if uniform
        hd = _head_dim(attn[0][0])
        heads = {q.out_features // hd for _, q, _, _ in attn}
        kv = {k.out_features // hd for _, _, k, _ in attn}
        if len(heads) == 1 and hasattr(cfg, "num_attention_heads"):
            cfg.num_attention_heads = heads.pop()
        if len(kv) == 1 and getattr(cfg, "num_key_value_heads", None):
            cfg.num_key_value_heads = kv.pop()


def _raise_timeout(signum: int, frame: Any) -> None:
    raise TimeoutError("did not finish")


def prune_tp(tp: Any, task: Any, dense: nn.Module, batch: Any, ratio: float, timeout_s: int) -> nn.Module:
    """Torch-Pruning's MetaPruner, one step; a TimeoutError after `timeout_s` (its grouping can loop without end)."""
    old = signal.signal(signal.SIGALRM, _raise_timeout)
    signal.alarm(timeout_s)
    try:
        return _prune_tp(tp, task, dense, batch, ratio)
    except TimeoutError:
        raise TimeoutError(f"MetaPruner did not finish in {timeout_s} s (stuck in DependencyGraph.get_all_groups)"
                           ) from None
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)


def _prune_tp(tp: Any, task: Any, dense: nn.Module, batch: Any, ratio: float) -> nn.Module:
    model = copy.deepcopy(dense).eval()
    num_heads = {}
    for m, q, k, v in _attention(model):
        hd = _head_dim(m)
        if hd:
            num_heads.update({q: q.out_features // hd, k: k.out_features // hd, v: v.out_features // hd})
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    ignored = [m for m in model.modules() if isinstance(m, nn.Embedding)] + linears[-1:]
    example, forward = batch, (lambda m, x: task.run_batch(m, x))
    if hasattr(model, "tokenize") and isinstance(batch, (list, tuple)) and isinstance(batch[0], str):
        example, forward = model.tokenize(batch), (lambda m, x: m(*x))  # a sentence encoder: trace the tensors
    pruner = tp.pruner.MetaPruner(
        model, example, importance=tp.importance.MagnitudeImportance(p=2), global_pruning=False, pruning_ratio=ratio,
        ignored_layers=ignored, num_heads=num_heads, prune_num_heads=bool(num_heads), prune_head_dims=False,
        head_pruning_ratio=ratio if num_heads else 0.0,
        forward_fn=forward, output_transform=_first_tensor)
    pruner.step()
    _fix_heads_after_tp(model)
    return model.eval()


def _first_tensor(out: Any) -> torch.Tensor:
    """The model output Torch-Pruning traces back from: the first tensor of whatever `run_batch` returned."""
    if isinstance(out, torch.Tensor):
        return out
    vals = out.values() if isinstance(out, dict) else out
    return next(_first_tensor(v) for v in vals if isinstance(v, (torch.Tensor, dict, list, tuple)))


def _shape(out: Any) -> tuple[int, ...]:
    shape = getattr(out, "shape", None)
    return tuple(shape) if shape is not None else tuple(_first_tensor(out).shape)


def _reload_condense(task: Any, model: nn.Module, batch: Any, want: Any) -> str:
    with tempfile.TemporaryDirectory() as tmp:
        back = condense.load(condense.save(model, os.path.join(tmp, "a")), model=task.build_model()).eval()
        with torch.inference_mode():
            return f"{compare(task.run_batch(back, batch), want)[0]:.1e}"


def _reload_tp(tp: Any, task: Any, model: nn.Module, batch: Any, want: Any) -> str:
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "tp.pth")
        torch.save(tp.state_dict(model), path)
        back = tp.load_state_dict(task.build_model(), torch.load(path, weights_only=False)).eval()
        with torch.inference_mode():
            return f"{compare(task.run_batch(back, batch), want)[0]:.1e}"


def run_side(row: Row, tool: str, cut: Callable[[], nn.Module], reload: Callable[..., str], task: Any,
             dense: nn.Module, batch: Any, want: Any, metric: bool) -> Side:
    side = Side()
    t0 = time.perf_counter()
    try:
        model = cut()
    except Exception as e:  # noqa: BLE001  (a failed prune is a row, the run goes on)
        side.status, side.why = "failed", first_line(e, 140)
        print(f"    {tool}: prune failed: {side.why}", flush=True)
        return side
    side.params, side.pruned = _params(model), _cut_words(_widths(dense), _widths(model))
    try:
        with torch.inference_mode():
            got = task.run_batch(model, batch)
        same = _shape(got) == _shape(want)
        side.forward = "yes" if same else f"shape {_shape(got)} != dense {_shape(want)}"
    except Exception as e:  # noqa: BLE001
        side.status, side.forward = "no forward", f"fails: {first_line(e, 120)}"
        print(f"    {tool}: forward failed: {side.forward}", flush=True)
        return side
    side.model = model
    side.macs = _macs(task, model, batch)
    if metric:
        with torch.inference_mode():
            side.metric = float(task.evaluate(model)[task.primary_metric])
    try:
        side.reload = reload(task, model, batch, got)
    except Exception as e:  # noqa: BLE001
        side.reload = f"fails: {first_line(e, 100)}"
    print(f"    {tool}: {side.pruned}; params {side.params}; reload {side.reload} ({time.perf_counter() - t0:.0f} s)",
          flush=True)
    return side


def run_row(name: str, tp: Any, tp_why: str, args: argparse.Namespace) -> Row:
    row = Row(name)
    print(f"  {name}", flush=True)
    try:
        task = _task(name, args.quick, args.tinygpt_preset)
        dense = task.build_model().eval()
        batch = task.batch(args.batch)
        with torch.inference_mode():
            want = task.run_batch(dense, batch)
        row.params, row.macs, row.metric_name = _params(dense), _macs(task, dense, batch), task.primary_metric
        if args.metric:
            with torch.inference_mode():
                row.metric = float(task.evaluate(dense)[task.primary_metric])
    except Exception as e:  # noqa: BLE001
        row.error = first_line(e, 160)
        return row
    row.sides["condense"] = run_side(row, "condense", lambda: prune_condense(task, dense, args.ratio),
                                     _reload_condense, task, dense, batch, want, args.metric)
    if tp is None:
        row.sides["Torch-Pruning"] = Side(status="skipped", why=tp_why)
    else:
        row.sides["Torch-Pruning"] = run_side(
            row, "Torch-Pruning", lambda: prune_tp(tp, task, dense, batch, args.ratio, args.tp_timeout),
            lambda *a: _reload_tp(tp, *a), task, dense, batch, want, args.metric)
    fns = {"dense": lambda: task.run_batch(dense, batch)}
    fns.update({t: (lambda m=s.model: task.run_batch(m, batch)) for t, s in row.sides.items() if s.model is not None})
    with torch.inference_mode():
        p50 = interleaved_p50(fns, rounds=args.rounds, warmup=1, repeats=3)
    row.speed = {t: p50["dense"] / p50[t] for t in p50 if t != "dense"}
    for s in row.sides.values():
        s.model = None
    return row


# -- the table ----------------------------------------------------------------------------------------------------
def table(rows: list[Row]) -> list[str]:
    lines = ["| model | tool | pruned | what was cut | params before → after | MACs before → after | speed vs dense | "
             "runs forward | metric: dense → cut (no recovery) | save/load (max abs) |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        if r.error:
            lines.append(f"| {r.name} | both | model did not build: {r.error} |  |  |  |  |  |  |  |")
            continue
        for tool, s in r.sides.items():
            if s.status in ("failed", "skipped"):
                lines.append(f"| {r.name} | {tool} | **{s.status}**: {s.why} |  |  |  |  |  |  |  |")
                continue
            if s.status != "ok":  # cut, but the cut model does not run
                lines.append(f"| {r.name} | {tool} | **cut, does not run** | {s.pruned} | {_fmt(r.params)} → "
                             f"{_fmt(s.params)} |  |  | **{s.forward}** |  |  |")
                continue
            speed = f"{r.speed[tool]:.2f}x" if tool in r.speed else ""
            macs = f"{_fmt(r.macs)} → {_fmt(s.macs)} ({s.macs / max(r.macs, 1):.2f}x)" if s.macs else ""
            metric = f"{r.metric_name} {r.metric:.4f} → {s.metric:.4f}" if s.metric == s.metric else ""
            lines.append(f"| {r.name} | {tool} | yes | "
                         f"{s.pruned} | {_fmt(r.params)} → {_fmt(s.params)} ({s.params / r.params:.2f}x) | {macs} | "
                         f"{speed} | {s.forward} | {metric} | {s.reload} |")
    return lines


def verdicts(rows: list[Row]) -> list[str]:
    """One line per model where either tool fails, or removes fewer parameters than the other."""
    out = []
    for r in rows:
        c, t = r.sides.get("condense"), r.sides.get("Torch-Pruning")
        if r.error or c is None or t is None:
            continue
        for tool, s in (("condense", c), ("Torch-Pruning", t)):
            if s.status != "ok":
                out.append(f"- {r.name}: {tool} {s.status}: {s.why or s.forward}")
        for tool, s in (("condense", c), ("Torch-Pruning", t)):
            if s.reload.startswith("fails"):
                out.append(f"- {r.name}: {tool} save -> load {s.reload}")
        if c.status == "ok" and t.status == "ok" and c.params != t.params:
            fewer, more = ("condense", "Torch-Pruning") if c.params > t.params else ("Torch-Pruning", "condense")
            gap = abs(c.params - t.params)
            out.append(f"- {r.name}: {fewer} removes {gap:,} fewer parameters than {more} "
                       f"({fewer}: {r.sides[fewer].pruned}; {more}: {r.sides[more].pruned})")
    return out or ["- neither tool fails, and both remove the same number of parameters on every model"]


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default="", help=f"comma separated, from {','.join(ALL_ROWS)} (default: all)")
    ap.add_argument("--ratio", type=float, default=0.25)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--quick", action="store_true", help="zoo models trained 80 steps instead of a few hundred")
    ap.add_argument("--tinygpt-preset", default="large", help="the built-in tinygpt row's preset (large is cached "
                    "by bench_prune_models.py's run)")
    ap.add_argument("--tp-timeout", type=int, default=60, help="seconds before a Torch-Pruning prune counts as failed")
    ap.add_argument("--metric", action="store_true", help="also the primary metric of each cut (minutes more)")
    ap.add_argument("--no-write", action="store_true")
    args = ap.parse_args(argv)
    names = [n.strip() for n in args.models.split(",") if n.strip()] or list(ALL_ROWS)
    bad = [n for n in names if n not in ALL_ROWS]
    if bad:
        raise SystemExit(f"bench_prune_peer: unknown models {', '.join(bad)}; choose from: {', '.join(ALL_ROWS)}")
    torch.set_num_threads(args.threads)
    tp, tp_why = load_torch_pruning()
    print(f"Torch-Pruning: {getattr(tp, '__version__', None) or tp_why}", flush=True)
    load0, t0 = os.getloadavg(), time.perf_counter()
    rows = [run_row(n, tp, tp_why, args) for n in names]
    load1 = os.getloadavg()
    notes = (f"condense `StructuredConfig(ratio={args.ratio})` (target auto, L2) vs Torch-Pruning {TP_VERSION} "
             f"(`MetaPruner`, `MagnitudeImportance(p=2)`, local, `pruning_ratio={args.ratio}`, heads by `num_heads` + "
             f"`prune_num_heads=True`, `prune_head_dims=False`, `head_pruning_ratio={args.ratio}`; embeddings and the "
             f"last Linear in `ignored_layers`, so both keep the residual width). Installed with `pip install --target "
             f"~/.cache/condense/peers/torch-pruning --no-deps torch-pruning=={TP_VERSION}`; not a condense "
             f"dependency. No recovery training in this bench: parameters, MACs and speed of the cut alone. Speed: "
             f"`task.run_batch` at batch {args.batch}, {args.threads} thread(s), dense / condense / Torch-Pruning in "
             f"the same {args.rounds} interleaved rounds (3 calls each), medians. Run time "
             f"{(time.perf_counter() - t0) / 60:.1f} min; load average {' / '.join(f'{v:.2f}' for v in load0)} at "
             f"start, {' / '.join(f'{v:.2f}' for v in load1)} at the end.")
    cmd = "python bench/bench_prune_peer.py" + "".join(f" {a}" for a in (sys.argv[1:] if argv is None else argv))
    body = "\n".join(["## Structured pruning side by side with Torch-Pruning", "", _common.header(cmd, args.threads,
                                                                                                   notes), "",
                      *table(rows), "", "Where either tool fails or removes fewer parameters:", "",
                      *verdicts(rows)])
    print(body)
    if not args.no_write:
        _common.write_section("prune-peer", body)


if __name__ == "__main__":
    main()
