"""A configuration store (routes, profiles) as the cached views over it read one, and the clock those
views are given: the unit tests of CachedRoutes and CachedProfiles move both by hand."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Generic, TypeVar

from pymongo.errors import AutoReconnect

T = TypeVar("T")


class FakeConfigStore(Generic[T]):
    """Items by name and a configuration counter that every save moves, reads counted; `down` makes the
    counter's read fail as MongoDB away would."""

    def __init__(self, items: Iterable[T], name: Callable[[T], str]) -> None:
        self._name = name
        self.items = {name(item): item for item in items}
        self.version, self.lists, self.down = 1, 0, False

    def config_version(self) -> int:
        if self.down:
            raise AutoReconnect("mongo down")
        return self.version

    def list(self) -> list[T]:
        self.lists += 1
        return list(self.items.values())

    def save(self, item: T) -> None:
        self.items[self._name(item)] = item
        self.version += 1


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now
