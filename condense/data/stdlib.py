"""The installed Python's standard-library sources, listed deterministically (a real, offline text corpus)."""
from __future__ import annotations

import sysconfig
from functools import lru_cache
from pathlib import Path

# Folders left out: tests (generated/odd strings), GUI demos, vendored third-party code and installed packages.
_EXCLUDE = {"test", "tests", "idlelib", "turtledemo", "site-packages", "lib2to3", "ensurepip", "__pycache__",
            "tkinter", "venv", "pydoc_data", "config-3.11-x86_64-linux-gnu"}


def stdlib_dir() -> Path:
    return Path(sysconfig.get_paths()["stdlib"])


@lru_cache(maxsize=1)
def stdlib_files() -> tuple[Path, ...]:
    """All standard-library `.py` files outside excluded folders, sorted by their path relative to the stdlib."""
    root = stdlib_dir()
    out = []
    for p in root.rglob("*.py"):
        rel = p.relative_to(root)
        if any(part in _EXCLUDE or part.startswith("config-") for part in rel.parts[:-1]):
            continue
        out.append(p)
    return tuple(sorted(out, key=lambda p: p.relative_to(root).as_posix()))


def read_source(path: Path) -> str:
    return path.read_text(encoding="utf-8", errors="replace")
