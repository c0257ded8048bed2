"""A started service freezes its objects out of full collections: garbage first, nothing made later."""

from __future__ import annotations

import gc
import threading
import weakref

from services.common.started_objects import freeze_started_objects


class _Node:
    def __init__(self) -> None:
        self.me = self  # a cycle: only the cyclic collector frees it


def _garbage_cycle() -> weakref.ref[_Node]:
    return weakref.ref(_Node())


def test_frees_garbage_then_freezes_what_lives_and_collects_what_comes_after() -> None:
    kept = _Node()
    dropped = _garbage_cycle()
    try:
        assert freeze_started_objects()
        assert dropped() is None, "garbage made before the service started must not be frozen"
        assert gc.get_freeze_count() > 0
        assert kept.me is kept
        later = _garbage_cycle()
        gc.collect()
        assert later() is None, "objects made after the freeze are collected as before"
    finally:
        gc.unfreeze()


def test_a_service_started_in_a_thread_leaves_the_process_alone() -> None:
    before = gc.get_freeze_count()
    answers: list[bool] = []
    thread = threading.Thread(target=lambda: answers.append(freeze_started_objects()))
    thread.start()
    thread.join()
    assert answers == [False]
    assert gc.get_freeze_count() == before
