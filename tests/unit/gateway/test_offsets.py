"""Commit bookkeeping: a partition commits only up to its last message with nothing unsettled before it."""

from __future__ import annotations

from kafka.structs import TopicPartition

from services.gateway.offsets import OffsetTracker

A, B = TopicPartition("t", 0), TopicPartition("t", 1)


def test_nothing_is_committable_before_anything_is_settled() -> None:
    tracker = OffsetTracker()
    tracker.started(A, 10)
    assert tracker.committable() == {}


def test_a_settled_message_behind_an_unsettled_one_waits_for_it() -> None:
    tracker = OffsetTracker()
    for offset in (10, 11, 12):
        tracker.started(A, offset)
    tracker.settled(A, 10)
    tracker.settled(A, 12)
    assert tracker.committable() == {A: 11}, "12 is done but 11 is not: a crash must re-read 11"
    tracker.settled(A, 11)
    assert tracker.committable() == {A: 13}


def test_partitions_are_independent_and_a_commit_is_not_repeated() -> None:
    tracker = OffsetTracker()
    tracker.started(A, 0)
    tracker.started(B, 5)
    tracker.settled(B, 5)
    assert tracker.committable() == {B: 6}
    tracker.committed({B: 6})
    assert tracker.committable() == {}
    assert tracker.in_flight() == 1


def test_in_flight_counts_what_a_crash_would_re_read() -> None:
    tracker = OffsetTracker()
    for offset in range(5):
        tracker.started(A, offset)
    for offset in range(3):
        tracker.settled(A, offset)
    assert tracker.in_flight() == 5
    tracker.committed(tracker.committable())
    assert tracker.in_flight() == 2


def test_a_revoked_partition_is_forgotten() -> None:
    tracker = OffsetTracker()
    tracker.started(A, 1)
    tracker.settled(A, 1)
    tracker.forget({A})
    assert tracker.committable() == {}
