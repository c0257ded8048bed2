"""kafka-python 3.0's event loop can miss a wake-up and leave a client blocked for ever; this mends it.

Each kafka-python 3 client runs its network I/O on a thread of its own (kafka/net/selector.py,
`NetworkSelector`). A coroutine on that loop that awaits a kafka `Future` is put back on the loop's
ready queue by the future's callback, `NetworkSelector.call_soon`, on whichever thread resolves the
future. Unlike `call_soon_threadsafe`, `call_soon` does not wake the loop's `select()`, so when the
future is resolved on another thread the task waits, ready, until a socket or a timer happens to wake
the loop: with nothing else in flight, for ever. The caller that waits on that task in
`NetworkSelector.run` waits without a timeout.

Found while reproducing a CI failure (tests/integration/test_priority_lanes.py, a broker holding
thousands of topics): one failure dump showed a stage's thread waiting in `Fetcher.send_fetches` →
`NetworkSelector.run` while its I/O thread slept in `select()`. That failure had another cause
(services/common/topic_metadata.py): with this mend alone the test still failed. The lost wake-up is
real on its own: tests/unit/test_kafka_loop.py reproduces it.

Upstream has since made `call_soon` wake the loop (kafka-python pull request 3139, "merge call_soon
w/ call_soon_threadsafe"); 3.0.12, the newest release available here, does not have it. `mend()`
does the same for a task scheduled from a thread other than the loop's, and does nothing when called
again. services/common/__init__.py applies it, so every client the services and tools create has it.
"""

from __future__ import annotations

import threading
from typing import Any

from kafka.net.selector import NetworkSelector

_MENDED = "_imx_wakes_the_loop"


def mend() -> None:
    """Make `NetworkSelector.call_soon` wake the loop when called from another thread."""
    original = NetworkSelector.call_soon
    if getattr(original, _MENDED, False):
        return

    def call_soon(self: NetworkSelector, task: Any) -> Any:
        scheduled = original(self, task)
        io_thread = self._io_thread
        if io_thread is not None and threading.current_thread() is not io_thread:
            self.wakeup()
        return scheduled

    setattr(call_soon, _MENDED, True)
    NetworkSelector.call_soon = call_soon
