"""The audit stage: every message on every imx topic becomes one audit record.

Audit publishes nothing downstream. Records are buffered while the bus runs the handler over a batch
and written in `flush()` (or `flush_begin()`, on a writer thread, while the bus handles the next batch),
which completes before the bus commits the batch's offsets: first to the store, then to each sink in
order (e.g. a tamper-evident log). A crash in between replays the batch, so the store and every sink
must take the same records again without harm (records are keyed by event id).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import Protocol

from services.audit.records import AuditRecord, build_record, subscription_pattern
from services.audit.store import RecordWriter
from services.common.messages import IncomingMessage, OutgoingMessage
from services.common.pipelined_writes import PipelinedWrites
from services.common.runtime import StageSpec
from services.common.topics import Topics

STAGE = "audit"
GROUP_ID = "imx-audit"
# A batch costs audit about the same database round trips whatever its size (pages, counters, journal,
# the tamper log's claims, leaves and head), so audit lets the broker gather up to a second of events
# per fetch rather than the pipeline stages' 100 ms: its records are written up to a second later, and
# nothing is committed before they are stored, as before.
FETCH_MAX_WAIT_MS = 1000
FETCH_MIN_BYTES = 1024 * 1024


def utc_now() -> datetime:
    return datetime.now(UTC)


def audit_stage_spec(topics: Topics) -> StageSpec:
    """One regex subscription: the pipeline topics and every partner's receipts topic, existing or created
    later (partner feeds are not read: the stages' own events say what was delivered).

    The group carries the topic prefix too, so deployments (and tests) sharing a broker never share a group.
    """
    return StageSpec(
        name=STAGE,
        group_id=f"{topics.prefix}{GROUP_ID}",
        pattern=subscription_pattern(topics),
        fetch_max_wait_ms=FETCH_MAX_WAIT_MS,
        fetch_min_bytes=FETCH_MIN_BYTES,
    )


class RecordSink(Protocol):
    """Another destination of every batch's records, written after the store (same batch, same order).

    Idempotent like the store: a replayed batch comes again, possibly in a different composition. If
    `write` raises, the batch is not committed and is read again (TransientError for an outage)."""

    def write(self, records: Sequence[AuditRecord]) -> None: ...


class AuditHandler:
    """A bus handler (IncomingMessage → outputs) with the bus's optional `flush()` batch hook.

    With `batched=False` every record is written as it is handled, for a bus that does not call flush.
    `sinks` get every record after the store has it; `watch`, every record as it is built.
    """

    def __init__(
        self,
        store: RecordWriter,
        topics: Topics,
        clock: Callable[[], datetime] = utc_now,
        batched: bool = True,
        sinks: Sequence[RecordSink] = (),
        watch: Callable[[AuditRecord], None] | None = None,
    ) -> None:
        self._store = store
        self._watch = watch  # sees every record as it is built (receipts_watch.py)
        self._sinks = tuple(sinks)
        self._topics = topics
        self._clock = clock
        self._batched = batched
        self._batch: PipelinedWrites[AuditRecord] = PipelinedWrites(self._write, "audit-writer")

    def __call__(self, message: IncomingMessage) -> list[OutgoingMessage]:
        record = build_record(message, self._topics, self._clock())
        if self._watch is not None:
            self._watch(record)
        if self._batched:
            self._batch.add(record)
        else:
            self._write([record])
        return []

    def flush(self) -> int:
        """Write what the batch produced; returns how many records were new to the store."""
        return self._batch.write_now()

    def flush_begin(self) -> None:
        """`flush` on the writer thread, so that the bus reads and handles the next batch meanwhile
        (bus.PipelinedFlush): the audit consumer spent more than half of a busy batch waiting for the
        database, with a core idle. The bus waits (`flush_wait`) before it begins the next write."""
        self._batch.begin()

    def flush_wait(self) -> None:
        self._batch.wait()

    def discard(self) -> None:
        self._batch.discard()

    def _write(self, records: list[AuditRecord]) -> int:
        new = self._store.insert(records)
        for sink in self._sinks:
            sink.write(records)
        return new
