"""kafka-python 3.0.12 can drop a rebalance's result and leave a consumer outside its group for ever; this
mends it.

A consumer joins its group in a task on its client's I/O loop (JoinGroup, then SyncGroup:
`BaseCoordinator._do_join_and_sync_async`); each `poll()` awaits that task until its own timeout and
leaves it running when the timeout comes first. The next `poll()` awaits it again only if the
coordinator still `need_rejoin()`s. When the rebalance was asked for by a change of metadata (a new
topic matching a pattern subscription, or partitions added to a subscribed topic), `need_rejoin()` is
true because the leader's last assignment was made from older metadata; but the leader's assignment
in the running task records the new metadata, so once the task has got that far `need_rejoin()` is
false. If that happens between two polls (a stage handling its batch, or a poll whose time went on
refreshing the metadata of thousands of topics), no poll awaits the task again: the assignment it
brought is never applied, heartbeats stay off (they are paused for the join), the broker drops the
member after its session timeout, and the consumer keeps its old partitions and never reads the new
topic. And when a poll does come back to a finished task, it sends a fresh JoinGroup and drops the
finished one's result (by a reading of the code, not seen: a consumer whose joins always outlast its
polls would do that without end).

Found by the audit flow test's late partner topic (tests/integration/audit/test_audit_flow.py, one
failure in ~35 CI runs) and reproduced on a broker holding 3,000 other topics: in three of ten trials a
pattern consumer never read a topic created after it joined (45 s each); with this mend, in none of six.
tests/integration/test_kafka_rejoin.py makes the join finish between polls every time.
services/common/topic_metadata.py avoided one case of it, a first assignment made before the metadata
came.

`mend()` keeps `need_rejoin()` true while a join's result has not been applied, and applies a finished
join's result as kafka-python does when its poll is there to see it finish. It does nothing when called
again. services/common/__init__.py applies it, so every consumer the services and tools create has it.
"""

from __future__ import annotations

from typing import Any

from kafka.coordinator.base import BaseCoordinator
from kafka.coordinator.consumer import ConsumerCoordinator
from kafka.structs import MemberState

_MENDED = "_imx_applies_every_join"


def mend() -> None:
    """Patch `ConsumerCoordinator.need_rejoin` and `BaseCoordinator.join_group_async` (kafka-python 3.0)."""
    need_rejoin = ConsumerCoordinator.need_rejoin
    if getattr(need_rejoin, _MENDED, False):
        return
    join_group_async = BaseCoordinator.join_group_async

    def need_rejoin_until_applied(self: ConsumerCoordinator) -> bool:
        return bool(need_rejoin(self)) or self._join_task is not None

    async def join_group_applying_finished(self: BaseCoordinator, timeout_ms: Any = None) -> bool:
        finished = self._join_task
        if finished is not None and finished.is_done and finished.succeeded():
            await _apply_join(self, finished.value)
            return True
        return bool(await join_group_async(self, timeout_ms))

    setattr(need_rejoin_until_applied, _MENDED, True)
    ConsumerCoordinator.need_rejoin = need_rejoin_until_applied
    BaseCoordinator.join_group_async = join_group_applying_finished


async def _apply_join(coordinator: BaseCoordinator, assignment: bytes) -> None:
    """What `join_group_async` does once the join task it awaited returns (kafka-python 3.0.12)."""
    coordinator._join_task = None
    with coordinator._lock:
        coordinator.rejoining = False
        coordinator.rejoin_needed = False
        coordinator.state = MemberState.STABLE
        coordinator._enable_heartbeat()
    generation = coordinator._generation
    await coordinator._on_join_complete_async(
        generation.generation_id, generation.member_id, generation.protocol, assignment
    )
