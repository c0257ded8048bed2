"""The analysts' queries into the tamper-evident log: stored before the answer leaves, appended shortly after.

Guarantee. An answer leaves only once its access entry is stored (a failed insert is a 503, as before).
The entry is appended to the Merkle log by a background appender, in groups, within about `every_s`
(0.2 s) of being stored while the log is writable; at a clean stop the appender appends what is left
before the log closes (a request arriving after that gets a 503). Entries stored by a process that
crashed before appending them are found and appended when the next process starts. Limit: between
being stored and being appended (normally under a second; longer while the log is unwritable, or until
the next start after a crash) an entry is not yet covered, so deleting or editing it in that window is
not detected. Once appended, `imx audit verify` names it deleted or changed like any other leaf.

Why. Appending one entry before each answer cost a `$push` into the log's current `leaves` document
(up to 256 entries rewritten by FerretDB 1.x on every update) and the head's compare-and-set: p95 72 ms
of the request at 100,000 records (tools/bench_audit.py, load ~11), more than the study trail's target
(50 ms) by itself. Stored-then-appended, the request pays one primary-key insert.

Recovery with `_id` lookups only (FerretDB 1.x answers nothing else fast at millions of entries). Each
process is a run with its own time-ordered id and numbers its entries: `_id` = `query:<run>:<seq>`.
In the log's collection:
- `tail:access` lists the runs that may have entries not appended yet (a run is added before its first
  entry and removed once everything it stored is appended: at a clean stop, or by the next start's
  recovery);
- `tail:access:<run>` holds `reserved` (no seq at or past it was given out: one write every RESERVE
  entries, before the first of them is stored), `appended` (every seq below it is appended, or was never
  stored) and `since` (a tree size at or below the index of any of the run's entries appended past
  `appended`, so a re-append after a crash finds them in the log instead of appending them twice).
Recovery reads `tail:access`, and for each earlier run looks up the `_id`s from `appended` to `reserved`
(at most RESERVE plus what was stored and never appended) and appends those found: its cost is that of
what is missing, not of the collection's size.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

from pymongo.collection import Collection
from pymongo.errors import PyMongoError

from services.audit.access_log import AccessEntry, AccessLog
from services.audit.log_sources import ACCESS, leaf_form
from services.audit.tamper_log import HEAD, StoreClaims, TamperLog, unavailable_is_transient
from services.common.messages import TransientError

log = logging.getLogger(__name__)

RUNS = "tail:access"  # in the log's collection: the runs whose entries may not all be appended
RESERVE = 256  # seqs reserved per write of `reserved`
GROUP_LIMIT = 5_000  # entries appended at once
MAX_RETRY_WAIT_S = 5.0  # the longest wait between attempts while the log cannot be written


def run_tail_id(run: str) -> str:
    return f"{RUNS}:{run}"


def entry_id(run: str, seq: int) -> str:
    return f"query:{run}:{seq:010d}"


def new_run(clock: Callable[[], float] = time.time) -> str:
    """Time-ordered, unique per process start."""
    return f"{int(clock() * 1000):013d}-{uuid.uuid4().hex[:8]}"


def _at(since: int) -> Callable[[str], int | None]:
    return lambda _leaf_id: since


@dataclass
class _Stored:
    seq: int
    entry_id: str
    leaf: dict[str, Any] | None  # None: the insert failed (perhaps after storing): looked up before appending
    since: int | None = None  # the log's size before the first attempt to append it


def entry_leaf_id(item: _Stored) -> str:
    return ACCESS + item.entry_id


class BackgroundAccessLog:
    """An AccessLog that stores each entry before the answer leaves and appends it to the log afterwards
    (see the module docstring for the guarantee). `start()` runs the appender (recovering earlier runs
    first), `close()` appends what is left and refuses further entries."""

    def __init__(
        self,
        stored: AccessLog,
        entries: Collection[dict[str, Any]],
        log_docs: Collection[dict[str, Any]],
        tamper_log: TamperLog,
        *,
        every_s: float = 0.2,
        run: str | None = None,
    ) -> None:
        self._stored = stored
        self._entries = entries
        self._docs = log_docs
        self._log = tamper_log
        self._every_s = every_s
        self.run = run or new_run()
        self._lock = threading.Lock()  # seqs and the queue
        self._next = 0
        self._reserved = 0
        self._closed = False
        self._queue: list[_Stored] = []
        self._flushing = threading.Lock()  # one flush at a time (the appender, or close)
        self._held: list[_Stored] = []  # taken from the queue, not appended yet (a failed append)
        self._resolved: dict[int, int] = {}  # seqs at or past `_appended` done: seq -> since (appended) or -1
        self._appended = 0
        self._recovered = False
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # ---- the request's part ----
    def record(self, entry: AccessEntry) -> None:
        with self._lock:
            if self._closed:
                raise TransientError("access log closed (the audit service is stopping)")
            seq = self._next
            if seq >= self._reserved:
                self._reserve(seq + RESERVE)
            self._next = seq + 1
        entry = replace(entry, entry_id=entry_id(self.run, seq))
        try:
            self._stored.record(entry)
        except TransientError:
            self._enqueue(_Stored(seq, entry.entry_id, None))
            raise
        self._enqueue(_Stored(seq, entry.entry_id, leaf_form(ACCESS, entry.document())))

    def _reserve(self, up_to: int) -> None:
        """Before the first seq of each block is given out; the first also lists the run for recovery."""
        try:
            with unavailable_is_transient():
                if self._reserved == 0:
                    head = self._docs.find_one({"_id": HEAD}) or {}
                    since = int(head.get("size", 0))  # the log only grows: a lower bound of any index ahead
                    self._docs.update_one(
                        {"_id": run_tail_id(self.run)},
                        {"$set": {"reserved": up_to}, "$setOnInsert": {"appended": 0, "since": since}},
                        upsert=True,
                    )
                    self._docs.update_one({"_id": RUNS}, {"$addToSet": {"runs": self.run}}, upsert=True)
                else:
                    self._docs.update_one({"_id": run_tail_id(self.run)}, {"$set": {"reserved": up_to}})
        except PyMongoError as exc:
            raise TransientError(f"access log unavailable: {type(exc).__name__}") from exc
        self._reserved = up_to

    def _enqueue(self, item: _Stored) -> None:
        with self._lock:
            self._queue.append(item)

    # ---- the appender ----
    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="audit-access-appender", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        wait_s, failing = self._every_s, False
        while not self._stop.wait(wait_s):
            try:
                self.flush()
            except (TransientError, PyMongoError) as exc:
                # Backing off, and said once per outage: a crashed predecessor's lease can take 30 s to expire.
                wait_s = min(wait_s * 2, MAX_RETRY_WAIT_S)
                if not failing:
                    log.warning("audit log: access entries not appended; retrying", extra={"error": type(exc).__name__})
                failing = True
            else:
                if failing:
                    log.info("audit log: access entries appended again")
                wait_s, failing = self._every_s, False

    def flush(self) -> int:
        """Recover earlier runs (once), then append the entries stored so far; returns how many were
        appended. Raises TransientError (what was not appended is kept for the next flush)."""
        with self._flushing:
            if not self._recovered:
                self.recover()
                self._recovered = True
            with self._lock:
                taken, self._queue = self._queue, []
            self._held += taken
            if not self._held:
                return 0
            appended = 0
            with unavailable_is_transient():
                for item in self._held:
                    if item.leaf is None:
                        doc = self._entries.find_one({"_id": item.entry_id})
                        if doc is None:
                            self._resolved[item.seq] = -1  # never stored: nothing to append
                        else:
                            item.leaf = leaf_form(ACCESS, doc)
                pending = [i for i in self._held if i.leaf is not None]
                size = self._log.next_index()
                first = frozenset(entry_leaf_id(i) for i in pending if i.since is None)
                since: dict[str, int] = {}
                for item in pending:
                    item.since = size if item.since is None else item.since
                    since[entry_leaf_id(item)] = item.since
                for at in range(0, len(pending), GROUP_LIMIT):
                    group = pending[at : at + GROUP_LIMIT]
                    # `new`: stored after `size` was read, never given to an append: not in the log. An entry
                    # of a failed attempt is found in the log from its `since` on, if that attempt got there.
                    self._log.append([i.leaf for i in group if i.leaf is not None], StoreClaims(first, since.get))
                    for item in group:
                        self._resolved[item.seq] = since[entry_leaf_id(item)]
                    appended += len(group)
                self._held = []
                self._advance()
            return appended

    def _advance(self) -> None:
        """Move `appended` past every seq now done, and keep where the log holds those after it."""
        while self._appended in self._resolved:
            self._resolved.pop(self._appended)
            self._appended += 1
        later = [s for s in self._resolved.values() if s >= 0]
        since = min(later) if later else self._log.size
        self._docs.update_one(
            {"_id": run_tail_id(self.run)}, {"$set": {"appended": self._appended, "since": since}}, upsert=True
        )

    def recover(self) -> int:
        """Append what earlier runs stored and never appended (a crash); returns how many were appended."""
        total = 0
        with unavailable_is_transient():
            runs = [str(r) for r in (self._docs.find_one({"_id": RUNS}) or {}).get("runs", []) if r != self.run]
            for run in runs:
                tail = self._docs.find_one({"_id": run_tail_id(run)}) or {}
                start, end = int(tail.get("appended", 0)), int(tail.get("reserved", 0))
                since = int(tail.get("since", 0))
                found = []
                for seq in range(start, end):
                    doc = self._entries.find_one({"_id": entry_id(run, seq)})
                    if doc is not None:
                        found.append(leaf_form(ACCESS, doc))
                appended = 0
                for at in range(0, len(found), GROUP_LIMIT):
                    appended += self._log.append(found[at : at + GROUP_LIMIT], StoreClaims(frozenset(), _at(since)))
                self._docs.update_one({"_id": RUNS}, {"$pull": {"runs": run}})
                self._docs.delete_one({"_id": run_tail_id(run)})
                if appended:
                    log.info("audit log: appended access entries a crashed run had stored", extra={"count": appended})
                total += appended
        return total

    def close(self) -> None:
        """At a clean stop: refuse further entries, append what is stored, and unlist the run when nothing
        of it is left unappended (otherwise the next start recovers it)."""
        with self._lock:
            self._closed = True
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=30)
        try:
            self.flush()
            with unavailable_is_transient():
                if self._reserved and self._appended == self._next:
                    self._docs.update_one({"_id": RUNS}, {"$pull": {"runs": self.run}})
                    self._docs.delete_one({"_id": run_tail_id(self.run)})
        except (TransientError, PyMongoError):
            log.warning("audit log: access entries left unappended at stop; the next start appends them")
