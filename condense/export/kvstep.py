"""A decoder's step with its KV cache as graph inputs/outputs, exported to ONNX and run by ONNX Runtime.

Why: decoding one token at a time in PyTorch pays Python and dispatch overhead around every matmul; ONNX Runtime
runs the whole step (every layer, attention and the cache concatenation) as one graph call. The step is one module
`(idx (B, T), past_k, past_v) -> (logits (B, T, V), present_k, present_v)`, with past/present stacked over layers
(L, B, H, P, D), so one graph serves prefill (P = 0), decode steps (T = 1) and whole windows (evaluation).

Which module computes a model's step is the model module's business: `KV_STEP_ADAPTERS` maps a model type to a
`KVStepAdapter` (condense/tasks/gpt.py registers tinygpt's `GPT`, with the step of condense/export/gpt.py).
Hugging Face causal LMs have none yet: their cache classes and attention-mask code differ per architecture, and
`kv_step_adapter` says so when asked.
"""
from __future__ import annotations

import io
import warnings
from dataclasses import dataclass
from typing import Any, Callable

import torch
from torch import nn

from condense.core.registry import TypeRegistry
from condense.errors import ConfigError

STEP_INPUTS = ("idx", "past_k", "past_v")
STEP_OUTPUTS = ("logits", "present_k", "present_v")


@dataclass(frozen=True)
class KVStepAdapter:
    """How a decoder type runs as one KV-step graph.

    Args:
        step: model -> the step module `(idx, past_k, past_v) -> (logits, present_k, present_v)`, sharing the
            model's layers (so layers swapped in the model are what the export traces).
        past_shape: (model, batch) -> the shape of an empty past (L, B, H, 0, D).
        max_len: model -> the most tokens the model attends over (positions beyond it do not exist).
        cache_length: a cache object of the model's own decode loop -> tokens it holds.
        set_cache_length: (cache, n) -> None: the graph extended (or cropped) the cache to `n` tokens.
    """

    step: Callable[[nn.Module], nn.Module]
    past_shape: Callable[[nn.Module, int], tuple[int, ...]]
    max_len: Callable[[nn.Module], int]
    cache_length: Callable[[Any], int]
    set_cache_length: Callable[[Any, int], None]


KV_STEP_ADAPTERS: TypeRegistry[KVStepAdapter] = TypeRegistry("KV-step adapter")


def kv_step_adapter(model: nn.Module, what: str) -> KVStepAdapter:
    """The model's `KVStepAdapter`, or a ConfigError naming the fix (what has one, what to use instead)."""
    adapter = KV_STEP_ADAPTERS.find(model)
    if adapter is None:
        have = ", ".join(t.__name__ for t in KV_STEP_ADAPTERS.types()) or "none"
        raise ConfigError(f"{what} runs the whole decode step as one ONNX Runtime graph, which needs a KV-step "
                          f"adapter for {type(model).__name__} (registered for: {have}; Hugging Face causal LMs "
                          "have none yet); use a per-layer kernel instead (kernel='auto', 'ort-nbits' or "
                          "'torch-int4'), or register one in condense.export.kvstep.KV_STEP_ADAPTERS")
    return adapter


def export_kv_step(model: nn.Module, *, opset: int = 17, custom_opsets: dict[str, int] | None = None) -> bytes:
    """The serialised ONNX graph of the model's KV step (weights inline), batch, time and past length dynamic.

    Traced by torch's TorchScript exporter (`dynamo=False`), which honours `torch.autograd.Function.symbolic`, so a
    layer may emit a custom-domain node (e.g. com.microsoft MatMulNBits, listed in `custom_opsets`).
    """
    adapter = kv_step_adapter(model, "exporting the KV step")
    step = adapter.step(model).eval()
    empty = torch.zeros(adapter.past_shape(model, 1))
    idx = torch.zeros(1, min(4, adapter.max_len(model)), dtype=torch.long)
    axes = {"idx": {0: "batch", 1: "time"}, "past_k": {1: "batch", 3: "past"}, "past_v": {1: "batch", 3: "past"},
            "logits": {0: "batch", 1: "time"}, "present_k": {1: "batch", 3: "total"},
            "present_v": {1: "batch", 3: "total"}}
    buf = io.BytesIO()
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # tracer warnings about python ints from shapes are expected
        torch.onnx.export(step, (idx, empty, empty), buf, dynamo=False, opset_version=opset,
                          input_names=list(STEP_INPUTS), output_names=list(STEP_OUTPUTS), dynamic_axes=axes,
                          custom_opsets=custom_opsets or {})
    return buf.getvalue()
