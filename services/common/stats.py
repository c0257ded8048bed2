"""Counters a stage keeps for its Control.Status reply: processed, failed, throughput and lag."""

from __future__ import annotations

import threading
import time
from collections import deque
from dataclasses import dataclass, field


@dataclass(frozen=True)
class StatusSnapshot:
    service: str
    paused: bool
    processed: int
    failed: int
    throughput_per_s: float
    lag: dict[tuple[str, int], int]
    uptime_s: int
    commit_failures: int = 0


@dataclass
class StageStats:
    """Thread-safe: the consumer loop writes, the gRPC server's threads read."""

    service: str
    window_s: float = 60.0
    started_at: float = field(default_factory=time.monotonic)
    _processed: int = 0
    _failed: int = 0
    _commit_failures: int = 0
    _recent: deque[tuple[float, int]] = field(default_factory=deque)
    _lag: dict[tuple[str, int], int] = field(default_factory=dict)
    _paused: bool = False
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def record(self, processed: int, failed: int = 0) -> None:
        now = time.monotonic()
        with self._lock:
            self._processed += processed
            self._failed += failed
            self._recent.append((now, processed))
            self._trim(now)

    def record_commit_failure(self) -> None:
        with self._lock:
            self._commit_failures += 1

    def set_lag(self, lag: dict[tuple[str, int], int]) -> None:
        with self._lock:
            self._lag = dict(lag)

    def set_paused(self, paused: bool) -> None:
        with self._lock:
            self._paused = paused

    @property
    def paused(self) -> bool:
        with self._lock:
            return self._paused

    def _trim(self, now: float) -> None:
        while self._recent and now - self._recent[0][0] > self.window_s:
            self._recent.popleft()

    def snapshot(self) -> StatusSnapshot:
        now = time.monotonic()
        with self._lock:
            self._trim(now)
            span = min(self.window_s, max(now - self.started_at, 1e-3))
            throughput = sum(n for _, n in self._recent) / span
            return StatusSnapshot(
                service=self.service,
                paused=self._paused,
                processed=self._processed,
                failed=self._failed,
                throughput_per_s=throughput,
                lag=dict(self._lag),
                uptime_s=int(now - self.started_at),
                commit_failures=self._commit_failures,
            )
