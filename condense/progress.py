"""Progress display for long work: rich progress bars on a terminal, silent otherwise (logs, CI, tests)."""
from __future__ import annotations

import sys
from contextlib import contextmanager
from typing import Iterator

from rich.console import Console
from rich.progress import BarColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

console = Console(stderr=True)


def enabled() -> bool:
    return sys.stderr.isatty()


@contextmanager
def steps(description: str, total: int) -> Iterator["Stepper"]:
    """A bar of `total` named steps: `with steps("measuring", 4) as s: s.advance("latency")`."""
    prog = Progress(SpinnerColumn(), TextColumn("[bold]{task.description}"), BarColumn(),
                    TextColumn("{task.completed}/{task.total}"), TextColumn("{task.fields[what]}"),
                    TimeElapsedColumn(), console=console, transient=True, disable=not enabled())
    with prog:
        tid = prog.add_task(description, total=total, what="")
        yield Stepper(prog, tid)


class Stepper:
    def __init__(self, prog: Progress, tid: int):
        self._prog, self._tid = prog, tid

    def start(self, what: str) -> None:
        self._prog.update(self._tid, what=what)

    def advance(self, n: int = 1) -> None:
        self._prog.advance(self._tid, n)


def note(message: str) -> None:
    """A one-line note to stderr (what is happening and roughly how long it takes)."""
    console.print(f"[dim]{message}[/dim]")
