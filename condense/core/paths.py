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
