"""`condense info`: describe a saved artifact (task, model class, size, the transforms applied)."""
from __future__ import annotations

import argparse
import json
from typing import Any

from condense.cli.common import add_command, artifact_dir
from condense.errors import CondenseError


def cmd_info(args: argparse.Namespace) -> int:
    from condense.core.artifact import artifact_size, read_metadata
    from condense.core.outputs import run_mismatch

    d = artifact_dir(args.artifact)
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


def add_parser(sub: Any) -> None:
    p = add_command(sub, "info", cmd_info, "describe a saved artifact",
                    epilog="examples:\n  condense info runs/digits-int8\n  condense info runs/digits-int8/model")
    p.add_argument("artifact", help="artifact or run folder")
