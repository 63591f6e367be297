"""Output folders and files: checked before any work starts; run folders whose model and report can be matched.

Why check first: a command may run for minutes; it must not then fail on an output path it cannot write, nor
overwrite files in a folder that is not its own. Every command that writes (`--out`, `--json`, `--runs-dir`)
calls `check_output_dir` or `check_output_file` before it builds or trains anything; the check writes nothing.

Why run ids: a run folder (DIR/model + DIR/report.json, or DIR/train.json after training) is written in steps:
the model, then the record. No pair of renames is atomic, so a kill between them would leave a new model beside
an old record. Each run records one id in both (`metadata.run_id` in the artifact, `run_id` in the record), the
record written last, so `run_mismatch` (and `condense info`) can tell when the two come from different runs.
"""
from __future__ import annotations

import json
import os
import tempfile
import uuid
from pathlib import Path

from condense.errors import CondenseError

# what condense writes in a run folder: records (files) and folders
RUN_FILES = ("report.json", "report.html", "train.json", "metrics.jsonl", "search.db", "condense.json",
             "finetune.json")
RUN_DIRS = ("model", "checkpoints", "stages", "tb")
RECORDS = ("report.json", "train.json")  # written after DIR/model, each with the run id
EXPORT_FILES = ("model.onnx", "model.tflite", "model.json")


def new_run_id() -> str:
    """A fresh id for one run, recorded in its artifact and its report."""
    return uuid.uuid4().hex[:16]


def _is_temporary(name: str) -> bool:
    return name.startswith(".") and name.endswith(".tmp")  # condense's atomic writes, e.g. .report.json.x1y2.tmp


def _is_artifact_dir(p: Path) -> bool:
    from condense.core.artifact import is_own_file

    return p.is_dir() and all(is_own_file(c.name) for c in p.iterdir())


def _has_marker(p: Path) -> bool:
    return (any((p / f).is_file() for f in RUN_FILES) or any((p / d).is_dir() for d in RUN_DIRS if d != "model")
            or ((p / "model").is_dir() and _is_artifact_dir(p / "model")))


def _entries(p: Path) -> list[str]:
    return sorted(c.name for c in p.iterdir() if not _is_temporary(c.name))


def _probe(path: Path, what: str, *, start: Path | None = None) -> None:
    """Raise unless an entry can be created in the nearest existing folder at or above `start` (default: `path`),
    tried with a temporary folder that is removed at once."""
    base = path if start is None else start
    while not os.path.lexists(base) and base != base.parent:
        base = base.parent
    if not base.is_dir():
        raise CondenseError(f"{what} {path} cannot be created: {base} is a file, not a folder; choose another path")
    try:
        os.rmdir(tempfile.mkdtemp(prefix=".condense-probe-", dir=base))
    except OSError as e:
        where = "" if base == path else f" (in {base})"
        raise CondenseError(f"{what} {path} cannot be written{where}: {e.strerror or e}; choose a place you can "
                            "write to") from None


def check_output_dir(path: str | os.PathLike, *, kind: str = "run") -> Path:
    """Raise a CondenseError naming the fix unless `path` can receive a run's outputs; returns it as a Path.

    Accepted: a new folder (its parent writable), an empty one, or a condense run folder (a report, a model, a
    training or search record...; rerunning into it replaces them). Refused: an existing file, a folder holding
    other files and no condense output, a place that cannot be written. `kind="export"` also accepts a folder
    holding an earlier export (model.onnx / model.tflite / model.json). Nothing is written.

    Example:
        >>> import tempfile
        >>> check_output_dir(tempfile.mkdtemp() + "/new-run").name
        'new-run'
    """
    p = Path(path)
    what = "output folder"
    if os.path.lexists(p) and not p.is_dir():
        raise CondenseError(f"{what} {p} is an existing file, not a folder; choose a new or empty folder")
    if p.is_dir():
        for name in RUN_FILES + (EXPORT_FILES if kind == "export" else ()):
            if (p / name).is_dir():
                raise CondenseError(f"{p / name} is a folder where condense writes a file; move it away or choose "
                                    "a new or empty folder")
        for name in RUN_DIRS:
            if os.path.lexists(p / name) and not (p / name).is_dir():
                raise CondenseError(f"{p / name} is a file where condense writes a folder; move it away or choose "
                                    "a new or empty folder")
        if (p / "model").is_dir() and not _is_artifact_dir(p / "model"):
            raise CondenseError(f"{p / 'model'} holds files that are not a condense artifact and would be "
                                "overwritten; move them away or choose a new or empty folder")
        ours = _has_marker(p) or (kind == "export" and any((p / f).is_file() for f in EXPORT_FILES))
        others = _entries(p)
        if others and not ours:
            shown = ", ".join(others[:3]) + (", ..." if len(others) > 3 else "")
            raise CondenseError(f"{what} {p} exists and is not a condense run folder (it holds {shown}); choose a "
                                "new or empty folder")
    _probe(p, what)
    return p


def check_output_file(path: str | os.PathLike) -> Path:
    """Raise a CondenseError naming the fix unless the file `path` can be written (created or replaced).

    Example:
        >>> import tempfile
        >>> check_output_file(tempfile.mkdtemp() + "/m.json").name
        'm.json'
    """
    p = Path(path)
    if p.is_dir():
        raise CondenseError(f"output file {p} is an existing folder; give a file path, e.g. {p / 'out.json'}")
    _probe(p, "output file", start=p.parent)
    return p


def run_mismatch(path: str | os.PathLike) -> str | None:
    """A message when the run folder `path` holds a model and a record (report.json / train.json) from different
    runs (the last run was killed between writing the two), else None (also when either predates run ids)."""
    p = Path(path)
    meta_file = p / "model" / "condense.json"
    if not meta_file.is_file():
        return None
    try:
        model_run = (json.loads(meta_file.read_text()).get("metadata") or {}).get("run_id")
    except (OSError, ValueError, AttributeError):
        return None
    for rec in RECORDS:
        try:
            run = json.loads((p / rec).read_text()).get("run_id")
        except (OSError, ValueError, AttributeError):
            continue
        if run and model_run and run != model_run:
            return (f"{p / rec} (run {run}) and {p / 'model'} (run {model_run}) come from different runs: the last "
                    "run was interrupted before its record was written; rerun the command that made this folder")
    return None
