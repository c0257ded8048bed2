"""A stage replica with a stable name is a static member of its consumer group (KIP-345), and one that
stops on purpose still leaves its group at once.

Static membership (`group.instance.id`): the broker keeps a member's partitions for it until its session
times out, and a process that joins under the same id within that time takes them back without a
rebalance. A replica that is SIGKILLed and started again (by the devstack's supervisor, or by Kubernetes
restarting its container in the same pod, whose name it keeps) then reads again as soon as it has
started, where a dynamic member's partitions stalled until its old self's session expired. But a static
member sends no LeaveGroup when it closes (kafka-python as the Java client before Kafka 4.1's
`CloseOptions`, KIP-1092), so a replica stopped for good (a rolling update, a scale-down) would hold its
partitions for the whole session timeout. `leave_group()` sends the LeaveGroup kafka-python sends for a
dynamic member; it names the member's instance id, and the broker removes the member at once.

The id must be unique among a group's live members: a second process under the same id fences the first.
`instance_id()` takes it from the replica's name (IMX_INSTANCE_ID: the pod name in the chart, the
replica's name in the devstack) and leaves a replica without one dynamic. A fenced consumer is told so
only by the broker's answers to its heartbeats and commits; kafka-python then stops its heartbeats but
keeps fetching, so the fenced replica would read and handle every batch again, its commits refused, for
as long as it ran (seen with two members of one name). `ReplicaNameTaken` ends it instead, saying why.
"""

from __future__ import annotations

import logging
import weakref
from typing import Any

from kafka import KafkaConsumer

log = logging.getLogger(__name__)

LEAVE_TIMEOUT_MS = 5000  # a broker that does not answer by then finds the member gone at its session's end
# Consumers found fenced: their name is another replica's now, so they send no leave in it.
_fenced: weakref.WeakSet[KafkaConsumer] = weakref.WeakSet()


class ReplicaNameTaken(RuntimeError):
    """The broker fenced this consumer: another live process joined its group under its instance id.
    Retrying cannot help (the other holds the name), so the replica stops."""


def name_taken(consumer: KafkaConsumer) -> ReplicaNameTaken:
    """The error that stops `consumer`'s replica, fenced; logged here: services log an error's type and
    place, not its text (runtime.failure_site), and this one's text is what the operator needs."""
    _fenced.add(consumer)
    group_id, name = consumer.config["group_id"], consumer.config["group_instance_id"]
    log.error(
        "another replica joined the consumer group under this replica's IMX_INSTANCE_ID: "
        "each replica needs its own, and this one stops",
        extra={"group": group_id, "instance_id": name},
    )
    return ReplicaNameTaken(f"another replica joined consumer group {group_id} as {name!r}")


def instance_id(replica_name: str) -> str | None:
    """The group instance id of a replica named `replica_name`; None (a dynamic member) without a name."""
    return replica_name or None


def leave_group(consumer: KafkaConsumer, timeout_ms: int = LEAVE_TIMEOUT_MS) -> None:
    """Leave the consumer's group now, static member or not (a dynamic member leaves in `close()` anyway);
    not when it was fenced (the broker would refuse)."""
    coordinator: Any = consumer._coordinator
    if coordinator is None or coordinator.is_dynamic_member() or consumer in _fenced:
        return
    # kafka-python's own leave skips a member it takes for static; its request carries the instance id.
    coordinator.is_dynamic_member = lambda: True
    try:
        coordinator.maybe_leave_group(reason="the replica is stopping", timeout_ms=timeout_ms)
    finally:
        del coordinator.is_dynamic_member
