"""Attention heads found from the computation: how each projection's output is reshaped, not what it is called.

One recorded forward pass (a calibration batch) shows, for every linear-like layer (`nn.Linear`, GPT-2's `Conv1D`),
where its output goes. A projection whose output is viewed as (..., n_heads, head_dim), directly or after a split
of a fused projection (GPT-2's `c_attn` splits into q, k, v and views each), gives heads; the layer that later reads
the merged heads (a reshape of (..., n, head_dim) back to (..., n * head_dim)) is the output projection (Llama's
`o_proj`, BERT's `BertSelfOutput.dense`, GPT-2's `c_proj`). The module whose forward made the views is the
attention module: its head-count attributes are updated by its head cutter (`condense.prune.head_cutters`).

Grouped-query attention: q has n heads, k and v have n_kv < n. The unit of a group is one key/value head with its
n // n_kv query heads (the `repeat_kv` / `enable_gqa` layout: query head i reads key/value head i // (n // n_kv)),
so every kept key/value head keeps its whole query group and `num_key_value_groups` stays what it was. Asked
(`StructuredConfig(gqa="queries")`), `within_groups` recasts such a group as the same query heads removed inside
every group instead: the key/value heads (and the KV cache) stay, `num_key_value_groups` shrinks.

Without data, the name patterns of `condense.prune.graph.HEAD_PATTERNS` still serve condense's own models.

Example:
    >>> import torch
    >>> from torch import nn
    >>> class Attn(nn.Module):
    ...     def __init__(self):
    ...         super().__init__()
    ...         self.q, self.k, self.v, self.o = (nn.Linear(8, 8) for _ in range(4))
    ...     def forward(self, x):  # (B, T, 8)
    ...         q, k, v = (p(x).view(*x.shape[:2], 2, 4).transpose(1, 2) for p in (self.q, self.k, self.v))
    ...         y = torch.nn.functional.scaled_dot_product_attention(q, k, v)  # (B, 2, T, 4)
    ...         return self.o(y.transpose(1, 2).reshape(*x.shape[:2], 8))
    >>> [(g.name, g.size, [(m.module, m.dim, m.unit) for m in g.members]) for g in
    ...  find_heads(Attn(), lambda m: m(torch.randn(1, 3, 8)))]
    [('', 2, [('q', 'out', 4), ('k', 'out', 4), ('v', 'out', 4), ('o', 'in', 4), ('', 'heads', 1)])]
"""
from __future__ import annotations

import weakref
from dataclasses import dataclass
from typing import Any, Callable

import torch
from torch import nn
from torch.overrides import TorchFunctionMode

from condense.core.linear_like import find_adapter
from condense.prune.head_cutters import GENERIC, ensure_head_cutter
from condense.prune.rules import Member
from condense.prune.tracing import META_OPS, op_name, tensors_in

__all__ = ["HeadMember", "HeadGroup", "find_heads", "discover", "within_groups", "member_elements", "unit_slices"]

# Ops a projection's output may pass through, unchanged in layout, before its heads are viewed out of it.
PASS_OPS = {"contiguous", "clone", "to", "float", "half", "bfloat16", "type", "dropout", "detach"}
SPLIT_OPS = {"split", "chunk", "tensor_split", "split_with_sizes"}
VIEW_OPS = {"view", "reshape", "unflatten", "view_as", "reshape_as"}


@dataclass(frozen=True)
class HeadMember(Member):
    """A member whose units lie in several blocks of one layer: `blocks` = ((offset, unit), ...), e.g. the q, k and
    v parts of GPT-2's fused `c_attn`; unit u of block b is elements offset_b + u * unit_b ... + unit_b - 1."""

    blocks: tuple[tuple[int, int], ...] = ()


def member_elements(mem: Member, idx: torch.Tensor) -> torch.Tensor:
    """The element indices of units `idx` in `mem`'s layer (along its `dim`)."""
    blocks = getattr(mem, "blocks", ()) or ((mem.offset, mem.unit),)
    return torch.cat([(off + idx[:, None] * unit + torch.arange(unit)).reshape(-1) for off, unit in blocks])


def unit_slices(mem: Member, t: torch.Tensor, axis: int, size: int) -> torch.Tensor:
    """(size, rest) rows of `t`: row u holds every slice of unit u along `axis` (all blocks of a HeadMember)."""
    x = t.detach().float().movedim(axis, 0)
    blocks = getattr(mem, "blocks", ())
    if not blocks:
        return x[mem.offset:mem.offset + size * mem.unit].reshape(size, -1)
    return torch.cat([x[off:off + size * unit].reshape(size, -1) for off, unit in blocks], dim=1)


@dataclass(frozen=True)
class HeadGroup:
    """Heads of one attention module: `size` units of `per_unit` query heads each, `head_dim` wide at the output."""

    name: str
    size: int
    per_unit: int
    head_dim: int
    members: tuple[Member, ...]


def within_groups(size: int, members: tuple[Member, ...]) -> tuple[int, tuple[Member, ...]] | None:
    """A grouped-query head group (one key/value head with its query heads per unit) recast as "the same query
    heads inside every group": (query heads per group, members), the key/value projections untouched; None when
    that cannot be cut that way (multi-head attention, or a fused projection holding q with k and v)."""
    attn = members[-1]
    if attn.dim != "q_heads" or any(getattr(m, "blocks", ()) for m in members):
        return None
    g = attn.unit
    q = [m for m in members[:-1] if m.unit == members[-2].unit]  # q ("out") and the consumer ("in"): g heads a unit
    hd = members[-2].unit // g
    out = tuple(HeadMember(m.module, m.dim, hd, blocks=tuple((j * g * hd, hd) for j in range(size))) for m in q)
    return g, (*out, Member(attn.module, "group_heads", 1))


# -- recording ------------------------------------------------------------------------------------------------------
@dataclass
class _Op:
    name: str
    ins: list[tuple[int, int]]  # (op, output index) of each recorded tensor argument
    shapes: list[tuple[int, ...]]  # of each tensor output
    args: tuple
    scope: str  # innermost module running when the op was called
    module: str | None = None  # a linear-like layer's call


class _Recorder(TorchFunctionMode):
    """Records every torch call made outside a linear-like layer, and each linear-like layer's call, as `_Op`s."""

    def __init__(self) -> None:
        super().__init__()
        self.ops: list[_Op] = []
        self.src: dict[int, tuple[int, int]] = {}  # id(tensor) -> (op, output index); entries vanish with tensors
        self.scope: list[str] = []  # names of the modules running, outermost first
        self.depth = 0  # > 0 inside a linear-like layer

    def add(self, name: str, args: tuple, kwargs: dict, out: Any, module: str | None = None) -> None:
        ins = [self.src[id(t)] for t in tensors_in((args, kwargs)) if id(t) in self.src]
        if module is None and (name in META_OPS or not ins):
            return
        outs = tensors_in(out)
        clean = tuple(None if isinstance(a, torch.Tensor) else a for a in args)
        self.ops.append(_Op(name, ins, [tuple(t.shape) for t in outs], clean, self.scope[-1] if self.scope else "",
                            module))
        for k, t in enumerate(outs):
            self.src[id(t)] = (len(self.ops) - 1, k)
            weakref.finalize(t, self.src.pop, id(t), None)

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        if self.depth == 0:
            self.add(op_name(func), args, kwargs, out)
        return out


def _record(model: nn.Module, run: Callable[[nn.Module], Any]) -> _Recorder:
    rec = _Recorder()
    names = {id(m): n for n, m in model.named_modules()}
    leaves = {id(m) for m in model.modules() if find_adapter(m) is not None}
    handles = []

    def pre(m: nn.Module, args: tuple, kwargs: dict) -> None:
        rec.scope.append(names[id(m)])
        rec.depth += id(m) in leaves

    def post(m: nn.Module, args: tuple, kwargs: dict, out: Any) -> None:
        if id(m) in leaves:
            if rec.depth == 1:
                rec.add("module", args, kwargs, out, module=names[id(m)])
            rec.depth -= 1
        rec.scope.pop()

    for m in model.modules():
        handles.append(m.register_forward_pre_hook(pre, with_kwargs=True))
        handles.append(m.register_forward_hook(post, with_kwargs=True))
    try:
        with torch.no_grad(), rec:
            run(model)
    finally:
        for h in handles:
            h.remove()
    return rec


# -- analysis -------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class _View:
    proj: str
    lo: int  # first output feature of the projection this view covers
    n: int  # heads
    hd: int  # head_dim
    op: int
    scope: str


def _users(ops: list[_Op]) -> dict[tuple[int, int], list[int]]:
    users: dict[tuple[int, int], list[int]] = {}
    for i, op in enumerate(ops):
        for src in dict.fromkeys(op.ins):
            users.setdefault(src, []).append(i)
    return users


def _head_views(ops: list[_Op], users: dict, p: int, width: int) -> list[_View] | None:
    """Every (..., n, hd) view of projection call `p`'s output, or None if the output is used any other way."""
    views, todo = [], [((p, 0), 0, width)]
    while todo:
        src, lo, size = todo.pop()
        shape = ops[src[0]].shapes[src[1]]
        for u in users.get(src, []):
            op = ops[u]
            if len(set(op.ins)) != 1 or not op.shapes:
                return None
            if op.name in PASS_OPS and op.shapes[0] == shape:
                todo.append(((u, 0), lo, size))
            elif op.name in SPLIT_OPS and all(s[:-1] == shape[:-1] for s in op.shapes) and \
                    sum(s[-1] for s in op.shapes) == size:  # along the features
                off = lo
                for k, s in enumerate(op.shapes):
                    todo.append(((u, k), off, s[-1]))
                    off += s[-1]
            elif op.name in VIEW_OPS and len(op.shapes[0]) == len(shape) + 1 and \
                    op.shapes[0][:-2] == shape[:-1] and op.shapes[0][-2] * op.shapes[0][-1] == size:
                views.append(_View(ops[p].module, lo, op.shapes[0][-2], op.shapes[0][-1], u, op.scope))
            else:
                return None
    covered = sorted((v.lo, v.n * v.hd) for v in views)
    ends = [lo + s for lo, s in covered]
    if not views or covered[0][0] != 0 or ends[-1] != width or [lo for lo, _ in covered[1:]] != ends[:-1]:
        return None
    return views


def _merged_from(ops: list[_Op], users: dict, c: int, n: int, hd: int) -> bool:
    """Whether consumer call `c` reads a reshape of (..., n, hd) into (..., n * hd) (through layout-free ops)."""
    cur = ops[c].ins[0] if ops[c].ins else None
    while cur is not None:
        op = ops[cur[0]]
        if op.module is not None or len(set(op.ins)) != 1:
            return False
        inp = ops[op.ins[0][0]].shapes[op.ins[0][1]]
        if op.name in VIEW_OPS | {"flatten"}:
            return inp[-2:] == (n, hd) and op.shapes[0][-1] == n * hd
        if op.name not in PASS_OPS:
            return False
        cur = op.ins[0]
    return False


def _group(name: str, views: list[_View], consumer: str, width: int, ops: list[_Op], users: dict, c: int
           ) -> HeadGroup | None:
    n_q, n_kv = max(v.n for v in views), min(v.n for v in views)
    if any(v.n not in (n_q, n_kv) for v in views) or n_q % n_kv or width % n_q:
        return None
    hd_o = width // n_q
    if not _merged_from(ops, users, c, n_q, hd_o):
        return None
    members: list[Member] = []
    for proj in dict.fromkeys(v.proj for v in views):
        mine = sorted((v for v in views if v.proj == proj), key=lambda v: v.lo)
        blocks = tuple((v.lo, v.hd * (v.n // n_kv)) for v in mine)
        if len(blocks) == 1 and blocks[0][0] == 0:
            members.append(HeadMember(proj, "out", blocks[0][1]))
        else:
            members.append(HeadMember(proj, "out", blocks[0][1], blocks=blocks))
    g = n_q // n_kv
    members.append(Member(consumer, "in", hd_o * g))
    members.append(Member(name, "heads", 1) if g == 1 else Member(name, "q_heads", g))
    return HeadGroup(name, n_kv, g, hd_o, tuple(members))


def find_heads(model: nn.Module, run: Callable[[nn.Module], Any]) -> list[HeadGroup]:
    """Head groups of `model` from one recorded forward pass `run(model)` (see the module docstring)."""
    return discover(model, run)[0]


def _cross_check(m: nn.Module, g: HeadGroup) -> str | None:
    """Why the well-known count attributes of attention module `m` disagree with the heads seen, or None."""
    want = {"heads": g.size * g.per_unit, "kv_heads": g.size, "head_dim": g.head_dim}
    for key, names in (("heads", GENERIC.heads), ("kv_heads", GENERIC.kv_heads),
                       ("head_dim", ("head_dim", "attention_head_size"))):
        have = next((getattr(m, a) for a in names if isinstance(getattr(m, a, None), int)), None)
        if have is not None and have != want[key]:
            return f"its attribute says {have} {key} but its projections are viewed as {want[key]}"
    return None


def discover(model: nn.Module, run: Callable[[nn.Module], Any]) -> tuple[list[HeadGroup], dict[str, str]]:
    """(head groups, {attention module: why its heads are not pruned}); each group's module gets a head cutter."""
    ops = _record(model, run).ops
    users = _users(ops)
    calls: dict[str, list[int]] = {}
    for i, op in enumerate(ops):
        if op.module is not None:
            calls.setdefault(op.module, []).append(i)
    modules = dict(model.named_modules())
    views: list[_View] = []
    for name, idx in calls.items():
        if len(idx) == 1:
            w = find_adapter(modules[name]).weight(modules[name]).shape[0]
            views.extend(_head_views(ops, users, idx[0], w) or [])
    # which views reach which linear-like layer (data flow, reset at every linear-like layer)
    taint: dict[tuple[int, int], frozenset[int]] = {}
    reach: dict[int, set[int]] = {}  # view index -> consumer op indices
    by_op = {v.op: k for k, v in enumerate(views)}
    for i, op in enumerate(ops):
        t = frozenset().union(*(taint.get(s, frozenset()) for s in op.ins))
        if op.module is not None:
            for k in t:
                reach.setdefault(k, set()).add(i)
            continue
        if i in by_op:
            t = t | {by_op[i]}
        for k in range(len(op.shapes)):
            taint[(i, k)] = t
    out: list[HeadGroup] = []
    rejected: dict[str, str] = {}
    for c in sorted({c for r in reach.values() for c in r}):
        mine = [views[k] for k, r in reach.items() if c in r]
        if any(len(reach[k]) != 1 for k, r in reach.items() if c in r) or len({v.scope for v in mine}) != 1:
            continue
        consumer = ops[c].module
        if len(calls[consumer]) != 1 or any(v.proj == consumer for v in mine):
            continue
        width = find_adapter(modules[consumer]).weight(modules[consumer]).shape[1]
        group = _group(mine[0].scope, mine, consumer, width, ops, users, c)
        why = None if group is None else _cross_check(modules[group.name], group)
        if why is not None:
            rejected[group.name] = f"heads not pruned: {why}"
        elif group is not None:
            ensure_head_cutter(modules[group.name], group.name)
            out.append(group)
    return out, rejected
