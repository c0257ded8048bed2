"""`ServiceAccess.apply`'s wait for the broker: its deadline firing just after the broker answered is
not a failure (a deployment's set-up reported "no answer" for topics it had made)."""

from __future__ import annotations

import threading
from typing import Any

import pytest

from services.common import service_access
from services.common.service_access import ServiceAccess
from services.common.topics import Topics


def _answered_as_the_deadline_fired(*_args: Any, stop: threading.Event, **_kwargs: Any) -> list[str]:
    stop.set()  # the timer's thread, in the instant after the broker's answer
    return []


def _never_answered(*_args: Any, stop: threading.Event, **_kwargs: Any) -> None:
    stop.wait()
    return None


def test_an_answer_just_before_the_deadline_is_a_success(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(service_access, "ensure_topics", _answered_as_the_deadline_fired)
    ServiceAccess("127.0.0.1:1", {}).apply({}, Topics(), partitions=1, wait_s=300)


def test_no_answer_within_the_wait_is_an_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(service_access, "ensure_topics", _never_answered)
    with pytest.raises(RuntimeError, match="no answer from the broker"):
        ServiceAccess("127.0.0.1:1", {}).apply({}, Topics(), partitions=1, wait_s=0.05)
