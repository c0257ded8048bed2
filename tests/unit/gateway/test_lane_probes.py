"""When the gateway asks the broker for the more urgent lanes' end offsets (ListOffsets): only while
it works through full windows (a backlog), never while it keeps up with its feed."""

from __future__ import annotations

import threading

from services.gateway.worker import Gateway, GatewayOptions

from .fake_consumer import FEED, FakeFeed, NoReceipts


def asked(count: int, per_poll: int, window: int, trickle: bool = False, commit_interval_s: float = 0.0) -> int:
    stop = threading.Event()
    feed = FakeFeed(count, stop, per_poll=per_poll, laned=True, trickle=trickle)
    options = GatewayOptions(receipts_topic="r", window=window, commit_interval_s=commit_interval_s, fetch_ahead=0)
    gateway = Gateway(feed, NoReceipts(), None, None, None, None, options)  # type: ignore[arg-type]
    gateway.subscribe(FEED)
    gateway.run(stop)
    assert feed.committed == count
    return feed.asked


def test_a_gateway_keeping_up_with_its_feed_asks_nothing() -> None:
    assert asked(count=40, per_poll=3, window=10) == 0
    assert asked(count=40, per_poll=3, window=10, trickle=True, commit_interval_s=3600.0) == 0, (
        "nor when settled records not yet committed leave its polls little room"
    )


def test_a_gateway_working_through_full_windows_asks() -> None:
    assert asked(count=40, per_poll=100, window=10) >= 1


def test_a_gateway_keeping_up_asks_whether_it_is_outranked_once_per_poll_not_per_record() -> None:
    stop = threading.Event()
    feed = FakeFeed(40, stop, per_poll=10, laned=True)
    options = GatewayOptions(receipts_topic="r", window=50, commit_interval_s=0.0, fetch_ahead=0)
    gateway = Gateway(feed, NoReceipts(), None, None, None, None, options)  # type: ignore[arg-type]
    gateway.subscribe(FEED)
    asked_gate: list[bool] = []
    outranked = gateway._gate.outranked

    def counted(lane: str, probe: bool = True) -> bool:
        asked_gate.append(probe)
        return outranked(lane, probe)

    gateway._gate.outranked = counted  # type: ignore[method-assign]
    gateway.run(stop)
    assert feed.committed == 40
    assert len(asked_gate) == 4, "once for each poll that returned routine records"
