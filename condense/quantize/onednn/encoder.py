"""A BERT encoder on oneDNN int8 matmuls with the padding dropped: every token-wise layer (the four matmuls,
LayerNorm, GELU, residual adds) runs on the batch's real tokens only, and so does attention (`PackedAttention`).
On CPUs with AMX bf16, condense's kernels (native.cpp, built on first use by native.py) take every sequence at its
own length in one attention call and quantize each LayerNorm's output in the same pass as the LayerNorm; elsewhere
torch's flash attention runs on a few buckets of sequences of similar length (`attention_plan`) and torch's
layer_norm, mul and quantize_per_tensor run one after another.

Layout: the batch's sequences are sorted by length (longest first) and their real tokens laid end to end, (N, C).
For torch's attention, a bucket of sequences that all have its length is a (n, L, 3, heads, head_dim) view of the
fused q/k/v output and goes to `scaled_dot_product_attention` without a mask; a bucket of shorter ones is gathered
to its length with a key mask, and only its real rows are kept. The last hidden states are scattered back to
(B, T, C), zero at padded positions (or mean-pooled straight from the packed rows: `mean_pooled`).

Per block: q/k/v as one int8 matmul (bf16 out, for attention); the attention output projection adds into the
residual in the same kernel; `ffn_in` applies GELU and writes uint8 at `ffn_out`'s input scale (no float
intermediate); `ffn_out` adds into the residual. BERT's FFN has a few hidden channels whose GELU output is 3-4x
the next largest: with one activation scale per tensor they would coarsen every other channel's steps, so the
`float_channels` largest (on calibration data) are kept out of it: an int8 matmul from the same uint8 input
writes their GELU output in float32 and a float matmul adds them to the residual (LLM.int8()-style).
SmoothQuant (`alpha`) moves the LayerNorm outputs' outlier channels into the q/k/v and `ffn_in` weights.
"""
from __future__ import annotations

from dataclasses import dataclass
from itertools import groupby
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from condense.errors import CondenseError
from condense.quantize.onednn import native
from condense.quantize.onednn.kernels import Int8Matmul, widen_range

SITES = ("qkv", "out", "in", "h")  # inputs of: query/key/value, attn.out, ffn_in, ffn_out
SMOOTHED = ("qkv", "in")  # LayerNorm outputs (SmoothQuant sites)
# What this file reads of a BERT-like encoder (condense's `condense.tasks.bert.Bert`, which registers it): `.config`,
# `.embeddings` with `check_length(T)` and `at(ids, positions)`, and `.layers`, post-LN blocks with `attn` (`query`,
# `key`, `value`, `out` Linears, `n_heads`, `head_dim`), `attn_norm`, `ffn_in`, `ffn_out`, `ffn_norm` (exact GELU).

Stats = dict[str, tuple[torch.Tensor, torch.Tensor]]  # site -> per-channel (min, max) over real tokens


class FloatChannels(nn.Module):
    """The FFN hidden channels kept out of `ffn_out`'s uint8 input: h_k = gelu(x W_in[k]^T + b[k]) on an int8
    matmul that reads `ffn_in`'s uint8 input (float32 out, so these channels keep their own range), then
    out += h_k W_out[:, k]^T in float."""

    def __init__(self, ffn_in: Int8Matmul, w_in: torch.Tensor, b_in: torch.Tensor, w_out: torch.Tensor) -> None:
        super().__init__()
        self.mm = ffn_in.sharing_input(w_in, b_in)
        self.register_buffer("w_out", w_out.detach().float().t().contiguous())  # (k, C)

    def hidden(self, xq: torch.Tensor) -> torch.Tensor:
        """xq: `ffn_in`'s quantized input (N, C) -> (N, k) float32."""
        return self.mm(xq, quantized=True, gelu=True)


class PackedInt8Block(nn.Module):
    """One post-LN BERT block on packed tokens (see the module docstring)."""

    def __init__(self, block: nn.Module, stats: Stats, *, float_channels: int, alpha: float) -> None:
        super().__init__()
        a = block.attn
        self.n_heads, self.head_dim = a.n_heads, a.head_dim

        def matmul(site: str, weight: torch.Tensor, bias: torch.Tensor, channels: torch.Tensor | None = None
                   ) -> Int8Matmul:
            lo, hi = stats[site]
            if channels is not None:
                lo, hi = lo[channels], hi[channels]
            return Int8Matmul.calibrated(weight, bias, lo, hi, alpha if site in SMOOTHED else 0.0)

        self.qkv = matmul("qkv", torch.cat([a.query.weight, a.key.weight, a.value.weight]).detach(),
                          torch.cat([a.query.bias, a.key.bias, a.value.bias]).detach())
        self.out = matmul("out", a.out.weight, a.out.bias)
        self.attn_norm = block.attn_norm
        lo, hi = stats["h"]
        k = min(float_channels, block.ffn_in.out_features - 1)
        outliers = torch.topk(torch.maximum(lo.abs(), hi.abs()), k).indices.sort().values
        kept = torch.ones(lo.numel(), dtype=torch.bool)
        kept[outliers] = False
        kept = kept.nonzero().squeeze(1)
        self.ffn_in = matmul("in", block.ffn_in.weight.detach()[kept], block.ffn_in.bias.detach()[kept])
        self.ffn_out = matmul("h", block.ffn_out.weight.detach()[:, kept], block.ffn_out.bias, kept)
        self.float_channels = (FloatChannels(self.ffn_in, block.ffn_in.weight.detach()[outliers],
                                             block.ffn_in.bias.detach()[outliers],
                                             block.ffn_out.weight.detach()[:, outliers]) if k else None)
        self.ffn_norm = block.ffn_norm

    def forward(self, x: torch.Tensor, xq: torch.Tensor, attend: "PackedAttention", following: Int8Matmul | None
                ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """x (N, C) float32 packed tokens (overwritten) and xq, x quantized for this block's q/k/v; attend: attention
        over their sequences; following: the next block's q/k/v matmul (None after the last block) ->
        (the block's output (N, C), it quantized for `following` or None)."""
        qkv = self.qkv(xq, quantized=True, out_dtype=torch.bfloat16)  # (N, 3 * heads * head_dim)
        y = attend(qkv, self.n_heads, self.head_dim)  # (N, heads * head_dim) float32
        x, xq = norm_quantize(self.attn_norm, self.out(y, accumulate=x), self.ffn_in, attend.kernels)  # x + out(y)
        side = self.float_channels.hidden(xq) if self.float_channels is not None else None
        h = self.ffn_in(xq, quantized=True, out_dtype=torch.uint8, gelu=True, out_range=self.ffn_out.output_range)
        f = self.ffn_out(h, quantized=True, accumulate=x)  # x + ffn_out(h), in the kernel
        if side is not None:
            f = f.addmm_(side, self.float_channels.w_out)
        return norm_quantize(self.ffn_norm, f, following, attend.kernels)


def norm_quantize(norm: nn.LayerNorm, x: torch.Tensor, mm: Int8Matmul | None, kernels: Any
                  ) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(norm(x), it quantized for `mm`'s input or None without `mm`). With condense's kernels (`kernels`, else
    None): one pass, LayerNorm in place in x; otherwise torch's layer_norm, then `mm.quantize`."""
    if kernels is None or x.shape[-1] % 16 or norm.weight is None or norm.bias is None:
        y = norm(x)
        return y, None if mm is None else mm.quantize(y)
    if mm is None:
        kernels.layer_norm_quantize(x, norm.weight, norm.bias, norm.eps, _EMPTY, 0)
        return x, None
    mul, zp = mm.input_multiplier()
    return x, kernels.layer_norm_quantize(x, norm.weight, norm.bias, norm.eps, mul, zp)


_EMPTY = torch.empty(0)


@dataclass(frozen=True)
class Bucket:
    """One `scaled_dot_product_attention` call: `count` sequences on a (count, length) grid whose outputs fill the
    packed rows [start, stop).

    rows None: the grid is a view of the packed rows, sequence i's window starting at start + i * stride; a window
    longer than `stride` reaches into the rows after the sequence, whose keys `mask` hides and whose outputs are
    dropped. rows a tensor: the grid's packed rows (gathered), padding pointing at a row of its own sequence, and
    `real` the grid positions that are real tokens. mask: additive key mask, 0 at real keys, -inf at padding; None
    when every key is real.
    """

    start: int
    stop: int
    count: int
    length: int
    stride: int
    rows: torch.Tensor | None = None
    mask: torch.Tensor | None = None
    real: torch.Tensor | None = None


def attention_plan(lengths: list[int], *, block: int = 32, short: int = 64, step: int = 16,
                   dtype: torch.dtype = torch.bfloat16) -> list[Bucket]:
    """Buckets for sequences of `lengths` (sorted longest first, laid end to end).

    torch's CPU flash attention (bf16) runs a sequence longer than `short` whose length is not a multiple of its
    `block` about as slowly as one padded to the next multiple with a key mask takes: such a group of equal-length
    sequences is attended through windows padded to that multiple, read in place (no copy). Up to `short` tokens
    the call itself is most of the cost, so shorter sequences are gathered into a few buckets, their lengths
    rounded up to a multiple of `step`, each padded to its longest.

    Example:
        >>> [(b.length, b.count, b.rows is None, b.mask is None) for b in attention_plan([128, 128, 100, 40, 33])]
        [(128, 2, True, True), (128, 1, True, False), (40, 2, False, False)]
    """
    plan, small, start, n_rows = [], [], 0, sum(lengths)
    for length, count in ((n, len(list(g))) for n, g in groupby(lengths)):  # runs of equal lengths
        window = -(-length // block) * block
        if length <= short:
            small.append((length, count, start))
        elif window != length and start + (count - 1) * length + window <= n_rows:
            mask = torch.zeros(1, 1, 1, window, dtype=dtype)
            mask[..., length:] = float("-inf")
            plan.append(Bucket(start, start + count * length, count, window, length, mask=mask))
        else:
            plan.append(Bucket(start, start + count * length, count, length, length))
        start += count * length
    buckets: dict[int, list[tuple[int, int, int]]] = {}  # lengths rounded up to `step` -> their groups
    for length, count, first in small:
        buckets.setdefault(-(-length // step) * step, []).append((length, count, first))
    for groups in buckets.values():
        size = groups[0][0]  # the bucket's longest
        first, stop = groups[0][2], groups[-1][2] + groups[-1][0] * groups[-1][1]
        if len(groups) == 1:
            plan.append(Bucket(first, stop, groups[0][1], size, size))
            continue
        lens = torch.tensor([n for n, c, _ in groups for _ in range(c)])
        starts = torch.tensor([s + i * n for n, c, s in groups for i in range(c)])
        pos = torch.arange(size)
        keep = pos[None, :] < lens[:, None]  # (count, size)
        rows = starts[:, None] + torch.minimum(pos[None, :], lens[:, None] - 1)
        mask = torch.zeros(len(lens), 1, 1, size, dtype=dtype).masked_fill_(~keep[:, None, None, :], float("-inf"))
        plan.append(Bucket(first, stop, len(lens), size, size, rows.reshape(-1), mask,
                           keep.reshape(-1).nonzero().squeeze(1)))
    return plan


def bucketed_attention(qkv: torch.Tensor, plan: list[Bucket], n_heads: int, head_dim: int, *,
                       out_dtype: torch.dtype | None = None) -> torch.Tensor:
    """Attention of the sequences laid end to end in `qkv` (N, 3 * n_heads * head_dim), bucket by bucket
    (`attention_plan`) -> (N, n_heads * head_dim) in the same row order, in `out_dtype` (default: qkv's)."""
    qkv = qkv.contiguous()  # the windows below are views with its row stride
    n, width = qkv.shape
    out_dtype = qkv.dtype if out_dtype is None else out_dtype
    out = qkv.new_empty(n, n_heads * head_dim, dtype=out_dtype)  # the copies below cast to it
    for b in plan:
        mask = b.mask if b.mask is None or b.mask.dtype == qkv.dtype else b.mask.to(qkv.dtype)
        if b.rows is None:
            grid = qkv.as_strided((b.count, b.length, width), (b.stride * width, width, 1),
                                  qkv.storage_offset() + b.start * width)
        else:
            grid = qkv.index_select(0, b.rows).view(b.count, b.length, width)
        q, k, v = grid.unflatten(2, (3, n_heads, head_dim)).permute(2, 0, 3, 1, 4)
        # torch's CPU flash attention lays its output out as (count, length, heads, head_dim): a view here
        o = F.scaled_dot_product_attention(q, k, v, attn_mask=mask).transpose(1, 2).flatten(2)
        dst = out[b.start:b.stop]
        if b.rows is None:
            dst.view(b.count, b.stride, -1).copy_(o[:, :b.stride])
        else:
            dst.copy_(o.reshape(-1, o.shape[-1]).index_select(0, b.real))
    return out


class PackedAttention:
    """Attention over the sequences laid end to end in a packed q/k/v (sorted longest first, `lengths` rows each):
    `attend(qkv, n_heads, head_dim)` -> (N, n_heads * head_dim) float32 (quantizing it for the output projection
    then needs no cast). condense's kernel (`native.native_kernels`: CPUs with AMX bf16, head sizes 16, 32, 48,
    64) where it built and passed its check, each sequence at its own length in one call for the batch; else
    torch's flash attention on `attention_plan`'s buckets. native: None = the kernel where available, False =
    never, True = the kernel or a CondenseError saying why not (`use_native`).

    Example:
        >>> attend = PackedAttention([3, 2], use_native=False)
        >>> attend(torch.randn(5, 3 * 2 * 16).bfloat16(), 2, 16).shape
        torch.Size([5, 32])
    """

    NATIVE_HEAD_SIZES = (16, 32, 48, 64)

    def __init__(self, lengths: list[int], *, use_native: bool | None = None) -> None:
        # the native module also holds the fused LayerNorm + quantize the blocks call (`norm_quantize`)
        self.kernels, why = native.native_kernels() if use_native is not False else (None, "native=False")
        if use_native and self.kernels is None:
            raise CondenseError(f"condense's attention kernel is unavailable here: {why}; leave native unset "
                                "to use torch's attention instead")
        self.lengths = lengths
        self.lens = torch.tensor(lengths, dtype=torch.long)
        self.starts = torch.cumsum(self.lens, 0) - self.lens
        self._plan: list[Bucket] | None = None

    def native(self, head_dim: int) -> bool:
        """Whether heads of this size go to condense's kernel."""
        return self.kernels is not None and head_dim in self.NATIVE_HEAD_SIZES

    def __call__(self, qkv: torch.Tensor, n_heads: int, head_dim: int) -> torch.Tensor:
        if self.native(head_dim):
            return self.kernels.packed_attention(qkv.contiguous(), self.starts, self.lens, n_heads, head_dim,
                                                head_dim ** -0.5)
        if self._plan is None:
            self._plan = attention_plan(self.lengths)
        # float32 out: the copies out of torch's attention cast on the way
        return bucketed_attention(qkv, self._plan, n_heads, head_dim, out_dtype=torch.float32)


class PackedInt8Bert(nn.Module):
    """`Bert`'s (input_ids, attention_mask) -> (B, T, C) last hidden states on packed tokens and int8 matmuls.

    Padded positions of the output are zero (the float model computes values there that every consumer masks).
    Hidden states of every layer and attention maps are not available: distil or prune before quantizing.
    """

    def __init__(self, bert: nn.Module, stats: list[Stats], *, float_channels: int, alpha: float) -> None:
        super().__init__()
        self.config = bert.config
        self.embeddings = bert.embeddings
        self.layers = nn.ModuleList(PackedInt8Block(b, s, float_channels=float_channels, alpha=alpha)
                                    for b, s in zip(bert.layers, stats))
        self.native: bool | None = None  # condense's kernels (native.cpp): None where available, False never

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None, *,
                output_hidden_states: bool = False, output_attentions: bool = False) -> torch.Tensor:
        if output_hidden_states or output_attentions:
            raise CondenseError("this encoder runs int8 on packed tokens (OneDnnInt8Config) and computes the last "
                                "hidden states only; distil or prune the float model first, then quantize")
        x, rows, cols = self._packed(input_ids, attention_mask)
        out = x.new_zeros(*input_ids.shape, x.shape[-1])
        out[rows, cols] = x
        return out

    def mean_pooled(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """`mean_pool(self(ids, mask), mask)` (B, C), L2-normalised, summed straight from the packed real tokens
        (no padded (B, T, C) tensor): what `condense.core.text.pooled_embeddings` calls."""
        x, rows, _ = self._packed(input_ids, attention_mask)
        sums = x.new_zeros(input_ids.shape[0], x.shape[-1]).index_add_(0, rows, x)
        counts = torch.bincount(rows, minlength=input_ids.shape[0]).clamp(min=1).to(x.dtype)
        return F.normalize(sums / counts[:, None], p=2, dim=1)

    def _packed(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Last hidden states of the real tokens (N, C) and their (row, column) in the padded batch."""
        if input_ids.dim() != 2:
            raise CondenseError(f"input_ids must be (batch, tokens), got shape {tuple(input_ids.shape)}; "
                                "use SentenceEncoder.tokenize(texts) to build them")
        B, T = input_ids.shape
        self.embeddings.check_length(T)
        mask = torch.ones_like(input_ids) if attention_mask is None else attention_mask
        if mask.shape != input_ids.shape:
            raise CondenseError(f"attention_mask shape {tuple(mask.shape)} differs from input_ids "
                                f"{tuple(input_ids.shape)}; pass the mask returned with the ids")
        keep = mask.bool()
        lens = keep.sum(1)  # (B,)
        order = torch.argsort(lens, descending=True, stable=True)
        flat = keep[order].reshape(-1).nonzero().squeeze(1)  # real tokens, longest sequence first
        rows, cols = order[flat // T], flat % T  # where each packed token sits in the padded batch
        attend = PackedAttention([n for n in lens[order].tolist() if n > 0], use_native=self.native)
        with torch.no_grad():  # inference kernels: no autograd formula for oneDNN's int8 ops
            x = self.embeddings.at(input_ids[rows, cols], cols)  # (N, C)
            xq = self.layers[0].qkv.quantize(x) if len(self.layers) else None
            for i, layer in enumerate(self.layers):
                following = self.layers[i + 1].qkv if i + 1 < len(self.layers) else None
                x, xq = layer(x, xq, attend, following)
        return x, rows, cols


def calibration_stats(bert: nn.Module, run: Any) -> list[Stats]:
    """Per block and site, per-channel (min, max) of the float model's activations over real tokens only, while
    `run()` feeds it the calibration batches."""
    stats: list[Stats] = [{} for _ in bert.layers]
    mask: list[torch.Tensor | None] = [None]

    def remember_mask(_m: nn.Module, args: tuple, kwargs: dict) -> None:
        m = kwargs.get("attention_mask", args[1] if len(args) > 1 else None)
        mask[0] = None if m is None else m.bool()

    def observe(i: int, site: str):
        def hook(_m: nn.Module, inputs: tuple, _out: Any) -> None:
            x, m = inputs[0], mask[0]
            widen_range(stats[i], site, x[m] if m is not None and m.shape == x.shape[:2] else x)
        return hook

    handles = [bert.register_forward_pre_hook(remember_mask, with_kwargs=True)]
    for i, b in enumerate(bert.layers):
        for site, mod in zip(SITES, (b.attn.query, b.attn.out, b.ffn_in, b.ffn_out)):
            handles.append(mod.register_forward_hook(observe(i, site)))
    try:
        run()
    finally:
        for h in handles:
            h.remove()
    if any(len(s) != len(SITES) for s in stats):
        raise CondenseError("calibration ran no batch through the encoder's blocks; pass calibration batches the "
                            "model's forward (or the task's run_batch) feeds to the encoder")
    return stats


def placeholder_stats(bert: nn.Module) -> list[Stats]:
    """Stats of the right shapes for rebuilding the structure before an artifact's tensors load into it."""
    out = []
    for b in bert.layers:
        widths = {"qkv": b.attn.query.in_features, "out": b.attn.out.in_features, "in": b.ffn_in.in_features,
                  "h": b.ffn_out.in_features}
        out.append({s: (-torch.ones(w), torch.arange(w, dtype=torch.float32) + 1.0) for s, w in widths.items()})
    return out


def build_packed_bert(bert: nn.Module, run: Any, cfg: Any) -> PackedInt8Bert:
    """`PACKED_ENCODERS`' builder for a BERT-like encoder: calibrated while `run()` feeds it the calibration batches,
    or (`run` None, when an artifact loads) with placeholder ranges its saved tensors then overwrite."""
    stats = placeholder_stats(bert) if run is None else calibration_stats(bert, run)
    return PackedInt8Bert(bert, stats, float_channels=cfg.float_channels, alpha=cfg.smooth_quant)
