"""Greedy speculative decoding: the draft proposes `k` tokens, the target checks them all in one forward pass.

Each round: the draft extends the sequence by `k` greedy tokens (k cheap forward passes); the target runs the last
accepted token plus the `k` drafted ones at once and keeps the drafted tokens up to the first one it would not have
chosen itself, then adds its own choice at that position. Every token kept is the target's own greedy choice, so
the output is the target's greedy output, token for token; a draft that agrees often makes it faster, because one
target pass over k+1 tokens costs about as much as one over a single token when decoding is memory-bound. Rejected
tokens are cut from both KV caches (`DecoderAdapter.crop`). Batches work too: a round keeps the drafted tokens that
every row accepted, and each row then gets the target's choice at that position.

How many tokens to draft is a trade: each one costs a draft pass and widens the target's pass, and is worth it
only if accepted. `schedule="heuristic"` adapts `k` between rounds as transformers' assisted generation does
(`num_assistant_tokens_schedule="heuristic"`): +2 after a round the target accepted whole, -1 (down to 1) after a
rejection, at most `max_k`; `min_confidence` ends a round's drafting early once the draft's probability for the
token it just drafted falls below it (transformers' `assistant_confidence_threshold`). Neither changes the output.

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
from typing import Any, Callable

import torch
from torch import nn

from condense.errors import ConfigError
from condense.speculative.adapters import DecoderAdapter, adapter_for
from condense.speculative.hf import HF_DECODER, is_hf_causal_lm


@dataclass
class SpeculativeStats:
    """What a speculative generation did: tokens drafted and accepted, forward passes of each model, rounds."""

    new_tokens: int = 0
    drafted: int = 0
    accepted: int = 0
    target_calls: int = 0
    draft_calls: int = 0
    rounds: int = 0

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


# How many tokens the next round drafts, from this round's k, tokens drafted and tokens accepted.
SCHEDULES: dict[str, Callable[[int, int, int], int]] = {
    "constant": lambda k, drafted, accepted: k,
    "heuristic": lambda k, drafted, accepted: k + 2 if accepted == drafted else max(1, k - 1),
}


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


def _check(k: int, max_new_tokens: int, idx: torch.Tensor, schedule: str, max_k: int,
           min_confidence: float) -> None:
    if k < 1:
        raise ConfigError(f"speculative decoding needs k >= 1 drafted tokens per round, got k={k}")
    if max_k < k:
        raise ConfigError(f"max_k ({max_k}) must be >= k ({k}); raise max_k or lower k")
    if schedule not in SCHEDULES:
        raise ConfigError(f"unknown draft schedule {schedule!r}; choose one of {sorted(SCHEDULES)}")
    if not 0.0 <= min_confidence < 1.0:
        raise ConfigError(f"min_confidence is a probability in [0, 1) (0 = always draft k tokens), got "
                          f"{min_confidence}")
    if max_new_tokens < 0:
        raise ConfigError(f"max_new_tokens must be >= 0, got {max_new_tokens}")
    if idx.dim() != 2 or idx.shape[1] < 1:
        raise ConfigError(f"speculative decoding needs a (batch, time) prompt of at least one token, got "
                          f"{tuple(idx.shape)}")


@torch.no_grad()
def speculative_generate(target: nn.Module, draft: nn.Module, idx: torch.Tensor, max_new_tokens: int, *,
                         k: int = 4, schedule: str = "constant", max_k: int | None = None,
                         min_confidence: float = 0.0) -> tuple[torch.Tensor, SpeculativeStats]:
    """Extend `idx` (B, T) by `max_new_tokens` greedy tokens of `target`, drafted `k` at a time by `draft`.

    Args:
        k: tokens drafted per round (the first round's, with `schedule="heuristic"`).
        schedule: "constant" (k every round) or "heuristic" (k + 2 after a fully accepted round, k - 1 after a
            rejection; see SCHEDULES).
        max_k: the most tokens a round drafts (default: k for "constant", 2 * k + 2 for "heuristic").
        min_confidence: stop a round's drafting after a token the draft gave less than this probability (in
            any row of the batch); 0 turns it off.

    Returns (B, T + max_new_tokens) token ids, equal to the target's own greedy generation, and the stats.
    """
    max_k = max_k if max_k is not None else (k if schedule == "constant" else 2 * k + 2)
    _check(k, max_new_tokens, idx, schedule, max_k, min_confidence)
    ta, da = _adapter(target, "target"), _adapter(draft, "draft")
    T0 = idx.shape[1]
    total = T0 + max_new_tokens
    limits = [n for n in (ta.max_len(target), da.max_len(draft)) if n is not None]
    if limits and total + k > min(limits):
        raise ConfigError(f"prompt ({T0}) + new tokens ({max_new_tokens}) + k ({k}) exceed the "
                          f"{min(limits)} positions the models attend to; generate fewer tokens or use a shorter "
                          "prompt")
    stats = SpeculativeStats()
    if max_new_tokens == 0:
        return idx, stats
    B = idx.shape[0]
    # a round never runs past `total` tokens (it drafts at most what is left), so caches of `total` suffice
    tc, dc = ta.new_cache(target, B, total + k), da.new_cache(draft, B, total + k)
    seq = idx.new_empty(B, total)  # (B, total): filled up to `n`, no re-allocation per round
    seq[:, :T0] = idx
    logits = ta.step(target, tc, idx)  # prefill: the target's cache holds the prompt
    stats.target_calls += 1
    seq[:, T0] = logits[:, -1].argmax(-1)
    n, next_k, step = T0 + 1, k, SCHEDULES[schedule]
    while n < total:
        kk = min(next_k, total - n)
        dl = da.step(draft, dc, seq[:, da.length(dc):n])  # the tokens the draft has not seen yet
        stats.draft_calls += 1
        drafted = 0
        while True:
            last = dl[:, -1]  # (B, V)
            seq[:, n + drafted] = last.argmax(-1)
            drafted += 1
            if drafted == kk or (min_confidence > 0 and
                                 float(last.float().softmax(-1).amax(-1).min()) < min_confidence):
                break
            dl = da.step(draft, dc, seq[:, n + drafted - 1:n + drafted])
            stats.draft_calls += 1
        d = seq[:, n:n + drafted]  # (B, drafted)
        tl = ta.step(target, tc, seq[:, ta.length(tc):n + drafted])
        stats.target_calls += 1
        pred = tl[:, -(drafted + 1):].argmax(-1).to(idx.dtype)  # (B, drafted+1): the target's choice per prefix
        acc = int((pred[:, :drafted] == d).int().cumprod(1).sum(1).min())  # drafted tokens every row accepts
        if n + acc < total:  # the target's own token after the accepted ones (a correction or a bonus)
            seq[:, n + acc] = pred[:, acc]
        ta.crop(tc, n + acc)  # keep what the target saw up to the last accepted token
        da.crop(dc, min(da.length(dc), n + acc))
        stats.drafted += drafted
        stats.accepted += acc
        stats.rounds += 1
        n += acc + 1
        next_k = min(max_k, step(kk, drafted, acc))
    stats.new_tokens = max_new_tokens * B
    return seq, stats
