"""Entry point: `python -m services.delivery` or `imx serve delivery`."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from services.common.blob_lifecycle import collect
from services.common.blob_store import LocalBlobStore
from services.common.bus import BrokerUnavailable, BusProducer, ensure_topics
from services.common.control_auth import control_auth
from services.common.control_server import ControlServer
from services.common.dead_letter_topic import IncompleteRead
from services.common.events import now_ms
from services.common.kafka_access import PartnerAccess
from services.common.mongo import connect
from services.common.producer_when_ready import ProducerWhenReady
from services.common.runtime import StageSpec, run_stage
from services.common.service_access import kafka_client_config
from services.common.stores.partners import PartnerStore
from services.common.topics import Topics
from services.delivery.completeness import CompletenessSweep
from services.delivery.delivered import DeliveredObjects, flag_sweep_for
from services.delivery.dicomweb_wiring import RETRIEVALS_LINGER_MS, start_partner_api
from services.delivery.handler import DeliveryHandler, delivery_pattern
from services.delivery.owed_blobs import OwedBlobs
from services.delivery.partners import PartnerCache, PartnerSignIn, register_partner_admin
from services.delivery.purge_state import PurgeState
from services.delivery.record_retention import purge_records_every
from services.delivery.retention_watch import KafkaBacklogReader, RetentionWatch
from services.delivery.settings import DeliverySettings

log = logging.getLogger(__name__)

# How long adding a partner waits for the broker to create its topics (well within the CLI's 60 s deadline).
PARTNER_TOPICS_WAIT_S = 20.0


class PartnerTopics:
    """Creates a partner's topics (its feed's three lanes, its receipts) once per process (creation is
    idempotent on the broker too). Having created any, it tells the stage's consumer (once attached) to
    look for them: a new partner's receipts are read at once, not at the consumer's next look."""

    def __init__(self, settings: DeliverySettings, topics: Topics) -> None:
        self._settings = settings
        self._topics = topics
        self._ensured: set[str] = set()
        self._lock = threading.Lock()
        self._look_for_new_topics: Callable[[], None] = lambda: None

    def ensure(self, partner_id: str) -> None:
        """`BrokerUnavailable` when the broker does not answer within PARTNER_TOPICS_WAIT_S (and an attempt
        already on its way, up to 10 s more): the admin call that asked answers UNAVAILABLE instead of
        holding its worker (and this lock) for ever."""
        if partner_id in self._ensured:  # the stage asks once per instance: no lock for a known one
            return
        began = time.monotonic()
        unanswered = BrokerUnavailable(f"the broker did not answer within {PARTNER_TOPICS_WAIT_S:g} s")
        if not self._lock.acquire(timeout=PARTNER_TOPICS_WAIT_S):  # another call is waiting for the broker
            raise unanswered
        try:
            if partner_id in self._ensured:
                return
            created = ensure_topics(
                self._settings.kafka_bootstrap,
                [*self._topics.partner_lanes(partner_id), self._topics.receipts(partner_id)],
                self._settings.partner_topic_partitions,
                client_config=kafka_client_config(self._settings),
                replication_factor=self._settings.topic_replication_factor,
                within_s=max(0.0, PARTNER_TOPICS_WAIT_S - (time.monotonic() - began)),
            )
            if created is None:
                raise unanswered
            self._ensured.add(partner_id)
        finally:
            self._lock.release()
        if created:
            self._look_for_new_topics()

    def attach(self, look_for_new_topics: Callable[[], None]) -> None:
        self._look_for_new_topics = look_for_new_topics


def collect_blobs_every(
    settings: DeliverySettings, blobs: LocalBlobStore, owed: Callable[[], set[str]], stop: threading.Event
) -> None:
    """The blob lifecycle, on a timer: objects no partner is owed, and no dead letter names, go after
    the retention."""
    while not stop.wait(settings.blob_gc_interval_s):
        try:
            result = collect(blobs.root, owed, settings.blob_retention_s)
        except IncompleteRead as error:  # says what failed (an ACL, an unknown topic), never a record
            log.warning("blob collection failed: the dead letters were not read whole", extra={"reason": str(error)})
            continue
        except Exception as error:  # the database is away: next round
            log.warning("blob collection failed", extra={"error": type(error).__name__})
            continue
        log.info("blobs collected", extra={"count": result.deleted})
        if result.temporaries:
            log.info("stale temporary files removed", extra={"count": result.temporaries})


def _sign_in(settings: DeliverySettings) -> PartnerSignIn | None:
    if not settings.kafka_partner_bootstrap:
        return None
    return PartnerSignIn(
        PartnerAccess(settings.kafka_bootstrap, kafka_client_config(settings)),
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
    delivered = DeliveredObjects(db, flag_sweep_for(settings.blob_retention_s))
    delivered.ensure_indexes()
    # The retrieval API's audit events and the StudyComplete announcements go through a producer of
    # their own: the stage's producer belongs to the consumer loop's batches.
    # Made once the broker answers: the API serves partners from the start, even during a broker outage.
    retrievals = ProducerWhenReady(
        lambda: BusProducer(
            settings.kafka_bootstrap,
            client_id="imx-delivery-dicomweb",
            client_config=kafka_client_config(settings),
            linger_ms=RETRIEVALS_LINGER_MS,
        )
    )
    refs = settings.retrieval_refs()
    api = start_partner_api(settings, db, blobs, retrievals, topics, refs)
    base = settings.dicomweb_base(api.port)
    sweep = CompletenessSweep(delivered, retrievals.publish, topics, settings.study_quiet_s)
    sweep_stop = threading.Event()
    sweeper = threading.Thread(
        target=sweep.run, args=(sweep_stop, min(5.0, settings.study_quiet_s / 4)), name="completeness", daemon=True
    )
    sweeper.start()
    collector = None
    if settings.blob_gc_interval_s > 0:
        collector = threading.Thread(
            target=collect_blobs_every,
            args=(settings, blobs, OwedBlobs.of(settings, delivered, db), sweep_stop),
            name="blob-gc",
            daemon=True,
        )
        collector.start()
    watch = RetentionWatch(
        partners=lambda: [p.partner_id for p in store.list()],
        feed_topics=topics.partner_lanes,
        read_lag=KafkaBacklogReader(
            settings.kafka_bootstrap, kafka_client_config(settings), topic_prefix=topics.prefix
        ).partner_lag,
        unstored=delivered.unstored,
        mark_expired=delivered.mark_expired,
        publish=retrievals.publish,
        topics=topics,
        fractions=settings.retention_warn_fractions,
    )
    if settings.record_retention_days > 0:
        threading.Thread(
            target=purge_records_every,
            args=(
                delivered,
                PurgeState(db),
                settings.record_retention_days,
                settings.record_purge_interval_s,
                sweep_stop,
                now_ms,
            ),
            name="record-purge",
            daemon=True,
        ).start()
    if settings.retention_check_interval_s > 0:
        threading.Thread(
            target=watch.run,
            args=(sweep_stop, settings.retention_check_interval_s),
            name="retention-watch",
            daemon=True,
        ).start()
    try:
        run_stage(
            settings,
            StageSpec(
                name="delivery", group_id=f"{settings.topic_prefix}imx-delivery", pattern=delivery_pattern(topics)
            ),
            lambda _producer, t: DeliveryHandler(
                cache.is_known, t, partner_topics.ensure, delivered.record, base, mark=delivered.mark, refs=refs
            ),
            control_auth(db, settings.control_bootstrap_token_file),
            extra_servicers=[
                register_partner_admin(
                    store,
                    topics,
                    partner_topics.ensure,
                    _sign_in(settings),
                    lags=lambda: watch.latest,
                    delivered_to=delivered.delivered_to,
                )
            ],
            stop=stop,
            on_ready=on_ready,
            on_consumer=lambda consumer: partner_topics.attach(consumer.look_for_new_topics),
            http_serving=True,
        )
    finally:
        sweep_stop.set()
        api.stop()
        retrievals.close()
        client.close()
