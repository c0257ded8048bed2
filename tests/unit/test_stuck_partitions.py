"""A record that keeps failing "transiently" is named once it has held its partition too long, and its
partition freed once it gets through, or goes to another consumer; every batch failing for too long is
said once, and over when one gets through (pure)."""

from __future__ import annotations

from kafka.structs import TopicPartition

from services.common.stuck_partitions import FailingBatches, StuckPartitions
from tests.unit.fake_config_store import Clock

A, B = TopicPartition("t", 0), TopicPartition("t", 1)


def test_the_same_record_failing_past_the_limit_is_named_once_and_freed_when_it_gets_through() -> None:
    clock = Clock()
    stuck = StuckPartitions(after_s=300, clock=clock)
    assert stuck.saw({A: 7}, [B], {A, B}) == ([], [])
    clock.now += 299
    assert stuck.saw({A: 7}, [B], {A, B}) == ([], []) and not stuck.stuck
    clock.now += 1
    newly, freed = stuck.saw({A: 7}, [], {A, B})
    assert [(h.topic, h.partition, h.offset, h.seconds) for h in newly] == [("t", 0, 7, 300.0)] and not freed
    assert stuck.stuck
    clock.now += 60
    assert stuck.saw({A: 7}, [], {A, B}) == ([], []), "said once"
    assert stuck.saw({}, [B], {A, B}) == ([], []) and stuck.stuck, "a poll without the partition changes nothing"
    newly, freed = stuck.saw({}, [A], {A, B})
    assert not newly and [(h.offset, h.seconds) for h in freed] == [(7, 360.0)] and not stuck.stuck


def test_records_that_fail_one_after_another_each_start_their_own_time() -> None:
    clock = Clock()
    stuck = StuckPartitions(after_s=300, clock=clock)
    for offset in range(10):  # an outage: each record fails a while, then gets through
        stuck.saw({A: offset}, [], {A})
        clock.now += 100
    assert not stuck.stuck


def test_a_stuck_partition_that_goes_to_another_consumer_is_no_longer_this_ones() -> None:
    clock = Clock()
    stuck = StuckPartitions(after_s=10, clock=clock)
    stuck.saw({A: 3}, [], {A})
    clock.now += 10
    assert stuck.saw({A: 3}, [], {A})[0] and stuck.stuck
    newly, freed = stuck.saw({}, [B], {B})
    assert not newly and [h.offset for h in freed] == [3] and not stuck.stuck


def test_batches_failing_past_the_limit_are_said_once_and_over_when_one_gets_through() -> None:
    clock = Clock()
    failing = FailingBatches(after_s=300, clock=clock)
    assert failing.failed() is None
    clock.now += 299
    assert failing.failed() is None and not failing.said
    clock.now += 1
    assert failing.failed() == 300 and failing.said
    clock.now += 60
    assert failing.failed() is None, "said once"
    assert failing.got_through() and not failing.said
    assert not failing.got_through(), "nothing was said since"
    clock.now += 1000
    assert failing.failed() is None, "a new run of failures starts its own time"
