"""The shared caches: a TTL cache that remembers hits and misses for a while, forgets after, stays
bounded; a refreshing snapshot of a whole table that is checked at most every so often."""

from __future__ import annotations

import threading
import time

import pytest

from services.common.ttl_cache import RefreshingSnapshot, TtlCache, ttl_cached


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


class _Table:
    """A table behind a snapshot: its rows, a change counter, and a switch to make reads fail."""

    def __init__(self, *rows: str) -> None:
        self.rows, self.version, self.loads, self.failing = set(rows), 1, 0, False

    def read_version(self) -> int:
        if self.failing:
            raise ConnectionError("database away")
        return self.version

    def load(self, _previous: frozenset[str] | None) -> frozenset[str]:
        if self.failing:
            raise ConnectionError("database away")
        self.loads += 1
        return frozenset(self.rows)

    def change(self, *rows: str) -> None:
        self.rows, self.version = set(rows), self.version + 1


def test_a_snapshot_is_reloaded_at_most_every_refresh_interval() -> None:
    clock, table = _Clock(), _Table("a")
    snapshot = RefreshingSnapshot(table.load, 2.0, clock=clock)
    assert snapshot.peek() is None
    assert snapshot.get() == {"a"} and table.loads == 1
    table.change("a", "b")
    clock.now = 1.9
    assert snapshot.get() == {"a"} and table.loads == 1
    clock.now = 2.0
    assert snapshot.get() == {"a", "b"} and table.loads == 2
    assert snapshot.refresh() == {"a", "b"} and table.loads == 3, "refresh checks whatever the time"


def test_with_a_version_a_check_loads_only_when_the_version_moved_and_is_given_the_previous_snapshot() -> None:
    clock, table, previous = _Clock(), _Table("a"), []

    def load(before: frozenset[str] | None) -> frozenset[str]:
        previous.append(before)
        return table.load(before)

    snapshot = RefreshingSnapshot(load, 0.0, version=table.read_version, clock=clock)
    first = snapshot.get()
    assert snapshot.get() is first and table.loads == 1
    table.change("b")
    assert snapshot.get() == {"b"} and previous == [None, first]


def test_reload_if_forces_a_check_for_what_the_snapshot_lacks() -> None:
    clock, table = _Clock(), _Table("a")
    snapshot = RefreshingSnapshot(table.load, 60.0, clock=clock)
    snapshot.get()
    table.change("a", "new")
    assert snapshot.get(lambda rows: "a" not in rows) == {"a"} and table.loads == 1
    assert snapshot.get(lambda rows: "new" not in rows) == {"a", "new"} and table.loads == 2
    assert "gone" not in snapshot.get(lambda rows: "gone" not in rows) and table.loads == 3, "every miss checks"


def test_a_failed_check_raises_changes_nothing_and_the_next_call_checks_again() -> None:
    clock, table = _Clock(), _Table("a")
    snapshot = RefreshingSnapshot(table.load, 2.0, clock=clock)
    table.failing = True
    with pytest.raises(ConnectionError):
        snapshot.get()
    assert snapshot.peek() is None
    table.failing = False
    assert snapshot.get() == {"a"}
    clock.now = 5.0
    table.failing = True
    with pytest.raises(ConnectionError):
        snapshot.get()
    with pytest.raises(ConnectionError):
        snapshot.get()
    assert snapshot.peek() == {"a"}


def test_a_kept_error_serves_the_last_snapshot_until_the_next_check_but_never_none() -> None:
    clock, table = _Clock(), _Table("a")
    snapshot = RefreshingSnapshot(table.load, 2.0, version=table.read_version, keep_on=(ConnectionError,), clock=clock)
    table.failing = True
    with pytest.raises(ConnectionError):
        snapshot.get()  # nothing to serve yet: the caller must retry, not act on an empty table
    table.failing = False
    assert snapshot.get() == {"a"}
    table.change("b")
    table.failing = True
    clock.now = 2.0
    assert snapshot.get() == {"a"}
    table.failing = False
    clock.now = 3.9
    assert snapshot.get() == {"a"}, "a failed check counts as a check"
    clock.now = 4.0
    assert snapshot.get() == {"b"}
    with pytest.raises(ConnectionError):
        table.failing = True
        snapshot.refresh()


def test_a_check_that_fails_slowly_is_not_tried_again_at_once() -> None:
    """A check against a database that is away takes its 10 s selection timeout, longer than refresh_s:
    timed from the call, the next call was due at once, and routing waited 10 s on every instance."""
    clock, table = _Clock(), _Table("a")
    versions = 0

    def slow_version() -> int:
        nonlocal versions
        versions += 1
        if table.failing:
            clock.now += 10.0  # the server selection timeout
            raise ConnectionError("away")
        return table.version

    snapshot = RefreshingSnapshot(table.load, 2.0, version=slow_version, keep_on=(ConnectionError,), clock=clock)
    assert snapshot.get() == {"a"}
    table.failing, clock.now = True, 2.0
    for _ in range(5):
        assert snapshot.get(reload_if=lambda _rows: True) == {"a"}  # even asked to reload
    assert versions == 2, "one slow check, then the kept snapshot for refresh_s"
    clock.now += 2.0
    assert snapshot.get() == {"a"} and versions == 3


def test_a_kept_snapshot_is_served_while_another_thread_checks() -> None:
    """One consumer's slow check (a database away: 10 s) held every other caller on the lock."""
    clock, table, checking, release = _Clock(), _Table("a"), threading.Event(), threading.Event()

    def slow_version() -> int:
        if clock.now >= 2.0:
            checking.set()
            release.wait(5)
        return table.version

    snapshot = RefreshingSnapshot(table.load, 2.0, version=slow_version, keep_on=(ConnectionError,), clock=clock)
    assert snapshot.get() == {"a"}
    clock.now = 2.0
    checker = threading.Thread(target=snapshot.get)
    checker.start()
    assert checking.wait(5)
    started = time.monotonic()
    assert snapshot.get() == {"a"} and time.monotonic() - started < 1, "served, not held behind the check"
    release.set()
    checker.join(5)


def test_threads_missing_a_stale_snapshot_together_load_it_once() -> None:
    clock, table, started = _Clock(), _Table("a"), threading.Event()
    release = threading.Event()

    def slow_load(previous: frozenset[str] | None) -> frozenset[str]:
        started.set()
        release.wait(5)
        return table.load(previous)

    snapshot = RefreshingSnapshot(slow_load, 2.0, clock=clock)
    results: list[frozenset[str]] = []
    threads = [threading.Thread(target=lambda: results.append(snapshot.get())) for _ in range(8)]
    for thread in threads:
        thread.start()
    started.wait(5)
    release.set()
    for thread in threads:
        thread.join(5)
    assert results == [{"a"}] * 8 and table.loads == 1
