"""Semi-supervised training: learn from the unlabelled rest of the training data as well as the labelled part.

Two methods, each one registered function (`SEMI_METHODS`), both with a confidence threshold:
- pseudo-label (Lee 2013): the model's own confident predictions on (weakly augmented) unlabelled inputs become
  their targets;
- fixmatch (Sohn et al. 2020): the prediction on a weakly augmented view becomes the target of the same input under
  strong augmentation, so the model learns to agree with itself across augmentations.

How it plugs in: `semi_task(task, SemiConfig(...))` is the same task whose `train_data` yields `SemiBatch`es (one
labelled batch and `mu` unlabelled batches) and whose loss is the task's loss plus `lambda_u` times the
unlabelled loss, so the one training engine runs it unchanged (checkpoints, resume, DDP, evaluation).
`TrainConfig(semi=...)` / `condense train --set semi=fixmatch` do this for a task with `unlabelled_data`
(digits with `--task-option labels_fraction=0.05`).
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable, Iterator, NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from condense.core.config import check_float, check_int, config, show
from condense.core.registry import Registry
from condense.errors import ConfigError
from condense.train.augment import AUGMENTATIONS, BATCH_INPUTS, augment_batch, resolve_augmentation
from condense.train.loop import fit

__all__ = ["SemiConfig", "SemiBatch", "SemiLoss", "SEMI_METHODS", "DistributionAlignment", "consistency_loss",
           "semi_batches", "semi_task", "fit_semi_supervised"]


class SemiBatch(NamedTuple):
    """One step's data: a labelled `(inputs, targets)` batch and a batch of unlabelled inputs (mu x as many)."""

    labelled: Any
    unlabelled: torch.Tensor


# FitConfig.augment augments the labelled inputs only; the unlabelled ones get the method's weak/strong views
BATCH_INPUTS.register(SemiBatch)(lambda batch, fn: SemiBatch(augment_batch(batch.labelled, fn), batch.unlabelled))

# (run, unlabelled x, weak view, strong view, threshold, align: target logits -> target logits) -> (loss, mask)
Method = Callable[..., tuple[torch.Tensor, torch.Tensor]]
SEMI_METHODS: Registry[Method] = Registry("semi-supervised method")


@config
class SemiConfig:
    """Semi-supervised training on a task's `unlabelled_data`.

    The defaults are the best settings tried on digits' validation split (bench/select_semi.py; with
    `FitConfig.ema=0.99`, 2000 steps and labelled batches augmented `image-shift`): threshold 0.8, align 32.

    Args:
        method: fixmatch | pseudo-label (`SEMI_METHODS`).
        threshold: confidence (max softmax probability) at or above which a prediction becomes a target (tau).
        lambda_u: weight of the unlabelled loss.
        mu: unlabelled batches per labelled batch.
        weak, strong: augmentations (`condense.train.augment`) of the view that gives targets and of the view
            trained on (fixmatch); "auto": the task's input kind's weak/strong ones. pseudo-label uses `weak` only.
        ramp_steps: the unlabelled loss weight rises linearly from 0 to lambda_u over this many loss calls (one
            per step without gradient accumulation; counted in this process, so a resumed run ramps again);
            0 (default): lambda_u from the start; a ramp has not been measured on digits yet.
        align: distribution alignment (ReMixMatch) over the last `align` unlabelled batches: each target
            distribution p becomes p / m renormalised, m the mean target distribution of those batches, so the
            pseudo-labels' class marginal is pushed towards uniform (a balanced task); 0: off. Counted in this
            process, like ramp_steps.

    Example:
        >>> SemiConfig(method="fixmatch", threshold=0.9).mu
        3
    """

    method: str = "fixmatch"
    threshold: float = 0.8
    lambda_u: float = 1.0
    mu: int = 3
    weak: str = "auto"
    strong: str = "auto"
    ramp_steps: int = 0
    align: int = 32

    def __post_init__(self) -> None:
        if self.method not in SEMI_METHODS:
            raise ConfigError(f"SemiConfig.method: unknown method {show(self.method)}; choose one of "
                              f"{list(SEMI_METHODS)}")
        check_float(self, "threshold", lo=0, hi=1, example=0.95)
        check_float(self, "lambda_u", lo=0, example=1.0)
        check_int(self, "mu", lo=1, hi=1024, example=7)
        check_int(self, "ramp_steps", lo=0, example=100)
        check_int(self, "align", lo=0, example=32)
        for name in ("weak", "strong"):
            v = getattr(self, name)
            if v != "auto" and v not in AUGMENTATIONS:
                raise ConfigError(f"SemiConfig.{name}: unknown augmentation {show(v)}; choose one of "
                                  f"{['auto', *AUGMENTATIONS]}")


def consistency_loss(target_logits: torch.Tensor, logits: torch.Tensor,
                     threshold: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Cross-entropy of `logits` to the hard labels of `target_logits` (no gradient through them), counted only
    where their confidence is >= threshold, averaged over all rows (FixMatch's normalisation); returns (loss, mask).

    Example:
        >>> t = torch.tensor([[4.0, 0.0], [0.1, 0.0]])  # confident, then unsure
        >>> loss, mask = consistency_loss(t, t, 0.9)
        >>> mask.tolist()
        [True, False]
    """
    probs = target_logits.detach().float().softmax(-1)  # (B, K)
    conf, labels = probs.max(-1)  # (B,)
    mask = conf >= threshold
    per_row = F.cross_entropy(logits.float(), labels, reduction="none")  # (B,)
    return (per_row * mask).sum() / max(per_row.numel(), 1), mask


class DistributionAlignment:
    """ReMixMatch's distribution alignment with a uniform class prior: target probabilities p -> p / m renormalised,
    m the mean of p over the last `window` batches (this one included); returned as logits (log p - log m).

    Example:
        >>> da = DistributionAlignment(window=4)
        >>> q = da(torch.tensor([[0.6, 0.4], [0.8, 0.2]]).log()).softmax(-1)  # m = (0.7, 0.3)
        >>> [[round(float(v), 4) for v in row] for row in q]
        [[0.3913, 0.6087], [0.6316, 0.3684]]
    """

    def __init__(self, window: int):
        self.window = window
        self.history: list[torch.Tensor] = []  # per batch: the mean target distribution, (K,)

    def __call__(self, logits: torch.Tensor) -> torch.Tensor:
        probs = logits.detach().float().softmax(-1)  # (B, K)
        self.history = [*self.history[max(0, len(self.history) + 1 - self.window):], probs.mean(0)]
        marginal = torch.stack(self.history).mean(0)  # (K,)
        return probs.clamp_min(1e-12).log() - marginal.clamp_min(1e-12).log()


def _same(logits: torch.Tensor) -> torch.Tensor:
    return logits


@SEMI_METHODS.register("fixmatch")
def _fixmatch(run: Callable, x: torch.Tensor, weak: Callable, strong: Callable, threshold: float,
              align: Callable = _same) -> tuple[torch.Tensor, torch.Tensor]:
    with torch.no_grad():
        target = align(run(weak(x)))  # (B, K)
    return consistency_loss(target, run(strong(x)), threshold)


@SEMI_METHODS.register("pseudo-label")
def _pseudo_label(run: Callable, x: torch.Tensor, weak: Callable, strong: Callable, threshold: float,
                  align: Callable = _same) -> tuple[torch.Tensor, torch.Tensor]:
    logits = run(weak(x))  # (B, K): its own detached confident predictions are its targets
    return consistency_loss(align(logits.detach()), logits, threshold)


def semi_batches(labelled: Callable[[], Any], unlabelled: Callable[[], Any],
                 mu: int) -> Callable[[], Iterator[SemiBatch]]:
    """A data callable: each labelled batch of an epoch paired with the next `mu` unlabelled batches (concatenated;
    the unlabelled source restarts when it runs out). Deterministic when both sources are.

    Example:
        >>> data = semi_batches(lambda: [(torch.zeros(2, 3), torch.zeros(2))], lambda: [torch.ones(4, 3)], mu=2)
        >>> next(iter(data())).unlabelled.shape
        torch.Size([8, 3])
    """
    def epoch() -> Iterator[SemiBatch]:
        source = iter(unlabelled())
        for batch in labelled():
            chunks = []
            while len(chunks) < mu:
                item = next(source, None)
                if item is None:  # the unlabelled pass ended: start another
                    source = iter(unlabelled())
                    item = next(source, None)
                    if item is None:
                        raise ConfigError("the unlabelled data yielded no batches")
                chunks.append(item)
            yield SemiBatch(batch, torch.cat(chunks))  # unlabelled: (mu * B, ...)

    return epoch


class SemiLoss:
    """loss(model, SemiBatch) = task loss on the labelled batch + lambda_u x the method's unlabelled loss.
    `mask_rates` keeps, per call, the fraction of unlabelled inputs confident enough to train on."""

    def __init__(self, task: Any, cfg: SemiConfig):
        self.task, self.cfg = task, cfg
        self.method = SEMI_METHODS.get(cfg.method)
        self.align = DistributionAlignment(cfg.align) if cfg.align else _same
        self.views: tuple[Callable, Callable] | None = None
        self.mask_rates: list[float] = []

    def _run(self, model: nn.Module) -> Callable[[torch.Tensor], torch.Tensor]:
        def run(x: torch.Tensor) -> torch.Tensor:
            logits = self.task.run_batch(model, x)
            if not isinstance(logits, torch.Tensor) or logits.dim() != 2:
                raise ConfigError(f"semi-supervised training needs a classifier whose output is (batch, classes) "
                                  f"logits; task {self.task.name!r} gives "
                                  f"{tuple(logits.shape) if isinstance(logits, torch.Tensor) else type(logits)}")
            return logits
        return run

    def __call__(self, model: nn.Module, batch: SemiBatch) -> torch.Tensor:
        if self.views is None:
            self.views = tuple(resolve_augmentation(getattr(self.cfg, role), self.task.input_kind,
                                                    batch.unlabelled, role=role) for role in ("weak", "strong"))
        sup = self.task.loss(model, batch.labelled)
        unsup, mask = self.method(self._run(model), batch.unlabelled, *self.views, self.cfg.threshold,
                                  align=self.align)
        self.mask_rates.append(float(mask.float().mean()))
        ramp = min(1.0, len(self.mask_rates) / self.cfg.ramp_steps) if self.cfg.ramp_steps else 1.0
        return sup + ramp * self.cfg.lambda_u * unsup


def semi_task(task: Any, cfg: SemiConfig) -> Any:
    """`task` training semi-supervised: its train_data yields SemiBatches and its loss is a `SemiLoss`.

    Example:
        >>> from condense.tasks import get_task
        >>> t = semi_task(get_task("digits", labels_per_class=5), SemiConfig(mu=2))
        >>> next(iter(t.train_data())).unlabelled.shape
        torch.Size([128, 1, 8, 8])
    """
    if task.unlabelled_data is None:
        raise ConfigError(f"semi-supervised training needs unlabelled data, and task {task.name!r} has none; hold "
                          "labels back, e.g. --task-option labels_fraction=0.05 (digits), or give the Task "
                          "unlabelled_data=")
    if task.train_data is None or task.loss is None:
        raise ConfigError(f"task {task.name!r} has no train_data/loss; semi-supervised training needs labelled "
                          "batches and a loss too")
    return dataclasses.replace(task, train_data=semi_batches(task.train_data, task.unlabelled_data, cfg.mu),
                               loss=SemiLoss(task, cfg))


def fit_semi_supervised(model: nn.Module, task: Any, cfg: Any, semi: SemiConfig = SemiConfig()) -> SemiLoss:
    """Train `model` in place with the shared loop (`cfg`: a FitConfig) on `task`'s labelled and unlabelled data;
    returns the SemiLoss (its `mask_rates`: per step, the fraction of unlabelled inputs trained on).

    Example:
        >>> from condense.tasks import get_task
        >>> from condense.train.loop import FitConfig
        >>> t = get_task("digits", channels=[4, 4, 8], labels_per_class=5)
        >>> len(fit_semi_supervised(t.build_skeleton(), t, FitConfig(steps=2), SemiConfig(mu=1)).mask_rates)
        2
    """
    st = semi_task(task, semi)
    fit(model, st.train_data, st.loss, cfg, description=f"semi-supervised training {task.name}",
        input_kind=task.input_kind)
    return st.loss
