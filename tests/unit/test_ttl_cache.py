"""The shared TTL cache: remembers hits and misses for a while, forgets after, stays bounded."""

from __future__ import annotations

from services.common.ttl_cache import TtlCache, ttl_cached


class _Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_values_and_misses_are_remembered_until_they_expire() -> None:
    clock, loads = _Clock(), []
    cache: TtlCache[str, str | None] = TtlCache(5.0, clock=clock)

    def load(key: str) -> str | None:
        loads.append(key)
        return None if key == "wrong" else key.upper()

    for _ in range(3):
        assert cache.get("a", lambda: load("a")) == "A"
        assert cache.get("wrong", lambda: load("wrong")) is None
    assert loads == ["a", "wrong"]
    clock.now = 5.0
    assert cache.get("a", lambda: load("a")) == "A"
    assert loads == ["a", "wrong", "a"]


def test_the_oldest_entries_go_first_past_the_bound() -> None:
    cache: TtlCache[int, int] = TtlCache(60.0, max_entries=3)
    for key in range(5):
        cache.get(key, lambda key=key: key)
    assert len(cache) == 3
    assert cache.get(0, lambda: -1) == -1
    assert cache.get(4, lambda: -1) == 4


def test_ttl_cached_wraps_a_function() -> None:
    calls: list[str] = []
    double = ttl_cached(lambda s: calls.append(s) or s * 2, 60.0)
    assert double("x") == double("x") == "xx"
    assert calls == ["x"]
