"""Progress of long work: rich bars on a terminal; plain, flushed lines in a log.

Off a terminal (`condense run recipe.yaml > log 2>&1`, CI, a pipe) a bar shows nothing, and a run went silent for
an hour. So there every `steps(...)` and `activity(...)` writes a line when it starts and when it ends, and a
progress line (`done/total`, what it is on, elapsed, an estimate of what is left) when the log has been silent
for `LOG_EVERY_S` seconds: from the loop's own `advance` / `start` calls, and from a heartbeat thread while one
step takes longer than that (only the innermost running one writes it). Lines go to stderr unwrapped and flushed,
in the same words as on a terminal (scripts may read them: `trial 3: ...`); in a torchrun job only rank 0 writes
progress lines.
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
LOG_EVERY_S = 30.0  # a progress line when the log has been silent this long (0: one per advance)

_lock = threading.Lock()
_last_line = [time.monotonic()]  # when the last log line was written (any writer)
_running: list["LogStepper"] = []  # active log steppers, innermost last


def enabled() -> bool:
    """Whether bars are drawn (stderr is a terminal); otherwise progress is written as log lines."""
    return sys.stderr.isatty()


def _main_rank() -> bool:
    return os.environ.get("RANK", "0") in ("", "0")


def log_line(message: str) -> None:
    """One plain line to stderr, flushed (for logs: never wrapped to a terminal's width)."""
    with _lock:
        _last_line[0] = time.monotonic()
        sys.stderr.write(f"{message}\n")
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
    with _logged(LogStepper(description, total)) as s:
        yield s


@contextmanager
def activity(description: str) -> Iterator[None]:
    """One long piece of work without countable steps (a pipeline step): a note when it starts and when it ends;
    in a log also `N elapsed` lines while it runs and nothing else is written."""
    if enabled():
        t0 = time.monotonic()
        note(f"{description}: started")
        yield
        note(f"{description}: done in {_duration(time.monotonic() - t0)}")
        return
    with _logged(LogStepper(description, None)):
        yield


@contextmanager
def _logged(s: "LogStepper") -> Iterator["LogStepper"]:
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
    """The same calls as `Stepper`, written as log lines: a start line, progress lines when the log has been silent
    `LOG_EVERY_S` seconds (a heartbeat thread writes them while no `advance` comes), an end line. `total=None`:
    no step count (an `activity`)."""

    def __init__(self, description: str, total: int | None):
        self.description, self.total = description, total
        self.quiet = not _main_rank()
        self.done, self.what = 0, ""
        self._t0 = time.monotonic()
        self._stop = threading.Event()
        self._beat: threading.Thread | None = None

    def begin(self) -> None:
        self._write(f"{self.description}: started" + (f" ({self.total} steps)" if self.total is not None else ""))
        _running.append(self)
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
        if self in _running:
            _running.remove(self)
        took = _duration(time.monotonic() - self._t0)
        count = f" {self.done}/{self.total}" if self.total is not None else ""
        if failed:
            self._write(f"{self.description}: stopped{' at' + count if count else ''} after {took} ({failed})")
        else:
            self._write(f"{self.description}: done{' (' + count.strip() + ')' if count else ''} in {took}")

    def status(self) -> str:
        """`description: done/total (pct%), what, elapsed, ~left`."""
        elapsed = time.monotonic() - self._t0
        head, rest = self.description, [self.what] if self.what else []
        if self.total is not None:
            head += f": {self.done}/{self.total}" + (f" ({100 * self.done / self.total:.0f}%)" if self.total else "")
        rest.append(f"{_duration(elapsed)} elapsed")
        if self.total is not None and 0 < self.done < self.total:
            rest.append(f"~{_duration(elapsed / self.done * (self.total - self.done))} left")
        return head + (", " if self.total is not None else ": ") + ", ".join(rest)

    def _silent(self) -> bool:
        return time.monotonic() - _last_line[0] >= LOG_EVERY_S

    def _maybe_write(self) -> None:
        if self._silent():
            self._write(self.status())

    def _heartbeat(self) -> None:
        while not self._stop.wait(max(LOG_EVERY_S / 4, 0.01)):
            if self._silent() and _running and _running[-1] is self:
                self._write(self.status())

    def _write(self, line: str) -> None:
        if not self.quiet:
            log_line(line)


def note(message: str) -> None:
    """A one-line note to stderr (what is happening and roughly how long it takes): dim on a terminal, a plain
    flushed line in a log."""
    if enabled():
        console.print(f"[dim]{message}[/dim]")
    else:
        log_line(message)
