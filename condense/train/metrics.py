"""Training metrics as JSONL (one object per line, appended and flushed) and TensorBoard event files.

JSONL is the record a script reads back; TensorBoard (`tensorboard --logdir OUT/tb`) is for looking. Only rank 0
writes, so a distributed run logs once.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any


class MetricsLog:
    """Append metric rows to `out/metrics.jsonl` and, when `tensorboard`, scalars to `out/tb/`.

    Example:
        >>> import tempfile
        >>> d = tempfile.mkdtemp()
        >>> with MetricsLog(d, tensorboard=False) as log:
        ...     log.write({"step": 1, "loss": 2.5})
        >>> open(f"{d}/metrics.jsonl").read()
        '{"step": 1, "loss": 2.5}\\n'
    """

    def __init__(self, out: str | Path | None, *, tensorboard: bool = True, enabled: bool = True):
        self._f = None
        self._tb = None
        if out is None or not enabled:
            return
        out = Path(out)
        out.mkdir(parents=True, exist_ok=True)
        self._f = open(out / "metrics.jsonl", "a", encoding="utf-8")
        if tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            self._tb = SummaryWriter(str(out / "tb"))

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


def read_jsonl(path: str | Path) -> list[dict[str, Any]]:
    """Every row of a metrics.jsonl file."""
    return [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]
