"""Transfer learning: fine-tune a pretrained model with a new head on a new labelled task, with frozen layers and
discriminative (layer-wise decaying) learning rates; `condense finetune` runs it beside the same architecture
trained from scratch.

A model's layers are named by a registered grouping (`LAYER_GROUPS`, keyed by model type, registered by the task
that defines the model: techniques never import tasks): an ordered list, bottom to top, of (name, parameters),
e.g. embeddings, layers:0 .. layers:5, head. `freeze` names groups ("embeddings,layers:0-3") or counts them from
the bottom (3: the three lowest); `lr_decay` d gives the head the learning rate lr (or `head_lr`), the group below
it lr x d, the next lr x d^2 and so on down to the embeddings (layer-wise learning-rate decay, as in ULMFiT's
discriminative fine-tuning and ELECTRA/BEiT).

Example:
    >>> TransferConfig(freeze="embeddings,layers:0-1", lr_decay=0.8).lr_decay
    0.8
"""
from __future__ import annotations

import dataclasses
import re
from pathlib import Path
from typing import Any, Callable

from torch import nn

from condense.core.config import check_float, config, show
from condense.core.registry import TypeRegistry
from condense.errors import ConfigError
from condense.train.api import TrainConfig
from condense.train.trainer import TrainResult, run_loop

__all__ = ["TransferConfig", "LAYER_GROUPS", "layer_groups", "frozen_groups", "param_groups", "finetune",
           "TransferRow", "compare_transfer"]

Groups = list[tuple[str, list[nn.Parameter]]]
LAYER_GROUPS: TypeRegistry[Callable[[nn.Module], Groups]] = TypeRegistry("layer grouping")


@config
class TransferConfig(TrainConfig):
    """TrainConfig plus what transfer learning adds. Defaults for a short fine-tuning run (40 steps, lr 2e-4 cosine
    after 4 warm-up steps, evaluation every 10 steps, fp32: the same arithmetic every run); a task may suggest its
    own (`Task.extras["transfer"]`, e.g. which layers to freeze and the target), which `condense finetune` applies
    under the user's --set.

    Args:
        freeze: None (train everything) | an int N (freeze the N lowest layer groups) | group names, comma
            separated, with ranges: "embeddings,layers:0-3".
        lr_decay: per-group learning-rate factor from the top down (1.0: one learning rate for all).
        head_lr: the head's learning rate (None: lr); the groups below it decay from lr.

    Example:
        >>> TransferConfig(freeze=2).freeze
        2
    """

    steps: int = 40
    lr: float = 2e-4
    schedule: str = "cosine"
    warmup_steps: int = 4
    precision: str = "fp32"
    eval_every: int = 10
    tensorboard: bool = False
    freeze: str | int | None = None
    lr_decay: float = 0.9
    head_lr: float | None = 3e-3

    def __post_init__(self) -> None:
        super().__post_init__()
        f = self.freeze
        if isinstance(f, bool) or not (f is None or isinstance(f, str) or (isinstance(f, int) and f >= 0)):
            raise ConfigError(f"TransferConfig.freeze must be None, a count of bottom layer groups (e.g. 2) or "
                              f"group names (e.g. 'embeddings,layers:0-3'), got {show(f)}")
        check_float(self, "lr_decay", lo=0, hi=1, lo_open=True, example=0.8)
        check_float(self, "head_lr", lo=0, lo_open=True, optional=True, example=1e-3)


def layer_groups(model: nn.Module) -> Groups:
    """The model's registered layer groups, bottom to top (the last is the head); every trainable parameter is in
    exactly one."""
    fn = LAYER_GROUPS.find(model)
    if fn is None:
        raise ConfigError(f"no layer grouping is registered for {type(model).__name__}, so freeze= and "
                          f"lr_decay= cannot name its layers; register one: condense.train.transfer."
                          f"LAYER_GROUPS.register({type(model).__name__})(fn), fn(model) -> [(name, params)]")
    groups = fn(model)
    seen = [id(p) for _, ps in groups for p in ps]
    if len(seen) != len(set(seen)) or set(seen) != {id(p) for p in model.parameters()}:
        raise ConfigError(f"the layer grouping of {type(model).__name__} must hold every parameter exactly once")
    return groups


def frozen_groups(names: list[str], freeze: str | int | None) -> list[str]:
    """The group names `freeze` selects, bottom to top.

    Example:
        >>> frozen_groups(["embeddings", "layers:0", "layers:1", "layers:2", "head"], "embeddings,layers:0-1")
        ['embeddings', 'layers:0', 'layers:1']
        >>> frozen_groups(["embeddings", "layers:0", "head"], 2)
        ['embeddings', 'layers:0']
    """
    if freeze is None or freeze == "":
        return []
    if isinstance(freeze, int):
        if freeze >= len(names):
            raise ConfigError(f"freeze={freeze} would freeze every layer group ({len(names)}: {names}), the head "
                              f"too; freeze at most {len(names) - 1}")
        return names[:freeze]
    picked: set[str] = set()
    for part in (p.strip() for p in freeze.split(",") if p.strip()):
        m = re.fullmatch(r"(.+):(\d+)-(\d+)", part)
        wanted = [f"{m.group(1)}:{i}" for i in range(int(m.group(2)), int(m.group(3)) + 1)] if m else [part]
        for w in wanted:
            if w not in names:
                raise ConfigError(f"freeze: no layer group {w!r}; the model's groups are {names}")
            picked.add(w)
    return [n for n in names if n in picked]


def param_groups(model: nn.Module, cfg: TransferConfig) -> list[dict[str, Any]]:
    """Freeze what `cfg.freeze` names (requires_grad=False) and return the optimizer's groups of the rest, each
    with its `lr_scale` (head: head_lr / lr; below it lr_decay ** depth) and its `name`."""
    groups = layer_groups(model)
    names = [n for n, _ in groups]
    frozen = set(frozen_groups(names, cfg.freeze))
    out = []
    for depth, (name, ps) in enumerate(reversed(groups)):  # depth 0: the head
        for p in ps:
            p.requires_grad_(name not in frozen)
        if name in frozen:
            continue
        scale = (cfg.head_lr / cfg.lr if cfg.head_lr else 1.0) if depth == 0 else cfg.lr_decay ** depth
        out.append({"params": ps, "lr_scale": scale, "name": name})
    return out


def finetune(task: Any, cfg: TransferConfig, model: nn.Module, *, description: str = "fine-tuning",
             device: str = "cpu", out: Any = None) -> TrainResult:
    """Train `model` (a pretrained body with a new head, or a fresh one) in place on the task's labelled data
    with frozen groups and per-group learning rates; evaluates every `cfg.eval_every` steps (the first time the
    task's primary metric reaches `cfg.target` is its time/step to target)."""
    if task.train_data is None or task.loss is None:
        raise ConfigError(f"task {task.name!r} has no labelled train_data/loss to fine-tune on")
    groups = param_groups(model, cfg)
    evaluate = task.evaluate if (cfg.eval_every or cfg.target is not None or cfg.patience) else None
    return run_loop(model.to(device).train(), task.train_data, task.loss, cfg, params=groups,
                    description=description, device=device, out=out, evaluate=evaluate,
                    primary=task.primary_metric, higher_is_better=task.higher_is_better,
                    input_kind=task.input_kind)


@dataclasses.dataclass
class TransferRow:
    """One fine-tuning run: where it started from and what it reached, at what cost."""

    variant: str  # "pretrained" | "from scratch"
    accuracy: float  # the task's primary metric after training
    train_s: float
    samples: int
    steps: int
    step_to_target: int | None
    time_to_target_s: float | None
    evals: list[dict[str, Any]]

    @property
    def samples_to_target(self) -> int | None:
        if self.step_to_target is None or not self.steps:
            return None
        return round(self.samples / self.steps * self.step_to_target)


def compare_transfer(task: Any, cfg: TransferConfig, *, scratch: bool = True, out: str | Path | None = None,
                     device: str = "cpu") -> tuple[nn.Module, list[TransferRow]]:
    """Fine-tune the task's pretrained model (`task.build_model()`: pretrained body, new head) and, with
    `scratch`, the same architecture from random weights (`task.build_skeleton()`: the same head, steps, learning
    rates and schedule, with every layer trained at lr: nothing pretrained to keep frozen or to change slowly);
    returns the fine-tuned model and one row per run. `out`: the fine-tuned model is saved to out/model, then
    loaded back and checked to give the same outputs, and the rows go to out/finetune.json.
    """
    if task.skeleton is None and scratch:
        raise ConfigError(f"task {task.name!r} has no skeleton (random-weight architecture) to train from scratch; "
                          "pass scratch=False (--no-scratch)")
    rows, tuned = [], None
    runs = (("pretrained", task.build_model, cfg),
            ("from scratch", task.build_skeleton, dataclasses.replace(cfg, freeze=None, lr_decay=1.0)))
    for variant, build, run_cfg in runs[:2 if scratch else 1]:
        model = build()
        r = finetune(task, run_cfg, model, description=f"fine-tuning {task.name} ({variant})", device=device)
        model.eval()
        final = r.evals[-1] if r.evals and r.evals[-1]["step"] == r.steps else {**task.evaluate(model)}
        rows.append(TransferRow(variant, float(final[task.primary_metric]), r.train_s, r.samples, r.steps,
                                r.step_to_target, r.time_to_target_s, r.evals))
        tuned = tuned if tuned is not None else model
    if out is not None:
        _save_checked(tuned, task, cfg, rows, Path(out))
    return tuned, rows


def _save_checked(model: nn.Module, task: Any, cfg: TransferConfig, rows: list[TransferRow], out: Path) -> None:
    import torch

    from condense.core.artifact import load, save
    from condense.core.atomic import atomic_write_json
    save(model.cpu(), out / "model", metadata={"finetune": {"config": cfg.to_dict(), "steps": rows[0].steps}})
    batch = task.batch(4)
    back = load(out / "model", task=task)
    with torch.no_grad():
        same = torch.allclose(task.run_batch(model, batch), task.run_batch(back, batch), atol=1e-5)
    if not same:
        raise ConfigError(f"the artifact saved to {out / 'model'} does not give the fine-tuned model's outputs")
    atomic_write_json(out / "finetune.json", {"task": task.spec, "config": cfg.to_dict(), "artifact_loads": True,
                                              "runs": [{**dataclasses.asdict(r), "samples_to_target":
                                                        r.samples_to_target} for r in rows]})
