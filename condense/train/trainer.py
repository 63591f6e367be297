"""The training engine: one loop for every technique and for the built-in tasks.

`run_loop` does the steps (batch-size schedule, gradient accumulation, autocast + gradient scaling, clipping, LR
schedule), and optionally evaluation every N steps with early stopping and a quality target, crash-safe
checkpoints with exact resume, JSONL/TensorBoard metrics and DDP/FSDP when launched by torchrun. `fit` (loop.py)
calls it bare; `train` (api.py) calls it for a Task with everything on.

Resume is exact on CPU: a checkpoint holds the model, the optimizer, the step (the LR and batch-size schedules
are functions of it), the data position (epoch, batches consumed; the data callable must yield the same batches
each time it is called, as the tasks' `train_data` do), every process's RNG state and the losses so far.
"""
from __future__ import annotations

import contextlib
import dataclasses
import math
import random
import resource
import time
from pathlib import Path
from typing import Any, Callable, Iterable

import torch
from torch import nn

from condense import progress
from condense.core.task import to_device
from condense.errors import ConfigError
from condense.train import checkpoint as ckpt
from condense.train.augment import batch_augmenter
from condense.train.distributed import World, barrier, env_world
from condense.train.distributed.hooks import ByteCounter, count_bytes
from condense.train.distributed.strategy import Single, strategy_for
from condense.train.ema import WeightEMA
from condense.train.metrics import MetricsLog
from condense.train.optim import build_optimizer
from condense.train.precision import autocast, dtype_of, grad_scaler, resolve_precision
from condense.train.schedules import batches_per_step, lr_factor, max_batches_per_step


@dataclasses.dataclass
class TrainResult:
    """What a run did and what it cost (times in seconds; `train_s` excludes evaluation and checkpoints)."""

    losses: list[float]
    steps: int = 0
    evals: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    wall_s: float = 0.0
    train_s: float = 0.0
    samples: int = 0
    tokens: int = 0
    peak_memory_mb: float = 0.0
    precision: str = "fp32"
    time_to_target_s: float | None = None
    step_to_target: int | None = None
    stopped_early: bool = False
    bytes_per_step: list[int] = dataclasses.field(default_factory=list)
    checkpoint: str | None = None
    world_size: int = 1
    stats: dict[str, Any] = dataclasses.field(default_factory=dict)  # a strategy's own figures (ps: staleness)

    @property
    def samples_per_s(self) -> float:
        return self.samples / self.train_s if self.train_s else 0.0

    @property
    def tokens_per_s(self) -> float:
        return self.tokens / self.train_s if self.train_s else 0.0

    def summary(self) -> dict[str, Any]:
        d = {k: v for k, v in dataclasses.asdict(self).items() if k not in ("losses", "bytes_per_step")}
        d.update(samples_per_s=self.samples_per_s, tokens_per_s=self.tokens_per_s,
                 final_loss=self.losses[-1] if self.losses else None,
                 bytes_per_step=(sum(self.bytes_per_step) / len(self.bytes_per_step)) if self.bytes_per_step
                 else None)
        return d


class _Batches:
    """Cycles through epochs of a data source, remembering (epoch, raw batches consumed) for resume.

    With `world` processes, rank r takes raw batches r, r + world, ... (each rank sees distinct data).
    """

    def __init__(self, source: Callable[[], Iterable[Any]] | Iterable[Any], world: World):
        self._make = source if callable(source) else (lambda: source)
        self.world = world
        self.epoch, self.pos = 0, 0
        self.epoch_len: int | None = len(source) if hasattr(source, "__len__") else None  # type: ignore[arg-type]
        self._it: Any = None

    def _raw(self) -> Any:
        if self._it is None:
            self._it = iter(self._make())
            for _ in range(self.pos):  # resume: skip what the checkpointed run consumed this epoch
                next(self._it)
        try:
            b = next(self._it)
        except StopIteration:
            if self.pos == 0:
                raise ConfigError("the training data yielded no batches") from None
            self.epoch_len = self.pos
            self.epoch, self.pos = self.epoch + 1, 0
            self._it = iter(self._make())
            return self._raw()
        self.pos += 1
        return b

    def next(self) -> Any:
        got = None
        for r in range(self.world.size):
            b = self._raw()
            if r == self.world.rank:
                got = b
        return got

    def state(self) -> dict[str, int]:
        return {"epoch": self.epoch, "pos": self.pos}

    def restore(self, state: dict[str, int]) -> None:
        self.epoch, self.pos, self._it = int(state["epoch"]), int(state["pos"]), None


def _count(batch: Any) -> tuple[int, int]:
    """(samples, tokens) in a batch: its first tensor's first dimension, and its numel when it holds token ids; a
    list of texts counts its texts.

    Example:
        >>> _count((torch.zeros(4, 3, dtype=torch.long), torch.zeros(4))), _count(["a b", "c"]), _count([])
        ((4, 12), (2, 0), (0, 0))
    """
    first = batch
    while isinstance(first, (tuple, list)) and first:
        if isinstance(first[0], str):
            return len(first), 0
        first = first[0]
    if isinstance(first, dict):
        first = next(iter(first.values()), None)
    if not isinstance(first, torch.Tensor) or first.dim() == 0:
        return 0, 0
    tokens = first.numel() if not first.is_floating_point() else 0
    return int(first.shape[0]), int(tokens)


def _rng_state(device: torch.device) -> dict[str, torch.Tensor]:
    st = {"torch": torch.get_rng_state(), "python": torch.tensor(random.getstate()[1], dtype=torch.int64)}
    if device.type == "cuda":
        st["cuda"] = torch.cuda.get_rng_state(device)
    return st


def _set_rng_state(st: dict[str, torch.Tensor], device: torch.device) -> None:
    torch.set_rng_state(st["torch"])
    random.setstate((3, tuple(int(x) for x in st["python"].tolist()), None))
    if "cuda" in st and device.type == "cuda":
        torch.cuda.set_rng_state(st["cuda"], device)


def _peak_memory_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # peak RSS of the process (Linux: KiB)


def _better(a: float, b: float | None, higher: bool, delta: float) -> bool:
    return b is None or (a > b + delta if higher else a < b - delta)


def judge_eval(result: TrainResult, value: float | None, step: int, cfg: Any, higher_is_better: bool,
               best: float | None, bad_evals: int) -> tuple[bool, float | None, int]:
    """After an evaluation whose primary metric is `value`: record the first step at the target (`cfg.target`),
    track the best value and early stopping (`patience`, `min_delta`). Returns (stop, best, bad_evals)."""
    if value is None:
        return False, best, bad_evals
    stop = False
    target, patience = getattr(cfg, "target", None), getattr(cfg, "patience", 0)
    if target is not None and result.step_to_target is None and \
            (value >= target if higher_is_better else value <= target):
        result.time_to_target_s, result.step_to_target = result.train_s, step
        stop = getattr(cfg, "stop_at_target", False)
    if patience:
        if _better(value, best, higher_is_better, getattr(cfg, "min_delta", 0.0)):
            best, bad_evals = value, 0
        else:
            bad_evals += 1
            if bad_evals >= patience:
                stop, result.stopped_early = True, True
    elif _better(value, best, higher_is_better, 0.0):
        best = value
    return stop, best, bad_evals


def run_loop(model: nn.Module, batches: Callable[[], Iterable[Any]] | Iterable[Any],
             loss_fn: Callable[[nn.Module, Any], torch.Tensor], cfg: Any, *,
             params: Iterable[nn.Parameter] | None = None, description: str = "training",
             device: torch.device | str | None = None, out: str | Path | None = None,
             resume: str | Path | None = None, evaluate: Callable[[nn.Module], dict[str, float]] | None = None,
             primary: str | None = None, higher_is_better: bool = True,
             input_kind: str | None = None) -> TrainResult:
    """Train `model` in place for `cfg.steps` optimizer steps; see the module docstring.

    `cfg` is a FitConfig, or a TrainConfig for evaluation, checkpoints, logging and distribution (its extra fields
    are read with defaults, so a FitConfig means: none of those). `cfg.augment` augments every batch's inputs
    (`input_kind`: the task's, for "auto"). Returns a TrainResult.

    Example:
        >>> from condense.train.loop import FitConfig
        >>> net = nn.Linear(2, 1)
        >>> data = [(torch.randn(8, 2), torch.randn(8, 1))]
        >>> r = run_loop(net, data, lambda m, b: ((m(b[0]) - b[1]) ** 2).mean(), FitConfig(steps=3))
        >>> len(r.losses), r.samples
        (3, 24)
    """
    opt_get = lambda name, default=None: getattr(cfg, name, default)  # noqa: E731  (FitConfig lacks them)
    t_start = time.perf_counter()
    torch.manual_seed(cfg.seed)
    random.seed(cfg.seed)
    if device is None:
        device = next((p.device for p in model.parameters()), torch.device("cpu"))
    device = torch.device(device)
    single = opt_get("strategy", "single") == "single"
    world = World() if single else env_world()
    if world.size > 1:
        from condense.train.distributed import init_from_env

        world = init_from_env(device)
    strategy = Single(cfg, world, device) if single else strategy_for(cfg, world, device)
    if world.size > 1 and not world.is_main:
        barrier()  # rank 0 measures "auto" precision first; the others read its cached answer
    precision = resolve_precision(cfg.precision, device)
    if world.size > 1 and world.is_main:
        barrier()
    amp_dtype = dtype_of(precision)
    scaler = grad_scaler(precision, device)

    fingerprint = ckpt.fingerprint(model.state_dict())
    wrapped = strategy.wrap(model)
    groups = None  # parameter groups with their own learning rates (dicts: params, lr_scale)
    if params is not None:
        if type(strategy) is not Single:
            raise ConfigError("params= (training a subset) is only supported in a single process")
        params = list(params)
        if params and isinstance(params[0], dict):
            groups = [{**g, "params": [p for p in g["params"] if p.requires_grad]} for g in params]
            params = [p for g in groups for p in g["params"]]
        params = [p for p in params if p.requires_grad]
    else:
        params = [p for p in wrapped.parameters() if p.requires_grad]
    if not params:
        raise ConfigError("nothing to train: no parameter requires grad")
    opt = build_optimizer(groups if groups is not None else params, cfg)
    base_lrs = [g["lr"] for g in opt.param_groups]
    data = _Batches(batches, world)
    augment = batch_augmenter(opt_get("augment"), input_kind)
    need = max_batches_per_step(cfg) * world.size
    if data.epoch_len == 0:
        raise ConfigError("the training data yielded no batches")
    if data.epoch_len is not None and need > data.epoch_len:
        raise ConfigError(f"the batch-size schedule needs {need} batches per step but the data has only "
                          f"{data.epoch_len}; lower batch_max / grad_accum (or the number of processes)")

    result = TrainResult(losses=[], precision=precision, world_size=world.size)
    best, bad_evals = None, 0
    ema = WeightEMA(model, cfg.ema) if opt_get("ema") is not None else None
    if resume is not None:
        folder = ckpt.find_checkpoint(resume)
        meta = ckpt.read_meta(folder)
        ckpt.check_compatible(meta, fingerprint, folder)
        strategy.load_parts(folder, wrapped, opt)
        rng_file = folder / f"rng-rank{world.rank}.pt"
        if rng_file.exists():
            _set_rng_state(ckpt.load_tensors(rng_file), device)
        if (folder / "scaler.pt").exists() and scaler is not None:
            scaler.load_state_dict(ckpt.load_tensors(folder / "scaler.pt"))
        if ema is not None:
            if not (folder / "ema.pt").exists():
                raise ConfigError(f"{folder} was written without ema; resume with the config it was written with")
            ema.load_state_dict(ckpt.load_tensors(folder / "ema.pt"))
        data.restore(meta["data"])
        result.losses = list(meta["losses"])
        result.evals = list(meta.get("evals", []))
        result.train_s, result.samples, result.tokens = meta["train_s"], meta["samples"], meta["tokens"]
        result.time_to_target_s, result.step_to_target = meta.get("time_to_target_s"), meta.get("step_to_target")
        best, bad_evals = meta.get("best"), meta.get("bad_evals", 0)

    main = world.is_main
    # start_step: the rows a killed run logged after its last checkpoint are replayed now, so they are dropped first
    log = MetricsLog(out, tensorboard=opt_get("tensorboard", False), enabled=main and out is not None,
                     start_step=len(result.losses))
    ckpt_root = Path(out) / "checkpoints" if out is not None else None
    eval_every, ckpt_every = opt_get("eval_every", 0), opt_get("checkpoint_every", 0)
    counter = ByteCounter()
    hooked = opt_get("comm_hook", "none") != "none"
    counting = count_bytes(counter) if hooked else contextlib.nullcontext()

    def save(step: int) -> None:
        if ckpt_root is None:
            return

        def parts(folder: Path) -> None:
            strategy.write_parts(folder, wrapped, opt)
            ckpt.save_tensors(folder / f"rng-rank{world.rank}.pt", _rng_state(device))
            if scaler is not None and main:
                ckpt.save_tensors(folder / "scaler.pt", scaler.state_dict())
            if ema is not None and main:
                ckpt.save_tensors(folder / "ema.pt", ema.state_dict())

        meta = {"step": step, "data": data.state(), "losses": result.losses, "evals": result.evals,
                "train_s": result.train_s, "samples": result.samples, "tokens": result.tokens,
                "time_to_target_s": result.time_to_target_s, "step_to_target": result.step_to_target,
                "best": best, "bad_evals": bad_evals, "fingerprint": fingerprint, "world_size": world.size,
                "precision": precision, "config": cfg.to_dict()}
        path = ckpt.save_checkpoint(ckpt_root, step, parts, meta, rank=world.rank, barrier=barrier,
                                    keep=opt_get("keep_checkpoints", 0))
        result.checkpoint = str(path)

    was_training = model.training
    wrapped.train()
    stop = False
    with progress.steps(description, cfg.steps) as bar, counting:
        bar.advance(len(result.losses))
        while len(result.losses) < cfg.steps and not stop:
            step = len(result.losses)
            t0 = time.perf_counter()
            bytes0 = counter.bytes
            k = batches_per_step(step, cfg)
            factor = lr_factor(step, cfg)
            for g, base in zip(opt.param_groups, base_lrs):
                g["lr"] = base * factor
            opt.zero_grad(set_to_none=True)
            total = torch.zeros((), device=device)
            for i in range(k):
                batch = to_device(data.next(), device)
                if augment is not None:
                    batch = augment(batch)
                n, t = _count(batch)
                result.samples += n * world.size
                result.tokens += t * world.size
                sync = strategy.no_sync(wrapped) if i < k - 1 else contextlib.nullcontext()
                with sync:
                    with autocast(device, amp_dtype):
                        loss = loss_fn(wrapped, batch)
                    scaled = loss if k == 1 else loss / k
                    (scaler.scale(scaled) if scaler is not None else scaled).backward()
                total += loss.detach().float() if k == 1 else loss.detach().float() / k
            if data.epoch_len is not None and k * world.size > data.epoch_len:
                raise ConfigError(f"the batch-size schedule reached {k * world.size} batches per step at step "
                                  f"{step} but the data has only {data.epoch_len} per epoch; lower batch_max / "
                                  f"grad_accum or batch_growth (earlier checkpoints are kept)")
            if scaler is not None:
                scaler.unscale_(opt)
            if cfg.grad_clip:
                torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)
            if scaler is not None:
                scaler.step(opt)
                scaler.update()
            else:
                opt.step()
            if ema is not None:
                ema.update(model)
            loss_value = float(total)
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            dt = time.perf_counter() - t0
            result.train_s += dt
            result.losses.append(loss_value)
            if hooked:
                result.bytes_per_step.append(counter.bytes - bytes0)
            step += 1
            rate = f"{n * k * world.size / dt:,.0f} samples/s" if dt > 0 and n else ""
            bar.start(f"loss {loss_value:.4f}  {rate}")
            bar.advance()
            if main and out is not None:
                log.write({"kind": "train", "step": step, "loss": loss_value, "lr": opt.param_groups[0]["lr"],
                           "batches_per_step": k, "step_s": dt, "samples": result.samples,
                           "train_s": result.train_s})
            if evaluate is not None and eval_every and (step % eval_every == 0 or step == cfg.steps):
                wrapped.eval()
                with ema.swapped(model) if ema is not None else contextlib.nullcontext():
                    metrics = evaluate(strategy.unwrap(wrapped))  # FSDP: the sharded module, run collectively
                wrapped.train()
                row = {"step": step, "train_s": result.train_s, **metrics}
                result.evals.append(row)
                if main and out is not None:
                    log.write({"kind": "eval", **row})
                value = metrics.get(primary) if primary else None
                halt, best, bad_evals = judge_eval(result, value, step, cfg, higher_is_better, best, bad_evals)
                stop = stop or halt
            if ckpt_every and (step % ckpt_every == 0 or step == cfg.steps or stop):
                save(step)
    log.close()
    if ema is not None:
        ema.copy_to(model)
    model.train(was_training)
    result.steps = len(result.losses)
    result.wall_s = time.perf_counter() - t_start
    result.peak_memory_mb = _peak_memory_mb(device)
    if not all(math.isfinite(x) for x in result.losses[-1:]):
        progress.note(f"{description}: the loss is not finite ({result.losses[-1]}); lower lr")
    return result
