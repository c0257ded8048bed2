"""A consumer group's backlog on a partner's feeds, for the runs (`make bench`, `make chaos`) that
start with the partner's gateway idle: counted, or skipped by moving the group to the end."""

from __future__ import annotations

from collections.abc import Iterable

from kafka import KafkaAdminClient, KafkaConsumer, TopicPartition
from kafka.structs import OffsetAndMetadata


def backlog(
    admin: KafkaAdminClient, consumer: KafkaConsumer, group: str, partitions: list[TopicPartition]
) -> tuple[dict[TopicPartition, int], int]:
    """The end offsets of `partitions` and how many messages on them `group` has not committed (all of
    a partition it never committed on)."""
    ends, starts = consumer.end_offsets(partitions), consumer.beginning_offsets(partitions)
    committed = admin.list_group_offsets({group: None}).get(group, {})
    return ends, sum(ends[tp] - (committed[tp].offset if tp in committed else starts[tp]) for tp in partitions)


def skip_to_end(admin: KafkaAdminClient, consumer: KafkaConsumer, group: str, feeds: Iterable[str]) -> int:
    """Move `group` to the end of every partition of `feeds`; how many messages it skipped. Only while
    the group has no member (the broker refuses otherwise)."""
    partitions = [TopicPartition(t, p) for t in feeds for p in consumer.partitions_for_topic(t) or ()]
    if not partitions:
        return 0
    ends, skipped = backlog(admin, consumer, group, partitions)
    if skipped:
        admin.alter_group_offsets(group, {tp: OffsetAndMetadata(ends[tp], "", -1) for tp in partitions})
    return skipped
