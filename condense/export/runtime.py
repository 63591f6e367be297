"""ONNX Runtime as a transform: `OnnxRuntimeConfig` swaps a model for its ONNX graph run by ONNX Runtime
(`OrtModule`, from condense.export.session), and `OrtSentenceEncoder` gives the graph a sentence encoder's
`encode`/`tokenize` API, so tasks, `measure` and the pipeline use an ORT model exactly like the PyTorch one.

Which wrapper a model gets is its own module's business: `ORT_WRAPPERS` maps a model type to a function building
the wrapper (the minilm `SentenceEncoder` registers `OrtSentenceEncoder.from_encoder` in condense/tasks/encoder.py).

Saved artifacts hold the ONNX model bytes as one uint8 tensor (`ModelBytesCodec`); loading replays the transform
on the task's skeleton (its registered replay) to get the wrapper back, then the codec restores the graph.
"""
from __future__ import annotations

from typing import Any, Callable

import torch
from torch import nn

from condense.core import lineage
from condense.core.artifact import CODECS, TensorCodec
from condense.core.config import config
from condense.core.registry import TypeRegistry
from condense.core.text import TextEncoderAPI
from condense.core.transforms import TransformContext, register_family, register_transform
from condense.errors import CondenseError
from condense.export.keywords import KeywordGraph
from condense.export.onnx import (EXPORTER_KEY, check_opset, graph_metadata, export_spec, fuse_transformer, onnx_bytes, onnx_macs, onnx_weights,
                                  parity)
from condense.export.session import (DISABLED_OPTIMIZERS_KEY, OrtModule, disabled_optimizers,  # noqa: F401
                                     import_onnxruntime, make_session, refuse_external_data, session_feeds,
                                     with_disabled_optimizers)
from condense.measurement.counts import PARAM_VIEWS
from condense.measurement.macs import MAC_COUNTERS

class OrtSentenceEncoder(TextEncoderAPI, nn.Module):
    """A sentence encoder whose (input_ids, attention_mask) -> embeddings graph runs in ONNX Runtime.

    Same API as `SentenceEncoder` (`encode`, `tokenize`, `forward`, `dim`); tokenisation stays in Python.
    """

    def __init__(self, graph: OrtModule, tokenizer: Any, max_seq_length: int, dim: int) -> None:
        super().__init__()
        self.graph = graph
        self.tokenizer = tokenizer
        self.max_seq_length = max_seq_length
        self.dim = dim

    @classmethod
    def from_encoder(cls, encoder: nn.Module, graph: OrtModule) -> "OrtSentenceEncoder":
        """Wrap `graph` with a copy of `encoder`'s tokenizer (same truncation and padding)."""
        import copy

        return cls(graph, copy.deepcopy(encoder.tokenizer), encoder.max_seq_length, encoder.dim)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """(B, T) ids and mask -> (B, C) unit-length embeddings."""
        return self.graph(input_ids, attention_mask)

    def device(self) -> torch.device:
        """Inputs go to the CPU (ONNX Runtime's CPU provider)."""
        return torch.device("cpu")


# source module type -> fn(source, graph) -> the module that replaces the source (default: the OrtModule);
# registered by the module defining the model type (e.g. condense/tasks/encoder.py).
ORT_WRAPPERS: TypeRegistry[Callable[[nn.Module, OrtModule], nn.Module]] = TypeRegistry("ONNX Runtime wrapper")


def wrap(source: nn.Module, graph: OrtModule) -> nn.Module:
    """The module that runs `graph` in place of `source` (with the same user-facing API)."""
    fn = ORT_WRAPPERS.find(source)
    return graph if fn is None else fn(source, graph)


class ModelBytesCodec(TensorCodec):
    """A runtime module's serialized model (`m.<attr>`: bytes) as one uint8 tensor named `attr`; loading hands the
    bytes back through `m.set_model`. Serves every runtime module (ONNX Runtime here, LiteRT in litert_runtime)."""

    def __init__(self, attr: str, runtime: str):
        self.attr, self.runtime = attr, runtime

    def export(self, m: nn.Module) -> dict[str, torch.Tensor]:
        return {self.attr: torch.frombuffer(bytearray(getattr(m, self.attr)), dtype=torch.uint8)}

    def load(self, m: nn.Module, t: dict[str, torch.Tensor]) -> None:
        if self.attr not in t:
            raise CondenseError(f"the artifact has no {self.runtime} model for this {self.runtime} module; re-save it")
        m.set_model(t[self.attr].numpy().tobytes())


CODECS.register(OrtModule)(ModelBytesCodec("onnx_model", "ONNX Runtime"))


def _weights_view(m: OrtModule) -> dict[str, torch.Tensor]:
    return {k.replace(".", "_"): torch.from_numpy(v.copy()) for k, v in onnx_weights(m.onnx_model).items()}


PARAM_VIEWS.register(OrtModule)(_weights_view)


def _ort_macs(m: OrtModule, inputs: tuple, out: Any) -> int:
    """MACs of one ORT call, counted from the graph with these input shapes (cached per shapes)."""
    import warnings

    key = tuple(tuple(t.shape) for t in inputs)
    cache = m.__dict__.setdefault("_macs_cache", {})
    if key not in cache:
        cache[key] = onnx_macs(m.onnx_model, list(key))
    macs, missing = cache[key]
    if missing:
        warnings.warn(f"MACs of {len(missing)} ONNX node(s) could not be counted (shapes unknown after fusion): "
                      f"{missing[:4]}; the MAC count is a lower bound", stacklevel=2)
    return macs


MAC_COUNTERS.register(OrtModule)(_ort_macs)


# -- the transform: run a model on ONNX Runtime (fp32) -----------------------------------------------------------
@config
class OnnxRuntimeConfig:
    """Run the model in ONNX Runtime (fp32): export to ONNX, optionally fuse transformer ops, swap it in.

    Args:
        opset: ONNX opset (17 or 18).
        optimize: run ONNX Runtime's transformer fusions (attention, SkipLayerNorm, GELU) on BERT-like models.

    Example:
        >>> OnnxRuntimeConfig(opset=18).to_dict()["opset"]
        18
    """

    opset: int = 17
    optimize: bool = False

    def __post_init__(self) -> None:
            check_opset(self.opset)


def example_batch(ctx: TransformContext, what: str) -> Any:
    """A small batch to trace with: the task's (2 samples), else the first calibration batch."""
    if ctx.task is not None:
        return ctx.task.batch(2)
    return ctx.calibration_batches(1, what=what)[0]


def build_ort(model: nn.Module, batch: Any, *, opset: int, optimize: bool,
              post: Callable[[bytes, Any], tuple[bytes, dict]] | None = None,
              fusion_hints: dict[str, Any] | None = None,
              float_channels: dict[int, list[int]] | None = None, packed: bool = False
              ) -> tuple[nn.Module, dict[str, Any]]:
    """Export `model`, optionally fuse, optionally post-process the bytes (e.g. quantize), and wrap for ORT.

    `post(data, spec)` returns (new bytes, details); `fusion_hints` override the adapter's fuser hints
    (num_heads, hidden_size); `float_channels` and `packed` (padding dropped inside the graph) are passed to the
    export adapter. Returns (the ORT-backed module, JSON-able details: opset, inputs, fusions, whether the graph
    is packed, bytes, parity vs `model`).
    """
    spec = export_spec(model, batch, float_channels=float_channels, packed=packed)
    inputs = spec.to_inputs(batch)
    data = onnx_bytes(spec, inputs, opset=opset)
    details: dict[str, Any] = {"opset": opset, "inputs": list(spec.input_names), "outputs": list(spec.output_names),
                               "exporter": graph_metadata(data).get(EXPORTER_KEY), "fusions": {},
                               "packed": bool(getattr(spec.module, "packed", False))}
    if optimize:
        fusion = dict(spec.fusion, **fusion_hints) if spec.fusion and fusion_hints else spec.fusion
        data, details["fusions"] = fuse_transformer(data, fusion)
    if post is not None:
        data, extra = post(data, spec)
        details.update(extra)
    graph = OrtModule(data)
    details["parity_vs_torch"] = parity(spec.module if isinstance(spec.module, KeywordGraph) else model, graph,
                                        inputs)
    details["onnx_bytes"] = len(data)
    new = wrap(model, graph)
    lineage.copy_lineage(model, new)
    return new, details


def replay_ort(model: nn.Module) -> nn.Module:
    """The wrapper for `model` around an empty OrtModule; the artifact loader then fills in the graph."""
    new = wrap(model, OrtModule())
    lineage.copy_lineage(model, new)
    return new


def to_onnx_runtime(model: nn.Module, cfg: OnnxRuntimeConfig, ctx: TransformContext) -> nn.Module:
    """Export `model` and return the ORT-backed module that replaces it."""
    new, details = build_ort(model, example_batch(ctx, "OnnxRuntimeConfig"), opset=cfg.opset,
                             optimize=cfg.optimize)
    ctx.record(**details)
    return new


def _replay(model: nn.Module, cfg: OnnxRuntimeConfig, details: dict) -> nn.Module:
    return replay_ort(model)


# -- registered transforms ----------------------------------------------------------------------------------------
register_family("export", key="format", default="onnx", noun="export config")
register_transform(OnnxRuntimeConfig, family="export", name="onnx", replay=_replay)(to_onnx_runtime)
