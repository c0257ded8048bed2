"""Puts the partners' DICOMweb API together from the delivery service's own collaborators; called
by the service's entry point, which owns the clients and stops the server."""

from __future__ import annotations

import logging
import threading
from collections import deque
from collections.abc import Callable, Sequence
from typing import Protocol

from pymongo.database import Database

from services.common.api_keys import api_key_digest
from services.common.blob_store import LocalBlobStore
from services.common.events import event_message
from services.common.http_server import HttpServer, TlsFiles
from services.common.messages import OutgoingMessage
from services.common.stores.partners import PartnerStore
from services.common.topics import Topics
from services.common.ttl_cache import TtlCache
from services.delivery.delivered import DeliveredObjects
from services.delivery.dicomweb import create_partner_app
from services.delivery.retrieval_refs import RetrievalRefs
from services.delivery.settings import DeliverySettings
from services.proto_gen.imx.v1.events_pb2 import PartnerRetrieval

log = logging.getLogger(__name__)

# How long a retrieval's event waits for others to share its produce request (the retrievals' producer).
RETRIEVALS_LINGER_MS = 200
# How often the API's events are handed to that producer (they then wait for its linger too).
RETRIEVALS_BATCH_S = 0.05
# Events held while the producer is not made yet (delivery started while the broker was away), serialized:
# ~250 bytes each in memory (a message object took ~1.6 kB). Beyond, the oldest are dropped and said, as
# kafka-python's own buffer gives up during an outage.
MAX_HELD_EVENTS = 100_000
# A revoked or newly issued key takes effect within this time; each request otherwise costs no lookup.
KEY_CACHE_S = 5.0
# Time a retrieval in flight gets to finish when the service stops (a 1 GiB object needs a fast link).
GRACE_S = 30.0


class _NotCached(Exception):
    pass


def _not_cached() -> str | None:
    raise _NotCached


class EventProducer(Protocol):
    """BusProducer (made once the broker answered), or ProducerWhenReady (made when it does)."""

    @property
    def ready(self) -> bool: ...
    def publish_soon(self, messages: Sequence[OutgoingMessage], on_error: Callable[[BaseException], None]) -> None: ...


class RetrievalEvents:
    """The retrieval API's events, handed to the producer by a thread of its own: `record`, called on
    the HTTP event loop once per request, only appends; every `interval_s` the thread passes what
    gathered to the producer (`publish_soon`: not waited for, one produce request for many). Waking a
    thread per request instead cost more of the loop's time than answering the request. Until the
    producer is ready the events wait (at most MAX_HELD_EVENTS)."""

    def __init__(
        self,
        producer: EventProducer,
        topics: Topics,
        interval_s: float = RETRIEVALS_BATCH_S,
        max_held: int = MAX_HELD_EVENTS,
    ) -> None:
        self._producer, self._topics, self._interval_s, self._max_held = producer, topics, interval_s, max_held
        self._pending: deque[PartnerRetrieval] = deque()
        self._held: deque[bytes] = deque()  # only the events thread touches it
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="retrieval-events", daemon=True)
        self._thread.start()

    def record(self, event: PartnerRetrieval) -> None:
        self._pending.append(event)

    def _run(self) -> None:
        while not self._stop.wait(self._interval_s):
            self._hand_over()
        self._hand_over()

    def _hand_over(self) -> None:
        if not self._producer.ready:
            while self._pending:
                self._held.append(self._pending.popleft().SerializeToString())
            dropped = 0
            while len(self._held) > self._max_held:
                self._held.popleft()
                dropped += 1
            if dropped:
                log.error("retrievals not recorded: the broker has not answered", extra={"count": dropped})
            return
        while self._held:
            self._publish(PartnerRetrieval.FromString(self._held.popleft()))
        while self._pending:
            self._publish(self._pending.popleft())  # the only consumer: never empty here

    def _publish(self, event: PartnerRetrieval) -> None:
        try:
            self._producer.publish_soon(
                [event_message(self._topics.access, event, event.study_instance_uid)], _not_recorded(event)
            )
        except Exception as error:  # the producer is closed or broken: say so, keep the thread
            _not_recorded(event)(error)

    def close(self) -> None:
        """Hand over what is left (call after the server stopped, before the producer closes)."""
        self._stop.set()
        self._thread.join()
        if left := len(self._pending) + len(self._held):
            log.error("retrievals not recorded: the broker never answered", extra={"count": left})


def _not_recorded(event: PartnerRetrieval) -> Callable[[BaseException], None]:
    def log_it(error: BaseException) -> None:
        log.error("retrieval not recorded", extra={"partner": event.partner_id, "error": type(error).__name__})

    return log_it


class PartnerApi:
    """The running API: its HTTP server and the thread that hands its events over; `stop` ends both."""

    def __init__(self, server: HttpServer, events: RetrievalEvents) -> None:
        self._server, self._events = server, events

    @property
    def port(self) -> int:
        return self._server.port

    def stop(self) -> None:
        try:
            self._server.stop()
        finally:
            self._events.close()


def start_partner_api(
    settings: DeliverySettings,
    db: Database,
    blobs: LocalBlobStore,
    producer: EventProducer,
    topics: Topics,
    refs: RetrievalRefs | None = None,
) -> PartnerApi:
    """The partners' DICOMweb API, serving on settings.http_host:http_port (started; call `.stop()`).
    Its bound port is `.port` (useful when 0 asked for a free one; `settings.dicomweb_base(port)`)."""
    partners = PartnerStore(db)
    keys: TtlCache[str, str | None] = TtlCache(KEY_CACHE_S)

    def partner_for_key(api_key: str) -> str | None:
        # Cached by digest, so the keys themselves are not kept in memory.
        return keys.get(api_key_digest(api_key), lambda: partners.partner_for_key(api_key))

    def cached_partner_for_key(api_key: str) -> str | None:
        """The partner when the key is in the cache; None when it is not (or names none): no I/O."""
        try:
            return keys.get(api_key_digest(api_key), _not_cached)
        except _NotCached:
            return None

    # Not waited for: the answer is already out, and one produce request then carries the events of
    # every retrieval of the last RETRIEVALS_LINGER_MS instead of one each (a gateway fetches ahead).
    events = RetrievalEvents(producer, topics)
    app = create_partner_app(
        DeliveredObjects(db),
        partner_for_key,
        blobs.extent,
        events.record,
        public_url=lambda: settings.dicomweb_base(server.port),
        refs=refs,
        cached_partner_for_key=cached_partner_for_key,
    )
    tls = TlsFiles.of(settings.http_tls_cert_file, settings.http_tls_key_file)
    try:
        server = HttpServer(
            app, settings.http_host, settings.http_port, GRACE_S, name="delivery-http", tls=tls, direct=app.direct
        )
        server.start()
    except BaseException:
        events.close()
        raise
    return PartnerApi(server, events)
