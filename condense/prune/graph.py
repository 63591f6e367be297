"""Which layers must shrink together: the dependency graph of structured pruning.

Removing output channel c of a Conv2d also removes entry c of the BatchNorm after it and input channel c of the
next Conv2d (through ReLU, pooling, flatten, a spatial mean). A `Group` lists every such slice; cutting a group
keeps the network runnable and, for the consumers, equal to zeroing those channels.

How the graph is found, most reliable first:
1. `torch.fx` symbolic tracing (no data needed; `condense.prune.tracing`);
2. if tracing fails (data-dependent control flow, as in our BERT and GPT), one real forward pass recorded with a
   `TorchFunctionMode` plus module hooks (needs one calibration batch);
3. attention heads come from a recorded forward pass (`condense.prune.heads`: the reshape of each projection into
   (..., n_heads, head_dim), grouped-query attention included) when data is given; without data, heads and
   transformer FFNs come from name patterns (`HEAD_PATTERNS`, `FFN_PATTERNS`), so our BERT and GPT blocks are
   prunable even then. An FFN seen in a traced graph is checked against it.

How channels pass each layer type and op is a table of rules, one per type (`condense.prune.rules`: register one
there for a custom layer). Anything the walk does not understand (a residual add, a LayerNorm, concat, reshape, a
model output, a layer type with no rule) stops it: that layer is reported in `blocked` with the reason, never
pruned. So the residual stream (hidden size) is never cut, while heads and FFN width are.
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from typing import Any, Callable

import torch
from torch import nn

from condense.errors import first_line
from condense.prune.heads import discover
from condense.prune.rules import MODULE_RULES, PRODUCERS, Blocked, Member, follow, lookup
from condense.prune.tracing import Node, from_fx, from_recording

__all__ = ["HEAD_PATTERNS", "FFN_PATTERNS", "Member", "Group", "DependencyGraph", "build_graph"]

# (query, key, value, output) Linear names of an attention module that also has int `n_heads` and `head_dim`.
HEAD_PATTERNS: list[tuple[str, str, str, str]] = [("query", "key", "value", "out"),
                                                  ("q_proj", "k_proj", "v_proj", "o_proj")]
# (expand, contract) Linear names of a transformer FFN whose hidden units only pass through an activation.
FFN_PATTERNS: list[tuple[str, str]] = [("ffn_in", "ffn_out"), ("fc_in", "fc_out")]


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


def _heads(model: nn.Module, run: Callable[[nn.Module], Any] | None) -> tuple[list[Group], dict[str, str]]:
    """Head groups from a recorded forward pass (`condense.prune.heads`), else from the name patterns."""
    if run is None:
        return _head_groups(model), {}
    try:
        found, rejected = discover(model, run)
    except Exception as e:  # the graph's own recording below reports what fails; heads fall back to the names
        warnings.warn(f"attention heads could not be found by running the model ({first_line(e)}); only the name "
                      "patterns of condense.prune.graph.HEAD_PATTERNS are used", stacklevel=3)
        return _head_groups(model), {}
    groups = [Group(h.name, "heads", h.size, h.members) for h in found]
    seen = {g.name for g in groups} | set(rejected)  # the name patterns only cross-check what the trace missed
    return groups + [g for g in _head_groups(model) if g.name not in seen], rejected


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
    heads, rejected = _heads(model, run)
    owners = {id(modules[g.name]) for g in heads}  # leaves of the trace, besides torch.nn layers
    owners |= {id(m) for m in modules.values() if type(m) in MODULE_RULES and m is not model}
    claimed = {m.module for g in heads for m in g.members}
    ffn = _ffn_pairs(model)
    nodes: list[Node] | None = None
    method, why = "fx", ""
    try:
        if not fx_first and run is not None:
            raise RuntimeError("fx_first=False")
        nodes = from_fx(model, owners)
    except Exception as e:  # fx raises many error types for untraceable code
        why = first_line(e, 1000)
        if run is not None:
            method = "recorded"
            with torch.no_grad():
                nodes = from_recording(model, owners, run)
        else:
            method = "patterns"
    graph = DependencyGraph(groups=list(heads), blocked=dict(rejected), method=method)
    layers = [n for n, m in modules.items() if lookup(PRODUCERS, m) is not None and n not in claimed]
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
        try:
            source = lookup(PRODUCERS, m)(m, nodes[where[name]].ndim)
        except Blocked as e:
            graph.blocked[name] = str(e)
            continue
        size = source.size
        members, reason, bad = follow(nodes, users, modules, counts, where[name], source)
        if reason is None and name in ffn and [x.module for x in members] != [ffn[name]]:
            reason = f"matches an FFN pattern but its outputs also reach {[x.module for x in members]}"
        if reason is not None:
            graph.blocked[name] = reason
            if bad is not None and bad not in graph.unsupported and any(True for _ in modules[bad].parameters()):
                graph.unsupported.append(bad)
            continue
        kind = "ffn" if name in ffn else source.kind
        graph.groups.append(Group(name, kind, size, (Member(name, "out"), *members)))
    return graph
