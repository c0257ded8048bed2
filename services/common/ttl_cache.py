"""The one cache of configuration read from MongoDB, in two forms, for lookups that must see a change
within seconds (a revoked key, a removed partner, an edited route) but need not hit MongoDB on every
request.

`TtlCache`: entries per key (API keys), each expiring after a fixed time. Misses are cached like hits
(a flood of wrong keys costs one lookup per key per `ttl_s`), and the number of entries is bounded:
past `max_entries`, the oldest are dropped first.

`RefreshingSnapshot`: a whole table (routes, partners, profiles, calling AE titles), reloaded at most
every `refresh_s` seconds, or only when its version counter moved.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Hashable
from typing import Generic, TypeVar

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")
T = TypeVar("T")

log = logging.getLogger(__name__)


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


class RefreshingSnapshot(Generic[T]):
    """A whole table held in memory (routes, partners, profiles), checked at most every `refresh_s`
    seconds, so the hot path reads no database in between.

    `load(previous)` gets the snapshot it replaces (None the first time), so it can keep objects that
    did not change. With `version` (a cheap read of a change counter), a check loads only when the
    version differs from the one the snapshot was loaded at.

    A failed check changes nothing and raises, and the next call checks again; except an error of a
    `keep_on` type once a snapshot exists: that snapshot is served on (logged) until the next check,
    `refresh_s` later (timed from the failure). Thread-safe: one check at a time; a fresh snapshot is read
    without a lock, and with `keep_on` a stale one is served to callers while another checks.
    """

    def __init__(
        self,
        load: Callable[[T | None], T],
        refresh_s: float,
        *,
        version: Callable[[], Hashable] | None = None,
        keep_on: tuple[type[Exception], ...] = (),
        name: str = "snapshot",
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if refresh_s < 0:
            raise ValueError("refresh_s must be >= 0")
        self._load = load
        self._refresh_s = refresh_s
        self._version = version
        self._keep_on = keep_on
        self._name = name
        self._clock = clock
        # (value, version it was loaded at, checked at): swapped whole, so readers never see a mix.
        self._held: tuple[T, Hashable, float] | None = None
        # When a check last failed and its snapshot was kept: none again for `refresh_s`, `reload_if` or not.
        self._failed_at: float | None = None
        self._lock = threading.Lock()

    def get(self, reload_if: Callable[[T], bool] | None = None) -> T:
        """The snapshot, checked first if `refresh_s` has passed since the last check or if
        `reload_if(snapshot)` says it lacks something (e.g. a partner added a moment ago)."""
        now = self._clock()
        held = self._held
        if held is not None and not self._due(held, now, reload_if):
            return held[0]
        # With a snapshot that may be kept, a caller does not wait for another's check: that check may be
        # the 10 s of a database that is away, and every consumer thread stood still behind it.
        if not self._lock.acquire(blocking=held is None or not self._keep_on):
            return held[0]  # type: ignore[index]  # held is not None here
        try:
            held = self._held  # another thread may have checked while this one waited
            if held is not None and not self._due(held, now, reload_if):
                return held[0]
            try:
                return self._check(held, now)
            except self._keep_on as exc:
                if held is None:
                    raise
                log.warning(
                    "reload failed, the last snapshot is kept",
                    extra={"snapshot": self._name, "error": type(exc).__name__},
                )
                # Timed from the failure, not from the call: a check against a database that is away
                # takes its 10 s selection timeout, longer than `refresh_s`, and every call waited 10 s.
                self._failed_at = self._clock()
                self._held = (held[0], held[1], self._failed_at)
                return held[0]
        finally:
            self._lock.release()

    def refresh(self) -> T:
        """Check now, whatever the time (for a background refresher); errors are raised, `keep_on` or not."""
        with self._lock:
            return self._check(self._held, self._clock())

    def peek(self) -> T | None:
        """The snapshot held, without checking (None before the first successful load)."""
        held = self._held
        return held[0] if held is not None else None

    def _due(self, held: tuple[T, Hashable, float], now: float, reload_if: Callable[[T], bool] | None) -> bool:
        if now - held[2] >= self._refresh_s:
            return True
        failed_lately = self._failed_at is not None and now - self._failed_at < self._refresh_s
        return not failed_lately and reload_if is not None and reload_if(held[0])

    def _check(self, held: tuple[T, Hashable, float] | None, now: float) -> T:
        version = self._version() if self._version is not None else None
        if held is not None and self._version is not None and version == held[1]:
            value = held[0]
        else:
            value = self._load(held[0] if held is not None else None)
        self._held, self._failed_at = (value, version, now), None
        return value
