"""Entry point: `python -m services.delivery` or `imx serve delivery`."""

from __future__ import annotations

import threading
from collections.abc import Callable

from services.common.blob_store import LocalBlobStore
from services.common.bus import ensure_topics
from services.common.control_server import ControlServer
from services.common.kafka_access import PartnerAccess
from services.common.mongo import connect
from services.common.runtime import StageSpec, run_stage
from services.common.stores.partners import PartnerStore
from services.common.topics import Topics
from services.delivery.handler import build_delivery_handler
from services.delivery.partners import PartnerCache, PartnerSignIn, register_partner_admin
from services.delivery.settings import DeliverySettings


class PartnerTopics:
    """Creates a partner's topic once per process (creation is idempotent on the broker too)."""

    def __init__(self, settings: DeliverySettings, topics: Topics) -> None:
        self._settings = settings
        self._topics = topics
        self._ensured: set[str] = set()
        self._lock = threading.Lock()

    def ensure(self, partner_id: str) -> None:
        with self._lock:
            if partner_id in self._ensured:
                return
            ensure_topics(
                self._settings.kafka_bootstrap,
                [self._topics.partner(partner_id)],
                self._settings.partner_topic_partitions,
            )
            self._ensured.add(partner_id)


def _sign_in(settings: DeliverySettings) -> PartnerSignIn | None:
    if not settings.kafka_partner_bootstrap:
        return None
    return PartnerSignIn(
        PartnerAccess(settings.kafka_bootstrap),
        settings.kafka_partner_bootstrap,
        settings.kafka_partner_security_protocol,
    )


def serve(
    settings: DeliverySettings | None = None,
    stop: threading.Event | None = None,
    on_ready: Callable[[ControlServer], None] | None = None,
) -> None:
    settings = settings or DeliverySettings()
    client, db = connect(settings)
    store = PartnerStore(db)
    topics = Topics(settings.topic_prefix)
    partner_topics = PartnerTopics(settings, topics)
    cache = PartnerCache(store)
    blobs = LocalBlobStore(settings.blob_dir)
    try:
        run_stage(
            settings,
            StageSpec(name="delivery", group_id=f"{settings.topic_prefix}imx-delivery", topics=[topics.prepared]),
            lambda _producer, t: build_delivery_handler(cache.is_known, blobs, t, partner_topics.ensure),
            extra_servicers=[register_partner_admin(store, topics, partner_topics.ensure, _sign_in(settings))],
            stop=stop,
            on_ready=on_ready,
        )
    finally:
        client.close()
