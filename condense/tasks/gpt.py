"""A small decoder-only byte-level transformer (nanoGPT style) with a KV cache for generation.

Why this shape: every projection is a plain, separate `nn.Linear` (q/k/v/o, fc_in/fc_out, an untied lm_head),
so quantization can swap any of them and pruning can shrink them. Each attention layer keeps its own `n_heads`
and `head_dim`, and each MLP its own width (read from its Linears), so a pruned layer with fewer heads or a
narrower MLP still runs.

Shapes: B batch, T time (tokens), C n_embd, H heads of a layer, D head_dim, V vocab (256 bytes).

Example:
    >>> import torch
    >>> from condense.tasks.gpt import GPT, GPTConfig, generate
    >>> model = GPT(GPTConfig(block_size=16, n_layer=1, n_head=2, n_embd=8)).eval()
    >>> model(torch.zeros(2, 5, dtype=torch.long)).shape
    torch.Size([2, 5, 256])
    >>> generate(model, torch.zeros(1, 3, dtype=torch.long), 4).shape
    torch.Size([1, 7])
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from condense.errors import CondenseError
from condense.quantize.weight_only.linear import SharedInputLinears


@dataclass(frozen=True)
class GPTConfig:
    """Architecture of a `GPT`.

    Example:
        >>> GPTConfig(block_size=64, n_layer=2, n_head=2, n_embd=32).head_dim
        16
    """

    block_size: int = 128
    n_layer: int = 4
    n_head: int = 4
    n_embd: int = 192
    vocab_size: int = 256
    mlp_ratio: int = 4

    def __post_init__(self) -> None:
        for name in ("block_size", "n_layer", "n_head", "n_embd", "vocab_size", "mlp_ratio"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise CondenseError(f"GPTConfig.{name} must be a positive integer, got {v!r}")
        if self.n_embd % self.n_head:
            raise CondenseError(f"GPTConfig.n_embd ({self.n_embd}) must be divisible by n_head ({self.n_head}); "
                                f"e.g. n_embd={self.n_head * max(1, round(self.n_embd / self.n_head))}")

    @property
    def head_dim(self) -> int:
        """Width of one attention head."""
        return self.n_embd // self.n_head


class KVCache:
    """Keys and values of earlier tokens, one (B, H, T, D) pair per layer, so decoding attends to them.

    Buffers are allocated on a layer's first update (its own H and D, dtype and device) with room for `max_len`
    tokens; `length` is how many tokens are stored.

    Example:
        >>> cache = KVCache(n_layer=1, max_len=8)
        >>> k, v = cache.update(0, torch.ones(1, 2, 3, 4), torch.ones(1, 2, 3, 4))
        >>> k.shape, cache.length
        (torch.Size([1, 2, 3, 4]), 3)
    """

    def __init__(self, n_layer: int, max_len: int):
        self.max_len = max_len
        self._k: list[torch.Tensor | None] = [None] * n_layer
        self._v: list[torch.Tensor | None] = [None] * n_layer
        self._len = [0] * n_layer

    @property
    def length(self) -> int:
        """Tokens stored (in the first layer; all layers agree between forward calls)."""
        return self._len[0]

    def crop(self, n: int) -> None:
        """Forget every token after the first `n` (speculative decoding drops rejected draft tokens)."""
        self._len = [min(length, n) for length in self._len]

    def layer_length(self, layer: int) -> int:
        """Tokens stored for `layer` (ahead of `length` while a forward pass is filling the layers)."""
        return self._len[layer]

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Append `k`, `v` (B, H, T, D) for `layer`; returns all keys and values so far (B, H, T_total, D)."""
        start, t = self._len[layer], k.shape[2]
        if start + t > self.max_len:
            raise CondenseError(f"KV cache holds {self.max_len} tokens, {start + t} requested; "
                                "start a new cache (generate() does this for you)")
        if self._k[layer] is None:
            b, h, _, d = k.shape
            self._k[layer] = k.new_empty(b, h, self.max_len, d)
            self._v[layer] = v.new_empty(b, h, self.max_len, v.shape[3])
        kb, vb = self._k[layer], self._v[layer]
        kb.narrow(2, start, t).copy_(k)  # narrow: one op where slice assignment dispatches several per call
        vb.narrow(2, start, t).copy_(v)
        self._len[layer] = start + t
        return kb.narrow(2, 0, start + t), vb.narrow(2, 0, start + t)


class CausalSelfAttention(nn.Module):
    """Multi-head causal self-attention with separate q/k/v/o projections and its own head count."""

    def __init__(self, n_embd: int, n_heads: int, head_dim: int):
        super().__init__()
        self.n_heads = n_heads  # read at run time: a pruned layer may have fewer heads than the config
        self.head_dim = head_dim
        inner = n_heads * head_dim
        self.q_proj = nn.Linear(n_embd, inner)
        self.k_proj = nn.Linear(n_embd, inner)
        self.v_proj = nn.Linear(n_embd, inner)
        self.o_proj = nn.Linear(inner, n_embd)
        self.qkv = SharedInputLinears()  # q/k/v as one low-bit matmul where that is exact (not a module: unsaved)

    def forward(self, x: torch.Tensor, cache: KVCache | None = None, layer: int = 0) -> torch.Tensor:
        """(B, T, C) -> (B, T, C); with `cache`, attends to the `layer`'s cached keys and values too."""
        B, T, _ = x.shape
        H, D = self.n_heads, self.head_dim
        qkv = self.__dict__.get("qkv") or self.__dict__.setdefault("qkv", SharedInputLinears())  # older pickles
        q, k, v = qkv((self.q_proj, self.k_proj, self.v_proj), x)  # (B, T, H*D) each
        if q.shape[-1] != H * D:
            raise CondenseError(f"attention projections give {q.shape[-1]} features but n_heads*head_dim = "
                                f"{H}*{D}; after removing heads, set attn.n_heads to the heads kept")
        q = q.view(B, T, H, D).transpose(1, 2)  # (B, H, T, D)
        k = k.view(B, T, H, D).transpose(1, 2)
        v = v.view(B, T, H, D).transpose(1, 2)
        y = causal_attention(q, k, v, cache, layer).transpose(1, 2).reshape(B, T, H * D)  # (B, T, H*D)
        return self.o_proj(y)  # (B, T, C)


def causal_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, cache: "KVCache | None" = None,
                     layer: int = 0) -> torch.Tensor:
    """Causal attention of (B, H, T, D) queries over keys/values, the `layer`'s cached ones first -> (B, H, T, D).

    Example:
        >>> q = torch.randn(1, 2, 3, 4)
        >>> torch.allclose(causal_attention(q, q, q), F.scaled_dot_product_attention(q, q, q, is_causal=True))
        True
    """
    T, past = q.shape[2], 0
    if cache is not None:
        past = cache.layer_length(layer)
        k, v = cache.update(layer, k, v)  # (B, H, past+T, D)
    if past == 0:
        return F.scaled_dot_product_attention(q, k, v, is_causal=True)
    if T == 1:  # one new token attends to everything cached
        return F.scaled_dot_product_attention(q, k, v)
    # a chunk after a cached prefix: query i sees keys up to past+i
    mask = torch.ones(T, past + T, dtype=torch.bool, device=q.device).tril(diagonal=past)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask)


class MLP(nn.Module):
    """Two Linears with a GELU; the hidden width is whatever `fc_in` produces (pruning may shrink it)."""

    def __init__(self, n_embd: int, hidden: int):
        super().__init__()
        self.fc_in = nn.Linear(n_embd, hidden)
        self.act = nn.GELU()
        self.fc_out = nn.Linear(hidden, n_embd)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, T, C) -> (B, T, C)."""
        return self.fc_out(self.act(self.fc_in(x)))  # (B, T, C) -> (B, T, hidden) -> (B, T, C)


class Block(nn.Module):
    """Pre-norm transformer block: x + attn(ln_1(x)), then x + mlp(ln_2(x))."""

    def __init__(self, cfg: GPTConfig):
        super().__init__()
        self.ln_1 = nn.LayerNorm(cfg.n_embd)
        self.attn = CausalSelfAttention(cfg.n_embd, cfg.n_head, cfg.head_dim)
        self.ln_2 = nn.LayerNorm(cfg.n_embd)
        self.mlp = MLP(cfg.n_embd, cfg.mlp_ratio * cfg.n_embd)

    def forward(self, x: torch.Tensor, cache: KVCache | None = None, layer: int = 0) -> torch.Tensor:
        """(B, T, C) -> (B, T, C)."""
        x = x + self.attn(self.ln_1(x), cache, layer)
        return x + self.mlp(self.ln_2(x))


class GPT(nn.Module):
    """Decoder-only byte-level language model.

    `forward(idx)` returns logits (B, T, V). With `targets` it returns `(logits, loss)` (mean cross-entropy in
    nats); with `output_hidden_states=True` a tuple of hidden states (B, T, C) is appended: the embeddings and
    each block's output, n_layer + 1 in all. Pass a `KVCache` to reuse earlier tokens' keys and values;
    positions continue from `kv_cache.length`.

    Example:
        >>> m = GPT(GPTConfig(block_size=8, n_layer=2, n_head=2, n_embd=8))
        >>> logits, loss = m(torch.zeros(1, 4, dtype=torch.long), torch.zeros(1, 4, dtype=torch.long))
        >>> logits.shape, loss.dim()
        (torch.Size([1, 4, 256]), 0)
    """

    def __init__(self, cfg: GPTConfig):
        super().__init__()
        self.config = cfg
        self.wte = nn.Embedding(cfg.vocab_size, cfg.n_embd)
        self.wpe = nn.Embedding(cfg.block_size, cfg.n_embd)
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.n_layer))
        self.ln_f = nn.LayerNorm(cfg.n_embd)
        self.lm_head = nn.Linear(cfg.n_embd, cfg.vocab_size, bias=False)  # untied from wte
        self.apply(self._init_weights)
        for block in self.blocks:  # GPT-2: scale residual projections by depth
            for lin in (block.attn.o_proj, block.mlp.fc_out):
                nn.init.normal_(lin.weight, mean=0.0, std=0.02 / math.sqrt(2 * cfg.n_layer))

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)
        if isinstance(module, nn.Linear) and module.bias is not None:
            nn.init.zeros_(module.bias)

    def forward(self, idx: torch.Tensor, targets: torch.Tensor | None = None, *, kv_cache: KVCache | None = None,
                output_hidden_states: bool = False):
        """Logits (B, T, V) for token ids `idx` (B, T); see the class docstring for the other outputs."""
        B, T = idx.shape
        start = kv_cache.length if kv_cache is not None else 0
        if start + T > self.config.block_size:
            raise CondenseError(f"sequence of {start + T} tokens is longer than block_size "
                                f"{self.config.block_size}; pass at most the last {self.config.block_size} tokens")
        pos = torch.arange(start, start + T, device=idx.device)  # (T,)
        x = self.wte(idx) + self.wpe(pos)  # (B, T, C)
        hidden = [x] if output_hidden_states else None
        for i, block in enumerate(self.blocks):
            x = block(x, kv_cache, i)  # (B, T, C)
            if hidden is not None:
                hidden.append(x)
        logits = self.lm_head(self.ln_f(x))  # (B, T, V)
        out: tuple = (logits,)
        if targets is not None:
            loss = F.cross_entropy(logits.reshape(B * T, -1).float(), targets.reshape(B * T))
            out += (loss,)
        if hidden is not None:
            out += (tuple(hidden),)
        return out[0] if len(out) == 1 else out


def num_params(model: nn.Module) -> int:
    """Number of parameters of `model` (tensors counted once)."""
    return sum(p.numel() for p in model.parameters())


def generate(model: GPT, idx: torch.Tensor, max_new_tokens: int, *, use_cache: bool = True,
             temperature: float = 0.0, top_k: int | None = None,
             generator: torch.Generator | None = None) -> torch.Tensor:
    """Extend `idx` (B, T) by `max_new_tokens` tokens; returns (B, T + max_new_tokens).

    `temperature=0` is greedy (argmax). Greedy output is the same with and without the cache while the whole
    sequence fits in `block_size`; past it, the no-cache path slides a `block_size` window one token at a time
    while the cached path restarts its cache from the last `block_size // 2` tokens.

    Example:
        >>> m = GPT(GPTConfig(block_size=16, n_layer=1, n_head=1, n_embd=8)).eval()
        >>> x = torch.tensor([[1, 2, 3]])
        >>> bool((generate(m, x, 5) == generate(m, x, 5, use_cache=False)).all())
        True

    The loop runs under `torch.inference_mode` (about 9% less dispatch per decode step than `no_grad` on
    tinygpt-large at 4 bits); the result is returned as an ordinary tensor unless the caller is in inference mode.
    """
    if max_new_tokens < 0:
        raise CondenseError(f"max_new_tokens must be >= 0, got {max_new_tokens}")
    if temperature < 0:
        raise CondenseError(f"temperature must be >= 0 (0 = greedy), got {temperature}")
    if idx.dim() != 2 or idx.shape[1] < 1:
        raise CondenseError(f"generate needs a (batch, time) prompt of at least one token, got {tuple(idx.shape)}")
    if torch.is_inference_mode_enabled():
        return _generate(model, idx, max_new_tokens, use_cache, temperature, top_k, generator)
    with torch.inference_mode():
        out = _generate(model, idx, max_new_tokens, use_cache, temperature, top_k, generator)
    return out.clone()  # an ordinary tensor: callers may write into it outside inference mode


def _generate(model: GPT, idx: torch.Tensor, max_new_tokens: int, use_cache: bool, temperature: float,
              top_k: int | None, generator: torch.Generator | None) -> torch.Tensor:
    """`generate`'s loop, after its checks."""
    fast = getattr(model, "greedy_decode", None)  # a runtime with its own greedy loop (e.g. `OrtGraphLM`)
    if fast is not None and use_cache and temperature == 0:
        out = fast(idx, max_new_tokens)
        if out is not None:
            return out.to(idx.device, idx.dtype)
    block = model.config.block_size
    n_layer = len(model.blocks)
    cache: KVCache | None = None
    for _ in range(max_new_tokens):
        if not use_cache:
            logits = model(idx[:, -block:])  # (B, T, V)
        elif cache is None or cache.length >= block:  # (re)start: prefill with the most recent tokens
            keep = idx.shape[1] if cache is None and idx.shape[1] <= block else max(1, block // 2)
            cache = KVCache(n_layer, block)
            logits = model(idx[:, -keep:], kv_cache=cache)
        else:
            logits = model(idx[:, -1:], kv_cache=cache)  # (B, 1, V)
        logits = logits[:, -1, :].float()  # (B, V)
        if temperature == 0:
            nxt = logits.argmax(dim=-1, keepdim=True)  # (B, 1)
        else:
            logits = logits / temperature
            if top_k is not None:
                kth = torch.topk(logits, min(top_k, logits.shape[-1])).values[:, -1:]  # (B, 1)
                logits = logits.masked_fill(logits < kth, float("-inf"))
            nxt = torch.multinomial(F.softmax(logits, dim=-1), 1, generator=generator)  # (B, 1)
        idx = torch.cat([idx, nxt.to(idx.dtype)], dim=1)
    return idx


# -- what techniques need to know about this model (registered here: techniques never import tasks) ---------------
def _register() -> None:
    from functools import partial

    from condense.early_exit.model import SPLITTERS, split_gpt
    from condense.export.gpt import GPTAdapter, GPTKVStep, gpt_past_shape
    from condense.export.kvstep import KV_STEP_ADAPTERS, KVStepAdapter
    from condense.export.onnx import EXPORT_ADAPTERS
    from condense.fusion.api import FUSERS
    from condense.fusion.gpt import FusedBlock
    from condense.speculative import DecoderAdapter, register_decoder

    FUSERS.register(Block)(partial(FusedBlock.from_block, attention=causal_attention))
    register_decoder(GPT, DecoderAdapter(new_cache=lambda m, b, n: KVCache(len(m.blocks), n),
                                         step=lambda m, cache, ids: m(ids, kv_cache=cache),
                                         crop=KVCache.crop, length=lambda cache: cache.length,
                                         max_len=lambda m: m.config.block_size))
    SPLITTERS.register(GPT)(split_gpt)
    EXPORT_ADAPTERS.register(GPT)(GPTAdapter())
    KV_STEP_ADAPTERS.register(GPT)(KVStepAdapter(
        step=GPTKVStep, past_shape=gpt_past_shape, max_len=lambda m: m.config.block_size,
        cache_length=lambda cache: cache.length,
        set_cache_length=lambda cache, n: setattr(cache, "_len", [n] * len(cache._len))))


_register()
