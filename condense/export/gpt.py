"""The tinygpt decoder's export adapter: token ids (B, T) in, logits (B, T, V) out, batch and time dynamic.
condense/tasks/gpt.py registers it for `GPT`.

Why: `GPT.forward` has keyword-only options (`kv_cache`, `output_hidden_states`) that the TorchScript-based
exporter passes positionally and fails on; the adapter traces a thin module that calls `model(idx)`. The KV cache
is a Python object and stays out of the graph, so the exported model scores whole windows (evaluation), and
decoding in ONNX Runtime recomputes the prefix.
"""
from __future__ import annotations

from typing import Any

import torch
from torch import nn

from condense.export.onnx import ExportAdapter, ExportSpec, _batch_tensors


class _LogitsOnly(nn.Module):
    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        return self.model(idx)  # (B, T, V)


class GPTAdapter(ExportAdapter):
    """`GPT`: input `idx` (int64, B x T), output `logits`; both axes dynamic."""

    def spec(self, model: nn.Module, batch: Any, *, float_channels: dict[int, list[int]] | None = None,
             packed: bool = False) -> ExportSpec:
        if float_channels:
            super().spec(model, batch, float_channels=float_channels)  # raises the shared message
        axes = {"idx": {0: "batch", 1: "time"}, "logits": {0: "batch", 1: "time"}}
        return ExportSpec(_LogitsOnly(model), ("idx",), ("logits",), axes, _batch_tensors)
