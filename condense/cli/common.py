"""What every command shares: the parser class, argument types, `KEY=VALUE` options, building a config from
`--set`, the task and artifact to work on, and printing a run's results.

Imports of the library stay inside the functions: `condense --help` must not import torch backends.
"""
from __future__ import annotations

import argparse
import json
import math
from pathlib import Path
from typing import Any, Callable

from condense.errors import CondenseError


class Parser(argparse.ArgumentParser):
    """argparse with one-line errors: `condense: error: ...` naming the flag and where to read more, exit 2."""

    def error(self, message: str) -> Any:  # type: ignore[override]
        self.exit(2, f"condense: error: {message}; see `{self.prog} --help`\n")


def add_command(sub: Any, name: str, func: Callable[[argparse.Namespace], int], help_: str, *,
                epilog: str | None = None) -> argparse.ArgumentParser:
    """A subcommand `name` that runs `func(args)`; `epilog` (examples) is printed verbatim after its options."""
    p = sub.add_parser(name, help=help_, description=help_, epilog=epilog,
                       formatter_class=argparse.RawDescriptionHelpFormatter if epilog else argparse.HelpFormatter)
    p.set_defaults(func=func)
    p.add_argument("--debug", action="store_true", help="show tracebacks", default=argparse.SUPPRESS)
    return p


# -- argument types ---------------------------------------------------------------------------------------------
def integer(text: str, what: str) -> int:
    text = text.strip()
    if not (text.isascii() and text.lstrip("+-").isdigit()) or len(text) > 18:
        raise argparse.ArgumentTypeError(f"{text!r} is not {what}")
    return int(text)


def batch_sizes(text: str) -> tuple[int, ...]:
    from condense.core.task import MAX_BATCH_SIZE

    try:
        vals = tuple(integer(x, "an integer") for x in text.split(",") if x.strip())
    except argparse.ArgumentTypeError:
        vals = ()
    if not vals or any(v < 1 or v > MAX_BATCH_SIZE for v in vals):
        raise argparse.ArgumentTypeError(f"invalid batch sizes {text!r}: give integers from 1 to {MAX_BATCH_SIZE} "
                                         "separated by commas, e.g. --batch-sizes 1,32")
    return vals


def positive_int(text: str) -> int:
    v = integer(text, "a positive integer")
    if v < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a positive integer")
    return v


def non_negative_int(text: str) -> int:
    v = integer(text, "an integer >= 0")
    if v < 0:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer >= 0")
    return v


def port(text: str) -> int:
    v = integer(text, "a port number")
    if not 1 <= v <= 65535:
        raise argparse.ArgumentTypeError(f"port {text!r} is not in 1..65535")
    return v


def device(text: str) -> str:
    """'cpu' or 'cuda[:N]' naming a device this machine has; checked with torch before any work."""
    from condense.core.devices import check_device

    try:
        return check_device(text)
    except CondenseError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


# -- KEY=VALUE options and configs ------------------------------------------------------------------------------
def task_options(pairs: list[str], *, flag: str = "--task-option", example: str = "preset=tiny") -> dict[str, Any]:
    """`KEY=VALUE` pairs of `flag` (values read as JSON when they are JSON, else kept as text)."""
    out: dict[str, Any] = {}
    for p in pairs or []:
        key, sep, val = p.partition("=")
        key = key.strip()
        if not sep or not key:
            raise CondenseError(f"{flag} {p!r} must be KEY=VALUE, e.g. {flag} {example}")
        if not (key.isascii() and key.replace("_", "a").isalnum()):
            raise CondenseError(f"{flag} {p!r}: {key!r} is not a field name (letters, digits and _), e.g. "
                                f"{flag} {example}")
        try:
            out[key] = json.loads(val)
        except json.JSONDecodeError:
            out[key] = val
        except (ValueError, RecursionError):  # an integer of thousands of digits, or nesting thousands deep
            raise CondenseError(f"{flag} {key}: the value is too large or too deeply nested to read; give a "
                                "number below 1e308 or a shallow JSON value") from None
        check_numbers(out[key], f"{flag} {p}")
    return out


def check_numbers(value: Any, where: str) -> None:
    """Numbers typed on the command line must be finite and fit in 64 bits: `lr=Infinity`, `grad_clip=NaN` or
    `steps=1e30` are typos, never settings (a field that can be switched off takes null)."""
    stack = [value]
    while stack:
        v = stack.pop()
        if isinstance(v, dict):
            stack.extend(v.values())
        elif isinstance(v, list):
            stack.extend(v)
        elif isinstance(v, float) and not math.isfinite(v):
            raise CondenseError(f"{where}: {v} is not a finite number; give a finite value (or null to switch the "
                                "setting off where it allows)")
        elif isinstance(v, int) and not isinstance(v, bool) and abs(v) >= 2**63:
            raise CondenseError(f"{where}: {v} does not fit in 64 bits; give a smaller number")


def config_class(path: str) -> type:
    """The class at `path` ("module:Class")."""
    import importlib

    mod, _, name = path.partition(":")
    return getattr(importlib.import_module(mod), name)


def build_config_at(path: str, overrides: dict[str, Any]) -> Any:
    """Instantiate the config class at `path` ("module:Class") with CLI overrides, each value checked against the
    field's type first (as a recipe's are), errors naming the field, the expected type and the valid fields."""
    from condense.recipes.schema import build_config

    return build_config(config_class(path), overrides, where="--set")


def set_overrides(args: argparse.Namespace, *, example: str) -> dict[str, Any]:
    """`--set FIELD=VALUE` pairs plus `--include` / `--exclude` patterns, as config overrides."""
    out = task_options(args.set, flag="--set", example=example) if args.set else {}
    if getattr(args, "include", None):
        out["include"] = list(args.include)
    if getattr(args, "exclude", None):
        out["exclude"] = list(args.exclude)
    return out


# -- shared arguments -------------------------------------------------------------------------------------------
def add_task_args(p: argparse.ArgumentParser, *, required: bool = True) -> None:
    p.add_argument("--task", required=required, metavar="NAME|MODULE:FACTORY|hf:PATH",
                   help="a built-in task (see `condense tasks`), module:function returning a condense.Task, or "
                   "hf:PATH, a local Hugging Face model folder (config.json + safetensors)"
                   + ("" if required else " (with --model: default the artifact's task; it must match)"))
    p.add_argument("--task-option", action="append", default=[], metavar="KEY=VALUE",
                   help="option passed to the task factory (repeatable), e.g. preset=tiny")


def add_measure_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--batch-sizes", type=batch_sizes, default=None, metavar="B1,B2",
                   help="batch sizes to time (default: the task's, e.g. 1,32)")
    p.add_argument("--threads", type=positive_int, default=None, help="torch threads while measuring")
    p.add_argument("--repeats", type=positive_int, default=10, help="minimum timed runs per batch size")
    p.add_argument("--device", type=device, default="cpu", help="cpu or cuda[:N]")
    p.add_argument("--no-quality", action="store_true", help="skip evaluating the task's metrics")


def add_trust_arg(p: argparse.ArgumentParser, what: str) -> None:
    p.add_argument("--trust-task", action="store_true",
                   help=f"let {what} name a module:factory task: imports that module and runs the factory (only "
                   "for files you trust; without it only built-in tasks are rebuilt)")


def measure_config(args: argparse.Namespace) -> Any:
    from condense.measurement.api import MeasureConfig

    return MeasureConfig(batch_sizes=args.batch_sizes, threads=args.threads, repeats=args.repeats,
                         device=args.device, quality=not args.no_quality)


# -- the task and artifact to work on ---------------------------------------------------------------------------
def task_of(args: argparse.Namespace) -> Any:
    from condense.tasks import get_task

    return get_task(args.task, **task_options(args.task_option))


def artifact_dir(path: str) -> Path:
    """An artifact folder, or a run folder holding one in `model/`."""
    p = Path(path)
    if not (p / "condense.json").exists() and (p / "model" / "condense.json").exists():
        return p / "model"
    return p


def artifact_task(args: argparse.Namespace) -> tuple[Any, Path]:
    """The task to load `--model` with: `--task` when given (it must be the artifact's), else the recorded one."""
    from condense.core.artifact import read_metadata

    d = artifact_dir(args.model)
    meta = read_metadata(d)
    if not args.task:
        return _task_from_meta(meta, args, d), d
    _check_same_task(meta.get("task"), args.task)  # before building the task: that may take minutes
    return task_of(args), d


def _task_label(spec: Any) -> str | None:
    if isinstance(spec, dict):
        label = spec.get("name") or spec.get("factory")
        return label if isinstance(label, str) else None
    return None


def _check_same_task(recorded: Any, task: str) -> None:
    """An artifact loads only into the model of the task it was made from: say which when --task names another."""
    from condense.tasks import task_key  # a built-in name and its factory path are the same task; so are hf: paths

    want, got = _task_label(recorded), task
    if want and got and task_key(want) != task_key(got):
        raise CondenseError(f"this artifact is for task {want}; use --task {want} or omit --task")


def _task_from_meta(meta: dict, args: argparse.Namespace, folder: Path) -> Any:
    """The task an artifact records: built-in ones only, a `module:factory` only with --trust-task."""
    from condense.tasks import task_from_spec

    if not meta.get("task"):
        raise CondenseError("this artifact records no task; pass --task to say what to measure it on")
    return task_from_spec(meta["task"], trust=getattr(args, "trust_task", False), source=f"artifact {folder}")


# -- printing ---------------------------------------------------------------------------------------------------
def show(renderable: Any) -> None:
    """Print a rich renderable (a table) to stdout."""
    from rich.console import Console

    Console().print(renderable)


def print_run(res: Any, out: Path, *, title: str) -> None:
    """The comparison table, the run's warnings and where its artifact and reports landed."""
    from condense.measurement.table import comparison_table

    show(comparison_table(res.measurements, title=title))
    for w in res.report["warnings"]:
        print(f"warning: {w}")
    print(f"artifact: {res.artifact}\nreport:   {out / 'report.json'}\n          {out / 'report.html'}")
