"""Layer removal: drop whole transformer blocks (or identity-shape CNN stages) that change their input least.

A block whose output is nearly its input (high cosine similarity on calibration data) adds little; removing it
saves a whole block of compute. The "output" criterion measures instead how much the model's output moves when
the block is skipped (one calibration pass per block). Criteria are registered in the "blocks" scope of
`condense.prune.importance` (`register_importance(name, scope="blocks")`, called with a `BlockSet`). Kept indices
go to the lineage, so `condense.load` removes the same blocks from a fresh model before loading tensors.

Example:
    >>> import torch
    >>> from torch import nn
    >>> from condense.prune import prune_, LayerDropConfig
    >>> net = nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 4))
    >>> len(prune_(net, LayerDropConfig(keep=(0, 2), container=""), calibration=[torch.randn(2, 4)]))
    2
"""
from __future__ import annotations

import dataclasses
import itertools
import math
from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import nn

from condense.core.config import MAX_COUNT, check_choice, check_int, check_nested, check_positive_int, config, show
from condense.core.hooks import run_with_hooks
from condense.core.transforms import TransformContext, register_transform
from condense.errors import CondenseError, ConfigError
from condense.prune.block_lists import BLOCK_LIST_NAMES, drop_blocks_, find_block_list  # noqa: F401  (re-exported)
from condense.prune.importance import criteria, criterion, needs_data, register_importance
from condense.train.loop import FitConfig

CRITERIA = ("importance", "output", "subset", "last")  # the built-in criteria; any "blocks" criterion is accepted
MAX_SUBSETS = 256  # "subset" tries every set of kept blocks up to this many, else removes greedily


@config
class LayerDropConfig:
    """Remove whole blocks from a block list (transformer `layers`/`blocks`, or a Sequential of stages).

    Args:
        n_drop: how many blocks to remove (chosen by `criterion`); or
        keep: exactly which block indices to keep (0-based, in the original numbering).
        criterion: "importance" (1 - cosine between a block's input and output), "output" (how far the model's
            output moves without the block, one block at a time), "subset" (the set of kept blocks whose model
            output is closest to the full model's, trying every set when there are at most 256, else removing
            the least harmful block greedily), or "last" (drop the last blocks). On all-MiniLM-L6-v2, keeping
            3 of 6 blocks, "subset" picks blocks (0, 4, 5): MRR@10 0.535 before any training, against 0.355
            for the evenly spread (1, 3, 5) (`python bench/bench_distill.py --part minilm
            --minilm-layer-criterion subset|spread` reports it before distilling).
        container: module name of the block list (e.g. "bert.layers"); default: the one ModuleList called
            layers/blocks. A Sequential ("" for the model itself) may lose only blocks whose output shape
            equals their input shape, checked on calibration data.
        calibration_batches: batches used to score blocks and check shapes.
        finetune: recovery training afterwards (see `condense.prune.recover`); None = none.

    Example:
        >>> LayerDropConfig(n_drop=2).criterion
        'importance'
    """

    n_drop: int | None = None
    keep: tuple[int, ...] | None = None
    criterion: str = "importance"
    container: str | None = None
    calibration_batches: int = 4
    finetune: FitConfig | None = None

    def __post_init__(self) -> None:
        if (self.n_drop is None) == (self.keep is None):
            raise ConfigError("LayerDropConfig needs exactly one of n_drop (how many blocks to remove) or keep "
                              "(which block indices to keep), e.g. LayerDropConfig(n_drop=2)")
        check_int(self, "n_drop", lo=1, optional=True, example=2)
        if isinstance(self.keep, list):
            object.__setattr__(self, "keep", tuple(self.keep))
        if self.keep is not None:
            if not isinstance(self.keep, tuple) or not self.keep or any(
                    isinstance(i, bool) or not isinstance(i, int) or not 0 <= i <= MAX_COUNT for i in self.keep) \
                    or len(set(self.keep)) != len(self.keep):
                raise ConfigError(f"LayerDropConfig.keep must be distinct non-negative block indices, at least one, "
                                  f"got {show(self.keep)}; e.g. keep=(0, 2, 5)")
        check_choice(self, "criterion", criteria("blocks"), example="importance")
        if self.container is not None and not isinstance(self.container, str):
            raise ConfigError(f"LayerDropConfig.container must be a module name or None, got {show(self.container)}; "
                              "e.g. container='blocks'")
        check_positive_int(self, "calibration_batches", example=4)
        check_nested(self, "finetune", FitConfig, optional=True)


def _first_tensor(x: Any) -> torch.Tensor | None:
    if isinstance(x, torch.Tensor):
        return x
    if isinstance(x, (tuple, list)):
        return next((t for t in map(_first_tensor, x) if t is not None), None)
    return None


def _tokens(t: torch.Tensor) -> torch.Tensor:
    t = t.detach().float()
    t = t.movedim(1, -1) if t.dim() == 4 else t  # CNN maps: compare channel vectors per position
    return t.reshape(-1, t.shape[-1])  # (rows, features)


def similarity_scores(model: nn.Module, blocks: nn.Module, batches: list[Any],
                      run: Callable[[nn.Module, Any], Any]) -> tuple[list[float], list[bool]]:
    """Per block: (1 - mean cosine between its input and output, whether output shape == input shape)."""
    n = len(blocks)
    total, count, same = [0.0] * n, [0] * n, [True] * n

    def hook(i: int) -> Callable:
        def post(m: nn.Module, args: tuple, out: Any) -> None:
            x, y = _first_tensor(args), _first_tensor(out)
            if x is None or y is None or x.shape != y.shape:
                same[i] = False
                return
            total[i] += float(F.cosine_similarity(_tokens(x), _tokens(y), dim=-1).mean())
            count[i] += 1
        return post

    handles = [b.register_forward_hook(hook(i)) for i, b in enumerate(blocks)]
    run_with_hooks(model, batches, run, handles)
    return [1 - total[i] / count[i] if count[i] else float("inf") for i in range(n)], same


def _rows(out: Any) -> torch.Tensor:
    t = _first_tensor(out)
    if t is None:
        t = torch.as_tensor(out[0] if isinstance(out, (tuple, list)) else out)
    return t.detach().float().reshape(t.shape[0], -1)


def _set_blocks(blocks: nn.Module, modules: list[nn.Module]) -> None:
    """Replace the contents of a ModuleList/Sequential in place (its parent keeps the same object)."""
    for i in range(len(blocks) - 1, -1, -1):
        del blocks[i]
    for m in modules:
        blocks.append(m)


class _OutputDistance:
    """1 - mean cosine between the model's outputs with only some of its blocks and with all of them.

    Call with the kept block indices; the full list is put back after each call. Use under inference_mode.
    """

    def __init__(self, model: nn.Module, blocks: nn.Module, batches: list[Any],
                 run: Callable[[nn.Module, Any], Any]) -> None:
        self.model, self.blocks, self.batches, self.run = model, blocks, batches, run
        self.orig = list(blocks)
        self.ref = [_rows(run(model, b)) for b in batches]

    def __call__(self, kept: tuple[int, ...]) -> float:
        _set_blocks(self.blocks, [self.orig[i] for i in kept])
        try:
            cos = [F.cosine_similarity(_rows(self.run(self.model, b)), r, dim=-1).mean()
                   for b, r in zip(self.batches, self.ref)]
        finally:
            _set_blocks(self.blocks, self.orig)
        return 1 - float(torch.stack(cos).mean())


def output_scores(model: nn.Module, blocks: nn.Module, candidates: list[int], batches: list[Any],
                  run: Callable[[nn.Module, Any], Any]) -> dict[int, float]:
    """Per candidate block: 1 - mean cosine between the model's outputs with and without it."""
    with torch.inference_mode():
        distance = _OutputDistance(model, blocks, batches, run)
        return {i: distance(tuple(j for j in range(len(blocks)) if j != i)) for i in candidates}


def subset_scores(model: nn.Module, blocks: nn.Module, keep: int, candidates: list[int], batches: list[Any],
                  run: Callable[[nn.Module, Any], Any], max_subsets: int = MAX_SUBSETS
                  ) -> tuple[list[int], float]:
    """(block indices to keep, 1 - mean output cosine to the full model) for the best set of `keep` blocks.

    Only blocks in `candidates` may go. Every set is tried when there are at most `max_subsets`; otherwise blocks
    are removed one at a time, each time the one whose removal moves the output least.
    """
    fixed = [i for i in range(len(blocks)) if i not in candidates]
    free = keep - len(fixed)
    with torch.inference_mode():
        distance = _OutputDistance(model, blocks, batches, run)
        if 0 < (math.comb(len(candidates), free) if free >= 0 else 0) <= max_subsets:
            options = [tuple(sorted(fixed + list(c))) for c in itertools.combinations(candidates, free)]
        else:  # greedy: each round, every kept candidate's removal is an option
            kept = tuple(range(len(blocks)))
            while len(kept) > keep + 1:
                kept = min((tuple(j for j in kept if j != i) for i in kept if i in candidates), key=distance)
            options = [tuple(j for j in kept if j != i) for i in kept if i in candidates]
        tried = {k: distance(k) for k in options}
    best = min(tried, key=tried.get)
    return list(best), tried[best]


# -- criteria: the "blocks" scope of condense.prune.importance ------------------------------------------------------
@dataclasses.dataclass
class BlockSet:
    """What a block criterion sees: the model, its block list, the blocks that may go (same output shape as input),
    the calibration `batches` and how to `run` one, and each candidate's `similarity` score (1 - cosine between
    its input and output; empty without data)."""

    model: nn.Module
    blocks: nn.Module
    candidates: list[int]
    batches: list[Any]
    run: Callable[[nn.Module, Any], Any]
    similarity: dict[int, float]

    def keep_all_but(self, drop: list[int]) -> list[int]:
        """Every block index not in `drop`."""
        return [i for i in range(len(self.blocks)) if i not in drop]


@register_importance("importance", scope="blocks")
def _by_similarity(b: BlockSet, n_drop: int) -> tuple[list[int], dict[int, float]]:
    return b.keep_all_but(sorted(b.candidates, key=lambda i: b.similarity[i])[:n_drop]), b.similarity


@register_importance("output", scope="blocks")
def _by_output(b: BlockSet, n_drop: int) -> tuple[list[int], dict[int, float]]:
    scores = output_scores(b.model, b.blocks, b.candidates, b.batches, b.run)
    return b.keep_all_but(sorted(b.candidates, key=lambda i: scores[i])[:n_drop]), scores


@register_importance("subset", scope="blocks")
def _by_subset(b: BlockSet, n_drop: int) -> tuple[list[int], dict[int, float]]:
    keep, _ = subset_scores(b.model, b.blocks, len(b.blocks) - n_drop, b.candidates, b.batches, b.run)
    return keep, b.similarity


@register_importance("last", scope="blocks", needs_data=False)
def _last(b: BlockSet, n_drop: int) -> tuple[list[int], dict[int, float]]:
    return b.keep_all_but(b.candidates[-n_drop:]), b.similarity


def plan_layer_drop(model: nn.Module, cfg: LayerDropConfig, ctx: TransformContext | None = None
                    ) -> tuple[str, list[int], dict[int, float]]:
    """(container name, block indices to keep, score per block) without changing the model."""
    ctx = ctx or TransformContext()
    name, blocks = find_block_list(model, cfg.container)
    n = len(blocks)
    where = name or "the model"
    data = needs_data(cfg.criterion, "blocks") or isinstance(blocks, nn.Sequential)  # a Sequential: shapes checked
    batches = ctx.calibration_batches(cfg.calibration_batches, what=f"LayerDropConfig(criterion={cfg.criterion!r}) "
                                      f"on {where}") if data else []
    scores: dict[int, float] = {}
    candidates = list(range(n))
    if batches:
        sim, same = similarity_scores(model, blocks, batches, ctx.run_batch)
        candidates = [i for i in range(n) if same[i]]
        scores = {i: sim[i] for i in candidates}
    if cfg.keep is not None:
        keep = sorted(cfg.keep)
        if any(i >= n for i in keep):
            raise ConfigError(f"keep={list(cfg.keep)} names blocks past the {n} of {where}; indices are 0..{n - 1}")
        bad = [i for i in range(n) if i not in keep and i not in candidates]
        if bad:
            raise ConfigError(f"blocks {bad} of {where} change the tensor shape, so they cannot be removed; keep them")
        return name, keep, scores
    if cfg.n_drop >= n or cfg.n_drop > len(candidates):
        raise ConfigError(f"n_drop={cfg.n_drop} but {where} has {n} blocks, {len(candidates)} of them removable "
                          f"(same output shape as input); use n_drop <= {min(n - 1, len(candidates))}")
    choose = criterion(cfg.criterion, "blocks")
    keep, scores = choose(BlockSet(model, blocks, candidates, batches, ctx.run_batch, scores), cfg.n_drop)
    return name, list(keep), scores


def prune_layers(model: nn.Module, cfg: LayerDropConfig, ctx: TransformContext) -> nn.Module:
    """Choose blocks, remove them, record the kept indices, then recover if `cfg.finetune` says so."""
    import copy

    from condense.prune.recover import check_recovery, recover_

    name, keep, scores = plan_layer_drop(model, cfg, ctx)
    teacher = None
    if cfg.finetune is not None and check_recovery(model, ctx) == "distill":
        teacher = copy.deepcopy(model).eval()
    n = len(find_block_list(model, name)[1])
    drop_blocks_(model, name, keep)
    ctx.record(container=name, kept=keep, n_before=n,
               scores={str(i): round(s, 6) for i, s in scores.items()})
    if cfg.finetune is not None:
        # blocks were removed, so block i of the student is not the teacher's block i: no layer-wise term
        recover_(model, teacher, ctx, cfg.finetune, block_weight=0.0)
    return model


def _replay(model: nn.Module, cfg: LayerDropConfig, details: dict) -> nn.Module:
    if "container" not in details:
        raise CondenseError("the artifact's LayerDropConfig entry has no container; re-create the artifact")
    return drop_blocks_(model, details["container"], list(details["kept"]))


# -- registered transforms ----------------------------------------------------------------------------------------
register_transform(LayerDropConfig, family="prune", name="layer-drop", replay=_replay, search=True)(prune_layers)
