"""Which kind of task a Hugging Face architecture is, read from the names in its `config.json`.

A kind decides the Auto class that loads the folder, what one batch returns (logits or hidden states) and the
built-in evaluation. The table is by class-name suffix, the convention every `transformers` architecture follows
(`LlamaForCausalLM`, `GPT2LMHeadModel`, `BertForSequenceClassification`, `BertModel`).

Example:
    >>> infer_kind("LlamaForCausalLM"), infer_kind("GPT2LMHeadModel"), infer_kind("BertModel")
    (<Kind.CAUSAL_LM: 'causal-lm'>, <Kind.CAUSAL_LM: 'causal-lm'>, <Kind.ENCODER: 'encoder'>)
"""
from __future__ import annotations

from enum import Enum

from condense.errors import CondenseError


class Kind(str, Enum):
    """What a Hugging Face model folder is evaluated and run as."""

    CAUSAL_LM = "causal-lm"  # next-token logits (B, T, V); bits per byte; decode tokens/s through `generate`
    CLASSIFIER = "classifier"  # sequence logits (B, C); label agreement with the original model
    ENCODER = "encoder"  # hidden states (B, T, H); mean-pooled embedding cosine to the original model


# kind -> the transformers Auto class that loads a folder as that kind
AUTO_CLASS: dict[Kind, str] = {
    Kind.CAUSAL_LM: "AutoModelForCausalLM",
    Kind.CLASSIFIER: "AutoModelForSequenceClassification",
    Kind.ENCODER: "AutoModel",
}

# class-name suffix -> kind, first match wins (so "LMHeadModel" is found before "Model")
_SUFFIXES: tuple[tuple[str, Kind], ...] = (
    ("ForCausalLM", Kind.CAUSAL_LM),
    ("LMHeadModel", Kind.CAUSAL_LM),
    ("ForSequenceClassification", Kind.CLASSIFIER),
    ("ForMaskedLM", Kind.ENCODER),  # a pretrained encoder checkpoint: its base model is the encoder
    ("Model", Kind.ENCODER),
)

KIND_HINT = "pass kind=causal-lm, classifier or encoder (--task-option kind=encoder)"


def parse_kind(kind: str | Kind | None) -> Kind | None:
    """`kind` as a Kind (None stays None); an unknown name raises a CondenseError listing the valid ones."""
    if kind is None or isinstance(kind, Kind):
        return kind
    try:
        return Kind(str(kind).strip().lower().replace("_", "-"))
    except ValueError:
        raise CondenseError(f"unknown Hugging Face task kind {kind!r}; choose one of: "
                            f"{', '.join(k.value for k in Kind)}") from None


def infer_kind(architecture: str) -> Kind | None:
    """The kind an architecture class name implies, or None when no rule matches (e.g. `GPT2DoubleHeadsModel`)."""
    if architecture.endswith("DoubleHeadsModel") or architecture.endswith("PreTrainedModel"):
        return None
    for suffix, kind in _SUFFIXES:
        if architecture.endswith(suffix):
            return kind
    return None
