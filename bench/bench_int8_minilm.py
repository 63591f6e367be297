"""MiniLM int8 side by side in one process: fp32 eager, torch dynamic int8, ONNX Runtime fp32, ONNX Runtime's own
`quantize_dynamic` on the plain export (the issue's baseline), and condense's best int8 (`Int8Config("auto")`).

Usage: .venv/bin/python bench/bench_int8_minilm.py [--threads 2] [--rounds 7] [--float-channels 8]
Writes the `int8-minilm` section of BENCHMARKS.md. Timing: the task's own batches (the same texts for every
variant), tokenisation included, interleaved rounds (each variant timed once per round, so load from elsewhere
hits all alike); the p50 reported is the median of the rounds' medians.
"""
from __future__ import annotations

import argparse
import copy
import io
import os
import sys
import tempfile
import time
import warnings

import _common  # also sets sys.path
import torch

import condense
from condense.core.lineage import lineage
from condense.core.transforms import apply_
from condense.export import OnnxRuntimeConfig, OrtModule, OrtSentenceEncoder
from condense.export.onnx import quiet_onnxruntime_tools
from condense.measurement.api import MeasureConfig
from condense.quantize.backends import Int8Config


def plain_onnx(model: torch.nn.Module, texts: list[str]) -> bytes:
    """`torch.onnx.export` of the encoder as it is: (input_ids, attention_mask) -> embeddings, dynamic batch and
    sequence, opset 17 (what a user of ONNX Runtime or OpenVINO starts from)."""
    ids, mask = model.tokenize(texts)
    buf = io.BytesIO()
    axes = {"input_ids": {0: "batch", 1: "sequence"}, "attention_mask": {0: "batch", 1: "sequence"},
            "embeddings": {0: "batch"}}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, (ids, mask), buf, input_names=["input_ids", "attention_mask"],
                          output_names=["embeddings"], dynamic_axes=axes, opset_version=17, dynamo=False)
    return buf.getvalue()


def ort_own_quantize_dynamic(model: torch.nn.Module, texts: list[str]) -> torch.nn.Module:
    """The baseline: `torch.onnx.export` of the encoder as it is, then ORT's `quantize_dynamic` (QInt8, per-channel)."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    with tempfile.TemporaryDirectory() as d, quiet_onnxruntime_tools():
        src, dst = os.path.join(d, "fp32.onnx"), os.path.join(d, "int8.onnx")
        with open(src, "wb") as f:
            f.write(plain_onnx(model, texts))
        quantize_dynamic(src, dst, per_channel=True, weight_type=QuantType.QInt8)
        with open(dst, "rb") as f:
            data = f.read()
    return OrtSentenceEncoder.from_encoder(model, OrtModule(data))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--float-channels", type=int, default=Int8Config.float_channels,
                    help="FFN outlier channels per block kept in float by condense's ORT candidates")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)  # ORT sessions take torch's thread count when created
    load_before = os.getloadavg()
    t_start = time.time()
    task = condense.get_task("minilm")
    fp32 = task.build_model()
    auto = condense.quantize_(copy.deepcopy(fp32), Int8Config(batch_size=32, float_channels=args.float_channels),
                              task=task)
    choice = lineage(auto)["transforms"][-1]["details"]
    variants = {
        "fp32 PyTorch eager (baseline)": fp32,
        "torch dynamic int8, per-channel": condense.quantize_(copy.deepcopy(fp32), condense.DynamicInt8Config()),
        "ONNX Runtime fp32": apply_(copy.deepcopy(fp32), OnnxRuntimeConfig(), task=task),
        "ORT's own quantize_dynamic (plain export, int8 per-channel)": ort_own_quantize_dynamic(fp32, task.batch(2)),
        f"condense best int8 (Int8Config auto -> {choice['backend']})": auto,
    }
    bss = (32, 1)
    p50: dict[str, dict[int, float]] = {k: {} for k in variants}
    for bs in bss:
        batch = task.batch(bs)
        fns = {name: (lambda m=m: task.run_batch(m, batch)) for name, m in variants.items()}
        r = _common.interleaved_rounds_p50(fns, rounds=args.rounds, warmup=2, repeats=5 if bs > 1 else 20)
        for name in variants:
            p50[name][bs] = r[name]
    qcfg = MeasureConfig(batch_sizes=(1,), warmup=0, repeats=1, min_time_s=0, memory=False, macs=False)
    ms = {name: condense.measure(m, task, qcfg, label=name) for name, m in variants.items()}
    load_after = os.getloadavg()
    b_name = "fp32 PyTorch eager (baseline)"
    base = ms[b_name]
    lines = _common.minilm_speed_table(ms, p50, b_name, cosine=True)
    cand = ["| candidate | p50 @ batch 32 | MRR@10 | note |", "|---|---|---|---|"]
    for r in choice["candidates"]:
        ms_txt = "" if r["p50_ms"] is None else f"{r['p50_ms']:.1f} ms"
        metric_txt = "" if r["metric"] is None else f"{r['metric']:.4f}"
        cand.append(f"| {r['backend']} | {ms_txt} | {metric_txt} | {(r['error'] or '')[:110]} |")
    ours, theirs = [n for n in variants if n.startswith("condense best")][0], \
        "ORT's own quantize_dynamic (plain export, int8 per-channel)"
    verdict = (f"Targets: condense best int8 >= 4x fp32 eager at batch 32: {p50[b_name][32] / p50[ours][32]:.2f}x; "
               f"at least as fast as ORT's own quantize_dynamic: {p50[theirs][32] * 1e3:.1f} ms vs "
               f"{p50[ours][32] * 1e3:.1f} ms ({p50[theirs][32] / p50[ours][32]:.2f}x); cosine >= 0.99: "
               f"{ms[ours].quality['cosine_to_fp32']:.4f}; MRR@10 >= 99% of fp32: "
               f"{ms[ours].quality['mrr@10'] / base.quality['mrr@10']:.1%}.")
    cmd = "python bench/bench_int8_minilm.py " + " ".join(sys.argv[1:])
    applied = choice["applied"]["details"]
    session = ("condense's pick disables " + ", ".join(applied["disabled_optimizers"])
               if applied.get("disabled_optimizers") else "condense's pick keeps all")
    if applied.get("session_timings_ms"):
        session += "; its session tuning measured " + ", ".join(f"{k} {v:.1f} ms" for k, v in
                                                               applied["session_timings_ms"].items())
    notes = (f"Baseline: fp32 PyTorch eager. {args.rounds} interleaved rounds per batch size, tokenisation included, "
             f"the task's texts (batch 32 = 32 docstring summaries). ORT sessions: {args.threads} intra-op threads, "
             f"sequential, all graph optimisations except those a graph's metadata disables ({session}). "
             f"Load average (1/5/15 min) before: "
             f"{' / '.join(f'{x:.2f}' for x in load_before)}, after: {' / '.join(f'{x:.2f}' for x in load_after)} "
             f"(the machine is shared; {time.time() - t_start:.0f} s in all).")
    body = ("## int8 on MiniLM: torch vs ONNX Runtime\n\n" + _common.header(cmd.strip(), args.threads, notes)
            + "\n\n" + "\n".join(lines) + "\n\n" + verdict + "\n\n"
            + f"`Int8Config(backend='auto')` picked **{choice['backend']}**: {choice['reason']}. Candidates, "
            f"timed at batch {choice['batch_size']} on {choice['threads']} threads:\n\n" + "\n".join(cand) + "\n")
    _common.write_section("int8-minilm", body)
    print(body)


if __name__ == "__main__":
    main()
