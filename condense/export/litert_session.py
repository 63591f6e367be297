"""The LiteRT (TensorFlow Lite) interpreter as a torch module: `LiteRtModule` runs a .tflite flatbuffer (tensors in,
tensors out), so tasks, `condense.measure` and the pipeline use a LiteRT model exactly like the PyTorch one.

The interpreter is `ai_edge_litert.interpreter.Interpreter` with its default XNNPACK delegate and `num_threads`
equal to torch's thread count (LiteRT does not follow `torch.set_num_threads`): it is rebuilt when that count has
changed by the next call, so `measure(threads=N)` times LiteRT on N threads too. A full-integer model takes and
returns int8 tensors; the module quantizes float inputs with the graph's input scale and zero point and
dequantizes the outputs, so callers always see float in, float out. The converter narrows int64 inputs (token
ids) to int32; the module casts to whatever the graph declares.

`LITERT_WRAPPERS` maps a model type to the module that runs its graph with the model's API (the minilm
`SentenceEncoder` registers `LiteRtSentenceEncoder.from_encoder` in condense/tasks/encoder.py). This is the bottom of
the LiteRT side: the converter (litert.py) and the transform (litert_runtime.py) build on it. Importing it imports
neither litert-torch nor ai-edge-litert: they load when a model is converted or run.
"""
from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from condense.core.registry import TypeRegistry
from condense.errors import CondenseError
from condense.export.runtime import OrtSentenceEncoder

INSTALL = "pip install 'condense[litert]'"


def import_litert_runtime() -> Any:
    """The `ai_edge_litert.interpreter` module, or a CondenseError saying how to install it."""
    try:
        from ai_edge_litert import interpreter
    except ImportError:
        raise CondenseError(f"running models in LiteRT needs ai-edge-litert: {INSTALL}") from None
    return interpreter


def make_interpreter(data: bytes, threads: int | None = None) -> Any:
    """A LiteRT `Interpreter` on `data` (XNNPACK, `threads` threads, default torch's), tensors allocated."""
    interpreter = import_litert_runtime()
    try:
        it = interpreter.Interpreter(model_content=bytes(data), num_threads=threads or torch.get_num_threads())
        it.allocate_tensors()
    except (ValueError, RuntimeError) as e:
        raise CondenseError(f"LiteRT cannot load this model ({e}); re-export it with condense export --format "
                            "tflite") from None
    return it


def _to_input(t: torch.Tensor, detail: dict[str, Any]) -> np.ndarray:
    """A torch tensor as the array one graph input takes: same dtype, quantized if the input is integer-quantized."""
    a = t.detach().cpu().numpy()
    dtype = np.dtype(detail["dtype"])
    scale, zero = detail["quantization"]
    if scale and np.issubdtype(dtype, np.integer) and np.issubdtype(a.dtype, np.floating):
        info = np.iinfo(dtype)
        return np.clip(np.round(a / scale + zero), info.min, info.max).astype(dtype)
    return a.astype(dtype, copy=False)


def _from_output(a: np.ndarray, detail: dict[str, Any]) -> torch.Tensor:
    scale, zero = detail["quantization"]
    if scale and np.issubdtype(a.dtype, np.integer):
        a = (a.astype(np.float32) - zero) * np.float32(scale)
    return torch.from_numpy(np.array(a))  # a copy: the runner's buffers are reused by the next call


class LiteRtModule(nn.Module):
    """A .tflite model run by the LiteRT interpreter: `forward(*tensors, **named)` returns torch tensors (one, or a
    tuple), or the source's transformers ModelOutput when `output_class` ("module:Class", set by the converter and
    restored from lineage or the export record) names one.

    Args:
        data: the flatbuffer; None makes an empty module (a skeleton the artifact loader fills).

    Example:
        >>> import condense
        >>> from condense.export.litert import tflite_bytes
        >>> lin = torch.nn.Linear(3, 2).eval()
        >>> LiteRtModule(tflite_bytes(lin, (torch.ones(2, 3),)))(torch.ones(5, 3)).shape  # doctest: +SKIP
        torch.Size([5, 2])
    """

    def __init__(self, data: bytes | None = None) -> None:
        super().__init__()
        self._data: bytes | None = None
        self._runner: Any = None
        self._threads = 0
        self._key = ""
        self._in: list[tuple[str, dict]] = []
        self._out: list[tuple[str, dict]] = []
        if data is not None:
            self.set_model(data)

    def set_model(self, data: bytes) -> None:
        """Replace the flatbuffer (and its interpreter)."""
        self._data = bytes(data)
        self._open()

    @property
    def tflite_model(self) -> bytes:
        """The .tflite flatbuffer."""
        if self._data is None:
            raise CondenseError("this LiteRtModule holds no model yet; load it with condense.load or build it with "
                                "condense.export_model(..., format='tflite')")
        return self._data

    def _open(self) -> None:
        self._threads = torch.get_num_threads()
        it = make_interpreter(self.tflite_model, self._threads)
        sigs = it.get_signature_list()
        if len(sigs) != 1:
            raise CondenseError(f"this .tflite model has {len(sigs)} signatures ({sorted(sigs)}); condense runs "
                                "models with exactly one: export one signature")
        key = self._key = next(iter(sigs))
        self._runner = it.get_signature_runner(key)
        ins, outs = self._runner.get_input_details(), self._runner.get_output_details()
        self._in = [(n, ins[n]) for n in sigs[key]["inputs"]]  # in the converter's argument order
        self._out = [(n, outs[n]) for n in sigs[key]["outputs"]]

    @property
    def is_int8(self) -> bool:
        """Whether the graph takes integer-quantized inputs (a full-integer model)."""
        if self._runner is None:
            self._open()
        return any(d["quantization"][0] and np.issubdtype(np.dtype(d["dtype"]), np.integer) for _, d in self._in)

    @property
    def input_names(self) -> tuple[str, ...]:
        """The graph's input names, in the order positional inputs take (its signature's)."""
        if self._runner is None:
            self._open()
        return tuple(n for n, _ in self._in)

    def forward(self, *tensors: torch.Tensor, **named: Any) -> Any:
        """Run the model on `tensors` (positional, in the signature's order) and/or `named` inputs (a Hugging Face
        model's `input_ids=..., attention_mask=...`: a graph converted from a dict batch is named after its keys;
        keywords set to None, True or False it does not take, like `use_cache=False`, are ignored); CPU float
        torch tensors out: one, a tuple, or the source's ModelOutput class when `output_class` is known.

        A graph converted at a fixed sequence length takes shorter keyword batches that carry an
        `attention_mask`: they are padded with zeros (masked out) and the outputs cut back to their length."""
        if self._runner is None or self._threads != torch.get_num_threads():
            self._open()
        length = None
        if named:
            tensors = self._by_name(tensors, named)
            length = self._pad_length(tensors, named)
            if length is not None:
                tensors = tuple(F.pad(t, (0, self.static_shape(0)[1] - length)) for t in tensors)
        if len(tensors) != len(self._in):
            raise CondenseError(f"the LiteRT model takes {len(self._in)} inputs ({[n for n, _ in self._in]}), got "
                                f"{len(tensors)}")
        n = tensors[0].shape[0] if tensors and tensors[0].dim() else 0
        step = self.static_batch
        if step is None or n == step:
            outs = self._run(tensors)
        else:  # a graph converted at a fixed batch size: run the batch in chunks of it, the last one padded
            parts = []
            for i in range(0, n, step):
                chunk = [t[i:i + step] for t in tensors]
                short = step - chunk[0].shape[0]
                if short:
                    chunk = [torch.cat([c, c[-1:].expand(short, *c.shape[1:])]) for c in chunk]
                parts.append([o[:step - short] for o in self._run(tuple(chunk))])
            outs = [torch.cat(o) for o in zip(*parts)]
        if length is not None:  # cut the padded sequence axis back
            fixed = self.static_shape(0)[1]
            outs = [o[:, :length] if o.dim() > 1 and o.shape[1] == fixed else o for o in outs]
        output_class = self.__dict__.get("output_class")
        if output_class:
            from condense.export.keywords import build_output

            return build_output(output_class, [n for n, _ in self._out], outs)
        return outs[0] if len(outs) == 1 else tuple(outs)

    def _by_name(self, tensors: tuple, named: dict[str, Any]) -> tuple:
        from condense.export.keywords import order_inputs

        return order_inputs([n for n, _ in self._in], tensors, named, "this LiteRT model")

    def _pad_length(self, tensors: tuple, named: dict[str, Any]) -> int | None:
        """The keyword batch's sequence length if it must be padded to the graph's fixed one, else None."""
        shape = self.static_shape(0)
        if "attention_mask" not in named or len(shape) < 2 or shape[1] <= 0:
            return None
        length = int(tensors[0].shape[1])
        if length > shape[1]:
            raise CondenseError(f"this LiteRT model was converted at sequence length {shape[1]}, got {length}: "
                                f"pass at most {shape[1]} tokens, or convert it from a batch that long")
        return length if length < shape[1] else None

    @property
    def static_batch(self) -> int | None:
        """The fixed batch size the graph was converted at; None when its batch axis is dynamic."""
        if self._runner is None:
            self._open()
        sig = self._in[0][1]["shape_signature"] if self._in else []
        return int(sig[0]) if len(sig) and sig[0] > 0 else None

    def static_shape(self, i: int) -> tuple[int, ...]:
        """Input `i`'s shape, -1 where the axis is dynamic."""
        if self._runner is None:
            self._open()
        return tuple(int(v) for v in self._in[i][1]["shape_signature"])

    def _run(self, tensors: tuple[torch.Tensor, ...]) -> list[torch.Tensor]:
        feeds = {n: _to_input(t, d) for (n, d), t in zip(self._in, tensors)}
        try:
            got = self._runner(**feeds)
        except (ValueError, RuntimeError) as e:
            raise CondenseError(f"LiteRT rejected the inputs {[tuple(t.shape) for t in tensors]}: {e}; pass inputs "
                                "shaped as at export (only axes exported as dynamic may change)") from None
        return [_from_output(got[n], d) for n, d in self._out]

    def __getstate__(self) -> dict[str, Any]:  # interpreters do not pickle or deep-copy: rebuilt on first use
        state = self.__dict__.copy()
        state["_runner"], state["_in"], state["_out"] = None, [], []
        return state

    def extra_repr(self) -> str:
        return "empty" if self._data is None else f"{len(self._data) / 2**20:.2f} MB LiteRT flatbuffer"


class LiteRtSentenceEncoder(OrtSentenceEncoder):
    """A sentence encoder whose (input_ids, attention_mask) -> embeddings graph runs in LiteRT.

    Same API as `SentenceEncoder` (`encode`, `tokenize`, `forward`, `dim`); tokenisation stays in Python.
    """

    @classmethod
    def from_encoder(cls, encoder: nn.Module, graph: nn.Module) -> "LiteRtSentenceEncoder":
        import copy

        return cls(graph, copy.deepcopy(encoder.tokenizer), encoder.max_seq_length, encoder.dim)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """(B, T) ids and mask -> (B, C) unit-length embeddings; padded to the graph's length if it is fixed."""
        fixed = self.graph.static_shape(0)[1] if self.graph._data is not None else -1
        if fixed > 0 and input_ids.shape[1] < fixed:  # pad id 0, mask 0: padding is masked out of attention/pooling
            input_ids, attention_mask = pad_tokens(input_ids, attention_mask, fixed)
        return self.graph(input_ids, attention_mask)


def pad_tokens(ids: torch.Tensor, mask: torch.Tensor, length: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, T) ids and mask right-padded with zeros to (B, length)."""
    import torch.nn.functional as F

    return F.pad(ids, (0, length - ids.shape[1])), F.pad(mask, (0, length - mask.shape[1]))


# source module type -> fn(source, graph) -> the module that replaces the source (default: the LiteRtModule);
# registered by the module defining the model type (e.g. condense/tasks/encoder.py).
LITERT_WRAPPERS: TypeRegistry[Any] = TypeRegistry("LiteRT wrapper")


def wrap(source: nn.Module, graph: LiteRtModule) -> nn.Module:
    """The module that runs `graph` in place of `source` (with the same user-facing API)."""
    fn = LITERT_WRAPPERS.find(source)
    return graph if fn is None else fn(source, graph)


def runtime_module(data: bytes | None, output_class: str | None = None) -> LiteRtModule:
    """A LiteRtModule on `data` that returns the transformers ModelOutput `output_class` names (if any)."""
    graph = LiteRtModule(data)
    if output_class:
        graph.__dict__["output_class"] = output_class
    return graph


def litert_graph(model: nn.Module) -> LiteRtModule | None:
    """The LiteRtModule that runs `model` (the model itself, or its `.graph`); None for anything else."""
    if isinstance(model, LiteRtModule):
        return model
    g = getattr(model, "graph", None)
    return g if isinstance(g, LiteRtModule) else None
