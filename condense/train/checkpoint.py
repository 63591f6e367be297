"""Checkpoints that survive a crash: each is written into a temporary folder, renamed into place when complete,
and only then does the `latest` pointer (a one-line text file, itself written atomically) move to it.

Layout of `ROOT/` (a run's `checkpoints/` folder):
    step-00000100/  model.safetensors (full model; absent for sharded runs)  dcp/ (sharded runs: torch.distributed
                    .checkpoint of model + optimizer)  optim.pt (optimizer state: tensors and numbers only, loads
                    with weights_only=True)  scaler.pt (fp16 only)  rng-rank{R}.pt (each process's RNG)
                    meta.json (step, data position, losses so far, model fingerprint, config)
    latest          "step-00000100"
A run killed mid-write leaves at most a `.step-*.tmp` folder, which nothing reads; `latest` still names the
previous complete checkpoint.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path
from typing import Any, Callable

import torch

from condense.core.atomic import atomic_write_json, atomic_write_text
from condense.errors import ArtifactError

LATEST = "latest"


def fingerprint(state: dict[str, torch.Tensor]) -> str:
    """A short hash of a state dict's names, shapes and dtypes: equal for the same architecture.

    Example:
        >>> fingerprint(torch.nn.Linear(2, 3).state_dict()) == fingerprint(torch.nn.Linear(2, 3).state_dict())
        True
    """
    desc = sorted((k, list(v.shape), str(v.dtype)) for k, v in state.items() if isinstance(v, torch.Tensor))
    return hashlib.sha1(json.dumps(desc).encode()).hexdigest()[:16]


def step_name(step: int) -> str:
    return f"step-{step:08d}"


def _fsync_tree(path: Path) -> None:
    for f in path.rglob("*"):
        if f.is_file():
            with open(f, "rb") as fh:
                os.fsync(fh.fileno())


def save_checkpoint(root: str | Path, step: int, write_parts: Callable[[Path], None], meta: dict[str, Any], *,
                    rank: int = 0, barrier: Callable[[], None] = lambda: None, keep: int = 0) -> Path:
    """Write checkpoint `step` under `root` crash-safely; every rank calls this (collectively when distributed).

    Args:
        write_parts: `write_parts(folder)` writes this rank's files into the temporary folder.
        meta: JSON-able description written by rank 0 last.
        keep: how many complete checkpoints to keep (0: all); older ones are removed after `latest` moves.
    """
    root = Path(root)
    name = step_name(step)
    tmp, final = root / f".{name}.tmp", root / name
    if rank == 0:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    barrier()
    try:
        write_parts(tmp)
    except BaseException:
        if rank == 0:
            shutil.rmtree(tmp, ignore_errors=True)
        raise
    barrier()
    if rank == 0:
        atomic_write_json(tmp / "meta.json", meta)
        _fsync_tree(tmp)
        if final.exists():  # re-saving a step (a resumed run): move the old one aside first
            old = root / f".{name}.old"
            shutil.rmtree(old, ignore_errors=True)
            os.replace(final, old)
            os.replace(tmp, final)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, final)
        atomic_write_text(root / LATEST, name + "\n")
        if keep:
            done = sorted(p for p in root.glob("step-*") if p.is_dir())
            for p in done[:-keep]:
                shutil.rmtree(p, ignore_errors=True)
    barrier()
    return final


def find_checkpoint(path: str | Path) -> Path:
    """The checkpoint folder for `path`: a step folder, a checkpoints root (its `latest`), or a run folder."""
    path = Path(path)
    for root in (path, path / "checkpoints"):
        if (root / "meta.json").exists():
            return root
        if (root / LATEST).exists():
            from condense.core.paths import file_in_folder

            name = (root / LATEST).read_text(errors="replace").strip()
            fix = f"point --resume at one of the step-* folders in {root}"
            if (file_in_folder(root, name, what=f"the checkpoint named by {root / LATEST}", fix=fix)
                    / "meta.json").exists():
                return root / name
            raise ArtifactError(f"{root / LATEST} names {name!r}, which is not a complete checkpoint; "
                                f"point --resume at one of the step-* folders in {root}")
    raise ArtifactError(f"no checkpoint in {path}: expected a run folder with checkpoints/latest, or a "
                        "checkpoint folder with meta.json; start without --resume to train from scratch")


def read_meta(ckpt: Path) -> dict[str, Any]:
    try:
        return json.loads((Path(ckpt) / "meta.json").read_text())
    except (OSError, ValueError) as e:
        raise ArtifactError(f"checkpoint {ckpt} has no readable meta.json ({e}); resume from another one") from None


def check_compatible(meta: dict[str, Any], model_fingerprint: str, ckpt: Path) -> None:
    """Raise an ArtifactError naming the fix when the checkpoint was written for another architecture."""
    if meta.get("fingerprint") != model_fingerprint:
        raise ArtifactError(f"checkpoint {ckpt} was written for a different model (fingerprint "
                            f"{meta.get('fingerprint')} != {model_fingerprint}); resume with the same task and "
                            "model options, or use a new --out folder to train this model from scratch")


def save_tensors(path: Path, obj: Any) -> None:
    torch.save(obj, str(path))


def load_tensors(path: Path) -> Any:
    """torch.load with weights_only=True: checkpoints hold tensors and plain values, never pickled objects."""
    return torch.load(str(path), map_location="cpu", weights_only=True)
