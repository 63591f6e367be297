"""Students built from their teacher: a subset of its blocks, optionally narrowed by structured pruning.

Starting from the teacher's own weights (rather than random ones) is what makes a few hundred distillation steps
enough: DistilBERT keeps every other layer, MiniLM/TinyBERT students are likewise initialised from the teacher.
The kept block indices and a narrower width (the `StructuredConfig` it applied, with its details) go to the
lineage as one `DistillConfig` entry, so `condense.load` rebuilds the student's architecture.
"""
from __future__ import annotations

import copy
import warnings
from typing import Any

from torch import nn

from condense.core import lineage
from condense.core.transforms import TransformContext, run_transform
from condense.errors import ConfigError


def spread(n: int, k: int) -> list[int]:
    """`k` of `n` block indices spread evenly, the last block always kept (its output feeds the head).

    Example:
        >>> spread(6, 3), spread(4, 2), spread(4, 4)
        ([1, 3, 5], [1, 3], [0, 1, 2, 3])
    """
    if not 1 <= k <= n:
        raise ConfigError(f"a student keeps between 1 and {n} of the teacher's {n} blocks, got layers={k}")
    return [round((i + 1) * n / k) - 1 for i in range(k)]


def kept_layers(n: int, layers: int | tuple[int, ...] | None) -> list[int]:
    """Which of `n` teacher blocks a student keeps: all (None), `layers` spread evenly (int), or exactly those."""
    if layers is None:
        return list(range(n))
    if isinstance(layers, int):
        return spread(n, layers)
    bad = [i for i in layers if i >= n]
    if bad:
        raise ConfigError(f"layers={tuple(layers)} names blocks {bad} but the teacher has {n} (indices 0..{n - 1})")
    return sorted(layers)


def student_from_teacher(teacher: nn.Module, cfg: Any, ctx: TransformContext | None = None
                         ) -> tuple[nn.Module, dict[str, Any]]:
    """A copy of `teacher` keeping `cfg.layers` blocks and `cfg.width_ratio` of its width, recorded in its lineage
    (so it saves and loads); returns (student, details). See `build_student`."""
    student, details = build_student(teacher, cfg, ctx)
    lineage.record_transform(student, cfg, **details)
    return student, details


def build_student(teacher: nn.Module, cfg: Any, ctx: TransformContext | None = None
                  ) -> tuple[nn.Module, dict[str, Any]]:
    """A copy of `teacher` keeping `cfg.layers` blocks and `cfg.width_ratio` of its width; returns (student,
    details). It records no lineage: the DistillConfig transform (or `student_from_teacher`) records `details`.

    Example:
        >>> from condense.distillation import DistillConfig
        >>> from condense.tasks.gpt import GPT, GPTConfig
        >>> s, d = build_student(GPT(GPTConfig(block_size=8, n_layer=4, n_head=2, n_embd=8)),
        ...                      DistillConfig(layers=2))
        >>> len(s.blocks), d["kept"]
        (2, [1, 3])
    """
    from condense.prune.layers import drop_blocks_, find_block_list
    from condense.prune.structured import StructuredConfig

    student = copy.deepcopy(teacher)
    for p in student.parameters():  # a teacher distilled before is frozen; its copy is a student to train
        p.requires_grad_(True)
    details: dict[str, Any] = {"container": None, "kept": None, "n_before": None}
    if cfg.layers is not None:
        name, blocks = find_block_list(student, cfg.container)
        fixed = shape_changing_blocks(teacher, name, ctx)
        keep = kept_layers(len(blocks), cfg.layers)
        if isinstance(cfg.layers, int) and fixed:  # only blocks keeping their input's shape may go
            free = [i for i in range(len(blocks)) if i not in fixed]
            keep = sorted(fixed + [free[i] for i in kept_layers(len(free), cfg.layers - len(fixed))]
                          if cfg.layers > len(fixed) else fixed)
        elif fixed and set(fixed) - set(keep):
            raise ConfigError(f"layers={tuple(cfg.layers)} drops blocks {sorted(set(fixed) - set(keep))} of "
                              f"{name or 'the model'}, which change the tensor shape (e.g. a downsampling block); "
                              f"keep them: layers={tuple(sorted(set(keep) | set(fixed)))}")
        if isinstance(cfg.layers, int) and cfg.layer_criterion != "spread" and len(keep) < len(blocks):
            from condense.prune.layers import LayerDropConfig, plan_layer_drop

            drop = LayerDropConfig(n_drop=len(blocks) - len(keep), criterion=cfg.layer_criterion, container=name)
            _, keep, _ = plan_layer_drop(teacher, drop, ctx)
        details = {"container": name, "kept": keep, "n_before": len(blocks)}
        if isinstance(cfg.layers, int) and len(keep) > cfg.layers:
            details["shape_changing_kept"] = fixed
            warnings.warn(f"the student keeps {len(keep)} blocks, not layers={cfg.layers}: blocks {fixed} of "
                          f"{name or 'the model'} change the tensor shape (downsampling) and cannot be removed",
                          stacklevel=3)
        drop_blocks_(student, name, keep)  # also renumbers HF cache slots and the config's layer count
    if cfg.width_ratio < 1:
        width = StructuredConfig(ratio=1 - cfg.width_ratio, target=cfg.width_target)
        student, d = run_transform(student, width, ctx.child() if ctx is not None else TransformContext())
        details["width"] = {"config": width.to_dict(), "details": d or {}}
    return student, details


def shape_changing_blocks(model: nn.Module, container: str, ctx: TransformContext | None) -> list[int]:
    """Indices of the blocks of `container` whose output shape differs from their input's (a CNN's downsampling
    blocks), seen on one calibration batch; [] when the context has no data (nothing can be checked)."""
    from condense.errors import CondenseError
    from condense.prune.layers import find_block_list, similarity_scores

    if ctx is None:
        return []
    try:
        batches = ctx.calibration_batches(1, what="checking which blocks keep their input's shape")
    except CondenseError:
        return []
    _, blocks = find_block_list(model, container)
    was = model.training
    model.eval()
    try:
        _, same = similarity_scores(model, blocks, batches, ctx.run_batch)
    finally:
        model.train(was)
    return [i for i, ok in enumerate(same) if not ok]


def paired_layers(n_teacher: int, n_student: int, kept: list[int] | None) -> list[int]:
    """For each student block, the teacher block it imitates: its origin if built from the teacher, else spread."""
    if kept is not None and len(kept) == n_student:
        return list(kept)
    return spread(n_teacher, n_student)
