"""What every text encoder shares: batches of text pairs, mean pooling, and the `tokenize`/`encode` API.

The sentence encoder task's model, its ONNX Runtime and LiteRT stand-ins (condense.export) and embedding
distillation (condense.distillation) all use these, so they live below both techniques and tasks.
"""
from __future__ import annotations

from typing import NamedTuple, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from condense.errors import CondenseError


class TextPairs(NamedTuple):
    """A training batch of aligned text pairs: `documents[i]` goes with `queries[i]` (e.g. a docstring's summary
    sentence and the rest of it). Encoder losses treat the other documents of the batch as negatives.

    Example:
        >>> b = TextPairs(["Return the sum."], ["Adds the numbers of an iterable."])
        >>> len(b.queries) == len(b.documents)
        True
    """

    queries: list[str]
    documents: list[str]


def mean_pool(hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """(B, T, C) hidden states, (B, T) mask -> (B, C) L2-normalised mean over the real tokens (sentence-transformers).

    Example:
        >>> h, m = torch.ones(1, 3, 2), torch.tensor([[1, 1, 0]])
        >>> mean_pool(h, m)
        tensor([[0.7071, 0.7071]])
    """
    m = attention_mask.unsqueeze(-1).to(hidden.dtype)  # (B, T, 1)
    pooled = (hidden * m).sum(dim=1) / m.sum(dim=1).clamp(min=1e-9)  # (B, C)
    return F.normalize(pooled, p=2, dim=1)  # (B, C)


def pooled_embeddings(encoder: torch.nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor
                      ) -> torch.Tensor:
    """`mean_pool(encoder(ids, mask), mask)`; an encoder that computes on its real tokens only (e.g. the packed
    int8 BERT of `OneDnnInt8Config`) pools them itself through its `mean_pooled(ids, mask)`, without building the
    padded (B, T, C) hidden states first.

    Example:
        >>> class Ones(torch.nn.Module):
        ...     def forward(self, ids, mask): return torch.ones(*ids.shape, 2)
        >>> pooled_embeddings(Ones(), torch.zeros(1, 3, dtype=torch.long), torch.tensor([[1, 1, 0]]))
        tensor([[0.7071, 0.7071]])
    """
    own = getattr(encoder, "mean_pooled", None)
    if own is not None:
        return own(input_ids, attention_mask)
    return mean_pool(encoder(input_ids, attention_mask), attention_mask)


class TextEncoderAPI:
    """`tokenize` and `encode` for a module with `tokenizer` (a `tokenizers.Tokenizer`), `dim`, `device()` and
    `forward(input_ids, attention_mask) -> (B, C)` embeddings: mixed into every sentence encoder."""

    def tokenize(self, texts: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """Texts -> (input_ids, attention_mask), LongTensors (B, T) padded to the longest text in the batch."""
        texts = check_texts(texts)
        encs = self.tokenizer.encode_batch(texts)
        # through numpy: torch.tensor on nested Python lists is several times slower for a batch of long texts
        ids = torch.from_numpy(np.array([e.ids for e in encs], dtype=np.int64))  # (B, T)
        mask = torch.from_numpy(np.array([e.attention_mask for e in encs], dtype=np.int64))  # (B, T)
        return ids, mask

    def encode(self, texts: Sequence[str], batch_size: int = 32) -> np.ndarray:
        """Embed texts in batches (longest first, less padding) -> float32 array (n, C), in the input order."""
        texts = check_texts(texts)
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise CondenseError(f"batch_size must be a positive integer, got {batch_size!r}; e.g. 32")
        out = np.zeros((len(texts), self.dim), dtype=np.float32)  # type: ignore[attr-defined]
        order = sorted(range(len(texts)), key=lambda i: -len(texts[i]))  # stable: ties keep input order
        dev = self.device()  # type: ignore[attr-defined]
        with torch.inference_mode():
            for s in range(0, len(texts), batch_size):
                idx = order[s:s + batch_size]
                ids, mask = self.tokenize([texts[i] for i in idx])
                emb = self(ids.to(dev), mask.to(dev))  # type: ignore[operator]  (b, C)
                out[idx] = emb.float().cpu().numpy()
        return out


def check_texts(texts: Sequence[str]) -> list[str]:
    """`texts` as a list, or a CondenseError naming the fix for one string or a non-string item."""
    if isinstance(texts, str):
        raise CondenseError("pass a list of strings, not one string; e.g. encode([text])")
    texts = list(texts)
    bad = [type(t).__name__ for t in texts if not isinstance(t, str)]
    if bad:
        raise CondenseError(f"texts must all be str, got {bad[0]}; convert them with str(...) first")
    return texts
