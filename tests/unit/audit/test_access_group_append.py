"""The access log's group commit (log_sources.LoggedAccessLog): requests answered at the same time share
one append to the tamper-evident log, yet each request returns only once its own entry is appended, and
every request of a failed append gets the error (its answer is then a 503)."""

from __future__ import annotations

import threading
import time
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, cast

import pytest

from services.audit.access_log import AccessEntry, MemoryAccessLog
from services.audit.log_sources import LoggedAccessLog
from services.audit.tamper_log import StoreClaims, TamperLog
from services.common.messages import TransientError


class SlowLog:
    """Stands in for TamperLog.append: one append at a time, each taking `delay_s`."""

    def __init__(self, delay_s: float = 0.05, fail: bool = False) -> None:
        self.delay_s = delay_s
        self.fail = fail
        self.appends: list[list[str]] = []
        self.claims: list[StoreClaims | None] = []
        self._lock = threading.Lock()

    def append(self, records: Sequence[Mapping[str, Any]], stored: StoreClaims | None = None) -> int:
        with self._lock:
            time.sleep(self.delay_s)
            if self.fail:
                raise TransientError("log unavailable")
            self.appends.append([str(r["_id"]) for r in records])
            self.claims.append(stored)
            return len(records)


def _entry(n: int) -> AccessEntry:
    return AccessEntry(analyst_id=f"a{n}", scope="all", method="GET", path="/audit/events", params={}, status=200)


def _logged(log: SlowLog) -> LoggedAccessLog:
    return LoggedAccessLog(MemoryAccessLog(), cast(TamperLog, log))


def test_concurrent_queries_share_appends_and_each_returns_once_its_entry_is_appended() -> None:
    log = _logged(slow := SlowLog())
    entries = [_entry(n) for n in range(20)]

    def record(entry: AccessEntry) -> bool:
        log.record(entry)
        return any(f"access:{entry.entry_id}" in group for group in slow.appends)

    with ThreadPoolExecutor(max_workers=20) as pool:
        appended_on_return = list(pool.map(record, entries))

    assert all(appended_on_return)
    ids = [i for group in slow.appends for i in group]
    assert sorted(ids) == sorted(f"access:{e.entry_id}" for e in entries)  # each once
    assert len(slow.appends) < len(entries)  # grouped


def test_an_entry_is_appended_without_a_claim_document() -> None:
    log = _logged(slow := SlowLog(delay_s=0))
    log.record(entry := _entry(1))
    claims = slow.claims[0]
    assert claims is not None and f"access:{entry.entry_id}" in claims.new  # new: no `leafof:` insert


def test_every_request_of_a_failed_append_gets_the_error() -> None:
    log = _logged(SlowLog(fail=True))
    errors: list[BaseException] = []

    def record(n: int) -> None:
        try:
            log.record(_entry(n))
        except TransientError as exc:
            errors.append(exc)

    with ThreadPoolExecutor(max_workers=8) as pool:
        list(pool.map(record, range(8)))
    assert len(errors) == 8


def test_a_failed_append_does_not_stop_later_ones() -> None:
    log = _logged(slow := SlowLog(delay_s=0, fail=True))
    with pytest.raises(TransientError):
        log.record(_entry(1))
    slow.fail = False
    log.record(entry := _entry(2))
    assert slow.appends == [[f"access:{entry.entry_id}"]]
