"""The dead-letter topic read whole for the blob lifecycle (services/common/dead_letter_topic.py
`read_whole`): every letter below the ends taken when the read began, or IncompleteRead, never a partial
read taken for the whole. A consumer stand-in here; the broker's own cases are integration tests."""

from __future__ import annotations

import threading
from dataclasses import dataclass

import pytest
from kafka.structs import TopicPartition

from services.common.dead_letter_topic import DeadLetterTopic, IncompleteRead

TOPIC = "imx.deadletter.v1"


@dataclass(frozen=True)
class Letter:
    partition: int
    offset: int


class Partitions:
    """A consumer of `TOPIC` whose partition p holds offsets [first, end): each poll hands every partition
    not paused what it has past its position; `arriving` partitions gain a letter per poll, `stuck` ones
    never hand anything (a leader away)."""

    def __init__(
        self,
        logs: dict[int, tuple[int, int]],
        arriving: frozenset[int] = frozenset(),
        stuck: frozenset[int] = frozenset(),
    ) -> None:
        self.first = {p: first for p, (first, _) in logs.items()}
        self.end = {p: end for p, (_, end) in logs.items()}
        self.arriving, self.stuck = arriving, stuck
        self.position_of: dict[int, int] = {}
        self.paused: set[int] = set()

    def partitions_for_topic(self, topic: str) -> set[int] | None:
        return set(self.end) or None

    def assign(self, partitions: list[TopicPartition]) -> None:
        pass

    def seek_to_beginning(self, *partitions: TopicPartition) -> None:
        self.position_of = {tp.partition: self.first[tp.partition] for tp in partitions}

    def end_offsets(self, partitions: list[TopicPartition]) -> dict[TopicPartition, int]:
        return {tp: self.end[tp.partition] for tp in partitions}

    def position(self, tp: TopicPartition) -> int:
        return self.position_of[tp.partition]

    def pause(self, *partitions: TopicPartition) -> None:
        self.paused |= {tp.partition for tp in partitions}

    def poll(self, timeout_ms: int) -> dict[TopicPartition, list[Letter]]:
        handed = {}
        for p in sorted(self.end):
            if p in self.stuck or p in self.paused:
                continue
            if p in self.arriving:
                self.end[p] += 1
            letters = [Letter(p, o) for o in range(self.position_of[p], self.end[p])]
            if letters:
                handed[TopicPartition(TOPIC, p)] = letters
                self.position_of[p] = self.end[p]
        return handed

    def close(self, autocommit: bool) -> None:
        pass


def _reader(consumer: Partitions) -> DeadLetterTopic:
    topic = DeadLetterTopic("127.0.0.1:1", TOPIC)
    topic._consumer = lambda **options: consumer  # type: ignore[method-assign,assignment,return-value]
    return topic


def test_every_letter_below_the_ends_is_handed_on_once() -> None:
    seen: list[Letter] = []
    consumer = Partitions({0: (0, 3), 1: (2, 5), 2: (4, 4)}, arriving=frozenset({0}))
    assert _reader(consumer).read_whole(seen.append) == 6
    assert sorted((s.partition, s.offset) for s in seen) == [(0, 0), (0, 1), (0, 2), (1, 2), (1, 3), (1, 4)]


def test_a_partition_that_never_moves_fails_the_read_though_letters_keep_arriving_elsewhere() -> None:
    """Letters arriving on another partition kept a read with one partition stuck going for ever: every
    poll fetched them (past the ends, thrown away) and counted as progress."""
    consumer = Partitions({0: (0, 3), 1: (0, 3)}, arriving=frozenset({0}), stuck=frozenset({1}))
    outcome: list[BaseException] = []

    def read() -> None:
        try:
            _reader(consumer).read_whole(lambda letter: None, stalled_after_s=0.3)
        except IncompleteRead as error:
            outcome.append(error)

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    reader.join(10)
    assert not reader.is_alive(), "the read never ended"
    assert outcome and "nothing read" in str(outcome[0])
    assert consumer.paused == {0}, "a partition read to its end is not fetched again"


def test_an_unknown_topic_is_not_an_empty_one() -> None:
    with pytest.raises(IncompleteRead, match="unknown"):
        _reader(Partitions({})).read_whole(lambda letter: None)
