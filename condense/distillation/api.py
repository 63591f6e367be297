"""`distill(teacher, student, config, data)`: train a student to behave like its teacher.

The loss follows the model: models with logits (classifiers, language models) get temperature-scaled logit
distillation (token-level for LMs) plus the task loss when batches carry labels, optionally per-layer hidden
states; sentence encoders (no labels, no logits) get embedding distillation on unlabelled text. Training runs in
the shared loop (`condense.train.loop.fit`). In a pipeline the incoming model is the teacher and the student is
built from it (`students.student_from_teacher`).

What is read from the models' outputs (`outputs.OUTPUT_READERS`, by output type): a tensor, a tuple's first item,
or a Hugging Face `ModelOutput`'s `.logits`, else its `.last_hidden_state` (an encoder). Per-layer hidden states
come from forward hooks on the blocks (any model with a block list). Encoders other than condense's own get
embedding distillation through their task's `Task.embed` (the `hf:` task sets it for Hugging Face encoders), by
default the mean-pooled last hidden states (`outputs.default_embed`).

Batch convention (`outputs.split_batch`): a training batch that is a 2-item tuple or list ending in a tensor is
`(inputs, target)`; only `inputs` is run, through the task's `run` or `condense.core.task.run_batch` (a dict ->
keywords, a tuple of tensors -> positional, else one input). An integer target adds the cross-entropy task loss
(weighted 1 - alpha); a float target adds the task's `loss` on the whole batch when the task has one, else it is
not used (warned). Every other batch is all inputs: pass positional input pairs as a dict or a 1-item tuple.
"""
from __future__ import annotations

from typing import Any, Callable, Iterable, Iterator

import torch
from torch import nn

from condense.core.config import MAX_COUNT, Renamed, check_choice, check_float, check_int, check_nested, config, \
    config_from_dict, show
from condense.core.transforms import TRANSFORMS, TransformContext, apply_, register_family, register_transform
from condense.distillation.losses import CONTRASTIVE_TARGETS, Projection, distill_embeddings_, embedding_match_loss, \
    hidden_state_loss, logit_kd_loss
from condense.distillation.outputs import HIDDEN, default_embed, logits_of, read_output, split_batch
from condense.distillation.students import build_student, paired_layers
from condense.errors import ConfigError
from condense.prune.layers import CRITERIA
from condense.train.loop import FitConfig, fit

LOSSES = ("auto", "logits", "embedding")
WIDTH_TARGETS = ("ffn", "heads", "auto")
LAYER_CRITERIA = ("spread",) + CRITERIA


@config
class DistillConfig:
    """How to build a student and distil the teacher into it.

    Training batches follow the module's convention: `(inputs, target)` pairs (the second item a tensor: integer
    labels or a float target) feed only `inputs` to the models (dict -> keywords, via `run_batch`); any other batch
    is all inputs. Outputs may be tensors, tuples or Hugging Face `ModelOutput`s (logits, else hidden states).

    Args:
        layers: teacher blocks the student keeps: a number (chosen by `layer_criterion`) or exact indices;
            None keeps all.
        layer_criterion: how a number of `layers` is chosen: "spread" (evenly, the last kept) or a
            `LayerDropConfig` criterion measured on the task's calibration data: "subset" (the set of blocks
            whose output is closest to the teacher's; all-MiniLM-L6-v2 -> 3 blocks: (0, 4, 5), MRR@10 0.535
            before training vs 0.355 for the spread (1, 3, 5), as bench/bench_distill.py reports), "output",
            "importance" or "last".
        width_ratio: fraction of the width (of `width_target`: "ffn", "heads" or "auto") the student keeps,
            removed by structured pruning (L2 norm); 1.0 keeps the full width.
        temperature: softmax temperature T of logit distillation (> 0; the KL term is scaled by T^2). For a
            language model T=1 (its actual next-token distribution) did better than T=2 in bench/bench_distill.py.
        alpha: weight of the distillation term in [0, 1]; 1 - alpha weighs the task loss on labelled batches.
        finetune: the student's training run (steps, lr, schedule, ...; `fit` is its deprecated old name).
        loss: "logits", "embedding" (sentence encoders: condense's own, a task with `Task.embed`, or any model
            whose output has hidden states and no logits, mean-pooled), or "auto" (embedding for encoders, else
            logits).
        hidden_weight: weight of per-layer hidden-state distillation (learned projection when widths differ);
            for encoders, of the last hidden states over tokens.
        attention_weight: weight of attention-map distillation (encoders: the last layer's maps).
        width_target: which groups `width_ratio` narrows.
        container: module name of the block list (default: the one ModuleList called layers/blocks).
        max_tokens: encoders: texts are cut to this many tokens while distilling (faster); None keeps the
            encoder's own limit (128 for minilm).
        contrastive_weight: encoders, on batches of text pairs (the minilm task's `train_data`: a docstring's
            summary sentence and the rest of it): weight of the in-batch contrastive loss between the student's
            embeddings of each pair (`losses.contrastive_loss`); 0 distils only. The pairs' signal lifted the
            3-block MiniLM student's retrieval, but moves its vectors away from the teacher's (cosine ~0.84 in
            bench/bench_distill.py): to keep embeddings interchangeable with an index the teacher built, use 0
            or contrastive_target="teacher".
        contrastive_target: what the pair loss compares the student's embedding of each pair's half with:
            "student" (its own embedding of the other half: the pairs' signal alone, which drifts from the teacher)
            or "teacher" (the teacher's embedding of the other half, `losses.anchored_contrastive_loss`: the
            student learns to retrieve the teacher's vectors, so it stays interchangeable with the teacher).
        unlabelled: logit distillation: after each labelled training batch, this many batches of the task's
            `unlabelled_data` (the training inputs whose labels are held back, e.g. digits with
            `labels_fraction=0.05`), on which the student learns the teacher's soft targets only (semi-supervised
            distillation); 0: the training batches only.

    Example:
        >>> DistillConfig(layers=3, temperature=4.0).finetune.steps
        200
    """

    layers: int | tuple[int, ...] | None = None
    layer_criterion: str = "spread"
    width_ratio: float = 1.0
    temperature: float = 2.0
    alpha: float = 0.5
    finetune: FitConfig = FitConfig(steps=200, lr=1e-3, schedule="cosine")
    loss: str = "auto"
    hidden_weight: float = 0.0
    attention_weight: float = 0.0
    width_target: str = "ffn"
    container: str | None = None
    max_tokens: int | None = None
    contrastive_weight: float = 1.0
    contrastive_target: str = "student"
    unlabelled: int = 0
    renamed = (Renamed("fit", "finetune"),)

    def __post_init__(self) -> None:
        if isinstance(self.layers, list):
            object.__setattr__(self, "layers", tuple(self.layers))
        check_nested(self, "finetune", FitConfig)
        ly = self.layers
        if isinstance(ly, bool) or (isinstance(ly, int) and not 1 <= ly <= MAX_COUNT) or (
                isinstance(ly, tuple) and (not ly or any(
                    isinstance(i, bool) or not isinstance(i, int) or not 0 <= i <= MAX_COUNT for i in ly)
                    or len(set(ly)) != len(ly))) or not (ly is None or isinstance(ly, (int, tuple))):
            raise ConfigError(f"DistillConfig.layers must be a positive number of blocks or distinct block indices, "
                              f"got {show(ly)}; e.g. layers=3 or layers=(1, 3, 5)")
        check_choice(self, "layer_criterion", LAYER_CRITERIA, example="spread")
        check_float(self, "temperature", lo=0, lo_open=True, example=2.0)  # 1: the plain softmax; 2-4 usual
        check_float(self, "alpha", lo=0, hi=1, example=0.5)  # the distillation term's weight
        check_float(self, "width_ratio", lo=0, hi=1, lo_open=True, example=0.5)  # fraction of the width kept
        check_choice(self, "loss", LOSSES, example="auto")
        check_choice(self, "width_target", WIDTH_TARGETS, example="ffn")
        check_choice(self, "contrastive_target", CONTRASTIVE_TARGETS, example="teacher")
        for name in ("hidden_weight", "attention_weight", "contrastive_weight"):
            check_float(self, name, lo=0, example=1.0)
        if self.container is not None and not isinstance(self.container, str):
            raise ConfigError(f"DistillConfig.container must be a module name or None, got {show(self.container)}; "
                              "e.g. container='encoder.layer'")
        check_int(self, "max_tokens", lo=2, hi=1_000_000, optional=True, example=128)
        check_int(self, "unlabelled", lo=0, hi=1024, example=1)


def _is_encoder(model: nn.Module) -> bool:
    from condense.distillation.losses import TOKEN_ENCODERS

    return hasattr(model, "tokenize") and model in TOKEN_ENCODERS


def _first_batch(data: Callable[[], Iterable[Any]] | Iterable[Any]) -> Any:
    src = data() if callable(data) else data
    for b in src:
        return b
    raise ConfigError("the distillation data yielded no batches; pass data=[batches] or a task with train_data")


def _first_tensor(out: Any) -> torch.Tensor:
    while isinstance(out, (tuple, list)):  # a block returns its hidden states, alone or first in a tuple
        out = out[0]
    return out


def _block_outputs(model: nn.Module, container: str | None) -> tuple[list[torch.Tensor], list]:
    """Hooks storing each block's output (first tensor) into a list, in block order; returns (list, handles)."""
    from condense.prune.layers import find_block_list

    _, blocks = find_block_list(model, container)
    store: list[torch.Tensor] = [None] * len(blocks)  # type: ignore[list-item]

    def hook(i: int) -> Callable:
        def post(m: nn.Module, args: tuple, out: Any) -> None:
            store[i] = _first_tensor(out)
        return post

    return store, [b.register_forward_hook(hook(i)) for i, b in enumerate(blocks)]


def _distill_logits(teacher: nn.Module, student: nn.Module, cfg: DistillConfig, data: Any,
                    ctx: TransformContext, kept: list[int] | None) -> list[float]:
    run = ctx.run_batch
    dev = next(student.parameters()).device
    first, _ = split_batch(_first_batch(data))
    with torch.no_grad():
        t_out, s_out = logits_of(run(teacher, first)), logits_of(run(student, first))
    if t_out.shape != s_out.shape:
        raise ConfigError(f"teacher and student outputs cannot be matched: teacher gives {tuple(t_out.shape)}, "
                          f"student {tuple(s_out.shape)}; a student must predict the same classes/vocabulary: "
                          "build it from the teacher (student=None, DistillConfig(layers=...)) or give it the "
                          "teacher's output layer")
    task_loss = getattr(ctx.task, "loss", None)
    if task_loss is None and _has_float_target(_first_batch(data)):
        _warn_float_target(ctx)
    projections = nn.ModuleList()
    handles: list = []
    if cfg.hidden_weight:
        t_store, h1 = _block_outputs(teacher, cfg.container)
        s_store, h2 = _block_outputs(student, cfg.container)
        handles = h1 + h2
        pairs = paired_layers(len(t_store), len(s_store), kept)
        with torch.no_grad():
            run(teacher, first), run(student, first)
        projections = nn.ModuleList(Projection(s_store[j].shape[-1], t_store[pairs[j]].shape[-1])
                                    for j in range(len(s_store))).to(dev)

    def loss_fn(model: nn.Module, batch: Any) -> torch.Tensor:
        x, y = split_batch(batch)
        with torch.no_grad():
            t = logits_of(run(teacher, x))
        s = logits_of(run(model, x))
        labels = y if y is not None and not y.is_floating_point() else None
        loss = logit_kd_loss(s, t, temperature=cfg.temperature, alpha=cfg.alpha, targets=labels)
        if y is not None and labels is None and task_loss is not None:  # a float target: the task scores it
            loss = cfg.alpha * loss + (1 - cfg.alpha) * task_loss(model, batch)
        if cfg.hidden_weight:
            loss = loss + cfg.hidden_weight * hidden_state_loss(s_store, [t_store[i] for i in pairs], projections)
        return loss

    params = list(student.parameters()) + list(projections.parameters())
    try:
        return fit(student, data, loss_fn, cfg.finetune, params=params, description="distillation")
    finally:
        for h in handles:
            h.remove()


def distill(teacher: nn.Module, student: nn.Module | None = None, config: DistillConfig = DistillConfig(),
            data: Callable[[], Iterable[Any]] | Iterable[Any] | None = None, *, task: Any = None) -> nn.Module:
    """Train `student` (or one built from `teacher` per `config`) to imitate `teacher`; returns the student.

    Args:
        data: training batches (an iterable or a zero-argument callable); default: the task's `train_data`.
            Labelled `(x, y)` batches add the task loss; unlabelled ones (or texts for encoders) need no labels.
        task: runs the models on batches (`task.run_batch`) and supplies data.

    Example:
        >>> import torch
        >>> from condense.testing import TinyMLP
        >>> teacher, x = TinyMLP(), torch.randn(16, 8)
        >>> student = distill(teacher, TinyMLP(), DistillConfig(finetune=FitConfig(steps=3)), [x])
        >>> student(x).shape
        torch.Size([16, 4])
    """
    if student is None:  # built from the teacher: a transform, recorded in the student's lineage
        return apply_(teacher, config, task=task, data=data, family="distill")
    return _train(teacher, student, config, data, TransformContext(task=task), None, task=task)


def _train(teacher: nn.Module, student: nn.Module, config: DistillConfig, data: Any, ctx: TransformContext,
           kept: list[int] | None, *, task: Any) -> nn.Module:
    """Train `student` to imitate `teacher`; `kept`: the teacher block each student block came from (or None)."""
    if data is None:
        if task is None or task.train_data is None:
            raise ConfigError("distill needs data: pass data=[batches] or task=... with train_data")
        data = task.train_data
    teacher.eval()
    for p in teacher.parameters():
        p.requires_grad_(False)
    kind = config.loss if config.loss != "auto" else _auto_loss(teacher, data, ctx)
    if config.unlabelled and kind == "embedding":
        raise ConfigError("DistillConfig.unlabelled adds unlabelled batches to logit distillation; embedding "
                          "distillation needs no labels and already trains on the task's unlabelled text: set "
                          "unlabelled=0")
    if kind == "embedding" and not _is_encoder(teacher):  # any other encoder: through its embedding function
        _distill_embedding_fn(teacher, student, config, data, ctx)
    elif kind == "embedding":
        if not _is_encoder(student):
            raise ConfigError(f"loss='embedding' with condense's sentence encoder as teacher needs one (with "
                              f".tokenize and a registered TokenEncoder) as student too; {type(student).__name__} "
                              f"is not one: build the student from the teacher (student=None)")
        if teacher.dim != student.dim:
            raise ConfigError(f"teacher and student embeddings cannot be matched: {teacher.dim} vs {student.dim} "
                              "dimensions; keep the hidden size (narrow only heads/FFN: width_target='ffn')")
        distill_embeddings_(student, teacher, data, config.finetune, max_tokens=config.max_tokens,
                            token_weight=config.hidden_weight, attention_weight=config.attention_weight,
                            contrastive_weight=config.contrastive_weight,
                            contrastive_target=config.contrastive_target)
    else:
        if config.unlabelled:
            data = with_unlabelled(data, task, config.unlabelled)
        _distill_logits(teacher, student, config, data, ctx, kept)
    return student.eval()


def with_unlabelled(data: Any, task: Any, per_batch: int) -> Callable[[], Iterator[Any]]:
    """A data callable: each batch of `data` followed by `per_batch` batches of `task.unlabelled_data` (inputs
    only; that source restarts when it runs out), for distillation on the teacher's soft targets.

    Example:
        >>> import torch
        >>> from condense.core.task import Task
        >>> t = Task("t", torch.nn.Identity(), evaluate=dict, primary_metric="m", inputs=torch.zeros(1),
        ...          unlabelled_data=lambda: [torch.ones(2)])
        >>> [len(b) for b in with_unlabelled([(torch.zeros(3), torch.zeros(3))], t, 2)()]
        [2, 2, 2]
    """
    source = getattr(task, "unlabelled_data", None)
    if source is None:
        raise ConfigError(f"DistillConfig.unlabelled needs a task with unlabelled_data, and "
                          f"{getattr(task, 'name', 'no task')!r} has none; hold labels back (digits: --task-option "
                          "labels_fraction=0.05) or set unlabelled=0")

    def epoch() -> Iterator[Any]:
        rest = iter(source())
        for batch in (data() if callable(data) else data):
            yield batch
            for _ in range(per_batch):
                item = next(rest, None)
                if item is None:
                    rest = iter(source())
                    item = next(rest, None)
                    if item is None:
                        raise ConfigError("the task's unlabelled_data yielded no batches")
                yield item

    return epoch


def _auto_loss(teacher: nn.Module, data: Any, ctx: TransformContext) -> str:
    """"embedding" for encoders (condense's own, a task declaring `embed`, or an output of hidden states only)."""
    if _is_encoder(teacher) or getattr(ctx.task, "embed", None) is not None:
        return "embedding"
    x, _ = split_batch(_first_batch(data))
    with torch.no_grad():
        return "embedding" if read_output(ctx.run_batch(teacher, x)).kind == HIDDEN else "logits"


def _embedding_fn(ctx: TransformContext) -> Callable[[nn.Module, Any], torch.Tensor]:
    return getattr(ctx.task, "embed", None) or default_embed(ctx.run_batch)


def _distill_embedding_fn(teacher: nn.Module, student: nn.Module, cfg: DistillConfig, data: Any,
                          ctx: TransformContext) -> list[float]:
    """Embedding distillation of any encoder: 1 - cosine between the student's and teacher's embeddings (the task's
    `embed`, else mean-pooled last hidden states), plus KL between their in-batch similarity rankings (as
    `losses.embedding_distillation_loss`, temperature 0.05)."""
    embed = _embedding_fn(ctx)
    x, _ = split_batch(_first_batch(data))
    with torch.no_grad():
        t_dim, s_dim = embed(teacher, x).shape[-1], embed(student, x).shape[-1]
    if t_dim != s_dim:
        raise ConfigError(f"teacher and student embeddings cannot be matched: {t_dim} vs {s_dim} dimensions; keep "
                          "the hidden size (narrow only heads/FFN: width_target='ffn')")
    return fit(student, data, embedding_match_loss(teacher, embed), cfg.finetune,
               description="embedding distillation")


def _has_float_target(batch: Any) -> bool:
    _, y = split_batch(batch)
    return y is not None and y.is_floating_point()


def _warn_float_target(ctx: TransformContext) -> None:
    import warnings

    msg = ("distillation batches carry float targets and the task has no `loss` to score them: the student learns "
           "from the teacher's outputs only (give the task a loss(model, batch) to add the target's term)")
    warnings.warn(msg, stacklevel=3)
    ctx.record(float_targets_unused=True)


def _distill_step(model: nn.Module, cfg: DistillConfig, ctx: TransformContext) -> nn.Module:
    """Pipeline step: the incoming model is the teacher; the student is built from it and trained on task data."""
    if ctx.data is None and (ctx.task is None or ctx.task.train_data is None):
        raise ConfigError("a DistillConfig step needs a task with train_data (digits, tinygpt, minilm have it), or "
                          "data=[batches]")
    student, details = build_student(model, cfg, ctx)
    ctx.record(**details)
    if not cfg.finetune.steps:
        return student
    # the kept block indices pair each student block with its origin for the hidden-state loss
    return _train(model, student, cfg, ctx.training_data(what="distillation"), ctx, details["kept"], task=ctx.task)


def _replay(model: nn.Module, cfg: DistillConfig, details: dict) -> nn.Module:
    from condense.prune.layers import drop_blocks_

    if details.get("kept") is not None:  # drop_blocks_ also renumbers HF cache slots and the config's layer count
        drop_blocks_(model, details["container"], list(details["kept"]))
    width = details.get("width")  # the narrowing StructuredConfig it applied (artifacts from before: its own entry)
    if width:
        sub = config_from_dict(width["config"])
        model = TRANSFORMS.get(sub).replay(model, sub, width.get("details", {}))
    return model


# -- registered transforms ----------------------------------------------------------------------------------------
register_family("distill", default="kd", noun="distillation config")
register_transform(DistillConfig, family="distill", name="kd", replay=_replay, search=True)(_distill_step)
