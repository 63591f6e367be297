"""One federation: the clients' data and local training, the server's aggregation and evaluation, round state.

Both engines share this: the in-process one calls it in a loop, the Flower one from its ClientApp and ServerApp.
The global model travels as one flat float32 vector over the model's floating-point state (`Layout`); integer
buffers (BatchNorm's step counters) stay the initial model's.
"""
from __future__ import annotations

import dataclasses
import json
import math
import time
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

from condense.core.atomic import atomic_write
from condense.errors import ConfigError
from condense.federated import messages
from condense.federated.compress import ErrorFeedback, Layout, make_codec
from condense.federated.config import FederatedConfig
from condense.federated.splits import dirichlet_split, gather, group_split, iid_split
from condense.train.loop import FitConfig, fit

STATE_FILE = "federated-state.safetensors"
METRICS_FILE = "metrics.jsonl"


class Federation:
    """Clients, codec and evaluation for `task` under `cfg`.

    Example:
        >>> from condense.tasks import get_task
        >>> fed = Federation(get_task("digits", channels=[4, 4, 8]), FederatedConfig(clients=3, split="iid"))
        >>> [int(p.numel()) for p in fed.parts]
        [479, 479, 479]
    """

    def __init__(self, task: Any, cfg: FederatedConfig):
        from condense.train.api import fresh_model

        self.task, self.cfg = task, cfg
        self.x, self.y = gather(task)
        n = self.x.shape[0]
        if cfg.split == "iid":
            self.parts = iid_split(n, cfg.clients, cfg.seed)
        elif cfg.split == "groups":
            self.parts = group_split(task, n, cfg.clients)
        elif cfg.split == "same":
            self.parts = [torch.arange(n)] * cfg.clients
        else:
            if self.y.dtype.is_floating_point or self.y.dim() != 1:
                raise ConfigError(f"task {task.name!r}: a dirichlet split needs one integer class label per sample; "
                                  "use split='iid'")
            self.parts = dirichlet_split(self.y, cfg.clients, cfg.alpha, cfg.seed)
        self.model = fresh_model(task, cfg.seed)
        self.layout = Layout.of(self.model.state_dict())
        opts = {"per_row": cfg.per_row, "fraction": cfg.topk_fraction, "rank": cfg.rank}
        self.codec = make_codec(cfg.codec, self.layout, **opts)
        self.fit_cfg = FitConfig(steps=cfg.local_steps, lr=cfg.lr, optimizer=cfg.optimizer, momentum=cfg.momentum,
                                 grad_clip=None, seed=cfg.seed)

    # -- weights ----------------------------------------------------------------------------------------------
    def initial(self) -> torch.Tensor:
        return self.layout.flatten(self.model.state_dict())  # (numel,)

    def load(self, flat: torch.Tensor) -> nn.Module:
        """The shared model holding the weights `flat`."""
        with torch.no_grad():
            state = self.model.state_dict()
            for k, v in self.layout.unflatten(flat).items():
                state[k].copy_(v)
        return self.model

    def lr(self, rnd: int) -> float:
        """The clients' learning rate in round `rnd` (1-based)."""
        cfg = self.cfg
        if cfg.lr_schedule == "constant" or cfg.rounds == 1:
            return cfg.lr
        t = (rnd - 1) / (cfg.rounds - 1)
        return cfg.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * t)))

    # -- client -----------------------------------------------------------------------------------------------
    def batches(self, client: int, rnd: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """The client's data for round `rnd`, shuffled by (seed, round): clients holding the same data (split
        'same') see the same batches, which is what makes FedAvg of identical clients a centralized step."""
        idx = self.parts[client]
        g = torch.Generator().manual_seed(self.cfg.seed * 1_000_003 + rnd)
        idx = idx[torch.randperm(idx.numel(), generator=g)]
        b = self.cfg.batch_size
        return [(self.x[idx[i:i + b]], self.y[idx[i:i + b]]) for i in range(0, idx.numel(), b)]

    def client_update(self, client: int, rnd: int, global_flat: torch.Tensor,
                      residual: torch.Tensor | None) -> tuple[Any, torch.Tensor | None]:
        """Train `client` from the global weights for local_steps; returns (its reply RecordDict, new residual)."""
        model = self.load(global_flat)
        fit_cfg = dataclasses.replace(self.fit_cfg, lr=self.lr(rnd))
        losses = fit(model, self.batches(client, rnd), self.task.loss, fit_cfg,
                     description=f"client {client}")
        delta = self.layout.flatten(model.state_dict()) - global_flat  # (numel,)
        if self.codec.lossy and self.cfg.error_feedback:
            ef = ErrorFeedback(self.codec, residual)
            payload = ef.encode(delta)
            residual = ef.residual
        else:
            payload = self.codec.encode(delta)
        loss = sum(losses) / len(losses)
        return messages.reply(payload, int(self.parts[client].numel()), loss), residual

    # -- server -----------------------------------------------------------------------------------------------
    def aggregate(self, global_flat: torch.Tensor, replies: list[Any]) -> torch.Tensor:
        """FedAvg: decode each reply's update, average them weighted by num-examples (Flower's
        `aggregate_arrayrecords`), add the average to the global weights."""
        from flwr.app import Array, ArrayRecord, RecordDict
        from flwr.serverapp.strategy.strategy_utils import aggregate_arrayrecords

        decoded = [RecordDict({"arrays": ArrayRecord({"delta": Array(self.codec.decode(messages.payload_of(r))
                                                                          .numpy())}),
                               "metrics": r["metrics"]}) for r in replies]
        avg = aggregate_arrayrecords(decoded, messages.WEIGHT_KEY)["delta"].numpy()
        return global_flat + torch.from_numpy(avg.copy()).float()

    def evaluate(self, flat: torch.Tensor) -> dict[str, float]:
        model = self.load(flat).eval()
        return self.task.metrics(model)


class RoundBook:
    """Round bookkeeping: metrics rows (DIR/metrics.jsonl), per-round progress lines, and the state a resumed run
    continues from (DIR/federated-state.safetensors: global weights, error-feedback residuals, the round, the
    config), each round written atomically after its metrics row."""

    def __init__(self, cfg: FederatedConfig, out: Path | None, log: Callable[[str], None], primary: str,
                 model_key: str = ""):
        self.cfg, self.out, self.log, self.primary = cfg, out, log, primary
        self.model_key = model_key  # the task and the layout of its weights: a resume must match them
        self.rows: list[dict[str, Any]] = []
        self.cum_bytes = 0

    def load(self, resume: bool | None) -> tuple[int, torch.Tensor | None, dict[int, torch.Tensor]]:
        """(last completed round, its global weights, residuals); (0, None, {}) when starting fresh."""
        path = self.out / STATE_FILE if self.out is not None else None
        if path is None or not path.exists():
            if resume:
                raise ConfigError(f"nothing to resume: {path or 'no output folder'} does not exist; run without "
                                  "--resume to start")
            return 0, None, {}
        if resume is False:
            return 0, None, {}
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata()
            tensors = {k: f.get_tensor(k) for k in f.keys()}
        saved = json.loads(meta["config"])
        mine = self.cfg.to_dict()
        # "version": a run saved before configs wrote one resumes (the decoder reads it as version 1)
        diff = sorted(k for k in mine if k not in ("rounds", "engine", "version") and saved.get(k) != mine[k])
        if diff:
            shown = ", ".join(f"{k}={saved.get(k)!r} (now {mine[k]!r})" for k in diff)
            raise ConfigError(f"{self.out} holds a federated run with other settings: {shown}; use the same "
                              "settings to resume, or a new --out")
        if meta.get("model", "") != self.model_key:
            raise ConfigError(f"{self.out} holds a federated run of another task or model (task options differ); "
                              "use the same --task and --task-option to resume, or a new --out")
        rnd = int(meta["round"])
        self.rows = [r for r in _read_rows(self.out / METRICS_FILE) if r["round"] <= rnd]
        self.cum_bytes = self.rows[-1]["cum_bytes"] if self.rows else 0
        _write_rows(self.out / METRICS_FILE, self.rows)  # rows a killed run logged after its last state go
        residuals = {int(k.split(".", 1)[1]): v for k, v in tensors.items() if k.startswith("residual.")}
        return rnd, tensors["global"], residuals

    def record(self, rnd: int, metrics: dict[str, float], client_bytes: list[int], losses: list[float],
               seconds: float) -> dict[str, Any]:
        self.cum_bytes += sum(client_bytes)
        row = {"round": rnd, **metrics,
               "train_loss": (sum(losses) / len(losses)) if losses else None,
               "bytes_up": sum(client_bytes),
               "bytes_per_client": (sum(client_bytes) / len(client_bytes)) if client_bytes else 0,
               "cum_bytes": self.cum_bytes, "round_s": seconds}
        self.rows.append(row)
        if self.out is not None:
            with open(self.out / METRICS_FILE, "a") as f:
                f.write(json.dumps(row) + "\n")
        loss = f"  loss {row['train_loss']:.4f}" if row["train_loss"] is not None else ""
        self.log(f"round {rnd}/{self.cfg.rounds}  {self.primary} {metrics[self.primary]:.4f}{loss}  "
                 f"up {row['bytes_per_client'] / 1e3:.1f} kB/client  {seconds:.1f}s")
        return row

    def save_state(self, rnd: int, flat: torch.Tensor, residuals: dict[int, torch.Tensor]) -> None:
        if self.out is None:
            return
        from safetensors.torch import save_file

        tensors = {"global": flat.contiguous(), **{f"residual.{c}": r.contiguous() for c, r in residuals.items()}}
        meta = {"round": str(rnd), "config": json.dumps(self.cfg.to_dict()), "model": self.model_key}
        atomic_write(self.out / STATE_FILE, lambda tmp: save_file(tensors, tmp, metadata=meta))


def _read_rows(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    rows = []
    for line in path.read_text().splitlines():
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:  # a line cut short by a kill
            break
    return rows


def _write_rows(path: Path, rows: list[dict[str, Any]]) -> None:
    from condense.core.atomic import atomic_write_text

    atomic_write_text(path, "".join(json.dumps(r) + "\n" for r in rows))


def run_inprocess(fed: Federation, book: RoundBook, start: int, flat: torch.Tensor,
                  residuals: dict[int, torch.Tensor], stop_after: int | None = None) -> torch.Tensor:
    """Rounds start+1..cfg.rounds, driven here; every reply goes through Flower's serialization."""
    for rnd in range(start + 1, fed.cfg.rounds + 1):
        t0 = time.perf_counter()
        replies, sizes, losses = [], [], []
        for c in range(fed.cfg.clients):
            content, residuals_c = fed.client_update(c, rnd, flat, residuals.get(c))
            if residuals_c is not None:
                residuals[c] = residuals_c
            received, n = messages.wire(content)
            replies.append(received)
            sizes.append(n)
            losses.append(float(received["metrics"]["train-loss"]))
        flat = fed.aggregate(flat, replies)
        book.record(rnd, fed.evaluate(flat), sizes, losses, time.perf_counter() - t0)
        book.save_state(rnd, flat, residuals)
        if stop_after is not None and rnd >= stop_after:
            break
    return flat
