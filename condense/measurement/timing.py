"""Wall-clock timing with warm-up and repeats; summaries are medians and percentiles, never single runs."""
from __future__ import annotations

import os
import time
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np
import torch


@dataclass(frozen=True)
class TimingStats:
    """Latency summary of repeated runs, in seconds, plus the average number of CPU cores busy while timing."""

    p50: float
    p95: float
    mean: float
    min: float
    n: int
    cpu_cores_busy: float

    def to_dict(self) -> dict[str, float]:
        return {"p50_s": self.p50, "p95_s": self.p95, "mean_s": self.mean, "min_s": self.min, "n": self.n,
                "cpu_cores_busy": self.cpu_cores_busy}


def _sync(device: torch.device | None) -> None:
    if device is not None and device.type == "cuda":
        torch.cuda.synchronize(device)


def time_call(fn: Callable[[], Any], *, warmup: int = 3, repeats: int = 20, min_time_s: float = 0.0,
              max_repeats: int = 1000, device: torch.device | None = None) -> TimingStats:
    """Run `fn` `warmup` times untimed, then at least `repeats` times (and at least `min_time_s` in total).

    Example:
        >>> s = time_call(lambda: sum(range(1000)), warmup=1, repeats=5)
        >>> s.n, s.p50 <= s.p95
        (5, True)
    """
    if repeats < 1 or warmup < 0:
        raise ValueError(f"repeats must be >= 1 and warmup >= 0, got repeats={repeats}, warmup={warmup}")
    for _ in range(warmup):
        fn()
    _sync(device)
    times: list[float] = []
    t_start = time.perf_counter()
    cpu0 = os.times()
    while len(times) < repeats or (time.perf_counter() - t_start < min_time_s and len(times) < max_repeats):
        t0 = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - t0)
    wall = time.perf_counter() - t_start
    cpu1 = os.times()
    cpu = (cpu1.user - cpu0.user) + (cpu1.system - cpu0.system)
    arr = np.asarray(times)
    return TimingStats(p50=float(np.median(arr)), p95=float(np.percentile(arr, 95)), mean=float(arr.mean()),
                       min=float(arr.min()), n=len(times), cpu_cores_busy=float(cpu / wall) if wall > 0 else 0.0)


def interleaved_p50(fns: dict[Any, Callable[[], Any]], *, rounds: int, **time_call_kw: Any) -> dict[Any, float]:
    """Median over `rounds` round-robin rounds (A B C A B C ...) of each fn's per-round `time_call` p50, in seconds.

    Load that drifts during the run then lands on every variant alike, not on whichever happened to be timed then.

    Example:
        >>> p50 = interleaved_p50({"a": lambda: sum(range(100))}, rounds=3, warmup=0, repeats=2)
        >>> list(p50), p50["a"] > 0
        (['a'], True)
    """
    samples: dict[Any, list[float]] = {k: [] for k in fns}
    for _ in range(rounds):
        for k, fn in fns.items():
            samples[k].append(time_call(fn, **time_call_kw).p50)
    return {k: float(np.median(v)) for k, v in samples.items()}
