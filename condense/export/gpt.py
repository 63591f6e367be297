"""The tinygpt decoder's export adapter: token ids (B, T) in, logits (B, T, V) out, batch and time dynamic.
condense/tasks/gpt.py registers it for `GPT`.

Why: `GPT.forward` has keyword-only options (`kv_cache`, `output_hidden_states`) that the TorchScript-based
exporter passes positionally and fails on; the adapter traces a thin module that calls `model(idx)`. The KV cache
is a Python object and stays out of the graph, so the exported model scores whole windows (evaluation), and
decoding in ONNX Runtime recomputes the prefix. `GPTKVStep` is the other export: one decode step with the cache as
tensors (see `condense.export.kvstep`), which the whole-graph weight-only runtime runs.
"""
from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from condense.errors import ConfigError

from condense.export.onnx import ExportAdapter, ExportSpec, _batch_tensors


class _LogitsOnly(nn.Module):
    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        return self.model(idx)  # (B, T, V)


class GPTAdapter(ExportAdapter):
    """`GPT`: input `idx` (int64, B x T), output `logits`; both axes dynamic."""

    def spec(self, model: nn.Module, batch: Any, *, float_channels: dict[int, list[int]] | None = None,
             packed: bool = False) -> ExportSpec:
        if float_channels:
            super().spec(model, batch, float_channels=float_channels)  # raises the shared message
        axes = {"idx": {0: "batch", 1: "time"}, "logits": {0: "batch", 1: "time"}}
        return ExportSpec(_LogitsOnly(model), ("idx",), ("logits",), axes, _batch_tensors)


class GPTKVStep(nn.Module):
    """tinygpt's decode step with the KV cache as tensors: (idx (B, T), past_k, past_v (L, B, H, P, D)) ->
    (logits (B, T, V), present_k, present_v (L, B, H, P+T, D)); the same arithmetic as `GPT.forward` with a cache.
    Every layer must have the same heads and head width (the cache is one stacked tensor)."""

    def __init__(self, gpt: nn.Module) -> None:
        super().__init__()
        shapes = {(b.attn.n_heads, b.attn.head_dim) for b in gpt.blocks}
        if len(shapes) != 1:
            raise ConfigError(f"the KV-step graph stacks every layer's cache into one tensor, but this GPT's layers "
                              f"have different (heads, head_dim): {sorted(shapes)}; prune heads uniformly or use a "
                              "per-layer kernel")
        self.g = gpt

    def forward(self, idx: torch.Tensor, past_k: torch.Tensor, past_v: torch.Tensor):
        g = self.g
        B, T = idx.shape
        P = past_k.shape[3]
        pos = torch.arange(T) + P  # (T,): positions continue after the past
        x = g.wte(idx) + g.wpe(pos)  # (B, T, C)
        mask = torch.arange(P + T)[None, :] <= (torch.arange(T)[:, None] + P)  # (T, P+T): causal after the past
        ks, vs = [], []
        for i, blk in enumerate(g.blocks):
            a = blk.attn
            H, D = a.n_heads, a.head_dim
            h = blk.ln_1(x)
            q = a.q_proj(h).view(B, T, H, D).transpose(1, 2)  # (B, H, T, D)
            k = torch.cat([past_k[i], a.k_proj(h).view(B, T, H, D).transpose(1, 2)], 2)  # (B, H, P+T, D)
            v = torch.cat([past_v[i], a.v_proj(h).view(B, T, H, D).transpose(1, 2)], 2)
            ks.append(k)
            vs.append(v)
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask).transpose(1, 2).reshape(B, T, H * D)
            x = x + a.o_proj(y)
            x = x + blk.mlp(blk.ln_2(x))
        return g.lm_head(g.ln_f(x)), torch.stack(ks), torch.stack(vs)


def gpt_past_shape(gpt: nn.Module, batch: int) -> tuple[int, ...]:
    """(L, B, H, 0, D): an empty past for `GPTKVStep`."""
    a = gpt.blocks[0].attn
    return (len(gpt.blocks), batch, a.n_heads, 0, a.head_dim)
