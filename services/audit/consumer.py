"""The audit stage: every message on every imx topic becomes one audit record.

Audit publishes nothing downstream. Records are buffered while the bus runs the handler over a batch
and inserted with one write in `flush()`, which the bus calls before it commits the batch's offsets; a
crash in between replays the batch, and the replay inserts nothing new (records are keyed by event id).
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime

from services.audit.records import AuditRecord, build_record, subscription_pattern
from services.audit.store import RecordWriter
from services.common.messages import IncomingMessage, OutgoingMessage
from services.common.runtime import StageSpec
from services.common.topics import Topics

STAGE = "audit"
GROUP_ID = "imx-audit"


def utc_now() -> datetime:
    return datetime.now(UTC)


def audit_stage_spec(topics: Topics) -> StageSpec:
    """One regex subscription: the pipeline topics and every partner topic, existing or created later.

    The group carries the topic prefix too, so deployments (and tests) sharing a broker never share a group.
    """
    return StageSpec(name=STAGE, group_id=f"{topics.prefix}{GROUP_ID}", pattern=subscription_pattern(topics))


class AuditHandler:
    """A bus handler (IncomingMessage → outputs) with the bus's optional `flush()` batch hook.

    With `batched=False` every record is written as it is handled, for a bus that does not call flush.
    """

    def __init__(
        self, store: RecordWriter, topics: Topics, clock: Callable[[], datetime] = utc_now, batched: bool = True
    ) -> None:
        self._store = store
        self._topics = topics
        self._clock = clock
        self._batched = batched
        self._pending: list[AuditRecord] = []

    def __call__(self, message: IncomingMessage) -> list[OutgoingMessage]:
        record = build_record(message, self._topics, self._clock())
        if self._batched:
            self._pending.append(record)
        else:
            self._store.insert([record])
        return []

    def flush(self) -> int:
        """Insert what the batch produced; returns how many records were new."""
        pending, self._pending = self._pending, []
        # Cleared first: if the insert fails the bus reads the whole batch again and rebuilds the records.
        return self._store.insert(pending) if pending else 0
