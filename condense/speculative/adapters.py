"""How speculative decoding drives a model family's KV cache: one adapter per model type, in a registry.

An adapter knows three things: how to start an empty cache, how to run new tokens through the model with that
cache (logits for each new token), and how to cut the cache back to its first `n` tokens (the rejected draft
tokens are forgotten). Model modules register theirs (condense's GPT in `condense.tasks.gpt`, Hugging Face causal
LMs in `condense.tasks.hf`), so this technique never imports a model.

Example:
    >>> from torch import nn
    >>> adapter_for(nn.Linear(2, 2)) is None
    True
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import torch
from torch import nn

from condense.core.registry import TypeRegistry


@dataclass(frozen=True)
class DecoderAdapter:
    """`new_cache(model, batch, max_len)`, `step(model, cache, ids) -> logits (B, T, V)` (appends `ids` to the
    cache), `crop(cache, n)` (keep the first n tokens), `length(cache)`, `max_len(model)` (positions the model
    can attend to; None = unlimited)."""

    new_cache: Callable[[nn.Module, int, int], Any]
    step: Callable[[nn.Module, Any, torch.Tensor], torch.Tensor]
    crop: Callable[[Any, int], None]
    length: Callable[[Any], int]
    max_len: Callable[[nn.Module], int | None]


DECODERS: TypeRegistry[DecoderAdapter] = TypeRegistry("decoder")


def register_decoder(model_type: type, adapter: DecoderAdapter) -> None:
    """Make speculative decoding work on models of `model_type` (and subclasses)."""
    DECODERS.register(model_type)(adapter)


def adapter_for(model: nn.Module) -> DecoderAdapter | None:
    """The adapter registered for `model`'s type (or a base class), else None (see `decode.decoder_for`, which
    also knows Hugging Face causal LMs)."""
    return DECODERS.find(model)
