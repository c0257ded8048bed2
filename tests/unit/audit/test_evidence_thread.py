"""The audit log's signing thread outlives an error it did not expect: it stopped for good on one (a
database error not taken for an outage), and the control plane's changes were no longer appended."""

from __future__ import annotations

import threading
from types import SimpleNamespace

from pymongo.errors import OperationFailure

from services.audit.evidence import TamperEvidence


def test_the_signing_thread_goes_on_after_an_unexpected_error() -> None:
    evidence = object.__new__(TamperEvidence)  # only what the loop reads
    evidence._stop = threading.Event()
    calls: list[int] = []

    def sign_if_due() -> None:
        calls.append(1)
        if len(calls) == 1:
            raise OperationFailure("backend gone", code=1)
        if len(calls) == 3:
            evidence._stop.set()

    evidence.log = SimpleNamespace(sign_if_due=sign_if_due)  # type: ignore[assignment]
    evidence._changes = SimpleNamespace(poll=lambda: None)  # type: ignore[assignment]
    evidence._sign_periodically(0.001)
    assert len(calls) == 3
