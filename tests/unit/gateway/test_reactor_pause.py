"""A paused reactor makes no pass until it is resumed, every time, with back-to-back pauses; and a
sender never waits for a reactor that has ended."""

from __future__ import annotations

import threading
import time
from typing import Any

from services.gateway.reactor_pause import ReactorPause


class Reactor(threading.Thread):
    """pynetdicom's `Association._run_reactor` pass, as far as pausing goes: a short sleep, the
    checkpoint (looked up on every pass), then its look at the DIMSE queue, counted here."""

    def __init__(self) -> None:
        super().__init__(daemon=True)
        self._reactor_checkpoint = threading.Event()
        self._reactor_checkpoint.set()
        self._is_paused = False
        self._kill = False
        self.is_established = True
        self.passes = 0

    def run(self) -> None:
        while not self._kill:
            time.sleep(0.0002)
            self._is_paused = True
            self._reactor_checkpoint.wait()
            self._is_paused = False
            self.passes += 1

    def kill(self) -> None:
        self._reactor_checkpoint.set()
        self._kill = True
        self.is_established = False


def test_no_pass_while_paused_even_right_after_a_resume() -> None:
    reactor = Reactor()
    reactor.start()
    pause = ReactorPause(reactor)  # type: ignore[arg-type]
    try:
        for _ in range(300):
            pause.pause()
            before = reactor.passes
            time.sleep(0.0005)  # long enough for a running reactor to make a pass
            assert reactor.passes == before, "the reactor ran while the sender held it paused"
            pause.resume()
    finally:
        reactor.kill()
        reactor.join(timeout=5)


def test_the_reactor_runs_again_after_resume() -> None:
    reactor = Reactor()
    reactor.start()
    pause = ReactorPause(reactor)  # type: ignore[arg-type]
    try:
        pause.pause()
        pause.resume()
        before = reactor.passes
        deadline = time.monotonic() + 5
        while reactor.passes == before and time.monotonic() < deadline:
            time.sleep(0.001)
        assert reactor.passes > before
    finally:
        reactor.kill()
        reactor.join(timeout=5)


def test_a_pause_returns_when_the_association_has_ended() -> None:
    reactor = Reactor()
    reactor.start()
    pause = ReactorPause(reactor)  # type: ignore[arg-type]
    reactor.kill()
    reactor.join(timeout=5)
    sender = threading.Thread(target=pause.pause, daemon=True)
    sender.start()
    sender.join(timeout=5)
    assert not sender.is_alive(), "a sender waited for a reactor that had ended"


def test_a_replaced_checkpoint_is_paused_by_its_flag() -> None:
    reactor = Reactor()
    pause = ReactorPause(reactor)  # type: ignore[arg-type]
    replaced: Any = threading.Event()
    replaced.set()
    reactor._reactor_checkpoint = replaced
    reactor.start()
    try:
        pause.pause()
        assert reactor._is_paused and not replaced.is_set()
        pause.resume()
        assert replaced.is_set()
    finally:
        reactor.kill()
        reactor.join(timeout=5)
