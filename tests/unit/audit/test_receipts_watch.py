"""Audit looks for a partner's receipts topic when it records the first delivery to that partner
(services/audit/receipts_watch.py), rather than at its next scheduled look, up to 30 s later."""

from __future__ import annotations

from datetime import UTC, datetime

from services.audit.consumer import AuditHandler
from services.audit.receipts_watch import LOOK_AGAIN_S, ReceiptsWatch
from services.audit.records import AuditRecord, build_record
from services.common.topics import Topics
from tests.unit.audit.builders import Instance, incoming, journey
from tests.unit.audit.fake_store import InMemoryAuditStore

TOPICS = Topics("t-w.")
NOW = datetime(2026, 2, 1, tzinfo=UTC)


def records(partner: str) -> list[AuditRecord]:
    """ingested, routed, prepared, outcome and receipt of one instance delivered to `partner`."""
    return [build_record(incoming(m), TOPICS, NOW) for m in journey(TOPICS, Instance(), partner=partner)]


class Consumer:
    def __init__(self, subscribed: set[str]) -> None:
        self.subscribed, self.looks, self.asked = subscribed, 0, 0

    def subscribed_topics(self) -> set[str]:
        self.asked += 1
        return set(self.subscribed)

    def look_for_new_topics(self) -> None:
        self.looks += 1


def watching(consumer: Consumer, clock: list[float]) -> ReceiptsWatch:
    watch = ReceiptsWatch(TOPICS, clock=lambda: clock[0])
    watch.attach(consumer.subscribed_topics, consumer.look_for_new_topics)
    return watch


def test_a_delivery_to_a_partner_whose_receipts_are_not_read_yet_asks_for_one_look() -> None:
    consumer, clock = Consumer(set()), [100.0]
    watch = watching(consumer, clock)
    for record in records("late") * 3:  # the same partner again, before the look has happened
        watch.saw(record)
    assert consumer.looks == 1, "only the outcome asks, and once while its look is under way"
    clock[0] += LOOK_AGAIN_S
    watch.saw(records("late")[3])
    assert consumer.looks == 2, "still not subscribed after a while: look again"


def test_a_partner_already_read_asks_for_nothing_and_is_not_checked_again() -> None:
    consumer, clock = Consumer({TOPICS.receipts("known")}), [0.0]
    watch = watching(consumer, clock)
    for record in records("known") * 3:
        watch.saw(record)
    assert (consumer.looks, consumer.asked) == (0, 1)


def test_the_handler_shows_the_watch_every_record() -> None:
    seen: list[str] = []
    handler = AuditHandler(
        InMemoryAuditStore(), TOPICS, clock=lambda: NOW, watch=lambda r: seen.append(r["event_type"])
    )
    for message in journey(TOPICS, Instance(), partner="p"):
        handler(incoming(message))
    assert seen == ["ingested", "routed", "prepared", "outcome", "receipt"]
