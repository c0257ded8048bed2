"""Which partitions one record has held for too long, and whether every batch has failed for too long
(pure; the consumer loop reports them).

A record whose handling fails "transiently" (failures.py: a broker, database or disk error) is read again
and again, and its partition waits behind it: right for an outage, which passes, but a failure that never
passes (EIO reading one damaged blob) held the partition, and on an urgent lane the lanes below it, for
ever, with the stage's health SERVING and nothing said but the same warning each second. Once the same
record has held its partition for `after_s`, the loop says so once, and the stage is not ready until the
record gets through (or the partition is no longer this process's).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Collection, Iterable, Mapping
from dataclasses import dataclass

from kafka.structs import TopicPartition

STUCK_AFTER_S = 300.0


@dataclass(frozen=True)
class Held:
    topic: str
    partition: int
    offset: int  # the record that keeps failing
    seconds: float  # how long it has held the partition


class StuckPartitions:
    def __init__(self, after_s: float = STUCK_AFTER_S, clock: Callable[[], float] = time.monotonic) -> None:
        self._after_s = after_s
        self._clock = clock
        self._held: dict[TopicPartition, tuple[int, float]] = {}  # -> (offset read again, since)
        self._reported: set[TopicPartition] = set()

    @property
    def stuck(self) -> bool:
        return bool(self._reported)

    @property
    def holding(self) -> bool:
        """Whether a partition is waiting behind a record (stuck yet or not)."""
        return bool(self._held)

    def saw(
        self,
        retried: Mapping[TopicPartition, int],
        moved: Iterable[TopicPartition],
        assigned: Collection[TopicPartition],
    ) -> tuple[list[Held], list[Held]]:
        """After a batch: the partitions read again from an offset, those that moved past theirs, and the
        partitions this process still has. Returns the partitions stuck from now on, and those freed."""
        now, moved = self._clock(), set(moved)
        freed: list[Held] = []
        for tp, (offset, since) in list(self._held.items()):
            if retried.get(tp) == offset:
                continue  # the same record again
            if tp in retried or tp in moved or tp not in assigned:  # it got through, or is another's now
                del self._held[tp]
                if tp in self._reported:
                    self._reported.discard(tp)
                    freed.append(Held(tp.topic, tp.partition, offset, now - since))
        for tp, offset in retried.items():
            self._held.setdefault(tp, (offset, now))
        newly: list[Held] = []
        for tp, (offset, since) in self._held.items():
            if tp not in self._reported and now - since >= self._after_s:
                self._reported.add(tp)
                newly.append(Held(tp.topic, tp.partition, offset, now - since))
        return newly, freed


class FailingBatches:
    """Every batch failing transiently (its write or publish: it is read again) for `after_s` with none
    through is said once, like one stuck record; a batch that gets through ends it."""

    def __init__(self, after_s: float = STUCK_AFTER_S, clock: Callable[[], float] = time.monotonic) -> None:
        self._after_s = after_s
        self._clock = clock
        self._since: float | None = None
        self.said = False

    def failed(self) -> float | None:
        """A batch failed: the seconds every batch has failed, when they reach `after_s` now (said once)."""
        now = self._clock()
        if self._since is None:
            self._since = now
        elif not self.said and now - self._since >= self._after_s:
            self.said = True
            return now - self._since
        return None

    def got_through(self) -> bool:
        """A batch got through: True when the failing had been said (now over)."""
        said, self._since, self.said = self.said, None, False
        return said
