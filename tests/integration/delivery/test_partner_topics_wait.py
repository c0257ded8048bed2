"""Adding a partner while the broker is away is answered, not held for ever: its topics are waited for
PARTNER_TOPICS_WAIT_S, then `BrokerUnavailable` (the control call's UNAVAILABLE). Before, the call never
returned, pinned a worker of the control server, and held the lock every later AddPartner waited on."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from services.common.bus import BrokerUnavailable
from services.common.topics import Topics
from services.delivery import main as delivery_main
from services.delivery.settings import DeliverySettings
from tools.devstack import free_port

pytestmark = pytest.mark.integration


def test_a_broker_that_is_away_is_given_up_on(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(delivery_main, "PARTNER_TOPICS_WAIT_S", 1.0)
    settings = DeliverySettings(kafka_bootstrap=f"127.0.0.1:{free_port()}", blob_dir=tmp_path)
    topics = delivery_main.PartnerTopics(settings, Topics("t-away."))
    started = time.monotonic()
    with pytest.raises(BrokerUnavailable):
        topics.ensure("lab")
    assert time.monotonic() - started < 12  # the try in progress, at most one attempt (10 s), and no more
