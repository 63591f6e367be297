"""The `condense` command: parses arguments, calls the library, prints. No logic of its own.

One module per command, its arguments (`add_parser`) beside its code; common.py holds what they share and
names.py the technique names. Errors the user can fix print one line naming the fix and exit 2; nothing prints a
traceback unless --debug.
"""
from __future__ import annotations

import sys

from condense.cli import compress, demo, export, federated, finetune, info, measure, run, search, tasks, train
from condense.cli.common import Parser
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
  condense distill --task tinygpt --set layers=2 --set temperature=1 --set finetune='{"steps": 300}' --out runs/gpt-2l
  condense factorize --task tinygpt --set activation_aware=true --include 'blocks.*.mlp.*' --out runs/gpt-svd
  condense early-exit --task digits --set thresholds='[0.9, 0.99, 0.999]' --out runs/digits-exit
  condense prepare tinygpt                        # train and cache the built-in language model once
  condense train --task digits --steps 300 --set schedule=cosine --out runs/train-digits
  condense train --task tinygpt --task-option preset=tiny --nproc 2 --set comm_hook=powersgd --out runs/gpt-ddp
  condense finetune --task minilm-topics --set labels_per_class=10 --out runs/topics   # pretrained vs scratch
  condense search --task digits --budget 1% --trials 20 --out runs/digits-search
  condense search --task minilm --budget 1% --storage postgresql://u:pw@db/condense --study s1 --workers 2 --out runs/s1
  condense run recipes/digits.yaml --out runs/digits-recipe        # a YAML recipe: steps in order, measured
  condense export --model runs/digits-recipe --out runs/digits.onnx --int8   # ONNX file + parity check
  condense export --model runs/digits-recipe --format tflite --out runs/digits.tflite   # LiteRT file + parity
`condense COMMAND --help` shows a command's arguments and examples.
"""

# in the order `condense --help` lists them
PARSERS = (tasks.add_tasks_parser, tasks.add_prepare_parser, measure.add_parser, compress.add_parser,
           demo.add_parser, info.add_parser, search.add_parser, run.add_parser, export.add_parser,
           train.add_parser, finetune.add_parser, federated.add_parser)


def build_parser() -> Parser:
    import argparse

    from condense import __version__

    parser = Parser(prog="condense", description="Make neural networks cheaper to run, and prove it with "
                    "measurements.", epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--debug", action="store_true", help="show tracebacks")
    parser.add_argument("--version", action="version", version=f"condense {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for add in PARSERS:
        add(sub)
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
