"""Training metrics as JSONL (one object per line, appended and flushed) and TensorBoard event files.

JSONL is the record a script reads back; TensorBoard (`tensorboard --logdir OUT/tb`) is for looking. Only rank 0
writes, so a distributed run logs once. A run that starts at step S (0, or a resumed checkpoint's step) first drops
the rows after S that an earlier run left (a killed run logs steps past its last checkpoint, and the resumed run
replays them), so every step appears once.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from condense.core.atomic import atomic_write_bytes


class MetricsLog:
    """Append metric rows to `out/metrics.jsonl` and, when `tensorboard`, scalars to `out/tb/`.

    `start_step`: the step this run starts after; rows (and TensorBoard events) of later steps already there are
    dropped first, atomically (None: keep everything and append).

    Example:
        >>> import tempfile
        >>> d = tempfile.mkdtemp()
        >>> with MetricsLog(d, tensorboard=False) as log:
        ...     log.write({"step": 1, "loss": 2.5})
        >>> open(f"{d}/metrics.jsonl").read()
        '{"step": 1, "loss": 2.5}\\n'
    """

    def __init__(self, out: str | Path | None, *, tensorboard: bool = True, enabled: bool = True,
                 start_step: int | None = None):
        self._f = None
        self._tb = None
        if out is None or not enabled:
            return
        out = Path(out)
        out.mkdir(parents=True, exist_ok=True)
        if start_step is not None:
            truncate_jsonl(out / "metrics.jsonl", start_step)
        self._f = open(out / "metrics.jsonl", "a", encoding="utf-8")
        if tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            # purge_step: TensorBoard hides the events of steps >= it that an earlier run wrote
            purge = start_step + 1 if start_step is not None else None
            self._tb = SummaryWriter(str(out / "tb"), purge_step=purge)

    def write(self, row: dict[str, Any]) -> None:
        if self._f is not None:
            self._f.write(json.dumps(row) + "\n")
            self._f.flush()
        if self._tb is not None:
            step = int(row.get("step", 0))
            kind = row.get("kind", "train")
            for k, v in row.items():
                if k not in ("step", "kind") and isinstance(v, (int, float)) and not isinstance(v, bool):
                    self._tb.add_scalar(f"{kind}/{k}", v, step)

    def close(self) -> None:
        if self._f is not None:
            self._f.close()
            self._f = None
        if self._tb is not None:
            self._tb.close()
            self._tb = None

    def __enter__(self) -> "MetricsLog":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def truncate_jsonl(path: str | Path, step: int) -> None:
    """Keep only the rows of `path` up to `step` (and rows without a step), in one atomic rewrite; a line cut short
    by a kill is dropped. Kept lines are copied byte for byte.

    Example:
        >>> import tempfile
        >>> p = Path(tempfile.mkdtemp()) / "m.jsonl"
        >>> _ = p.write_text('{"step": 1}\\n{"step": 2}\\n{"step": 3')
        >>> truncate_jsonl(p, 1); p.read_text()
        '{"step": 1}\\n'
    """
    path = Path(path)
    if not path.exists():
        return
    keep = []
    for line in path.read_bytes().splitlines():  # bytes: kept lines are written back exactly as they were
        try:
            row = json.loads(line)
        except ValueError:  # a line cut short by a kill (or not UTF-8)
            continue
        s = row.get("step") if isinstance(row, dict) else None
        if not isinstance(s, (int, float)) or s <= step:
            keep.append(line + b"\n")
    atomic_write_bytes(path, b"".join(keep))


def read_jsonl(path: str | Path) -> list[dict[str, Any]]:
    """Every row of a metrics.jsonl file."""
    return [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]
