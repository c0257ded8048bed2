"""The access log's background appender (services/audit/access_appender.py): a query's answer waits only
for its entry to be stored; the appender then appends entries in groups, each once, keeps what a failed
append left for the next turn, looks up an entry whose insert reported a failure, and at a clean stop
appends what is left and refuses further entries. (Crash recovery against the real server:
tests/integration/audit/test_access_appender.py.)"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, cast

import pytest
from pymongo.collection import Collection

from services.audit.access_appender import RUNS, BackgroundAccessLog, run_tail_id
from services.audit.access_log import AccessEntry, MemoryAccessLog
from services.audit.tamper_log import StoreClaims, TamperLog
from services.common.messages import TransientError


class Docs:
    """The few by-`_id` operations the appender uses, on a dict."""

    def __init__(self) -> None:
        self.docs: dict[str, dict[str, Any]] = {}

    def find_one(self, query: Mapping[str, Any]) -> dict[str, Any] | None:
        doc = self.docs.get(query["_id"])
        return dict(doc) if doc is not None else None

    def update_one(self, query: Mapping[str, Any], update: Mapping[str, Any], upsert: bool = False) -> None:
        doc = self.docs.get(query["_id"])
        if doc is None:
            if not upsert:
                return
            doc = self.docs[query["_id"]] = {"_id": query["_id"], **update.get("$setOnInsert", {})}
        doc.update(update.get("$set", {}))
        for name, value in update.get("$addToSet", {}).items():
            doc.setdefault(name, [])
            if value not in doc[name]:
                doc[name].append(value)
        for name, value in update.get("$pull", {}).items():
            doc[name] = [v for v in doc.get(name, []) if v != value]

    def delete_one(self, query: Mapping[str, Any]) -> None:
        self.docs.pop(query["_id"], None)


class Log:
    """Stands in for TamperLog: records each append's leaf ids and claims."""

    def __init__(self) -> None:
        self.fail = False
        self.appends: list[list[str]] = []
        self.claims: list[StoreClaims | None] = []
        self.size = 0
        self.attempts = 0

    def next_index(self) -> int:
        return self.size

    def append(self, records: Sequence[Mapping[str, Any]], stored: StoreClaims | None = None) -> int:
        self.attempts += 1
        if self.fail:
            raise TransientError("log unavailable")
        self.appends.append([str(r["_id"]) for r in records])
        self.claims.append(stored)
        self.size += len(records)
        return len(records)


class FailingStore(MemoryAccessLog):
    def __init__(self) -> None:
        super().__init__()
        self.fail = False

    def record(self, entry: AccessEntry) -> None:
        if self.fail:
            raise TransientError("store unavailable")
        super().record(entry)


def _entry(n: int) -> AccessEntry:
    return AccessEntry(analyst_id=f"a{n}", scope="all", method="GET", path="/audit/events", params={}, status=200)


def _appender(log: Log, store: MemoryAccessLog | None = None, docs: Docs | None = None) -> BackgroundAccessLog:
    entries, log_docs = cast(Collection[dict[str, Any]], Docs()), cast(Collection[dict[str, Any]], docs or Docs())
    return BackgroundAccessLog(store or MemoryAccessLog(), entries, log_docs, cast(TamperLog, log))


def test_a_query_returns_once_stored_and_the_appender_appends_entries_in_one_group_each_once() -> None:
    store, log = MemoryAccessLog(), Log()
    appender = _appender(log, store)
    with ThreadPoolExecutor(max_workers=8) as pool:
        list(pool.map(appender.record, [_entry(n) for n in range(20)]))
    assert len(store.entries) == 20 and log.appends == []  # answered before any append
    assert appender.flush() == 20
    assert len(log.appends) == 1
    assert sorted(log.appends[0]) == sorted(f"access:{e.entry_id}" for e in store.entries)
    claims = log.claims[0]
    assert claims is not None and all(i in claims.new for i in log.appends[0])  # no `leafof:` per entry
    assert appender.flush() == 0


def test_ids_are_per_run_and_in_order() -> None:
    store = MemoryAccessLog()
    appender = _appender(Log(), store)
    for n in range(3):
        appender.record(_entry(n))
    assert [e.entry_id for e in store.entries] == [f"query:{appender.run}:{n:010d}" for n in range(3)]


def test_the_run_is_listed_with_its_reservation_before_its_first_entry_is_stored() -> None:
    docs = Docs()
    appender = _appender(Log(), docs=docs)
    appender.record(_entry(0))
    assert appender.run in docs.docs[RUNS]["runs"]
    assert docs.docs[run_tail_id(appender.run)]["reserved"] > 0


def test_a_failed_append_is_retried_from_where_the_first_attempt_may_have_reached() -> None:
    log = Log()
    appender = _appender(log)
    appender.record(_entry(1))
    log.fail = True
    with pytest.raises(TransientError):
        appender.flush()
    log.fail, log.size = False, 7  # the consumer appended meanwhile
    assert appender.flush() == 1
    claims = log.claims[-1]
    assert claims is not None and not claims.new  # it may be in the log: looked for from the first attempt on
    assert claims.since(f"access:query:{appender.run}:{0:010d}") == 0
    assert log.appends == [[f"access:query:{appender.run}:{0:010d}"]]


def test_an_entry_whose_insert_failed_is_a_refusal_and_appended_only_if_it_was_stored() -> None:
    store, log, docs = FailingStore(), Log(), Docs()
    appender = _appender(log, store, docs)
    store.fail = True
    with pytest.raises(TransientError):
        appender.record(_entry(1))
    store.fail = False
    appender.record(_entry(2))
    assert appender.flush() == 1  # the refused one was looked up and not found
    assert docs.docs[run_tail_id(appender.run)]["appended"] == 2


def test_a_clean_stop_appends_what_is_left_unlists_the_run_and_refuses_later_entries() -> None:
    docs, log = Docs(), Log()
    appender = _appender(log, docs=docs)
    appender.start()
    appender.record(_entry(1))
    appender.close()
    assert sum(len(a) for a in log.appends) == 1
    assert appender.run not in docs.docs[RUNS]["runs"] and run_tail_id(appender.run) not in docs.docs
    with pytest.raises(TransientError):
        appender.record(_entry(2))


def test_the_appender_appends_within_a_second_without_a_request_waiting() -> None:
    log = Log()
    appender = _appender(log)
    appender.start()
    try:
        appender.record(_entry(1))
        done = threading.Event()
        for _ in range(50):
            if log.appends:
                done.set()
                break
            threading.Event().wait(0.02)
        assert done.is_set()
    finally:
        appender.close()


def test_while_the_log_cannot_be_written_the_appender_backs_off_warns_once_and_appends_after(
    caplog: pytest.LogCaptureFixture,
) -> None:
    log = Log()
    entries, docs = cast(Collection[dict[str, Any]], Docs()), cast(Collection[dict[str, Any]], Docs())
    appender = BackgroundAccessLog(MemoryAccessLog(), entries, docs, cast(TamperLog, log), every_s=0.01)
    log.fail = True
    appender.record(_entry(1))
    with caplog.at_level(logging.INFO, logger="services.audit.access_appender"):
        appender.start()
        try:
            time.sleep(0.6)  # 60 turns at the appender's pace; doubling waits make about 6
            assert 2 <= log.attempts <= 10
            log.fail = False
            deadline = time.monotonic() + 5
            while not log.appends and time.monotonic() < deadline:
                time.sleep(0.02)
            assert log.appends
        finally:
            appender.close()
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "retrying" in warnings[0].getMessage()
