"""A small thread-safe cache whose entries expire after a fixed time: for lookups that must see a
change within seconds (a revoked key, a renamed partner) but need not hit MongoDB on every request.

Misses are cached like hits (a flood of wrong keys costs one lookup per key per `ttl_s`), and the
number of entries is bounded: past `max_entries`, the oldest are dropped first.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Hashable
from typing import Generic, TypeVar

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


class TtlCache(Generic[K, V]):
    def __init__(self, ttl_s: float, max_entries: int = 10_000, clock: Callable[[], float] = time.monotonic) -> None:
        if ttl_s < 0 or max_entries < 1:
            raise ValueError("ttl_s must be >= 0 and max_entries >= 1")
        self._ttl_s = ttl_s
        self._max = max_entries
        self._clock = clock
        # Insertion order is age order (a refreshed entry is re-inserted), so eviction pops from the front.
        self._entries: dict[K, tuple[float, V]] = {}
        self._lock = threading.Lock()

    def get(self, key: K, load: Callable[[], V]) -> V:
        """The cached value for `key`, or `load()` (called outside the lock, so a slow load blocks
        no other key; two threads missing the same key may both load, which is harmless)."""
        now = self._clock()
        with self._lock:
            cached = self._entries.get(key)
            if cached is not None and now - cached[0] < self._ttl_s:
                return cached[1]
        value = load()
        with self._lock:
            self._entries.pop(key, None)
            self._entries[key] = (now, value)
            while len(self._entries) > self._max:
                del self._entries[next(iter(self._entries))]
        return value

    def invalidate(self, key: K) -> None:
        with self._lock:
            self._entries.pop(key, None)

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()

    def __len__(self) -> int:
        return len(self._entries)


def ttl_cached(function: Callable[[K], V], ttl_s: float, max_entries: int = 10_000) -> Callable[[K], V]:
    """`function` with its results remembered for `ttl_s` seconds per argument."""
    cache: TtlCache[K, V] = TtlCache(ttl_s, max_entries)

    def cached(key: K) -> V:
        return cache.get(key, lambda: function(key))

    return cached
