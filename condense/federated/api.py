"""`condense.federated(task, cfg, out_dir=...)`: FedAvg over simulated clients, with compressed client updates.

Flower (`flwr`) is the federated framework; condense brings its training engine and compression to the traffic.

Why two engines. Flower's simulation engine (`flwr.simulation.run_simulation`) starts Ray: measured here on 2
CPUs, a 2-round run of 4 clients with a trivial model took 20 s, nearly all of it Ray start-up, before any
training. Tests and the benchmark therefore use `engine="inprocess"` (the default): condense drives the rounds in
one process, but every client reply is a Flower `RecordDict` (an `ArrayRecord` of the encoded update and a
`MetricRecord`), serialized with Flower's protobuf serde (the bytes counted are those bytes) and parsed back
before the server decodes it, and the average is Flower's `aggregate_arrayrecords`, FedAvg's own. With
`engine="flower"` the same clients and server run as a Flower ClientApp and ServerApp (a FedAvg strategy) in
`run_simulation`; one test runs it.

Example:
    >>> import condense, tempfile
    >>> cfg = condense.FederatedConfig(clients=3, rounds=1, local_steps=2, split="iid")
    >>> res = condense.federated("digits", cfg, out_dir=tempfile.mkdtemp(), log=None)  # doctest: +SKIP
"""
from __future__ import annotations

import dataclasses
import json
import sys
from pathlib import Path
from typing import Any, Callable

from torch import nn

from condense.federated.config import FederatedConfig

__all__ = ["FederatedConfig", "FederatedResult", "federated"]


@dataclasses.dataclass
class FederatedResult:
    """The global model after the last round and one metrics row per round (round 0: before training)."""

    model: nn.Module
    rows: list[dict[str, Any]]
    out_dir: Path | None = None

    @property
    def final(self) -> dict[str, Any]:
        return self.rows[-1]


def _stderr(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def federated(task: Any, cfg: FederatedConfig = FederatedConfig(), *, out_dir: str | Path | None = None,
              resume: bool | None = None, log: Callable[[str], None] | None = _stderr,
              stop_after: int | None = None) -> FederatedResult:
    """Train `task`'s model from scratch with FedAvg over `cfg.clients` simulated clients for `cfg.rounds` rounds.

    Args:
        task: a Task or a built-in task name ("digits").
        out_dir: run folder: metrics.jsonl (a row per round), federated-state.safetensors (what a resumed run
            continues from), the final model as a condense artifact in DIR/model and federated.json.
        resume: None: continue from DIR's last completed round when DIR holds a run with the same settings
            (`rounds` may grow), else start; True: must continue; False: start over.
        log: called with one line per round (default: stderr); None for silence.
        stop_after: stop after this round (simulates an interruption; the state is kept).

    Returns:
        A FederatedResult (the model, the rows).
    """
    try:
        import flwr  # noqa: F401
    except ImportError:
        from condense.errors import CondenseError

        raise CondenseError("federated learning runs on Flower, which is not installed: pip install "
                            "'condense[federated]' (flwr[simulation])") from None
    from condense.core.artifact import save
    from condense.core.atomic import atomic_write_json
    from condense.core.outputs import check_output_dir, new_run_id
    from condense.federated.rounds import Federation, RoundBook, run_inprocess

    if isinstance(task, str):
        from condense.tasks import get_task

        task = get_task(task)
    out = Path(out_dir) if out_dir is not None else None
    if out is not None:
        check_output_dir(out, kind="federated")
    fed = Federation(task, cfg)
    key = json.dumps({"task": task.spec or task.name, "names": fed.layout.names, "shapes": fed.layout.shapes},
                     sort_keys=True, default=str)
    book = RoundBook(cfg, out, log or (lambda line: None), task.primary_metric, model_key=key)
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
    start, flat, residuals = book.load(resume)
    if flat is None:
        if out is not None and (out / "metrics.jsonl").exists():
            (out / "metrics.jsonl").unlink()
        flat = fed.initial()
        book.record(0, fed.evaluate(flat), [], [], 0.0)
        book.save_state(0, flat, residuals)
    elif start < cfg.rounds:
        book.log(f"resuming after round {start}")
    if start < cfg.rounds:
        if cfg.engine == "flower":
            from condense.federated.flower import run_flower

            flat = run_flower(fed, book, start, flat, residuals)
        else:
            flat = run_inprocess(fed, book, start, flat, residuals, stop_after=stop_after)
    model = fed.load(flat).eval()
    result = FederatedResult(model=model, rows=list(book.rows), out_dir=out)
    if out is not None and book.rows and book.rows[-1]["round"] >= cfg.rounds:
        run_id = new_run_id()
        save(model, out / "model", metadata={"federated": cfg.to_dict(), "run_id": run_id})
        atomic_write_json(out / "federated.json", {"run_id": run_id, "config": cfg.to_dict(), "task": task.name,
                                                   "final": book.rows[-1], "rounds": book.rows})
    return result
