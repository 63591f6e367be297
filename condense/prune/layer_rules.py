"""More pruning rules (`condense.prune.rules` has the table): reductions, concatenation and splits, Embedding,
ConvTranspose and the norms.

Concatenation along the channels: a producer's channels become positions offset ... offset + size - 1 of the
concatenated tensor (the widths of the tensors before it, read from the recorded shapes), so a consumer reads them
at that offset (`Member.offset`) and keeps the slices of the other inputs; a consumer of several producers'
channels (a DenseNet block, a Linear after two branches) is a member of each group. Concatenation along another
dimension (tokens, batch) needs the same channels in every piece: its producers are cut together, like an add.

Splits along another dimension (`split`, `chunk`, `unbind` of tokens or heads) pass the channels to every piece.
`chunk(n)` along the channels of a whole producer output (a fused gate/up projection, GLU) folds the group: unit u
is channel u of every piece, so every piece loses the same units and the chunks stay equal (`Member.blocks` in the
producer). Any other split along the channels is blocked (its piece sizes are fixed in the forward).

Norms: BatchNorm (in `rules`) and a GroupNorm with one group per channel act on each channel alone, so a cut equals
zeroing. LayerNorm, RMSNorm (torch's, and Hugging Face's weight-only types in `cutters.OPTIONAL_NORMS`) and a
GroupNorm with fewer groups normalise over several channels: their statistics change when channels go, so a group
passes them only with `build_graph(renormalize=True)` (`StructuredConfig(renormalize=True)`), else it is blocked
with that reason.

Example:
    >>> import torch
    >>> from torch import nn
    >>> from condense.prune.graph import build_graph
    >>> class Branches(nn.Module):
    ...     def __init__(self):
    ...         super().__init__(); self.a, self.b, self.c = nn.Linear(4, 3), nn.Linear(4, 5), nn.Linear(8, 2)
    ...     def forward(self, x): return self.c(torch.cat([self.a(x), self.b(x)], dim=-1))
    >>> g = build_graph(Branches(), run=lambda m: m(torch.randn(2, 4)))
    >>> [(x.name, [(m.module, m.dim, m.offset) for m in x.members]) for x in g.groups]
    [('a', [('a', 'out', 0), ('c', 'in', 0)]), ('b', [('b', 'out', 0), ('c', 'in', 3)])]
"""
from __future__ import annotations

from dataclasses import replace

from torch import nn

from condense.prune.cutters import optional_norm_types
from condense.prune.rules import (CONCAT_OPS, MODULE_RULES, MULTI_INPUT_OPS, PRODUCERS, Blocked, Flow, Joined,
                                  Member, Reached, Site, Source, register_lazy, register_module_rule,
                                  register_op_rule, register_producer)

SPLIT_OPS = ("split", "chunk", "tensor_split", "split_with_sizes", "unbind")


# -- reductions, pooling, flatten ---------------------------------------------------------------------------------
@register_op_rule("max_pool1d", "avg_pool1d", "adaptive_avg_pool1d", "adaptive_max_pool1d", "max_pool2d", "avg_pool2d",
                  "adaptive_avg_pool2d", "adaptive_max_pool2d")
def _pool_op(site: Site, flow: Flow) -> Flow:
    if not flow.conv_map:
        raise Blocked(f"goes through `{site.name}` over the channel dimension")
    return flow


@register_module_rule(nn.MaxPool1d, nn.AvgPool1d, nn.AdaptiveAvgPool1d, nn.AdaptiveMaxPool1d,
                      nn.MaxPool2d, nn.AvgPool2d, nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d)
def _pool(site: Site, flow: Flow) -> Flow:
    if not flow.conv_map:
        raise Blocked(f"feeds pooling {site.name} over the channel dimension")
    return flow


@register_module_rule(nn.Flatten)
def _flatten_module(site: Site, flow: Flow) -> Flow:
    m = site.module
    if m.start_dim != 1 or m.end_dim != -1 or not flow.conv_map:
        raise Blocked(f"feeds {site.name} (Flatten) that mixes the channel dimension")
    return replace(flow, ndim=2, flat=True)


@register_op_rule("mean", "sum", "amax", "amin")
def _reduce_op(site: Site, flow: Flow) -> Flow:
    name, n, cdim, nd = site.name, site.node, flow.cdim, flow.ndim
    dims = n.arg(1, "dim", None)
    if dims is None or flow.flat:
        raise Blocked(f"is reduced over every dimension by `{name}`")
    dims = (dims,) if isinstance(dims, int) else tuple(dims)
    if nd is None and any(d >= 0 for d in dims):
        raise Blocked(f"`{name}` over dims {dims} of a tensor of unknown rank; pass calibration data")
    norm = {d % nd if nd else d for d in dims}
    if (cdim % nd if nd else cdim) in norm:
        raise Blocked(f"`{name}` reduces the channel dimension")
    if nd is not None and not bool(n.arg(2, "keepdim", False)):
        cdim = cdim - sum(1 for d in norm if d < cdim % nd)
        nd -= len(norm)
    return replace(flow, cdim=cdim, ndim=nd)


@register_op_rule("flatten")
def _flatten_op(site: Site, flow: Flow) -> Flow:
    n = site.node
    if n.arg(1, "start_dim", 0) != 1 or n.arg(2, "end_dim", -1) != -1 or not flow.conv_map:
        raise Blocked("`flatten` mixes the channel dimension")
    return replace(flow, ndim=2, flat=True)


# -- concatenation and splits -------------------------------------------------------------------------------------
def _along_channels(site: Site, flow: Flow, dim: int) -> bool:
    """Whether `dim` of the incoming tensor is the channel dimension (raises Blocked when the rank is unknown)."""
    shape = site.inputs[site.via].shape if site.via is not None else None  # recorded: never None
    nd = flow.ndim if flow.ndim is not None else len(shape or ()) or None
    if nd is None:
        if (dim < 0) != (flow.cdim < 0):
            raise Blocked(f"goes through `{site.name}` at a rank the trace does not know; pass calibration data")
        return dim == flow.cdim
    return dim % nd == flow.cdim % nd


MULTI_INPUT_OPS.update(CONCAT_OPS)


@register_op_rule(*CONCAT_OPS)
def _cat(site: Site, flow: Flow) -> Flow | Joined:
    n, via = site.node, site.via
    dim = n.arg(1, "dim", 0)
    if via is None or not isinstance(dim, int):
        raise Blocked(f"goes through `{site.name}` in a way the trace does not show")
    if not _along_channels(site, flow, dim):  # tokens or batch: every piece has the same channels, cut together
        if any(j < 0 for j, _ in n.operands or ()):
            raise Blocked(f"is concatenated by `{site.name}` with a tensor no traced layer produces: its width is "
                          "shared")
        return Joined(flow)
    if flow.flat:
        raise Blocked(f"is concatenated by `{site.name}` after flattening")
    ops = n.operands  # every concatenated tensor, traced or not (a model input), with its shape
    if ops is None:
        raise Blocked(f"is concatenated by `{site.name}` with tensors of widths the trace does not know; pass "
                      "calibration data so the forward pass is recorded")
    mine = [k for k, (j, _) in enumerate(ops) if j == n.inputs[via]]
    if len(mine) != 1:
        raise Blocked(f"is concatenated with itself in `{site.name}`")
    d = dim % len(ops[mine[0]][1])
    widths = [shape[d] for _, shape in ops]
    if widths[mine[0]] != flow.span(site.size):
        raise Blocked(f"is concatenated by `{site.name}` with a width {widths[mine[0]]} that does not match its "
                      f"{flow.span(site.size)} channels")
    return replace(flow, offset=flow.offset + sum(widths[:mine[0]]), width=sum(widths))


@register_op_rule(*SPLIT_OPS)
def _split(site: Site, flow: Flow) -> Flow:
    n = site.node
    dim = n.arg(1 if n.target == "unbind" else 2, "dim", 0)
    chunks = n.arg(1, "chunks", None)
    whole = flow.fold == 1 and flow.offset == 0 and flow.width is None and not flow.flat
    if n.target == "chunk" and isinstance(dim, int) and _along_channels(site, flow, dim) and whole \
            and isinstance(chunks, int) and chunks > 1 and site.size % chunks == 0:
        return replace(flow, fold=chunks)  # equal pieces, whatever the width: unit u is channel u of each piece
    if not isinstance(dim, int) or _along_channels(site, flow, dim):
        raise Blocked(f"is split along its channels by `{site.name}`: the sizes of the pieces are fixed in the "
                      "forward, so they cannot shrink")
    if n.target != "unbind":
        return flow  # every piece has the channels where they were
    if flow.ndim is None:
        return flow if flow.cdim < 0 else replace(flow, cdim=flow.cdim - (dim < flow.cdim))
    c, d = flow.cdim % flow.ndim, dim % flow.ndim
    return replace(flow, cdim=c - (d < c), ndim=flow.ndim - 1)


@register_op_rule("getitem")
def _getitem(site: Site, flow: Flow) -> Flow:
    if site.inputs and site.inputs[0].target in SPLIT_OPS:
        return flow  # one piece of a split along another dimension
    raise Blocked(f"is indexed by `{site.name}`, which has no pruning rule")


# -- Embedding, ConvTranspose -------------------------------------------------------------------------------------
@register_producer(nn.Embedding)
def _embedding_source(m: nn.Embedding, ndim: int | None) -> Source:
    return Source(m.embedding_dim, Flow(ndim - 1 if ndim else -1, ndim), "neurons")


TRANSPOSED = (nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)


@register_producer(*TRANSPOSED)
def _transposed_source(m: nn.Module, ndim: int | None) -> Source:
    if m.groups != 1:
        raise Blocked(f"grouped transposed convolution (groups={m.groups})")
    return Source(m.out_channels, Flow(1, ndim or len(m.kernel_size) + 2), "channels")


@register_module_rule(*TRANSPOSED)
def _transposed(site: Site, flow: Flow) -> Reached:
    m = site.module
    if flow.cdim != 1 or flow.flat or m.in_channels != flow.span(site.size) or m.groups != 1:
        raise Blocked(f"feeds {type(m).__name__} {site.name} along another dimension, with mismatched channels or "
                      "groups")
    return Reached((Member(site.name, "in", 1, flow.offset),))


# -- norms --------------------------------------------------------------------------------------------------------
def _last_dim_norm(site: Site, flow: Flow) -> Reached:
    """LayerNorm / RMSNorm over the last dimension, which must be exactly the group's channels' dimension."""
    m, width = site.module, flow.span(site.size)
    shape = getattr(m, "normalized_shape", None)
    n = shape[0] if isinstance(shape, tuple) and len(shape) == 1 else getattr(getattr(m, "weight", None), "shape",
                                                                             (None,))[0]
    if not flow.last or flow.flat or n != width:
        raise Blocked(f"feeds {site.name} ({type(m).__name__}), which normalises over other dimensions")
    return Reached((Member(site.name, "out", 1, flow.offset),), flow, renormalizes=True)


register_module_rule(nn.LayerNorm, nn.RMSNorm)(_last_dim_norm)


@register_module_rule(nn.GroupNorm)
def _group_norm(site: Site, flow: Flow) -> Reached:
    m = site.module
    if flow.cdim != 1 or flow.flat or m.num_channels != flow.span(site.size):
        raise Blocked(f"feeds {site.name} (GroupNorm) over another dimension")
    per_channel = m.num_groups == m.num_channels  # each channel normalised alone: a cut equals zeroing
    return Reached((Member(site.name, "out", 1, flow.offset),), flow, renormalizes=not per_channel)


@register_lazy
def _register_optional_norms() -> None:
    """Hugging Face's weight-only RMSNorm types (`condense.prune.cutters.OPTIONAL_NORMS`), once imported."""
    for t in optional_norm_types():
        MODULE_RULES.setdefault(t, _last_dim_norm)


__all__ = ["SPLIT_OPS", "TRANSPOSED", "PRODUCERS"]
