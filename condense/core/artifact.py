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
handler) and fills it with the saved tensors, so outputs equal the saved model's.
"""
from __future__ import annotations

import contextlib
import datetime as _dt
import fcntl
import hashlib
import json
import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch
from torch import nn

from condense.core import lineage as _lineage
from condense.core import plugins
from condense.core.atomic import atomic_write_json
from condense.core.registry import Registry, TypeRegistry
from condense.errors import ArtifactError

META_FILE = "condense.json"
LOCK_FILE = ".condense.lock"
_WEIGHTS = re.compile(r"^weights-[0-9a-f]+\.safetensors$")
_WEIGHTS_TMP = re.compile(r"^\.weights-.*\.tmp$")
_META_TMP = re.compile(r"^\.condense\.json\..*\.tmp$")  # atomic_write's temporaries of condense.json
_LEGACY_TMP = ".weights.incoming.safetensors"  # condense <= 0.x wrote every save to this one name
_READ_TRIES = 5
FORMAT = "condense.artifact"
FORMAT_VERSION = 2  # 2 added encoded tensors; an artifact without any is still written as version 1


class TensorCodec:
    """How a module type's state becomes named plain tensors and back (for packed/quantized modules)."""

    def export(self, module: nn.Module) -> dict[str, torch.Tensor]:
        raise NotImplementedError

    def load(self, module: nn.Module, tensors: dict[str, torch.Tensor]) -> None:
        raise NotImplementedError


CODECS: TypeRegistry[TensorCodec] = TypeRegistry("tensor codec")


class TensorEncoding:
    """A lossless way to store one tensor as smaller named parts (e.g. sparse: bitmask + non-zero values)."""

    def encode(self, tensor: torch.Tensor) -> dict[str, torch.Tensor] | None:
        """The parts, or None when this encoding does not apply or would not make the tensor smaller."""
        raise NotImplementedError

    def decode(self, parts: dict[str, torch.Tensor], shape: tuple[int, ...]) -> torch.Tensor:
        raise NotImplementedError


# encoding name -> TensorEncoding; `save` stores each tensor with the first (by name) that applies.
ENCODINGS: Registry[TensorEncoding] = Registry("tensor encoding")
_PART_SEP = "::"


def _encode_tensors(tensors: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], dict[str, dict]]:
    out: dict[str, torch.Tensor] = {}
    encoded: dict[str, dict] = {}
    for k, v in tensors.items():
        for enc_name, enc in ENCODINGS.items():
            parts = enc.encode(v)
            if parts is not None:
                out.update({f"{k}{_PART_SEP}{p}": t.contiguous() for p, t in parts.items()})
                encoded[k] = {"encoding": enc_name, "shape": list(v.shape)}
                break
        else:
            out[k] = v
    return out, encoded


def _decode_tensors(tensors: dict[str, torch.Tensor], encoded: dict[str, dict]) -> dict[str, torch.Tensor]:
    for k, info in encoded.items():
        prefix = f"{k}{_PART_SEP}"
        parts = {n[len(prefix):]: tensors.pop(n) for n in [n for n in tensors if n.startswith(prefix)]}
        if info["encoding"] not in ENCODINGS:
            raise ArtifactError(f"tensor {k!r} is stored with encoding {info['encoding']!r}, unknown to this "
                                f"condense (known: {', '.join(ENCODINGS)}); upgrade condense")
        tensors[k] = ENCODINGS.get(info["encoding"]).decode(parts, tuple(info["shape"]))
    return tensors


def _import_techniques() -> None:
    plugins.load_all()  # every declared technique registers its tensor codecs and transform replays


# -- tensors ----------------------------------------------------------------------------------------------------
def _own_state(module: nn.Module) -> dict[str, torch.Tensor]:
    out = {k: v for k, v in module._parameters.items() if v is not None}
    for k, v in module._buffers.items():
        if v is not None and k not in module._non_persistent_buffers_set:
            out[k] = v
    return out


def state_tensors(model: nn.Module) -> dict[str, torch.Tensor]:
    """Every tensor of `model` as plain (non-quantized) tensors keyed by qualified name."""
    _import_techniques()
    out: dict[str, torch.Tensor] = {}
    skip_prefixes: list[str] = []
    for name, mod in model.named_modules():
        if any(name.startswith(p) for p in skip_prefixes):
            continue
        prefix = f"{name}." if name else ""
        codec = CODECS.find(mod)
        if codec is not None:
            tensors = codec.export(mod)
            skip_prefixes.append(prefix)  # the codec owns the whole sub-tree
        else:
            tensors = _own_state(mod)
        for k, v in tensors.items():
            out[prefix + k] = v.detach()
    return out


def _load_state_tensors(model: nn.Module, tensors: dict[str, torch.Tensor]) -> None:
    used: set[str] = set()
    missing: list[str] = []
    skip_prefixes: list[str] = []
    for name, mod in model.named_modules():
        if any(name.startswith(p) for p in skip_prefixes):
            continue
        prefix = f"{name}." if name else ""
        codec = CODECS.find(mod)
        if codec is not None:
            skip_prefixes.append(prefix)
            sub = {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}
            codec.load(mod, sub)
            used.update(prefix + k for k in sub)
            continue
        for k, target in _own_state(mod).items():
            key = prefix + k
            if key not in tensors:
                missing.append(key)
                continue
            src = tensors[key]
            if tuple(src.shape) != tuple(target.shape):
                raise ArtifactError(f"tensor {key!r} has shape {tuple(src.shape)} in the artifact but "
                                    f"{tuple(target.shape)} in the model; the artifact was made from a different "
                                    "architecture: load it with the task (or model) that produced it")
            with torch.no_grad():
                target.copy_(src.to(dtype=target.dtype))
            used.add(key)
    unexpected = sorted(set(tensors) - used)
    if missing or unexpected:
        raise ArtifactError(f"artifact does not fit the model: missing {missing[:5]}{'...' if len(missing) > 5 else ''}"
                            f", unexpected {unexpected[:5]}{'...' if len(unexpected) > 5 else ''}; load it with the "
                            "task (or a fresh model) that produced it")


def _dedupe(tensors: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """safetensors refuses shared storage: keep one copy and record the others as aliases."""
    unique: dict[str, torch.Tensor] = {}
    aliases: dict[str, str] = {}
    seen: dict[tuple, str] = {}
    for k, v in tensors.items():
        key = (v.untyped_storage().data_ptr(), v.storage_offset(), tuple(v.shape), tuple(v.stride()), v.dtype)
        if v.numel() > 0 and key in seen:
            aliases[k] = seen[key]
        else:
            seen[key] = k
            unique[k] = v.contiguous().cpu()
    return unique, aliases


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


# -- concurrent saves and loads (see the module docstring) -------------------------------------------------------
def is_own_file(name: str) -> bool:
    """Whether a file name in an artifact folder is one condense writes there (metadata, weights, lock, temporaries)."""
    return (name in (META_FILE, LOCK_FILE, _LEGACY_TMP) or bool(_WEIGHTS.match(name) or _WEIGHTS_TMP.match(name)
            or _META_TMP.match(name)))


@contextlib.contextmanager
def _folder_lock(path: Path, *, shared: bool = False):
    """flock on `path/.condense.lock`: exclusive (created if missing) for a commit, shared for a read.

    Yields whether the lock is held: a reader (never writing) goes unlocked when the lock file is absent.
    """
    lock = path / LOCK_FILE
    try:
        fd = os.open(lock, os.O_RDONLY) if shared else os.open(lock, os.O_RDWR | os.O_CREAT, 0o666)
    except OSError:
        if not shared:
            raise
        yield False
        return
    try:
        fcntl.flock(fd, fcntl.LOCK_SH if shared else fcntl.LOCK_EX)
        yield True
    finally:
        os.close(fd)  # closing releases the flock


def _claim(file: Path) -> int | None:
    """An fd holding an exclusive flock on `file`, or None when a live process holds it (or it is gone)."""
    try:
        fd = os.open(file, os.O_RDONLY)
    except OSError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        os.close(fd)
        return None
    return fd


def _remove_unreferenced(path: Path, weights_name: str) -> None:
    """Under the folder lock: remove what `condense.json` (naming `weights_name`) does not reference, except the
    temporaries of saves still running (they hold a flock on theirs)."""
    for f in path.iterdir():
        name = f.name
        if _WEIGHTS.match(name) and name != weights_name or _META_TMP.match(name) or name == _LEGACY_TMP:
            f.unlink(missing_ok=True)  # every commit (the only writer of these) holds the folder lock
        elif _WEIGHTS_TMP.match(name):
            fd = _claim(f)
            if fd is not None:  # its saver is gone (killed): nobody will commit it
                try:
                    shutil.rmtree(f, ignore_errors=True) if f.is_dir() else f.unlink(missing_ok=True)
                finally:
                    os.close(fd)


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


def read_metadata(path: str | os.PathLike) -> dict[str, Any]:
    """The parsed `condense.json` of an artifact, with clear errors for a missing or corrupt one."""
    path = Path(path)
    meta_path = path / META_FILE
    try:
        text = meta_path.read_text(encoding="utf-8")
    except (FileNotFoundError, NotADirectoryError):
        hint = "the folder does not exist" if not path.exists() else f"it has no {META_FILE}"
        raise ArtifactError(f"no condense artifact at {path} ({hint}); create one with condense.save(model, path) "
                            "or `condense demo`, and check the path") from None
    except UnicodeDecodeError as e:
        raise ArtifactError(f"artifact metadata {meta_path} is corrupt ({e}); re-create the artifact") from None
    except (OSError, ValueError) as e:  # a folder named condense.json, no permission, a NUL in the path
        raise ArtifactError(f"artifact metadata {meta_path} cannot be read ({type(e).__name__}: {e}); "
                            f"{META_FILE} must be a readable file: re-create the artifact") from None
    try:
        meta = json.loads(text)
    except (ValueError, RecursionError) as e:  # bad JSON, an integer of thousands of digits, nesting 1000s deep
        raise ArtifactError(f"artifact metadata {meta_path} is corrupt ({type(e).__name__}: {e}); "
                            "re-create the artifact") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise ArtifactError(f"{meta_path} is not condense artifact metadata; re-create the artifact")
    _check_metadata(meta, meta_path)
    return meta


META_MAX_DEPTH = 64  # nesting levels condense.json may have; saved artifacts use under 10


def _check_metadata(meta: dict[str, Any], meta_path: Path) -> None:
    """Every field `load` and the CLI read has the type `save` writes; an error names the field and the fix."""
    from condense.core.validate import nesting_depth

    def bad(field: str, want: str) -> ArtifactError:
        got = meta.get(field) if "[" not in field and "." not in field else None
        shown = f", got {json.dumps(got)[:80]}" if got is not None else ""
        return ArtifactError(f"{meta_path}: {field} must be {want}{shown}; the metadata was edited or damaged: "
                             "re-create the artifact")

    if nesting_depth(meta, limit=META_MAX_DEPTH) > META_MAX_DEPTH:  # `meta` comes from json.loads: no cycles
        raise ArtifactError(f"{meta_path} is nested more than {META_MAX_DEPTH} levels deep; the metadata was edited "
                            "or damaged: re-create the artifact")
    version = meta.get("format_version", 1)
    if isinstance(version, bool) or not isinstance(version, int) or version < 1:
        raise bad("format_version", "a positive integer")
    if version > FORMAT_VERSION:
        raise ArtifactError(f"artifact format {version} is newer than this condense supports "
                            f"({FORMAT_VERSION}); upgrade condense")
    for field in ("weights_file", "weights_sha256"):
        if not isinstance(meta.get(field), str) or not meta[field]:
            raise bad(field, "a non-empty string")
    aliases = meta.get("aliases", {})
    if not isinstance(aliases, dict) or not all(isinstance(v, str) for v in aliases.values()):
        raise bad("aliases", "a mapping of tensor name to tensor name")
    encoded = meta.get("encoded", {})
    if not isinstance(encoded, dict):
        raise bad("encoded", "a mapping of tensor name to {encoding, shape}")
    for name, info in encoded.items():
        shape = info.get("shape") if isinstance(info, dict) else None
        if (not isinstance(info, dict) or not isinstance(info.get("encoding"), str) or not isinstance(shape, list)
                or len(shape) > 16
                or not all(isinstance(n, int) and not isinstance(n, bool) and 0 <= n < 2**40 for n in shape)):
            raise bad(f"encoded[{name!r}]", 'a mapping {"encoding": NAME, "shape": [sizes]}')
    task = meta.get("task")
    if task is not None:
        if not isinstance(task, dict) or not isinstance(task.get("options", {}), dict) or not any(
                isinstance(task.get(k), str) and task[k] for k in ("name", "factory")):
            raise bad("task", 'null or a mapping {"name" or "factory": TEXT, "options": {...}}')
        if not all(isinstance(k, str) for k in task.get("options", {})):
            raise bad("task.options", "a mapping with text keys")
    transforms = meta.get("transforms", [])
    if not isinstance(transforms, list):
        raise bad("transforms", "a list of {config, details}")
    for i, t in enumerate(transforms):
        if (not isinstance(t, dict) or not isinstance(t.get("config"), dict)
                or not isinstance(t["config"].get("type"), str) or not isinstance(t.get("details", {}), dict)):
            raise bad(f"transforms[{i}]", 'a mapping {"config": {"type": NAME, ...}, "details": {...}}')
    for field in ("measurements", "metadata"):
        if not isinstance(meta.get(field), (dict, type(None))):
            raise bad(field, "a mapping or null")


def load(path: str | os.PathLike, *, model: nn.Module | None = None, task: Any = None,
         device: str | torch.device = "cpu", trust_task: bool = False) -> nn.Module:
    """Load an artifact saved by `save`: rebuild the architecture, replay transforms, fill in the weights.

    Loading runs no code from the artifact: the recorded task is rebuilt only if it is a built-in one, transforms
    only by their registered handlers, weights are safetensors (no pickles) read from the artifact folder itself.

    Args:
        path: the artifact folder.
        model: a freshly built model of the original architecture (needed when the artifact records no task).
        task: the task to rebuild the model from (default: the task recorded in the artifact).
        device: where to put the loaded model.
        trust_task: rebuild a recorded `module:factory` task too (imports that module and calls the factory
            with the recorded options): only for artifacts you trust, like Hugging Face's `trust_remote_code`.
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
            from condense.tasks import task_from_spec

            task = task_from_spec(meta["task"], trust=trust_task, source=f"artifact {path}")
        elif not hasattr(task, "build_skeleton"):
            from condense.tasks import get_task

            task = get_task(task)
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
    from condense import __version__

    return __version__
