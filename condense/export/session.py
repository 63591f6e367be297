"""ONNX Runtime sessions and `OrtModule`, an ONNX graph run as a torch module (tensors in, tensors out).

Sessions run sequentially with every graph optimisation on, and with `intra_op_num_threads` equal to torch's
thread count (ORT does not follow `torch.set_num_threads`): a session is created with torch's current count and
rebuilt if that count has changed by the next call, so `measure(threads=N)` times ORT on N threads too.

The bottom of the ONNX side of `condense.export`: export (onnx.py), the runtime transform (runtime.py) and the
export files (files.py) all build on it, and it imports none of them.
"""
from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import nn

from condense.errors import CondenseError

_NP_TYPES = {"tensor(float)": np.float32, "tensor(int64)": np.int64, "tensor(int32)": np.int32,
             "tensor(double)": np.float64, "tensor(bool)": np.bool_, "tensor(float16)": np.float16}


def import_onnxruntime() -> Any:
    """The `onnxruntime` module, or a CondenseError saying how to install it."""
    try:
        import onnx  # noqa: F401  (export, fusion and quantization all need it)
        import onnxruntime
    except ImportError:
        raise CondenseError("running models in ONNX Runtime needs onnxruntime and onnx: "
                            "pip install onnxruntime onnx") from None
    return onnxruntime


DISABLED_OPTIMIZERS_KEY = "condense.ort.disabled_optimizers"  # ONNX metadata: comma-separated ORT optimizer names


def disabled_optimizers(data: bytes) -> tuple[str, ...]:
    """The ONNX Runtime graph optimizers a graph asks to skip (its `condense.ort.disabled_optimizers` metadata)."""
    import onnx

    props = {p.key: p.value for p in onnx.load_from_string(data).metadata_props}
    return tuple(x for x in props.get(DISABLED_OPTIMIZERS_KEY, "").split(",") if x)


def with_disabled_optimizers(data: bytes, names: tuple[str, ...]) -> bytes:
    """`data` with its metadata saying which ORT graph optimizers to skip (read by `make_session`), so the choice
    travels with the graph: artifacts and exported .onnx files open the same way."""
    import onnx

    model = onnx.load_from_string(data)
    keep = [p for p in model.metadata_props if p.key != DISABLED_OPTIMIZERS_KEY]
    del model.metadata_props[:]
    model.metadata_props.extend(keep)
    if names:
        model.metadata_props.add(key=DISABLED_OPTIMIZERS_KEY, value=",".join(names))
    return model.SerializeToString()


def _graph_tensors(graph: Any) -> Any:
    """Every TensorProto of an ONNX graph: initializers, sparse initializers, node attributes, subgraphs."""
    yield from graph.initializer
    for sp in graph.sparse_initializer:
        yield sp.values
        yield sp.indices
    for node in graph.node:
        yield from _node_tensors(node)


def _node_tensors(node: Any) -> Any:
    for a in node.attribute:
        if a.HasField("t"):
            yield a.t
        yield from a.tensors
        for sp in (*([a.sparse_tensor] if a.HasField("sparse_tensor") else []), *a.sparse_tensors):
            yield sp.values
            yield sp.indices
        if a.HasField("g"):
            yield from _graph_tensors(a.g)
        for g in a.graphs:
            yield from _graph_tensors(g)


def refuse_external_data(data: bytes, *, source: str = "this ONNX graph") -> None:
    """Raise a CondenseError if the serialised ONNX model names external data files.

    condense keeps a graph whole (in the artifact, or in one .onnx file) and runs it from bytes, so a tensor stored
    in another file is never legitimate there; following its `location` (e.g. `../../secret`) would read any
    file the user can read. Checked with onnx's protobuf only, before ONNX Runtime or onnx open anything.

    Example:
        >>> import io, torch
        >>> buf = io.BytesIO(); torch.onnx.export(torch.nn.Linear(3, 2), (torch.ones(1, 3),), buf, dynamo=False)
        >>> refuse_external_data(buf.getvalue())  # nothing external: no error
    """
    import onnx

    try:
        model = onnx.load_from_string(data)  # parses the protobuf only: external data is never followed here
    except Exception as e:  # noqa: BLE001  (protobuf's DecodeError and friends)
        raise CondenseError(f"{source} is not a valid ONNX model ({type(e).__name__}); re-export it") from None
    tensors = [*_graph_tensors(model.graph), *(t for f in model.functions for n in f.node for t in _node_tensors(n))]
    for t in tensors:
        if t.data_location == onnx.TensorProto.EXTERNAL or len(t.external_data):
            where = next((e.value for e in t.external_data if e.key == "location"), "?")
            raise CondenseError(f"{source} stores tensor {t.name!r} in an external file ({where!r}); condense "
                                "never reads external data (it could be any file on this machine): re-export the "
                                "model with its weights inside the graph")


def make_session(data: bytes, threads: int | None = None, disabled: tuple[str, ...] | None = None,
                 optimized_model_path: str | None = None) -> Any:
    """An `onnxruntime.InferenceSession` on CPU: sequential, all graph optimisations but `disabled` (default: those
    the graph's metadata names, see `with_disabled_optimizers`), `threads` intra-op threads.

    `optimized_model_path`: also write the graph as ONNX Runtime optimised it (to see which fusions applied).
    """
    ort = import_onnxruntime()

    refuse_external_data(data)
    if disabled is None:
        disabled = disabled_optimizers(data)
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads or torch.get_num_threads()
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.log_severity_level = 3  # errors only
    if optimized_model_path is not None:
        so.optimized_model_filepath = optimized_model_path
    try:
        return ort.InferenceSession(data, so, providers=["CPUExecutionProvider"], disabled_optimizers=list(disabled))
    except Exception as e:  # onnxruntime raises its own exception types
        raise CondenseError(f"ONNX Runtime cannot load this model ({e}); re-export it with "
                            "condense.export.export_onnx (opset 17 or 18)") from None


def session_feeds(inputs: list[Any], tensors: tuple[torch.Tensor, ...]) -> dict[str, np.ndarray]:
    """`tensors` (positional, in the graph's input order) as the {input name: array} `session.run` takes;
    `inputs`: the session's `get_inputs()` (read once per session by callers that run it often)."""
    if len(tensors) != len(inputs):
        raise CondenseError(f"the ONNX graph takes {len(inputs)} inputs ({[i.name for i in inputs]}), got "
                            f"{len(tensors)}")
    feeds = {}
    for i, t in zip(inputs, tensors):
        a, np_type = t.detach().cpu().numpy(), _NP_TYPES.get(i.type)
        feeds[i.name] = a.astype(np_type, copy=False) if np_type is not None else a
    return feeds


class OrtModule(nn.Module):
    """An ONNX model run by ONNX Runtime: `forward(*tensors, **named)` returns torch tensors (one, or a tuple).

    Inputs go positionally in the graph's input order or by the graph's input names (a Hugging Face model's
    `input_ids=..., attention_mask=...`); keywords set to None, True or False that the graph does not take
    (`use_cache=False`, `return_dict=True`) are ignored. A graph exported from a model returning a transformers
    `ModelOutput` (metadata `condense.output_class`) returns that class with the graph's named outputs (e.g.
    `.logits`), without the fields the export dropped (`past_key_values`: no KV cache).

    Args:
        data: the serialised ONNX model; None makes an empty module (a skeleton the artifact loader fills).

    Example:
        >>> import io, torch
        >>> buf = io.BytesIO(); torch.onnx.export(torch.nn.Linear(3, 2), (torch.ones(1, 3),), buf, dynamo=False)
        >>> OrtModule(buf.getvalue())(torch.ones(1, 3)).shape
        torch.Size([1, 2])
    """

    def __init__(self, data: bytes | None = None) -> None:
        super().__init__()
        self._data: bytes | None = None
        self._disabled: tuple[str, ...] = ()
        self._session: Any = None
        self._inputs: list[Any] = []  # the session's input descriptions, read once per session
        self._outputs: list[str] = []  # the graph's output names
        self._output_class: str | None = None  # the source's ModelOutput class ("module:Class"), from metadata
        self._threads = 0
        if data is not None:
            self.set_model(data)

    def set_model(self, data: bytes) -> None:
        """Replace the ONNX graph (and its session)."""
        self._data = bytes(data)
        self._disabled = disabled_optimizers(self._data)  # read once: sessions reopen when the thread count changes
        self._open()

    @property
    def onnx_model(self) -> bytes:
        """The serialised ONNX model."""
        if self._data is None:
            raise CondenseError("this OrtModule holds no ONNX model yet; load it with condense.load or build it "
                                "with condense.export")
        return self._data

    def _open(self) -> None:
        self._threads = torch.get_num_threads()
        self._session = make_session(self.onnx_model, self._threads, self._disabled)
        self._inputs = self._session.get_inputs()
        self._outputs = [o.name for o in self._session.get_outputs()]
        self._output_class = self._session.get_modelmeta().custom_metadata_map.get("condense.output_class")

    def forward(self, *tensors: torch.Tensor, **named: Any) -> Any:
        """Run the graph on `tensors` (positional, in the graph's input order) and/or `named` inputs; CPU torch
        tensors out (or the source's ModelOutput class, see the class doc)."""
        if self._session is None or self._threads != torch.get_num_threads():
            self._open()
        if named:
            tensors = self._by_name(tensors, named)
        feeds = session_feeds(self._inputs, tensors)
        try:
            outs = [torch.from_numpy(o) for o in self._session.run(None, feeds)]
        except Exception as e:  # onnxruntime's own error types; shapes or dtypes the graph does not accept
            raise CondenseError(f"ONNX Runtime rejected the inputs {[tuple(t.shape) for t in tensors]}: {e}; pass "
                                "inputs shaped as at export (only axes exported as dynamic may change)") from None
        from condense.export.keywords import build_output

        return build_output(self._output_class, self._outputs, outs)

    def _by_name(self, tensors: tuple, named: dict[str, Any]) -> tuple:
        from condense.export.keywords import order_inputs

        return order_inputs([i.name for i in self._inputs], tensors, named, "this ONNX graph")

    def __getstate__(self) -> dict[str, Any]:  # sessions do not pickle or deep-copy: rebuilt on first use
        state = self.__dict__.copy()
        state["_session"], state["_inputs"], state["_outputs"], state["_output_class"] = None, [], [], None
        return state

    def extra_repr(self) -> str:
        return "empty" if self._data is None else f"{len(self._data) / 2**20:.1f} MB ONNX graph"
