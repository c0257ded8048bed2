"""Fetching ahead: while the gateway stores one instance, the next few deliveries of its window are
fetched and verified by a small pool, each into memory or its own temp file (fetched.py). Storing,
receipts and commits stay one at a time and in order (services/gateway/worker.py), so only the waiting
for WADO-RS overlaps.

A fetched object that nobody stores (the loop stopped, the window was put back, the delivery turned out
stored already) is discarded, now or when its fetch ends.
"""

from __future__ import annotations

from collections.abc import Callable, Collection
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

from google.protobuf.message import DecodeError
from kafka.structs import TopicPartition

from services.common.events import EVENT_TYPE_HEADER
from services.gateway.fetch import Fetcher
from services.gateway.fetched import Fetched
from services.gateway.records import safe_delivery_id
from services.proto_gen.imx.v1 import events_pb2

Key = tuple[TopicPartition, int]


class FetchAhead:
    def __init__(
        self, fetcher: Fetcher, already_stored: Callable[[events_pb2.PartnerDelivery], bool], size: int
    ) -> None:
        self._fetcher = fetcher
        self._already_stored = already_stored
        self._size = size
        self._pool = ThreadPoolExecutor(size, thread_name_prefix="imx-gateway-fetch") if size > 0 else None
        self._started: dict[Key, Future[Fetched]] = {}

    def ahead(self, window: list[tuple[TopicPartition, Any]], index: int, revoked: Collection[TopicPartition]) -> None:
        """Have the deliveries from `index` on fetched, up to `size` beyond the one about to be stored."""
        if self._pool is None:
            return
        wanted = self._size + 1
        for tp, record in window[index:]:
            if wanted <= 0:
                return
            key = (tp, record.offset)
            if key in self._started:
                wanted -= 1
                continue
            if tp in revoked:
                continue
            delivery = _delivery_of(record)
            if delivery is None or self._already_stored(delivery):
                continue  # settled without a fetch
            self._started[key] = self._pool.submit(self._fetcher.fetch, delivery)
            wanted -= 1

    def take(self, tp: TopicPartition, offset: int) -> Future[Fetched] | None:
        """The fetch started for this record, if any; the caller stores its file or `discard`s it."""
        return self._started.pop((tp, offset), None)

    def drop(self) -> None:
        """Forget every fetch not taken (their records are read again), deleting their files."""
        started, self._started = self._started, {}
        for future in started.values():
            discard(future)

    def close(self) -> None:
        """Forget every fetch; one under way finishes on its own (its file deleted when it ends), not
        waited for here."""
        self.drop()
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)
            self._pool = None


def _delivery_of(record: Any) -> events_pb2.PartnerDelivery | None:
    """The record's PartnerDelivery when it is one that can be fetched (the loop reports the others)."""
    if dict(record.headers or []).get(EVENT_TYPE_HEADER, b"") != b"PartnerDelivery":
        return None
    try:
        delivery = events_pb2.PartnerDelivery.FromString(record.value)
        safe_delivery_id(delivery.meta.event_id)
    except (DecodeError, ValueError):
        return None
    return delivery


def discard(future: Future[Fetched]) -> None:
    """Delete the file of a fetch whose result will not be stored, now or when the fetch ends."""
    if future.cancel():
        return

    def remove(done: Future[Fetched]) -> None:
        if not done.cancelled() and done.exception() is None:
            done.result().discard()

    future.add_done_callback(remove)
