"""Pruning rules: how a group of channels travels through each layer type and op, one handler per type in a table.

Removing output channel c of a producer (a Linear, a Conv2d) removes the matching slice of every layer its output
reaches. `follow` walks from a producer to its users; at each node it asks the rule registered for that node:

* `MODULE_RULES`, keyed by module type (resolved through the MRO, so a subclass uses its base's rule), and
* `OP_RULES`, keyed by the op's name as traced (`"relu"`, `"flatten"`, `"mean"`, ...).

A rule gets the `Site` (the node, its module, the group's size) and the `Flow` (where the channels sit in the
incoming tensor) and returns the `Flow` they continue with, or `Reached(members, flow)` to add slices to the group
(`flow=None`: the channels are consumed here, e.g. a Linear's inputs); it raises `Blocked("why")` when the group
cannot pass. A node with no rule blocks the group too, reported by name: never a silent skip.

An element-wise op that meets a second traced tensor (`a * b`, `a + b`) is a join: the walk goes on through it and
reports it in `Walk.joins`, and `condense.prune.graph` unites the producers whose walks meet there into one group
(SwiGLU's `act(gate(x)) * up(x)`, a ResNet's `conv2(...) + shortcut`). A join some input of which no prunable
layer produces (a residual add onto an embedding or a LayerNorm's output) blocks every producer that reaches it.

`PRODUCERS` says which layer types start a group and how big it is. A custom layer is made prunable in one place,
`condense.prune.cutters.register_cutter(Type, rule=..., producer=...)` (its example uses `channelwise`, the rule of
a layer that scales each channel by its own weight entry).
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any, Callable, Union

from torch import nn

from condense.core.linear_like import linear_like_types, linear_weight
from condense.prune.tracing import META_OPS, TENSOR, Node


@dataclass(frozen=True)
class Member:
    """One slice of a group: `dim` ("out", "in" or "heads") of module `module`, `unit` elements per group unit,
    starting at element `offset` (a consumer of a concatenation reads each producer's slice at its offset)."""

    module: str
    dim: str
    unit: int = 1
    offset: int = 0
    blocks: tuple[tuple[int, int], ...] = ()  # ((offset, unit), ...) when a unit lies in several blocks


@dataclass(frozen=True)
class Flow:
    """Where a group's channels sit in a tensor: dimension `cdim` (-1: the last) of a rank-`ndim` tensor (None:
    unknown); `flat`: they were flattened together with the spatial positions (a conv map through Flatten);
    `offset`, `width`: they are positions offset ... offset + size - 1 of a dimension `width` wide (after a
    concatenation; None: the group's own size)."""

    cdim: int
    ndim: int | None
    flat: bool = False
    offset: int = 0
    width: int | None = None
    fold: int = 1  # a `chunk` folded the producer's channels into `fold` equal pieces: unit u is channel u of each
    @property
    def last(self) -> bool:
        """The channels are the last dimension (what a Linear reads)."""
        return self.cdim == -1 or (self.ndim is not None and self.cdim == self.ndim - 1)

    @property
    def conv_map(self) -> bool:
        """The channels are dimension 1 of an unflattened (N, C, L), (N, C, H, W) or (N, C, D, H, W) map."""
        return self.cdim == 1 and self.ndim in (3, 4, 5) and not self.flat

    def span(self, size: int) -> int:
        """The width of the channel dimension, for a group of `size` units."""
        return size if self.width is None else self.width


@dataclass(frozen=True)
class Site:
    """The node a rule is asked about: `node`, its `module` (None for an op) and the group's `size` in units;
    `inputs`: the nodes it reads (with their recorded shapes), `via`: the position among them of the one carrying
    the group."""

    node: Node
    module: nn.Module | None
    size: int
    inputs: tuple[Node, ...] = ()
    via: int | None = None

    @property
    def name(self) -> str:
        """The module's name, or the op's."""
        return self.node.target


@dataclass(frozen=True)
class Reached:
    """A rule's answer that adds `members` to the group; `flow` is how the channels go on (None: consumed here);
    `renormalizes`: the layer normalises over the channels (LayerNorm, RMSNorm), so a cut changes its statistics
    and is only allowed with `build_graph(renormalize=True)`."""

    members: tuple[Member, ...] = ()
    flow: Flow | None = None
    renormalizes: bool = False


@dataclass(frozen=True)
class Source:
    """A producer's group: `size` units, leaving it as `flow`, of `kind` "channels" or "neurons"."""

    size: int
    flow: Flow
    kind: str


@dataclass(frozen=True)
class Joined:
    """A rule's answer at an element-wise op that meets other traced tensors: the channels go on as `flow`, and the
    producers of those tensors must be cut together with this group."""

    flow: Flow


class Blocked(Exception):
    """Raised by a rule: the group cannot pass this node (the message says why, e.g. 'feeds a residual add')."""


class _Unsupported(Blocked):
    """Blocked by a layer with no rule: the layer is also reported as unsupported."""


Rule = Callable[[Site, Flow], Union[Flow, Reached]]
MODULE_RULES: dict[type, Rule] = {}
OP_RULES: dict[str, Rule] = {}
PRODUCERS: dict[type, Callable[[nn.Module, "int | None"], Source]] = {}


_LAZY: list[Callable[[], None]] = []  # registrations of optional libraries' types, run before every lookup


def register_lazy(fn: Callable[[], None]) -> Callable[[], None]:
    """Run `fn` before every lookup: it registers rules of optional libraries' types once they are imported."""
    _LAZY.append(fn)
    return fn


def lookup(table: dict[type, Any], module: nn.Module) -> Any:
    """The entry of `table` for `module`'s type or its nearest base class (None if none)."""
    _register_linear_like()
    for fn in _LAZY:
        fn()
    return next((table[t] for t in type(module).__mro__ if t in table), None)


def _register_types(table: dict[type, Any], types: tuple[type, ...]) -> Callable:
    def deco(fn: Any) -> Any:
        for t in types:
            table[t] = fn
        return fn

    return deco


def register_module_rule(*types: type) -> Callable[[Rule], Rule]:
    """Register `rule(site, flow) -> Flow | Reached` for modules of `types` (and their subclasses). A module whose
    own type has a rule is a leaf of the trace: the walk asks its rule instead of looking inside it."""
    return _register_types(MODULE_RULES, types)


def register_op_rule(*names: str) -> Callable[[Rule], Rule]:
    """Register `rule(site, flow) -> Flow | Reached` for the traced ops called `names` (e.g. "relu", "mean")."""

    def deco(rule: Rule) -> Rule:
        for name in names:
            OP_RULES[name] = rule
        return rule

    return deco


def register_producer(*types: type) -> Callable:
    """Register `fn(module, ndim) -> Source` for layer types whose outputs start a prunable group."""
    return _register_types(PRODUCERS, types)


# -- producers ----------------------------------------------------------------------------------------------------
CONVS = (nn.Conv1d, nn.Conv2d, nn.Conv3d)


def depthwise(m: nn.Module) -> bool:
    """A depthwise convolution: one filter per channel (groups == in_channels == out_channels > 1)."""
    return isinstance(m, CONVS) and 1 < m.groups == m.in_channels == m.out_channels


@register_producer(nn.Linear)
def _linear_source(m: nn.Module, ndim: int | None) -> Source:
    return Source(linear_weight(m).shape[0], Flow(ndim - 1 if ndim else -1, ndim), "neurons")


@register_producer(*CONVS)
def _conv_source(m: nn.Conv2d, ndim: int | None) -> Source:
    if depthwise(m):
        raise Blocked("depthwise convolution: its channels are cut with the layer that feeds it, which cannot be "
                      "pruned")
    if m.groups != 1:
        raise Blocked(f"grouped convolution (groups={m.groups})")
    return Source(m.out_channels, Flow(1, ndim or len(m.kernel_size) + 2), "channels")


# -- module rules -------------------------------------------------------------------------------------------------
@register_module_rule(nn.Linear)
def _linear(site: Site, flow: Flow) -> Reached:
    n_in, width = linear_weight(site.module).shape[1], flow.span(site.size)
    if not flow.last:
        raise Blocked(f"feeds Linear {site.name} along a non-channel dimension")
    unit = n_in // width if flow.flat else 1
    if n_in != width * unit:
        raise Blocked(f"feeds {site.name} whose {n_in} inputs do not match {width} channels")
    return Reached((Member(site.name, "in", unit, flow.offset * unit),))


def _register_linear_like() -> None:
    """Linear-like layers of other libraries (transformers' Conv1D, registered in `condense.core.linear_like`)
    start and consume groups as a Linear does (their weight shape read through the adapter)."""
    for t in linear_like_types():
        if t not in PRODUCERS and not issubclass(t, nn.Linear):
            PRODUCERS[t] = _linear_source
            MODULE_RULES[t] = _linear


@register_module_rule(*CONVS)
def _conv(site: Site, flow: Flow) -> Reached:
    m, kind = site.module, type(site.module).__name__
    if flow.cdim != 1 or flow.flat or m.in_channels != flow.span(site.size):
        raise Blocked(f"feeds {kind} {site.name} along another dimension or with mismatched channels")
    if depthwise(m):  # channel c of its output reads only channel c: it loses those filters, channels go on
        return Reached((Member(site.name, "out", 1, flow.offset),), flow)
    if m.groups != 1:
        raise Blocked(f"feeds {kind} {site.name} with groups={m.groups}")
    return Reached((Member(site.name, "in", 1, flow.offset),))


@register_module_rule(nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)
def _batchnorm(site: Site, flow: Flow) -> Reached:
    m = site.module
    if m.num_features != flow.span(site.size) or flow.flat or not (
            flow.cdim == 1 or (flow.cdim == -1 and flow.ndim is None)):
        raise Blocked(f"feeds {site.name} ({type(m).__name__}) over another dimension")
    return Reached((Member(site.name, "out", 1, flow.offset),), flow)


def channelwise(site: Site, flow: Flow) -> Reached:
    """The rule of a layer whose weight entry c acts on channel c alone (a per-channel scale): it loses the cut
    entries and the channels go on."""
    if flow.flat:
        raise Blocked(f"feeds {site.name} ({type(site.module).__name__}) after flattening")
    return Reached((Member(site.name, "out", 1, flow.offset),), flow)


@register_module_rule(nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.GELU, nn.SiLU, nn.Sigmoid, nn.Tanh, nn.ELU, nn.Hardswish,
                      nn.Hardtanh, nn.Mish, nn.Softplus, nn.Dropout, nn.Dropout2d, nn.Identity)
def _elementwise_module(site: Site, flow: Flow) -> Flow:
    return flow  # acts on each element alone: channel c stays channel c


# -- op rules -----------------------------------------------------------------------------------------------------
@register_op_rule("relu", "relu_", "relu6", "gelu", "silu", "sigmoid", "tanh", "leaky_relu", "elu", "hardswish",
                  "hardtanh", "mish", "softplus", "dropout", "contiguous", "clone", "float", "to", "detach", "neg",
                  "__neg__", "exp", "erf")
def _elementwise_op(site: Site, flow: Flow) -> Flow:
    return flow


# Element-wise ops of two operands: with a number they pass the channels on; with a second traced tensor they join.
JOIN_OPS = ("add", "sub", "mul", "truediv", "div", "__add__", "__radd__", "__sub__", "__rsub__", "__mul__", "__rmul__",
            "__truediv__", "__rtruediv__", "add_", "mul_", "__iadd__", "__imul__", "pow", "__pow__")


@register_op_rule(*JOIN_OPS)
def _scalar_op(site: Site, flow: Flow) -> Flow | Joined:
    n = site.node
    tensors = sum(a is TENSOR for a in (*n.args, *n.kwargs.values()))
    if tensors == 1:
        return flow  # with a number: elementwise
    if tensors != len(n.inputs) or n.target in ("pow", "__pow__"):
        raise Blocked(f"meets another tensor in `{site.name}` (e.g. a residual add) that no traced layer produces: "
                      "its width is shared")
    if n.ndim is not None and flow.ndim is not None and n.ndim != flow.ndim:
        raise Blocked(f"is broadcast to rank {n.ndim} by `{site.name}`")
    return Joined(flow)


# -- the walk -----------------------------------------------------------------------------------------------------
# Ops that read several traced tensors and still pass a group on (their rules decide how); any other op reading
# two tensors blocks it. `condense.prune.concat` adds concatenation.
MULTI_INPUT_OPS: set[str] = set(JOIN_OPS)
CONCAT_OPS = {"cat", "concat", "concatenate"}


def _step(nodes: list[Node], i: int, via: int | None, modules: dict[str, nn.Module], counts: dict[str, int],
          size: int, flow: Flow) -> Flow | Reached | None:
    """What the group does at node `i`, reached from its input number `via` (None: the node is metadata, not
    followed); raises Blocked."""
    n = nodes[i]
    if n.kind == "output":
        raise Blocked("its output is a model output")
    inputs = tuple(nodes[j] for j in n.inputs)
    if n.kind == "module":
        m = modules[n.target]
        if len(n.inputs) != 1:
            raise Blocked(f"feeds {n.target} ({type(m).__name__}) together with other tensors")
        if counts.get(n.target, 0) > 1 and has_parameters(m):  # a parameter-free module: N independent calls
            raise Blocked(f"feeds {n.target}, which is called more than once (shared weights)")
        rule = lookup(MODULE_RULES, m)
        if rule is None:
            raise _Unsupported(f"feeds {n.target} ({type(m).__name__}), which has no pruning rule")
        return rule(Site(n, m, size, inputs, via), flow)
    if n.target in META_OPS:
        return None
    if len(n.inputs) != 1 and n.target not in MULTI_INPUT_OPS:
        raise Blocked(f"meets another tensor in `{n.target}` (e.g. a residual add): its width is shared")
    rule = OP_RULES.get(n.target)
    if rule is None:
        raise Blocked(f"goes through `{n.target}`, which has no pruning rule")
    return rule(Site(n, None, size, inputs, via), flow)


def has_parameters(m: nn.Module) -> bool:
    """Whether `m` holds weights (so calling it twice shares them); a ReLU called twice is two independent ops."""
    return next(m.parameters(), None) is not None


_RENORM = "normalises over these channels, so a cut changes its statistics; StructuredConfig(renormalize=True) cuts " \
          "through it"


@dataclass
class Walk:
    """What `follow` found from one producer: the `members` reached, why they cannot be pruned (`reason`, None if
    they can), the layer with no rule that stopped it (`bad`), the nodes whose outputs carry its channels
    (`carriers`) and the element-wise joins it went through (`joins`: node -> its flow there)."""

    members: list[Member] = field(default_factory=list)
    reason: str | None = None
    bad: str | None = None
    carriers: set[int] = field(default_factory=set)
    joins: dict[int, Flow] = field(default_factory=dict)
    fold: int = 1  # the producer's channels are folded into this many pieces: its units are size / fold

    def unfolded(self, mem: Member, size: int, fold: int) -> Member:
        """`mem` (reached at `fold`) in the folded units: before the fold, unit u is elements u + k * size / fold."""
        step = size // self.fold * mem.unit
        return mem if self.fold == fold else replace(mem, blocks=tuple((mem.offset + k * step, mem.unit)
                                                                       for k in range(self.fold)))


def follow(nodes: list[Node], users: dict[int, list[int]], modules: dict[str, nn.Module], counts: dict[str, int],
           start: int, source: Source, renormalize: bool = False) -> Walk:
    """Walk from producer node `start` to every node its channels reach (see `Walk`); `renormalize`: pass norms
    that mix channels (else they block the group)."""
    walk = Walk(carriers={start})
    todo = [(u, source.flow, start) for u in users.get(start, [])]
    seen: dict[int, tuple[Flow, int | None, Any]] = {}
    folds: list[int] = []  # the fold of the flow that reached each member
    while todo:
        i, flow, prev = todo.pop()
        via = nodes[i].inputs.index(prev) if prev in nodes[i].inputs else None
        try:
            if i in seen:
                if i in walk.joins and seen[i][0] != flow:
                    raise Blocked(f"meets itself along another dimension in `{nodes[i].target}`")
                if nodes[i].target in CONCAT_OPS and seen[i][1] != via and seen[i][2] != _step(
                        nodes, i, via, modules, counts, source.size // flow.fold, flow):  # two slices of one concatenation
                    raise Blocked(f"is concatenated with itself in `{nodes[i].target}`")
                continue
            out = _step(nodes, i, via, modules, counts, source.size // flow.fold, flow)
            seen[i] = (flow, via, out)
        except _Unsupported as e:
            walk.reason, walk.bad = str(e), nodes[i].target
            return walk
        except Blocked as e:
            walk.reason = str(e)
            return walk
        if isinstance(out, Joined):
            walk.joins[i] = out = out.flow
        if isinstance(out, Reached):
            walk.members.extend(out.members)
            folds.extend([flow.fold] * len(out.members))
            if out.renormalizes and not renormalize:
                walk.reason = f"feeds {nodes[i].target} ({type(modules[nodes[i].target]).__name__}), which {_RENORM}"
                return walk
            out = out.flow
        if out is not None and out.fold != flow.fold:
            if walk.fold not in (1, out.fold):
                walk.reason = f"is split by `{nodes[i].target}` into {out.fold} pieces and elsewhere {walk.fold}"
                return walk
            walk.fold = out.fold
        if out is not None:
            walk.carriers.add(i)
            todo.extend((u, out, i) for u in users.get(i, []))
    walk.members = [walk.unfolded(m, source.size, f) for m, f in zip(walk.members, folds)]
    if not any(m.dim == "in" for m in walk.members):
        walk.reason = "no layer consumes its outputs"
    return walk
