"""What a handler that writes once per batch holds: the items of the batch being handled, and one
writer thread on which a begun batch is written while the bus handles the next (bus.PipelinedFlush).

A handler keeps one `PipelinedWrites` and answers the bus's `flush`, `flush_begin`, `flush_wait` and
`discard` with `write_now`, `begin`, `wait` and `discard`. One writer thread, and the bus waiting for a
write before it begins the next, keep the writes in the order of their batches.
"""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Generic, TypeVar

T = TypeVar("T")


class PipelinedWrites(Generic[T]):
    """`write(items)` is called with each batch's items, in order, never with an empty batch."""

    def __init__(self, write: Callable[[list[T]], int], thread_name: str) -> None:
        self._write = write
        self._thread_name = thread_name
        self._pending: list[T] = []
        self._executor: ThreadPoolExecutor | None = None
        self._writing: Future[int] | None = None

    def add(self, item: T) -> None:
        self._pending.append(item)

    def write_now(self) -> int:
        """The batch written on the caller's thread, once any begun write is done; `write`'s answer."""
        self.wait()
        pending, self._pending = self._pending, []
        # Cleared first: if the write fails the bus reads the whole batch again and it is handled anew.
        return self._write(pending) if pending else 0

    def begin(self) -> None:
        """The batch handed to the writer thread; returns at once."""
        pending, self._pending = self._pending, []
        if pending:
            self._writing = self._writer().submit(self._write, pending)

    def wait(self) -> None:
        """Until the write begun last is done; raises its error (once)."""
        writing, self._writing = self._writing, None
        if writing is not None:
            writing.result()

    def discard(self) -> None:
        """Forget the batch being handled: the bus reads it again."""
        self._pending = []

    def _writer(self) -> ThreadPoolExecutor:
        if self._executor is None:
            self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=self._thread_name)
        return self._executor
