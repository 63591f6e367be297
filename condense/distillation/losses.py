"""Distillation losses: what "behave like the teacher" means, one function per signal.

- `logit_kd_loss`: Hinton et al. 2015, `alpha * T^2 * KL(softmax(z_t/T) || softmax(z_s/T)) + (1 - alpha) * task`;
  logits of any shape (..., K) are compared per row, so for a language model it is token-level distillation
  (every position's next-token distribution).
- `hidden_state_loss` (with `Projection` when the student is narrower): per-layer MSE between hidden states,
  normalised by the teacher's mean square so layers of any scale weigh alike (TinyBERT, MiniLM).
- `attention_map_loss`: KL between attention distributions (MiniLM / TinyBERT style).
- `embedding_distillation_loss`: sentence encoders, which have no labels: cosine between sentence embeddings, plus
  the in-batch similarity ranking that retrieval depends on, plus (on batches of text pairs) an in-batch
  contrastive loss that pulls each pair together (`contrastive_loss`).
"""
from __future__ import annotations

from typing import Any, Callable, Iterable, Iterator, Protocol, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from condense.errors import ConfigError
from condense.core.registry import TypeRegistry
from condense.core.text import TextPairs, mean_pool
from condense.train.loop import FitConfig, fit


def logit_kd_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, *, temperature: float = 2.0,
                  alpha: float = 0.5, targets: torch.Tensor | None = None) -> torch.Tensor:
    """`alpha * T^2 * KL(p_t || p_s) + (1 - alpha) * cross_entropy(student, targets)`, averaged over rows.

    Logits are (..., K); every leading position is one row (tokens of an LM count one each). Without `targets`
    only the distillation term is returned (unscaled by alpha), as on unlabelled data.

    Example:
        >>> z = torch.tensor([[2.0, 0.0]])
        >>> float(logit_kd_loss(z, z, temperature=2.0, alpha=1.0))
        0.0
    """
    k = student_logits.shape[-1]
    s = student_logits.reshape(-1, k).float()  # (rows, K)
    t = teacher_logits.reshape(-1, k).float().detach()
    kl = F.kl_div(F.log_softmax(s / temperature, -1), F.log_softmax(t / temperature, -1), log_target=True,
                  reduction="batchmean")
    kd = kl * temperature ** 2
    if targets is None:
        return kd
    ce = F.cross_entropy(s, targets.reshape(-1))
    return alpha * kd + (1 - alpha) * ce


class Projection(nn.Module):
    """A learned Linear from the student's width to the teacher's, one per distilled layer (identity if equal)."""

    def __init__(self, student_width: int, teacher_width: int) -> None:
        super().__init__()
        self.proj = nn.Linear(student_width, teacher_width, bias=False) if student_width != teacher_width else None

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return h if self.proj is None else self.proj(h)


def hidden_state_loss(student: Sequence[torch.Tensor], teacher: Sequence[torch.Tensor],
                      projections: Sequence[nn.Module] | None = None) -> torch.Tensor:
    """Mean over paired layers of MSE(proj(h_s), h_t) / mean(h_t^2); hidden states (..., C_s) and (..., C_t).

    Example:
        >>> h = [torch.ones(2, 3, 4)]
        >>> float(hidden_state_loss(h, h))
        0.0
    """
    total = 0.0
    for i, (hs, ht) in enumerate(zip(student, teacher)):
        p = projections[i](hs) if projections is not None else hs
        ht = ht.detach().float()
        total = total + F.mse_loss(p.float(), ht) / ht.pow(2).mean().clamp_min(1e-12)
    return total / max(len(student), 1)


def attention_map_loss(student: Sequence[torch.Tensor], teacher: Sequence[torch.Tensor],
                       mask: torch.Tensor | None = None) -> torch.Tensor:
    """Mean over paired layers of KL(A_t || A_s) per query row; maps (B, H, T, T), rows sum to 1.

    When the head counts differ, each side's maps are averaged over heads first. `mask` (B, T) marks real
    query tokens (padding rows are ignored).

    Example:
        >>> a = [torch.full((1, 2, 3, 3), 1 / 3)]
        >>> float(attention_map_loss(a, a))
        0.0
    """
    total = 0.0
    for a_s, a_t in zip(student, teacher):
        a_t = a_t.detach().float()
        a_s = a_s.float()
        if a_s.shape[1] != a_t.shape[1]:
            a_s, a_t = a_s.mean(1, keepdim=True), a_t.mean(1, keepdim=True)
        # KL per row: sum_j t_j (log t_j - log s_j); 0 * log 0 counts as 0 (masked keys)
        kl = torch.where(a_t > 0, a_t * (a_t.clamp_min(1e-30).log() - a_s.clamp_min(1e-30).log()), 0.0).sum(-1)
        if mask is not None:
            m = mask[:, None, :].to(kl.dtype).expand_as(kl)  # (B, H, T)
            total = total + (kl * m).sum() / m.sum().clamp_min(1)
        else:
            total = total + kl.mean()
    return total / max(len(student), 1)


def contrastive_loss(queries: torch.Tensor, documents: torch.Tensor, scale: float = 20.0) -> torch.Tensor:
    """Symmetric in-batch InfoNCE on unit embeddings (B, C): row i's positive is column i, the rest are negatives.

    The mean of cross-entropy(scale * Q D^T, diagonal) over queries and over documents (sentence-transformers'
    MultipleNegativesRankingLoss, made symmetric; scale 20 = temperature 0.05).

    Example:
        >>> e = torch.eye(4)
        >>> float(contrastive_loss(e, e, scale=20.0)) < 1e-6
        True
    """
    logits = scale * queries @ documents.T  # (B, B)
    target = torch.arange(len(queries), device=queries.device)
    return 0.5 * (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target))


def anchored_contrastive_loss(s_queries: torch.Tensor, s_documents: torch.Tensor, t_queries: torch.Tensor,
                              t_documents: torch.Tensor, scale: float = 20.0) -> torch.Tensor:
    """The pair loss against the teacher's embeddings: the mean of `contrastive_loss(student queries, teacher
    documents)` and `contrastive_loss(teacher queries, student documents)`, all (B, C) unit vectors.

    The student learns to find the teacher's vector of each pair's other half among the batch's, so the pairs'
    signal pulls its embeddings towards the teacher's space instead of away from it: its queries still retrieve from
    an index the teacher built. The teacher's embeddings are targets (no gradient).

    Example:
        >>> e = torch.eye(4)
        >>> float(anchored_contrastive_loss(e, e, e, e, scale=20.0)) < 1e-6
        True
    """
    t_queries, t_documents = t_queries.detach(), t_documents.detach()
    return 0.5 * (contrastive_loss(s_queries, t_documents, scale) + contrastive_loss(t_queries, s_documents, scale))


# what the pair loss compares a student's embedding of each pair's half with: its own of the other half, or the
# teacher's (DistillConfig.contrastive_target); each takes (student q, student d, teacher q, teacher d, scale)
CONTRASTIVE_TARGETS: dict[str, Callable[..., torch.Tensor]] = {
    "student": lambda sq, sd, tq, td, scale: contrastive_loss(sq, sd, scale),
    "teacher": anchored_contrastive_loss,
}


class TokenEncoder(Protocol):
    """What embedding distillation needs from a sentence encoder type, besides `tokenize`: its per-token hidden
    states before pooling (and attention maps), and which parameters are its blocks (the rest stays frozen)."""

    def hidden_states(self, model: nn.Module, ids: torch.Tensor, mask: torch.Tensor, *, attentions: bool = False
                      ) -> tuple[torch.Tensor, Sequence[torch.Tensor] | None]:
        """(B, T) ids and mask -> ((B, T, C) last hidden states, the attention maps per layer if `attentions`)."""
        ...

    def block_parameters(self, model: nn.Module) -> Iterator[nn.Parameter]:
        """The parameters of the transformer blocks (not the embedding tables)."""
        ...


# sentence encoder type -> its TokenEncoder; registered by the module defining the type (the minilm
# `SentenceEncoder` registers one in condense/tasks/encoder.py).
TOKEN_ENCODERS: TypeRegistry[Any] = TypeRegistry("token encoder")


def token_encoder(model: nn.Module) -> TokenEncoder:
    """The registered TokenEncoder of `model`'s type, or a ConfigError saying what to register."""
    enc = TOKEN_ENCODERS.find(model)
    if enc is None:
        name = type(model).__name__
        raise ConfigError(f"embedding distillation needs a sentence encoder whose type registered a TokenEncoder; "
                          f"{name} has none: register one in the module that defines it, "
                          f"condense.distillation.losses.TOKEN_ENCODERS.register({name})(...) (the minilm "
                          "SentenceEncoder registers one), or use loss='logits' for models returning logits")
    return enc


def embedding_distillation_loss(teacher: nn.Module, *, max_tokens: int | None = None, token_weight: float = 0.0,
                                relation_weight: float = 1.0, temperature: float = 0.05,
                                attention_weight: float = 0.0, contrastive_weight: float = 1.0,
                                contrastive_scale: float = 20.0, contrastive_target: str = "student"
                                ) -> Callable[[nn.Module, list[str] | TextPairs], torch.Tensor]:
    """`loss(student, batch)`: 1 - cosine between student and teacher sentence embeddings, plus optional terms.

    A batch is a list of texts, or `TextPairs` (both halves are distilled). Both models get the same tokens
    (`student.tokenize`, cut to `max_tokens` to train faster).
    `relation_weight` adds KL(teacher || student) between the softmax (at `temperature`) of each text's cosine
    similarities to the other texts of the batch: retrieval depends on that ranking, which matching each vector
    alone does not protect. `token_weight` adds the normalised MSE between last hidden states over real tokens.
    `attention_weight` adds `attention_map_loss` between the student's last attention maps and the teacher's.
    `contrastive_weight` adds, on `TextPairs` batches, `contrastive_loss` between the student's query and document
    embeddings: the pairs' own signal, which can move the student past the teacher on the task the pairs resemble.
    `contrastive_target="teacher"` compares them with the teacher's embeddings of the other half instead
    (`anchored_contrastive_loss`: the student stays in the teacher's space).

    Example:
        >>> from condense.tasks.encoder import load_minilm
        >>> enc = load_minilm()
        >>> float(embedding_distillation_loss(enc)(enc, ["a cat sat on the mat"]))  # doctest: +SKIP
        0.0
    """
    if contrastive_target not in CONTRASTIVE_TARGETS:
        raise ConfigError(f"contrastive_target must be one of {', '.join(map(repr, CONTRASTIVE_TARGETS))}, got "
                          f"{contrastive_target!r}; e.g. contrastive_target='teacher'")
    pair_loss = CONTRASTIVE_TARGETS[contrastive_target]
    teacher.eval()
    for p in teacher.parameters():
        p.requires_grad_(False)
    t_enc = token_encoder(teacher)

    def loss(student: nn.Module, batch: list[str] | TextPairs) -> torch.Tensor:
        pairs = isinstance(batch, TextPairs)
        if pairs and len(batch.queries) != len(batch.documents):
            raise ConfigError(f"a TextPairs batch needs one document per query, got {len(batch.queries)} queries "
                              f"and {len(batch.documents)} documents")
        texts = list(batch.queries) + list(batch.documents) if pairs else list(batch)
        ids, mask = student.tokenize(texts)  # (B, T) each
        if max_tokens is not None:
            ids, mask = ids[:, :max_tokens], mask[:, :max_tokens]
        dev = next(student.parameters()).device
        ids, mask = ids.to(dev), mask.to(dev)
        attn = bool(attention_weight)
        with torch.no_grad():
            t_hidden, t_attn = t_enc.hidden_states(teacher, ids, mask, attentions=attn)  # (B, T, C)
        s_hidden, s_attn = token_encoder(student).hidden_states(student, ids, mask, attentions=attn)  # (B, T, C)
        t_emb, s_emb = mean_pool(t_hidden, mask), mean_pool(s_hidden, mask)  # (B, C)
        out = (1 - F.cosine_similarity(s_emb, t_emb, dim=-1)).mean()
        if relation_weight and len(texts) > 2:
            off = ~torch.eye(len(texts), dtype=torch.bool, device=dev)  # a text's similarity to itself says nothing
            t_rel = (t_emb @ t_emb.T)[off].view(len(texts), -1) / temperature  # (B, B - 1)
            s_rel = (s_emb @ s_emb.T)[off].view(len(texts), -1) / temperature
            kl = F.kl_div(s_rel.log_softmax(-1), t_rel.log_softmax(-1), log_target=True, reduction="batchmean")
            out = out + relation_weight * kl
        if token_weight:
            m = mask.unsqueeze(-1).to(s_hidden.dtype)  # (B, T, 1)
            err = ((s_hidden - t_hidden) ** 2 * m).sum() / (m.sum() * s_hidden.shape[-1])
            out = out + token_weight * err / t_hidden.pow(2).mean().clamp_min(1e-12)
        if attention_weight:
            out = out + attention_weight * attention_map_loss(s_attn[-1:], t_attn[-1:], mask)
        if contrastive_weight and pairs and len(batch.queries) > 1:
            n = len(batch.queries)
            out = out + contrastive_weight * pair_loss(s_emb[:n], s_emb[n:], t_emb[:n], t_emb[n:], contrastive_scale)
        return out

    return loss


def distill_embeddings_(student: nn.Module, teacher: nn.Module,
                        texts: Callable[[], Iterable[list[str] | TextPairs]], cfg: FitConfig, *,
                        max_tokens: int | None = None, token_weight: float = 0.0, relation_weight: float = 1.0,
                        train_embeddings: bool = False, attention_weight: float = 0.0,
                        contrastive_weight: float = 1.0, contrastive_target: str = "student") -> list[float]:
    """Train `student` (a SentenceEncoder) to match `teacher`'s embeddings on batches of texts (lists of strings,
    or `TextPairs`, which add the contrastive term); returns losses. Terms as in `embedding_distillation_loss`.

    The embedding tables (half of MiniLM's weights, never pruned) stay frozen unless `train_embeddings`: the
    blocks are what compression changed, and skipping the tables' gradients and optimizer state makes steps cheaper.

    Example:
        >>> from condense.tasks.encoder import load_minilm  # doctest: +SKIP
        >>> enc = load_minilm(); small = copy.deepcopy(enc)  # doctest: +SKIP
        >>> distill_embeddings_(small, enc, lambda: [["some text", "more"]], FitConfig(steps=2))  # doctest: +SKIP
    """
    loss = embedding_distillation_loss(teacher, max_tokens=max_tokens, token_weight=token_weight,
                                       relation_weight=relation_weight, attention_weight=attention_weight,
                                       contrastive_weight=contrastive_weight, contrastive_target=contrastive_target)
    params = student.parameters() if train_embeddings else token_encoder(student).block_parameters(student)
    losses = fit(student, texts, loss, cfg, params=params, description="embedding distillation")
    student.eval()
    return losses


def block_outputs(model: nn.Module) -> dict[str, nn.Module]:
    """The blocks of `model`: every module held in an `nn.ModuleList` (transformer layers, ResNet stages' blocks),
    by name. Structured pruning cuts inside blocks and keeps the stream between them, so a pruned student's
    blocks have the dense teacher's names and output shapes.

    Example:
        >>> net = nn.Sequential(nn.Linear(2, 2), nn.ModuleList([nn.Linear(2, 2), nn.ReLU()]))
        >>> list(block_outputs(net))
        ['1.0', '1.1']
    """
    return {f"{name}.{i}" if name else str(i): m for name, lst in model.named_modules()
            if isinstance(lst, nn.ModuleList) for i, m in enumerate(lst)}


class _Recorder:
    """Forward hooks keeping the first tensor each named block returns (the hidden states), while in `with`."""

    def __init__(self, blocks: dict[str, nn.Module]) -> None:
        self.blocks, self.out, self.handles = blocks, {}, []

    def __enter__(self) -> dict[str, torch.Tensor]:
        def hook(name: str) -> Callable:
            def keep(m: nn.Module, args: Any, out: Any) -> None:
                t = out if isinstance(out, torch.Tensor) else next(
                    (o for o in out if isinstance(o, torch.Tensor)), None) if isinstance(out, (tuple, list)) else None
                if t is not None:
                    self.out[name] = t
            return keep

        self.out = {}
        self.handles = [m.register_forward_hook(hook(n)) for n, m in self.blocks.items()]
        return self.out

    def __exit__(self, *exc: Any) -> None:
        for h in self.handles:
            h.remove()


def block_match_loss(student: dict[str, torch.Tensor], teacher: dict[str, torch.Tensor],
                     mask: torch.Tensor | None = None) -> torch.Tensor:
    """Mean over the blocks both sides produced at the same shape of the MSE between the student's and the
    teacher's block outputs (..., C), over the positions `mask` (B, T) keeps when given, divided by the teacher's
    mean square (each block weighs alike). 0 when no block pairs up.

    Example:
        >>> h = {"0": torch.ones(2, 3, 4)}
        >>> float(block_match_loss(h, {"0": 2 * torch.ones(2, 3, 4)}))
        0.25
    """
    total, n = None, 0
    for name, hs in student.items():
        ht = teacher.get(name)
        if ht is None or ht.shape != hs.shape:
            continue
        ht, hs = ht.detach().float(), hs.float()
        err, sq = (hs - ht) ** 2, ht ** 2
        if mask is not None and hs.dim() == 3 and tuple(mask.shape) == tuple(hs.shape[:2]):
            m = mask.to(hs.device, hs.dtype).unsqueeze(-1)  # (B, T, 1)
            err, sq = (err * m).sum() / m.sum().clamp_min(1), (sq * m).sum() / m.sum().clamp_min(1)
        else:
            err, sq = err.mean(-1).mean(), sq.mean(-1).mean()
        term = err / sq.clamp_min(1e-12)
        total, n = (term if total is None else total + term), n + 1
    return total / n if n else torch.zeros(())


def embedding_match_loss(teacher: nn.Module, embed: Callable[[nn.Module, Any], torch.Tensor], *,
                         relation_weight: float = 1.0, temperature: float = 0.05, block_weight: float = 0.0
                         ) -> Callable[[nn.Module, Any], torch.Tensor]:
    """`loss(student, inputs)` for any encoder, through `embed(model, inputs) -> (B, H)` sentence embeddings (a
    task's `Task.embed`, e.g. the `hf:` encoder task's mean pooling): 1 - cosine to the teacher's embeddings, plus
    `relation_weight` times KL(teacher || student) between the softmax (at `temperature`) of each text's cosine
    similarities to the batch's other texts (the ranking retrieval depends on). `block_weight` adds
    `block_match_loss` between the outputs of the blocks (`block_outputs`) of student and teacher that have the
    same name and shape (layer-wise distillation: after structured pruning every block's output is still the
    dense width), over the real tokens when the inputs are a dict with an `attention_mask`. `(inputs, target)`
    batches are accepted and the target ignored.

    Example:
        >>> lin = nn.Linear(3, 4)
        >>> loss = embedding_match_loss(lin, lambda m, x: m(x))
        >>> float(loss(lin, torch.randn(5, 3))) < 1e-6
        True
    """
    t_blocks = block_outputs(teacher) if block_weight else {}

    def loss_fn(model: nn.Module, batch: Any) -> torch.Tensor:
        inputs = batch[0] if isinstance(batch, (tuple, list)) and len(batch) == 2 and \
            isinstance(batch[1], torch.Tensor) else batch
        with torch.no_grad(), _Recorder(t_blocks if block_weight else {}) as t_out:
            t = F.normalize(embed(teacher, inputs).float(), dim=-1)  # (B, H)
        with _Recorder(block_outputs(model) if block_weight else {}) as s_out:
            s = F.normalize(embed(model, inputs).float(), dim=-1)
        loss = (1 - (s * t).sum(-1)).mean()
        if block_weight:
            mask = inputs.get("attention_mask") if isinstance(inputs, dict) else None
            loss = loss + block_weight * block_match_loss(s_out, t_out, mask).to(loss.device)
        if relation_weight and len(t) > 2:
            off = ~torch.eye(len(t), dtype=torch.bool, device=t.device)  # a text's similarity to itself says nothing
            t_rel = (t @ t.T)[off].view(len(t), -1) / temperature  # (B, B - 1)
            s_rel = (s @ s.T)[off].view(len(s), -1) / temperature
            loss = loss + relation_weight * F.kl_div(s_rel.log_softmax(-1), t_rel.log_softmax(-1), log_target=True,
                                                     reduction="batchmean")
        return loss

    return loss_fn


def distill_embed_fn_(student: nn.Module, teacher: nn.Module, data: Callable[[], Iterable[Any]] | Iterable[Any],
                      embed: Callable[[nn.Module, Any], torch.Tensor], cfg: FitConfig, *,
                      train_embeddings: bool = False, block_weight: float = 0.0) -> list[float]:
    """Train any encoder `student` to match `teacher`'s embeddings (`embedding_match_loss` through `embed`) on
    unlabelled batches; returns the losses. The `nn.Embedding` tables stay frozen unless `train_embeddings` (the
    blocks are what compression changed; frozen tables make steps cheaper). The teacher runs under no_grad and is
    left as it was (not frozen: it may be the dense model the next student is copied from)."""
    teacher.eval()
    tables = {id(p) for m in student.modules() if isinstance(m, nn.Embedding) for p in m.parameters()}
    params = [p for p in student.parameters() if train_embeddings or id(p) not in tables]
    losses = fit(student, data, embedding_match_loss(teacher, embed, block_weight=block_weight), cfg,
                 params=params, description="embedding distillation")
    student.eval()
    return losses
