"""Text to token ids for a Hugging Face model: its own tokenizer, or bytes when the folder has none.

Byte ids are `byte % vocab_size`, so any model takes them (a model with fewer than 256 tokens sees some bytes
share an id); bits per byte then counts one byte per token. With a real tokenizer, bits per byte divides the
summed loss by the UTF-8 bytes of the scored tokens, so numbers compare across tokenizers.

Example:
    >>> codec = Codec(vocab_size=100)
    >>> codec.encode("ab"), codec.describe()
    ([97, 98], 'byte ids (UTF-8 bytes modulo the vocabulary of 100)')
"""
from __future__ import annotations

from typing import Any, Sequence

import torch

from condense.data.stdlib_source import corpus
from condense.errors import CondenseError


class Codec:
    """Encodes text for one model: `tokenizer` (a transformers tokenizer) or None for byte ids."""

    def __init__(self, vocab_size: int, tokenizer: Any = None):
        self.vocab_size = vocab_size
        self.tokenizer = tokenizer
        pad = getattr(tokenizer, "pad_token_id", None) if tokenizer is not None else None
        self.pad_id = pad if isinstance(pad, int) and 0 <= pad < vocab_size else 0
        self._corpus: dict[tuple[str, int], torch.Tensor] = {}

    def describe(self) -> str:
        if self.tokenizer is None:
            return f"byte ids (UTF-8 bytes modulo the vocabulary of {self.vocab_size})"
        return f"the folder's tokenizer ({type(self.tokenizer).__name__})"

    def encode(self, text: str) -> list[int]:
        """Token ids of `text`, without special tokens."""
        if self.tokenizer is None:
            return [b % self.vocab_size for b in text.encode("utf-8")]
        ids = list(self.tokenizer(text, add_special_tokens=False, verbose=False)["input_ids"])
        if ids and max(ids) >= self.vocab_size:
            raise CondenseError(f"the folder's tokenizer makes id {max(ids)}, beyond the model's vocabulary of "
                                f"{self.vocab_size}; fix the folder or use --task-option tokenizer=bytes")
        return ids

    def byte_count(self, ids: torch.Tensor) -> int:
        """How many UTF-8 bytes of text the token ids `ids` (1-D) stand for."""
        if self.tokenizer is None:
            return int(ids.numel())
        text = self.tokenizer.decode(ids.tolist(), clean_up_tokenization_spaces=False)
        return max(1, len(text.encode("utf-8")))

    def corpus_ids(self, split: str, max_bytes: int) -> torch.Tensor:
        """The standard-library `split` text ("train" or held-out "val"), first `max_bytes` bytes, as ids (N,)."""
        key = (split, max_bytes)
        if key not in self._corpus:
            if self.tokenizer is None:
                data = torch.from_numpy(corpus(split, max_bytes).copy()).long() % self.vocab_size
            else:
                data = torch.tensor(self.encode(corpus(split, max_bytes).tobytes().decode("utf-8", "replace")),
                                    dtype=torch.long)
            self._corpus[key] = data
        return self._corpus[key]

    def texts_batch(self, texts: Sequence[str], seq_len: int) -> dict[str, torch.Tensor]:
        """`texts` as one padded batch {"input_ids", "attention_mask"}: (B, seq_len) each, cut to `seq_len`."""
        ids = torch.full((len(texts), seq_len), self.pad_id, dtype=torch.long)  # (B, T)
        mask = torch.zeros((len(texts), seq_len), dtype=torch.long)  # (B, T)
        for i, text in enumerate(texts):
            if self.tokenizer is None:
                row = self.encode(text)[:seq_len]
            else:  # with the special tokens the model was trained with ([CLS] ... [SEP] for BERT)
                row = list(self.tokenizer(text, truncation=True, max_length=seq_len)["input_ids"])
            row = row or [self.pad_id]
            ids[i, :len(row)] = torch.tensor(row, dtype=torch.long)
            mask[i, :len(row)] = 1
        return {"input_ids": ids, "attention_mask": mask}
