"""Parameter-server training: `TrainConfig(strategy="ps")`, `condense train --strategy ps --nproc N`.

Every process is a worker computing gradients on its own shard of the batches (rank r takes raw batches r,
r + N, ..., as DDP does); rank 0 also hosts the server (`condense.train.distributed.ps_server`), which holds the
weights and the optimizer state. Workers push (optionally compressed: `comm_hook` = fp16 | bf16 | int8 | powersgd,
see `codecs`) and receive the new weights in the same round trip, over torch.distributed.rpc (TensorPipe); a gloo
process group is kept beside it for the barriers of checkpoints and the stop decision of evaluation.

`ps_mode="sync"`: one optimizer step per round of pushes, identical to one process training on the union of the
workers' batches (tests/train/test_ps.py checks the weights); evaluation, early stopping, targets and exact
checkpoint/resume work as in the shared loop. `ps_mode="async"`: each worker pushes as soon as it is done, the server
applies gradients at most `max_staleness` versions old and drops older ones; `steps` counts applied updates (each of
one worker's batch). The summary (TrainResult.stats) reports the staleness seen and the gradients dropped.

The server holds the trainable parameters only; buffers (BatchNorm running statistics) stay each worker's own and
the saved model has rank 0's, as under DDP (which broadcasts rank 0's buffers before every forward).
"""
from __future__ import annotations

import dataclasses
import random
import time
import warnings
from pathlib import Path
from typing import Any, Callable, Iterable

import torch
import torch.distributed as dist
import torch.distributed.rpc as rpc
from torch import nn

from condense import progress
from condense.core.task import to_device
from condense.errors import ConfigError
from condense.train import checkpoint as ckpt
from condense.train.augment import batch_augmenter
from condense.train.distributed import World, barrier, env_world, init_from_env
from condense.train.distributed import ps_server as srv
from condense.train.distributed.codecs import PUSH_CODECS
from condense.train.precision import autocast, dtype_of, resolve_precision
from condense.train.schedules import batches_per_step
from condense.train.strategies import TrainingStrategy, register_training_strategy
from condense.train.trainer import (TrainResult, _Batches, _count, _peak_memory_mb, _rng_state, _set_rng_state,
                                    judge_eval)
from condense.train.metrics import MetricsLog

RPC_TIMEOUT_S = 1800  # a sync push waits for the slowest worker (and rank 0's evaluations): as long as gloo's


def _name(rank: int) -> str:
    return f"worker{rank}"


def _init_rpc(rank: int, world: int) -> None:
    opts = rpc.TensorPipeRpcBackendOptions(num_worker_threads=max(8, 2 * world), rpc_timeout=RPC_TIMEOUT_S)
    with warnings.catch_warnings():  # torch's own RPC set-up gathers over the gloo group with a deprecated call
        warnings.simplefilter("ignore", UserWarning)
        rpc.init_rpc(_name(rank), rank=rank, world_size=world, rpc_backend_options=opts)


def _load_weights(model_params: list[nn.Parameter], weights: list[torch.Tensor]) -> None:
    with torch.no_grad():
        for p, w in zip(model_params, weights):
            p.copy_(w)


def ps_fit(model: nn.Module, batches: Callable[[], Iterable[Any]] | Iterable[Any],
           loss_fn: Callable[[nn.Module, Any], torch.Tensor], cfg: Any, *, device: torch.device | str = "cpu",
           out: str | Path | None = None, resume: str | Path | None = None,
           evaluate: Callable[[nn.Module], dict[str, float]] | None = None, primary: str | None = None,
           higher_is_better: bool = True, input_kind: str | None = None) -> TrainResult:
    """Train `model` in place with a parameter server; every process started by torchrun calls this.

    Returns a TrainResult: on rank 0 the server's losses (sync: the workers' mean per step), samples, bytes per
    update and `stats`; on other ranks their own view. After it, every rank's `model` holds the final weights.
    """
    device = torch.device(device)
    world = init_from_env(device) if env_world().size > 1 else env_world()
    if world.size < 2:
        raise ConfigError("strategy='ps' needs at least 2 processes (rank 0 hosts the server and trains too): "
                          "launch with `condense train --strategy ps --nproc 2` or more, or use strategy='single'")
    torch.manual_seed(cfg.seed)
    random.seed(cfg.seed)
    if not world.is_main:
        barrier()  # rank 0 measures "auto" precision first; the others read its cached answer
    precision = resolve_precision(cfg.precision, device)
    if world.is_main:
        barrier()
    amp_dtype = dtype_of(precision)
    fingerprint = ckpt.fingerprint(model.state_dict())
    params = [p for p in model.parameters() if p.requires_grad]
    data = _Batches(batches, world)
    augment = batch_augmenter(getattr(cfg, "augment", None), input_kind)
    codec = PUSH_CODECS.get(cfg.comm_hook)(cfg)
    meta: dict[str, Any] = {}
    if resume is not None:
        folder = ckpt.find_checkpoint(resume)
        meta = ckpt.read_meta(folder)
        ckpt.check_compatible(meta, fingerprint, folder)
        from safetensors.torch import load_file

        model.load_state_dict(load_file(str(folder / "model.safetensors"), device=str(device)))
        if (folder / f"rng-rank{world.rank}.pt").exists():
            _set_rng_state(ckpt.load_tensors(folder / f"rng-rank{world.rank}.pt"), device)
        data.restore(meta["data"])
    server = srv.start_server(model, cfg, world.size) if world.is_main else None
    if server is not None and meta:
        server.opt.load_state_dict(ckpt.load_tensors(folder / "optim.pt"))
        server.version, server.losses = meta["step"], list(meta["losses"])
        server.samples, server.tokens = meta["samples"], meta["tokens"]
    _init_rpc(world.rank, world.size)
    done = False
    try:
        w = _Worker(model, params, data, loss_fn, cfg, codec, server, world, device, amp_dtype, augment, fingerprint,
                    precision)
        result = _loop(w, out=out, meta=meta, evaluate=evaluate, primary=primary, higher_is_better=higher_is_better)
        done = True
    finally:
        rpc.shutdown(graceful=done)  # graceful: waits for every worker's outstanding calls; after an error: not
        srv.stop_server()
    return result


@dataclasses.dataclass
class _Worker:
    """One process's side of a run: its replica, its shard of the data, its push codec; on rank 0 the server."""

    model: nn.Module
    params: list[nn.Parameter]
    data: _Batches
    loss_fn: Callable[[nn.Module, Any], torch.Tensor]
    cfg: Any
    codec: Any
    server: srv.ParameterServer | None
    world: World
    device: torch.device
    amp_dtype: torch.dtype | None
    augment: Callable[[Any], Any] | None
    fingerprint: str
    precision: str

    def gradients(self, version: int) -> tuple[list[torch.Tensor], float, int, int]:
        """(gradients, mean loss, samples, tokens) of this worker's next `batches_per_step` batches."""
        k = batches_per_step(version, self.cfg)
        for p in self.params:
            p.grad = None
        total, samples, tokens = 0.0, 0, 0
        for _ in range(k):
            batch = to_device(self.data.next(), self.device)
            if self.augment is not None:
                batch = self.augment(batch)
            n, t = _count(batch)
            samples, tokens = samples + n, tokens + t
            with autocast(self.device, self.amp_dtype):
                loss = self.loss_fn(self.model, batch)
            (loss / k).backward()
            total += float(loss.detach()) / k
        return [p.grad if p.grad is not None else torch.zeros_like(p) for p in self.params], total, samples, tokens


def _loop(w: _Worker, *, out: str | Path | None, meta: dict[str, Any],
          evaluate: Callable[[nn.Module], dict[str, float]] | None, primary: str | None,
          higher_is_better: bool) -> TrainResult:
    model, params, cfg, server, world, device = w.model, w.params, w.cfg, w.server, w.world, w.device
    sync = cfg.ps_mode == "sync"
    if server is not None:  # rank 0 calls its server in-process
        push: Callable[..., tuple[int, list[torch.Tensor]]] = (
            (lambda *a: server.push_sync(*a).wait()) if sync else server.push_async)
        version, weights = server.pull()
    else:
        fn = srv.remote_push_sync if sync else srv.remote_push_async
        push = lambda *a: rpc.rpc_sync(_name(0), fn, args=a)  # noqa: E731
        version, weights = rpc.rpc_sync(_name(0), srv.remote_pull)
    _load_weights(params, weights)
    result = TrainResult(losses=list(meta.get("losses", [])), precision=w.precision, world_size=world.size,
                         evals=list(meta.get("evals", [])), train_s=meta.get("train_s", 0.0))
    result.time_to_target_s, result.step_to_target = meta.get("time_to_target_s"), meta.get("step_to_target")
    best, bad_evals = meta.get("best"), meta.get("bad_evals", 0)
    log = MetricsLog(out, tensorboard=getattr(cfg, "tensorboard", False), enabled=world.is_main and out is not None,
                     start_step=version)
    ckpt_root = Path(out) / "checkpoints" if out is not None else None
    model.train()
    t_loop = time.perf_counter()
    with progress.steps(f"parameter server ({cfg.ps_mode})", cfg.steps) as bar:
        shown = version
        bar.advance(shown)
        while version < cfg.steps:
            t0 = time.perf_counter()
            grads, total, samples, tokens = w.gradients(version)
            payload = [x.cpu() for x in w.codec.encode(grads)]
            version, weights = push(world.rank, version, payload, total, samples, tokens)
            _load_weights(params, weights)
            result.train_s += time.perf_counter() - t0
            bar.start(f"loss {total:.4f}")
            bar.advance(min(version, cfg.steps) - shown)
            shown = min(version, cfg.steps)
            if not sync:
                continue
            losses = server.losses if server is not None else result.losses + [total]
            result.losses = list(losses)
            if world.is_main and out is not None:
                log.write({"kind": "train", "step": version, "loss": result.losses[-1], "step_s": time.perf_counter()
                           - t0, "samples": server.samples, "train_s": result.train_s})
            stop = False
            if evaluate is not None and cfg.eval_every and (version % cfg.eval_every == 0 or version == cfg.steps):
                if world.is_main:
                    model.eval()
                    metrics = evaluate(model)
                    model.train()
                    row = {"step": version, "train_s": result.train_s, **metrics}
                    result.evals.append(row)
                    if out is not None:
                        log.write({"kind": "eval", **row})
                    value = metrics.get(primary) if primary else None
                    stop, best, bad_evals = judge_eval(result, value, version, cfg, higher_is_better, best, bad_evals)
                flag = torch.tensor([int(stop)], device=device)  # NCCL broadcasts device tensors
                dist.broadcast(flag, src=0)  # every worker stops at the same step
                stop = bool(flag)
            if ckpt_root is not None and cfg.checkpoint_every and (
                    version % cfg.checkpoint_every == 0 or version == cfg.steps or stop):
                _save(w, ckpt_root, version, result, best, bad_evals)
            if stop:
                break
    if not sync:
        result.train_s = time.perf_counter() - t_loop
    log.close()
    barrier()  # every worker has finished pushing: the server's weights are final
    if server is not None:
        _, weights = server.pull()
        _load_weights(params, weights)
        result.losses, result.samples, result.tokens = list(server.losses), server.samples, server.tokens
        result.bytes_per_step = [b - a for a, b in zip([0, *server.bytes_at[:-1]], server.bytes_at)]
        result.stats = server.stats()
    result.steps = len(result.losses)
    result.peak_memory_mb = _peak_memory_mb(device)
    return result


def _save(w: _Worker, root: Path, step: int, result: TrainResult, best: Any, bad_evals: int) -> None:
    """A checkpoint in the shared loop's layout (every rank calls it at the same step of a sync run)."""
    model, server, world, device, cfg = w.model, w.server, w.world, w.device, w.cfg

    def parts(folder: Path) -> None:
        if server is not None:
            from safetensors.torch import save_file

            save_file({k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()},
                      str(folder / "model.safetensors"))
            ckpt.save_tensors(folder / "optim.pt", server.opt.state_dict())
        ckpt.save_tensors(folder / f"rng-rank{world.rank}.pt", _rng_state(device))

    samples, tokens = (server.samples, server.tokens) if server is not None else (0, 0)
    meta = {"step": step, "data": w.data.state(), "losses": result.losses, "evals": result.evals,
            "train_s": result.train_s, "samples": samples, "tokens": tokens,
            "time_to_target_s": result.time_to_target_s, "step_to_target": result.step_to_target, "best": best,
            "bad_evals": bad_evals, "fingerprint": w.fingerprint, "world_size": world.size, "precision": w.precision,
            "config": cfg.to_dict()}
    path = ckpt.save_checkpoint(root, step, parts, meta, rank=world.rank, barrier=barrier,
                                keep=getattr(cfg, "keep_checkpoints", 0))
    result.checkpoint = str(path)


@register_training_strategy("ps")
class ParameterServerTraining(TrainingStrategy):
    """Parameter-server training (see the module docstring); needs 2 or more processes."""

    def check(self, cfg: Any) -> None:
        if cfg.comm_hook not in PUSH_CODECS:
            raise ConfigError(f"comm_hook {cfg.comm_hook!r} has no push codec for strategy='ps'; choose one of "
                              f"{list(PUSH_CODECS)}")
        if cfg.precision == "fp16":
            raise ConfigError("strategy='ps' trains in fp32 or bf16 (no fp16 gradient scaling); use precision="
                              "'bf16' or 'fp32'")
        if cfg.ps_mode == "async" and (cfg.checkpoint_every or cfg.eval_every or cfg.patience or cfg.stop_at_target
                                       or cfg.target is not None):
            raise ConfigError("ps_mode='async' trains without checkpoints or evaluation (workers are at different "
                              "steps): leave checkpoint_every, eval_every, patience, target and stop_at_target at "
                              "their defaults, or use ps_mode='sync'")

    def run(self, task: Any, model: nn.Module, cfg: Any, *, device: Any, out: Any, resume: Any) -> TrainResult:
        if resume is not None and cfg.ps_mode == "async":
            raise ConfigError("--resume needs ps_mode='sync' (async runs write no checkpoints)")
        evaluate = task.evaluate if (cfg.eval_every or cfg.target is not None or cfg.patience) else None
        return ps_fit(model, task.train_data, task.loss, cfg, device=device, out=out, resume=resume,
                      evaluate=evaluate, primary=task.primary_metric, higher_is_better=task.higher_is_better,
                      input_kind=task.input_kind)
