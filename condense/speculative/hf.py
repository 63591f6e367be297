"""The decoder adapter for Hugging Face causal LMs (anything with `prepare_inputs_for_generation`): a
`transformers.DynamicCache`, positions taken from the cache's length, `DynamicCache.crop` to forget tokens."""
from __future__ import annotations

import functools
import inspect
from typing import Any

import torch
from torch import nn

from condense.speculative.adapters import DecoderAdapter


def _new_cache(model: nn.Module, batch: int, max_len: int) -> Any:
    from transformers import DynamicCache

    return DynamicCache()


@functools.lru_cache(maxsize=None)
def _cache_argument(model_type: type) -> str:
    """transformers >= 5.25 names the argument `cache` (`past_key_values` is deprecated there); read once per type."""
    return "cache" if "cache" in inspect.signature(model_type.forward).parameters else "past_key_values"


def _step(model: nn.Module, cache: Any, ids: torch.Tensor) -> torch.Tensor:
    return model(input_ids=ids, use_cache=True, **{_cache_argument(type(model)): cache}).logits


def _crop(cache: Any, n: int) -> None:
    """Keep the first `n` tokens (a negative count removes tokens in every transformers version)."""
    extra = cache.get_seq_length() - n
    if extra > 0:
        cache.crop(-extra)


def _max_len(model: nn.Module) -> int | None:
    cfg = getattr(model, "config", None)
    return getattr(cfg, "max_position_embeddings", None) or getattr(cfg, "n_positions", None)


HF_DECODER = DecoderAdapter(new_cache=_new_cache, step=_step, crop=_crop,
                            length=lambda cache: cache.get_seq_length(), max_len=_max_len)


def is_hf_causal_lm(model: nn.Module) -> bool:
    return callable(getattr(model, "prepare_inputs_for_generation", None)) and hasattr(model, "config")
