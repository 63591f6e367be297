"""Greedy speculative decoding: the draft proposes `k` tokens, the target checks them all in one forward pass.

Each round: the draft extends the sequence by `k` greedy tokens (k cheap forward passes); the target runs the last
accepted token plus the `k` drafted ones at once and keeps the drafted tokens up to the first one it would not have
chosen itself, then adds its own choice at that position. Every token kept is the target's own greedy choice, so
the output is the target's greedy output, token for token; a draft that agrees often makes it faster, because one
target pass over k+1 tokens costs about as much as one over a single token when decoding is memory-bound. Rejected
tokens are cut from both KV caches (`DecoderAdapter.crop`). Batches work too: a round keeps the drafted tokens that
every row accepted, and each row then gets the target's choice at that position.

Example:
    >>> import torch
    >>> from condense.tasks.gpt import GPT, GPTConfig, generate
    >>> torch.manual_seed(0) and None
    >>> target = GPT(GPTConfig(block_size=32, n_layer=2, n_head=2, n_embd=16)).eval()
    >>> x = torch.tensor([[1, 2, 3]])
    >>> out, stats = speculative_generate(target, target, x, 8, k=3)
    >>> bool((out == generate(target, x, 8)).all()), stats.acceptance_rate
    (True, 1.0)
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import nn

from condense.errors import ConfigError
from condense.speculative.adapters import DecoderAdapter, adapter_for
from condense.speculative.hf import HF_DECODER, is_hf_causal_lm


@dataclass
class SpeculativeStats:
    """What a speculative generation did: tokens drafted and accepted, forward passes of each model."""

    new_tokens: int = 0
    drafted: int = 0
    accepted: int = 0
    target_calls: int = 0
    draft_calls: int = 0

    @property
    def acceptance_rate(self) -> float:
        """Share of the drafted tokens the target kept."""
        return self.accepted / self.drafted if self.drafted else 0.0

    @property
    def tokens_per_target_call(self) -> float:
        return self.new_tokens / self.target_calls if self.target_calls else 0.0

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "acceptance_rate": self.acceptance_rate,
                "tokens_per_target_call": self.tokens_per_target_call}


def decoder_for(model: nn.Module) -> DecoderAdapter | None:
    """The registered adapter of `model`'s type, else the Hugging Face one for a causal LM, else None."""
    found = adapter_for(model)
    return found if found is not None or not is_hf_causal_lm(model) else HF_DECODER


def _adapter(model: nn.Module, role: str) -> DecoderAdapter:
    a = decoder_for(model)
    if a is None:
        raise ConfigError(f"speculative decoding does not know how to drive the KV cache of the {role} "
                          f"({type(model).__name__}); register a DecoderAdapter for it with "
                          "condense.speculative.register_decoder")
    return a


@torch.no_grad()
def speculative_generate(target: nn.Module, draft: nn.Module, idx: torch.Tensor, max_new_tokens: int, *,
                         k: int = 4) -> tuple[torch.Tensor, SpeculativeStats]:
    """Extend `idx` (B, T) by `max_new_tokens` greedy tokens of `target`, drafted `k` at a time by `draft`.

    Returns (B, T + max_new_tokens) token ids, equal to the target's own greedy generation, and the stats.
    """
    if k < 1:
        raise ConfigError(f"speculative decoding needs k >= 1 drafted tokens per round, got k={k}")
    if max_new_tokens < 0:
        raise ConfigError(f"max_new_tokens must be >= 0, got {max_new_tokens}")
    if idx.dim() != 2 or idx.shape[1] < 1:
        raise ConfigError(f"speculative decoding needs a (batch, time) prompt of at least one token, got "
                          f"{tuple(idx.shape)}")
    ta, da = _adapter(target, "target"), _adapter(draft, "draft")
    total = idx.shape[1] + max_new_tokens
    limits = [n for n in (ta.max_len(target), da.max_len(draft)) if n is not None]
    if limits and total + k > min(limits):
        raise ConfigError(f"prompt ({idx.shape[1]}) + new tokens ({max_new_tokens}) + k ({k}) exceed the "
                          f"{min(limits)} positions the models attend to; generate fewer tokens or use a shorter "
                          "prompt")
    stats = SpeculativeStats()
    if max_new_tokens == 0:
        return idx, stats
    B = idx.shape[0]
    tc, dc = ta.new_cache(target, B, total + k), da.new_cache(draft, B, total + k)
    logits = ta.step(target, tc, idx)  # prefill: the target's cache holds the prompt
    stats.target_calls += 1
    seq = torch.cat([idx, logits[:, -1:].argmax(-1).to(idx.dtype)], 1)
    produced = 1
    while produced < max_new_tokens:
        kk = min(k, max_new_tokens - produced)
        drafted = []
        dl = da.step(draft, dc, seq[:, da.length(dc):])  # the tokens the draft has not seen yet
        stats.draft_calls += 1
        for j in range(kk):
            drafted.append(dl[:, -1:].argmax(-1).to(idx.dtype))
            if j < kk - 1:
                dl = da.step(draft, dc, drafted[-1])
                stats.draft_calls += 1
        d = torch.cat(drafted, 1)  # (B, kk)
        old = seq.shape[1]
        tl = ta.step(target, tc, torch.cat([seq[:, ta.length(tc):], d], 1))
        stats.target_calls += 1
        pred = tl[:, -(kk + 1):].argmax(-1).to(idx.dtype)  # (B, kk+1): the target's choice after each prefix
        n = int((pred[:, :kk] == d).int().cumprod(1).sum(1).min())  # drafted tokens every row accepts
        seq = torch.cat([seq, d[:, :n], pred[:, n:n + 1]], 1)
        ta.crop(tc, seq.shape[1] - 1)  # keep what the target saw up to the last accepted token
        da.crop(dc, min(da.length(dc), old + n))
        stats.drafted += kk
        stats.accepted += n
        produced += n + 1
    stats.new_tokens = max_new_tokens * B
    return seq[:, :total], stats
