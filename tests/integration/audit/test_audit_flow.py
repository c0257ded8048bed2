"""The audit stage against real Kafka and FerretDB: every hop recorded and shown in order by the API,
replays add nothing, partner topics created later are read too."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator, Sequence
from typing import Any

import pytest
from fastapi.testclient import TestClient
from pymongo import MongoClient
from pymongo.collection import Collection

from services.audit.api import create_app
from services.audit.consumer import AuditHandler
from services.audit.log_entries import unpacked
from services.audit.records import AuditRecord, to_datetime
from services.audit.store import MongoAuditStore
from services.common.bus import BusProducer, ensure_topics
from services.common.events import event_id, event_message
from services.common.messages import TransientError
from services.common.stats import StageStats
from services.common.topics import Topics
from services.proto_gen.imx.v1 import events_pb2 as pb
from tests.integration.audit.helpers import audit_consumer, poll_until
from tests.unit.audit.builders import PHI_DESCRIPTION, T0_MS, Instance, dead_letter, journey, quarantined

STUDY = Instance()
SECOND = Instance(sop=STUDY.sop[:-1] + "2")


@pytest.fixture
def collection(mongo_uri: str, unique_name: str) -> Iterator[Collection]:
    client: MongoClient = MongoClient(mongo_uri, serverSelectionTimeoutMS=5000)
    try:
        yield client[unique_name]["audit_events"]
    finally:
        client.drop_database(unique_name)
        client.close()


def test_every_hop_is_recorded_replays_add_nothing_and_late_partner_topics_are_read(
    kafka_bootstrap: str, unique_name: str, collection: Collection
) -> None:
    topics = Topics(prefix=unique_name + ".")
    ensure_topics(kafka_bootstrap, [*topics.pipeline(), topics.partner("research-a"), topics.partner("care-b")], 2)
    messages = [
        *journey(topics, STUDY),
        *journey(topics, SECOND, t0_ms=T0_MS + 1000),
        *journey(topics, STUDY, partner="care-b", deidentified=False, t0_ms=T0_MS + 2000),
        quarantined(topics, Instance(sop=STUDY.sop[:-1] + "3"), T0_MS + 3000, reason="not-dicom"),
        dead_letter(topics, journey(topics, SECOND)[2]),
    ]
    expected = len(messages) - 1  # the study's instance is ingested once, however many destinations
    producer = BusProducer(kafka_bootstrap)
    store = MongoAuditStore(collection)
    store.ensure_indexes()
    stats = StageStats("audit")
    consumer = audit_consumer(kafka_bootstrap, topics, producer, stats, max_batch=50)
    handler = AuditHandler(store, topics, clock=lambda: to_datetime(T0_MS + 60_000))  # the journeys' time
    try:
        producer.publish(messages)
        poll_until(consumer, handler, lambda: collection.count_documents({}) >= expected, 30)

        api = TestClient(create_app(store, None))  # open: the key check has its own tests
        trail = api.get(f"/audit/studies/{STUDY.study}").json()
        hops = [(e["event_type"], e["partner_id"]) for e in trail["events"]]
        assert hops[:5] == [
            ("ingested", None),
            ("routed", "research-a"),
            ("prepared", "research-a"),
            ("outcome", "research-a"),
            ("receipt", "research-a"),
        ]
        assert ("outcome", "care-b") in hops and ("quarantined", None) in hops and ("dead_letter", "research-a") in hops
        assert trail["received"][0]["source_org"] == "trust-a" and trail["received"][0]["channel"] == "c-store"
        assert {d["partner_id"]: d["delivered"] for d in trail["destinations"]} == {"research-a": 2, "care-b": 1}
        assert {d["partner_id"]: d["stored"] for d in trail["destinations"]} == {"research-a": 2, "care-b": 1}
        assert api.get("/audit/summary").json()["quarantined_by_reason"] == {"not-dicom": 1}

        stored = repr([unpacked(doc) for doc in collection.find()])
        assert PHI_DESCRIPTION not in stored and "PATIENT^SECRET" not in stored

        producer.publish(messages)  # a replay: the same events again
        poll_until(consumer, handler, lambda: stats.snapshot().processed >= 2 * len(messages), 30)
        assert collection.count_documents({}) == expected

        # A partner added later: its receipts topic is picked up by the pattern subscription.
        late = topics.receipts("late-joiner")
        ensure_topics(kafka_bootstrap, [late], 1)
        receipt = pb.DeliveryReceipt(
            meta=pb.EventMeta(event_id=event_id("late", STUDY.sop), occurred_at_ms=T0_MS + 9000),
            instance=STUDY.ref(),
            status=pb.STORE_STATUS_STORED,
        )
        producer.publish([event_message(late, receipt, STUDY.study)])

        # Seen at the next metadata refresh (5 s), then a rebalance: 60 s, since a fresh-clone CI run saw
        # 30 s pass once (2026-12-02) on a 2-core machine.
        def late_ones() -> list[dict[str, Any]]:  # records are packed: read them all, as few as they are
            return [r for r in map(unpacked, collection.find()) if r.get("partner_id") == "late-joiner"]

        poll_until(consumer, handler, lambda: len(late_ones()) == 1, 60)
        assert late_ones()[0].get("topic") == late
    finally:
        consumer.close()
        producer.close()


class _FailsFirstInsert:
    """MongoDB that is unreachable for the first write."""

    def __init__(self, store: MongoAuditStore) -> None:
        self.store = store
        self.failures = 0

    def insert(self, records: Sequence[AuditRecord]) -> int:
        if self.failures == 0:
            self.failures += 1
            raise TransientError("audit store unavailable: AutoReconnect")
        return self.store.insert(records)


def test_a_failed_batch_insert_is_not_committed_and_the_batch_is_read_again(
    kafka_bootstrap: str, unique_name: str, collection: Collection
) -> None:
    topics = Topics(prefix=unique_name + ".")
    ensure_topics(kafka_bootstrap, [*topics.pipeline(), topics.partner("research-a")], 1)
    producer = BusProducer(kafka_bootstrap)
    store = MongoAuditStore(collection)
    flaky = _FailsFirstInsert(store)
    consumer = audit_consumer(kafka_bootstrap, topics, producer, retry_backoff_s=0.1)
    stop = threading.Event()
    runner = threading.Thread(target=consumer.run, args=(AuditHandler(flaky, topics), stop), daemon=True)
    try:
        producer.publish(journey(topics, STUDY))
        runner.start()
        deadline = time.monotonic() + 30
        while collection.count_documents({}) < 5:
            assert time.monotonic() < deadline, "the batch was not read again after the failed insert"
            time.sleep(0.2)
        assert flaky.failures == 1
    finally:
        stop.set()
        runner.join(15)
        consumer.close()
        producer.close()
