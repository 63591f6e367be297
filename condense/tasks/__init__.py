"""Built-in tasks and how a task is found from a name, a spec or a `module:factory` path.

Built-in tasks register a lazy factory path, so `condense tasks` lists them without importing torch models.
"""
from __future__ import annotations

import importlib
import inspect
from dataclasses import dataclass
from typing import Any

from condense.core.registry import Registry
from condense.core.task import Task
from condense.errors import CondenseError


@dataclass(frozen=True)
class TaskEntry:
    factory: str  # "module:function" returning a Task
    summary: str


TASKS: Registry[TaskEntry] = Registry("task")
TASKS.register("minilm", TaskEntry("condense.tasks.minilm:make_task",
               "all-MiniLM-L6-v2 sentence encoder (pretrained, offline); retrieval MRR@10 on stdlib docstrings"))
TASKS.register("digits", TaskEntry("condense.tasks.digits:make_task",
               "small CNN on scikit-learn's 8x8 digits (trained in seconds, cached); test accuracy"))
TASKS.register("tinygpt", TaskEntry("condense.tasks.tinygpt:make_task",
               "byte-level GPT with KV cache trained on stdlib sources (cached); bits per byte, tokens/s"))


def list_tasks() -> list[tuple[str, str]]:
    return [(name, entry.summary) for name, entry in TASKS.items()]


def _import_factory(path: str, *, what: str) -> Any:
    mod_name, _, attr = path.partition(":")
    if not mod_name or not attr:
        raise CondenseError(f"{what} {path!r} is not of the form module:function, e.g. my_tasks:make_task")
    try:
        mod = importlib.import_module(mod_name)
    except ModuleNotFoundError as e:
        raise CondenseError(f"cannot import module {mod_name!r} for {what} {path!r} ({e}); "
                            "check the module is on PYTHONPATH or run from its folder") from None
    fn = getattr(mod, attr, None)
    if fn is None or not callable(fn):
        raise CondenseError(f"module {mod_name!r} has no callable {attr!r} for {what} {path!r}; "
                            "point --task at a function that returns a condense.Task")
    return fn


def check_options(fn: Any, options: dict[str, Any], *, what: str) -> None:
    """Refuse options the factory `fn` does not take, naming the ones it does (before calling it)."""
    try:
        params = inspect.signature(fn).parameters
    except (TypeError, ValueError):  # no signature to check against (a builtin): let the call decide
        return
    if any(p.kind is p.VAR_KEYWORD for p in params.values()):
        return
    named = [n for n, p in params.items() if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]
    unknown = [k for k in options if k not in named]
    if unknown:
        valid = ", ".join(named) if named else "none"
        raise CondenseError(f"unknown option {unknown[0]!r} for {what}; valid options: {valid} "
                            "(e.g. --task-option NAME=VALUE)")
    missing = [n for n, p in params.items() if p.default is p.empty and n not in options
               and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]
    if missing:
        raise CondenseError(f"{what} needs the option {missing[0]!r}; pass --task-option {missing[0]}=VALUE")


def get_task(spec: str | dict[str, Any] | Task, **options: Any) -> Task:
    """Find a task by built-in name ("minilm"), factory path ("my_mod:make_task"), saved spec dict, or pass-through.

    Example:
        >>> from condense.tasks import get_task
        >>> get_task("digits").primary_metric
        'accuracy'
    """
    if isinstance(spec, Task):
        return spec
    if isinstance(spec, dict):
        options = {**spec.get("options", {}), **options}
        spec = spec.get("factory") or spec.get("name")
        if not spec:
            raise CondenseError("a saved task spec needs a 'name' or 'factory'; re-save the artifact with a task")
    if not isinstance(spec, str):
        raise CondenseError(f"a task is a name, a module:function path or a condense.Task, got {type(spec).__name__}")
    if ":" in spec:
        fn = _import_factory(spec, what="task factory")
        check_options(fn, options, what=f"task {spec!r}")
        task = fn(**options)
        if not isinstance(task, Task):
            raise CondenseError(f"task factory {spec!r} returned {type(task).__name__}, not a condense.Task")
        if task.spec is None:
            task.spec = {"factory": spec, "options": dict(options)}
        return task
    entry = TASKS.get(spec)
    fn = _import_factory(entry.factory, what="task factory")
    check_options(fn, options, what=f"task {spec!r}")
    task = fn(**options)
    task.spec = {"name": spec, "options": dict(options)}
    return task
