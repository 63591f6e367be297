"""What distillation reads from a model's output, by output type, and the batch convention it trains on.

A model call returns a tensor (condense's own models, a task's `run`), a tuple (plain modules, `return_dict=False`)
or a Hugging Face `ModelOutput` (`CausalLMOutputWithPast`, `SequenceClassifierOutput`, `BaseModelOutputWithPooling`,
...; a dict subclass holding only the fields that are set). `OUTPUT_READERS` maps the output's type to a reader
returning a `Signal`: its logits when it has them, else its last hidden states (an encoder). Register a reader for
another output type with `OUTPUT_READERS.register(MyOutput)(reader)`.

Training batches: `(inputs, target)` pairs (a 2-item tuple or list whose second item is a tensor) are labelled:
only `inputs` reaches the model, through `condense.core.task.run_batch` (a dict -> keywords, a tuple of tensors ->
positional, else one input) or the task's `run`. An integer target is a class or next-token label (cross-entropy);
a float target (regression) is scored by the task's `loss` when the task has one. Any other batch is all inputs.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import torch

from condense.core.registry import TypeRegistry
from condense.errors import CondenseError

LOGITS, HIDDEN = "logits", "hidden"


@dataclass(frozen=True)
class Signal:
    """The tensor a model output means for distillation: `kind` "logits" (..., K) or "hidden" (B, T, H) states."""

    kind: str
    tensor: torch.Tensor


OUTPUT_READERS: TypeRegistry[Callable[[Any], Signal]] = TypeRegistry("model output reader")


@OUTPUT_READERS.register(torch.Tensor)
def _tensor(out: torch.Tensor) -> Signal:
    return Signal(LOGITS, out)


@OUTPUT_READERS.register(tuple, list)
def _sequence(out: Any) -> Signal:
    if not out:
        raise CondenseError("distillation got an empty tuple from the model; it needs logits or hidden states")
    return read_output(out[0])


@OUTPUT_READERS.register(dict)  # transformers' ModelOutput is an OrderedDict of the fields that are set
def _mapping(out: dict) -> Signal:
    if isinstance(out.get("logits"), torch.Tensor):
        return Signal(LOGITS, out["logits"])
    if isinstance(out.get("last_hidden_state"), torch.Tensor):
        return Signal(HIDDEN, out["last_hidden_state"])
    raise CondenseError(f"distillation reads `logits` or `last_hidden_state` from a {type(out).__name__}, which has "
                        f"{sorted(out)}; register a reader: condense.distillation.outputs.OUTPUT_READERS.register("
                        f"{type(out).__name__})(lambda out: Signal('logits', ...))")


def read_output(out: Any) -> Signal:
    """The `Signal` of one model output, read by the reader registered for its type.

    Example:
        >>> read_output({"last_hidden_state": torch.zeros(1, 2, 3)}).kind, read_output((torch.ones(2),)).kind
        ('hidden', 'logits')
    """
    reader = OUTPUT_READERS.find(out)
    if reader is None:
        raise CondenseError(f"distillation needs a model returning logits or hidden states (a tensor, a tuple, or a "
                            f"Hugging Face ModelOutput), got {type(out).__name__}; register a reader with "
                            f"condense.distillation.outputs.OUTPUT_READERS.register({type(out).__name__})(...)")
    return reader(out)


def logits_of(out: Any) -> torch.Tensor:
    """The logits of one model output; an encoder's (hidden states only) raises naming loss='embedding'."""
    sig = read_output(out)
    if sig.kind != LOGITS:
        raise CondenseError("logit distillation needs a model returning logits, and this one returns only hidden "
                            "states (an encoder): use DistillConfig(loss='embedding') or loss='auto'")
    return sig.tensor


def split_batch(batch: Any) -> tuple[Any, torch.Tensor | None]:
    """(inputs, target or None) of one training batch, by the convention in this module's docstring.

    Example:
        >>> x, y = split_batch((torch.ones(2, 3), torch.zeros(2)))
        >>> tuple(x.shape), y.dtype
        ((2, 3), torch.float32)
        >>> split_batch({"input_ids": 1})[1] is None
        True
    """
    if isinstance(batch, (tuple, list)) and len(batch) == 2 and isinstance(batch[1], torch.Tensor):
        return batch[0], batch[1]
    return batch, None


def mean_pooled(hidden: torch.Tensor, inputs: Any) -> torch.Tensor:
    """Sentence embeddings (B, H): `hidden` (B, T, H) averaged over the tokens the inputs' `attention_mask` keeps
    (all tokens without one); a (B, H) tensor is already one embedding per row."""
    if hidden.dim() == 2:
        return hidden
    mask = inputs.get("attention_mask") if isinstance(inputs, dict) else None
    if mask is None:
        return hidden.mean(1)
    m = mask.to(hidden.device, hidden.dtype).unsqueeze(-1)  # (B, T, 1)
    return (hidden * m).sum(1) / m.sum(1).clamp_min(1.0)


def default_embed(run: Callable[[Any, Any], Any]) -> Callable[[Any, Any], torch.Tensor]:
    """`embed(model, inputs) -> (B, H)`: the mean-pooled last hidden states of `run(model, inputs)`, the embedding
    of a Hugging Face encoder (sentence-transformers' default pooling) when its task declares none."""
    def embed(model: Any, inputs: Any) -> torch.Tensor:
        return mean_pooled(read_output(run(model, inputs)).tensor, inputs)

    return embed
