"""Closing the fetch-ahead does not wait for a fetch still under way (services/gateway/fetch_ahead.py).

The gateway's loop closed it before its last commit, so a slow retrieval answer (up to the 60 s read
timeout) held a stopping gateway's commit past Kubernetes' 30 s grace. Now the loop commits first and
closing leaves the fetch to end on its own, its file deleted then."""

from __future__ import annotations

import threading
import time
from types import SimpleNamespace
from typing import Any, cast

from kafka.structs import TopicPartition

from services.gateway.fetch import Fetcher
from services.gateway.fetch_ahead import FetchAhead
from services.proto_gen.imx.v1 import events_pb2


class SlowFetcher:
    def __init__(self) -> None:
        self.release = threading.Event()
        self.started = threading.Event()
        self.discarded = threading.Event()

    def fetch(self, delivery: events_pb2.PartnerDelivery) -> Any:
        self.started.set()
        self.release.wait(30)
        return SimpleNamespace(discard=self.discarded.set)


def _record(offset: int) -> Any:
    delivery = events_pb2.PartnerDelivery(meta=events_pb2.EventMeta(event_id=f"d{offset}"))
    return SimpleNamespace(
        offset=offset, headers=[("imx-event-type", b"PartnerDelivery")], value=delivery.SerializeToString()
    )


def test_close_leaves_a_fetch_under_way_to_end_on_its_own() -> None:
    fetcher = SlowFetcher()
    ahead = FetchAhead(cast(Fetcher, fetcher), lambda delivery: False, size=1)
    tp = TopicPartition("feed", 0)
    ahead.ahead([(tp, _record(0)), (tp, _record(1))], 0, ())
    assert fetcher.started.wait(5)
    began = time.monotonic()
    ahead.close()
    assert time.monotonic() - began < 1
    fetcher.release.set()
    assert fetcher.discarded.wait(5), "the fetch's file is deleted when it ends"
