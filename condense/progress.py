"""Progress of long work: rich bars on a terminal; plain, flushed lines in a log.

Off a terminal (`condense run recipe.yaml > log 2>&1`, CI, a pipe) a bar shows nothing, and a run went silent for
an hour. So there every `steps(...)` writes a line when it starts and when it ends, and a progress line
(`done/total`, what it is on, elapsed, an estimate of what is left) at most every `LOG_EVERY_S` seconds: from the
loop's own `advance` / `start` calls, and from a heartbeat thread while one step takes longer than that. Lines go
to stderr with the time of day, flushed; in a torchrun job only rank 0 writes them.
"""
from __future__ import annotations

import os
import sys
import threading
import time
from contextlib import contextmanager
from typing import Iterator

from rich.console import Console
from rich.progress import BarColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

console = Console(stderr=True)
LOG_EVERY_S = 30.0  # at most one progress line per this many seconds, per `steps` (0: one per advance)


def enabled() -> bool:
    """Whether bars are drawn (stderr is a terminal); otherwise progress is written as log lines."""
    return sys.stderr.isatty()


def _main_rank() -> bool:
    return os.environ.get("RANK", "0") in ("", "0")


def log_line(message: str) -> None:
    """One plain line to stderr, stamped with the time of day and flushed (for logs, never wrapped)."""
    sys.stderr.write(f"[{time.strftime('%H:%M:%S')}] {message}\n")
    sys.stderr.flush()


def _duration(s: float) -> str:
    """`42 s`, `3 min 05 s`, `1 h 02 min`."""
    s = int(round(s))
    if s < 60:
        return f"{s} s"
    if s < 3600:
        return f"{s // 60} min {s % 60:02d} s"
    return f"{s // 3600} h {s % 3600 // 60:02d} min"


@contextmanager
def steps(description: str, total: int) -> Iterator["Stepper | LogStepper"]:
    """A bar of `total` named steps: `with steps("measuring", 4) as s: s.start("latency"); s.advance()`.

    On a terminal, a transient rich bar; elsewhere, log lines (see the module docstring).
    """
    if enabled():
        prog = Progress(SpinnerColumn(), TextColumn("[bold]{task.description}"), BarColumn(),
                        TextColumn("{task.completed}/{task.total}"), TextColumn("{task.fields[what]}"),
                        TimeElapsedColumn(), console=console, transient=True)
        with prog:
            tid = prog.add_task(description, total=total, what="")
            yield Stepper(prog, tid)
        return
    s = LogStepper(description, total, quiet=not _main_rank())
    s.begin()
    try:
        yield s
    except BaseException as e:
        s.end(failed=type(e).__name__)
        raise
    s.end()


class Stepper:
    """Drives a rich bar."""

    def __init__(self, prog: Progress, tid: int):
        self._prog, self._tid = prog, tid

    def start(self, what: str) -> None:
        self._prog.update(self._tid, what=what)

    def advance(self, n: int = 1) -> None:
        self._prog.advance(self._tid, n)


class LogStepper:
    """The same calls as `Stepper`, written as log lines: a start line, a progress line at most every
    `LOG_EVERY_S` seconds (a heartbeat thread writes them while no `advance` comes), an end line."""

    def __init__(self, description: str, total: int, *, quiet: bool = False):
        self.description, self.total, self.quiet = description, total, quiet
        self.done, self.what = 0, ""
        self._t0 = self._last = time.monotonic()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._beat: threading.Thread | None = None

    def begin(self) -> None:
        self._write(f"{self.description}: started ({self.total} steps)")
        if LOG_EVERY_S > 0 and not self.quiet:  # with 0 every advance writes a line: no heartbeat needed
            self._beat = threading.Thread(target=self._heartbeat, name="condense-progress", daemon=True)
            self._beat.start()

    def start(self, what: str) -> None:
        self.what = what
        self._maybe_write()

    def advance(self, n: int = 1) -> None:
        self.done += n
        self._maybe_write()

    def end(self, failed: str | None = None) -> None:
        self._stop.set()
        if self._beat is not None:
            self._beat.join()
        took = _duration(time.monotonic() - self._t0)
        if failed:
            self._write(f"{self.description}: stopped at {self.done}/{self.total} after {took} ({failed})")
        else:
            self._write(f"{self.description}: done ({self.done}/{self.total}) in {took}")

    def status(self) -> str:
        """`description: done/total (pct%), what, elapsed, ~left`."""
        elapsed = time.monotonic() - self._t0
        pct = f" ({100 * self.done / self.total:.0f}%)" if self.total else ""
        parts = [f"{self.description}: {self.done}/{self.total}{pct}"]
        if self.what:
            parts.append(self.what)
        parts.append(f"{_duration(elapsed)} elapsed")
        if 0 < self.done < self.total:
            parts.append(f"~{_duration(elapsed / self.done * (self.total - self.done))} left")
        return ", ".join(parts)

    def _maybe_write(self) -> None:
        if time.monotonic() - self._last >= LOG_EVERY_S:
            self._write(self.status())

    def _heartbeat(self) -> None:
        while not self._stop.wait(LOG_EVERY_S):
            if time.monotonic() - self._last >= LOG_EVERY_S:
                self._write(self.status())

    def _write(self, line: str) -> None:
        with self._lock:
            self._last = time.monotonic()
            if not self.quiet:
                log_line(line)


def note(message: str) -> None:
    """A one-line note to stderr (what is happening and roughly how long it takes): dim on a terminal, a
    time-stamped flushed line in a log."""
    if enabled():
        console.print(f"[dim]{message}[/dim]")
    else:
        log_line(message)
