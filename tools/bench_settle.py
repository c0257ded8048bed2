"""When a `make bench` run has settled: the last stages have read and committed everything on their topics;
and when they are ready for one.

The last file reaching the partner's PACS is not the end of the pipeline's work: the partner's receipt
still goes to delivery and audit, and audit reads every topic up to a second behind (its fetch waits for
a full batch). Closing the CPU window at the last arrival left about 3% of audit's records, and their
FerretDB and PostgreSQL work, out of the figures; the window now closes when these groups have
committed the end of every partition they read.

Before a run, the same groups must already read the partner's receipts topic (`wait_reading`), so that
the rebalance which takes it up does not fall inside the measured window.

Nor is delivery's work on the receipts done when it has read them: it writes each batch as a page, and
folds the pages into its records of what it delivered later, every `IMX_DELIVERY_RETENTION_CHECK_INTERVAL_S`
(300 s), outside a run's window. `fold_receipts` does that fold at the end of the run, so its database
work is counted: 1.2-1.5 ms of FerretDB's and 0.8-1.0 ms of PostgreSQL's CPU per instance in `make
bench` on 2026-12-07 (against 0.47-0.48 and 0.46-0.49 without the fold).
"""

from __future__ import annotations

import re
import time
from collections.abc import Mapping
from typing import Any

from kafka import KafkaAdminClient, KafkaConsumer, TopicPartition
from pymongo import MongoClient

from services.audit.consumer import GROUP_ID as AUDIT_GROUP
from services.audit.records import subscription_pattern
from services.common.topics import Topics
from services.delivery.delivered import DeliveredObjects
from services.delivery.handler import delivery_pattern


def unread(
    ends: Mapping[TopicPartition, int], starts: Mapping[TopicPartition, int], committed: Mapping[TopicPartition, int]
) -> int:
    """Messages not yet committed: each partition from its committed offset (its start if the group
    never committed there) to its end (pure)."""
    return sum(max(0, end - committed.get(tp, starts.get(tp, 0))) for tp, end in ends.items())


def last_groups(topics: Topics) -> dict[str, str]:
    """The consumer groups that finish a run, with the regex of the topics each reads."""
    return {
        f"{topics.prefix}{AUDIT_GROUP}": subscription_pattern(topics),
        f"{topics.prefix}imx-delivery": delivery_pattern(topics),
    }


def wait_settled(
    bootstrap: str, topics: Topics, timeout_s: float = 30.0, client_config: Mapping[str, str] | None = None
) -> int:
    """Until every group of `last_groups` has committed everything on its topics, or `timeout_s`; the
    messages still unread then (0 when settled)."""
    admin = KafkaAdminClient(bootstrap_servers=bootstrap, **(client_config or {}))
    consumer = KafkaConsumer(bootstrap_servers=bootstrap, metrics_enabled=False, **(client_config or {}))
    groups = {group: re.compile(pattern) for group, pattern in last_groups(topics).items()}
    deadline = time.monotonic() + timeout_s
    try:
        while True:
            names = consumer.topics()
            left = 0
            for group, pattern in groups.items():
                read = [t for t in names if pattern.match(t)]
                partitions = [TopicPartition(t, p) for t in read for p in consumer.partitions_for_topic(t) or ()]
                if not partitions:
                    continue
                ends, starts = consumer.end_offsets(partitions), consumer.beginning_offsets(partitions)
                offsets = admin.list_group_offsets({group: None}).get(group, {})
                left += unread(ends, starts, {tp: meta.offset for tp, meta in offsets.items()})
            if left == 0 or time.monotonic() >= deadline:
                return left
            time.sleep(0.25)
    finally:
        consumer.close()
        admin.close()


def assigned_topics(description: Mapping[str, Any]) -> set[str]:
    """The topics assigned to any member of a group, from its entry in kafka-python's
    `KafkaAdminClient.describe_groups` (pure)."""
    return {
        entry["topic"]
        for member in description.get("members") or ()
        for entry in (member.get("member_assignment") or {}).get("assigned_partitions") or ()
    }


def wait_reading(
    bootstrap: str, topics: Topics, topic: str, timeout_s: float = 60.0, client_config: Mapping[str, str] | None = None
) -> bool:
    """Until every group of `last_groups` is stable with `topic` assigned; False after `timeout_s`.

    A partner this run added is found at each group's next look at the broker (delivery's at once, audit's
    within `partner_topic_discovery_s`), and the rebalance that follows must not fall inside the run."""
    admin = KafkaAdminClient(bootstrap_servers=bootstrap, **(client_config or {}))
    deadline = time.monotonic() + timeout_s
    try:
        while True:
            described = admin.describe_groups(list(last_groups(topics)))
            if all(d.get("group_state") == "Stable" and topic in assigned_topics(d) for d in described.values()):
                return True
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.5)
    finally:
        admin.close()


def fold_receipts(mongo_uri: str, database: str) -> int:
    """Fold the receipt pages delivery wrote into its records now, as its timer would later; how many
    receipts. The databases' work is the run's; the bench process's own share (~0.06 ms a receipt) is
    counted as the driver's, as its other reads are."""
    client: MongoClient[dict[str, Any]] = MongoClient(mongo_uri)
    try:
        return DeliveredObjects(client[database]).settle_receipts()
    finally:
        client.close()
