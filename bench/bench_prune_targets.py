"""Issue 18's two structured-pruning targets on models condense did not write, dense and pruned side by side.

1. `minilm`: the pretrained all-MiniLM-L6-v2 as the Hugging Face `BertModel` (zoo row `minilm-bert`, an `hf:`
   encoder task; not condense's own copy). Heads and FFN width cut (units by Optimal Brain Surgeon, consuming
   Linears refitted by least squares), then recovery: embedding distillation from the dense model on the task's
   training pairs, with the layer-wise block-output term (what `StructuredConfig(finetune=FitConfig(...))` runs for
   an encoder task with `embed`: `condense.prune.recover`). Latency at batch 32 and 1 in interleaved rounds; MRR@10
   on stdlib docstring pairs, on manual-page pairs (never trained on: `mrr@10_offsource`, issue 22) and mean cosine
   to the dense embeddings. Targets: >= 1.6x faster at batch 32, MRR@10 >= 97% of dense.
2. `llama`: a Llama-style causal LM with grouped-query attention trained on stdlib bytes (the zoo's llama recipe
   with 8 query / 4 key-value heads, see `LLAMA_HEADS`), 30% of every FFN's width and 25% of the heads removed,
   then recovery fine-tuning on the task loss. Decode tokens/s at batch 1 through the task's `generate` (KV cache),
   prefill latency (`run_batch` at batch 1 and 8), parameters, bits per byte dense / cut / recovered; the pruned
   model saved with `save_pretrained` and reopened with `from_pretrained` (same logits, same generation).

Usage: .venv/bin/python bench/bench_prune_targets.py [--part minilm|llama|all] [--threads 1] [--rounds 3]
       [--minilm-steps 100] [--minilm-lr 1e-4] [--variants heads25-ffn60,heads50-ffn50] [--eval-texts 100]
       [--llama-steps 200] [--gqa groups|queries] [--no-write]
MiniLM recovery, measured on a GPU (heads25-ffn60, seeds 0-3): 25 steps reach 96.9% of dense MRR@10, 100 steps
98.6 to 98.7% (lr 1e-4; 5e-5: 98.5%), 200 steps 99.4%, 300 steps 98.3% at a higher cosine to dense (0.844 vs 0.827);
lr 2e-4 is worse (97.2% at 300 steps). Lone docstring paragraphs instead of the pairs: 92.5%. Activation importance
instead of OBS: 97.6% at 300 steps; L2: 90.6%. Deeper cuts for a speed margin, 100 steps, seeds 0-2: heads25-ffn65
98.3%, heads33-ffn60 98.4%, heads33-ffn55 98.2% (mrr@10_offsource 96 to 100% of dense throughout).
Writes the `prune-targets-minilm` and `prune-targets-llama` sections of BENCHMARKS.md (CONDENSE_BENCHMARKS=
/tmp/x.md writes elsewhere). The load average is recorded with every table (shared machine).
"""
from __future__ import annotations

import argparse
import copy
import dataclasses
import sys
import tempfile
import time
import warnings
from typing import Any

import _common  # also sets sys.path
import torch

from condense.core.transforms import TransformContext
from condense.prune import StructuredConfig, prune_
from condense.prune.recover import BLOCK_WEIGHT, recover_
from condense.tasks.hf.task import TRAIN_PAIRS, TRAIN_TOKENS
from condense.testing.zoo import LM_ROWS, lm_folder, zoo_task
from condense.train.loop import FitConfig

# variant -> StructuredConfig without recovery (recovery is timed and reported as its own column)
MINILM_VARIANTS: dict[str, StructuredConfig] = {
    "heads25-ffn60": StructuredConfig(ratio=0.6, layer_ratios=(("*.attention.self", 0.25),), importance="obs",
                                      reconstruct=True),
    "heads50-ffn50": StructuredConfig(ratio=0.5, importance="obs", reconstruct=True),
    "heads25-ffn70": StructuredConfig(ratio=0.7, layer_ratios=(("*.attention.self", 0.25),), importance="obs",
                                      reconstruct=True),
    "heads25-ffn65": StructuredConfig(ratio=0.65, layer_ratios=(("*.attention.self", 0.25),), importance="obs",
                                      reconstruct=True),
    "heads33-ffn60": StructuredConfig(ratio=0.6, layer_ratios=(("*.attention.self", 0.34),), importance="obs",
                                      reconstruct=True),
    "ffn70": StructuredConfig(ratio=0.7, target="ffn", importance="obs", reconstruct=True),
}
# The zoo llama has 4 query heads in 2 key/value groups at width 128: 25% of them (one head per layer) cannot be cut
# alike in every layer (gqa="groups" removes whole groups = half the heads, "queries" one per group = half), and
# per-layer head counts are something a LlamaConfig cannot hold. 8 query heads in 4 groups lose exactly 25% in
# every layer; and transformers' LlamaConfig validates hidden_size % num_attention_heads == 0 on save_pretrained
# (head_dim explicit or not), so 6 heads need a width divisible by 6: 192 (head_dim 24). The rest of the zoo recipe
# (2 layers, FFN 344, bytes, 300 training steps) is kept.
LLAMA_HEADS = dict(hidden_size=192, num_attention_heads=8, num_key_value_heads=4)


def _load() -> str:
    return _common.load_average()


def _params(m: torch.nn.Module) -> int:
    return sum(p.numel() for p in m.parameters())


def _verdict(value: float, target: float, what: str) -> str:
    return f"{what}: {value:.3g} (target >= {target:g}): {'met' if value >= target else 'NOT met'}"


# -- MiniLM (Hugging Face BertModel) ------------------------------------------------------------------------------
def _offsource(task: Any, n: int) -> tuple[Any, Any] | None:
    """The second evaluation source of issue 22: `n` manual-page pairs (NAME description -> DESCRIPTION) with no
    text the task trains or calibrates on, tokenised as the task's evaluation is; None where this machine has none."""
    from transformers import AutoTokenizer

    from condense.tasks.minilm import offsource_set

    off = offsource_set(n, n)
    if off is None:
        return None
    tok = AutoTokenizer.from_pretrained(task.extras["hf_path"])

    def batches(texts: tuple[str, ...]) -> list[dict[str, torch.Tensor]]:
        return [dict(tok(list(texts[i:i + 16]), padding=True, truncation=True, max_length=task.extras["seq_len"],
                         return_tensors="pt")) for i in range(0, len(texts), 16)]

    return batches(off.queries), batches(off.documents)


def _quality(task: Any, model: torch.nn.Module, off: tuple[Any, Any] | None) -> dict[str, float]:
    """The task's metrics plus `mrr@10_offsource` (manual pages) where available."""
    from condense.tasks.minilm import retrieval_metrics

    q = dict(task.evaluate(model))
    if off is not None:
        with torch.inference_mode():
            e = [torch.cat([task.embed(model, b).float() for b in bs]).numpy() for bs in off]
        q["mrr@10_offsource"] = retrieval_metrics(*e)["mrr@10"]
    return q


def bench_minilm(args: argparse.Namespace) -> str:
    task = zoo_task("minilm-bert", eval_texts=args.eval_texts)
    dense = task.build_model().eval()
    off = _offsource(task, args.eval_texts)
    fit = FitConfig(steps=args.minilm_steps, lr=args.minilm_lr, schedule="cosine",
                    warmup_steps=min(10, args.minilm_steps // 10))
    models: dict[str, torch.nn.Module] = {"dense": dense}
    rows: dict[str, dict[str, Any]] = {"dense": {"load": _load()}}
    for name in args.variants.split(","):
        t0 = time.perf_counter()
        with warnings.catch_warnings():  # BertConfig derives head_dim: the HF folder cannot express cut heads
            warnings.simplefilter("ignore", UserWarning)
            cut = prune_(copy.deepcopy(dense), MINILM_VARIANTS[name], task=task)
        t_cut = time.perf_counter() - t0
        q_cut = _quality(task, cut, off)
        t0 = time.perf_counter()
        recover_(cut, dense, TransformContext(task=task), fit)  # what finetune=FitConfig(...) runs
        t_rec = time.perf_counter() - t0
        models[name] = cut
        rows[name] = {"cut": q_cut, "cut_s": t_cut, "rec_s": t_rec, "load": _load(),
                      "heads": [b.attention.self.query.out_features // 32 for b in cut.encoder.layer],
                      "ffn": [b.intermediate.dense.out_features for b in cut.encoder.layer]}
        print(f"{name}: cut {t_cut:.0f} s, recovery {t_rec:.0f} s; {_load()}", flush=True)
    for name, m in models.items():
        rows[name]["q"] = _quality(task, m, off)
        rows[name]["params"] = _params(m)
    p50: dict[str, dict[int, float]] = {n: {} for n in models}
    load_t = {}
    for b in (32, 1):
        x = task.batch(b)
        load_before = _load()
        r = _common.interleaved_rounds_p50({n: (lambda m=m: task.run_batch(m, x)) for n, m in models.items()},
                                           rounds=args.rounds, warmup=2, repeats=3, min_time_s=0.3)
        load_t[b] = f"{load_before} before, {_load()} after"
        for n in models:
            p50[n][b] = r[n]
    base = rows["dense"]["q"]["mrr@10"]
    base_off = rows["dense"]["q"].get("mrr@10_offsource")
    lines = ["| variant | heads per layer | FFN width | params | p50 @ 32 | p50 @ 1 | speedup @ 32 | speedup @ 1 | "
             "MRR@10 cut (no training) | MRR@10 recovered | vs dense | MRR@10 offsource cut / recovered | "
             "offsource vs dense | mean cosine to dense | cut / recovery s |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    verdicts = []
    for n in models:
        r, q = rows[n], rows[n]["q"]
        s32, s1 = p50["dense"][32] / p50[n][32], p50["dense"][1] / p50[n][1]
        cut = f"{r['cut']['mrr@10']:.4f}" if "cut" in r else "-"
        times = f"{r['cut_s']:.0f} / {r['rec_s']:.0f}" if "cut" in r else "-"
        heads = ", ".join(map(str, r.get("heads", [12] * 6)))
        ffn = ", ".join(map(str, r.get("ffn", [1536] * 6)))
        if base_off is None:
            offs = "(no manual pages) | -"
        else:
            offs = (f"{r['cut']['mrr@10_offsource']:.4f} / " if "cut" in r else "") + \
                f"{q['mrr@10_offsource']:.4f} | {q['mrr@10_offsource'] / base_off:.1%}"
        lines.append(f"| {n} | {heads} | {ffn} | {r['params'] / 1e6:.2f} M | {p50[n][32] * 1e3:.1f} ms | "
                     f"{p50[n][1] * 1e3:.2f} ms | {s32:.2f}x | {s1:.2f}x | {cut} | {q['mrr@10']:.4f} | "
                     f"{q['mrr@10'] / base:.1%} | {offs} | {q['embedding_cosine']:.4f} | {times} |")
        if n != "dense":
            rel = q["mrr@10"] / base
            both = s32 >= 1.6 and rel >= 0.97
            held = "" if base_off is None else f"; MRR@10 offsource {q['mrr@10_offsource'] / base_off:.1%} of dense"
            verdicts.append(f"- {n}: {_verdict(s32, 1.6, 'speedup @ 32')}; {_verdict(rel, 0.97, 'MRR@10 vs dense')}"
                            f" -> {'BOTH targets met' if both else 'targets not both met'}{held}")
    notes = (f"Baseline: the dense pretrained BertModel, fp32 eager, same process. Inputs as the task runs them: "
             f"docstrings padded to {task.extras['seq_len']} tokens. Quality: MRR@10 over {args.eval_texts} stdlib "
             f"docstring retrieval pairs (summary -> rest of the docstring); MRR@10 offsource: {args.eval_texts} "
             f"manual-page pairs (NAME description -> DESCRIPTION, never trained on; issue 22's second source); mean "
             f"cosine of the pooled embeddings to the dense model's on {args.eval_texts} other docstrings. Each "
             f"variant: `prune_(model, "
             f"StructuredConfig(...), task=task)` (units by OBS, consuming Linears refitted by least squares on 8 "
             f"calibration batches of 8 texts), then recovery as `finetune=` runs it: embedding distillation from "
             f"the dense model (1 - cosine + KL of in-batch similarity rankings at temperature 0.05 + {BLOCK_WEIGHT:g}"
             f" x the layer-wise match of every block's output, embedding tables frozen) for {args.minilm_steps} "
             f"steps of the task's training batches ({2 * TRAIN_PAIRS} texts: summary and body of {TRAIN_PAIRS} "
             f"docstrings outside the evaluation set, up to {TRAIN_TOKENS} tokens), AdamW lr {args.minilm_lr:g}, "
             f"warm-up then cosine. Latency: {args.rounds} interleaved rounds over all models "
             f"(each >= 3 runs and >= 0.3 s), median of round medians. Load average (1/5/15 min) around the batch-32 "
             f"timing: {load_t[32]}; batch 1: {load_t[1]}; after each variant's recovery: "
             + "; ".join(f"{n}: {rows[n]['load']}" for n in models if n != "dense") + ".")
    return notes + "\n\n" + "\n".join(lines) + "\n\n" + "\n".join(verdicts) + "\n"


# -- Llama (GQA) --------------------------------------------------------------------------------------------------
def _llama_task(args: argparse.Namespace) -> Any:
    from condense.tasks import hf_task

    spec = dataclasses.replace(LM_ROWS["llama"], config={**LM_ROWS["llama"].config, **LLAMA_HEADS})
    return hf_task(str(lm_folder(spec)), seq_len=spec.seq_len, eval_windows=args.eval_windows)


def _save_reload(model: torch.nn.Module, task: Any) -> str:
    """save_pretrained + from_pretrained: same logits and the same greedy generation?"""
    x = task.batch(2)
    with tempfile.TemporaryDirectory() as d:
        model.save_pretrained(d)
        back = type(model).from_pretrained(d).eval()
        cfg = back.config
        with torch.inference_mode():
            diff = float((task.run_batch(model, x) - task.run_batch(back, x)).abs().max())
            prompt = x["input_ids"][:1, :8]
            g1 = model.generate(input_ids=prompt, max_new_tokens=16, do_sample=False, pad_token_id=0)
            g2 = back.generate(input_ids=prompt, max_new_tokens=16, do_sample=False, pad_token_id=0)
    same = bool(torch.equal(g1, g2))
    return (f"save_pretrained -> from_pretrained: config num_attention_heads={cfg.num_attention_heads}, "
            f"num_key_value_heads={cfg.num_key_value_heads}, head_dim={cfg.head_dim}, intermediate_size="
            f"{cfg.intermediate_size}; max |logit difference| {diff:.2e}; 16 greedy tokens "
            f"{'identical' if same else 'DIFFERENT'}: {'reloads exactly' if diff == 0 and same else 'CHECK'}")


def bench_llama(args: argparse.Namespace) -> str:
    task = _llama_task(args)
    dense = task.build_model().eval()
    cfg = StructuredConfig(ratio=0.3, layer_ratios=(("*.self_attn", 0.25),), gqa=args.gqa, round_to=8,
                           importance="obs", reconstruct=True)
    t0 = time.perf_counter()
    cut = prune_(copy.deepcopy(dense), cfg, task=task)
    t_cut = time.perf_counter() - t0
    recovered = copy.deepcopy(cut)
    t0 = time.perf_counter()
    recover_(recovered, dense, TransformContext(task=task), FitConfig(
        steps=args.llama_steps, lr=args.llama_lr, schedule="cosine", warmup_steps=args.llama_steps // 10,
        grad_clip=1.0))
    t_rec = time.perf_counter() - t0
    models = {"dense": dense, "cut (no training)": cut, "recovered": recovered}
    bpb = {n: task.evaluate(m)["bits_per_byte"] for n, m in models.items()}
    timed = {"dense": dense, "recovered": recovered}
    load0 = _load()
    dargs = argparse.Namespace(tokens=args.tokens, rounds=args.rounds, repeats=2)
    with torch.inference_mode():
        tps = dict(zip(timed, _common.decode_tokens_per_s(task, list(timed.values()), dargs, min_time_s=0.3)))
    prefill = {}
    for b in (1, 8):
        x = task.batch(b)
        prefill[b] = _common.interleaved_rounds_p50({n: (lambda m=m: task.run_batch(m, x)) for n, m in timed.items()},
                                                    rounds=args.rounds, warmup=2, repeats=5, min_time_s=0.3)
    load1 = _load()
    layers = recovered.model.layers
    shape = (f"per layer: {layers[0].self_attn.q_proj.out_features // recovered.config.head_dim} query heads / "
             f"{layers[0].self_attn.k_proj.out_features // recovered.config.head_dim} key-value heads (dense "
             f"{dense.config.num_attention_heads} / {dense.config.num_key_value_heads}), FFN width "
             f"{[m.mlp.up_proj.out_features for m in layers]} (dense {dense.config.intermediate_size})")
    lines = ["| model | params | bits per byte | decode tok/s @ 1 | decode speedup | prefill p50 @ 1 | "
             "prefill p50 @ 8 | prefill speedup @ 1 / @ 8 |", "|---|---|---|---|---|---|---|---|"]
    for n, m in models.items():
        t = n if n in timed else None
        speed = (f"{tps[t]:.0f} | {tps[t] / tps['dense']:.2f}x | {prefill[1][t] * 1e3:.2f} ms | "
                 f"{prefill[8][t] * 1e3:.2f} ms | {prefill[1]['dense'] / prefill[1][t]:.2f}x / "
                 f"{prefill[8]['dense'] / prefill[8][t]:.2f}x") if t else "(same shapes as recovered) | | | | "
        lines.append(f"| {n} | {_params(m) / 1e6:.3f} M | {bpb[n]:.3f} | {speed} |")
    notes = (f"Model: the zoo's llama recipe (LlamaForCausalLM, 2 layers, FFN 344, bytes, 300 steps on stdlib "
             f"text) at width 192 with 8 query / 4 key-value heads (head_dim 24): 25% of the zoo row's 4 heads in 2 "
             f"groups cannot be cut alike in every layer, and transformers' LlamaConfig refuses (on save_pretrained) "
             f"a head count that does not divide the width. Cut: `{_short(cfg)}` ({t_cut:.1f} s), gqa={args.gqa!r}: "
             + ("whole key/value groups go with their query heads, so the KV cache and k/v projections shrink by "
                "25% too (decode reads less cache per token); gqa='queries' would have to remove a quarter of "
                "each group's 2 query heads, which rounds to none" if args.gqa == "groups" else
                "one query head per group goes, every key/value head (and the KV cache) stays")
             + f". {shape}. Recovery: the task loss (next-byte cross-entropy) for {args.llama_steps} steps of 8 x "
             f"64 bytes, AdamW lr {args.llama_lr:g} cosine ({t_rec:.0f} s). Bits per byte on "
             f"{args.eval_windows} held-out windows. Decode: {args.tokens} new tokens after the prompt through "
             f"the model's generate with its KV cache, {args.rounds} interleaved rounds of 2; prefill: `run_batch` "
             f"of 64 tokens, {args.rounds} interleaved rounds. Load average (1/5/15 min) before timing: {load0}, "
             f"after: {load1}.")
    reload = _save_reload(recovered, task)
    return notes + "\n\n" + "\n".join(lines) + "\n\n" + reload + "\n"


def _short(cfg: StructuredConfig) -> str:
    parts = [f"{f.name}={getattr(cfg, f.name)!r}" for f in dataclasses.fields(cfg)
             if getattr(cfg, f.name) != f.default or f.name == "ratio"]
    return f"StructuredConfig({', '.join(parts)})"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--part", default="all", choices=("minilm", "llama", "all"))
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--variants", default="heads25-ffn60,heads50-ffn50",
                    help="comma-separated, of: " + ", ".join(MINILM_VARIANTS))
    ap.add_argument("--eval-texts", type=int, default=100, help="retrieval pairs (and agreement texts) scored")
    ap.add_argument("--minilm-steps", type=int, default=100)
    ap.add_argument("--minilm-lr", type=float, default=1e-4)
    ap.add_argument("--llama-steps", type=int, default=200)
    ap.add_argument("--llama-lr", type=float, default=1e-3)
    ap.add_argument("--gqa", default="groups", choices=("groups", "queries"))
    ap.add_argument("--eval-windows", type=int, default=32)
    ap.add_argument("--tokens", type=int, default=32, help="new tokens per timed generation")
    ap.add_argument("--no-write", action="store_true")
    args = ap.parse_args()
    for name in args.variants.split(","):
        if name not in MINILM_VARIANTS:
            ap.error(f"unknown variant {name!r}; choose from {', '.join(MINILM_VARIANTS)}")
    torch.set_num_threads(args.threads)
    cmd = ("python bench/bench_prune_targets.py " + " ".join(sys.argv[1:])).strip()
    parts = {"minilm": ("Structured pruning target: pretrained MiniLM (Hugging Face BertModel), heads + FFN + "
                        "embedding distillation", bench_minilm),
             "llama": ("Structured pruning target: Llama (GQA), 30% FFN + 25% heads + recovery", bench_llama)}
    for key, (title, fn) in parts.items():
        if args.part not in (key, "all"):
            continue
        body = f"## {title}\n\n" + _common.header(cmd, args.threads, fn(args))
        if not args.no_write:
            _common.write_section(f"prune-targets-{key}", body)
        print(body, flush=True)


if __name__ == "__main__":
    main()
