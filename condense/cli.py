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
  condense quantize --task digits --out runs/digits-int8            # int8, fastest backend measured
  condense quantize --task tinygpt --scheme weight-only --set method=gptq --set bits=4 --out runs/gpt-4bit
  condense prune --task digits --method structured --ratio 0.5 --out runs/digits-half
  condense quantize --task digits --model runs/digits-half --out runs/digits-half-int8
  condense measure --model runs/digits-int8 --json runs/digits-int8/measure.json
  condense distill --task tinygpt --set layers=2 --set temperature=1 --set fit='{"steps": 300}' --out runs/gpt-2l
  condense factorize --task tinygpt --set activation_aware=true --include 'blocks.*.mlp.*' --out runs/gpt-svd
  condense early-exit --task digits --set thresholds='[0.9, 0.99, 0.999]' --out runs/digits-exit
  condense prepare tinygpt                        # train and cache the built-in language model once
  condense train --task digits --steps 300 --set schedule=cosine --out runs/train-digits
  condense train --task tinygpt --task-option preset=tiny --nproc 2 --set comm_hook=powersgd --out runs/gpt-ddp
  condense search --task digits --budget 1% --trials 20 --out runs/digits-search
  condense search --task minilm --budget 1% --storage postgresql://u:pw@db/condense --study s1 --workers 2 --out runs/s1
  condense run recipes/digits.yaml --out runs/digits-recipe        # a YAML recipe: steps in order, measured
  condense export --model runs/digits-recipe --out runs/digits.onnx --int8   # ONNX file + parity check
  condense export --model runs/digits-recipe --format tflite --out runs/digits.tflite   # LiteRT file + parity
"""


# -- technique names on the command line -> config classes (imported lazily) -----------------------------------
QUANT_SCHEMES: dict[str, str] = {
    "int8": "condense.quantize.backends:Int8Config",          # int8 on the backend measured fastest
    "dynamic": "condense.quantize.dynamic:DynamicInt8Config",  # torch x86 dynamic int8
    "static": "condense.quantize.static:StaticInt8Config",     # torch x86 static int8, calibrated
    "ort": "condense.quantize.ort:OrtInt8Config",             # ONNX Runtime int8
    "qat": "condense.quantize.qat:QATConfig",                 # quantization-aware training -> int8
    "weight-only": "condense.quantize.weight_only:WeightOnlyConfig",  # RTN / GPTQ, packed 8/4/3/2-bit
    "mixed": "condense.quantize.sensitivity:MixedPrecisionConfig",  # keep the most sensitive layers precise
}
PRUNE_METHODS: dict[str, str] = {
    "unstructured": "condense.prune.unstructured:UnstructuredConfig",
    "nm": "condense.prune.nm:NMConfig",
    "gradual": "condense.prune.schedule:GradualPruneConfig",
    "structured": "condense.prune.structured:StructuredConfig",
    "layer-drop": "condense.prune.layers:LayerDropConfig",
}


# one config each; `--set FIELD=VALUE` reaches every field
TECHNIQUES: dict[str, str] = {
    "distill": "condense.distillation.api:DistillConfig",
    "factorize": "condense.factorize.api:FactorizeConfig",
    "early-exit": "condense.early_exit.api:EarlyExitConfig",
}


def _build_config(path: str, overrides: dict[str, Any]) -> Any:
    """Instantiate the config class at `path` ("module:Class") with CLI overrides, each value checked against the
    field's type first (as a recipe's are), errors naming the field, the expected type and the valid fields."""
    import importlib

    from condense.recipes.schema import build_config

    mod, _, name = path.partition(":")
    cls = getattr(importlib.import_module(mod), name)
    return build_config(cls, overrides, where="--set")


_SET_EXAMPLE = "bits=4"


def _overrides(args: argparse.Namespace) -> dict[str, Any]:
    out = _task_options(args.set, flag="--set", example=_SET_EXAMPLE) if args.set else {}
    if getattr(args, "include", None):
        out["include"] = list(args.include)
    if getattr(args, "exclude", None):
        out["exclude"] = list(args.exclude)
    return out


# -- argument helpers -------------------------------------------------------------------------------------------
class _Parser(argparse.ArgumentParser):
    """argparse with one-line errors: `condense: error: ...` naming the flag and where to read more, exit 2."""

    def error(self, message: str) -> Any:  # type: ignore[override]
        self.exit(2, f"condense: error: {message}; see `{self.prog} --help`\n")


def _int(text: str, what: str) -> int:
    text = text.strip()
    if not (text.isascii() and text.lstrip("+-").isdigit()) or len(text) > 18:
        raise argparse.ArgumentTypeError(f"{text!r} is not {what}")
    return int(text)


def _batch_sizes(text: str) -> tuple[int, ...]:
    from condense.core.task import MAX_BATCH_SIZE

    try:
        vals = tuple(_int(x, "an integer") for x in text.split(",") if x.strip())
    except argparse.ArgumentTypeError:
        vals = ()
    if not vals or any(v < 1 or v > MAX_BATCH_SIZE for v in vals):
        raise argparse.ArgumentTypeError(f"invalid batch sizes {text!r}: give integers from 1 to {MAX_BATCH_SIZE} "
                                         "separated by commas, e.g. --batch-sizes 1,32")
    return vals


def _positive_int(text: str) -> int:
    v = _int(text, "a positive integer")
    if v < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a positive integer")
    return v


def _non_negative_int(text: str) -> int:
    v = _int(text, "an integer >= 0")
    if v < 0:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer >= 0")
    return v


def _port(text: str) -> int:
    v = _int(text, "a port number")
    if not 1 <= v <= 65535:
        raise argparse.ArgumentTypeError(f"port {text!r} is not in 1..65535")
    return v


def _opset(text: str) -> int:
    from condense.export.onnx import OPSETS

    v = _int(text, "an opset number")
    if v not in OPSETS:
        raise argparse.ArgumentTypeError(f"opset {v} is not supported; use one of {', '.join(map(str, OPSETS))} "
                                         f"(LayerNormalization needs >= 17)")
    return v


def _device(text: str) -> str:
    """'cpu' or 'cuda[:N]' naming a device this machine has; checked with torch before any work."""
    from condense.core.devices import check_device

    try:
        return check_device(text)
    except CondenseError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def _task_options(pairs: list[str], *, flag: str = "--task-option", example: str = "preset=tiny") -> dict[str, Any]:
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
        _check_numbers(out[key], f"{flag} {p}")
    return out


def _check_numbers(value: Any, where: str) -> None:
    """Numbers typed on the command line must be finite and fit in 64 bits: `lr=Infinity`, `grad_clip=NaN` or
    `steps=1e30` are typos, never settings (a field that can be switched off takes null)."""
    import math

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


def _add_task_args(p: argparse.ArgumentParser, *, required: bool = True) -> None:
    p.add_argument("--task", required=required, metavar="NAME|MODULE:FACTORY|hf:PATH",
                   help="a built-in task (see `condense tasks`), module:function returning a condense.Task, or "
                   "hf:PATH, a local Hugging Face model folder (config.json + safetensors)"
                   + ("" if required else " (with --model: default the artifact's task; it must match)"))
    p.add_argument("--task-option", action="append", default=[], metavar="KEY=VALUE",
                   help="option passed to the task factory (repeatable), e.g. preset=tiny")


def _add_measure_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--batch-sizes", type=_batch_sizes, default=None, metavar="B1,B2",
                   help="batch sizes to time (default: the task's, e.g. 1,32)")
    p.add_argument("--threads", type=_positive_int, default=None, help="torch threads while measuring")
    p.add_argument("--repeats", type=_positive_int, default=10, help="minimum timed runs per batch size")
    p.add_argument("--device", type=_device, default="cpu", help="cpu or cuda[:N]")
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
    from condense.core.artifact import load
    from condense.measurement.api import measure
    from condense.measurement.table import comparison_table

    if args.model is None and args.task is None:
        raise CondenseError("give --task NAME to measure a task's model, or --model ARTIFACT to measure a saved one")
    if args.json and args.json != "-":
        from condense.core.outputs import check_output_file

        check_output_file(args.json)
    if args.model is not None:
        task, d = _artifact_task(args)
        model = load(d, task=task)
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


def _artifact_task(args: argparse.Namespace) -> tuple[Any, Path]:
    """The task to load `--model` with: `--task` when given (it must be the artifact's), else the recorded one."""
    from condense.core.artifact import read_metadata

    d = _artifact_dir(args.model)
    meta = read_metadata(d)
    if not args.task:
        return _task_from_meta(meta, args, d), d
    _check_same_task(meta.get("task"), args.task)  # before building the task: that may take minutes
    return _task(args), d


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


def _add_trust_arg(p: argparse.ArgumentParser, what: str) -> None:
    p.add_argument("--trust-task", action="store_true",
                   help=f"let {what} name a module:factory task: imports that module and runs the factory (only "
                   "for files you trust; without it only built-in tasks are rebuilt)")


def cmd_quantize(args: argparse.Namespace) -> int:
    cfg = _build_config(QUANT_SCHEMES[args.scheme], _overrides(args))
    return _run_two_step(args, cfg, args.scheme)


def cmd_prune(args: argparse.Namespace) -> int:
    over = _overrides(args)
    if args.sparsity is not None:
        over["sparsity" if args.method != "gradual" else "final_sparsity"] = args.sparsity
    if args.ratio is not None:
        over["ratio"] = args.ratio
    cfg = _build_config(PRUNE_METHODS[args.method], over)
    return _run_two_step(args, cfg, args.method)


def cmd_technique(args: argparse.Namespace) -> int:
    """distill / factorize / early-exit: one config, built from --set (and --include/--exclude)."""
    cfg = _build_config(TECHNIQUES[args.command], _overrides(args))
    return _run_two_step(args, cfg, args.command)


def _run_two_step(args: argparse.Namespace, cfg: Any, label: str) -> int:
    from condense.core.outputs import check_output_dir
    from condense.measurement.table import comparison_table
    from condense.pipeline import Step, check_run_name, run_pipeline

    out = check_output_dir(args.out)  # before any work
    base_model, base_label = None, "fp32"
    if getattr(args, "model", None):
        from condense.core.artifact import load

        task, d = _artifact_task(args)
        base_model, base_label = load(d, task=task), Path(args.model).name
    elif args.task is None:
        raise CondenseError(f"give --task NAME (see `condense tasks`), or --model ARTIFACT to {args.command} a saved "
                            "model")
    else:
        task = _task(args)
    res = run_pipeline(task, [Step(base_label), Step(label, cfg)], out, name=check_run_name(out.name),
                       measure_config=_measure_config(args), base_model=base_model)
    _print(comparison_table(res.measurements))
    for w in res.report["warnings"]:
        print(f"warning: {w}")
    _print_exit_curve(res.artifact, out)
    print(f"artifact: {res.artifact}\nreport:   {out / 'report.html'}")
    return 0


def _print_exit_curve(artifact: Any, out: Path) -> None:
    """After an early-exit sweep: print the quality vs latency curve recorded in the artifact and the chosen
    point, and write it beside the report (early-exit-curve.json and .svg)."""
    if artifact is None:
        return
    from condense.core.artifact import read_metadata
    from condense.core.atomic import atomic_write_json, atomic_write_text

    for t in read_metadata(artifact).get("transforms", []):
        curve = t.get("details", {}).get("curve")
        if not curve:
            continue
        from condense.early_exit.sweep import curve_svg

        atomic_write_json(out / "early-exit-curve.json", curve)
        atomic_write_text(out / "early-exit-curve.svg", curve_svg(curve))
        m, base = curve["metric"], curve["baseline"]
        print(f"early exit: {m} and mean latency per sample (batch 1) by threshold")
        print(f"  no early exit: {m} {base['quality'][m]:.4f}, {base['latency_s'] * 1e6:.0f} us")
        for p in curve["points"]:
            mark = "  <- chosen" if curve["chosen"] and p["threshold"] == curve["chosen"]["threshold"] else ""
            print(f"  threshold {p['threshold']:<6g}: {m} {p['quality'][m]:.4f}, {p['latency_s'] * 1e6:.0f} us "
                  f"({p['speedup']:.2f}x), exits {[round(f, 2) for f in p['exit_fractions']]}{mark}")


def _print_run(res: Any, out: Path, *, title: str) -> None:
    """The comparison table, the run's warnings and where its artifact and reports landed."""
    from condense.measurement.table import comparison_table

    _print(comparison_table(res.measurements, title=title))
    for w in res.report["warnings"]:
        print(f"warning: {w}")
    print(f"artifact: {res.artifact}\nreport:   {out / 'report.json'}\n          {out / 'report.html'}")


def cmd_demo(args: argparse.Namespace) -> int:
    from condense.core.outputs import check_output_dir
    from condense.pipeline import Step, check_run_name, run_pipeline
    from condense.quantize.dynamic import DynamicInt8Config

    name = check_run_name(args.name or f"demo-{args.task}")
    out = check_output_dir(Path(args.runs_dir) / name)  # before any work
    task = _task(args)
    res = run_pipeline(task, [Step("fp32"), Step("int8-dynamic", DynamicInt8Config())], out, name=name,
                       measure_config=_measure_config(args))
    _print_run(res, out, title=f"condense demo: {task.name}, fp32 vs int8 (x86 int8 kernels)")
    return 0


def cmd_info(args: argparse.Namespace) -> int:
    from condense.core.artifact import artifact_size, read_metadata
    from condense.core.outputs import run_mismatch

    d = _artifact_dir(args.artifact)
    meta = read_metadata(d)
    print(f"artifact:   {d}\ntask:       {json.dumps(meta.get('task'))}\nmodel:      {meta.get('model_class')}\n"
          f"size:       {artifact_size(d):,} bytes\ncreated:    {meta.get('created')}")
    if (meta.get("metadata") or {}).get("run_id"):
        print(f"run:        {meta['metadata']['run_id']}")
    for i, t in enumerate(meta.get("transforms", []), 1):
        print(f"transform {i}: {json.dumps(t['config'])}")
    mismatch = run_mismatch(d.parent) if d.name == "model" else None
    if mismatch:
        raise CondenseError(mismatch)
    return 0


def cmd_search(args: argparse.Namespace) -> int:
    from condense.searching.api import BudgetNotMet, search

    from condense.searching.config import parse_budget

    over: dict[str, Any] = {"budget": parse_budget(args.budget), "trials": args.trials,
                            "batch_size": args.batch_size}
    if args.knobs is not None:  # --knobs '' is an empty list (refused), not the default
        over["knobs"] = [k.strip() for k in args.knobs.split(",") if k.strip()]
    if args.threads:
        over["threads"] = args.threads
    over.update(_task_options(args.set, flag="--set", example="recovery_steps=200") if args.set else {})
    cfg = _build_config("condense.searching.config:SearchConfig", over)
    from condense.core.outputs import check_output_dir

    out = check_output_dir(args.out, kind="search")  # before any work
    task = _task(args)
    from condense.searching.trials import install_stop_handler

    restore = install_stop_handler()  # Ctrl-C or `kill` end the running trial cleanly (marked failed): resumable
    try:
        res = search(task, cfg, storage=args.storage, study_name=args.study, out_dir=out, workers=args.workers)
    except BudgetNotMet:
        print(f"report:   {out / 'report.html'}")
        raise
    finally:
        restore()
    print(res.message)
    sp = ", ".join(f"batch {b}: {v:.2f}x" for b, v in res.final.get("speedup", {}).items())
    print(f"re-measured side by side with the baseline: {sp}\nPareto frontier: trials {res.pareto}")
    print(f"artifact: {res.artifact}\nreport:   {out / 'report.html'}")
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    import dataclasses

    from condense.core.outputs import check_output_dir
    from condense.recipes import load_recipe, parse_overrides, run_recipe

    recipe = load_recipe(args.recipe, overrides=parse_overrides(args.set))  # validated whole before any work
    check_output_dir(args.out)
    task = None
    if args.task or args.task_option:
        from condense.tasks import get_task

        if args.task:
            opts = recipe.task_options if args.task == recipe.task else {}
            task = get_task(args.task, **{**opts, **_task_options(args.task_option)})
        elif recipe.task is None:
            raise CondenseError("--task-option needs a task: pass --task NAME or name one in the recipe")
        else:
            from condense.tasks import task_from_spec

            task = task_from_spec(recipe.task, {**recipe.task_options, **_task_options(args.task_option)},
                                  trust=args.trust_task, source=f"recipe {args.recipe}")
    over = {k: v for k, v in (("batch_sizes", args.batch_sizes), ("threads", args.threads),
                              ("repeats", args.repeats), ("device", args.device)) if v is not None}
    if args.no_quality:
        over["quality"] = False
    mcfg = dataclasses.replace(recipe.measure, **over)
    out = Path(args.out)
    res = run_recipe(recipe, out, task=task, measure_config=mcfg, name=out.name, trust_task=args.trust_task)
    _print_run(res, out, title=f"recipe {recipe.name}")
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from condense.core.artifact import load
    from condense.export.files import check_export_target, check_format, export_model

    suffix = check_format(args.format)
    if args.int8_mode and not args.int8:
        raise CondenseError("--int8-mode needs --int8")
    check_export_target(args.out, suffix=suffix)  # before any work
    task, d = _artifact_task(args)
    model = load(d, task=task)
    rec = export_model(model, task, args.out, int8=args.int8, opset=args.opset, format=args.format,
                       int8_mode=args.int8_mode)
    if args.format == "tflite":
        return _print_tflite(rec)
    p = rec["parity"]
    kind = "int8" if rec["int8"] else "fp32"
    print(f"wrote {rec['path']} ({kind}, {rec['bytes'] / 2**20:.2f} MB, opset {rec['opset']}); record: "
          f"{Path(rec['path']).with_suffix('.json')}")
    print(f"parity vs {rec['parity_against']} (ONNX Runtime, batch sizes 2 and 1): max abs diff "
          f"{p['max_abs_diff']:.3g}, cosine {p['cosine']:.6f} (min {p['min_cosine']:.6f})")
    if rec["recorded_parity_vs_torch"]:
        r = rec["recorded_parity_vs_torch"]
        print(f"parity vs PyTorch recorded when the model was converted: max abs diff {r['max_abs_diff']:.3g}, "
              f"cosine {r['cosine']:.6f}")
    return 0


def _print_tflite(rec: dict[str, Any]) -> int:
    p, q = rec["parity"], rec["quality"]
    kind = {None: "fp32", "full": "int8 full-integer", "dynamic": "int8 weights"}[rec["int8"]]
    print(f"wrote {rec['path']} ({kind}, {rec['bytes'] / 2**20:.2f} MB); record: "
          f"{Path(rec['path']).with_suffix('.json')}")
    print(f"parity vs {rec['parity_against']} (LiteRT interpreter, batch sizes 2 and 1): max abs diff "
          f"{p['max_abs_diff']:.3g}, cosine {p['cosine']:.6f} (min {p['min_cosine']:.6f})")
    if q:
        print("quality: " + ", ".join(f"{k} {q['source'][k]:.4f} -> {v:.4f} (LiteRT)" for k, v in q["litert"].items()
                                      if k in q["source"]))
    return 0


COMMANDS: dict[str, tuple[Callable[[argparse.Namespace], int], str]] = {
    "tasks": (cmd_tasks, "list the built-in tasks"),
    "prepare": (cmd_prepare, "build (train if needed) and cache a built-in task's model"),
    "measure": (cmd_measure, "measure a task's model or a saved artifact"),
    "quantize": (cmd_quantize, "quantize a task's model (or an artifact) and save the artifact and report"),
    "prune": (cmd_prune, "prune a task's model (or an artifact) and save the artifact and report"),
    "distill": (cmd_technique, "distil a task's model (the teacher) into a smaller student; save artifact and report"),
    "factorize": (cmd_technique, "factorize Linear/Conv2d layers by truncated SVD; save artifact and report"),
    "early-exit": (cmd_technique, "attach and train early-exit heads, sweep thresholds; save artifact and report"),
    "demo": (cmd_demo, "the main job: measure fp32, quantize to int8, measure again, save, report"),
    "info": (cmd_info, "describe a saved artifact"),
    "search": (cmd_search, "search compression steps for the fastest model within a quality budget (optuna)"),
    "run": (cmd_run, "run a YAML recipe: every step in order, measured after each; artifact and report"),
    "export": (cmd_export, "write an artifact as an ONNX or LiteRT (.tflite) file, fp32 or int8, with a parity check"),
}


TRAIN_EPILOG = """examples:
  condense train --task digits --steps 300 --set schedule=cosine --set warmup_steps=20 --out runs/train-digits
  condense train --task digits --set eval_every=20 --set target=0.97 --set checkpoint_every=50 --out runs/d
  condense train --task digits --resume runs/d --out runs/d            # continue from the latest checkpoint
  condense train --task tinygpt --task-option preset=tiny --nproc 2 --set comm_hook=powersgd --out runs/g
  condense train --task tinygpt --task-option preset=tiny --nproc 2 --set strategy=fsdp --out runs/g-fsdp
  condense train --task tinygpt --task-option preset=tiny --nproc 2 --set strategy=pipeline --out runs/pp
  # two nodes (run on each, --node-rank 0 / 1; the address of node 0):
  condense train --task digits --nproc 1 --nnodes 2 --node-rank 0 --master-addr 10.0.0.1 --master-port 29500 \\
      --out runs/mn
Any TrainConfig field: --set FIELD=VALUE (optimizer, lr, schedule, batch_schedule, precision, grad_accum, ...).
Outputs: OUT/metrics.jsonl, OUT/tb (tensorboard --logdir OUT/tb), OUT/checkpoints, OUT/model, OUT/train.json.
"""


def _train_worker_args(args: argparse.Namespace) -> list[str]:
    out = ["--task", args.task, "--out", args.out, "--device", args.device]
    for o in args.task_option:
        out += ["--task-option", o]
    for o in args.set:
        out += ["--set", o]
    if args.steps is not None:
        out += ["--steps", str(args.steps)]
    if args.resume:
        out += ["--resume", args.resume]
    if args.finetune:
        out.append("--finetune")
    return out


def cmd_train(args: argparse.Namespace) -> int:
    from condense.core.outputs import check_output_dir
    from condense.errors import ConfigError

    check_output_dir(args.out, kind="train")  # before any work (torchrun workers: every state they leave passes)
    overrides = _task_options(args.set, flag="--set", example="lr=3e-3") if args.set else {}
    if args.steps is not None:
        overrides["steps"] = args.steps
    cfg = _build_config("condense.train.api:TrainConfig", overrides)
    if args.node_rank >= args.nnodes:
        raise CondenseError(f"--node-rank {args.node_rank} is not below --nnodes {args.nnodes}; number the nodes "
                            f"0..{args.nnodes - 1}")
    if args.nproc is not None or args.nnodes > 1:
        from condense.train.distributed.launch import launch

        _task(args)  # an unknown task fails here, once, not in every worker
        code = launch(args.nproc or 1, _train_worker_args(args), device=args.device, nnodes=args.nnodes,
                      node_rank=args.node_rank, master_addr=args.master_addr, master_port=args.master_port)
        if code:
            raise CondenseError(f"a training process failed (exit code {code}); its message is above")
        return 0
    from condense.train.api import train

    task = _task(args)
    if task.train_data is None or task.loss is None:
        raise ConfigError(f"task {task.name!r} has no training data or loss; `condense train` needs a task with "
                          "train_data and loss (digits, tinygpt)")
    _, result = train(task, cfg, out=args.out, resume=args.resume, device=args.device,
                      from_scratch=not args.finetune)
    import os

    if int(os.environ.get("RANK", 0)) == 0:
        s = result.summary()
        keep = ("steps", "final_loss", "train_s", "samples_per_s", "tokens_per_s", "peak_memory_mb", "precision",
                "time_to_target_s", "step_to_target", "stopped_early", "bytes_per_step", "world_size")
        print(json.dumps({k: s[k] for k in keep if s.get(k) is not None}, indent=2))
        if result.evals:
            print(json.dumps(result.evals[-1]))
        print(f"outputs in {args.out}")
    return 0


COMMANDS["train"] = (cmd_train, "train a task's model: mixed precision, schedules, checkpoints, DDP/FSDP (torchrun)")


def cmd_federated(args: argparse.Namespace) -> int:
    from condense.federated.api import federated
    from condense.federated.cli import overrides, table

    base = _task_options(args.set, flag="--set", example="momentum=0") if args.set else {}
    cfg = _build_config("condense.federated.config:FederatedConfig", overrides(args, base))
    from condense.core.outputs import check_output_dir

    check_output_dir(args.out, kind="federated")  # before the task is built, as every command does
    task = _task(args)
    res = federated(task, cfg, out_dir=args.out, resume=True if args.resume else None)
    _print(table(res.rows, task.primary_metric))
    print(f"outputs in {args.out}")
    return 0


COMMANDS["federated"] = (cmd_federated, "train federated (Flower, FedAvg) over simulated clients, with compressed "
                         "client updates")


def _list_config_fields(p: argparse.ArgumentParser, configs: dict[str, str]) -> None:
    """`p --help` ends with each config's fields, types and defaults (imported only when help is asked for)."""
    base = p.format_help

    def format_help() -> str:
        import importlib

        from condense.core.config_help import fields_text

        parts = [base()]
        for label, path in configs.items():
            mod, _, name = path.partition(":")
            parts.append(f"\n{label}: {name} fields (--set FIELD=VALUE)\n"
                         f"{fields_text(getattr(importlib.import_module(mod), name))}\n")
        return "".join(parts)

    p.format_help = format_help  # type: ignore[method-assign]


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="condense", description="Make neural networks cheaper to run, and prove "
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
    _add_trust_arg(p, "the artifact (--model)")
    _add_measure_args(p)

    for name, choices, default, flag in (("quantize", QUANT_SCHEMES, "int8", "--scheme"),
                                         ("prune", PRUNE_METHODS, "unstructured", "--method")):
        p = subs[name]
        _add_task_args(p, required=False)
        p.add_argument(flag, choices=sorted(choices), default=default,
                       help=f"which technique (default: {default})")
        p.add_argument("--model", metavar="ARTIFACT", help="start from a saved artifact instead of the task's model")
        _add_trust_arg(p, "the artifact (--model)")
        p.add_argument("--out", required=True, metavar="DIR",
                       help="run folder: artifact in DIR/model, report.json and report.html beside it")
        example = "--set bits=4 --set group_size=32" if name == "quantize" else "--set scope=global"
        p.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE",
                       help=f"any field of the technique's config (repeatable; listed below), e.g. {example}")
        _list_config_fields(p, {f"{flag} {k}": v for k, v in choices.items()})
        p.add_argument("--include", action="append", metavar="PATTERN", help="module-name pattern to include")
        p.add_argument("--exclude", action="append", metavar="PATTERN", help="module-name pattern to leave alone")
        _add_measure_args(p)
    subs["prune"].add_argument("--sparsity", type=float, help="fraction of weights to remove, in [0, 1)")
    subs["prune"].add_argument("--ratio", type=float, help="structured: fraction of channels/heads to remove")

    for name in TECHNIQUES:
        p = subs[name]
        _add_task_args(p, required=False)
        p.add_argument("--model", metavar="ARTIFACT", help="start from a saved artifact instead of the task's model")
        _add_trust_arg(p, "the artifact (--model)")
        p.add_argument("--out", required=True, metavar="DIR",
                       help="run folder: artifact in DIR/model, report.json and report.html beside it")
        p.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE",
                       help="any field of the config (repeatable; listed below), e.g. --set layers=3 "
                       "--set fit='{\"steps\": 200}'")
        _list_config_fields(p, {name: TECHNIQUES[name]})
        if name == "factorize":
            p.add_argument("--include", action="append", metavar="PATTERN", help="module-name pattern to include")
            p.add_argument("--exclude", action="append", metavar="PATTERN", help="module-name pattern to leave alone")
        _add_measure_args(p)

    p = subs["demo"]
    p.add_argument("--task", default="minilm", help="built-in task (default: minilm)")
    p.add_argument("--task-option", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--name", default=None, help="run name (default: demo-TASK)")
    p.add_argument("--runs-dir", default="runs", help="folder for run outputs (default: runs)")
    _add_measure_args(p)

    p = subs["info"]
    p.add_argument("artifact", help="artifact or run folder")

    p = subs["train"]
    p.epilog, p.formatter_class = TRAIN_EPILOG, argparse.RawDescriptionHelpFormatter
    _add_task_args(p)
    p.add_argument("--out", required=True, metavar="DIR", help="run folder (metrics, checkpoints, model)")
    p.add_argument("--steps", type=_positive_int, default=None, help="optimizer steps (default: TrainConfig's)")
    p.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE",
                   help="any TrainConfig field (repeatable), e.g. --set lr=3e-3 --set precision=bf16")
    p.add_argument("--resume", metavar="DIR", help="continue from the latest checkpoint in DIR (a run folder)")
    p.add_argument("--finetune", action="store_true", help="start from the task's trained model, not from scratch")
    p.add_argument("--device", type=_device, default="cpu", help="cpu or cuda[:N]")
    p.add_argument("--nproc", type=_positive_int, default=None, help="processes per node, launched with torchrun")
    p.add_argument("--nnodes", type=_positive_int, default=1, help="number of nodes (torchrun rendezvous)")
    p.add_argument("--node-rank", type=_non_negative_int, default=0, help="this node's rank, 0..nnodes-1")
    p.add_argument("--master-addr", default=None, help="address of node 0 (multi-node)")
    p.add_argument("--master-port", type=_port, default=None, help="port on node 0 (multi-node; default 29500)")
    p = subs["federated"]
    _add_task_args(p)
    __import__("importlib").import_module("condense.federated.cli").add_arguments(p, _positive_int)
    p = subs["search"]
    p.formatter_class = argparse.RawDescriptionHelpFormatter
    p.epilog = """examples:
  condense search --task digits --budget 1% --trials 20 --out runs/digits-search
  condense search --task digits --budget 1% --trials 40 --out runs/digits-search    # resumes: 20 more trials
  condense search --task minilm --budget 1% --knobs distill,quantize --set recovery_steps=400 \\
      --set recovery_lr=5e-5 --set distill_layers=[3,4] --out runs/minilm   # trained students: DIR/stages
  condense search --task minilm --budget 1% --storage postgresql://user:pw@db:5432/condense --study s1 \\
      --workers 2 --out runs/s1           # run the same command on other machines to add workers
exit codes: 0 found a model within budget; 2 bad input, unreachable database or no trial within budget
(the closest trial is named and the history is kept: rerun with more --trials to resume)"""
    _add_task_args(p)
    p.add_argument("--budget", required=True, help="allowed loss of the primary metric vs the baseline, e.g. 1%%")
    p.add_argument("--trials", type=_positive_int, default=20, help="total trials of the study (default: 20)")
    p.add_argument("--storage", metavar="URL", help="trial history: a SQLite file or URL, or postgresql://... to "
                   "share one search between workers (default: DIR/search.db)")
    p.add_argument("--study", metavar="NAME", help="study name (default: condense-TASK); the same name resumes")
    p.add_argument("--workers", type=_positive_int, default=1, help="local worker processes sharing the study")
    p.add_argument("--knobs", metavar="K1,K2", help="knobs to search (default: every available one), e.g. "
                   "prune,quantize")
    p.add_argument("--batch-size", type=_positive_int, default=32, help="batch size whose latency is minimised")
    p.add_argument("--threads", type=_positive_int, default=None, help="torch threads while timing")
    p.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE",
                   help="any SearchConfig field, e.g. --set recovery_steps=200")
    p.add_argument("--out", required=True, metavar="DIR",
                   help="run folder: report.json, report.html, the chosen model in DIR/model, search.db, "
                   "trained stages in DIR/stages")
    p = subs["run"]
    p.epilog = ("examples:\n  condense run recipes/digits.yaml --out runs/digits-recipe\n"
                "  condense run recipes/tinygpt.yaml --out runs/gpt --set steps.0.prune.finetune.steps=20\n"
                "  condense run recipes/minilm.yaml --task minilm --task-option n_pairs=100 --out runs/m "
                "--set measure.repeats=3")
    p.formatter_class = argparse.RawDescriptionHelpFormatter
    p.add_argument("recipe", help="YAML recipe file (see recipes/ for one per built-in task)")
    p.add_argument("--task", metavar="NAME|MODULE:FACTORY", help="the task (default: the recipe's `task`)")
    p.add_argument("--task-option", action="append", default=[], metavar="KEY=VALUE",
                   help="option passed to the task factory (repeatable), e.g. preset=tiny")
    p.add_argument("--out", required=True, metavar="DIR", help="run folder: DIR/model, report.json, report.html")
    p.add_argument("--set", action="append", default=[], metavar="PATH=VALUE",
                   help="override a recipe value by dotted path (repeatable), e.g. steps.0.prune.n_drop=1 or "
                        "measure.repeats=3 (step indices are 0-based)")
    p.add_argument("--batch-sizes", type=_batch_sizes, default=None, metavar="B1,B2",
                   help="batch sizes to time (default: the recipe's, else the task's)")
    p.add_argument("--threads", type=_positive_int, default=None, help="torch threads while measuring")
    p.add_argument("--repeats", type=_positive_int, default=None, help="minimum timed runs per batch size")
    p.add_argument("--device", type=_device, default=None, help="cpu or cuda[:N] (default: the recipe's, else cpu)")
    p.add_argument("--no-quality", action="store_true", help="skip evaluating the task's metrics")
    _add_trust_arg(p, "the recipe")

    p = subs["export"]
    p.epilog = ("examples:\n  condense export --model runs/digits-recipe --out runs/digits.onnx\n"
                "  condense export --model runs/minilm-recipe --out runs/minilm-onnx --int8\n"
                "  condense export --model runs/digits-recipe --format tflite --int8 --out runs/digits.tflite")
    p.formatter_class = argparse.RawDescriptionHelpFormatter
    p.add_argument("--model", required=True, metavar="ARTIFACT", help="artifact or run folder (e.g. a recipe's)")
    p.add_argument("--format", default="onnx",
                   help="onnx (ONNX Runtime) or tflite (LiteRT; needs pip install 'condense[litert]')")
    p.add_argument("--out", required=True, metavar="FILE_OR_DIR",
                   help="a .onnx/.tflite file, or a folder to write model.onnx/model.tflite into (a .json record "
                        "goes beside it)")
    p.add_argument("--int8", action="store_true",
                   help="quantize to int8: ONNX Runtime's dynamic quantization; tflite: see --int8-mode")
    p.add_argument("--int8-mode", choices=("dynamic", "full"), default=None,
                   help="tflite only: dynamic (int8 weights, float activations; default) or full (int8 weights and "
                        "activations, calibrated on the task's data: for integer-only hardware; check the quality "
                        "it prints, BERT loses much)")
    p.add_argument("--opset", type=_opset, default=17, help="ONNX opset (17 or 18)")
    _add_task_args(p, required=False)
    _add_trust_arg(p, "the artifact (--model)")
    return parser


def main(argv: list[str] | None = None) -> int:
    import os

    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "command", None):
        parser.print_help()
        return 2
    # let --task my_module:factory find modules in the current folder; only then (or with --trust-task), so a
    # module shipped inside a downloaded artifact folder is never imported just by running a command there
    named = getattr(args, "task", None) or (args.name if args.command == "prepare" else None) or ""
    if (":" in named or getattr(args, "trust_task", False)) and os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
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
