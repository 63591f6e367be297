"""Where condense caches trained built-in models and derived data."""
from __future__ import annotations

import os
from pathlib import Path


def cache_dir() -> Path:
    """`$CONDENSE_CACHE`, else `$XDG_CACHE_HOME/condense`, else `~/.cache/condense` (created on demand)."""
    env = os.environ.get("CONDENSE_CACHE")
    if env:
        p = Path(env)
    else:
        base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
        p = Path(base) / "condense"
    p.mkdir(parents=True, exist_ok=True)
    return p


def file_in_folder(folder: str | os.PathLike, name: object, *, what: str,
                   fix: str = "the file was edited or crafted: re-create it") -> Path:
    """`folder / name` for a file name read from a file (JSON, a pointer file): refused unless `name` is a plain
    name in `folder` (no separators, no `..`, not absolute, not a link that leads out of `folder`).

    Raises `ArtifactError` naming `what` (e.g. "weights_file in runs/x/condense.json") and `fix`.

    Example:
        >>> import tempfile
        >>> d = tempfile.mkdtemp()
        >>> file_in_folder(d, "weights.safetensors", what="weights_file").name
        'weights.safetensors'
        >>> file_in_folder(d, "../outside", what="weights_file")
        Traceback (most recent call last):
        ...
        condense.errors.ArtifactError: weights_file is '../outside', ...
    """
    from condense.errors import ArtifactError

    folder = Path(folder)
    bad = (not isinstance(name, str) or name in ("", ".", "..") or "/" in name or "\\" in name or "\0" in name
           or os.path.isabs(name) or Path(name).name != name or len(name.encode("utf-8", "replace")) > 255)
    if not bad:
        path = folder / name
        try:
            bad = path.is_symlink() and path.resolve().parent != folder.resolve()
        except (OSError, RuntimeError):  # a link loop, a name the file system refuses
            bad = True
    if bad:
        shown = repr(name) if len(repr(name)) <= 300 else repr(name)[:297] + "..."
        raise ArtifactError(f"{what} is {shown}, not a plain name inside {folder}; condense reads only files "
                            f"in the folder itself; {fix}")
    return folder / name
