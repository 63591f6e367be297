"""Built-in quality for Hugging Face model folders when the user gives no evaluation of their own.

- causal LMs: bits per byte on held-out standard-library text (the tinygpt measure, in any tokenizer's units);
- encoders: cosine between the model's mean-pooled embeddings and the original model's, on docstring texts, and
  the model's own retrieval (MRR@10, recall@1: find each docstring summary's body among all bodies);
- sequence classifiers: how often the predicted label is the original model's.
The last two measure agreement with the uncompressed model: a folder carries no labelled data, but any change a
compression makes shows up there. Every function takes `run(model, batch) -> tensor` (the task's own run), so
models that replaced the original (ONNX Runtime sessions, quantized modules) are scored the same way.
"""
from __future__ import annotations

import math
from typing import Any, Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from condense.errors import CondenseError
from condense.tasks.hf.text import Codec

Run = Callable[[nn.Module, Any], torch.Tensor]
EVAL_BATCH = 16


def main_output(out: Any, key: str) -> torch.Tensor:
    """The tensor a model call means: `out.<key>` of a ModelOutput (or a dict), the first item of a tuple, or `out`.

    Example:
        >>> main_output({"logits": torch.ones(1)}, "logits")
        tensor([1.])
    """
    if isinstance(out, torch.Tensor):
        return out
    if isinstance(out, dict) and key in out:  # ModelOutput is a dict too
        return out[key]
    val = getattr(out, key, None)
    if isinstance(val, torch.Tensor):
        return val
    if isinstance(out, (tuple, list)) and out and isinstance(out[0], torch.Tensor):
        return out[0]
    raise CondenseError(f"the model returned {type(out).__name__} without {key!r}; a Hugging Face task needs the "
                        f"model to return {key} (a ModelOutput, a tuple starting with it, or the tensor itself)")


def lm_windows(ids: torch.Tensor, seq_len: int, count: int) -> torch.Tensor:
    """The first `count` windows of `ids` (N,) that overlap by one token: (count, seq_len + 1).

    Window i covers ids[i*T : i*T+T+1]; together they score (predict) ids[1 : count*T+1] once each.
    """
    idx = torch.arange(count)[:, None] * seq_len + torch.arange(seq_len + 1)  # (count, T+1)
    return ids[idx]


def window_count(ids: torch.Tensor, seq_len: int, max_windows: int) -> int:
    n = min(max_windows, (ids.numel() - 1) // seq_len)
    if n < 1:
        raise CondenseError(f"evaluation needs more than {seq_len} tokens of held-out text, got {ids.numel()}; "
                            "use a smaller --task-option seq_len")
    return n


def bits_per_byte(model: nn.Module, run: Run, ids: torch.Tensor, codec: Codec, seq_len: int,
                  max_windows: int) -> dict[str, float]:
    """Mean next-token loss over held-out windows, as {"bits_per_byte", "loss" (nats per token), "tokens"}.

    Bits per byte = summed loss in bits / UTF-8 bytes of the scored tokens.
    """
    n = window_count(ids, seq_len, max_windows)
    windows = lm_windows(ids, seq_len, n)  # (n, T+1)
    total = 0.0
    for start in range(0, n, EVAL_BATCH):
        chunk = windows[start:start + EVAL_BATCH]
        x, y = chunk[:, :-1], chunk[:, 1:]  # (b, T) each
        logits = run(model, {"input_ids": x, "attention_mask": torch.ones_like(x)})  # (b, T, V)
        total += float(F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), y.reshape(-1).to(logits.device),
                                       reduction="sum"))
    tokens = n * seq_len
    n_bytes = codec.byte_count(ids[1:tokens + 1])
    return {"bits_per_byte": total / math.log(2) / n_bytes, "loss": total / tokens, "tokens": float(tokens)}


def mean_pool(hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Average the hidden states (B, T, H) over the tokens `mask` (B, T) keeps: (B, H)."""
    m = mask.to(hidden.device, hidden.dtype).unsqueeze(-1)  # (B, T, 1)
    return (hidden * m).sum(1) / m.sum(1).clamp_min(1.0)


def embeddings(model: nn.Module, run: Run, batches: Sequence[dict[str, torch.Tensor]]) -> torch.Tensor:
    """Mean-pooled embeddings of every batch, stacked: (N, H) float32 on CPU."""
    return torch.cat([mean_pool(run(model, b), b["attention_mask"]).float().cpu() for b in batches])


def embedding_agreement(emb: torch.Tensor, ref: torch.Tensor) -> dict[str, float]:
    """Cosine of each embedding (N, H) to the original model's (N, H): mean and worst."""
    if emb.shape != ref.shape:
        raise CondenseError(f"embeddings of shape {tuple(emb.shape)} cannot be compared with the original model's "
                            f"{tuple(ref.shape)}; keep the hidden size when compressing an encoder")
    cos = F.cosine_similarity(emb, ref, dim=-1)  # (N,)
    return {"embedding_cosine": float(cos.mean()), "embedding_cosine_min": float(cos.min())}


def class_logits(model: nn.Module, run: Run, batches: Sequence[dict[str, torch.Tensor]]) -> torch.Tensor:
    """Sequence-classification logits of every batch, stacked: (N, C) float32 on CPU."""
    return torch.cat([run(model, b).float().cpu() for b in batches])


def label_agreement(logits: torch.Tensor, ref: torch.Tensor) -> dict[str, float]:
    """How often the predicted label (argmax) is the original model's, and the largest logit change."""
    if logits.shape != ref.shape:
        raise CondenseError(f"logits of shape {tuple(logits.shape)} cannot be compared with the original model's "
                            f"{tuple(ref.shape)}; keep the number of labels")
    same = (logits.argmax(-1) == ref.argmax(-1)).float()
    return {"label_agreement": float(same.mean()), "max_logit_change": float((logits - ref).abs().max())}
