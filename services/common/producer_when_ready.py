"""A producer made once the broker answers, for a service whose other work must not wait for Kafka.

kafka-python's producer asks the broker for its metadata as it is made and gives up after 30 s: delivery
made its retrieval events' producer before it opened its DICOMweb API, so, started while the broker was
away, it served no partner and the process ended (in the chart, a restart loop with growing back-off,
minutes past the broker's return). Here the producer is made by a thread of its own, tried again until the
broker answers. Until then `publish` waits for it, and raises BrokerUnavailable after its timeout, as a
publish does during an outage; `publish_soon` raises at once, so a caller that can hold its messages asks
`ready` first.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Sequence

from services.common.bus import BusProducer, OutgoingMessage
from services.common.publish_refusals import BrokerUnavailable

log = logging.getLogger(__name__)

RETRY_S = 5.0  # between tries; each try itself waits up to kafka-python's 30 s for the broker
SAY_AGAIN_TRIES = 10  # a failure is logged at the first try and every this many after (~6 minutes apart)


class ProducerWhenReady:
    def __init__(self, make: Callable[[], BusProducer], retry_s: float = RETRY_S) -> None:
        self._make, self._retry_s = make, retry_s
        self._producer: BusProducer | None = None
        self._settled = threading.Event()  # made, or closed: a waiting publish wakes
        self._stop = threading.Event()
        self._lock = threading.Lock()  # a producer made while `close` runs is closed, not leaked
        self._thread = threading.Thread(target=self._run, name="producer-when-ready", daemon=True)
        self._thread.start()

    @property
    def ready(self) -> bool:
        return self._producer is not None

    def wait_ready(self, timeout_s: float) -> bool:
        """Whether the producer was made within `timeout_s` (the tests ask it)."""
        self._thread.join(timeout_s)
        return self.ready

    def publish(self, messages: Sequence[OutgoingMessage], timeout_s: float = 60.0) -> None:
        self._settled.wait(timeout_s)  # as BusProducer's publish waits for a broker away
        self._made().publish(messages, timeout_s)

    def publish_soon(self, messages: Sequence[OutgoingMessage], on_error: Callable[[BaseException], None]) -> None:
        self._made().publish_soon(messages, on_error)

    def close(self) -> None:
        self._stop.set()
        self._settled.set()
        with self._lock:
            producer, self._producer = self._producer, None
        if producer is not None:
            producer.close()

    def _made(self) -> BusProducer:
        producer = self._producer
        if producer is None:
            raise BrokerUnavailable("the broker has not answered since the service started")
        return producer

    def _run(self) -> None:
        tries = 0
        while not self._stop.is_set():
            tries += 1
            try:
                producer = self._make()
            except Exception as error:  # kafka-python's KafkaTimeoutError, NoBrokersAvailable, a refused sign-in
                if tries % SAY_AGAIN_TRIES == 1:
                    log.warning(
                        "producer not made: the broker did not answer or refused; trying again",
                        extra={"error": type(error).__name__, "count": tries},
                    )
                self._stop.wait(self._retry_s)
                continue
            with self._lock:
                if self._stop.is_set():
                    producer.close()
                    return
                self._producer = producer
                self._settled.set()
            if tries > 1:
                log.info("broker answered", extra={"count": tries})
            return
