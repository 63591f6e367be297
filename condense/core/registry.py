"""Registries map a key (a name or a type) to a handler, so adding a technique touches no central switch."""
from __future__ import annotations

from typing import Any, Callable, Generic, Iterator, TypeVar

from condense.errors import CondenseError

V = TypeVar("V")


class Registry(Generic[V]):
    """A name -> value map with errors that list the valid names.

    Example:
        >>> r = Registry("colour")
        >>> @r.register("red")
        ... def red(): return "#f00"
        >>> r.get("red")()
        '#f00'
    """

    def __init__(self, what: str):
        self.what = what
        self._items: dict[str, V] = {}

    def register(self, key: str, value: V | None = None) -> Callable[[V], V] | V:
        if value is not None:
            self._add(key, value)
            return value

        def deco(v: V) -> V:
            self._add(key, v)
            return v

        return deco

    def _add(self, key: str, value: V) -> None:
        if key in self._items:
            raise KeyError(f"{self.what} {key!r} is registered twice")
        self._items[key] = value

    def get(self, key: str) -> V:
        try:
            return self._items[key]
        except KeyError:
            choices = ", ".join(sorted(self._items)) or "(none registered)"
            raise CondenseError(f"unknown {self.what} {key!r}; choose one of: {choices}") from None

    def __contains__(self, key: object) -> bool:
        return key in self._items

    def __iter__(self) -> Iterator[str]:
        return iter(sorted(self._items))

    def items(self) -> list[tuple[str, V]]:
        return sorted(self._items.items())


class TypeRegistry(Generic[V]):
    """A type -> handler map that resolves through the MRO (a subclass finds its base's handler)."""

    def __init__(self, what: str):
        self.what = what
        self._items: dict[type, V] = {}

    def register(self, *types: type) -> Callable[[V], V]:
        def deco(v: V) -> V:
            for t in types:
                self._items[t] = v
            return v

        return deco

    def find(self, obj_or_type: Any) -> V | None:
        t = obj_or_type if isinstance(obj_or_type, type) else type(obj_or_type)
        for base in t.__mro__:
            if base in self._items:
                return self._items[base]
        return None

    def __contains__(self, obj_or_type: Any) -> bool:
        return self.find(obj_or_type) is not None

    def types(self) -> tuple[type, ...]:
        """The registered types, in registration order."""
        return tuple(self._items)
