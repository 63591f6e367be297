"""The files of an artifact folder and the locks that make concurrent saves and loads safe.

See `condense.core.artifact` for the protocol: savers commit under an exclusive flock on `.condense.lock`,
readers hold a shared one, and a save's temporary weights folder is flocked by its saver while it lives.
"""
from __future__ import annotations

import contextlib
import fcntl
import os
import re
import shutil
from pathlib import Path

META_FILE = "condense.json"
LOCK_FILE = ".condense.lock"
_WEIGHTS = re.compile(r"^weights-[0-9a-f]+\.safetensors$")
_WEIGHTS_TMP = re.compile(r"^\.weights-.*\.tmp$")
_META_TMP = re.compile(r"^\.condense\.json\..*\.tmp$")  # atomic_write's temporaries of condense.json
_LEGACY_TMP = ".weights.incoming.safetensors"  # condense <= 0.x wrote every save to this one name


# -- concurrent saves and loads (see condense.core.artifact) -------------------------------------------------------
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
