"""Recovery after structured pruning or layer removal: short training that wins back most of the lost quality.

With labels (a task with `loss`, e.g. digits, tinygpt) recovery is ordinary fine-tuning through `ctx.finetune`.
A sentence encoder has no labels, but its dense self is a perfect teacher: the pruned model learns to reproduce
the dense model's sentence embeddings on unlabelled text (standard-library docstrings, outside the evaluation
set), with `condense.distillation.losses.embedding_distillation_loss` in the shared `fit` loop; on batches of text
pairs (the minilm task's summary/rest-of-docstring pairs) it adds the in-batch contrastive term. Any other encoder
(a Hugging Face `BertModel` through the `hf:` task's `embed`, trained on its docstring pairs) matches the pooled
embeddings, their in-batch similarity ranking, and the output of every block (`BLOCK_WEIGHT`): a structured cut
keeps the width between blocks, so each block can be held to the dense one's output.
"""
from __future__ import annotations

from typing import Any, Callable

import torch
from torch import nn

from condense.core.transforms import TransformContext
from condense.distillation.losses import distill_embed_fn_, distill_embeddings_
from condense.errors import ConfigError
from condense.train.loop import FitConfig


# Layer-wise term of encoder recovery (`block_match_loss` weight). Measured on the pretrained MiniLM (BertModel),
# 25% heads + 60% FFN cut, 100 to 300 steps on the docstring pairs, 3 seeds: MRR@10 unchanged within noise (98.6%
# vs 98.7% of dense at 100 steps), mean cosine to the dense embeddings up by 0.003 to 0.005 (0.844 vs 0.839 at 300).
BLOCK_WEIGHT = 1.0


class _Stop(Exception):
    """Ends a calibration pass once the layer of interest has run."""


def _capture(model: nn.Module, name: str, batches: list[Any], run: Callable[[nn.Module, Any], Any],
             fn: Callable[[int, torch.Tensor, torch.Tensor], None]) -> None:
    """Run each batch until layer `name` has run, calling fn(batch index, its input, its output)."""
    layer = dict(model.named_modules())[name]
    index = [0]

    def hook(m: nn.Module, args: tuple, out: torch.Tensor) -> None:
        fn(index[0], args[0].detach(), out.detach())
        raise _Stop

    handle = layer.register_forward_hook(hook)
    try:
        with torch.inference_mode():
            for index[0], b in enumerate(batches):
                try:
                    run(model, b)
                except _Stop:
                    pass
    finally:
        handle.remove()


def reconstruct_(pruned: nn.Module, dense: nn.Module, layers: dict[str, tuple[list[int], list[int] | None]],
                 batches: list[Any], run: Callable[[nn.Module, Any], Any], *, inputs: str = "dense",
                 damp: float = 0.01) -> None:
    """Refit Linears of `pruned` by least squares so each reproduces the dense layer's output.

    `layers` maps each Linear to (dense input features kept, dense output features kept or None for all).
    Per layer: W', b' = argmin ||X W'^T + b' - Y_d||^2 over the calibration batches, damped by `damp` times the
    mean diagonal of [X 1]^T [X 1]; Y_d is the dense layer's output. X is the dense layer's input at the kept
    features (`inputs="dense"`: each layer approximates the dense function; best in residual networks, where
    upstream errors travel around the layer anyway), or the pruned model's own input with earlier layers already
    refitted (`inputs="pruned"`, in forward order: absorbs upstream errors in plain chains).
    """
    if inputs not in ("dense", "pruned"):
        raise ConfigError(f"inputs must be 'dense' or 'pruned', got {inputs!r}")
    order: list[str] = []
    hooks = [m.register_forward_pre_hook(lambda m, a, n=n: order.append(n) if n not in order else None)
             for n, m in dense.named_modules() if n in layers]
    try:
        with torch.inference_mode():
            run(dense, batches[0])
    finally:
        for h in hooks:
            h.remove()
    modules = dict(pruned.named_modules())
    for name in order:
        layer = modules[name]
        in_cols, out_cols = layers[name]
        ys: list[torch.Tensor] = []
        acc: dict[str, torch.Tensor] = {}

        def add(x: torch.Tensor, y: torch.Tensor) -> None:
            z = x.reshape(-1, x.shape[-1]).float()  # (rows, k)
            if layer.bias is not None:
                z = torch.cat([z, z.new_ones(z.shape[0], 1)], 1)  # the intercept
            # products in float32 (fast), sums over batches in float64: (k [+1], k [+1]) and (k [+1], out)
            acc["zz"] = acc.get("zz", 0) + (z.T @ z).double()
            acc["zy"] = acc.get("zy", 0) + (z.T @ y).double()

        def dense_io(i: int, x: torch.Tensor, y: torch.Tensor) -> None:
            y = y.reshape(-1, y.shape[-1]).float()  # (rows, out)
            y = y if out_cols is None else y[:, out_cols]
            if inputs == "dense":
                add(x.reshape(-1, x.shape[-1])[:, in_cols], y)
            else:
                ys.append(y)

        _capture(dense, name, batches, run, dense_io)
        if inputs == "pruned":
            _capture(pruned, name, batches, run, lambda i, x, y: add(x, ys[i]))
        zz, zy = acc["zz"], acc["zy"]
        a = zz + damp * zz.diagonal().mean() * torch.eye(zz.shape[0], dtype=zz.dtype)
        sol = torch.linalg.solve(a, zy)  # (k [+1], out)
        with torch.no_grad():
            k = layer.in_features
            layer.weight.copy_(sol[:k].T.to(layer.weight.dtype))
            if layer.bias is not None:
                layer.bias.copy_(sol[k].to(layer.bias.dtype))


def obs_scores(layer: nn.Linear, gram: torch.Tensor, n_remove: int, unit: int = 1, damp: float = 0.01,
               steps: int = 64) -> torch.Tensor:
    """Optimal Brain Surgeon order of `layer`'s input units: scores (n_units,), lower = removed earlier.

    `gram` is [X 1]^T [X 1] / rows of the layer's calibration inputs (the last row/column is the intercept, so
    the bias absorbs what it can). Repeatedly removes the units (`unit` consecutive inputs each, e.g. a head)
    whose removal raises the layer's squared output error least once the remaining weights are re-optimised:
    cost_u = tr(W_u [H^-1]_uu^-1 W_u^T), then W and H^-1 are updated as if they were gone (Hassibi & Stork
    1993; the block form as in ZipLM). To stay fast, each of at most `steps` rounds removes the ceil(n_remove /
    steps) cheapest units together (exactly, as one block); with n_remove <= steps it is the one-at-a-time greedy.
    Units never removed score `n_units`.
    """
    n_in = layer.in_features
    n = n_in // unit
    W = layer.weight.detach().double().cpu()  # (out, in)
    if layer.bias is not None:
        W = torch.cat([W, layer.bias.detach().double().cpu()[:, None]], 1)  # (out, in + 1)
        H = gram
    else:
        H = gram[:n_in, :n_in]
    H = H + damp * H.diagonal().mean() * torch.eye(H.shape[0], dtype=H.dtype)
    Hinv = torch.linalg.inv(H)
    alive = torch.ones(n, dtype=torch.bool)
    scores = torch.full((n,), float(n))
    cols = torch.arange(n_in).view(n, unit)  # (n, unit)
    eye = torch.eye(unit, dtype=H.dtype)
    per_round = -(-n_remove // steps)
    removed = 0
    while removed < n_remove:
        blocks = Hinv[cols[:, :, None], cols[:, None, :]]  # (n, unit, unit)
        inv = torch.linalg.inv(torch.where(alive[:, None, None], blocks, eye))  # removed: anything invertible
        Wu = W[:, cols].permute(1, 0, 2)  # (n, out, unit)
        cost = ((Wu @ inv) * Wu).sum((1, 2))  # (n,)
        cost[~alive] = float("inf")
        chosen = torch.argsort(cost)[:min(per_round, n_remove - removed)]  # cheapest first
        S = cols[chosen].reshape(-1)  # (m * unit,)
        inv_s = torch.linalg.inv(Hinv[S[:, None], S[None, :]])  # (m * unit, m * unit)
        W = W - W[:, S] @ inv_s @ Hinv[S, :]
        Hinv = Hinv - Hinv[:, S] @ inv_s @ Hinv[S, :]
        alive[chosen] = False
        scores[chosen] = torch.arange(removed, removed + len(chosen), dtype=scores.dtype)
        removed += len(chosen)
    return scores


def check_recovery(model: nn.Module, ctx: TransformContext) -> str:
    """How `model` can recover: "finetune" (task loss), "distill" (a sentence encoder: condense's own, or any
    encoder whose task declares `embed`, e.g. the `hf:` encoder task; unlabelled text), or raise."""
    task = ctx.task
    if task is not None and task.train_data is not None and task.loss is not None:
        return "finetune"
    own = hasattr(model, "tokenize") and hasattr(model, "bert")
    if task is not None and task.train_data is not None and (own or getattr(task, "embed", None) is not None):
        return "distill"
    raise ConfigError("finetune=FitConfig(...) needs a task with train_data and loss (digits, tinygpt), or a "
                      "sentence encoder task with unlabelled train_data and embed (minilm, an hf: encoder); pass "
                      "task=..., or finetune=None")


def recover_(model: nn.Module, teacher: nn.Module | None, ctx: TransformContext, cfg: FitConfig, *,
             block_weight: float = BLOCK_WEIGHT) -> list[float]:
    """Recover `model` after a cut: task fine-tuning, else embedding distillation from `teacher` (condense's
    sentence encoder through its tokenizer; any other encoder through the task's `embed`, embedding tables frozen,
    plus `block_weight` times the layer-wise match of every block's output to the teacher's: a cut keeps the
    width between blocks, and matching them keeps the student's embeddings closer to the dense ones)."""
    if check_recovery(model, ctx) == "finetune":
        losses = ctx.finetune(model, cfg, description="recovery fine-tuning")
        model.eval()
        return losses
    if teacher is None:
        raise ConfigError("embedding distillation needs the dense model as teacher; keep a copy before pruning")
    if hasattr(model, "tokenize") and hasattr(model, "bert"):
        return distill_embeddings_(model, teacher, ctx.task.train_data, cfg)
    return distill_embed_fn_(model, teacher, ctx.training_data(what="recovery"), ctx.task.embed, cfg,
                             block_weight=block_weight)
