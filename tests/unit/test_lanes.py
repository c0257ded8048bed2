"""Priority lanes: which topic each class takes, and which partitions a consumer holds back."""

from __future__ import annotations

import pytest
from kafka.admin import ACLOperation
from kafka.structs import TopicPartition

from services.common.kafka_access import partner_acls
from services.common.lanes import LaneGate, held_back, lane_for, least_urgent
from services.common.topics import Topics
from services.gateway.offsets import OffsetTracker
from services.proto_gen.imx.v1 import events_pb2

T = Topics("t.")
URGENT = [TopicPartition("t.imx.routed.urgent.v1", p) for p in range(2)]
ROUTINE = [TopicPartition("t.imx.routed.v1", p) for p in range(2)]
BULK = [TopicPartition("t.imx.routed.bulk.v1", p) for p in range(2)]
OTHER = TopicPartition("t.imx.receipts.lab.v1", 0)
LANES = {**dict.fromkeys(URGENT, "urgent"), **dict.fromkeys(ROUTINE, "routine"), **dict.fromkeys(BULK, "bulk")}


def test_laned_topics_are_named_beside_the_routine_one() -> None:
    assert T.routed_lanes == ["t.imx.routed.urgent.v1", "t.imx.routed.v1", "t.imx.routed.bulk.v1"]
    assert T.prepared_lanes == ["t.imx.prepared.urgent.v1", "t.imx.prepared.v1", "t.imx.prepared.bulk.v1"]
    assert T.partner_lanes("lab") == [
        "t.imx.partner.lab.urgent.v1",
        "t.imx.partner.lab.v1",
        "t.imx.partner.lab.bulk.v1",
    ]
    assert set(T.routed_lanes + T.prepared_lanes) <= set(T.pipeline()), "created with the pipeline, read by audit"
    with pytest.raises(ValueError):
        Topics.lane(T.routed, "express")


def test_a_topics_lane_is_parsed_not_guessed_from_its_suffix() -> None:
    assert [T.lane_of(t) for t in T.routed_lanes] == ["urgent", "routine", "bulk"]
    assert [T.lane_of(t) for t in T.partner_lanes("bulk")] == ["urgent", "routine", "bulk"]
    assert T.lane_of("t.imx.partner.bulk.v1") == "routine", "the routine feed of a partner called bulk"
    for other in ("t.imx.ingested.v1", "t.imx.outcomes.v1", "t.imx.receipts.lab.v1", "imx.routed.urgent.v1"):
        assert T.lane_of(other) is None, other


def test_each_class_has_its_lane_and_an_unset_class_is_routine() -> None:
    assert lane_for(events_pb2.PRIORITY_CLASS_URGENT) == "urgent"
    assert lane_for(events_pb2.PRIORITY_CLASS_ROUTINE) == "routine"
    assert lane_for(events_pb2.PRIORITY_CLASS_UNSPECIFIED) == "routine"
    assert lane_for(events_pb2.PRIORITY_CLASS_BULK) == "bulk"
    assert least_urgent([events_pb2.PRIORITY_CLASS_URGENT, events_pb2.PRIORITY_CLASS_BULK]) == (
        events_pb2.PRIORITY_CLASS_BULK
    )
    assert least_urgent([events_pb2.PRIORITY_CLASS_URGENT]) == events_pb2.PRIORITY_CLASS_URGENT
    assert least_urgent([]) == events_pb2.PRIORITY_CLASS_ROUTINE


def test_an_urgent_backlog_holds_routine_and_bulk_back() -> None:
    assert held_back(LANES, {URGENT[1]: 3, ROUTINE[0]: 500, BULK[0]: 5000}) == set(ROUTINE + BULK)


def test_a_routine_backlog_holds_only_bulk_back() -> None:
    assert held_back(LANES, {URGENT[0]: 0, URGENT[1]: 0, ROUTINE[1]: 1, BULK[0]: 5000}) == set(BULK)


def test_nothing_is_held_back_without_a_higher_backlog() -> None:
    assert held_back(LANES, {URGENT[0]: 0, ROUTINE[0]: 0, BULK[0]: 5000}) == set()
    assert held_back(LANES, {}) == set(), "unknown backlogs hold nothing back"


def test_topics_without_lanes_are_never_held_back() -> None:
    lanes = {**LANES}
    assert OTHER not in held_back(lanes, {URGENT[0]: 1, OTHER: 9})
    assert held_back(lanes, {OTHER: 9}) == set(), "a backlog on a topic without lanes holds nothing back"


class FakeConsumer:
    """The consumer calls the gate makes, with positions and end offsets set by the test."""

    def __init__(self, assigned: list[TopicPartition]) -> None:
        self.assigned = set(assigned)
        self.paused_set: set[TopicPartition] = set()
        self.positions = dict.fromkeys(assigned, 0)
        self.highwaters: dict[TopicPartition, int] = dict.fromkeys(assigned, 0)
        self.ends: dict[TopicPartition, int] = {}
        self.probes = 0

    def assignment(self) -> set[TopicPartition]:
        return set(self.assigned)

    def paused(self) -> set[TopicPartition]:
        return self.paused_set & self.assigned

    def pause(self, *partitions: TopicPartition) -> None:
        self.paused_set |= set(partitions)

    def resume(self, *partitions: TopicPartition) -> None:
        self.paused_set -= set(partitions)

    def highwater(self, partition: TopicPartition) -> int | None:
        return self.highwaters.get(partition)

    def position(self, partition: TopicPartition, timeout_ms: int | None = None) -> int | None:
        return self.positions.get(partition)

    def end_offsets(self, partitions: list[TopicPartition], timeout_ms: int | None = None) -> dict[TopicPartition, int]:
        self.probes += 1
        return {tp: self.ends[tp] for tp in partitions if tp in self.ends}


def test_the_gate_pauses_lower_lanes_while_urgent_work_waits_and_resumes_them_after() -> None:
    consumer = FakeConsumer(URGENT + BULK + [OTHER])
    gate = LaneGate(consumer, T.lane_of)
    assert gate.apply() == set() and consumer.paused() == set()
    consumer.highwaters[URGENT[0]] = 50  # seen in a fetch response
    assert gate.apply() == set(BULK) and consumer.paused() == set(BULK)
    consumer.positions[URGENT[0]] = 50  # drained
    assert gate.apply() == set() and consumer.paused() == set()


def test_a_busy_consumer_asks_for_the_higher_lanes_end_offsets_at_most_every_interval() -> None:
    consumer = FakeConsumer(URGENT + BULK)
    gate = LaneGate(consumer, T.lane_of, probe_interval_s=60)
    consumer.ends[URGENT[1]] = 7  # arrived, but not yet in any fetch response the consumer parsed
    assert gate.apply(busy=False) == set() and consumer.probes == 0, "an idle consumer fetches every lane anyway"
    assert gate.apply(busy=True) == set(BULK) and consumer.probes == 1
    assert gate.outranked("bulk") and not gate.outranked("urgent")
    assert consumer.probes == 1, "within the interval the last figures are used"


def test_an_operator_pause_holds_everything_and_a_revoked_partition_is_not_kept_paused() -> None:
    consumer = FakeConsumer(URGENT + BULK + [OTHER])
    gate = LaneGate(consumer, T.lane_of)
    assert gate.apply(paused=True) == consumer.assigned
    consumer.assigned -= {URGENT[0]}  # a rebalance took it away
    consumer.highwaters[URGENT[1]] = 1
    assert gate.apply() == set(BULK)
    assert consumer.paused() == set(BULK), "everything else is resumed, whatever paused it"


def test_a_partners_user_may_read_every_lane_of_its_feed_and_no_other_topic() -> None:
    acls = partner_acls("lab", T.partner("lab"), T.receipts("lab"))
    readable = {a.resource_pattern.resource_name for a in acls if a.operation == ACLOperation.READ}
    described = {a.resource_pattern.resource_name for a in acls if a.operation == ACLOperation.DESCRIBE}
    assert set(T.partner_lanes("lab")) <= readable and set(T.partner_lanes("lab")) <= described
    assert readable - set(T.partner_lanes("lab")) == {"lab."}, "and its consumer groups"


def test_work_put_back_unhandled_does_not_hold_back_the_commit_of_what_was_settled() -> None:
    tracker = OffsetTracker()
    tp = BULK[0]
    for offset in (10, 11, 12):
        tracker.started(tp, offset)
    tracker.settled(tp, 10)
    tracker.abandoned(tp, 11)
    tracker.abandoned(tp, 12)
    assert tracker.committable() == {tp: 11}
    assert tracker.in_flight() == 1
