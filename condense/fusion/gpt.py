"""A leaner block for the tinygpt decoder: the same math with fewer calls per token.

Why: decoding one token at batch 1 multiplies (1, C) vectors by small matrices; each of the ~12 module calls and
~25 ops per block costs more in Python and dispatch overhead than in arithmetic (profiled: ~0.11 ms per block per
token on 2 CPU threads, of which little is math). `FusedBlock` computes q, k and v with one matmul (weights
concatenated), calls the functional ops directly on its parameters instead of going through child modules'
`__call__`, and keeps everything else (pre-norm, KV cache, causal SDPA, GELU MLP) identical, so outputs match the
original block to float rounding. Parameters stay in `nn.Linear`/`nn.LayerNorm` children so the state dict,
counting and saving work as before.

condense/tasks/gpt.py registers `FusedBlock.from_block` for its `Block` in `condense.fusion.api.FUSERS`, with its
own `causal_attention` (this module knows no model: it reads the block's Linears and LayerNorms).
"""
from __future__ import annotations

from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import nn

from condense.errors import ConfigError

# fn(q, k, v, cache, layer) -> (B, H, T, D): the model's own causal attention (KV cache included)
Attention = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, Any, int], torch.Tensor]


def _linear(mod: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """A plain Linear without its module call; anything else (e.g. a quantized Linear swapped in later) as usual."""
    return F.linear(x, mod.weight, mod.bias) if type(mod) is nn.Linear else mod(x)


class FusedBlock(nn.Module):
    """Pre-norm transformer block with one fused q/k/v projection; a drop-in replacement for `gpt.Block`."""

    def __init__(self, n_embd: int, n_heads: int, head_dim: int, hidden: int, *, attention: Attention) -> None:
        super().__init__()
        inner = n_heads * head_dim
        self.n_heads, self.head_dim = n_heads, head_dim
        self.attention = attention  # a function, not a module: no state
        self.ln_1 = nn.LayerNorm(n_embd)
        self.qkv = nn.Linear(n_embd, 3 * inner)
        self.o_proj = nn.Linear(inner, n_embd)
        self.ln_2 = nn.LayerNorm(n_embd)
        self.fc_in = nn.Linear(n_embd, hidden)
        self.fc_out = nn.Linear(hidden, n_embd)

    @classmethod
    def from_block(cls, block: nn.Module, *, attention: Attention) -> "FusedBlock":
        """The fused equivalent of `block` (weights copied, q/k/v concatenated), attending with `attention`."""
        a, m = block.attn, block.mlp
        lins = (a.q_proj, a.k_proj, a.v_proj, a.o_proj, m.fc_in, m.fc_out)
        if any(type(x) is not nn.Linear for x in lins) or not isinstance(m.act, nn.GELU) \
                or m.act.approximate != "none":
            raise ConfigError("FuseConfig fuses plain float blocks: apply it before quantization (its Linears are "
                              f"{sorted({type(x).__name__ for x in lins})})")
        if any(x.bias is None for x in lins):
            raise ConfigError("FuseConfig expects biased Linears, as gpt.Block builds them")
        new = cls(block.ln_1.normalized_shape[0], a.n_heads, a.head_dim, m.fc_in.out_features, attention=attention)
        new.to(device=a.q_proj.weight.device, dtype=a.q_proj.weight.dtype)
        with torch.no_grad():
            new.qkv.weight.copy_(torch.cat([a.q_proj.weight, a.k_proj.weight, a.v_proj.weight]))
            new.qkv.bias.copy_(torch.cat([a.q_proj.bias, a.k_proj.bias, a.v_proj.bias]))
            for name, src in (("ln_1", block.ln_1), ("ln_2", block.ln_2), ("o_proj", a.o_proj),
                              ("fc_in", m.fc_in), ("fc_out", m.fc_out)):
                getattr(new, name).load_state_dict(src.state_dict())
        return new

    def forward(self, x: torch.Tensor, cache: Any = None, layer: int = 0) -> torch.Tensor:
        """(B, T, C) -> (B, T, C); with `cache`, attends to the `layer`'s cached keys and values too."""
        B, T, _ = x.shape
        H, D = self.n_heads, self.head_dim
        h = F.layer_norm(x, self.ln_1.normalized_shape, self.ln_1.weight, self.ln_1.bias, self.ln_1.eps)
        qkv = _linear(self.qkv, h).view(B, T, 3, H, D).permute(2, 0, 3, 1, 4)  # (3, B, H, T, D)
        q, k, v = qkv[0], qkv[1], qkv[2]
        y = self.attention(q, k, v, cache, layer)  # (B, H, T, D)
        x = x + _linear(self.o_proj, y.transpose(1, 2).reshape(B, T, H * D))
        h = F.layer_norm(x, self.ln_2.normalized_shape, self.ln_2.weight, self.ln_2.bias, self.ln_2.eps)
        return x + _linear(self.fc_out, F.gelu(_linear(self.fc_in, h)))
