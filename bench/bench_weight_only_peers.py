"""Weight-only peers on the large tinygpt preset: condense RTN/GPTQ/AWQ vs torchao vs ONNX Runtime's quantizer.

Usage: .venv/bin/python bench/bench_weight_only_peers.py [--preset large] [--tokens 32] [--rounds 3] [--repeats 2]
       [--batches 1,8] [--windows 16] [--calibration 4] [--threads 1] [--methods4 rtn,gptq,awq] [--methods8 rtn]
       [--only SUBSTRING,...] [--ort-gptq] [--no-write]
Writes the `weight-only-peers` section of BENCHMARKS.md. `--only` keeps the rows whose label contains one of the
comma-separated substrings (case-insensitive; the fp32 baseline always runs), e.g. `--only "ort-graph,ORT RTN"`.
ORT's GPTQ (931 s here) runs only with `--ort-gptq`; condense's 8-bit GPTQ/AWQ only when named in `--methods8`.
The default run takes about 10 minutes on 2 loaded vCPUs.

Side by side in one process, on the same trained model (lm_head kept in float everywhere):
  condense  `WeightOnlyConfig(method=rtn|gptq|awq)`, 4-bit group 32 and 8-bit per channel, kernel="auto" with
            whole_graph=False (per-layer low-bit kernels), and the same integers run as one ONNX Runtime graph
            (kernel="ort-graph-a8", which "auto" itself takes where it measures it faster; int8 activations, and
            for RTN 4-bit "ort-graph", float32 activations; `condense.quantize.weight_only.ort_graph`);
  torchao   `quantize_` with `Int8WeightOnlyConfig()` and `IntxWeightOnlyConfig(int4, PerGroup(32))` (its CPU int4
            path), and `Int4WeightOnlyConfig(group_size=32)`, whose failure on CPU is printed as its row;
  ORT       the model exported to ONNX with its KV cache as inputs/outputs (one graph: prefill and decode steps),
            quantized by `onnxruntime.quantization.matmul_nbits_quantizer.MatMulNBitsQuantizer`: its default
            (RTN, block 32) at 4 and 8 bits, 4-bit RTN again with accuracy_level=4 (int8 activations), and its
            GPTQ and HQQ algo configs (4-bit, block 32).
Decode: tokens/s at each of `--batches`, `--tokens` greedy tokens after the 4-byte prompt "def ". torch models and
condense's ort-graph run condense's `generate` (KV cache); ORT's models run the same loop in Python around
`InferenceSession.run` (prefill the prompt, then one token per call, keys/values fed back as numpy arrays).
Medians of interleaved rounds. Roofline: tokens/s x weight bytes read per step / (batch x memory bandwidth), with
the bandwidth from `condense.measurement.bandwidth` and the bytes of the torch model's tensors (packed sizes) or
of the ONNX graph's initializers (MatMulNBits stores float32 scales: slightly more than condense's fp16).
Quality: bits per byte (and per-byte perplexity 2**bpb) over `--windows` windows of 128 bytes of the val split
(primary) and of manual-page text (second source), the same windows for every row.
"""
from __future__ import annotations

import argparse
import copy
import os
import sys
import tempfile
import time
import warnings
from pathlib import Path

import _common
import numpy as np
import torch
from torch import nn

import condense
from condense.core.lineage import lineage
from condense.export.gpt import gpt_past_shape
from condense.export.kvstep import export_kv_step
from condense.measurement.bandwidth import cache_note, memory_bandwidth, weight_bytes
from condense.quantize.weight_only import WeightOnlyConfig
from condense.quantize.weight_only.ort_graph import GRAPH_KERNELS, OrtGraphLM, graph_lm
from condense.tasks.gpt import generate
from condense.tasks.tinygpt import PRESETS, PROMPT, byte_tensor, evaluate_lm, offsource_bytes


def _empty_past(gpt: nn.Module, batch: int) -> np.ndarray:
    return np.zeros(gpt_past_shape(gpt, batch), dtype=np.float32)


class OrtLM(nn.Module):
    """An ORT session of a `KVStep` graph, callable like the GPT for `evaluate_lm` and decodable with `generate`."""

    def __init__(self, sess, gpt: nn.Module, data: bytes):
        super().__init__()
        self.sess, self.empty, self.data = sess, (lambda b: _empty_past(gpt, b)), data

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        e = self.empty(idx.shape[0])
        return torch.from_numpy(self.sess.run(["logits"], {"idx": idx.numpy(), "past_k": e, "past_v": e})[0])

    def generate(self, prompt: np.ndarray, new_tokens: int) -> np.ndarray:
        e = self.empty(prompt.shape[0])
        logits, pk, pv = self.sess.run(None, {"idx": prompt, "past_k": e, "past_v": e})
        out = [prompt]
        for i in range(new_tokens):
            nxt = logits[:, -1].argmax(-1)[:, None].astype(np.int64)  # (B, 1) greedy
            out.append(nxt)
            if i + 1 < new_tokens:
                logits, pk, pv = self.sess.run(None, {"idx": nxt, "past_k": pk, "past_v": pv})
        return np.concatenate(out, 1)


def ort_variants(gpt: nn.Module, calib: list[torch.Tensor], threads: int, tmp: Path, want, gptq: bool
                 ) -> dict[str, tuple]:
    """label -> (OrtLM or None, note) for ORT fp32 and each MatMulNBitsQuantizer setting."""
    import onnx
    import onnxruntime as ort
    from onnxruntime.quantization import matmul_nbits_quantizer as mnq
    from onnxruntime.quantization.calibrate import CalibrationDataReader

    fp = tmp / "fp32.onnx"
    fp.write_bytes(export_kv_step(gpt))
    so = ort.SessionOptions()
    so.intra_op_num_threads, so.inter_op_num_threads = threads, 1
    so.log_severity_level = 3

    def session(model) -> OrtLM:
        data = model.SerializeToString() if not isinstance(model, (str, Path)) else Path(model).read_bytes()
        return OrtLM(ort.InferenceSession(data, so, providers=["CPUExecutionProvider"]), gpt, data)

    class Reader(CalibrationDataReader):
        def __init__(self):
            e = _empty_past(gpt, calib[0].shape[0])
            self.it = iter([{"idx": b.numpy(), "past_k": e, "past_v": e} for b in calib])

        def get_next(self):
            return next(self.it, None)

    head = [n.name for n in onnx.load(str(fp)).graph.node if n.op_type == "MatMul" and "lm_head" in n.name]
    algos = {
        "ORT RTN 4-bit (default, block 32)": (4, lambda: mnq.DefaultWeightOnlyQuantConfig(block_size=32, bits=4)),
        "ORT RTN 8-bit (default, block 32)": (8, lambda: mnq.DefaultWeightOnlyQuantConfig(block_size=32, bits=8)),
        "ORT GPTQ 4-bit (block 32)": (4, lambda: mnq.GPTQWeightOnlyQuantConfig(
            calibration_data_reader=Reader(), block_size=32, perchannel=False)),
        "ORT HQQ 4-bit (block 32)": (4, lambda: mnq.HQQWeightOnlyQuantConfig(block_size=32, bits=4)),
    }
    if not gptq:
        del algos["ORT GPTQ 4-bit (block 32)"]
    out: dict[str, tuple] = {"ORT fp32": (session(fp), "fp32 ONNX graph, same KV-cache loop")} \
        if want("ORT fp32") else {}
    for label, (bits, make) in algos.items():
        if not (want(label) or (label.startswith("ORT RTN 4-bit") and want("ORT RTN 4-bit, accuracy_level=4"))):
            continue
        t0 = time.perf_counter()
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                q = mnq.MatMulNBitsQuantizer(onnx.load(str(fp)), bits=bits, block_size=32, is_symmetric=False,
                                             nodes_to_exclude=head, algo_config=make())
                q.process()
            model = q.model.model
            n = sum(node.op_type == "MatMulNBits" for node in model.graph.node)
            lm = [node.name for node in model.graph.node if node.op_type == "MatMul" and node.name in head]
            lm_note = "" if not head or lm else "; lm_head quantized too (nodes_to_exclude not honoured)"
            out[label] = (session(model), f"{n} MatMulNBits nodes; quantized in {time.perf_counter() - t0:.0f} s"
                          + lm_note)
            if label.startswith("ORT RTN 4-bit"):
                for node in model.graph.node:
                    if node.op_type == "MatMulNBits":
                        node.attribute.append(onnx.helper.make_attribute("accuracy_level", 4))
                out["ORT RTN 4-bit, accuracy_level=4"] = (session(model), "same weights; int8 activations in the "
                                                          "MatMulNBits kernel (ORT's fast CPU setting)")
        except Exception as e:  # noqa: BLE001 (a peer setting that fails here is a row saying why)
            out[label] = (None, f"fails here: {type(e).__name__}: {str(e).splitlines()[0][:160] if str(e) else ''}")
        print(f"{label}: {out[label][1]}", file=sys.stderr)
    return out


def torchao_variants(fp32: nn.Module, want) -> dict[str, tuple]:
    """label -> (model or None, note) for torchao's weight-only configs that a CPU user would try."""
    try:
        from torchao.quantization import (Int4WeightOnlyConfig, Int8WeightOnlyConfig, IntxWeightOnlyConfig,
                                          quantize_)
        from torchao.quantization.granularity import PerGroup
    except Exception as e:  # noqa: BLE001
        return {"torchao": (None, f"not importable: {type(e).__name__}: {e}")}
    keep = (lambda m, fqn: isinstance(m, nn.Linear) and fqn != "lm_head")
    cfgs = {"torchao Int8WeightOnlyConfig() (per channel)": (lambda: Int8WeightOnlyConfig(), torch.float32),
            "torchao IntxWeightOnlyConfig(int4, PerGroup(32))": (
                lambda: IntxWeightOnlyConfig(weight_dtype=torch.int4, granularity=PerGroup(32)), torch.float32),
            "torchao Int4WeightOnlyConfig(group_size=32), bf16": (
                lambda: Int4WeightOnlyConfig(group_size=32), torch.bfloat16)}
    out: dict[str, tuple] = {}
    for label, (make, dtype) in cfgs.items():
        if not want(label):
            continue
        try:
            m = copy.deepcopy(fp32).to(dtype)
            quantize_(m, make(), filter_fn=keep)
            with torch.inference_mode():
                m(torch.tensor([list(PROMPT)]))
            out[label] = (m, f"{type(m.blocks[0].attn.q_proj.weight).__name__} weights")
        except Exception as e:  # noqa: BLE001
            out[label] = (None, f"fails on CPU here: {type(e).__name__}: {(str(e).splitlines() or [''])[0][:140]}")
    return out


def condense_variants(fp32: nn.Module, calib: list[torch.Tensor], methods: dict[int, list[str]], want
                      ) -> dict[str, tuple]:
    """Per-layer rows (kernel="auto", whole_graph=False) and the same integers as one ORT graph (ort-graph-a8, what
    "auto" takes where it measures the graph faster; ort-graph for RTN 4)."""
    out: dict[str, tuple] = {}
    for bits, gs in ((4, 32), (8, -1)):
        for method in methods[bits]:
            label = f"condense {method.upper()} {bits}-bit ({'group 32' if gs == 32 else 'per channel'})"
            graphs = {k: f"{label}, {k}" for k in (("ort-graph-a8", "ort-graph") if (method, bits) == ("rtn", 4)
                                                   else ("ort-graph-a8",))}
            if not (want(label) or any(want(g) for g in graphs.values())):
                continue
            t0 = time.perf_counter()
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                m = condense.quantize_(copy.deepcopy(fp32), WeightOnlyConfig(  # the per-layer pick of "auto"
                    method=method, bits=bits, group_size=gs, calibration_batches=len(calib), whole_graph=False),
                    calibration=calib)
            d = lineage(m)["transforms"][-1]["details"]
            k = d.get("kernel")
            kernels = ", ".join(sorted(set(k.values()))) if isinstance(k, dict) else str(k)
            extra = f"; {len(d['input_scaled'])} layers scale their input" if d.get("input_scaled") else ""
            took = time.perf_counter() - t0
            if want(label):
                out[label] = (m, f"kernel {kernels}; quantized in {took:.0f} s{extra}")
                print(f"{label}: {out[label][1]}", file=sys.stderr)
            for kernel, glabel in graphs.items():
                if want(glabel):
                    t1 = time.perf_counter()
                    g = graph_lm(copy.deepcopy(m), kernel)
                    g.graph()
                    out[glabel] = (g, f"the same integers as `WeightOnlyConfig(kernel={kernel!r})` runs them: one "
                                      f"ONNX Runtime graph, MatMulNBits accuracy_level={GRAPH_KERNELS[kernel]}; "
                                      f"quantized in {took:.0f} s, graph built in {time.perf_counter() - t1:.1f} s")
                    print(f"{glabel}: {out[glabel][1]}", file=sys.stderr)
    return out


def read_bytes(m: nn.Module) -> int:
    """Weight bytes one decode step reads: the torch tensors (packed sizes) or the ONNX graph's initializers."""
    import onnx
    from onnx import numpy_helper

    if isinstance(m, (OrtLM, OrtGraphLM)):
        graph = onnx.load_from_string(m.graph() if isinstance(m, OrtGraphLM) else m.data)
        return sum(numpy_helper.to_array(t).nbytes for t in graph.graph.initializer)
    try:
        return weight_bytes(m)
    except RuntimeError:  # torchao's tensor subclasses: count the plain tensors inside them
        return sum(_inner_bytes(t) for t in (*m.parameters(), *m.buffers()))


def _inner_bytes(t: torch.Tensor) -> int:
    if hasattr(t, "__tensor_flatten__"):
        names, _ = t.__tensor_flatten__()
        return sum(_inner_bytes(getattr(t, n)) for n in names)
    return t.numel() * t.element_size()


def input_scale_cost(rows: dict[str, tuple], rounds: int) -> str:
    """One line: an AWQ layer's time at batch 1 with its explicit input multiply vs the same layer without it."""
    from condense.quantize.weight_only import WeightOnlyLinear

    for label, (m, _) in rows.items():
        layer = next((x for x in m.modules() if isinstance(x, WeightOnlyLinear) and x.input_scale is not None),
                     None) if label.startswith("condense AWQ 4") else None
        if layer is None:
            continue
        plain = copy.deepcopy(layer)
        plain.input_scale = None
        x = torch.randn(1, layer.in_features)
        p50 = _common.interleaved_rounds_p50({"with": lambda: layer(x), "without": lambda: plain(x)},
                                             rounds=rounds, warmup=5, repeats=50)
        return (f"AWQ's explicit input multiply (layers with no foldable producer, here each MLP's fc_out), "
                f"{layer.in_features} -> {layer.out_features} on {layer.kernel} at batch 1: "
                f"{p50['with'] * 1e6:.1f} us with it vs {p50['without'] * 1e6:.1f} us without "
                f"({p50['with'] / p50['without']:.3f}x), medians of {rounds} interleaved rounds x 50 calls.")
    return ""


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", default="large")
    ap.add_argument("--tokens", type=int, default=32)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--batches", default="1,8", help="decode batch sizes (comma-separated; the first is the main one)")
    ap.add_argument("--windows", type=int, default=16, help="128-byte windows per evaluation source")
    ap.add_argument("--calibration", type=int, default=4, help="calibration batches (8 x 128 bytes) for GPTQ/AWQ")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--methods4", default="rtn,gptq,awq", help="condense methods at 4 bits")
    ap.add_argument("--methods8", default="rtn", help="condense methods at 8 bits (gptq/awq add ~3 min each)")
    ap.add_argument("--only", default="", help="keep rows whose label contains one of these comma-separated "
                                                "substrings (case-insensitive); fp32 eager always runs")
    ap.add_argument("--ort-gptq", action="store_true", help="also run ORT's GPTQ (931 s here)")
    ap.add_argument("--no-write", action="store_true")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    load0 = os.getloadavg()
    t_start = time.perf_counter()
    task = condense.get_task("tinygpt", preset=args.preset)
    fp32 = task.build_model().eval()
    calib = list(task.calibration_data())[:args.calibration]
    T = PRESETS[args.preset].model.block_size
    batches = [int(b) for b in args.batches.split(",")]
    subs = [x.strip().lower() for x in args.only.split(",") if x.strip()]

    def want(label: str) -> bool:
        return not subs or any(x in label.lower() for x in subs)

    rows: dict[str, tuple] = {"fp32 (torch eager)": (fp32, "baseline")}
    tmp = Path(tempfile.mkdtemp(prefix="condense-peers-"))
    methods = {4: [m for m in args.methods4.split(",") if m], 8: [m for m in args.methods8.split(",") if m]}
    rows.update(condense_variants(fp32, calib, methods, want))
    rows.update(torchao_variants(fp32, want))
    rows.update(ort_variants(fp32, calib, args.threads, tmp, want, args.ort_gptq))
    print(f"built {len(rows)} variants in {time.perf_counter() - t_start:.0f} s", file=sys.stderr)

    fns = {}
    for label, (m, _) in rows.items():
        for b in batches:
            prompt = torch.tensor([list(PROMPT)] * b)
            if isinstance(m, OrtLM):
                fns[label, b] = (lambda m=m, p=prompt: m.generate(p.numpy(), args.tokens))
            elif m is not None:
                fns[label, b] = (lambda m=m, p=prompt: generate(m, p, args.tokens))
    p50 = _common.interleaved_rounds_p50(fns, rounds=args.rounds, warmup=1, repeats=args.repeats)
    load_t = os.getloadavg()[0]
    bandwidth = memory_bandwidth("cpu")
    val = byte_tensor("val", PRESETS[args.preset].val_bytes)
    off = offsource_bytes(args.windows * T + 1)
    base = {b: args.tokens * b / p50["fp32 (torch eager)", b] for b in batches}
    speed_cols = "".join(f"decode tokens/s @ batch {b} | vs fp32 eager | roofline @ {b} | " for b in batches)
    lines = [f"| variant | {speed_cols}weights read / step | bits/byte (val) | perplexity (val) | "
             "bits/byte (man pages) | perplexity (man pages) | notes |", "|" + "---|" * (7 + 3 * len(batches))]
    for label, (m, note) in rows.items():
        if m is None:
            lines.append(f"| {label} |" + " - |" * (5 + 3 * len(batches)) + f" {note} |")
            continue
        with torch.inference_mode():
            q = evaluate_lm(m, val, T, args.windows)
            o = evaluate_lm(m, off, T, args.windows) if off is not None else None
        nbytes = read_bytes(m)
        speed = ""
        for b in batches:
            tok = args.tokens * b / p50[label, b]
            speed += f"{tok:.1f} | {tok / base[b]:.2f}x | {tok * nbytes / (b * bandwidth):.0%} | "
        cells = f"{q['bits_per_byte']:.4f} | {q['perplexity']:.4f} | " + (
            f"{o['bits_per_byte']:.4f} | {o['perplexity']:.4f}" if o else "- | -")
        lines.append(f"| {label} | {speed}{nbytes / 1e6:.1f} MB | {cells} | {note} |")
        print(lines[-1], file=sys.stderr)
    cost = input_scale_cost(rows, args.rounds * 3)
    notes = (f"tinygpt preset `{args.preset}` (trained, cached); {args.tokens} new tokens after a 4-byte prompt, "
             f"batch {', '.join(map(str, batches))}, medians of {args.rounds} interleaved rounds x {args.repeats} "
             f"generations; ORT at {args.threads} intra-op thread(s) like torch. Roofline: tokens/s x weights read "
             f"per step / (batch x {bandwidth / 1e9:.1f} GB/s measured by condense.measurement.bandwidth). "
             + (cache_note(read_bytes(rows["fp32 (torch eager)"][0])) + " ")
             + f"Quality over {args.windows} x {T}-byte windows per source (same windows for every row). GPTQ/AWQ "
             f"calibrated on {len(calib)} batches of 8 x {T} bytes (condense and ORT alike). lm_head stays fp32 "
             "(excluded) in every row unless its notes say otherwise. "
             f"Load average {load0[0]:.2f} / {load0[1]:.2f} / {load0[2]:.2f} at start, {load_t:.2f} after timing, "
             f"{os.getloadavg()[0]:.2f} at the end (2 vCPUs shared with other jobs); whole run "
             f"{time.perf_counter() - t_start:.0f} s.")
    cmd = "python bench/bench_weight_only_peers.py" + "".join(f" {a}" for a in (sys.argv[1:] if argv is None else argv))
    body = "\n".join(["## Weight-only quantization vs peers (torchao, ONNX Runtime MatMulNBitsQuantizer)", "",
                      _common.header(cmd, args.threads, notes), "", *lines, "", cost])
    print(body)
    if not args.no_write:
        _common.write_section("weight-only-peers", body)


if __name__ == "__main__":
    main()
