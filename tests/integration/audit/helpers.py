"""Shared by the audit integration tests: a study's journey on real Kafka, the audit stage's consumer,
and the whole audit service on a thread."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from pymongo.collection import Collection

from services.audit.consumer import AuditHandler, audit_stage_spec
from services.audit.main import AuditEndpoints, serve
from services.audit.settings import AuditSettings
from services.common.bus import BusProducer, StageConsumer, ensure_topics
from services.common.stats import StageStats
from services.common.topics import Topics
from tests.unit.audit.builders import T0_MS, Instance, journey
from tests.waiting import wait_for


def publish_journey(kafka_bootstrap: str, topics: Topics, instance: Instance, t0_ms: int = T0_MS) -> None:
    """The pipeline's topics and research-a's feed created, and `instance`'s journey through them published
    (its receipt's times are kept only within a month of audit's clock: records.PARTNER_CLAIM_BEHIND)."""
    ensure_topics(kafka_bootstrap, [*topics.pipeline(), topics.partner("research-a")], 1)
    producer = BusProducer(kafka_bootstrap)
    try:
        producer.publish(journey(topics, instance, t0_ms=t0_ms, ingested_ms=t0_ms))
    finally:
        producer.close()


def audit_consumer(
    kafka_bootstrap: str,
    topics: Topics,
    producer: BusProducer,
    stats: StageStats | None = None,
    poll_timeout_ms: int = 200,
    **options: Any,
) -> StageConsumer:
    """The audit stage's consumer with its own group and topic pattern; `options` as StageConsumer takes them."""
    spec = audit_stage_spec(topics)
    return StageConsumer(
        bootstrap=kafka_bootstrap,
        group_id=spec.group_id,
        pattern=spec.pattern,
        producer=producer,
        dead_letter_topic=topics.dead_letter,
        stage="audit",
        stats=stats or StageStats("audit"),
        poll_timeout_ms=poll_timeout_ms,
        **options,
    )


def poll_until(consumer: StageConsumer, handler: AuditHandler, done: Callable[[], bool], timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while not done():
        # What was assigned says whether a miss is a slow rebalance or records not read.
        assigned = sorted(f"{tp.topic}[{tp.partition}]" for tp in consumer._consumer.assignment())
        assert time.monotonic() < deadline, f"the audit consumer did not catch up in time; assigned: {assigned}"
        consumer.poll_once(handler)


def audit_settings(kafka_bootstrap: str, mongo_uri: str, database: str, topics: Topics, **more: Any) -> AuditSettings:
    """The service's settings for one test: its own database and topics, one partition, any free ports."""
    return AuditSettings(
        kafka_bootstrap=kafka_bootstrap,
        mongo_uri=mongo_uri,
        mongo_db=database,
        topic_prefix=topics.prefix,
        topic_partitions=1,
        http_port=0,
        grpc_port=0,
        **more,
    )


@contextmanager
def running_audit(settings: AuditSettings) -> Iterator[AuditEndpoints]:
    """The whole audit service on a thread, as `python -m services.audit` runs it; stopped as SIGTERM
    would stop it, and (when the body passed) checked to have returned."""
    stop = threading.Event()
    ready: list[AuditEndpoints] = []
    thread = threading.Thread(target=serve, args=(settings, stop, ready.append), daemon=True)
    thread.start()
    try:
        wait_for(lambda: bool(ready), 30, "the service to start")
        yield ready[0]
    finally:
        stop.set()
        thread.join(30)
    assert not thread.is_alive(), "serve returns once stop is set"


class HeadFails:
    """The log's collection, dying just before the head would move: leaves and nodes are written."""

    def __init__(self, docs: Collection[dict[str, Any]]) -> None:
        self._docs = docs

    def __getattr__(self, name: str) -> Any:
        return getattr(self._docs, name)

    def update_one(self, query: dict[str, Any], *args: Any, **kwargs: Any) -> Any:
        if query.get("_id") == "head":
            raise ConnectionError("the process died here")
        return self._docs.update_one(query, *args, **kwargs)
