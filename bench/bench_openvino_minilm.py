"""MiniLM side by side with OpenVINO and NNCF: fp32 eager, ONNX Runtime's quantize_dynamic, OpenVINO's default
(bf16 inference where the CPU has it), OpenVINO + NNCF static int8, condense's `Int8Config()` and the recipe's
pick, on both of the minilm task's evaluation sources (docstrings: `mrr@10`; manual pages: `mrr@10_offsource`).

Usage: .venv/bin/python bench/bench_openvino_minilm.py [--threads 2] [--rounds 7] [--no-recipe] [--quick]
                                                        [--no-write]
Writes the `openvino-minilm` section of BENCHMARKS.md (issue 22's table). OpenVINO and NNCF are not condense
dependencies: the bench installs them itself with pip into ~/.cache/condense/peers/openvino (--no-deps, plus the
few pure-Python dependencies the venv lacks) and puts that folder on sys.path, so the venv's torch stays as it is;
if the install fails their rows are skipped with the reason printed. Timing: two batches of 32, the same for every
variant: the task's docstring summaries (short: ~16 tokens each) and the first 32 documents of its second source,
manual-page DESCRIPTIONs (long: most at the 128-token limit). Tokenisation included, each batch padded to its
longest text by the shared tokenizer, every variant on the same thread count, interleaved rounds (each variant and
batch once per round, so load from elsewhere hits all alike); p50 = median of the rounds' medians. `--quick`
(3 rounds, no recipe row) keeps a run on the 2-vCPU machine under 10 minutes.
"""
from __future__ import annotations

import argparse
import copy
import importlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import _common  # also sets sys.path
import torch
from bench_int8_minilm import ort_own_quantize_dynamic, plain_onnx

import condense
from condense.core.lineage import lineage
from condense.core.transforms import apply_
from condense.export import OrtSentenceEncoder
from condense.quantize.backends import Int8Config

PEERS = Path(os.path.expanduser("~/.cache/condense/peers/openvino"))
# pinned: the versions this bench was written against. Their other dependencies (numpy, scipy, scikit-learn,
# networkx, rich, tabulate, safetensors, packaging) are already in condense's venv; --no-deps keeps pip from
# touching them (or torch).
PEER_PACKAGES = ("openvino==2026.4.1", "nncf==3.4.0", "openvino-telemetry==2025.2.0", "psutil==7.2.2",
                 "pydot==4.0.1", "pyparsing==3.3.3")
CALIBRATION_TEXTS = 300


def import_peers() -> tuple[object, object] | str:
    """(openvino, nncf) from the isolated folder, installing them there first if needed; or why not."""
    if str(PEERS) not in sys.path:
        sys.path.insert(0, str(PEERS))
    try:
        return importlib.import_module("openvino"), importlib.import_module("nncf")
    except ImportError:
        pass
    cmd = [sys.executable, "-m", "pip", "install", "--quiet", "--target", str(PEERS), "--no-deps", *PEER_PACKAGES]
    print("installing OpenVINO and NNCF: " + " ".join(cmd), file=sys.stderr)
    r = subprocess.run(cmd, capture_output=True, text=True)
    if r.returncode:
        return f"pip install failed ({r.returncode}): {(r.stderr or r.stdout).strip().splitlines()[-1:]}"
    importlib.invalidate_caches()
    try:
        return importlib.import_module("openvino"), importlib.import_module("nncf")
    except ImportError as e:
        return f"installed but not importable: {e}"


class OvGraph(torch.nn.Module):
    """An OpenVINO compiled model as the (input_ids, attention_mask) -> embeddings graph of a sentence encoder."""

    def __init__(self, compiled) -> None:
        super().__init__()
        self.request = compiled.create_infer_request()

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        self.request.infer({"input_ids": input_ids.numpy(), "attention_mask": attention_mask.numpy()})
        return torch.from_numpy(self.request.get_output_tensor(0).data.copy())


def openvino_variants(ov, nncf, fp32, task, threads: int) -> tuple[dict, dict]:
    """OpenVINO's default compile of the plain export, and NNCF's static int8 of it (transformer preset,
    `CALIBRATION_TEXTS` docstrings from the task's calibration source, one text per calibration sample)."""
    from condense.data.stdlib_docs import retrieval_pairs, unlabelled_texts

    core = ov.Core()
    props = {"INFERENCE_NUM_THREADS": threads}
    t0 = time.perf_counter()
    model = core.read_model(plain_onnx(fp32, task.batch(2)))
    default = core.compile_model(model, "CPU", props)
    info = {"precision": str(default.get_property("INFERENCE_PRECISION_HINT")),
            "openvino": ov.__version__, "nncf": nncf.__version__}
    # the task's calibration source (docstring paragraphs outside the evaluation set), 300 of them as NNCF asks
    texts = unlabelled_texts(CALIBRATION_TEXTS, exclude=retrieval_pairs(500))
    samples = []
    for t in texts:
        ids, mask = fp32.tokenize([t])
        samples.append({"input_ids": ids.numpy(), "attention_mask": mask.numpy()})
    t1 = time.perf_counter()
    q = nncf.quantize(model, nncf.Dataset(samples), model_type=nncf.ModelType.TRANSFORMER,
                      subset_size=len(samples))
    info["nncf_s"] = time.perf_counter() - t1
    int8 = core.compile_model(q, "CPU", props)
    info["torch_backend_imported"] = "nncf.torch" in sys.modules
    info["build_s"] = time.perf_counter() - t0
    wrap = OrtSentenceEncoder.from_encoder  # any (ids, mask) -> embeddings module with the encoder's tokenizer
    return {f"OpenVINO default ({info['precision'].split(':')[-1].strip(chr(39) + ' >')} inference)":
            wrap(fp32, OvGraph(default)),
            f"OpenVINO + NNCF static int8 (transformer preset, {len(samples)} calibration docstrings)":
            wrap(fp32, OvGraph(int8))}, info


def recipe_variant(fp32, task, path: Path) -> tuple[torch.nn.Module, float]:
    """The recipe's steps applied in order with `apply_`, as `condense run` does; (model, seconds)."""
    from condense.recipes import load_recipe

    recipe = load_recipe(path)
    t0 = time.perf_counter()
    model = copy.deepcopy(fp32)
    for step in recipe.steps:
        model = apply_(model, step.config, task=task)
        print(f"recipe: applied {step.label} ({time.perf_counter() - t0:.0f} s)", file=sys.stderr)
    return model, time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--recipe", default=str(_common.ROOT / "recipes" / "minilm.yaml"))
    ap.add_argument("--no-recipe", action="store_true", help="leave out the recipe's row (its distillation is the "
                                                             "slowest part of the run)")
    ap.add_argument("--quick", action="store_true", help="3 rounds and no recipe row: under 10 minutes on 2 vCPUs")
    ap.add_argument("--no-write", action="store_true")
    ap.add_argument("--results", default="/tmp/bench_openvino_minilm.json", help="where the measured figures go")
    ap.add_argument("--from-results", action="store_true", help="re-render the section from --results, no runs")
    args = ap.parse_args()
    if args.from_results:
        return report(json.loads(Path(args.results).read_text()), args)
    if args.quick:
        args.rounds, args.no_recipe = min(args.rounds, 3), True
    torch.set_num_threads(args.threads)  # ORT sessions take torch's thread count when created
    load_before = os.getloadavg()
    t_start = time.time()
    task = condense.get_task("minilm")
    fp32 = task.build_model()
    base, ort_own = "fp32 PyTorch eager (baseline)", "ONNX Runtime's own quantize_dynamic (int8 per-channel)"
    variants: dict[str, torch.nn.Module] = {base: fp32, ort_own: ort_own_quantize_dynamic(fp32, task.batch(2))}
    peers = import_peers()
    ov_info: dict = {}
    if isinstance(peers, str):
        print(f"OpenVINO rows skipped: {peers}", file=sys.stderr)
    else:
        ov_rows, ov_info = openvino_variants(*peers, fp32, task, args.threads)
        variants.update(ov_rows)
    t0 = time.perf_counter()
    auto = condense.quantize_(copy.deepcopy(fp32), Int8Config(), task=task)
    auto_s = time.perf_counter() - t0
    choice = lineage(auto)["transforms"][-1]["details"]
    ours = f"`condense quantize --task minilm` (Int8Config() auto -> {choice['backend']})"
    variants[ours] = auto
    recipe_s = recipe_name = None
    if not args.no_recipe:
        model, recipe_s = recipe_variant(fp32, task, Path(args.recipe))
        last = lineage(model)["transforms"][-1]
        pick = last.get("details", {}).get("backend") or last["config"]["type"]
        recipe_name = f"`condense run recipes/minilm.yaml` (4-block student + int8: {pick})"
        variants[recipe_name] = model
    batches = timing_batches(task, fp32)
    fns = {(name, b): (lambda m=m, texts=batches[b]["texts"]: task.run_batch(m, texts))
           for name, m in variants.items() for b in batches}
    timed = _common.interleaved_rounds_p50(fns, rounds=args.rounds, warmup=2, repeats=3)
    p50 = {b: {name: timed[(name, b)] for name in variants} for b in batches}
    load_after_timing = os.getloadavg()
    q = {}
    for name, m in variants.items():
        q[name] = task.metrics(m)
        print(f"{name}: " + ", ".join(f"{b} {p50[b][name] * 1e3:.1f} ms" for b in batches)
              + f", MRR@10 {q[name]['mrr@10']:.4f}, offsource {q[name].get('mrr@10_offsource', float('nan')):.4f}",
              file=sys.stderr)
    shapes = {b: {k: v for k, v in d.items() if k != "texts"} for b, d in batches.items()}
    results = {"names": list(variants), "base": base, "ours": ours, "p50": p50, "q": q, "choice": choice,
               "batches": shapes,
               "ov_info": ov_info, "peers": peers if isinstance(peers, str) else "", "auto_s": auto_s,
               "recipe_s": recipe_s, "recipe": recipe_name, "load_before": load_before, "load_after_timing": load_after_timing,
               "seconds": time.time() - t_start, "argv": sys.argv[1:], "rounds": args.rounds,
               "threads": args.threads}
    Path(args.results).write_text(json.dumps(results, default=str))  # --from-results re-renders the section
    report(results, args)


def timing_batches(task, fp32) -> dict[str, dict]:
    """{"short", "long"}: the texts of each timed batch of 32 and its padded shape and real-token share."""
    from condense.tasks.minilm import offsource_set

    off = offsource_set(500, 500)  # the task's second source (manual pages), as its metrics use it
    texts = {"short": task.batch(32)}
    if off is not None:
        texts["long"] = list(off.documents[:32])
    out = {}
    for b, t in texts.items():
        ids, mask = fp32.tokenize(t)
        out[b] = {"texts": t, "shape": list(ids.shape), "real_tokens": int(mask.sum())}
    return out


BATCH_LABEL = {"short": "docstring summaries", "long": "man-page documents"}


def report(res: dict, args: argparse.Namespace) -> None:
    """Render (and unless --no-write, write) the section from the measured `res`."""
    names, base, ours, p50, q, choice = res["names"], res["base"], res["ours"], res["p50"], res["q"], res["choice"]
    ov_info, recipe_s, batches = res["ov_info"], res["recipe_s"], res["batches"]
    args.rounds, args.threads = res["rounds"], res["threads"]
    off = "mrr@10_offsource"
    has_off = all(off in v for v in q.values())
    head = " | ".join(f"p50 batch 32 {BATCH_LABEL[b]} | vs fp32" for b in batches)
    lines = [f"| variant | {head} | MRR@10 docstrings | vs fp32 | MRR@10 man pages (second source) | vs fp32 | "
             "cosine to fp32 (man pages) |", "|---|" + "---|---|" * len(batches) + "---|---|---|---|---|"]
    for name in names:
        r = q[name]
        second = (f"{r[off]:.4f} | {r[off] / q[base][off]:.1%} | {r['cosine_to_fp32_offsource']:.4f}" if has_off
                  else "n/a | n/a | n/a")
        speed = " | ".join(f"{p50[b][name] * 1e3:.1f} ms | {p50[b][base] / p50[b][name]:.2f}x" for b in batches)
        lines.append(f"| {name} | {speed} | {r['mrr@10']:.4f} | {r['mrr@10'] / q[base]['mrr@10']:.1%} | {second} |")
    verdict = ""
    nncf_row = next((n for n in names if "NNCF" in n), None)
    ov_row = next((n for n in names if n.startswith("OpenVINO default")), None)
    if nncf_row and ov_row and has_off:
        speeds = {b: p50[b][nncf_row] / p50[b][ours] for b in batches}
        gap_pp = (q[ov_row][off] - q[ours][off]) / q[base][off] * 100  # points of "vs fp32" below OpenVINO's
        gap_abs = (q[ov_row][off] - q[ours][off]) * 100  # points of MRR@10 x 100 below OpenVINO's
        side = lambda v: f"{abs(v):.2f} points {'below' if v > 0 else 'above'}"  # noqa: E731
        verdict = ("Target (issue 22): Int8Config() >= 1.3x the speed of OpenVINO + NNCF int8 at batch 32: "
                   + "; ".join(f"{BATCH_LABEL[b]} **{v:.2f}x** ({'met' if v >= 1.3 else 'NOT met'})"
                               for b, v in speeds.items())
                   + f". Second-source MRR@10 no more than 0.3 points below OpenVINO's default: {q[ours][off]:.4f} "
                   f"vs {q[ov_row][off]:.4f}, **{side(gap_abs)}** (MRR@10 x 100; {side(gap_pp)} in the vs-fp32 "
                   f"ratio) ({'met' if max(gap_abs, gap_pp) <= 0.3 else 'NOT met'}).")
    recipe = res.get("recipe")
    if recipe and has_off:
        speeds = {b: p50[b][base] / p50[b][recipe] for b in batches}
        share = q[recipe][off] / q[base][off]
        verdict += ("\n\nTarget (issue 22): the recipe >= 6x fp32 eager at batch 32: "
                    + "; ".join(f"{BATCH_LABEL[b]} **{v:.2f}x** ({'met' if v >= 6 else 'NOT met'})"
                                for b, v in speeds.items())
                    + f". MRR@10 on the second source >= 99% of fp32's: **{share:.1%}** "
                    f"({'met' if share >= 0.99 else 'NOT met'}).")
    cand = ["| candidate | p50 @ batch 32 | MRR@10 | build | evaluate | note |", "|---|---|---|---|---|---|"]
    for r in choice["candidates"]:
        ms_txt = "" if r["p50_ms"] is None else f"{r['p50_ms']:.1f} ms"
        metric_txt = "" if r["metric"] is None else f"{r['metric']:.4f}"
        secs = " | ".join("" if r.get(k) is None else f"{r[k]:.0f} s" for k in ("build_s", "eval_s"))
        cand.append(f"| {r['backend']} | {ms_txt} | {metric_txt} | {secs} | {(r['error'] or '')[:110]} |")
    where = "~/" + str(PEERS.relative_to(Path.home())) if PEERS.is_relative_to(Path.home()) else str(PEERS)
    peer_note = (f"OpenVINO {ov_info['openvino']}, NNCF {ov_info['nncf']} (installed by the bench into "
                 f"{where}, --no-deps; "
                 f"NNCF quantized the OpenVINO model read from the plain ONNX export in {ov_info['nncf_s']:.0f} s "
                 f"(SmoothQuant + fast bias correction, its transformer defaults); its torch backend "
                 f"{'was' if ov_info['torch_backend_imported'] else 'was not'} imported). OpenVINO compiles with "
                 f"INFERENCE_NUM_THREADS={args.threads} and its default precision hint here: {ov_info['precision']}."
                 if ov_info else f"OpenVINO rows skipped: {res['peers']}.")
    shapes = "; ".join(f"{BATCH_LABEL[b]}: padded to {d['shape'][0]} x {d['shape'][1]} tokens, "
                       f"{d['real_tokens']} real ({d['real_tokens'] / (d['shape'][0] * d['shape'][1]):.0%})"
                       for b, d in batches.items())
    cmd = "python bench/bench_openvino_minilm.py " + " ".join(res["argv"])
    notes = (f"Baseline: fp32 PyTorch eager. Two batches of 32, the same texts and the same tokenizer call for "
             f"every row, each padded to its longest text ({shapes}); tokenisation included; {args.rounds} "
             f"interleaved rounds, {args.threads} threads for every variant. What each row does with the padded "
             f"batch is its own: condense's int8 paths drop the padding (oneDNN: `OneDnnInt8Config` packs the real "
             f"tokens; on CPUs with AMX bf16 condense's native kernels attend each text at its own length and "
             f"fuse each LayerNorm with its uint8 quantization, elsewhere torch's attention runs on a few buckets "
             f"of texts of similar length; ONNX Runtime: `OrtInt8Config(packed=...)`), "
             f"the other graphs compute every padded slot. {peer_note} Quality: the "
             f"minilm task's MRR@10 on its docstring pairs and on its second source, manual pages (NAME line -> "
             f"DESCRIPTION; no calibration or training text comes from them). Int8Config() took {res['auto_s']:.0f} s"
             + (f", the recipe {recipe_s:.0f} s" if recipe_s is not None else ", the recipe row was left out "
                "(--no-recipe)") + f". Load average (1/5/15 min) before: "
             f"{' / '.join(f'{x:.2f}' for x in res['load_before'])}, after timing: "
             f"{' / '.join(f'{x:.2f}' for x in res['load_after_timing'])} (the machine is shared; "
             f"{res['seconds']:.0f} s in all).")
    body = ("## MiniLM vs OpenVINO and NNCF, both evaluation sources\n\n" + _common.header(cmd.strip(), args.threads,
                                                                                          notes)
            + "\n\n" + "\n".join(lines) + "\n\n" + verdict + "\n\n"
            + f"`Int8Config()` picked **{choice['backend']}**: {choice['reason']}. Its candidates, timed at batch "
            f"{choice['batch_size']} of docstring summaries on {choice['threads']} threads (MRR@10 on the docstring "
            "pairs; build and evaluate: seconds each candidate added to the Int8Config() call):\n\n"
            + "\n".join(cand) + "\n")
    if not args.no_write:
        _common.write_section("openvino-minilm", body)
    print(body)


if __name__ == "__main__":
    main()
