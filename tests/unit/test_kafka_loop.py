"""kafka-python's event loop runs a task whose future another thread resolved, without waiting for
some unrelated socket or timer to wake it (services/common/kafka_loop.py)."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import pytest
from kafka.future import Future
from kafka.net.selector import NetworkSelector

from services.common import kafka_loop


@pytest.fixture
def loop() -> Iterator[NetworkSelector]:
    kafka_loop.mend()
    net = NetworkSelector()
    net.start()  # the client's I/O thread, as every kafka-python 3 consumer has
    try:
        yield net
    finally:
        net.close()


def test_a_task_resumes_when_another_thread_resolves_what_it_awaits(loop: NetworkSelector) -> None:
    awaited: Future = Future()
    parked = threading.Event()
    resumed = threading.Event()

    async def task() -> None:
        parked.set()
        await awaited
        resumed.set()

    loop.call_soon_threadsafe(task)
    assert parked.wait(5), "the loop never ran the task"
    time.sleep(0.2)  # the loop is back in select(), nothing in flight, no timer due
    awaited.success(None)  # resolved on this thread, as a consumer's poll resolves fetch futures
    assert resumed.wait(3), "the task stayed parked: the loop was not woken"


def test_mending_twice_wraps_once() -> None:
    kafka_loop.mend()
    mended = NetworkSelector.call_soon
    kafka_loop.mend()
    assert NetworkSelector.call_soon is mended
