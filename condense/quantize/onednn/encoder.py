"""A BERT encoder on oneDNN int8 matmuls with the padding dropped: every token-wise layer (the four matmuls,
LayerNorm, GELU, residual adds) runs on the batch's real tokens only, and attention runs on groups of sequences of
equal length, so no padded position is computed anywhere and no mask is needed.

Layout: the batch's sequences are sorted by length (longest first) and their real tokens laid end to end, (N, C);
sequences of the same length are then contiguous, so one group is a (n, L, 3, heads, head_dim) view of the fused
q/k/v output and goes to `scaled_dot_product_attention` without a mask. The last hidden states are scattered back
to (B, T, C), zero at padded positions, so the sentence encoder's mean pooling is unchanged.

Per block: q/k/v as one int8 matmul (bf16 out, for attention); the attention output projection adds into the
residual in the same kernel; `ffn_in` applies GELU and writes uint8 at `ffn_out`'s input scale (no float
intermediate); `ffn_out` adds into the residual. BERT's FFN has a few hidden channels whose GELU output is 3-4x
the next largest: with one activation scale per tensor they would coarsen every other channel's steps, so the
`float_channels` largest (on calibration data) are computed in float on a side path (LLM.int8()-style).
SmoothQuant (`alpha`) moves the LayerNorm outputs' outlier channels into the q/k/v and `ffn_in` weights.
"""
from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from condense.errors import CondenseError
from condense.quantize.onednn.kernels import Int8Matmul, widen_range

SITES = ("qkv", "out", "in", "h")  # inputs of: query/key/value, attn.out, ffn_in, ffn_out
SMOOTHED = ("qkv", "in")  # LayerNorm outputs (SmoothQuant sites)
# What this file reads of a BERT-like encoder (condense's `condense.tasks.bert.Bert`, which registers it): `.config`,
# `.embeddings` with `check_length(T)` and `at(ids, positions)`, and `.layers`, post-LN blocks with `attn` (`query`,
# `key`, `value`, `out` Linears, `n_heads`, `head_dim`), `attn_norm`, `ffn_in`, `ffn_out`, `ffn_norm` (exact GELU).

Stats = dict[str, tuple[torch.Tensor, torch.Tensor]]  # site -> per-channel (min, max) over real tokens


class FloatChannels(nn.Module):
    """The FFN hidden channels kept in float: h_k = gelu(x W_in[k]^T + b[k]); out += h_k W_out[:, k]^T."""

    def __init__(self, w_in: torch.Tensor, b_in: torch.Tensor, w_out: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("w_in", w_in.detach().float().t().contiguous())  # (C, k)
        self.register_buffer("b_in", b_in.detach().float().clone())  # (k,)
        self.register_buffer("w_out", w_out.detach().float().t().contiguous())  # (k, C)

    def hidden(self, x: torch.Tensor) -> torch.Tensor:
        return F.gelu(torch.addmm(self.b_in, x, self.w_in))  # (N, k)


class PackedInt8Block(nn.Module):
    """One post-LN BERT block on packed tokens (see the module docstring)."""

    def __init__(self, block: nn.Module, stats: Stats, *, float_channels: int, alpha: float) -> None:
        super().__init__()
        a = block.attn
        self.n_heads, self.head_dim = a.n_heads, a.head_dim

        def matmul(site: str, weight: torch.Tensor, bias: torch.Tensor, channels: torch.Tensor | None = None
                   ) -> Int8Matmul:
            lo, hi = stats[site]
            if channels is not None:
                lo, hi = lo[channels], hi[channels]
            return Int8Matmul.calibrated(weight, bias, lo, hi, alpha if site in SMOOTHED else 0.0)

        self.qkv = matmul("qkv", torch.cat([a.query.weight, a.key.weight, a.value.weight]).detach(),
                          torch.cat([a.query.bias, a.key.bias, a.value.bias]).detach())
        self.out = matmul("out", a.out.weight, a.out.bias)
        self.attn_norm = block.attn_norm
        lo, hi = stats["h"]
        k = min(float_channels, block.ffn_in.out_features - 1)
        outliers = torch.topk(torch.maximum(lo.abs(), hi.abs()), k).indices.sort().values
        kept = torch.ones(lo.numel(), dtype=torch.bool)
        kept[outliers] = False
        kept = kept.nonzero().squeeze(1)
        self.ffn_in = matmul("in", block.ffn_in.weight.detach()[kept], block.ffn_in.bias.detach()[kept])
        self.ffn_out = matmul("h", block.ffn_out.weight.detach()[:, kept], block.ffn_out.bias, kept)
        self.float_channels = (FloatChannels(block.ffn_in.weight[outliers], block.ffn_in.bias[outliers],
                                             block.ffn_out.weight[:, outliers]) if k else None)
        self.ffn_norm = block.ffn_norm

    def forward(self, x: torch.Tensor, groups: list[tuple[int, int]]) -> torch.Tensor:
        """x (N, C) float32 packed tokens (overwritten), groups [(length, count)] -> (N, C)."""
        qkv = self.qkv(x, out_dtype=torch.bfloat16)  # (N, 3 * heads * head_dim)
        y = grouped_attention(qkv, groups, self.n_heads, self.head_dim)  # (N, heads * head_dim)
        x = self.attn_norm(self.out(y, accumulate=x))  # x + out(y), in the kernel
        side = self.float_channels.hidden(x) if self.float_channels is not None else None
        h = self.ffn_in(x, out_dtype=torch.uint8, gelu=True, out_range=self.ffn_out.output_range)
        f = self.ffn_out(h, quantized=True, accumulate=x)  # x + ffn_out(h), in the kernel
        if side is not None:
            f = f.addmm_(side, self.float_channels.w_out)
        return self.ffn_norm(f)


def grouped_attention(qkv: torch.Tensor, groups: list[tuple[int, int]], n_heads: int, head_dim: int
                      ) -> torch.Tensor:
    """Unmasked attention per group of equal-length sequences laid end to end in `qkv` (N, 3 * n_heads *
    head_dim) -> (N, n_heads * head_dim)."""
    outs = []
    for (length, count), part in zip(groups, qkv.split([n * c for n, c in groups])):
        q, k, v = part.view(count, length, 3, n_heads, head_dim).permute(2, 0, 3, 1, 4)
        # torch's CPU flash attention lays its output out as (count, length, heads, head_dim): no copy here
        outs.append(F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(count * length, -1))
    return torch.cat(outs) if len(outs) > 1 else outs[0]


class PackedInt8Bert(nn.Module):
    """`Bert`'s (input_ids, attention_mask) -> (B, T, C) last hidden states on packed tokens and int8 matmuls.

    Padded positions of the output are zero (the float model computes values there that every consumer masks).
    Hidden states of every layer and attention maps are not available: distil or prune before quantizing.
    """

    def __init__(self, bert: nn.Module, stats: list[Stats], *, float_channels: int, alpha: float) -> None:
        super().__init__()
        self.config = bert.config
        self.embeddings = bert.embeddings
        self.layers = nn.ModuleList(PackedInt8Block(b, s, float_channels=float_channels, alpha=alpha)
                                    for b, s in zip(bert.layers, stats))

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None, *,
                output_hidden_states: bool = False, output_attentions: bool = False) -> torch.Tensor:
        if output_hidden_states or output_attentions:
            raise CondenseError("this encoder runs int8 on packed tokens (OneDnnInt8Config) and computes the last "
                                "hidden states only; distil or prune the float model first, then quantize")
        x, rows, cols = self._packed(input_ids, attention_mask)
        out = x.new_zeros(*input_ids.shape, x.shape[-1])
        out[rows, cols] = x
        return out

    def _packed(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Last hidden states of the real tokens (N, C) and their (row, column) in the padded batch."""
        if input_ids.dim() != 2:
            raise CondenseError(f"input_ids must be (batch, tokens), got shape {tuple(input_ids.shape)}; "
                                "use SentenceEncoder.tokenize(texts) to build them")
        B, T = input_ids.shape
        self.embeddings.check_length(T)
        mask = torch.ones_like(input_ids) if attention_mask is None else attention_mask
        if mask.shape != input_ids.shape:
            raise CondenseError(f"attention_mask shape {tuple(mask.shape)} differs from input_ids "
                                f"{tuple(input_ids.shape)}; pass the mask returned with the ids")
        keep = mask.bool()
        lens = keep.sum(1)  # (B,)
        order = torch.argsort(lens, descending=True, stable=True)
        flat = keep[order].reshape(-1).nonzero().squeeze(1)  # real tokens, longest sequence first
        rows, cols = order[flat // T], flat % T  # where each packed token sits in the padded batch
        lengths, counts = torch.unique_consecutive(lens[order], return_counts=True)
        groups = [(n, c) for n, c in zip(lengths.tolist(), counts.tolist()) if n > 0]
        with torch.no_grad():  # inference kernels: no autograd formula for oneDNN's int8 ops
            x = self.embeddings.at(input_ids[rows, cols], cols)  # (N, C)
            for layer in self.layers:
                x = layer(x, groups)
        return x, rows, cols


def calibration_stats(bert: nn.Module, run: Any) -> list[Stats]:
    """Per block and site, per-channel (min, max) of the float model's activations over real tokens only, while
    `run()` feeds it the calibration batches."""
    stats: list[Stats] = [{} for _ in bert.layers]
    mask: list[torch.Tensor | None] = [None]

    def remember_mask(_m: nn.Module, args: tuple, kwargs: dict) -> None:
        m = kwargs.get("attention_mask", args[1] if len(args) > 1 else None)
        mask[0] = None if m is None else m.bool()

    def observe(i: int, site: str):
        def hook(_m: nn.Module, inputs: tuple, _out: Any) -> None:
            x, m = inputs[0], mask[0]
            widen_range(stats[i], site, x[m] if m is not None and m.shape == x.shape[:2] else x)
        return hook

    handles = [bert.register_forward_pre_hook(remember_mask, with_kwargs=True)]
    for i, b in enumerate(bert.layers):
        for site, mod in zip(SITES, (b.attn.query, b.attn.out, b.ffn_in, b.ffn_out)):
            handles.append(mod.register_forward_hook(observe(i, site)))
    try:
        run()
    finally:
        for h in handles:
            h.remove()
    if any(len(s) != len(SITES) for s in stats):
        raise CondenseError("calibration ran no batch through the encoder's blocks; pass calibration batches the "
                            "model's forward (or the task's run_batch) feeds to the encoder")
    return stats


def placeholder_stats(bert: nn.Module) -> list[Stats]:
    """Stats of the right shapes for rebuilding the structure before an artifact's tensors load into it."""
    out = []
    for b in bert.layers:
        widths = {"qkv": b.attn.query.in_features, "out": b.attn.out.in_features, "in": b.ffn_in.in_features,
                  "h": b.ffn_out.in_features}
        out.append({s: (-torch.ones(w), torch.arange(w, dtype=torch.float32) + 1.0) for s, w in widths.items()})
    return out


def build_packed_bert(bert: nn.Module, run: Any, cfg: Any) -> PackedInt8Bert:
    """`PACKED_ENCODERS`' builder for a BERT-like encoder: calibrated while `run()` feeds it the calibration batches,
    or (`run` None, when an artifact loads) with placeholder ranges its saved tensors then overwrite."""
    stats = placeholder_stats(bert) if run is None else calibration_stats(bert, run)
    return PackedInt8Bert(bert, stats, float_channels=cfg.float_channels, alpha=cfg.smooth_quant)
