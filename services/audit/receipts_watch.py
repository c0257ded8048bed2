"""Audit reads every partner's receipts through one pattern subscription, and a pattern consumer looks
for new topics only every `IMX_PARTNER_TOPIC_DISCOVERY_S` (30 s by default: each look reads the metadata
of every topic on the broker). Delivery creates a partner's topics before it reports a delivery to that
partner, so audit's first delivery outcome for a partner whose receipts topic it is not reading is the
moment to look: the partner's receipts are then read at once, not up to half a minute later."""

from __future__ import annotations

import time
from collections.abc import Callable

from services.audit.records import AuditRecord, EventType
from services.common.topics import Topics

LOOK_AGAIN_S = 5.0  # per partner: a look asked for is under way (a metadata refresh, then a rebalance)
_OUTCOME = EventType.OUTCOME.value


class ReceiptsWatch:
    """Asks the stage's consumer (once attached) to look for new topics when a record names a partner
    whose receipts topic it is not subscribed to."""

    def __init__(self, topics: Topics, clock: Callable[[], float] = time.monotonic) -> None:
        self._topics = topics
        self._clock = clock
        self._subscribed: Callable[[], set[str]] = set
        self._look: Callable[[], None] = lambda: None
        self._asked_at: dict[str, float] = {}
        self._reading: set[str] = set()  # partners whose receipts the consumer is subscribed to

    def attach(self, subscribed: Callable[[], set[str]], look_for_new_topics: Callable[[], None]) -> None:
        self._subscribed, self._look = subscribed, look_for_new_topics

    def saw(self, record: AuditRecord) -> None:
        partner = record["partner_id"]
        if record["event_type"] != _OUTCOME or not partner or partner in self._reading:
            return
        # The subscription is copied per call (thousands of topics at a national scale): asked only
        # until the partner's topic is in it.
        if self._topics.receipts(partner) in self._subscribed():
            self._reading.add(partner)
            return
        now = self._clock()
        if now - self._asked_at.get(partner, -LOOK_AGAIN_S) < LOOK_AGAIN_S:
            return
        self._asked_at[partner] = now
        self._look()
