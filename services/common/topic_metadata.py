"""A consumer learns its topics' partitions before it first joins its group.

kafka-python sends a new consumer's JoinGroup at its first `poll()`, and may do so before the
metadata of the topics it subscribed to has arrived. The group's leader then assigns from no
metadata: "No partition metadata for topic", an empty assignment, and the consumer relies on a
second rebalance once the metadata comes. On a broker holding thousands of topics (the test suite's,
or a national exchange's with a feed per partner) that second rebalance sometimes never completed:
in CI a deid or gateway consumer ended outside its group and read nothing for the rest of a test
(tests/integration/test_priority_lanes.py, reproduced in about 1 run in 7 with 4,000 other topics
on the broker). With the metadata known before the first JoinGroup, the first assignment is the
right one. Why that second rebalance could fail to complete was found later, and is mended for every
rebalance in services/common/kafka_rejoin.py.

The wait is bounded: with the broker away, the stage starts as before and rides the outage out.
It uses the client's metadata cache (`KafkaConsumer._cluster`, kafka-python 3.0), which the public
`partitions_for_topic` also reads but would refresh for every topic in the cluster, without a
timeout.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable

log = logging.getLogger(__name__)

WAIT_S = 10.0
CHECK_EVERY_S = 0.05


def missing_topics(topics: Iterable[str], partitions_of: Callable[[str], object]) -> list[str]:
    """The topics whose partitions are not known yet."""
    return [topic for topic in topics if not partitions_of(topic)]


def await_topic_metadata(consumer: object, topics: Iterable[str], wait_s: float = WAIT_S) -> bool:
    """Ask for the topics' metadata and wait, at most `wait_s`, until every one has partitions.
    Returns whether they all did."""
    cluster = getattr(consumer, "_cluster", None)
    if cluster is None:  # another client version: nothing to wait on, join as before
        return True
    wanted = list(topics)
    deadline = time.monotonic() + wait_s
    while missing := missing_topics(wanted, cluster.partitions_for_topic):
        if time.monotonic() >= deadline:
            log.warning("joining before the metadata of some subscribed topics arrived", extra={"count": len(missing)})
            return False
        cluster.request_update()
        time.sleep(CHECK_EVERY_S)
    return True
