"""`train(task, TrainConfig)`: train a task's model from scratch (or fine-tune it) through the shared engine.

The same config drives the Python API and `condense train` (`--set FIELD=VALUE` sets any TrainConfig field).
Under torchrun (`condense train --nproc N`) every process runs this function; rank 0 writes the outputs.

Outputs in `out/`: metrics.jsonl (one row per step and per evaluation), tb/ (TensorBoard events),
checkpoints/ (crash-safe, resumable), model/ (the trained model as a condense artifact), train.json (summary).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from condense.core.atomic import atomic_write_json
from condense.core.config import check_float, check_int, check_nested, config, show
from condense.errors import ConfigError
from condense.train.distributed import pipeline as _pipeline_strategy  # noqa: F401  (registers "pipeline")
from condense.train.distributed import ps as _ps_strategy  # noqa: F401  (registers "ps")
from condense.train.distributed.hooks import COMM_HOOKS
from condense.train.loop import FitConfig
from condense.train.semi import SemiConfig, semi_task
from condense.train.strategies import TRAINING_STRATEGIES
from condense.train.trainer import TrainResult


def comm_hook_names() -> tuple[str, ...]:
    """"none" plus every registered communication hook (read when a config is checked, so hooks registered later,
    by a plugin or a bench, are accepted too)."""
    return ("none", *COMM_HOOKS)


@config
class TrainConfig(FitConfig):
    """FitConfig plus what a whole training run needs. precision defaults to "auto" here (bf16 only where measured
    faster on this machine).

    Args:
        eval_every: evaluate the task every N steps (0: only at the end when a target or patience is set).
        target: a value of the task's primary metric; the first time it is reached is the time-to-target.
        stop_at_target: stop training once the target is reached.
        patience, min_delta: early stopping after `patience` evaluations without an improvement > min_delta.
        checkpoint_every: write a checkpoint every N steps (and at the end); keep_checkpoints: how many (0: all).
        tensorboard: also write TensorBoard events to out/tb.
        strategy: auto (DDP when several processes) | single | ddp | fsdp | pipeline (GPT models: blocks split
            into one stage per process, GPipe over n_microbatches micro-batches; fp32, no checkpoints or evaluation),
            ps (parameter server on rank 0 holding the weights and optimizer state, every process a worker; needs
            --nproc 2 or more; see `condense.train.distributed.ps`),
            or a name registered with `condense.train.strategies.register_training_strategy`.
        comm_hook: DDP gradient compression: none | allreduce | fp16 | bf16 | powersgd | int8, or a name added to
            `condense.train.distributed.hooks.COMM_HOOKS` (fn(cfg) -> (state, hook) for `register_comm_hook`).
            With strategy="ps": the compression of the workers' pushes, none | fp16 | bf16 | int8 | powersgd.
        ps_mode: strategy="ps" only: sync (one step per round of every worker's gradients, the same as one process
            on all their batches) | async (each gradient applied as it arrives; `steps` counts applied updates).
        max_staleness: async: a gradient computed on weights more than this many updates old is dropped, never
            applied (0: only gradients of the current weights).
        powersgd_rank, powersgd_start: PowerSGD's matrix rank and the step it starts compressing (>= 2).
        ddp_bucket_mb: DDP gradient bucket size (each bucket is one call of the communication hook).
        semi: semi-supervised training on the task's `unlabelled_data` (`condense.train.semi.SemiConfig`; a method
            name such as "fixmatch" stands for SemiConfig(method=name) in Python; in the CLI a mapping:
            --set 'semi={"method": "fixmatch"}'); None: labelled only.

    Example:
        >>> TrainConfig(steps=50, schedule="cosine", comm_hook="powersgd").precision
        'auto'
    """

    precision: str = "auto"
    eval_every: int = 0
    target: float | None = None
    stop_at_target: bool = False
    patience: int = 0
    min_delta: float = 0.0
    checkpoint_every: int = 0
    keep_checkpoints: int = 0
    tensorboard: bool = True
    strategy: str = "auto"
    comm_hook: str = "none"
    powersgd_rank: int = 2
    powersgd_start: int = 2
    n_microbatches: int = 4
    ddp_bucket_mb: float = 25.0
    semi: SemiConfig | None = None
    ps_mode: str = "sync"
    max_staleness: int = 4

    def __post_init__(self) -> None:
        super().__post_init__()
        for name in ("eval_every", "patience", "checkpoint_every", "keep_checkpoints"):
            check_int(self, name, lo=0, example=0)
        check_float(self, "target", optional=True, example=0.95)
        check_float(self, "min_delta", lo=0, example=0.0)
        check_int(self, "powersgd_rank", lo=1, hi=64, example=2)
        check_int(self, "powersgd_start", lo=0, example=2)
        check_int(self, "n_microbatches", lo=1, hi=4096, example=4)
        check_float(self, "ddp_bucket_mb", lo=0, lo_open=True, hi=1e6, example=25.0)
        check_int(self, "max_staleness", lo=0, hi=10**6, example=4)
        if self.ps_mode not in ("sync", "async"):
            raise ConfigError(f"TrainConfig.ps_mode must be 'sync' or 'async', got {show(self.ps_mode)}; e.g. "
                              "ps_mode='async' with max_staleness=4")
        for name in ("strategy", "comm_hook"):
            if not isinstance(getattr(self, name), str):
                raise ConfigError(f"TrainConfig.{name} must be a string, got {show(getattr(self, name))}; "
                                  f"e.g. {name}={'auto' if name == 'strategy' else 'none'!r}")
        if self.strategy not in TRAINING_STRATEGIES:
            raise ConfigError(f"unknown strategy {self.strategy!r}; choose one of {list(TRAINING_STRATEGIES)}")
        if self.comm_hook not in comm_hook_names():
            raise ConfigError(f"unknown comm_hook {self.comm_hook!r}; choose one of {list(comm_hook_names())}")
        TRAINING_STRATEGIES.get(self.strategy).check(self)
        if isinstance(self.semi, str):  # --set semi=fixmatch
            object.__setattr__(self, "semi", SemiConfig(method=self.semi))
        check_nested(self, "semi", SemiConfig, optional=True)


def fresh_model(task: Any, seed: int) -> nn.Module:
    """The task's architecture with freshly initialised weights (seeded): its skeleton, or its model with every
    module's `reset_parameters()` called when the task has no skeleton.

    Example:
        >>> from condense.tasks.tinygpt import make_task
        >>> fresh_model(make_task("tiny"), 0).config.n_layer
        2
    """
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        if task.skeleton is not None:
            model = task.build_skeleton()
        else:
            model = task.build_model()
            for m in model.modules():
                if hasattr(m, "reset_parameters") and m is not model:
                    m.reset_parameters()
    return model.train()


def train(task: Any, cfg: TrainConfig = TrainConfig(), *, out: str | Path | None = None,
          resume: str | Path | None = None, device: str | torch.device = "cpu", from_scratch: bool = True,
          model: nn.Module | None = None) -> tuple[nn.Module, TrainResult]:
    """Train the task's model on its `train_data` with its `loss`; returns (model, TrainResult).

    Args:
        out: run folder for metrics, checkpoints, the trained model and train.json (None: write nothing).
        resume: a run folder or checkpoint to continue from (the same task and model options).
        from_scratch: start from fresh weights (default) rather than the task's trained model.
        model: train this model instead.

    Example:
        >>> from condense.tasks.tinygpt import make_task
        >>> m, r = train(make_task("tiny"), TrainConfig(steps=2, precision="fp32", tensorboard=False))
        >>> len(r.losses)
        2
    """
    if task.train_data is None or task.loss is None:
        raise ConfigError(f"task {task.name!r} has no train_data/loss to train on; give the Task train_data= and "
                          "loss= (see condense.Task)")
    if out is not None:
        from condense.core.outputs import check_output_dir

        check_output_dir(out, kind="train")  # before any work
    if model is None:
        model = fresh_model(task, cfg.seed) if from_scratch else task.build_model().train()
    model = model.to(device)
    if out is not None:
        Path(out).mkdir(parents=True, exist_ok=True)
    strategy = TRAINING_STRATEGIES.get(cfg.strategy)
    run_task = semi_task(task, cfg.semi) if cfg.semi is not None else task
    result = strategy.run(run_task, model, cfg, device=device, out=out, resume=resume)
    if out is not None:
        _write_outputs(task, model, cfg, result, Path(out))
    return model.eval(), result


def train_task(task: Any, cfg: TrainConfig = TrainConfig(), **kwargs: Any) -> tuple[nn.Module, TrainResult]:
    """`train` under the name `condense.train_task` (`condense.train` is this package, so it cannot be the function).

    Example:
        >>> import condense
        >>> _, r = condense.train_task(condense.get_task("tinygpt", preset="tiny"),
        ...                            condense.TrainConfig(steps=1, precision="fp32", tensorboard=False))
        >>> r.steps
        1
    """
    return train(task, cfg, **kwargs)


def _write_outputs(task: Any, model: nn.Module, cfg: TrainConfig, result: TrainResult, out: Path) -> None:
    import torch.distributed as dist

    from condense.core.artifact import save

    sharded = dist.is_initialized() and any(type(p).__name__ == "DTensor" for p in model.parameters())
    state = None
    if sharded:  # FSDP: gather the full weights (a collective) and save them from a plain copy on rank 0
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

        state = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    if dist.is_initialized() and dist.get_rank() != 0:
        return
    plain = model
    if state is not None:
        plain = fresh_model(task, cfg.seed)
        plain.load_state_dict(state)
    from condense.core.outputs import new_run_id

    run_id = new_run_id()  # in the model and in train.json, written last (see condense.core.outputs)
    save(plain.cpu() if not sharded else plain, out / "model",
         metadata={"train": {"config": cfg.to_dict(), "steps": result.steps}, "run_id": run_id})
    atomic_write_json(out / "train.json", {"task": task.name, "config": cfg.to_dict(), **result.summary(),
                                           "run_id": run_id})
