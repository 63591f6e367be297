"""Which layers must shrink together: the dependency graph of structured pruning.

Removing output channel c of a Conv2d also removes entry c of the BatchNorm after it and input channel c of the
next Conv2d (through ReLU, pooling, flatten, a spatial mean). A `Group` lists every such slice; cutting a group
keeps the network runnable and, for the consumers, equal to zeroing those channels.

How the graph is found, most reliable first:
1. `torch.fx` symbolic tracing (no data needed);
2. if tracing fails (data-dependent control flow, as in our BERT and GPT), one real forward pass recorded with a
   `TorchFunctionMode` plus module hooks (needs one calibration batch);
3. attention heads and transformer FFNs come from name patterns (`HEAD_PATTERNS`, `FFN_PATTERNS`), so our BERT
   and GPT blocks are prunable even without data. An FFN seen in a traced graph is checked against it.

Anything the walk does not understand (a residual add, a LayerNorm, concat, reshape, a model output, a layer type
with no cutter) stops it: that layer is reported in `blocked` with the reason, never pruned. So the residual
stream (hidden size) is never cut, while heads and FFN width are.
"""
from __future__ import annotations

import weakref
from dataclasses import dataclass, field
from typing import Any, Callable

import torch
import torch.fx as fx
from torch import nn
from torch.overrides import TorchFunctionMode

# (query, key, value, output) Linear names of an attention module that also has int `n_heads` and `head_dim`.
HEAD_PATTERNS: list[tuple[str, str, str, str]] = [("query", "key", "value", "out"),
                                                  ("q_proj", "k_proj", "v_proj", "o_proj")]
# (expand, contract) Linear names of a transformer FFN whose hidden units only pass through an activation.
FFN_PATTERNS: list[tuple[str, str]] = [("ffn_in", "ffn_out"), ("fc_in", "fc_out")]

PRODUCERS = (nn.Linear, nn.Conv2d)
NORMS = (nn.BatchNorm1d, nn.BatchNorm2d)
PASSTHROUGH = (nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.GELU, nn.SiLU, nn.Sigmoid, nn.Tanh, nn.ELU, nn.Hardswish,
               nn.Hardtanh, nn.Mish, nn.Softplus, nn.Dropout, nn.Dropout2d, nn.Identity)
POOLS = (nn.MaxPool2d, nn.AvgPool2d, nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d)
ELEMENTWISE_OPS = {"relu", "relu_", "relu6", "gelu", "silu", "sigmoid", "tanh", "leaky_relu", "elu", "hardswish",
                   "hardtanh", "mish", "softplus", "dropout", "contiguous", "clone", "float", "to", "detach"}
SCALAR_OPS = {"add", "sub", "mul", "truediv", "div", "__add__", "__radd__", "__sub__", "__mul__", "__rmul__",
              "__truediv__"}
POOL_OPS = {"max_pool2d", "avg_pool2d", "adaptive_avg_pool2d", "adaptive_max_pool2d"}
REDUCE_OPS = {"mean", "sum", "amax", "amin"}
META_OPS = {"__get__", "getattr", "dim", "size", "numel", "is_contiguous", "is_floating_point", "__len__", "stride",
            "data_ptr", "get_device", "element_size", "__format__", "__repr__", "__bool__", "_set_grad_enabled"}


@dataclass(frozen=True)
class Member:
    """One slice of a group: `dim` ("out", "in" or "heads") of module `module`, `unit` elements per group unit."""

    module: str
    dim: str
    unit: int = 1


@dataclass(frozen=True)
class Group:
    """Coupled slices that must be removed together; `size` units, e.g. 64 channels or 12 heads."""

    name: str
    kind: str  # "channels" | "neurons" | "heads" | "ffn"
    size: int
    members: tuple[Member, ...]


@dataclass
class DependencyGraph:
    """Prunable groups, plus every layer that cannot be pruned and why."""

    groups: list[Group]
    blocked: dict[str, str] = field(default_factory=dict)  # layer -> why its outputs cannot be pruned
    unsupported: list[str] = field(default_factory=list)  # layers the analysis could not handle
    method: str = "fx"  # "fx" | "recorded" | "patterns"

    def group(self, name: str) -> Group:
        """The group called `name` (a KeyError lists the names)."""
        for g in self.groups:
            if g.name == name:
                return g
        raise KeyError(f"no group {name!r}; groups: {[g.name for g in self.groups]}")


# -- a tiny graph IR shared by both front ends --------------------------------------------------------------------
class _T:
    """Placeholder for a tensor argument inside recorded args."""


@dataclass
class _Node:
    kind: str  # "input" | "module" | "op" | "output"
    target: str  # module name or op name
    inputs: list[int]
    args: tuple = ()
    kwargs: dict = field(default_factory=dict)
    ndim: int | None = None


def _op_name(target: Any) -> str:
    return getattr(target, "__name__", str(target))


def _is_leaf(m: nn.Module, owners: set[int]) -> bool:
    if id(m) in owners:
        return True
    return m.__module__.startswith("torch.nn") and not isinstance(m, (nn.Sequential, nn.ModuleList, nn.ModuleDict))


class _Tracer(fx.Tracer):
    def __init__(self, owners: set[int]):
        super().__init__()
        self.owners = owners

    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        return _is_leaf(m, self.owners)


def _from_fx(model: nn.Module, owners: set[int]) -> list[_Node]:
    graph = _Tracer(owners).trace(model)
    index: dict[fx.Node, int] = {}
    nodes: list[_Node] = []
    for n in graph.nodes:
        ins: list[int] = []
        fx.node.map_arg((n.args, n.kwargs), lambda a: ins.append(index[a]) if a in index else None)
        args, kwargs = fx.node.map_arg((n.args, n.kwargs), lambda a: _T)
        kind = {"placeholder": "input", "get_attr": "input", "call_module": "module",
                "output": "output"}.get(n.op, "op")
        target = str(n.target) if n.op in ("call_module", "get_attr", "placeholder") else _op_name(n.target)
        nodes.append(_Node(kind, target, ins, tuple(args), dict(kwargs)))
        index[n] = len(nodes) - 1
    return nodes


class _Recorder(TorchFunctionMode):
    """Records every torch call outside leaf modules, and each leaf module call, as `_Node`s."""

    def __init__(self) -> None:
        super().__init__()
        self.nodes: list[_Node] = []
        self.ids: dict[int, int] = {}  # id(tensor) -> producing node; entries vanish with their tensors
        self.depth = 0

    def add(self, kind: str, target: str, args: tuple, kwargs: dict, out: Any) -> None:
        """Record one call whose inputs are earlier outputs (ops reading no recorded tensor are skipped)."""
        ins = [self.ids[id(t)] for t in _tensors((args, kwargs)) if id(t) in self.ids]
        outs = _tensors(out)
        if kind == "op" and (target in META_OPS or not ins):
            return
        clean = _replace_tensors((args, kwargs))
        self.nodes.append(_Node(kind, target, ins, tuple(clean[0]), dict(clean[1]),
                                outs[0].dim() if outs else None))
        for t in outs:
            key = id(t)
            self.ids[key] = len(self.nodes) - 1
            weakref.finalize(t, self.ids.pop, key, None)

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        if self.depth == 0:
            self.add("op", _op_name(func), args, kwargs, out)
        return out


def _tensors(obj: Any) -> list[torch.Tensor]:
    if isinstance(obj, torch.Tensor):
        return [obj]
    if isinstance(obj, dict):
        return [t for v in obj.values() for t in _tensors(v)]
    if isinstance(obj, (tuple, list)):
        return [t for v in obj for t in _tensors(v)]
    return []


def _replace_tensors(obj: Any) -> Any:
    if isinstance(obj, torch.Tensor):
        return _T
    if isinstance(obj, dict):
        return {k: _replace_tensors(v) for k, v in obj.items()}
    if isinstance(obj, (tuple, list)):
        return type(obj)(_replace_tensors(v) for v in obj) if not hasattr(obj, "_fields") else _T
    return obj


def _from_recording(model: nn.Module, owners: set[int], run: Callable[[nn.Module], Any]) -> list[_Node]:
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
        if _is_leaf(m, owners) and m is not model:
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


# -- the walk from a producer to its consumers --------------------------------------------------------------------
def _arg(node: _Node, pos: int, name: str, default: Any) -> Any:
    if name in node.kwargs:
        return node.kwargs[name]
    return node.args[pos] if len(node.args) > pos else default


def _follow(nodes: list[_Node], users: dict[int, list[int]], modules: dict[str, nn.Module], counts: dict[str, int],
            start: int, size: int) -> tuple[list[Member], str | None, str | None]:
    """(members reached from producer node `start`, why they cannot be pruned or None, unsupported layer or None)."""
    prod = modules[nodes[start].target]
    nd = nodes[start].ndim or (4 if isinstance(prod, nn.Conv2d) else None)
    cdim = 1 if isinstance(prod, nn.Conv2d) else (nd - 1 if nd else -1)
    members: list[Member] = []

    def stop(why: str, bad: str | None = None) -> tuple[list[Member], str, str | None]:
        return members, why, bad

    todo = [(u, cdim, nd, False) for u in users.get(start, [])]
    seen: set[int] = set()
    while todo:
        i, cdim, nd, flat = todo.pop()
        if i in seen:
            continue
        seen.add(i)
        n = nodes[i]
        last = cdim == -1 or (nd is not None and cdim == nd - 1)
        nxt: tuple | None = (cdim, nd, flat)
        if n.kind == "output":
            return stop("its output is a model output")
        if n.kind == "module":
            m = modules[n.target]
            if len(n.inputs) != 1:
                return stop(f"feeds {n.target} ({type(m).__name__}) together with other tensors")
            if counts.get(n.target, 0) > 1:
                return stop(f"feeds {n.target}, which is called more than once (shared weights)")
            if isinstance(m, nn.Linear):
                if not last:
                    return stop(f"feeds Linear {n.target} along a non-channel dimension")
                unit = m.in_features // size if flat else 1
                if m.in_features != size * unit:
                    return stop(f"feeds {n.target} whose {m.in_features} inputs do not match {size} channels")
                members.append(Member(n.target, "in", unit))
                nxt = None
            elif isinstance(m, nn.Conv2d):
                if m.groups != 1 or cdim != 1 or flat or m.in_channels != size:
                    return stop(f"feeds Conv2d {n.target} with groups={m.groups} or mismatched channels")
                members.append(Member(n.target, "in"))
                nxt = None
            elif isinstance(m, NORMS):
                if m.num_features != size or flat or not (cdim == 1 or (cdim == -1 and nd is None)):
                    return stop(f"feeds {n.target} ({type(m).__name__}) over another dimension")
                members.append(Member(n.target, "out"))
            elif isinstance(m, POOLS):
                if cdim != 1 or nd != 4 or flat:
                    return stop(f"feeds pooling {n.target} over the channel dimension")
            elif isinstance(m, nn.Flatten):
                if m.start_dim != 1 or m.end_dim != -1 or cdim != 1 or nd != 4:
                    return stop(f"feeds {n.target} (Flatten) that mixes the channel dimension")
                nxt = (1, 2, True)
            elif not isinstance(m, PASSTHROUGH):
                return stop(f"feeds {n.target} ({type(m).__name__}), which has no pruning rule", n.target)
        else:  # an op
            name = n.target
            if name in META_OPS:
                continue
            if len(n.inputs) != 1:
                return stop(f"meets another tensor in `{name}` (e.g. a residual add): its width is shared")
            if name in ELEMENTWISE_OPS:
                pass
            elif name in SCALAR_OPS:
                if sum(a is _T for a in (*n.args, *n.kwargs.values())) != 1:
                    return stop(f"meets another tensor in `{name}`")
            elif name in POOL_OPS:
                if cdim != 1 or nd != 4 or flat:
                    return stop(f"goes through `{name}` over the channel dimension")
            elif name in REDUCE_OPS:
                dims = _arg(n, 1, "dim", None)
                if dims is None or flat:
                    return stop(f"is reduced over every dimension by `{name}`")
                dims = (dims,) if isinstance(dims, int) else tuple(dims)
                if nd is None and any(d >= 0 for d in dims):
                    return stop(f"`{name}` over dims {dims} of a tensor of unknown rank; pass calibration data")
                norm = {d % nd if nd else d for d in dims}
                if (cdim % nd if nd else cdim) in norm:
                    return stop(f"`{name}` reduces the channel dimension")
                keep = bool(_arg(n, 2, "keepdim", False))
                if nd is not None and not keep:
                    cdim = cdim - sum(1 for d in norm if d < cdim % nd)
                    nd -= len(norm)
                nxt = (cdim, nd, flat)
            elif name == "flatten":
                if _arg(n, 1, "start_dim", 0) != 1 or _arg(n, 2, "end_dim", -1) != -1 or cdim != 1 or nd != 4:
                    return stop("`flatten` mixes the channel dimension")
                nxt = (1, 2, True)
            else:
                return stop(f"goes through `{name}`, which has no pruning rule")
        if nxt is not None:
            todo.extend((u, *nxt) for u in users.get(i, []))
    if not any(m.dim == "in" for m in members):
        return stop("no layer consumes its outputs")
    return members, None, None


# -- patterns -----------------------------------------------------------------------------------------------------
def _children_linear(m: nn.Module, names: tuple[str, ...]) -> bool:
    return all(isinstance(getattr(m, n, None), nn.Linear) for n in names)


def _head_groups(model: nn.Module) -> list[Group]:
    out = []
    for name, m in model.named_modules():
        nh, hd = getattr(m, "n_heads", None), getattr(m, "head_dim", None)
        if not (isinstance(nh, int) and isinstance(hd, int)):
            continue
        for q, k, v, o in HEAD_PATTERNS:
            if _children_linear(m, (q, k, v, o)):
                p = f"{name}." if name else ""
                mem = [Member(p + x, "out", hd) for x in (q, k, v)] + [Member(p + o, "in", hd), Member(name, "heads")]
                out.append(Group(name, "heads", nh, tuple(mem)))
                break
    return out


def _ffn_pairs(model: nn.Module) -> dict[str, str]:
    """{expand Linear: contract Linear} for every module matching an FFN pattern."""
    out = {}
    for name, m in model.named_modules():
        p = f"{name}." if name else ""
        for a, b in FFN_PATTERNS:
            if _children_linear(m, (a, b)) and getattr(m, a).out_features == getattr(m, b).in_features:
                out[p + a] = p + b
    return out


# -- public -------------------------------------------------------------------------------------------------------
def build_graph(model: nn.Module, *, run: Callable[[nn.Module], Any] | None = None, fx_first: bool = True
                ) -> DependencyGraph:
    """Find the prunable groups of `model` (fx, else a recorded forward pass via `run(model)`, else patterns).

    `fx_first=False` records the forward pass even where torch.fx could trace the model.

    Example:
        >>> net = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
        >>> g = build_graph(net)
        >>> [(x.name, x.size, [m.module for m in x.members]) for x in g.groups]
        [('0', 8, ['0', '2'])]
    """
    modules = dict(model.named_modules())
    heads = _head_groups(model)
    owners = {id(modules[g.name]) for g in heads}
    claimed = {m.module for g in heads for m in g.members}
    ffn = _ffn_pairs(model)
    nodes: list[_Node] | None = None
    method, why = "fx", ""
    try:
        if not fx_first and run is not None:
            raise RuntimeError("fx_first=False")
        nodes = _from_fx(model, owners)
    except Exception as e:  # fx raises many error types for untraceable code
        why = f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
        if run is not None:
            method = "recorded"
            with torch.no_grad():
                nodes = _from_recording(model, owners, run)
        else:
            method = "patterns"
    graph = DependencyGraph(groups=list(heads), method=method)
    layers = [n for n, m in modules.items() if isinstance(m, PRODUCERS) and n not in claimed]
    if nodes is None:
        for a, b in ffn.items():
            graph.groups.append(Group(a, "ffn", modules[a].out_features, (Member(a, "out"), Member(b, "in"))))
        fix = "pass calibration data (calibration=[batch] or a task) so the graph can be recorded by running it"
        for n in layers:
            if n not in ffn:
                graph.unsupported.append(n)
                graph.blocked[n] = f"the model cannot be traced by torch.fx ({why}); {fix}"
        return graph
    users: dict[int, list[int]] = {}
    counts: dict[str, int] = {}
    where: dict[str, int] = {}
    for i, n in enumerate(nodes):
        for j in n.inputs:
            users.setdefault(j, []).append(i)
        if n.kind == "module":
            counts[n.target] = counts.get(n.target, 0) + 1
            where[n.target] = i
    for name in layers:
        m = modules[name]
        if name not in where:
            graph.blocked[name] = "not called in the traced forward pass"
            continue
        if counts[name] > 1:
            graph.blocked[name] = "called more than once (shared weights)"
            continue
        if isinstance(m, nn.Conv2d) and m.groups != 1:
            graph.blocked[name] = f"grouped convolution (groups={m.groups})"
            continue
        size = m.out_features if isinstance(m, nn.Linear) else m.out_channels
        members, reason, bad = _follow(nodes, users, modules, counts, where[name], size)
        if reason is None and name in ffn and [x.module for x in members] != [ffn[name]]:
            reason = f"matches an FFN pattern but its outputs also reach {[x.module for x in members]}"
        if reason is not None:
            graph.blocked[name] = reason
            if bad is not None and bad not in graph.unsupported and any(True for _ in modules[bad].parameters()):
                graph.unsupported.append(bad)
            continue
        kind = "ffn" if name in ffn else ("channels" if isinstance(m, nn.Conv2d) else "neurons")
        graph.groups.append(Group(name, kind, size, (Member(name, "out"), *members)))
    return graph
