"""A name -> item registry that refuses duplicates. CLI choices are read from it."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Generic, TypeVar

from steer.errors import SteerError, closest

T = TypeVar("T")


class Registry(Generic[T]):
    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._items: dict[str, T] = {}

    def register(self, name: str, item: T) -> T:
        if name in self._items:
            raise ValueError(f"A {self.kind} named {name!r} is already registered.")
        self._items[name] = item
        return item

    def get(self, name: str) -> T:
        try:
            return self._items[name]
        except KeyError:
            raise SteerError(
                f"Unknown {self.kind} {name!r}.{closest(name, self._items)} Known: {', '.join(self.names())}."
            ) from None

    def names(self) -> list[str]:
        return sorted(self._items)

    def __contains__(self, name: object) -> bool:
        return name in self._items

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())
