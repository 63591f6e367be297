"""`condense export`: write an artifact as an ONNX or LiteRT (.tflite) file, fp32 or int8, with a parity check."""
from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from condense.cli.common import add_command, add_task_args, add_trust_arg, artifact_task, integer
from condense.errors import CondenseError

EPILOG = """examples:
  condense export --model runs/digits-recipe --out runs/digits.onnx
  condense export --model runs/minilm-ort --out runs/minilm-onnx   # from: condense run recipes/minilm.yaml
                                                                 #   --out runs/minilm-ort --set steps.1.quantize.backend=ort
  condense export --model runs/digits-recipe --format tflite --int8 --out runs/digits.tflite"""


def _opset(text: str) -> int:
    from condense.export.onnx import OPSETS

    v = integer(text, "an opset number")
    if v not in OPSETS:
        raise argparse.ArgumentTypeError(f"opset {v} is not supported; use one of {', '.join(map(str, OPSETS))} "
                                         f"(LayerNormalization needs >= 17)")
    return v


def cmd_export(args: argparse.Namespace) -> int:
    from condense.core.artifact import load
    from condense.export.files import check_export_target, check_format, export_model

    suffix = check_format(args.format)
    if args.int8_mode and not args.int8:
        raise CondenseError("--int8-mode needs --int8")
    check_export_target(args.out, suffix=suffix)  # before any work
    task, d = artifact_task(args)
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


def add_parser(sub: Any) -> None:
    p = add_command(sub, "export", cmd_export, "write an artifact as an ONNX or LiteRT (.tflite) file, fp32 or "
                    "int8, with a parity check", epilog=EPILOG)
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
    add_task_args(p, required=False)
    add_trust_arg(p, "the artifact (--model)")
