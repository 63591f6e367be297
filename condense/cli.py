"""The `condense` command: parses arguments, calls the library, prints. No logic of its own.

Errors the user can fix print one line naming the fix and exit 2; nothing prints a traceback unless --debug.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any, Callable

from condense.errors import CondenseError

EPILOG = """examples:
  condense tasks
  condense demo                                   # minilm: fp32 vs int8, report in runs/demo-minilm/
  condense measure --task digits --batch-sizes 1,256 --threads 2
  condense quantize --task digits --out runs/digits-int8
  condense measure --model runs/digits-int8 --json runs/digits-int8/measure.json
  condense prepare tinygpt                        # train and cache the built-in language model once
"""


# -- argument helpers -------------------------------------------------------------------------------------------
def _batch_sizes(text: str) -> tuple[int, ...]:
    try:
        vals = tuple(int(x) for x in text.split(",") if x.strip())
    except ValueError:
        vals = ()
    if not vals or any(v < 1 for v in vals):
        raise argparse.ArgumentTypeError(f"invalid batch sizes {text!r}: give positive integers separated by "
                                         "commas, e.g. --batch-sizes 1,32")
    return vals


def _positive_int(text: str) -> int:
    try:
        v = int(text)
    except ValueError:
        v = 0
    if v < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a positive integer")
    return v


def _task_options(pairs: list[str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for p in pairs or []:
        key, sep, val = p.partition("=")
        if not sep or not key:
            raise CondenseError(f"--task-option {p!r} must be KEY=VALUE, e.g. --task-option preset=tiny")
        try:
            out[key] = json.loads(val)
        except json.JSONDecodeError:
            out[key] = val
    return out


def _add_task_args(p: argparse.ArgumentParser, *, required: bool = True) -> None:
    p.add_argument("--task", required=required, metavar="NAME|MODULE:FACTORY",
                   help="a built-in task (see `condense tasks`) or module:function returning a condense.Task")
    p.add_argument("--task-option", action="append", default=[], metavar="KEY=VALUE",
                   help="option passed to the task factory (repeatable), e.g. preset=tiny")


def _add_measure_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--batch-sizes", type=_batch_sizes, default=None, metavar="B1,B2",
                   help="batch sizes to time (default: the task's, e.g. 1,32)")
    p.add_argument("--threads", type=_positive_int, default=None, help="torch threads while measuring")
    p.add_argument("--repeats", type=_positive_int, default=10, help="minimum timed runs per batch size")
    p.add_argument("--device", default="cpu", help="cpu or cuda")
    p.add_argument("--no-quality", action="store_true", help="skip evaluating the task's metrics")


def _measure_config(args: argparse.Namespace) -> Any:
    from condense.measurement.api import MeasureConfig

    return MeasureConfig(batch_sizes=args.batch_sizes, threads=args.threads, repeats=args.repeats,
                         device=args.device, quality=not args.no_quality)


def _task(args: argparse.Namespace) -> Any:
    from condense.tasks import get_task

    return get_task(args.task, **_task_options(args.task_option))


def _print(renderable: Any) -> None:
    from rich.console import Console

    Console().print(renderable)


# -- commands ---------------------------------------------------------------------------------------------------
def cmd_tasks(args: argparse.Namespace) -> int:
    from condense.tasks import list_tasks

    for name, summary in list_tasks():
        print(f"{name:10s} {summary}")
    return 0


def cmd_prepare(args: argparse.Namespace) -> int:
    from condense.core.paths import cache_dir
    from condense.tasks import get_task

    task = get_task(args.name, **_task_options(args.task_option))
    model = task.build_model()
    print(f"{task.name}: ready (cache: {cache_dir()})")
    if not args.no_quality:
        print(json.dumps(task.metrics(model), indent=2))
    return 0


def cmd_measure(args: argparse.Namespace) -> int:
    from condense.core.artifact import load, read_metadata
    from condense.measurement.api import measure
    from condense.measurement.table import comparison_table

    if args.model is None and args.task is None:
        raise CondenseError("give --task NAME to measure a task's model, or --model ARTIFACT to measure a saved one")
    if args.model is not None:
        meta = read_metadata(_artifact_dir(args.model))
        task = _task(args) if args.task else _task_from_meta(meta)
        model = load(_artifact_dir(args.model), task=task)
        label = Path(args.model).name
    else:
        task = _task(args)
        model = task.build_model()
        label = "fp32"
    m = measure(model, task, _measure_config(args), label=label)
    _print(comparison_table([m]))
    if args.json:
        from condense.core.atomic import atomic_write_json

        if args.json == "-":
            print(json.dumps(m.to_dict(), indent=2))
        else:
            atomic_write_json(args.json, m.to_dict())
            print(f"wrote {args.json}")
    return 0


def _artifact_dir(path: str) -> Path:
    """An artifact folder, or a run folder holding one in `model/`."""
    p = Path(path)
    if not (p / "condense.json").exists() and (p / "model" / "condense.json").exists():
        return p / "model"
    return p


def _task_from_meta(meta: dict) -> Any:
    from condense.tasks import get_task

    if not meta.get("task"):
        raise CondenseError("this artifact records no task; pass --task to say what to measure it on")
    return get_task(meta["task"])


def cmd_quantize(args: argparse.Namespace) -> int:
    from condense.quantize.dynamic import DynamicInt8Config

    cfg = DynamicInt8Config(per_channel=not args.per_tensor, include=tuple(args.include or ("*",)),
                            exclude=tuple(args.exclude or ()))
    return _run_two_step(args, cfg, "int8-dynamic")


def _run_two_step(args: argparse.Namespace, cfg: Any, label: str) -> int:
    from condense.measurement.table import comparison_table
    from condense.pipeline import Step, check_run_name, run_pipeline

    task = _task(args)
    out = Path(args.out)
    res = run_pipeline(task, [Step("fp32"), Step(label, cfg)], out, name=check_run_name(out.name),
                       measure_config=_measure_config(args))
    _print(comparison_table(res.measurements))
    for w in res.report["warnings"]:
        print(f"warning: {w}")
    print(f"artifact: {res.artifact}\nreport:   {out / 'report.html'}")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from condense.measurement.table import comparison_table
    from condense.pipeline import Step, check_run_name, run_pipeline
    from condense.quantize.dynamic import DynamicInt8Config

    name = check_run_name(args.name or f"demo-{args.task}")
    task = _task(args)
    out = Path(args.runs_dir) / name
    res = run_pipeline(task, [Step("fp32"), Step("int8-dynamic", DynamicInt8Config())], out, name=name,
                       measure_config=_measure_config(args))
    _print(comparison_table(res.measurements, title=f"condense demo: {task.name}, fp32 vs int8 (x86 int8 kernels)"))
    for w in res.report["warnings"]:
        print(f"warning: {w}")
    print(f"artifact: {res.artifact}\nreport:   {out / 'report.json'}\n          {out / 'report.html'}")
    return 0


def cmd_info(args: argparse.Namespace) -> int:
    from condense.core.artifact import artifact_size, read_metadata

    d = _artifact_dir(args.artifact)
    meta = read_metadata(d)
    print(f"artifact:   {d}\ntask:       {json.dumps(meta.get('task'))}\nmodel:      {meta.get('model_class')}\n"
          f"size:       {artifact_size(d):,} bytes\ncreated:    {meta.get('created')}")
    for i, t in enumerate(meta.get("transforms", []), 1):
        print(f"transform {i}: {json.dumps(t['config'])}")
    return 0


COMMANDS: dict[str, tuple[Callable[[argparse.Namespace], int], str]] = {
    "tasks": (cmd_tasks, "list the built-in tasks"),
    "prepare": (cmd_prepare, "build (train if needed) and cache a built-in task's model"),
    "measure": (cmd_measure, "measure a task's model or a saved artifact"),
    "quantize": (cmd_quantize, "quantize a task's model (dynamic int8) and save the artifact and report"),
    "demo": (cmd_demo, "the main job: measure fp32, quantize to int8, measure again, save, report"),
    "info": (cmd_info, "describe a saved artifact"),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="condense", description="Make neural networks cheaper to run, and prove "
                                     "it with measurements.", epilog=EPILOG,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--debug", action="store_true", help="show tracebacks")
    from condense import __version__

    parser.add_argument("--version", action="version", version=f"condense {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    subs = {name: sub.add_parser(name, help=help_, description=help_) for name, (_, help_) in COMMANDS.items()}
    for name, p in subs.items():
        p.set_defaults(func=COMMANDS[name][0])
        p.add_argument("--debug", action="store_true", help="show tracebacks", default=argparse.SUPPRESS)

    p = subs["prepare"]
    p.add_argument("name", help="built-in task name, e.g. tinygpt")
    p.add_argument("--task-option", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--no-quality", action="store_true", help="do not evaluate after preparing")

    p = subs["measure"]
    _add_task_args(p, required=False)
    p.add_argument("--model", metavar="ARTIFACT", help="a saved artifact folder (default: the task's own model)")
    p.add_argument("--json", metavar="PATH", help="also write the measurement as JSON ('-' for stdout)")
    _add_measure_args(p)

    p = subs["quantize"]
    _add_task_args(p)
    p.add_argument("--out", required=True, metavar="DIR", help="run folder: artifact in DIR/model, report beside it")
    p.add_argument("--per-tensor", action="store_true", help="one scale per tensor instead of per channel")
    p.add_argument("--include", action="append", metavar="PATTERN", help="module-name pattern to quantize")
    p.add_argument("--exclude", action="append", metavar="PATTERN", help="module-name pattern to keep in float")
    _add_measure_args(p)

    p = subs["demo"]
    p.add_argument("--task", default="minilm", help="built-in task (default: minilm)")
    p.add_argument("--task-option", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--name", default=None, help="run name (default: demo-TASK)")
    p.add_argument("--runs-dir", default="runs", help="folder for run outputs (default: runs)")
    _add_measure_args(p)

    p = subs["info"]
    p.add_argument("artifact", help="artifact or run folder")
    return parser


def main(argv: list[str] | None = None) -> int:
    import os

    if os.getcwd() not in sys.path:  # let --task my_module:factory find modules in the current folder
        sys.path.insert(0, os.getcwd())
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "command", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except CondenseError as e:
        print(f"condense: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("condense: interrupted", file=sys.stderr)
        return 130
    except Exception as e:  # an unexpected failure: one line, traceback on request
        if getattr(args, "debug", False):
            raise
        print(f"condense: internal error: {type(e).__name__}: {e} (rerun with --debug for the traceback)",
              file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
