"""The audit handler: one record per message, written once per batch, replays add nothing."""

from __future__ import annotations

import threading
from collections.abc import Sequence
from datetime import UTC, datetime

import pytest

from services.audit.consumer import AuditHandler, audit_stage_spec
from services.audit.records import AuditRecord
from services.common.bus import flush_handler, run_handler_over_batch
from services.common.messages import TransientError
from services.common.topics import Topics
from tests.unit.audit.builders import Instance, incoming, journey
from tests.unit.audit.fake_store import InMemoryAuditStore

TOPICS = Topics("t-c.")


def _handler(store: InMemoryAuditStore, batched: bool = True) -> AuditHandler:
    return AuditHandler(store, TOPICS, clock=lambda: datetime(2026, 2, 1, tzinfo=UTC), batched=batched)


def test_a_batch_is_written_with_one_insert_when_the_bus_flushes() -> None:
    store = InMemoryAuditStore()
    handler = _handler(store)
    batch = [incoming(m, offset=i) for i, m in enumerate(journey(TOPICS, Instance()))]
    result = run_handler_over_batch(batch, handler, TOPICS.dead_letter, "audit")
    assert result.outputs == [] and result.processed == 5
    assert store.records == {}, "nothing is written before the flush"
    flush_handler(handler)
    assert (len(store.records), store.inserts) == (5, 1)


def test_replaying_a_batch_adds_no_records() -> None:
    store = InMemoryAuditStore()
    handler = _handler(store)
    batch = [incoming(m, offset=i) for i, m in enumerate(journey(TOPICS, Instance()))]
    for _ in range(2):
        run_handler_over_batch(batch, handler, TOPICS.dead_letter, "audit")
    assert handler.flush() == 5
    run_handler_over_batch(batch, handler, TOPICS.dead_letter, "audit")
    assert handler.flush() == 0
    assert len(store.records) == 5


def test_an_undecodable_event_is_dead_lettered_and_the_rest_recorded() -> None:
    store = InMemoryAuditStore()
    handler = _handler(store)
    good = [incoming(m, offset=i) for i, m in enumerate(journey(TOPICS, Instance())[:2])]
    bad = incoming(journey(TOPICS, Instance())[2], offset=9)
    bad = type(bad)(bad.topic, 0, 9, None, b"\xff\xff\xff", {})
    result = run_handler_over_batch([good[0], bad, good[1]], handler, TOPICS.dead_letter, "audit")
    handler.flush()
    assert [o.topic for o in result.outputs] == [TOPICS.dead_letter]
    assert len(store.records) == 2


def test_unbatched_writes_each_record_as_it_comes() -> None:
    store = InMemoryAuditStore()
    handler = _handler(store, batched=False)
    handler(incoming(journey(TOPICS, Instance())[0]))
    assert len(store.records) == 1 and handler.flush() == 0


def test_the_stage_is_one_group_reading_every_topic_by_pattern() -> None:
    spec = audit_stage_spec(TOPICS)
    assert (spec.name, spec.group_id, tuple(spec.topics)) == ("audit", "t-c.imx-audit", ())
    assert audit_stage_spec(Topics()).group_id == "imx-audit"
    assert spec.pattern and spec.pattern.startswith("^")


class _Sink:
    def __init__(self, store: InMemoryAuditStore, fail: bool = False) -> None:
        self.batches: list[list[str]] = []
        self.store_had: list[int] = []
        self._store, self._fail = store, fail

    def write(self, records: Sequence[AuditRecord]) -> None:
        self.store_had.append(len(self._store.records))
        if self._fail:
            raise TransientError("sink unavailable")
        self.batches.append([r["_id"] for r in records])


def test_every_sink_gets_the_batch_after_the_store() -> None:
    store = InMemoryAuditStore()
    first, second = _Sink(store), _Sink(store)
    handler = AuditHandler(store, TOPICS, clock=lambda: datetime(2026, 2, 1, tzinfo=UTC), sinks=[first, second])
    batch = [incoming(m, offset=i) for i, m in enumerate(journey(TOPICS, Instance()))]
    run_handler_over_batch(batch, handler, TOPICS.dead_letter, "audit")
    assert first.batches == [] and handler.flush() == 5
    assert first.batches == second.batches == [list(store.records)]
    assert first.store_had == [5], "the store had the records before the sink was called"


def test_a_failing_sink_fails_the_flush_so_the_batch_is_read_again() -> None:
    store = InMemoryAuditStore()
    handler = AuditHandler(store, TOPICS, sinks=[_Sink(store, fail=True)])
    run_handler_over_batch([incoming(journey(TOPICS, Instance())[0])], handler, TOPICS.dead_letter, "audit")
    with pytest.raises(TransientError):
        handler.flush()


class _ThreadNoting(InMemoryAuditStore):
    def __init__(self) -> None:
        super().__init__()
        self.threads: list[str] = []

    def insert(self, records: Sequence[AuditRecord]) -> int:
        self.threads.append(threading.current_thread().name)
        return super().insert(records)


def test_a_begun_flush_writes_on_the_writer_thread_and_the_wait_returns_once_written() -> None:
    store = _ThreadNoting()
    handler = _handler(store)
    run_handler_over_batch([incoming(journey(TOPICS, Instance())[0])], handler, TOPICS.dead_letter, "audit")
    handler.flush_begin()
    run_handler_over_batch([incoming(journey(TOPICS, Instance())[1], offset=1)], handler, TOPICS.dead_letter, "audit")
    handler.flush_wait()
    assert len(store.records) == 1, "the second batch waits for its own flush"
    handler.flush_begin()
    handler.flush_wait()
    assert len(store.records) == 2 and store.inserts == 2
    assert all(name.startswith("audit-writer") for name in store.threads)


def test_a_begun_flush_that_fails_raises_at_the_wait_once_and_discard_forgets_the_next_batch() -> None:
    store = InMemoryAuditStore()
    handler = AuditHandler(store, TOPICS, sinks=[_Sink(store, fail=True)])
    run_handler_over_batch([incoming(journey(TOPICS, Instance())[0])], handler, TOPICS.dead_letter, "audit")
    handler.flush_begin()
    run_handler_over_batch([incoming(journey(TOPICS, Instance())[1], offset=1)], handler, TOPICS.dead_letter, "audit")
    with pytest.raises(TransientError):
        handler.flush_wait()
    handler.flush_wait()  # the failure was reported; nothing else is being written
    handler.discard()
    assert handler.flush() == 0, "the discarded batch is read again by the bus, not written from memory"
    assert len(store.records) == 1
