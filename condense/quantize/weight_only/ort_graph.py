"""Whole-graph decoding of a weight-only model in ONNX Runtime: `WeightOnlyConfig(kernel="ort-graph-a8")`.

Why: the per-layer kernels (`kernels`) run each packed matmul fast, but a decode step still pays Python and torch
dispatch around every one of them; on tinygpt-large that capped 4-bit decode at ~2.6-2.9x fp32, while ONNX
Runtime running the whole step as one graph reached 4.5x with its own (RTN, worse-quality GPTQ) weights. Here the
model's own step (its `KVStepAdapter`, see condense.export.kvstep) is exported with every `WeightOnlyLinear`
emitting one com.microsoft `MatMulNBits` node whose packed weights, scales and zero points are condense's exact
integers (`kernels.matmul_nbits_inputs`, the layout the one-node `ort-nbits` kernel uses): RTN, GPTQ and AWQ
weights run unchanged.

    ort-graph     MatMulNBits accuracy_level=0: float32 activations (w = (q - z) * s exactly).
    ort-graph-a8  accuracy_level=4: ONNX Runtime quantizes each block of activations to int8 and multiplies
                  integers (the fast CPU setting; ~0.5% of the output's scale, see kernels.OrtNBitsA8).

`OrtGraphLM` replaces the model: it keeps the quantized model as its child `model` (what the artifact saves,
packed, so loading never re-quantizes) and builds the graph from it on first use (rebuilt on load). Its forward
follows the causal-LM convention of the adapted model: `forward(idx, targets=None, *, kv_cache=None)`, so the
model's own `generate` decode loop (and the task's decode measurement) run on the graph, prefill and steps alike;
the cache object holds the graph's present keys/values.
Layers MatMulNBits cannot take (group size not a power of two >= 16) run in the graph as float MatMuls of their
dequantized weight, warned and recorded.
"""
from __future__ import annotations

import copy
import warnings
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from condense.core import lineage
from condense.errors import CondenseError, ConfigError
from condense.export.kvstep import export_kv_step, kv_step_adapter
from condense.export.session import make_session
from condense.measurement.macs import MAC_COUNTERS
from condense.quantize.weight_only.kernels import DEQUANTIZE, OrtNBits, matmul_nbits_inputs
from condense.quantize.weight_only.linear import WeightOnlyLinear

GRAPH_KERNELS = {"ort-graph": 0, "ort-graph-a8": 4}  # kernel name -> MatMulNBits accuracy_level


class _MatMulNBits(torch.autograd.Function):
    """Traced as one com.microsoft MatMulNBits node; the eager value (zeros) only gives the tracer the shape."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, b: torch.Tensor, scales: torch.Tensor, zeros: torch.Tensor,
                attrs: tuple[int, ...]) -> torch.Tensor:
        return x.new_zeros(*x.shape[:-1], attrs[1])  # (..., N)

    @staticmethod
    def symbolic(g: Any, x: Any, b: Any, scales: Any, zeros: Any, attrs: tuple[int, ...]) -> Any:
        k, n, bits, block, level = attrs
        y = g.op("com.microsoft::MatMulNBits", x, b, scales, zeros, K_i=k, N_i=n, bits_i=bits,
                 block_size_i=block, accuracy_level_i=level)
        sizes = x.type().varyingSizes()  # (..., K) with None for dynamic axes
        if sizes is not None:  # tell the exporter the output's type (it cannot infer a custom op's)
            y.setType(x.type().with_sizes([*sizes[:-1], n]))
        return y


class _GraphLinear(nn.Module):
    """A `WeightOnlyLinear` as the export sees it: input scale and column permutation as graph ops, then
    MatMulNBits on the packed integers, then the bias."""

    def __init__(self, layer: WeightOnlyLinear, accuracy_level: int) -> None:
        super().__init__()
        arrays, attrs = matmul_nbits_inputs(layer.quantized())
        for name, t in arrays.items():
            self.register_buffer(name, t)
        self.attrs = (attrs["K"], attrs["N"], attrs["bits"], attrs["block_size"], accuracy_level)
        self.register_buffer("bias", None if layer.bias is None else layer.bias.detach().float())  # an initializer
        self.perm = None if layer.perm is None else layer.perm.long()
        self.input_scale = None if layer.input_scale is None else layer.input_scale.float()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.input_scale is not None:
            x = x * self.input_scale
        if self.perm is not None:
            x = x.index_select(-1, self.perm)  # stored column order
        y = _MatMulNBits.apply(x, self.B, self.scales, self.zero_points, self.attrs)
        return y if self.bias is None else y + self.bias


def _dequantized_linear(layer: WeightOnlyLinear) -> nn.Linear:
    lin = nn.Linear(layer.in_features, layer.out_features, bias=layer.bias is not None)
    with torch.no_grad():
        lin.weight.copy_(layer.dequantized_weight())
        if layer.bias is not None:
            lin.bias.copy_(layer.bias)
    return lin


def graph_bytes(model: nn.Module, accuracy_level: int) -> tuple[bytes, dict[str, str]]:
    """The model's KV-step ONNX graph with MatMulNBits for its packed layers, and {layer: why float} for those
    left as float MatMuls (warned)."""
    kv_step_adapter(model, "the whole-graph weight-only runtime")  # a clear error before any copy
    twin = copy.deepcopy(model)
    floats: dict[str, str] = {}
    with torch.no_grad():
        for name, m in list(twin.named_modules()):
            if not isinstance(m, WeightOnlyLinear):
                continue
            why = OrtNBits().unsupported(m.in_features, m.out_features, m.group_size, m.bits)
            if why:
                floats[name] = why
            parent, _, child = name.rpartition(".")
            new = _dequantized_linear(m) if why else _GraphLinear(m, accuracy_level)
            setattr(twin.get_submodule(parent), child, new)
    if floats:
        warnings.warn(f"ort-graph: {len(floats)} layer(s) run as float MatMuls of their dequantized weight, not "
                      f"MatMulNBits: {'; '.join(sorted(set(floats.values())))}; quantize with a power-of-two "
                      "group_size >= 16 to have them packed", stacklevel=3)
    packed = any(isinstance(m, _GraphLinear) for m in twin.modules())
    return export_kv_step(twin, custom_opsets={"com.microsoft": 1} if packed else None), floats


class OrtGraphLM(nn.Module):
    """A weight-only causal LM whose forward (prefill, decode steps, whole windows) runs as one ONNX Runtime graph.

    Args:
        model: the quantized model (its `WeightOnlyLinear`s are what the graph's MatMulNBits nodes hold).
        kernel: "ort-graph" (float32 activations) or "ort-graph-a8" (int8 activations; see the module docstring).
    """

    def __init__(self, model: nn.Module, kernel: str = "ort-graph-a8") -> None:
        super().__init__()
        if kernel not in GRAPH_KERNELS:
            raise ConfigError(f"OrtGraphLM kernel must be one of {sorted(GRAPH_KERNELS)}, got {kernel!r}")
        self._adapter = kv_step_adapter(model, f"kernel={kernel!r}")  # a clear error for a model without one
        self.model = model
        self.kernel = kernel
        self.float_layers: dict[str, str] = {}
        self._graph: bytes | None = None  # built from `model` on first use (after loading fills it)
        self._session: Any = None
        self._threads = 0

    @property
    def adapter(self) -> Any:
        """The wrapped model's `KVStepAdapter` (looked up once per copy)."""
        if self._adapter is None:
            self._adapter = kv_step_adapter(self.model, f"kernel={self.kernel!r}")
        return self._adapter

    @property
    def config(self) -> Any:
        """The wrapped model's config (the decode loop reads its block size)."""
        return self.model.config

    @property
    def blocks(self) -> nn.Module:
        """The wrapped model's blocks (the decode loop counts them for its cache)."""
        return self.model.blocks

    def __getstate__(self) -> dict:
        """Copies and pickles leave the session and graph behind; they are rebuilt from the packed layers."""
        state = self.__dict__.copy()
        state["_graph"], state["_session"], state["_threads"], state["_adapter"] = None, None, 0, None
        return state

    def reset(self) -> None:
        """Forget the graph (after the packed layers changed, e.g. loaded): the next call rebuilds it."""
        self._graph, self._session = None, None

    def graph(self) -> bytes:
        """The serialised ONNX graph (built from the packed layers the first time)."""
        if self._graph is None:
            self._graph, self.float_layers = graph_bytes(self.model, GRAPH_KERNELS[self.kernel])
        return self._graph

    def session(self) -> Any:
        """The ONNX Runtime session, rebuilt when torch's thread count changed (ORT fixes it at creation)."""
        if self._session is None or self._threads != torch.get_num_threads():
            self._threads = torch.get_num_threads()
            self._session = make_session(self.graph(), self._threads)
        return self._session

    def forward(self, idx: torch.Tensor, targets: torch.Tensor | None = None, *, kv_cache: Any = None,
                output_hidden_states: bool = False) -> Any:
        """Logits (B, T, V) for `idx` (B, T) after the cache's tokens; `(logits, loss)` with `targets`."""
        if output_hidden_states:
            raise CondenseError("the ONNX Runtime graph returns logits only; run the wrapped model "
                                "(`.model`, dequantizing) for hidden states")
        B, T = idx.shape
        adapter = self.adapter
        past = 0 if kv_cache is None else adapter.cache_length(kv_cache)
        limit = adapter.max_len(self.model)
        if past + T > limit:
            raise CondenseError(f"sequence of {past + T} tokens is longer than the model's {limit}; pass at most "
                                f"the last {limit} tokens")
        stored = None if kv_cache is None or past == 0 else kv_cache.__dict__.get("_ort_past")
        if stored is None:
            if past:
                raise CondenseError("this cache was filled by the PyTorch model, not the ONNX Runtime graph; "
                                    "start a new cache")
            empty = np.zeros(adapter.past_shape(self.model, B), dtype=np.float32)
            stored = (empty, empty)
        pk, pv = (a[:, :, :, :past] if a.shape[3] != past else a for a in stored)  # cropped caches drop the tail
        ids = np.asarray(idx.detach().cpu().numpy(), dtype=np.int64)  # (B, T), no copy when already int64
        logits, pk, pv = self.session().run(None, {"idx": ids, "past_k": pk, "past_v": pv})
        if kv_cache is not None:
            kv_cache._ort_past = (pk, pv)
            adapter.set_cache_length(kv_cache, past + T)
        out = torch.from_numpy(logits)  # (B, T, V)
        if targets is None:
            return out
        return out, F.cross_entropy(out.reshape(B * T, -1), targets.reshape(B * T).cpu())


    def greedy_decode(self, idx: torch.Tensor, max_new_tokens: int) -> torch.Tensor | None:
        """`idx` (B, T) extended by `max_new_tokens` greedy tokens in one loop around the session (numpy in,
        numpy out: no torch call per token), the tokens `generate`'s own loop picks (argmax, first of ties);
        None when the sequence would outgrow the model's context (`generate` then restarts its cache)."""
        B, T = idx.shape
        adapter = self.adapter
        if T + max_new_tokens > adapter.max_len(self.model):
            return None
        out = np.empty((B, T + max_new_tokens), dtype=np.int64)
        out[:, :T] = idx.detach().cpu().numpy()
        if max_new_tokens == 0:
            return torch.from_numpy(out)
        run = self.session().run
        empty = np.zeros(adapter.past_shape(self.model, B), dtype=np.float32)
        logits, pk, pv = run(None, {"idx": out[:, :T], "past_k": empty, "past_v": empty})
        for i in range(T, T + max_new_tokens):
            out[:, i] = logits[:, -1].argmax(-1)
            if i + 1 < T + max_new_tokens:
                logits, pk, pv = run(None, {"idx": out[:, i:i + 1], "past_k": pk, "past_v": pv})
        return torch.from_numpy(out)


def graph_lm(model: nn.Module, kernel: str) -> OrtGraphLM:
    """`model` (its layers left on "dequantize": the graph holds its own layout) wrapped to run as one graph."""
    for m in model.modules():
        if isinstance(m, WeightOnlyLinear):
            m.set_kernel(DEQUANTIZE)
    new = OrtGraphLM(model, kernel)
    lineage.copy_lineage(model, new)
    return new


def _graph_macs(m: OrtGraphLM, inp: tuple, out: Any) -> int:
    """Per call: tokens x the MACs of every linear layer (attention's score matmuls not counted: a lower bound)."""
    per_token = sum(x.in_features * x.out_features for x in m.model.modules()
                    if isinstance(x, (WeightOnlyLinear, nn.Linear)))
    return inp[0].numel() * per_token


MAC_COUNTERS.register(OrtGraphLM)(_graph_macs)
