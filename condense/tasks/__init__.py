"""Built-in tasks and how a task is found from a name, a spec or a `module:factory` path.

Built-in tasks register a lazy factory path, so `condense tasks` lists them without importing torch models.

A task named by a file (an artifact's `condense.json`, a recipe, an export record) is rebuilt by `task_from_spec`:
built-in tasks only, unless the user trusts that file (`--trust-task`, `trust_task=True`), since a `module:factory`
spec imports that module and calls the factory with the file's options (like Hugging Face's `trust_remote_code`).
A task the user names directly (`get_task("my_mod:make_task")`, `--task my_mod:make_task`) is their own choice.
`hf:PATH` names a local Hugging Face model folder (condense.tasks.hf): built in, since the folder is loaded as data
(config.json + safetensors, never its own code), so a recorded `hf:` spec is rebuilt without trust.
"""
from __future__ import annotations

import importlib
import inspect
import os
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
TASKS.register("minilm-topics", TaskEntry("condense.tasks.minilm_topics:make_task",
               "pretrained MiniLM + new head: stdlib docstrings by package, few labels (transfer learning)"))
TASKS.register("digits", TaskEntry("condense.tasks.digits:make_task",
               "small CNN on scikit-learn's 8x8 digits (trained in seconds, cached); test accuracy"))
TASKS.register("tinygpt", TaskEntry("condense.tasks.tinygpt:make_task",
               "byte-level GPT with KV cache trained on stdlib sources (cached); bits per byte, tokens/s"))


# factories condense ships besides the registered tasks: rebuilt from a file without trust (fixed code, no user code)
SHIPPED_FACTORIES: frozenset[str] = frozenset({"condense.testing:tiny_task"})

TRUST_HINT = "pass --trust-task (trust_task=True in Python) if you trust it"
HF_PREFIX = "hf:"  # "hf:PATH": a local Hugging Face model folder, see condense.tasks.hf


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


def task_key(label: str) -> str:
    """What two task labels must share to name the same task: a built-in name and its factory path agree, and so
    do two paths of one `hf:` folder.

    Example:
        >>> task_key("digits") == task_key("condense.tasks.digits:make_task")
        True
    """
    if label.startswith(HF_PREFIX):
        return HF_PREFIX + os.path.realpath(os.path.expanduser(label[len(HF_PREFIX):]))
    return TASKS.get(label).factory if label in TASKS else label


def _hf_task(path: str, options: dict[str, Any]) -> Task:
    from condense.tasks.hf import make_task

    if "path" in options:
        raise CondenseError(f"the folder of task {HF_PREFIX}{path} is given in the name; drop the path option")
    check_options(make_task, {"path": path, **options}, what=f"task {HF_PREFIX}{path}")
    return make_task(path, **options)


def hf_task(path: str, **options: Any) -> Task:
    """The task for the Hugging Face model folder `path`; `options` as `condense.tasks.hf.make_task` takes them
    (kind, seq_len, ...). The same as `get_task("hf:" + path, **options)`.

    Example:
        >>> task = hf_task("runs/my-bert", eval_texts=32)  # doctest: +SKIP
        >>> task.primary_metric
        'embedding_cosine'
    """
    return get_task(HF_PREFIX + str(path), **options)


def get_task(spec: str | dict[str, Any] | Task, **options: Any) -> Task:
    """Find a task by built-in name ("minilm"), factory path ("my_mod:make_task"), a Hugging Face model folder
    ("hf:PATH"), saved spec dict, or pass-through.

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
    if spec.startswith(HF_PREFIX):
        return _hf_task(spec[len(HF_PREFIX):], options)
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


def task_from_spec(spec: Any, options: dict[str, Any] | None = None, *, trust: bool = False,
                   source: str = "this file") -> Task:
    """Rebuild the task a file names (`spec`: a saved spec dict or a name, `options`: extra factory options).

    Built-in tasks (and the factories condense ships) are rebuilt; a `module:factory` spec is user code and is
    imported only with `trust=True`, else a CondenseError names `--trust-task` / `trust_task=True`.
    `source` says in errors where the spec came from, e.g. "artifact runs/x/model".

    Example:
        >>> task_from_spec({"name": "digits", "options": {}}, source="artifact runs/d").name
        'digits'
        >>> task_from_spec({"factory": "os:system"}, source="artifact runs/d")
        Traceback (most recent call last):
        ...
        condense.errors.CondenseError: artifact runs/d names the task factory 'os:system', ...
    """
    if isinstance(spec, dict):
        name = spec.get("factory") or spec.get("name")
        saved = spec.get("options", {})
        if saved is None:
            saved = {}
    else:
        name, saved = spec, {}
    if not isinstance(name, str) or not name:
        raise CondenseError(f"{source} names no valid task (got {spec!r}); give the task yourself with --task NAME")
    if not isinstance(saved, dict) or not isinstance(options or {}, dict) \
            or not all(isinstance(k, str) for k in {**saved, **(options or {})}):
        raise CondenseError(f"{source} gives task options that are not a mapping of names to values; fix the "
                            "file or give the task yourself with --task NAME")
    if name.startswith(HF_PREFIX):
        pass  # a model folder is data: built in, no code imported
    elif ":" in name:
        if name not in SHIPPED_FACTORIES and not trust:
            raise CondenseError(f"{source} names the task factory {name!r}, code that condense imports and runs only "
                                f"when you trust it: {TRUST_HINT}, or give the task yourself with --task")
    elif name not in TASKS:
        TASKS.get(name)  # raises: unknown task, listing the built-in ones
    return get_task(name, **{**saved, **(options or {})})
