"""Study marks settled in memory (services/audit/counters.py SettledMarks), on the real MongoDB-wire server:
a study's later batches claim its marks without a round trip, and every figure stays what the store alone
would count, under replays, restarts and a batch that died before its journal."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime

import pytest
from pymongo import MongoClient, monitoring

from services.audit import rollups
from services.audit.counters import batch_id
from services.audit.records import AuditRecord, build_record
from services.audit.store import MongoAuditStore
from services.common.topics import Topics
from tests.unit.audit.builders import T0_MS, Instance, incoming, journey

TOPICS = Topics("t-sm.")
NOW = datetime(2026, 2, 1, tzinfo=UTC)


class _Commands(monitoring.CommandListener):
    """(command, collection) of every command the client sends."""

    def __init__(self) -> None:
        self.sent: list[tuple[str, str]] = []

    def started(self, event: monitoring.CommandStartedEvent) -> None:
        target = event.command.get(event.command_name)
        self.sent.append((event.command_name, target if isinstance(target, str) else ""))

    def succeeded(self, event: monitoring.CommandSucceededEvent) -> None:
        pass

    def failed(self, event: monitoring.CommandFailedEvent) -> None:
        pass


@pytest.fixture
def commands() -> _Commands:
    return _Commands()


@pytest.fixture
def client(mongo_uri: str, unique_name: str, commands: _Commands) -> Iterator[MongoClient]:
    client: MongoClient = MongoClient(
        mongo_uri, serverSelectionTimeoutMS=5000, tz_aware=True, event_listeners=[commands]
    )
    try:
        yield client
    finally:
        client.drop_database(unique_name)
        client.close()


def _store(client: MongoClient, name: str) -> MongoAuditStore:
    store = MongoAuditStore(client[name]["audit_events"])
    store.ensure_indexes()
    return store


def _records(n: int, study: str) -> list[AuditRecord]:
    instances = [Instance(study=study, series=f"{study}.1", sop=f"{study}.1.{i}") for i in range(n)]
    return [build_record(incoming(m), TOPICS, NOW) for x in instances for m in journey(TOPICS, x, t0_ms=T0_MS)]


def _volume(store: MongoAuditStore, dimension: str) -> tuple[int, int]:
    [row] = store.volumes(dimension, None, None, None)
    return row.instances, row.studies


def test_a_studys_later_batches_claim_its_marks_without_a_round_trip(
    client: MongoClient, unique_name: str, commands: _Commands
) -> None:
    store = _store(client, unique_name)
    records = _records(10, "1.2.826.0.1.3680043.10.5")  # five records per instance
    first, second = records[:25], records[25:]
    assert store.insert(first) == 25
    commands.sent.clear()
    assert store.insert(second) == 25
    marks = [c for c in commands.sent if c[1] == "audit_events_marks" and c[0] in ("insert", "find")]
    assert marks == [], "the study's marks were settled by the first batch"
    journals = [c for c in commands.sent if c == ("find", "audit_events_counts")]
    assert journals == [], "no owner's journal is read"
    assert store.insert(second) == 0, "the same batch again"
    assert store.insert(records[10:40]) == 0, "a replay split differently"
    restarted = _store(client, unique_name)  # nothing in memory
    assert restarted.insert(first) == 0 and restarted.insert(second) == 0
    assert _volume(restarted, "org") == (10, 1)
    assert _volume(restarted, "modality") == (10, 1)
    assert _volume(restarted, "partner")[1] == 1


def test_a_settled_mark_is_counted_again_only_by_its_owners_replay(client: MongoClient, unique_name: str) -> None:
    """A mark left by a batch that died before its journal is taken over, then settled with the new
    owner: that batch's replay counts it (its journal guards the counters), a later batch does not."""
    store = _store(client, unique_name)
    records = _records(2, "1.2.826.0.1.3680043.10.6")
    dead = batch_id(["a batch that died before its journal"])
    marks = list(dict.fromkeys(m for r in records[:1] for m in rollups.study_marks(r)))
    store._counters.claim(dead, store._marks, [{"_id": m} for m in marks])  # then the process died
    assert store.insert(records[:1]) == 1
    assert store.insert(records[:1]) == 0
    assert store.insert(records) == len(records) - 1
    assert _volume(store, "org") == (2, 1)
    assert _volume(store, "modality") == (2, 1)
