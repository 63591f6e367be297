"""A byte corpus of the installed Python's standard-library sources, split by file into train and val.

Why: a generative task needs real text that every machine already has offline. Splitting by *file* (not by
offset) keeps the held-out bytes from being near-copies of training bytes, and a stable hash of the relative
path makes the split the same on every run and machine with the same Python.

Example:
    >>> from condense.data.stdlib_source import corpus
    >>> val = corpus("val", 20_000)
    >>> val.dtype, val.shape[0] <= 20_000
    (dtype('uint8'), True)
"""
from __future__ import annotations

import hashlib
import zlib
from functools import lru_cache

import numpy as np

from condense.data.stdlib import read_source, stdlib_dir, stdlib_files
from condense.errors import CondenseError

SPLITS = ("train", "val")
VAL_PERCENT = 5  # ~5% of files are held out


def split_of(relpath: str) -> str:
    """The split ("train" or "val") a stdlib file belongs to, from a stable hash of its relative path.

    Example:
        >>> split_of("json/decoder.py") in ("train", "val")
        True
    """
    return "val" if zlib.crc32(relpath.encode("utf-8")) % 100 < VAL_PERCENT else "train"


def _order_key(relpath: str) -> str:
    # a stable shuffle: any prefix of the corpus samples the whole stdlib, not just its first packages
    return hashlib.sha1(relpath.encode("utf-8")).hexdigest()


def separator(relpath: str) -> bytes:
    """The bytes put before each file so the model sees where one file ends and the next begins."""
    return f"\n# file: {relpath}\n".encode("utf-8")


@lru_cache(maxsize=8)
def corpus(split: str, max_bytes: int | None = None) -> np.ndarray:
    """The `split` bytes as a read-only uint8 array of whole files, each prefixed by `separator()`.

    Files come in a stable shuffled order (by a hash of their relative path), so a capped corpus is a fair
    sample of the standard library; they are added until `max_bytes` is reached (the last one is cut).
    `None` means the whole split.

    Example:
        >>> corpus("train", 1000)[:9].tobytes()
        b'\\n# file: '
    """
    if split not in SPLITS:
        raise CondenseError(f"unknown corpus split {split!r}; choose one of: {', '.join(SPLITS)}")
    if max_bytes is not None and (isinstance(max_bytes, bool) or not isinstance(max_bytes, int) or max_bytes < 1):
        raise CondenseError(f"max_bytes must be a positive integer or None, got {max_bytes!r}")
    root = stdlib_dir()
    parts: list[bytes] = []
    total = 0
    rels = sorted((p.relative_to(root).as_posix() for p in stdlib_files()), key=_order_key)
    for rel in rels:
        if split_of(rel) != split:
            continue
        path = root / rel
        chunk = separator(rel) + read_source(path).encode("utf-8")
        parts.append(chunk)
        total += len(chunk)
        if max_bytes is not None and total >= max_bytes:
            break
    data = b"".join(parts)[:max_bytes]
    if len(data) < 2:
        raise CondenseError(f"the {split!r} stdlib corpus is empty; is the Python standard library installed "
                            f"under {root}?")
    arr = np.frombuffer(data, dtype=np.uint8)  # read-only: shared through the cache
    return arr
