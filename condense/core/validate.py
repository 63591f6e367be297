"""Checks on plain data read from files (recipes, artifact metadata) before any code walks it recursively.

A YAML alias loop or JSON nested thousands of levels deep would exhaust the stack of whatever walks it later
(`copy.deepcopy`, `json.dumps`, a config builder) and end in a RecursionError far from the file that caused it.

Example:
    >>> nesting_depth({"a": [1, {"b": 2}]})
    3
"""
from __future__ import annotations

from typing import Any


class Cycle(ValueError):
    """The data contains itself (possible from a YAML alias to an enclosing anchor)."""


def nesting_depth(data: Any, *, limit: int | None = None) -> int:
    """Levels of dicts/lists/tuples in `data` (0 for a scalar), counted without recursion; stops early once past
    `limit`. Raises `Cycle` if a container contains itself."""
    deepest = 0
    stack: list[tuple[Any, int, frozenset[int]]] = [(data, 1, frozenset())]
    while stack:
        node, depth, parents = stack.pop()
        if not isinstance(node, (dict, list, tuple)):
            continue
        if id(node) in parents:
            raise Cycle("the data contains itself")
        deepest = max(deepest, depth)
        if limit is not None and deepest > limit:
            return deepest
        inner = parents | {id(node)}
        children = node.values() if isinstance(node, dict) else node
        stack.extend((c, depth + 1, inner) for c in children if isinstance(c, (dict, list, tuple)))
    return deepest
