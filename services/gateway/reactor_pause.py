"""Pausing a requestor association's reactor for one C-STORE, told when it has stopped, not polled.

pynetdicom's reactor (`Association._run_reactor`) would take the C-STORE response off the DIMSE queue
before the sender: a sender pauses it by clearing `_reactor_checkpoint`, and the reactor stops at its
next pass, where it sets `_is_paused` and waits on the checkpoint. The sender used to poll that flag
every 0.1 ms, and the reactor sleeps 1 ms before each pass, so every instance cost the sender about
ten sleeps and wake-ups (issue 10: the line was a quarter of the gateway main thread's py-spy samples
in `make bench`). `ReactorPause` hands the stop over instead: the checkpoint's `wait`, called by the
reactor, signals an event when the checkpoint is clear, and the sender waits on that event.

The reactor's look at the checkpoint and the sender's changes to it happen under one lock, so the
signal is exact: the reactor never blocks on a clear checkpoint without signalling, and a signal from
the previous pause is never taken for this one. `keep_responses_for_sender`
(dimse_store.py) still hands back any response the reactor takes, should it run anyway.
"""

from __future__ import annotations

import threading
import time
from typing import Any

from pynetdicom.association import Association

# How often a waiting sender checks that the association is still up (its reactor may have ended).
CHECK_S = 0.05
_FLAG_POLL_S = 0.0001


class ReactorPause:
    """Installed on an association's checkpoint once, right after it is established (the reactor
    looks the checkpoint's `wait` up on every pass, so it uses this one from its next pass on)."""

    def __init__(self, assoc: Association) -> None:
        self._assoc = assoc
        reactor: Any = assoc
        self._checkpoint: threading.Event = reactor._reactor_checkpoint
        self._stopped = threading.Event()
        # The reactor's look at the checkpoint and the sender's changes to it are made under this lock:
        # the reactor never blocks on a clear checkpoint without saying so, and never says so late.
        self._guard = threading.Lock()
        checkpoint, stopped, guard = self._checkpoint, self._stopped, self._guard
        wait = checkpoint.wait

        def wait_and_say(timeout: float | None = None) -> bool:
            with guard:
                if checkpoint.is_set():  # not paused: the reactor's every pass, nothing to wait for
                    return True
                stopped.set()
            return wait(timeout)

        checkpoint.wait = wait_and_say

    def pause(self) -> None:
        """Stop the reactor at its checkpoint; returns when it is there, or when the association has
        ended (nothing will take a response off the queue then)."""
        reactor: Any = self._assoc
        checkpoint = reactor._reactor_checkpoint
        if checkpoint is not self._checkpoint:  # replaced since (tests): pynetdicom's flag, polled
            checkpoint.clear()
            while not reactor._is_paused and self._assoc.is_established:
                time.sleep(_FLAG_POLL_S)
            return
        with self._guard:
            self._stopped.clear()
            checkpoint.clear()
        while not self._stopped.wait(CHECK_S):
            if not (self._assoc.is_established and self._assoc.is_alive()):
                return

    def resume(self) -> None:
        reactor: Any = self._assoc
        with self._guard:
            self._stopped.clear()
            reactor._reactor_checkpoint.set()
