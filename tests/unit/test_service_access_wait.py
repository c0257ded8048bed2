"""The wait for the broker around topic creation (`ensure_topics(..., within_s=)`, which
`ServiceAccess.apply` and delivery's partner topics use): its deadline passing just after the broker
answered is not a failure (a deployment's set-up reported "no answer" for topics it had made), and no
answer within it is one, said plainly."""

from __future__ import annotations

import threading
import time
from typing import Any

import pytest
from kafka.errors import KafkaTimeoutError

from services.common import bus
from services.common.bus import ensure_topics
from services.common.service_access import ServiceAccess
from services.common.topics import Topics


def _answered_after(seconds: float) -> Any:
    def create(*_args: Any) -> list[str]:
        time.sleep(seconds)  # the deadline passes while the answer is on its way
        return ["made"]

    return create


def _never_answered(*_args: Any) -> list[str]:
    raise KafkaTimeoutError("no broker")


def test_an_answer_arriving_as_the_deadline_passes_is_a_success(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(bus, "_create_missing_topics", _answered_after(0.2))
    monkeypatch.setattr(ServiceAccess, "set_retention", lambda self, retention: None)  # no broker to set it on
    assert ensure_topics("127.0.0.1:1", ["t"], 1, within_s=0.05) == ["made"]
    ServiceAccess("127.0.0.1:1", {}).apply({}, Topics(), partitions=1, wait_s=0.05)


def test_no_answer_within_the_wait_is_none_and_apply_says_so(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(bus, "_create_missing_topics", _never_answered)
    began = time.monotonic()
    assert ensure_topics("127.0.0.1:1", ["t"], 1, within_s=0.3) is None
    assert time.monotonic() - began < 5
    with pytest.raises(RuntimeError, match="no answer from the broker"):
        ServiceAccess("127.0.0.1:1", {}).apply({}, Topics(), partitions=1, wait_s=0.05)


def test_a_stop_and_a_time_limit_together_are_refused() -> None:
    with pytest.raises(ValueError, match="not both"):
        ensure_topics("127.0.0.1:1", ["t"], 1, stop=threading.Event(), within_s=1)
