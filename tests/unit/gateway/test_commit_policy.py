"""When the gateway loop commits: a window's worth or a quiet feed, not every poll, and never more
than the window read but not committed (what a crash would read again)."""

from __future__ import annotations

import threading

from services.gateway.worker import Gateway, GatewayOptions

from .fake_consumer import FEED, FakeFeed, NoReceipts


def run(count: int, window: int) -> FakeFeed:
    """A feed that a gateway keeps up with: each poll returns one record (as when they arrive one by one)."""
    stop = threading.Event()
    feed = FakeFeed(count, stop)
    options = GatewayOptions(receipts_topic="r", window=window, commit_interval_s=3600.0, fetch_ahead=0)
    gateway = Gateway(feed, NoReceipts(), None, None, None, None, options)  # type: ignore[arg-type]
    gateway.subscribe(FEED)
    gateway.run(stop)
    return feed


def test_a_feed_read_one_record_at_a_time_is_committed_per_window_not_per_poll() -> None:
    feed = run(120, window=50)
    assert feed.commits == [50, 100, 120], "full windows, then the rest when the feed went quiet"
    assert feed.most_uncommitted <= 50


def test_nothing_settled_waits_past_a_quiet_poll() -> None:
    feed = run(3, window=50)
    assert feed.commits == [3]
