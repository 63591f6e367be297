"""Which layers must shrink together: the dependency graph of structured pruning.

Removing output channel c of a Conv2d also removes entry c of the BatchNorm after it, filter c of a depthwise
conv, and input channel c of the next Conv2d (through ReLU, pooling, flatten, a spatial mean). A `Group` lists
every such slice; cutting a group keeps the network runnable and, for the consumers, equal to zeroing those channels
(`condense.prune.check.check_cut_equals_mask` verifies it).

How the graph is found, most reliable first:
1. `torch.fx` symbolic tracing (no data needed; `condense.prune.tracing`);
2. if tracing fails (data-dependent control flow, as in our BERT and GPT and in Hugging Face models), one real
   forward pass recorded with a `TorchFunctionMode` plus module hooks (needs one calibration batch);
3. attention heads come from a recorded forward pass (`condense.prune.heads`: the reshape of each projection into
   (..., n_heads, head_dim), grouped-query attention included) when data is given; without data, heads and our own
   transformer FFNs come from name patterns (`HEAD_PATTERNS`, `FFN_PATTERNS`), so our BERT and GPT blocks are
   prunable even then.

The coupling comes from the computation: producers whose outputs meet at an element-wise op (SwiGLU's
`act(gate(x)) * up(x)`, a ResNet's `bn2(conv2(..)) + shortcut`) form one group (same kept units; importance
summed over all members). A parameter-free module called many times (one `nn.ReLU` reused) is that many
independent ops; a module with weights called twice shares them and is blocked. An FFN is found by its shape:
linear producers that read the block's width and one linear consumer that writes it back (kind "ffn").

How channels pass each layer type and op is a table of rules, one per type (`condense.prune.rules`, more in
`condense.prune.layer_rules`: register one there for a custom layer). Concatenation along the channels maps each
producer to a slice of its consumers' inputs (an offset); see `layer_rules`. Anything the walk does not understand
(a reshape, a split along the channels, a model output, a layer type with no rule, a residual add onto a tensor no
prunable layer produces) stops it: that layer is reported in `blocked` with the reason, never pruned. A norm that
mixes channels (LayerNorm, RMSNorm) stops it too unless `renormalize=True`. So a transformer's residual stream
(hidden size) is not cut by default, while heads and FFN width are. Tied weights (one Parameter held by two layers,
e.g. an LM head tied to the embedding) are cut only when every holder is cut the same way in the same group; the
cut keeps them tied (`condense.prune.cutters.retie_`); otherwise the group is blocked with that reason.
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from typing import Any, Callable

import torch
from torch import nn

import condense.prune.layer_rules  # noqa: F401  (registers the rules of concatenation, norms, Embedding, ...)
from condense.core.linear_like import linear_like_types, linear_weight
from condense.errors import first_line
from condense.prune.cutters import tied_parameters, unit_weights
from condense.prune.heads import discover
from condense.prune.rules import (CONCAT_OPS, MODULE_RULES, PRODUCERS, Blocked, Member, Source, Walk, depthwise,
                                  follow, lookup)
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
def build_graph(model: nn.Module, *, run: Callable[[nn.Module], Any] | None = None, fx_first: bool = True,
                renormalize: bool = False) -> DependencyGraph:
    """Find the prunable groups of `model` (fx, else a recorded forward pass via `run(model)`, else patterns).

    `fx_first=False` records the forward pass even where torch.fx could trace the model (it is recorded anyway
    when it concatenates tensors and `run` is given: the widths come from the recorded shapes). `renormalize=True`
    lets groups through norms that mix channels (LayerNorm, RMSNorm): see `condense.prune.layer_rules`.

    Example:
        >>> net = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
        >>> g = build_graph(net)
        >>> [(x.name, x.size, [m.module for m in x.members]) for x in g.groups]
        [('0', 8, ['0', '2'])]
    """
    modules = dict(model.named_modules())
    heads, rejected = _heads(model, run)
    owners = {id(modules[g.name]) for g in heads}  # leaves of the trace, besides torch.nn layers
    owners |= {id(m) for m in modules.values() if lookup(MODULE_RULES, m) is not None and m is not model}
    claimed = {m.module for g in heads for m in g.members}
    ffn = _ffn_pairs(model)
    nodes: list[Node] | None = None
    method, why = "fx", ""
    try:
        if not fx_first and run is not None:
            raise RuntimeError("fx_first=False")
        nodes = from_fx(model, owners)
        if run is not None and any(n.target in CONCAT_OPS for n in nodes):
            raise RuntimeError("concatenation: the widths come from a recorded forward pass")
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
    walks: dict[str, tuple[Source, Walk]] = {}
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
        walks[name] = (source, follow(nodes, users, modules, counts, where[name], source, renormalize))
    for comp in _united(walks):
        _add_component(graph, comp, walks, nodes, modules, ffn)
    _block_untied(graph, model, modules)
    covered = {m.module for g in graph.groups for m in g.members}
    for name in [n for n in graph.blocked if n in covered and depthwise(modules[n])]:
        del graph.blocked[name]  # cut with the layer that feeds it
    return graph


def _united(walks: dict[str, tuple[Source, Walk]]) -> list[list[str]]:
    """Producers whose walks meet at an element-wise join, united (union-find), each list in model order."""
    parent = {n: n for n in walks}

    def root(n: str) -> str:
        while parent[n] != n:
            parent[n] = n = parent[parent[n]]
        return n

    at: dict[int, str] = {}
    for n, (_, w) in walks.items():
        for j in w.joins:
            if j in at:
                parent[root(n)] = root(at[j])
            else:
                at[j] = n
    comps: dict[str, list[str]] = {}
    for n in walks:
        comps.setdefault(root(n), []).append(n)
    return list(comps.values())


def _joint_reason(comp: list[str], walks: dict[str, tuple[Source, Walk]], nodes: list[Node]) -> str | None:
    """Why producers `comp`, joined element-wise, cannot be cut together (a join fed by something else, channels
    along other dimensions, different widths), or None."""
    carriers = set().union(*(walks[n][1].carriers for n in comp))
    for j in sorted({j for n in comp for j in walks[n][1].joins}):
        op = nodes[j].target
        if any(k not in carriers for k in nodes[j].inputs):
            return (f"meets another tensor in `{op}` (e.g. a residual add) that no prunable layer produces: its width "
                    "is shared")
        if len({walks[n][1].joins[j] for n in comp if j in walks[n][1].joins}) > 1:
            return f"meets the channels of another layer along another dimension in `{op}`"
    sizes = {walks[n][0].size // walks[n][1].fold for n in comp}
    if len(sizes) > 1:
        return f"is joined element-wise with {comp} whose widths differ ({sorted(sizes)})"
    return None


def _add_component(graph: DependencyGraph, comp: list[str], walks: dict[str, tuple[Source, Walk]],
                   nodes: list[Node], modules: dict[str, nn.Module], ffn: dict[str, str]) -> None:
    """One group for united producers `comp` (named after the first), or each one blocked with the reason."""
    joint = _joint_reason(comp, walks, nodes)
    for n in comp if joint is None else ():  # a layer with no rule is the reason only where nothing came first
        bad = walks[n][1].bad
        if bad is not None and bad not in graph.unsupported and any(True for _ in modules[bad].parameters()):
            graph.unsupported.append(bad)
    own = {n: walks[n][1].reason for n in comp if walks[n][1].reason is not None}
    name, (source, walk) = comp[0], walks[comp[0]]
    if joint is None and not own and len(comp) == 1 and name in ffn and [x.module for x in walk.members] != [ffn[name]]:
        own[name] = f"matches an FFN pattern but its outputs also reach {[x.module for x in walk.members]}"
    if joint is not None or own:
        first = next(iter(own.items()), None)
        for n in comp:
            graph.blocked[n] = joint or own.get(n) or (f"is cut together with {first[0]} (their outputs meet "
                                                        f"element-wise), which cannot be pruned: {first[1]}")
        return
    members = [walks[n][1].unfolded(Member(n, "out"), walks[n][0].size, 1) for n in comp]
    for n in comp:
        members.extend(x for x in walks[n][1].members if x not in members)
    ffn_like = (len(comp) == 1 and name in ffn) or _structural_ffn(comp, members, modules)
    graph.groups.append(Group(name, "ffn" if ffn_like else source.kind, source.size // walk.fold, tuple(members)))


def _structural_ffn(producers: list[str], members: list[Member], modules: dict[str, nn.Module]) -> bool:
    """A transformer FFN by its shape: linear producers read the block's width and one linear layer consumes the
    group, writing that width back (BERT's intermediate/output, Llama's gate+up/down, GPT-2's c_fc/c_proj)."""
    consumers = {x.module for x in members if x.dim == "in"}
    layers = [modules[n] for n in (*producers, *consumers)]
    if len(consumers) != 1 or not all(isinstance(m, linear_like_types()) for m in layers):
        return False
    width = {linear_weight(modules[n]).shape[1] for n in producers}
    return width == {linear_weight(modules[next(iter(consumers))]).shape[0]}


def _block_untied(graph: DependencyGraph, model: nn.Module, modules: dict[str, nn.Module]) -> None:
    """Block every group that would cut a tied weight (one Parameter held by several layers) in some of its holders
    only, or along different slices: the cut would untie them or cut one holder wrongly."""
    holders = tied_parameters(model)
    for g in list(graph.groups):
        ways: dict[int, set] = {}
        cut_by: dict[int, set[str]] = {}
        for mem in g.members:
            if mem.dim not in ("out", "in"):
                continue
            for t, axis in unit_weights(modules[mem.module], mem.dim):
                if id(t) in holders:
                    ways.setdefault(id(t), set()).add((axis, mem.offset, mem.unit, getattr(mem, "blocks", ())))
                    cut_by.setdefault(id(t), set()).add(mem.module)
        for key, how in ways.items():
            others = sorted({m for m, _ in holders[key]} - cut_by[key])
            if others or len(how) > 1:
                why = (f"its weight is tied to {others} (one Parameter), which this group does not cut" if others else
                       f"its weight is tied across {sorted(cut_by[key])} (one Parameter), cut along different slices")
                graph.groups.remove(g)
                for mem in g.members:
                    if mem.dim == "out" and lookup(PRODUCERS, modules[mem.module]) is not None:
                        graph.blocked[mem.module] = why + "; untie them (or exclude the group) to prune it"
                break
