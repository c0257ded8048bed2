"""The bench's CPU window closes when delivery and audit have committed everything on their topics."""

from __future__ import annotations

import re

from kafka import TopicPartition

from services.common.topics import Topics
from tools.bench_settle import assigned_topics, last_groups, unread

A0, A1 = TopicPartition("imx.ingested.v1", 0), TopicPartition("imx.ingested.v1", 1)


def test_a_group_that_committed_every_end_has_nothing_unread() -> None:
    assert unread({A0: 10, A1: 4}, {A0: 0, A1: 0}, {A0: 10, A1: 4}) == 0


def test_what_is_past_the_committed_offset_is_unread() -> None:
    assert unread({A0: 10, A1: 4}, {A0: 0, A1: 0}, {A0: 7, A1: 4}) == 3


def test_a_partition_never_committed_counts_from_its_start() -> None:
    # e.g. audit has not yet committed anything on a partner's new receipts topic
    assert unread({A0: 10, A1: 4}, {A0: 0, A1: 1}, {A0: 10}) == 3


def test_the_last_groups_are_audit_on_every_topic_and_delivery_on_the_receipts() -> None:
    topics = Topics("bench.")
    groups = {group: re.compile(pattern) for group, pattern in last_groups(topics).items()}
    assert set(groups) == {"bench.imx-audit", "bench.imx-delivery"}
    receipts = topics.receipts("partner-a")
    assert groups["bench.imx-audit"].match(topics.ingested)
    assert groups["bench.imx-audit"].match(receipts)
    assert groups["bench.imx-delivery"].match(receipts)
    assert not groups["bench.imx-delivery"].match(topics.ingested)


def _member(*topics: str) -> dict[str, object]:
    """A member as kafka-python's describe_groups gives it (shape read from a devstack broker)."""
    assigned = [{"topic": t, "partitions": [0, 1, 2]} for t in topics]
    return {"member_id": "m", "member_assignment": {"assigned_partitions": assigned, "user_data": ""}}


def test_a_groups_assigned_topics_are_those_of_all_its_members() -> None:
    group = {"group_state": "Stable", "members": [_member("imx.prepared.v1"), _member("imx.receipts.p.v1")]}
    assert assigned_topics(group) == {"imx.prepared.v1", "imx.receipts.p.v1"}


def test_a_group_without_members_or_between_assignments_has_no_topics() -> None:
    assert assigned_topics({"group_state": "Empty", "members": []}) == set()
    assert assigned_topics({"group_state": "PreparingRebalance", "members": [{"member_assignment": None}]}) == set()
