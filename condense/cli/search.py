"""`condense search`: search compression steps for the fastest model within a quality budget (optuna)."""
from __future__ import annotations

import argparse
from typing import Any

from condense.cli.common import add_command, add_task_args, build_config_at, positive_int, task_of, task_options

EPILOG = """examples:
  condense search --task digits --budget 1% --trials 20 --out runs/digits-search
  condense search --task digits --budget 1% --trials 40 --out runs/digits-search    # resumes: 20 more trials
  condense search --task minilm --budget 1% --knobs distill,quantize --set finetune='{"steps": 400, "lr": 5e-5}' \\
      --set distill_layers=[3,4] --out runs/minilm   # trained students: DIR/stages
  condense search --task minilm --budget 1% --storage postgresql://user:pw@db:5432/condense --study s1 \\
      --workers 2 --out runs/s1           # run the same command on other machines to add workers
exit codes: 0 found a model within budget; 2 bad input, unreachable database or no trial within budget
(the closest trial is named and the history is kept: rerun with more --trials to resume)"""


def cmd_search(args: argparse.Namespace) -> int:
    from condense.searching.api import BudgetNotMet, search
    from condense.searching.config import parse_budget

    over: dict[str, Any] = {"budget": parse_budget(args.budget), "trials": args.trials,
                            "batch_size": args.batch_size}
    if args.knobs is not None:  # --knobs '' is an empty list (refused), not the default
        over["knobs"] = [k.strip() for k in args.knobs.split(",") if k.strip()]
    if args.threads:
        over["threads"] = args.threads
    over.update(task_options(args.set, flag="--set", example='finetune={"steps": 200}') if args.set else {})
    cfg = build_config_at("condense.searching.config:SearchConfig", over)
    from condense.core.outputs import check_output_dir

    out = check_output_dir(args.out, kind="search")  # before any work
    task = task_of(args)
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


def add_parser(sub: Any) -> None:
    p = add_command(sub, "search", cmd_search, "search compression steps for the fastest model within a quality "
                    "budget (optuna)", epilog=EPILOG)
    add_task_args(p)
    p.add_argument("--budget", required=True, help="allowed loss of the primary metric vs the baseline, e.g. 1%%")
    p.add_argument("--trials", type=positive_int, default=20, help="total trials of the study (default: 20)")
    p.add_argument("--storage", metavar="URL", help="trial history: a SQLite file or URL, or postgresql://... to "
                   "share one search between workers (default: DIR/search.db)")
    p.add_argument("--study", metavar="NAME", help="study name (default: condense-TASK); the same name resumes")
    p.add_argument("--workers", type=positive_int, default=1, help="local worker processes sharing the study")
    p.add_argument("--knobs", metavar="K1,K2", help="knobs to search (default: every available one), e.g. "
                   "prune,quantize")
    p.add_argument("--batch-size", type=positive_int, default=32, help="batch size whose latency is minimised")
    p.add_argument("--threads", type=positive_int, default=None, help="torch threads while timing")
    p.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE",
                   help="any SearchConfig field, e.g. --set finetune='{\"steps\": 200}'")
    p.add_argument("--out", required=True, metavar="DIR",
                   help="run folder: report.json, report.html, the chosen model in DIR/model, search.db, "
                   "trained stages in DIR/stages")
