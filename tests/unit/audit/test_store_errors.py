"""A MongoDB that cannot be reached is a transient failure (retry, do not commit), never a poison message."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime

import pytest
from pymongo import MongoClient

from services.audit.queries import EventFilter
from services.audit.records import build_record
from services.audit.store import MongoAuditStore
from services.common.messages import TransientError
from services.common.topics import Topics
from tests.unit.audit.builders import Instance, incoming, journey


@pytest.fixture
def unreachable() -> Iterator[MongoAuditStore]:
    client: MongoClient = MongoClient("mongodb://127.0.0.1:1/", serverSelectionTimeoutMS=100, connect=False)
    yield MongoAuditStore(client["audit"]["audit_events"])
    client.close()


def test_every_operation_reports_an_unreachable_store_as_transient(unreachable: MongoAuditStore) -> None:
    record = build_record(incoming(journey(Topics(), Instance())[0]), Topics(), datetime.now(UTC))
    with pytest.raises(TransientError):
        unreachable.insert([record])
    with pytest.raises(TransientError):
        unreachable.events(EventFilter(), limit=10)
    with pytest.raises(TransientError):
        unreachable.study_trail(Instance().study)
    with pytest.raises(TransientError):
        unreachable.summary()
    assert unreachable.ping() is False
