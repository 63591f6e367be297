"""Shared by benchmarks: machine header and replacing one named section of BENCHMARKS.md atomically."""
from __future__ import annotations

import datetime as _dt
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BENCHMARKS = ROOT / "BENCHMARKS.md"
sys.path.insert(0, str(ROOT))

from condense.core.atomic import atomic_write_text  # noqa: E402
from condense.measurement.machine import machine_info  # noqa: E402


def header(command: str, threads: int, notes: str = "") -> str:
    m = machine_info("cpu")
    versions = ", ".join(f"{k} {v}" for k, v in m["versions"].items())
    date = _dt.date.today().isoformat()
    return (f"Command: `{command}`  \nRun: {date}; {m['cpu']} ({m['cpu_count']} vCPUs), {threads} torch threads; "
            f"{versions}.  \n{notes}")


def write_section(name: str, body: str) -> None:
    """Replace the `<!-- bench:NAME -->` ... `<!-- /bench:NAME -->` section (appended if absent)."""
    start, end = f"<!-- bench:{name} -->", f"<!-- /bench:{name} -->"
    text = BENCHMARKS.read_text() if BENCHMARKS.exists() else "# Benchmarks\n\nEvery table below was written by " \
        "the command above it, measuring side by side in one process. Medians; ratios against the named baseline.\n"
    block = f"{start}\n{body.rstrip()}\n{end}"
    pattern = re.compile(re.escape(start) + ".*?" + re.escape(end), re.S)
    text = pattern.sub(lambda _: block, text) if pattern.search(text) else text.rstrip() + "\n\n" + block + "\n"
    atomic_write_text(BENCHMARKS, text)


def interleaved_p50(fns: dict, *, rounds: int = 15, warmup: int = 2) -> dict:
    """Median seconds per call of each fn, timed round-robin (A B C A B C ...) so that background load drifting
    during the run lands on every variant alike, rather than on whichever happened to be timed then."""
    import time

    import numpy as np

    for fn in fns.values():
        for _ in range(warmup):
            fn()
    times: dict = {k: [] for k in fns}
    for _ in range(rounds):
        for k, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            times[k].append(time.perf_counter() - t0)
    return {k: float(np.median(v)) for k, v in times.items()}


def interleaved_rounds_p50(fns: dict, *, rounds: int, **time_call_kw) -> dict:
    """`condense.measurement.timing.interleaved_p50` under inference_mode."""
    import torch

    from condense.measurement.timing import interleaved_p50

    with torch.inference_mode():
        return interleaved_p50(fns, rounds=rounds, **time_call_kw)


def load_average() -> str:
    import os

    return "load average %.2f / %.2f / %.2f" % os.getloadavg()
