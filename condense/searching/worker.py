"""`python -m condense.searching.worker JSON`: one extra local worker process of a search (see `search(workers=N)`).

JSON: {"task": task spec, "config": SearchConfig dict, "storage": URL, "study": name, "worker": index,
"trust_task": whether the task may be a `module:factory` (the parent's task, which the user gave it)}.
"""
from __future__ import annotations

import json
import sys


def main(argv: list[str] | None = None) -> int:
    from condense.core.config import config_from_dict
    from condense.searching.trials import run_worker
    from condense.tasks import task_from_spec

    from condense.searching.trials import install_stop_handler

    install_stop_handler()  # the parent's terminate(): the running trial is marked failed, the study stays consistent
    args = json.loads((argv or sys.argv[1:])[0])
    task = task_from_spec(args["task"], trust=args.get("trust_task") is True, source="the search worker's task")
    cfg = config_from_dict(args["config"])
    n = run_worker(task, cfg, args["storage"], args["study"], worker=int(args["worker"]))
    print(f"worker {args['worker']}: {n} trial(s)")
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        sys.exit(130)

