"""The export adapter of BERT sentence encoders (a `.bert` with `.layers` of attention + FFN blocks, mean pooled).

Why: `torch.onnx.export` traces whatever `forward` does, and the graph it writes decides what ONNX Runtime can
fuse. Our BERT calls `scaled_dot_product_attention` with a boolean mask, which exports as a Where/IsNaN chain that
ONNX Runtime's BERT fuser does not recognise; this adapter traces the same weights through the textbook attention
(additive -10000 mask, explicit softmax), which fuses into ORT's `Attention` op. Parity with the real PyTorch
`forward` is measured on every export, so the adapter cannot drift unnoticed. Tokenisation stays in Python: the
graph takes `(input_ids, attention_mask)`.

The model's own module registers it (condense/tasks/encoder.py: `EXPORT_ADAPTERS.register(SentenceEncoder)`).
"""
from __future__ import annotations

import math
from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import nn

from condense.core.text import mean_pool
from condense.export.onnx import ExportAdapter, ExportSpec


# -- the sentence encoder's adapter -----------------------------------------------------------------------------
class _FusableAttention(nn.Module):
    """Our SelfAttention's weights through the textbook attention that ORT's BERT fuser recognises."""

    def __init__(self, attn: nn.Module) -> None:
        super().__init__()
        self.attn = attn

    def forward(self, x: torch.Tensor, bias: torch.Tensor, pack: Callable | None = None,
                unpack: Callable | None = None) -> torch.Tensor:
        """(B, T, C) -> (B, T, C); or, with `pack`/`unpack` (see _EncoderGraph), packed (1, N, C) -> (1, N, C)."""
        a = self.attn
        B, T = bias.shape[0], bias.shape[-1]
        nh, hd = a.n_heads, a.head_dim
        q, k, v = a.query(x), a.key(x), a.value(x)  # (B, T, nh*hd), or (1, N, nh*hd) packed
        if unpack is not None:
            q, k, v = unpack(q), unpack(k), unpack(v)  # (B, T, nh*hd)
        q = q.view(B, T, nh, hd).permute(0, 2, 1, 3)  # (B, nh, T, hd)
        k = k.view(B, T, nh, hd).permute(0, 2, 1, 3)  # (B, nh, T, hd)
        v = v.view(B, T, nh, hd).permute(0, 2, 1, 3)  # (B, nh, T, hd)
        scores = torch.matmul(q, k.transpose(-1, -2)) / math.sqrt(hd) + bias  # (B, nh, T, T)
        y = torch.matmul(scores.softmax(dim=-1), v)  # (B, nh, T, hd)
        y = y.permute(0, 2, 1, 3).contiguous().view(B, T, nh * hd)  # (B, T, nh*hd)
        if pack is not None:
            y = pack(y)  # (1, N, nh*hd)
        return a.out(y)  # (B, T, C), or (1, N, C) packed


def _linear_part(lin: nn.Linear, *, rows: list[int] | None = None, cols: list[int] | None = None,
                 zero_rows: list[int] | None = None, bias: bool = True) -> nn.Linear:
    """A new Linear holding a slice of `lin` (rows = outputs, cols = inputs), or `lin` with some outputs zeroed."""
    w = lin.weight.detach().clone()
    b = lin.bias.detach().clone() if lin.bias is not None and bias else None
    if zero_rows:
        w[zero_rows] = 0.0
        if b is not None:
            b[zero_rows] = 0.0
    if rows is not None:
        w, b = w[rows], (b[rows] if b is not None else None)
    if cols is not None:
        w = w[:, cols]
    out = nn.Linear(w.shape[1], w.shape[0], bias=b is not None)
    with torch.no_grad():
        out.weight.copy_(w)
        if b is not None:
            out.bias.copy_(b)
    return out


class _EncoderGraph(nn.Module):
    """SentenceEncoder.forward (ids, mask) -> unit embeddings, written so ORT fuses attention, LayerNorm, GELU.

    With `float_channels`, each listed FFN hidden channel is taken out of the main (to-be-int8) path: its row of
    `ffn_in` is zeroed (GELU(0) = 0, so `ffn_out` sees 0 there) and a small float side path computes it exactly,
    LLM.int8()-style. The int8 matmuls' per-tensor activation scale is then no longer set by an outlier.

    With `packed`, padding is dropped inside the graph: after the embeddings the real tokens of the batch are
    gathered into one (1, N, C) tensor, every token-wise layer (projections, FFN, LayerNorm, GELU) runs on those N rows
    only, and only attention scatters them back to the (B, T) layout (a Gather by each slot's packed index; padded
    slots get a copy of a real row, which the -10000 mask bias hides from every query). A batch of short texts
    padded to its longest one does 2-3x less work; padded slots no longer enter the per-tensor int8 activation
    scales either. The embeddings are the same numbers either way (same ops per row).
    """

    def __init__(self, encoder: nn.Module, float_channels: dict[int, list[int]] | None = None,
                 packed: bool = False) -> None:
        super().__init__()
        self.encoder = encoder
        self.packed = packed
        self.attn = nn.ModuleList(_FusableAttention(b.attn) for b in encoder.bert.layers)
        self.split = sorted(int(i) for i, ch in (float_channels or {}).items() if ch)
        self.ffn_in, self.side_in, self.side_out = nn.ModuleList(), nn.ModuleList(), nn.ModuleList()
        for i, b in enumerate(encoder.bert.layers):
            ch = list((float_channels or {}).get(i, []))
            if ch:
                self.ffn_in.append(_linear_part(b.ffn_in, zero_rows=ch))
                self.side_in.append(_linear_part(b.ffn_in, rows=ch))
                self.side_out.append(_linear_part(b.ffn_out, cols=ch, bias=False))
            else:
                self.ffn_in.append(b.ffn_in)
                self.side_in.append(nn.Identity())
                self.side_out.append(nn.Identity())

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        bert = self.encoder.bert
        bias = (1.0 - attention_mask[:, None, None, :].to(torch.float32)) * -10000.0  # (B, 1, 1, T)
        x = bert.embeddings(input_ids)  # (B, T, C)
        pack = unpack = None
        if self.packed:
            B, T = input_ids.shape
            flat = attention_mask.reshape(-1).to(torch.int64)  # (B*T,)
            rows = torch.nonzero(flat).squeeze(1)  # (N,) the real tokens' slots
            slots = (torch.cumsum(flat, 0) - 1).clamp(min=0)  # (B*T,) each slot's row in the packed matrix

            # packed rows keep a leading axis of 1: Linear on a 3-d input exports as MatMul + Add (a 2-d one as
            # Gemm, which ORT's quantizer rewrites under new node names, so layers kept in float would be missed)
            def pack(t: torch.Tensor) -> torch.Tensor:  # (B, T, D) -> (1, N, D)
                return t.reshape(1, B * T, t.shape[-1]).index_select(1, rows)

            def unpack(t: torch.Tensor) -> torch.Tensor:  # (1, N, D) -> (B, T, D)
                return t.index_select(1, slots).view(B, T, t.shape[-1])

            x = pack(x)  # (1, N, C)
        for i, (block, attn) in enumerate(zip(bert.layers, self.attn)):
            x = block.attn_norm(x + attn(x, bias, pack, unpack))  # (B, T, C), or (1, N, C) packed
            y = block.ffn_out(F.gelu(self.ffn_in[i](x)))
            if i in self.split:
                y = y + self.side_out[i](F.gelu(self.side_in[i](x)))  # the float outlier channels
            x = block.ffn_norm(x + y)
        if unpack is not None:
            x = unpack(x)  # (B, T, C); padded slots are left out by the mask below
        return mean_pool(x, attention_mask)  # (B, C)


class EncoderAdapter(ExportAdapter):
    """The minilm SentenceEncoder: (input_ids, attention_mask) in, embeddings out; tokenisation stays in Python."""

    def spec(self, model: nn.Module, batch: Any, *, float_channels: dict[int, list[int]] | None = None,
             packed: bool = False) -> ExportSpec:
        layers = list(model.bert.layers)
        heads = {(b.attn.n_heads, b.attn.head_dim) for b in layers}
        fusion = None
        if len(heads) == 1 and (h := next(iter(heads)))[0] * h[1] == model.dim:  # ORT's Attention: uniform heads
            fusion = {"model_type": "bert", "num_heads": h[0], "hidden_size": model.dim}
        axes = {"input_ids": {0: "batch", 1: "sequence"}, "attention_mask": {0: "batch", 1: "sequence"},
                "embeddings": {0: "batch"}}
        graph = _EncoderGraph(model, float_channels, packed)
        side = [m.weight.detach().numpy() for m in list(graph.side_in) + list(graph.side_out)
                if isinstance(m, nn.Linear)]
        return ExportSpec(graph, ("input_ids", "attention_mask"), ("embeddings",), axes,
                          lambda texts: tuple(model.tokenize(texts)), fusion, side)

    def outlier_channels(self, model: nn.Module, run: Callable[[nn.Module], None], k: int) -> dict[int, list[int]]:
        """Per block, the `k` FFN hidden channels (ffn_out inputs) with the largest |activation| seen by `run`."""
        peaks: dict[int, torch.Tensor] = {}

        def hook(i: int) -> Callable:
            def h(mod: nn.Module, inp: tuple) -> None:
                a = inp[0].detach().abs().reshape(-1, inp[0].shape[-1]).amax(dim=0)  # (I,)
                peaks[i] = a if i not in peaks else torch.maximum(peaks[i], a)
            return h

        handles = [b.ffn_out.register_forward_pre_hook(hook(i)) for i, b in enumerate(model.bert.layers)]
        try:
            run(model)
        finally:
            for hd in handles:
                hd.remove()
        return {i: sorted(p.argsort(descending=True)[:k].tolist()) for i, p in sorted(peaks.items())}
