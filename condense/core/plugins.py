"""Packages that register techniques, declared by the top-level package and imported only when needed.

`core` knows no technique: `condense/__init__.py` declares the packages (`declare`), and whatever needs every
technique registered (reading an artifact, listing a family's methods) calls `load_all()`. A third-party package
can declare itself the same way to add its transforms to the CLI, recipes and search.

Example:
    >>> from condense.core import plugins
    >>> plugins.declare("json")  # any importable package
    >>> "json" in plugins.declared()
    True
"""
from __future__ import annotations

import importlib

_PACKAGES: list[str] = []


def declare(*packages: str) -> None:
    """Add packages to import before any lookup that needs every technique (order kept, duplicates ignored)."""
    for p in packages:
        if p not in _PACKAGES:
            _PACKAGES.append(p)


def declared() -> tuple[str, ...]:
    return tuple(_PACKAGES)


def load_all() -> None:
    """Import every declared package (each registers its configs, transforms, codecs and replays)."""
    for p in list(_PACKAGES):
        importlib.import_module(p)
