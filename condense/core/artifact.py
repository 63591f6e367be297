"""Saved artifacts: safetensors weights plus JSON metadata; data, never pickles.

Layout of an artifact folder:
    condense.json                   metadata: task spec, transforms applied (configs + details), measurements,
                                    the weights file's name and sha256, tensor aliases
    weights-<sha12>.safetensors     every tensor, named by module path
    .condense.lock                  an empty file locked (flock) by savers and readers; never deleted

A tensor may be stored encoded (e.g. a sparse weight as a bitmask plus its non-zero values) by a registered
`TensorEncoding`; `condense.json` then lists it under "encoded" with its encoding and shape, its parts are stored
as `<name>::<part>`, and `load` decodes it losslessly.

Writes are atomic and safe when several processes save to, and load from, one folder at once:
  1. The weights go to a temporary folder with a unique name (`.weights-*.tmp/`), written outside any lock (the
     slow part). The saver holds an exclusive flock on that folder while it lives, so another saver can tell a
     live temporary from one left by a killed process (the kernel drops a dead process's locks).
  2. Under an exclusive flock on `.condense.lock` (the commit, milliseconds): the temporary is renamed to its
     content name, `condense.json` is replaced in one rename, then every file the new `condense.json` does not
     reference is removed: older weights, temporaries no live saver holds, leftover metadata temporaries.
A failure or kill at any point leaves the earlier artifact loadable; what it leaves behind is removed by the
next save, and `artifact_size` counts only `condense.json` and the weights it names.

Readers (`load`, `artifact_size`) hold a shared flock on `.condense.lock` while they read `condense.json` and the
weights it names, so no commit (and no removal of the old weights) can happen in between: a reader sees the
complete old or the complete new artifact, never a `condense.json` whose weights are gone. A reader never
writes: in a folder without the lock file (saved by an older condense, or read-only) it reads unlocked and, if
the weights vanished or changed under it while `condense.json` changed too, reads again (a few times).

Loading rebuilds the architecture (the task's model, then each recorded transform replayed by its registered
handler) and fills it with the saved tensors, so outputs equal the saved model's. This module knows no task: it
loads onto a given model or `Task`, or asks a `resolve_task` callable for the recorded one; `condense.load`
(condense/loading.py, above the tasks) passes the built-in resolver.

The pieces: artifact_files (folder layout, locks), artifact_meta (reading `condense.json`), artifact_tensors
(codecs, encodings, replays, model state); this module writes and reads whole artifacts.
"""
from __future__ import annotations

import contextlib
import datetime as _dt
import fcntl
import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

from condense.core import lineage as _lineage
from condense.core.artifact_files import (LOCK_FILE, META_FILE, _folder_lock, _remove_unreferenced,  # noqa: F401
                                          is_own_file)
from condense.core.artifact_meta import FORMAT, FORMAT_VERSION, META_MAX_DEPTH, read_metadata  # noqa: F401
from condense.core.artifact_tensors import (CODECS, ENCODINGS, _PART_SEP, TensorCodec,  # noqa: F401
                                            TensorEncoding, _decode_tensors, _encode_tensors, _import_techniques,
                                            _dedupe, _load_state_tensors, state_tensors)
from condense.core.atomic import atomic_write_json
from condense.errors import ArtifactError

# (spec or name, trust, source) -> Task: how `load` rebuilds a task it is not given (see condense.loading).
TaskResolver = Callable[..., Any]
_READ_TRIES = 5


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


# -- public API -------------------------------------------------------------------------------------------------
def save(model: nn.Module, path: str | os.PathLike, *, measurements: dict | None = None,
         metadata: dict | None = None) -> Path:
    """Save `model` to the artifact folder `path` (created if needed); returns the folder.

    Safe when other processes save to or load from the same folder at the same time (the last commit wins;
    every reader sees one complete artifact).

    Example:
        >>> import tempfile, torch, condense
        >>> net = torch.nn.Linear(3, 2)
        >>> d = condense.save(net, tempfile.mkdtemp() + "/lin")
        >>> torch.equal(condense.load(d, model=torch.nn.Linear(3, 2)).weight, net.weight)
        True
    """
    from safetensors.torch import save_file

    path = Path(path)
    if path.exists() and not path.is_dir():
        raise ArtifactError(f"{path} is a file; an artifact is a folder: choose another --out path")
    if path.is_dir() and not (path / META_FILE).exists() and any(not is_own_file(p.name) for p in path.iterdir()):
        raise ArtifactError(f"{path} exists and is not a condense artifact; refusing to write into it: "
                            "choose an empty or new folder")
    path.mkdir(parents=True, exist_ok=True)
    tensors, aliases = _dedupe(state_tensors(model))
    tensors, encoded = _encode_tensors(tensors)
    with _folder_lock(path):  # created and claimed at once, so a concurrent cleanup never takes it for a leftover
        tmp_dir = Path(tempfile.mkdtemp(prefix=".weights-", suffix=".tmp", dir=path))
        claim = os.open(tmp_dir, os.O_RDONLY)
        with contextlib.suppress(OSError):  # where a folder cannot be flocked (NFS), cleanup cannot claim it either
            fcntl.flock(claim, fcntl.LOCK_EX)
    tmp = tmp_dir / "weights.safetensors"  # safetensors writes a new file (inode): the claim is on its folder
    try:
        save_file(tensors, str(tmp))
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        digest = _sha256(tmp)
        weights_name = f"weights-{digest[:12]}.safetensors"
        rec = _lineage.lineage(model)
        meta = {
            "format": FORMAT,
            "format_version": FORMAT_VERSION if encoded else 1,
            "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            "condense_version": _condense_version(),
            "torch_version": torch.__version__,
            "model_class": f"{type(model).__module__}.{type(model).__qualname__}",
            "weights_file": weights_name,
            "weights_sha256": digest,
            "weights_bytes": tmp.stat().st_size,
            "aliases": aliases,
            "encoded": encoded,
            "task": rec["task"],
            "transforms": rec["transforms"],
            "measurements": measurements,
            "metadata": metadata or {},
        }
        json.dumps(meta)  # fail before writing if anything is not JSON-able
        with _folder_lock(path):
            os.replace(tmp, path / weights_name)
            atomic_write_json(path / META_FILE, meta)
            _remove_unreferenced(path, weights_name)
    finally:
        shutil.rmtree(tmp_dir, ignore_errors=True)  # empty after the commit; a failed save's weights otherwise
        os.close(claim)
    return path


def _weights_path(path: Path, meta: dict[str, Any]) -> Path:
    """The weights file `condense.json` names, refused unless it is a plain file in the artifact folder."""
    from condense.core.paths import file_in_folder

    return file_in_folder(path, meta.get("weights_file"), what=f"weights_file in {path / META_FILE}")


def _read_weights(path: Path, meta: dict[str, Any]) -> dict[str, torch.Tensor]:
    """The tensors of the weights file `meta` names, checked against its sha256."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    wpath = _weights_path(path, meta)
    if not wpath.is_file():
        raise ArtifactError(f"artifact {path} is missing its weights file {wpath.name}; re-create the artifact")
    if _sha256(wpath) != meta.get("weights_sha256"):
        raise ArtifactError(f"weights file {wpath} is corrupt (checksum mismatch); re-create the artifact")
    try:
        return load_file(str(wpath))
    except (SafetensorError, OSError) as e:
        raise ArtifactError(f"weights file {wpath} cannot be read ({e}); re-create the artifact") from None


def _read_consistent(path: Path) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """`condense.json` and the tensors it names, from one commit (see the module docstring)."""
    for attempt in range(_READ_TRIES):
        with _folder_lock(path, shared=True) as locked:
            meta = read_metadata(path)
            try:
                return meta, _read_weights(path, meta)
            except ArtifactError:
                # unlocked (no lock file): a save may have committed meanwhile; read again if condense.json changed
                if locked or attempt == _READ_TRIES - 1 or read_metadata(path) == meta:
                    raise
    raise AssertionError("unreachable")


def load(path: str | os.PathLike, *, model: nn.Module | None = None, task: Any = None,
         device: str | torch.device = "cpu", trust_task: bool = False,
         resolve_task: TaskResolver | None = None) -> nn.Module:
    """Load an artifact saved by `save`: rebuild the architecture, replay transforms, fill in the weights.

    Loading runs no code from the artifact: the recorded task is rebuilt only if it is a built-in one, transforms
    only by their registered handlers, weights are safetensors (no pickles) read from the artifact folder itself.
    Use `condense.load`, which knows the tasks; this one needs `model`, a `Task`, or `resolve_task`.

    Args:
        path: the artifact folder.
        model: a freshly built model of the original architecture (needed when the artifact records no task).
        task: the task (a `Task`, or a name for `resolve_task`) to rebuild the model from (default: the task
            recorded in the artifact).
        device: where to put the loaded model.
        trust_task: rebuild a recorded `module:factory` task too (imports that module and calls the factory
            with the recorded options): only for artifacts you trust, like Hugging Face's `trust_remote_code`.
        resolve_task: `resolve_task(spec_or_name, trust=..., source=...)` returns the `Task` for a recorded spec
            (a mapping) or a task name.
    """

    path = Path(path)
    meta, tensors = _read_consistent(path)
    _import_techniques()  # registers tensor encodings and transform replays
    tensors = _checked_tensors(tensors, meta, path)
    if model is None:
        if task is None:
            if not meta.get("task"):
                raise ArtifactError(f"artifact {path} records no task; pass model=<a fresh model of the same "
                                    "architecture> to condense.load")
            task = meta["task"]
        if not hasattr(task, "build_skeleton"):
            if resolve_task is None:
                raise ArtifactError(f"artifact {path} needs its task {task!r} rebuilt; load it with condense.load "
                                    "(it knows the tasks), or pass task=<a condense.Task> or model=<a fresh model>")
            task = resolve_task(task, trust=trust_task, source=f"artifact {path}")
        model = task.build_skeleton()
    for i, entry in enumerate(meta.get("transforms", [])):
        model = _replay(model, i, entry, path)
    try:
        _load_state_tensors(model, tensors)
    except (ArtifactError, KeyboardInterrupt):
        raise
    except Exception as e:  # a codec given tensors of another shape or dtype than it packs
        raise ArtifactError(f"artifact {path} does not fit the model rebuilt from its metadata ({type(e).__name__}: "
                            f"{e}); load it with the task that produced it, or re-create the artifact") from e
    rec = {"task": meta.get("task"), "transforms": meta.get("transforms", [])}
    object.__setattr__(model, "_condense_lineage", rec)
    return model.to(device).eval()


def _checked_tensors(tensors: dict[str, torch.Tensor], meta: dict[str, Any], path: Path) -> dict[str, torch.Tensor]:
    """The saved tensors with encoded ones decoded and aliases filled in; every name the metadata uses must be
    in the weights file (a damaged or edited artifact is an ArtifactError, never a KeyError)."""
    encoded = meta.get("encoded", {})
    for k in encoded:
        if not any(n.startswith(f"{k}{_PART_SEP}") for n in tensors):
            raise ArtifactError(f"artifact {path}: encoded tensor {k!r} has no parts in the weights file; "
                                "re-create the artifact")
    try:
        tensors = _decode_tensors(tensors, encoded)
    except (ArtifactError, KeyboardInterrupt):
        raise
    except Exception as e:  # parts that do not match the recorded shape
        raise ArtifactError(f"artifact {path}: an encoded tensor cannot be decoded ({type(e).__name__}: {e}); "
                            "re-create the artifact") from e
    for alias, target in meta.get("aliases", {}).items():
        if target not in tensors:
            raise ArtifactError(f"artifact {path}: alias {alias!r} points to {target!r}, which is not in the "
                                "weights file; re-create the artifact")
        tensors[alias] = tensors[target]
    return tensors


def _replay(model: nn.Module, i: int, entry: dict[str, Any], path: Path) -> nn.Module:
    """Re-apply recorded transform `i` to `model`; a config or details that cannot be replayed is an ArtifactError."""
    from condense.core.config import config_from_dict
    from condense.errors import CondenseError

    try:
        cfg = config_from_dict(entry["config"])
    except CondenseError as e:
        raise ArtifactError(f"artifact {path}: transforms[{i}] has an invalid config ({e})") from None
    except (TypeError, ValueError, KeyError, ArithmeticError, RecursionError) as e:
        raise ArtifactError(f"artifact {path}: transforms[{i}] has an invalid config ({type(e).__name__}: {e}); "
                            "re-create the artifact") from None
    from condense.core.transforms import TRANSFORMS

    try:
        replay = TRANSFORMS.get(cfg).replay
    except CondenseError as e:
        raise ArtifactError(f"artifact {path}: transforms[{i}] cannot be replayed ({e})") from None
    try:
        return replay(model, cfg, entry.get("details", {}))
    except (CondenseError, KeyboardInterrupt):
        raise
    except Exception as e:  # details that do not fit the model (edited, or from another architecture)
        raise ArtifactError(f"artifact {path}: transforms[{i}] ({type(cfg).__name__}) cannot be replayed on the "
                            f"model ({type(e).__name__}: {e}); load it with the task that produced it, or "
                            "re-create the artifact") from e


def artifact_size(path: str | os.PathLike) -> int:
    """Bytes on disk of an artifact: `condense.json` and the weights file it names (not the lock file, nor what an
    interrupted save left behind; the next save removes that)."""
    path = Path(path)
    with _folder_lock(path, shared=True):
        meta = read_metadata(path)
        wpath = _weights_path(path, meta)
        if not wpath.is_file():
            raise ArtifactError(f"artifact {path} is missing its weights file {wpath.name}; re-create the artifact")
        return (path / META_FILE).stat().st_size + wpath.stat().st_size


def _condense_version() -> str:
    from condense.version import __version__

    return __version__
