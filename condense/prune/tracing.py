"""How the dependency graph sees a model: a tiny graph IR (`Node`) filled by one of two front ends.

1. `from_fx`: `torch.fx` symbolic tracing (no data needed);
2. `from_recording`: one real forward pass recorded with a `TorchFunctionMode` plus module hooks, for models that
   fx cannot trace (data-dependent control flow, as in our BERT and GPT); needs one calibration batch.

Both stop at leaf modules (torch.nn layers, and the `owners` the caller names, e.g. attention modules that head
patterns already cover), so a node is either a leaf module call or a torch op called outside any leaf.
"""
from __future__ import annotations

import weakref
from dataclasses import dataclass, field
from typing import Any, Callable

import torch
import torch.fx as fx
from torch import nn
from torch.overrides import TorchFunctionMode

# Calls that only read metadata (shapes, dtypes): not part of the data flow, never recorded or followed.
META_OPS = {"__get__", "getattr", "dim", "size", "numel", "is_contiguous", "is_floating_point", "__len__", "stride",
            "data_ptr", "get_device", "element_size", "__format__", "__repr__", "__bool__", "_set_grad_enabled"}


class TENSOR:
    """Placeholder for a tensor argument inside recorded args (compare with `is TENSOR`)."""


@dataclass
class Node:
    """One call of the traced forward pass; `inputs` are indices of the nodes whose outputs it reads."""

    kind: str  # "input" | "module" | "op" | "output"
    target: str  # module name or op name
    inputs: list[int]
    args: tuple = ()
    kwargs: dict = field(default_factory=dict)
    ndim: int | None = None  # rank of the output, when recorded
    shape: tuple[int, ...] | None = None  # shape of the output, when recorded
    # every tensor argument in order, when recorded: (its node, -1 if none: a model input, a buffer; its shape)
    operands: tuple[tuple[int, tuple[int, ...]], ...] | None = None

    def arg(self, pos: int, name: str, default: Any) -> Any:
        """Argument `name` (keyword) or at position `pos`, else `default`."""
        if name in self.kwargs:
            return self.kwargs[name]
        return self.args[pos] if len(self.args) > pos else default


def op_name(target: Any) -> str:
    return getattr(target, "__name__", str(target))


def is_leaf(m: nn.Module, owners: set[int]) -> bool:
    """Whether the trace stops at `m`: an owner, or a torch.nn layer that is not a container."""
    if id(m) in owners:
        return True
    return m.__module__.startswith("torch.nn") and not isinstance(m, (nn.Sequential, nn.ModuleList, nn.ModuleDict))


class _Tracer(fx.Tracer):
    def __init__(self, owners: set[int]):
        super().__init__()
        self.owners = owners

    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        return is_leaf(m, self.owners)


def from_fx(model: nn.Module, owners: set[int]) -> list[Node]:
    """The nodes of `model` by torch.fx symbolic tracing (raises whatever fx raises on untraceable code)."""
    graph = _Tracer(owners).trace(model)
    index: dict[fx.Node, int] = {}
    nodes: list[Node] = []
    for n in graph.nodes:
        ins: list[int] = []
        fx.node.map_arg((n.args, n.kwargs), lambda a: ins.append(index[a]) if a in index else None)
        args, kwargs = fx.node.map_arg((n.args, n.kwargs), lambda a: TENSOR)
        kind = {"placeholder": "input", "get_attr": "input", "call_module": "module",
                "output": "output"}.get(n.op, "op")
        target = str(n.target) if n.op in ("call_module", "get_attr", "placeholder") else op_name(n.target)
        nodes.append(Node(kind, target, ins, tuple(args), dict(kwargs)))
        index[n] = len(nodes) - 1
    return nodes


class _Recorder(TorchFunctionMode):
    """Records every torch call outside leaf modules, and each leaf module call, as `Node`s."""

    def __init__(self) -> None:
        super().__init__()
        self.nodes: list[Node] = []
        self.ids: dict[int, int] = {}  # id(tensor) -> producing node; entries vanish with their tensors
        self.depth = 0

    def add(self, kind: str, target: str, args: tuple, kwargs: dict, out: Any) -> None:
        """Record one call whose inputs are earlier outputs (ops reading no recorded tensor are skipped)."""
        given = tensors_in((args, kwargs))
        ins = [self.ids[id(t)] for t in given if id(t) in self.ids]
        outs = tensors_in(out)
        if kind == "op" and (target in META_OPS or not ins):
            return
        clean = _replacetensors_in((args, kwargs))
        many = kind == "op" and isinstance(out, (tuple, list)) and len(outs) > 1  # split, chunk, unbind
        first = outs[0] if outs and not many else None
        self.nodes.append(Node(kind, target, ins, tuple(clean[0]), dict(clean[1]), outs[0].dim() if outs else None,
                               tuple(first.shape) if first is not None else None,
                               tuple((self.ids.get(id(t), -1), tuple(t.shape)) for t in given)))
        at = len(self.nodes) - 1
        for k, t in enumerate(outs):
            if many:  # one `getitem` node per piece, as torch.fx writes it
                self.nodes.append(Node("op", "getitem", [at], (TENSOR, k), {}, t.dim(), tuple(t.shape)))
            key = id(t)
            self.ids[key] = len(self.nodes) - 1
            weakref.finalize(t, self.ids.pop, key, None)

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        if self.depth == 0:
            self.add("op", op_name(func), args, kwargs, out)
        return out


def tensors_in(obj: Any) -> list[torch.Tensor]:
    """Every tensor inside `obj` (nested tuples, lists and dicts), in order."""
    if isinstance(obj, torch.Tensor):
        return [obj]
    if isinstance(obj, dict):
        return [t for v in obj.values() for t in tensors_in(v)]
    if isinstance(obj, (tuple, list)):
        return [t for v in obj for t in tensors_in(v)]
    return []


def _replacetensors_in(obj: Any) -> Any:
    if isinstance(obj, torch.Tensor):
        return TENSOR
    if isinstance(obj, dict):
        return {k: _replacetensors_in(v) for k, v in obj.items()}
    if isinstance(obj, (tuple, list)):
        return type(obj)(_replacetensors_in(v) for v in obj) if not hasattr(obj, "_fields") else TENSOR
    return obj


def from_recording(model: nn.Module, owners: set[int], run: Callable[[nn.Module], Any]) -> list[Node]:
    """The nodes of one real forward pass `run(model)` (call under torch.no_grad)."""
    rec = _Recorder()
    names = {id(m): n for n, m in model.named_modules()}
    handles = []

    def pre(m: nn.Module, args: tuple, kwargs: dict) -> None:
        rec.depth += 1  # ops inside a leaf module are its own business

    def post(m: nn.Module, args: tuple, kwargs: dict, out: Any) -> None:
        if rec.depth == 1:  # an outermost leaf (still paused, so reading ndim records nothing)
            rec.add("module", names[id(m)], args, kwargs, out)
        rec.depth -= 1

    for m in model.modules():
        if is_leaf(m, owners) and m is not model:
            handles.append(m.register_forward_pre_hook(pre, with_kwargs=True))
            handles.append(m.register_forward_hook(post, with_kwargs=True))
    try:
        with rec:
            out = run(model)
        rec.depth += 1
        rec.add("output", "output", (out,), {}, None)
    finally:
        for h in handles:
            h.remove()
    return rec.nodes
