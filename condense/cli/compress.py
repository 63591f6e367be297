"""`condense quantize / prune / distill / factorize / early-exit`: one config from the command line, applied to a
task's model (or a saved artifact), measured before and after, saved with its report.

Each command's `--help` shows examples of its own and lists every field of its configs (names.py says which).
"""
from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from condense.cli.common import (add_command, add_measure_args, add_task_args, add_trust_arg, artifact_task,
                                 build_config_at, config_class, measure_config, set_overrides, show, task_of)
from condense.cli.names import CHOICE_COMMANDS, TECHNIQUE_COMMANDS, methods, technique
from condense.errors import CondenseError

HELP = {
    "quantize": "quantize a task's model (or an artifact) and save the artifact and report",
    "prune": "prune a task's model (or an artifact) and save the artifact and report",
    "distill": "distil a task's model (the teacher) into a smaller student; save artifact and report",
    "factorize": "factorize Linear/Conv2d layers by truncated SVD; save artifact and report",
    "early-exit": "attach and train early-exit heads, sweep thresholds; save artifact and report",
}
# the `--set` example in each command's help (and in its error messages): a field of the command's default config
SET_EXAMPLE = {"quantize": "backend=ort", "prune": "scope=global", "distill": "layers=3",
               "factorize": "rank_ratio=0.5", "early-exit": "threshold=0.95"}
EXAMPLES = {
    "quantize": """\
  condense quantize --task digits --out runs/digits-int8            # int8 on the backend measured fastest
  condense quantize --task digits --set backend=ort --out runs/digits-ort       # int8 on the backend you name
  condense quantize --task digits --scheme static --set observer=minmax --out runs/digits-static
  condense quantize --task tinygpt --scheme weight-only --set method=gptq --set bits=4 --out runs/gpt-4bit
  condense quantize --task digits --model runs/digits-half --out runs/digits-half-int8   # a saved artifact""",
    "prune": """\
  condense prune --task digits --sparsity 0.5 --set scope=global --out runs/digits-sparse
  condense prune --task digits --method nm --set n=2 --set m=4 --out runs/digits-24      # 2:4 sparsity
  condense prune --task digits --method structured --ratio 0.5 --out runs/digits-half    # smaller dense layers
  condense prune --task digits --method gradual --sparsity 0.8 --set steps=5 --out runs/digits-gradual
  condense prune --task tinygpt --method layer-drop --set n_drop=1 --out runs/gpt-drop""",
    "distill": """\
  condense distill --task tinygpt --set layers=2 --set temperature=1 --set finetune='{"steps": 300}' --out runs/gpt-2l
  condense distill --task minilm --set layers=4 --set layer_criterion=subset --out runs/minilm-4l""",
    "factorize": """\
  condense factorize --task digits --set rank_ratio=0.5 --out runs/digits-svd
  condense factorize --task tinygpt --set activation_aware=true --include 'blocks.*.mlp.*' --out runs/gpt-svd""",
    "early-exit": """\
  condense early-exit --task digits --out runs/digits-exit
  condense early-exit --task digits --set thresholds='[0.9, 0.99, 0.999]' --out runs/digits-exit""",
}


# -- from arguments to a config ---------------------------------------------------------------------------------
def quantize_config(args: argparse.Namespace) -> tuple[Any, str]:
    """The config and step label `condense quantize ARGS` applies."""
    return build_config_at(methods("quantize")[args.scheme], set_overrides(args, example=SET_EXAMPLE["quantize"])), \
        args.scheme


def prune_config(args: argparse.Namespace) -> tuple[Any, str]:
    over = set_overrides(args, example=SET_EXAMPLE["prune"])
    if args.sparsity is not None:
        over["sparsity" if args.method != "gradual" else "final_sparsity"] = args.sparsity
    if args.ratio is not None:
        over["ratio"] = args.ratio
    return build_config_at(methods("prune")[args.method], over), args.method


def technique_config(args: argparse.Namespace) -> tuple[Any, str]:
    """distill / factorize / early-exit: one config, built from --set (and --include/--exclude)."""
    over = set_overrides(args, example=SET_EXAMPLE[args.command])
    return build_config_at(technique(args.command), over), args.command


CONFIG_OF = {"quantize": quantize_config, "prune": prune_config, **{name: technique_config for name in TECHNIQUE_COMMANDS}}


def cmd_compress(args: argparse.Namespace) -> int:
    cfg, label = CONFIG_OF[args.command](args)
    return run_two_step(args, cfg, label)


def run_two_step(args: argparse.Namespace, cfg: Any, label: str) -> int:
    """Measure the starting model, apply `cfg`, measure again; save the artifact and the report in --out."""
    from condense.core.outputs import check_output_dir
    from condense.measurement.table import comparison_table
    from condense.pipeline import Step, check_run_name, run_pipeline

    out = check_output_dir(args.out)  # before any work
    base_model, base_label = None, "fp32"
    if getattr(args, "model", None):
        from condense.core.artifact import load

        task, d = artifact_task(args)
        base_model, base_label = load(d, task=task), Path(args.model).name
    elif args.task is None:
        raise CondenseError(f"give --task NAME (see `condense tasks`), or --model ARTIFACT to {args.command} a saved "
                            "model")
    else:
        task = task_of(args)
    res = run_pipeline(task, [Step(base_label), Step(label, cfg)], out, name=check_run_name(out.name),
                       measure_config=measure_config(args), base_model=base_model)
    show(comparison_table(res.measurements))
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
        from condense.report.early_exit import curve_svg

        atomic_write_json(out / "early-exit-curve.json", curve)
        atomic_write_text(out / "early-exit-curve.svg", curve_svg(curve))
        m, base = curve["metric"], curve["baseline"]
        print(f"early exit: {m} and mean latency per sample (batch 1) by threshold")
        print(f"  no early exit: {m} {base['quality'][m]:.4f}, {base['latency_s'] * 1e6:.0f} us")
        for p in curve["points"]:
            mark = "  <- chosen" if curve["chosen"] and p["threshold"] == curve["chosen"]["threshold"] else ""
            print(f"  threshold {p['threshold']:<6g}: {m} {p['quality'][m]:.4f}, {p['latency_s'] * 1e6:.0f} us "
                  f"({p['speedup']:.2f}x), exits {[round(f, 2) for f in p['exit_fractions']]}{mark}")


# -- arguments --------------------------------------------------------------------------------------------------
def _list_config_fields(p: argparse.ArgumentParser, configs: dict[str, str]) -> None:
    """`p --help` ends with each config's fields, types and defaults (imported only when help is asked for)."""
    base = p.format_help

    def format_help() -> str:
        from condense.core.config_help import fields_text

        parts = [base()]
        for label, path in configs.items():
            cls = config_class(path)
            parts.append(f"\n{label}: {cls.__name__} fields (--set FIELD=VALUE)\n{fields_text(cls)}\n")
        return "".join(parts)

    p.format_help = format_help  # type: ignore[method-assign]


def _add_common(p: argparse.ArgumentParser, command: str, choice: tuple[str, dict, str] | None = None) -> None:
    """Arguments every technique command takes: where the model comes from, which technique (`choice`: flag,
    names, default), --out, --set."""
    add_task_args(p, required=False)
    if choice is not None:
        flag, names, default = choice
        p.add_argument(flag, choices=sorted(names), default=default, help=f"which technique (default: {default})")
    p.add_argument("--model", metavar="ARTIFACT", help="start from a saved artifact instead of the task's model")
    add_trust_arg(p, "the artifact (--model)")
    p.add_argument("--out", required=True, metavar="DIR",
                   help="run folder: artifact in DIR/model, report.json and report.html beside it")
    p.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE",
                   help="any field of the technique's config (repeatable; listed below), e.g. --set "
                        f"{SET_EXAMPLE[command]}")


def _add_patterns(p: argparse.ArgumentParser) -> None:
    p.add_argument("--include", action="append", metavar="PATTERN", help="module-name pattern to include")
    p.add_argument("--exclude", action="append", metavar="PATTERN", help="module-name pattern to leave alone")


def add_parser(sub: Any) -> None:
    """quantize, prune, distill, factorize, early-exit."""
    for name, (family, flag, default) in CHOICE_COMMANDS.items():
        choices = methods(family)
        p = add_command(sub, name, cmd_compress, HELP[name], epilog=f"examples:\n{EXAMPLES[name]}")
        _add_common(p, name, (flag, choices, default))
        _list_config_fields(p, {f"{flag} {k}": v for k, v in choices.items()})
        _add_patterns(p)
        add_measure_args(p)
        if name == "prune":
            p.add_argument("--sparsity", type=float, help="fraction of weights to remove, in [0, 1)")
            p.add_argument("--ratio", type=float, help="structured: fraction of channels/heads to remove")
    for name in TECHNIQUE_COMMANDS:
        path = technique(name)
        p = add_command(sub, name, cmd_compress, HELP[name], epilog=f"examples:\n{EXAMPLES[name]}")
        _add_common(p, name)
        _list_config_fields(p, {name: path})
        if name == "factorize":
            _add_patterns(p)
        add_measure_args(p)
