"""Where MiniLM's time goes on the oneDNN int8 path: the matmul kernels side by side (fp32, bf16, oneDNN int8 and its
fused GELU / residual variants) at the man-page batch's shapes, attention per layer, and the packed int8 encoder's
forward with its attention timed apart, with condense's attention kernel and with torch's attention on buckets.

Usage: .venv/bin/python bench/bench_onednn_kernels.py [--threads 2] [--rounds 15] [--no-write]
Writes the `onednn-kernels` section of BENCHMARKS.md. Shapes: M = 3021 tokens (the minilm task's first 32 manual-page
documents with the padding dropped), hidden 384, FFN 1536 (1528 int8 channels + 8 kept in float); attention: 24
sequences of 128 tokens, 12 heads of 32, and the batch's real lengths (13 of 128 and 19 shorter ones) one call per
distinct length against the `attention_plan` buckets and against condense's attention kernel (native.cpp, one
call for the batch; on CPUs with AMX bf16), and one 124-token text alone vs padded to 128 with a key mask; the FFN's
8 outlier channels as a float addmm + GELU vs an int8 matmul reading ffn_in's uint8 input; the tanh-approximate
GELU post-op beside the exact one; a LayerNorm and the uint8 quantization of its output (SmoothQuant's divisor
applied) as torch's three ops vs condense's fused kernel. Interleaved rounds, medians.
"""
from __future__ import annotations

import argparse
import copy
import time

import _common  # also sets sys.path
import torch
import torch.nn.functional as F

import condense
from condense.quantize.onednn import Int8Matmul, OneDnnInt8Config, onednn_int8
import condense.quantize.onednn.encoder as encoder
from condense.quantize.onednn.native import native_kernels as native_kernel

M, C, FFN = 3021, 384, 1528


def matmul_rows() -> dict[str, callable]:
    torch.manual_seed(0)
    x = torch.randn(M, C)
    w_in, w_out = torch.randn(FFN, C) * 0.05, torch.randn(C, FFN) * 0.05
    b_in, b_out = torch.randn(FFN), torch.randn(C)
    h = F.gelu(F.linear(x, w_in, b_in))
    mm_in = Int8Matmul(w_in, b_in, float(x.min()), float(x.max()))
    mm_out = Int8Matmul(w_out, b_out, float(h.min()), float(h.max()))
    xq, hq = mm_in.quantize(x), mm_out.quantize(h)
    xb, hb, wib, wob = x.bfloat16(), h.bfloat16(), w_in.bfloat16(), w_out.bfloat16()
    acc = torch.randn(M, C)
    w8, b8 = torch.randn(8, C) * 0.05, torch.randn(8)
    w8t, side = w8.t().contiguous(), mm_in.sharing_input(w8, b8)
    return {
        f"ffn_in {M}x{C}x{FFN}, fp32 F.linear": lambda: F.linear(x, w_in, b_in),
        f"ffn_in {M}x{C}x{FFN}, bf16 F.linear": lambda: F.linear(xb, wib, b_in.bfloat16()),
        f"ffn_in {M}x{C}x{FFN}, int8 (uint8 in, uint8 out)": lambda: mm_in(xq, quantized=True, out_dtype=torch.uint8,
                                                                            out_range=mm_out.output_range),
        f"ffn_in {M}x{C}x{FFN}, int8 + exact GELU fused (uint8 out)": lambda: mm_in(
            xq, quantized=True, out_dtype=torch.uint8, gelu=True, out_range=mm_out.output_range),
        f"ffn_out {M}x{FFN}x{C}, fp32 F.linear": lambda: F.linear(h, w_out, b_out),
        f"ffn_out {M}x{FFN}x{C}, bf16 F.linear": lambda: F.linear(hb, wob, b_out.bfloat16()),
        f"ffn_out {M}x{FFN}x{C}, int8 + residual add fused (fp32 out)": lambda: mm_out(hq, quantized=True,
                                                                                      accumulate=acc),
        f"ffn_in {M}x{C}x{FFN}, int8 + tanh-approximate GELU fused (uint8 out)": lambda: _tanh_gelu(mm_in, xq, mm_out),
        f"8 FFN outlier channels {M}x{C}x8, float addmm + GELU (before)": lambda: F.gelu(torch.addmm(b8, x, w8t)),
        f"8 FFN outlier channels {M}x{C}x8, int8 from ffn_in's uint8 input, GELU fused (float32 out)":
            lambda: side(xq, quantized=True, gelu=True),
        f"quantize {M}x{C} fp32 -> uint8": lambda: mm_in.quantize(x),
    }


def norm_rows() -> dict[str, callable]:
    """A LayerNorm whose output feeds a SmoothQuant-ed int8 matmul: torch's layer_norm, mul, quantize_per_tensor vs
    condense's fused kernel (LayerNorm in place, uint8 from the same pass)."""
    torch.manual_seed(1)
    x = torch.randn(M, C) * 2 + 0.5
    norm = torch.nn.LayerNorm(C, eps=1e-12)
    with torch.no_grad():
        norm.weight.uniform_(0.5, 1.5)
        norm.bias.normal_()
    mm = Int8Matmul(torch.randn(FFN, C) * 0.05, None, -4.0, 4.0, smooth=torch.rand(C) + 0.5)
    out = {f"LayerNorm {M}x{C} + SmoothQuant divisor + quantize to uint8, torch's ops (3 passes)":
           lambda: encoder.norm_quantize(norm, x, mm, None)}
    kernels, why = native_kernel()
    if kernels is not None:
        out[f"LayerNorm {M}x{C} + SmoothQuant divisor + quantize to uint8, condense's kernel (native.cpp, 1 pass, "
            "in place)"] = lambda: encoder.norm_quantize(norm, x, mm, kernels)
    return out


def _tanh_gelu(mm: Int8Matmul, xq: torch.Tensor, nxt: Int8Matmul) -> torch.Tensor:
    """oneDNN's tanh-approximate GELU post-op (Int8Matmul fuses the exact one): measured, not used."""
    packed, scale, zp, wzp, _, _ = mm._prepared()
    o_scale, o_zp = nxt.output_range
    return torch.ops.onednn.qlinear_pointwise(xq, scale, zp, packed, mm.w_scale, wzp, mm.bias, o_scale, o_zp,
                                              torch.uint8, "gelu", [None], "tanh")


def man_page_batch() -> tuple:
    """(minilm task, fp32 model, the man-page batch's 32 texts): built once for the rows and the forward breakdown."""
    from bench_openvino_minilm import timing_batches

    task = condense.get_task("minilm")
    fp32 = task.build_model()
    return task, fp32, timing_batches(task, fp32)["long"]["texts"]


def attention_rows(lengths: list[int]) -> dict[str, callable]:
    """The batch's real lengths one call per length vs the encoder's buckets; one off-block text alone vs padded to
    flash attention's 32-block with a key mask; the full-length group per dtype."""
    torch.manual_seed(0)
    qkv = torch.randn(sum(lengths), 3 * 12 * 32).bfloat16()
    out = {}
    for name, plan in (("one call per distinct length, no mask", encoder.attention_plan(lengths, short=10**9, step=1)),
                       ("attention_plan buckets (torch's attention: the encoder's path without AMX bf16)",
                        encoder.attention_plan(lengths))):
        out[f"attention of the man-page batch ({len(lengths)} sequences, {sum(lengths)} tokens), {name}: "
            f"{len(plan)} calls"] = lambda plan=plan: encoder.bucketed_attention(qkv, plan, 12, 32)
    kernel, why = native_kernel()
    if kernel is not None:
        attend = encoder.PackedAttention(lengths, use_native=True)
        out[f"attention of the man-page batch ({len(lengths)} sequences, {sum(lengths)} tokens), condense's kernel "
            "(native.cpp): 1 call"] = lambda: attend(qkv, 12, 32)
    else:
        print(f"condense's attention kernel row left out: {why}")
    odd = [torch.randn(1, 12, 124, 32).bfloat16() for _ in range(3)]
    padded = [torch.nn.functional.pad(t, (0, 0, 0, 4)) for t in odd]
    key_mask = torch.zeros(1, 1, 1, 128, dtype=torch.bfloat16)
    key_mask[..., 124:] = float("-inf")
    out["attention of one 124-token text alone, bf16 SDPA"] = lambda: F.scaled_dot_product_attention(*odd)
    out["attention of one 124-token text padded to 128 with a key mask, bf16 SDPA"] = \
        lambda: F.scaled_dot_product_attention(*padded, attn_mask=key_mask)
    base = [torch.randn(24, 12, 128, 32) for _ in range(3)]
    for dt in (torch.bfloat16, torch.float32, torch.float16):
        q, k, v = [t.to(dt) for t in base]
        out[f"attention 24 x 12 heads x 128 x 32, {str(dt).split('.')[-1]} SDPA (flash)"] = \
            lambda q=q, k=k, v=v: F.scaled_dot_product_attention(q, k, v)
    return out


def forward_breakdown(task, fp32, texts, reps: int = 10) -> dict[str, dict[str, float]]:
    """The packed int8 encoder's forward on the man-page batch (ms) and the part of it spent in attention, with
    condense's attention kernel (where it is used) and with torch's attention on buckets, interleaved per call."""
    q = condense.quantize_(copy.deepcopy(fp32), OneDnnInt8Config(), task=task)
    ids, mask = fp32.tokenize(texts)
    spent = [0.0]
    inner = encoder.PackedAttention.__call__

    def timed(self, *a):
        t0 = time.perf_counter()
        r = inner(self, *a)
        spent[0] += time.perf_counter() - t0
        return r

    modes = {"torch's ops (attention on attention_plan buckets; layer_norm, mul, quantize_per_tensor)": False}
    if native_kernel()[0] is not None:
        modes = {"condense's native kernels (native.cpp: attention; LayerNorm + quantize)": None, **modes}
    res: dict[str, dict[str, list[float]]] = {m: {"forward": [], "attention": []} for m in modes}
    encoder.PackedAttention.__call__ = timed
    try:
        with torch.inference_mode():
            for _ in range(3):
                for flag in modes.values():
                    q.bert.native = flag
                    q(ids, mask)
            for _ in range(reps):
                for mode, flag in modes.items():
                    q.bert.native = flag
                    spent[0] = 0.0
                    t0 = time.perf_counter()
                    q(ids, mask)
                    res[mode]["forward"].append(time.perf_counter() - t0)
                    res[mode]["attention"].append(spent[0])
            t0 = time.perf_counter()
            for _ in range(reps):
                fp32.tokenize(texts)
            tok = (time.perf_counter() - t0) / reps
    finally:
        encoder.PackedAttention.__call__ = inner
    med = lambda v: sorted(v)[len(v) // 2] * 1e3  # noqa: E731
    out = {m: {k: med(v) for k, v in r.items()} for m, r in res.items()}
    for r in out.values():
        r["tokenize"] = tok * 1e3
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=15)
    ap.add_argument("--no-write", action="store_true")
    args = ap.parse_args()
    native, why = onednn_int8()
    if not native:
        raise SystemExit(f"this bench needs oneDNN's native int8 kernels: {why}")
    torch.set_num_threads(args.threads)
    load = _common.load_average()
    task, fp32, texts = man_page_batch()
    lengths = sorted(fp32.tokenize(texts)[1].sum(1).tolist(), reverse=True)  # longest first, as the encoder packs
    fns = {**matmul_rows(), **norm_rows(), **attention_rows(lengths)}
    p50 = _common.interleaved_rounds_p50(fns, rounds=args.rounds, warmup=3, repeats=3)
    lines = ["| kernel | p50 |", "|---|---|"] + [f"| {k} | {v * 1e3:.3f} ms |" for k, v in p50.items()]
    lines += ["", f"Packed int8 MiniLM encoder (`OneDnnInt8Config()`, 6 blocks) on the man-page batch of 32 "
              f"({M} real tokens), median of 10 interleaved calls, forward (of which attention):"]
    for mode, b in forward_breakdown(task, fp32, texts).items():
        lines.append(f"- {mode}: {b['forward']:.1f} ms ({b['attention']:.1f} ms, "
                     f"{b['attention'] / b['forward']:.0%})")
    lines.append(f"- tokenisation of the batch (outside the forward): {b['tokenize']:.1f} ms")
    notes = (f"{why}; at the start {load}, at the end {_common.load_average()}. Interleaved rounds ({args.rounds}, "
             "3 calls each), medians.")
    _common.publish("onednn-kernels", "oneDNN int8 kernels and MiniLM's forward, where the time goes",
                    "bench_onednn_kernels.py", None, args.threads, notes, lines, write=not args.no_write)


if __name__ == "__main__":
    main()
