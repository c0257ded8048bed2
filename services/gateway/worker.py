"""The store-and-forward loop: consume the partner's feed, fetch, verify, store, report, commit.

Per message: PartnerDelivery → fetch and verify → store → record locally → receipt; StudyComplete →
check the manifest against the local record → receipt; anything else is skipped and counted. A
partition's offset is committed only up to the last message that is settled (stored, dead-lettered
or skipped), after the receipts for them are acknowledged: a crash loses nothing, and re-reads at
most the in-flight window (`window`: a poll asks for no more than the window has room for), of which
only the instance being stored at the moment of the crash is sent to the target again (the others are
found in the local record). A commit (flush the receipts, wait for their acknowledgement, commit the
offsets) is made when the window is full, every `commit_interval_s`, and when the feed is quiet, not
after every poll: a gateway that keeps up with its feed polls a record or two at a time, which made
a flush and an offset commit per record or two. The receipts' producer lingers (`RECEIPTS_LINGER_MS`
in services/gateway/runner.py), so a commit's receipts leave in one produce request.

Fetching overlaps storing: while one instance is stored, the next few deliveries of the window
(`fetch_ahead`, a small pool) are already being fetched and verified, each into memory or its own temp
file (fetched.py). Storing, receipts and commits stay one at a time and in order, so an offset is still
committed only after what it covers is stored; a fetched object nobody stores (the loop stopped, the
window was put back, the delivery turned out stored already) is discarded.

When an attempt fails the loop waits with the partitions paused, polling all the while, so the
consumer stays in its group (max.poll.interval) without fetching more work; a target that cannot be
reached at all is waited for indefinitely without spending attempts.

The feed has three priority lanes (urgent, routine, bulk; services/common/lanes.py). Before each poll
the lanes below the most urgent one with a backlog are paused; within a polled window the more urgent
records go first, and when urgent work arrives while a window of bulk work is being stored, the rest
of that window is put back (sought back to, never committed) and the urgent work is stored next.
"""

from __future__ import annotations

import functools
import logging
import sqlite3
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from google.protobuf.message import DecodeError
from kafka import KafkaConsumer, KafkaProducer
from kafka.consumer.subscription_state import ConsumerRebalanceListener
from kafka.errors import CommitFailedError, FencedInstanceIdError, KafkaError
from kafka.structs import OffsetAndMetadata, TopicPartition

from services.common.events import EVENT_TYPE_HEADER, now_ms
from services.common.lanes import RANK, LaneGate
from services.common.positions import ConsumerPositions
from services.common.static_membership import name_taken
from services.common.topic_metadata import await_topic_metadata
from services.common.topics import LANES, ROUTINE, Topics
from services.gateway.errors import GatewayStopped
from services.gateway.fetch import BODY_TORN, Fetcher, FetchFailure
from services.gateway.fetch_ahead import FetchAhead, discard
from services.gateway.fetched import Fetched
from services.gateway.offsets import OffsetTracker
from services.gateway.policy import RetryPolicy
from services.gateway.receipts import (
    dead_letter_receipt,
    duplicate_receipt,
    receipt_record,
    store_receipt,
    stored_receipt_id,
    study_receipt,
    superseded_receipt,
)
from services.gateway.records import (
    DeadLetters,
    Judged,
    SendAction,
    StoredRecords,
    safe_delivery_id,
)
from services.gateway.targets import ABORTED, Store, StoreResult
from services.proto_gen.imx.v1 import events_pb2

log = logging.getLogger(__name__)

# Failures that say something about the instance, not the target: given up after RetryPolicy.few_attempts.
FEW_ATTEMPTS = frozenset({"sha256-mismatch", "size-mismatch", "truncated-multipart", BODY_TORN, ABORTED})


@dataclass
class Counters:
    stored: int = 0
    duplicates: int = 0
    superseded: int = 0  # an older send of an instance that came after a newer one was stored: not stored
    retried: int = 0
    dead_lettered: int = 0
    skipped: int = 0
    studies_complete: int = 0
    studies_incomplete: int = 0
    waiting: str = ""  # what the loop is waiting for right now, "" when it is not

    def line(self) -> str:
        text = (
            f"stored {self.stored}, duplicates {self.duplicates}, superseded {self.superseded}, "
            f"retried {self.retried}, "
            f"dead-lettered {self.dead_lettered}, skipped {self.skipped}, "
            f"studies complete {self.studies_complete}, incomplete {self.studies_incomplete}"
        )
        return f"{text} — {self.waiting}" if self.waiting else text


@dataclass(frozen=True)
class GatewayOptions:
    receipts_topic: str
    policy: RetryPolicy = field(default_factory=RetryPolicy)
    window: int = 50  # in-flight window: records fetched per poll, committed together
    commit_interval_s: float = 1.0
    idle_exit_s: float | None = None
    # Deliveries fetched while another is stored (0: fetch each when it is stored). Two keep ahead of
    # the store (a fetch takes ~0.5 ms of CPU, a store ~0.4); four made more threads contend for the
    # GIL, ~0.2 ms more per instance on the loop's thread (services/gateway/README.md).
    fetch_ahead: int = 2


def attempt_once(
    fetcher: Fetcher,
    store: Store,
    delivery: events_pb2.PartnerDelivery,
    fetched: Future[Fetched] | None = None,
) -> tuple[StoreResult, bool]:
    """One fetch-verify-store; (result, refused) where refused means the DICOMweb key was refused.
    `fetched`: the fetch of this delivery, started earlier."""
    try:
        source = fetched.result() if fetched is not None else fetcher.fetch(delivery)
    except FetchFailure as failure:
        return StoreResult(False, failure.detail, failure.retryable, failure.unavailable), failure.refused
    except OSError as error:  # the gateway's own disk (--state-dir full): waited for, as the partner can free it
        log.warning("fetched object not written to the state folder", extra={"error": type(error).__name__})
        return StoreResult.down(f"state-disk-error-{error.errno}"), False
    try:
        return store.store(source, delivery), False
    finally:
        source.discard()


class _Rebalance(ConsumerRebalanceListener):
    """Runs on kafka-python's IO thread: only note what changed, the loop acts on it."""

    def __init__(self) -> None:
        self.revoked: set[TopicPartition] = set()

    def on_partitions_revoked(self, revoked: Any) -> None:
        self.revoked |= set(revoked)

    def on_partitions_assigned(self, assigned: Any) -> None:
        self.revoked -= set(assigned)


class Gateway:
    def __init__(
        self,
        consumer: KafkaConsumer,
        producer: KafkaProducer,
        fetcher: Fetcher,
        store: Store,
        records: StoredRecords,
        dead_letters: DeadLetters,
        options: GatewayOptions,
        on_progress: Callable[[Counters], None] | None = None,
        clock: Callable[[], int] = now_ms,
    ) -> None:
        self._consumer, self._producer = consumer, producer
        self._fetcher, self._store = fetcher, store
        self._records, self._dead_letters = records, dead_letters
        self._options = options
        self._on_progress = on_progress or (lambda _counters: None)
        self._clock = clock
        self._tracker = OffsetTracker()
        self._receipts: list[Any] = []  # futures of receipts not yet acknowledged
        self._rebalance = _Rebalance()
        self._last_commit = time.monotonic()
        self._lane_of: dict[str, str] = {}
        # Positions as the client already tracks them: KafkaConsumer.position refreshes committed offsets
        # and validates every assigned partition per call (services/common/positions.py), and the gate
        # asks for each partition of the more urgent lanes before and after every poll: ~7% of the
        # gateway's GIL-holding samples in `make bench`.
        self._gate = LaneGate(ConsumerPositions(consumer), self._lane_of.get)
        self._ahead = FetchAhead(fetcher, self._already_stored, options.fetch_ahead)
        self._polls = 0  # polls so far: what the consumer knows of the lanes changes only in a poll
        self._outranked_as_of: dict[str, tuple[int, bool]] = {}
        self.counters = Counters()

    def subscribe(self, topic: str) -> None:
        """Read the partner's feed: `topic` is its routine lane; the urgent and bulk lanes beside it too."""
        lanes = Topics.lanes_of(topic)
        self._lane_of.update(zip(lanes, LANES, strict=True))
        self._consumer.subscribe(lanes, listener=self._rebalance)
        await_topic_metadata(self._consumer, lanes)  # the first assignment then covers every lane

    def _rank(self, tp: TopicPartition) -> int:
        return RANK[self._lane_of.get(tp.topic, ROUTINE)]

    def run(self, stop: threading.Event) -> Counters:
        """Until `stop` is set, or idle for `idle_exit_s`. Commits what is settled before returning."""
        last_activity = time.monotonic()
        busy = False
        try:
            while not stop.is_set():
                self._gate.apply(busy=busy)
                # Never more in flight than the window: what a crash would read again.
                room = max(1, self._options.window - self._tracker.in_flight())
                polled = self._poll(timeout_ms=500, max_records=room)
                # Most urgent lane first; a partition's records keep their order (the sort is stable).
                batch = sorted(
                    ((tp, r) for tp, records in polled.items() for r in records), key=lambda item: self._rank(item[0])
                )
                # Only a gateway behind its feed asks the broker for the more urgent lanes' end offsets
                # (services/common/lanes.py): its poll filled the room and the fetch responses show more
                # waiting. One keeping up drained what was fetched, its next poll fetches every lane,
                # and what waits for this window is at most the window itself; it asked every 0.2 s
                # while storing, 0.06 ListOffsets requests per instance in `make bench`.
                busy = len(batch) >= room and self._more_waiting(polled)
                for tp, record in batch:
                    self._tracker.started(tp, record.offset)
                for index, (tp, record) in enumerate(batch):
                    if stop.is_set() or tp in self._rebalance.revoked:
                        continue  # left pending: committed offsets stop before it, it is read again
                    if self._rank(tp) > 0 and self._outranked(self._lane_of.get(tp.topic, ROUTINE), busy):
                        self._put_back(batch[index:])
                        break
                    self._ahead.ahead(batch, index, self._rebalance.revoked)
                    if not self._handle(tp, record, stop):
                        continue
                    self._tracker.settled(tp, record.offset)
                    self._on_progress(self.counters)
                    if time.monotonic() - self._last_commit >= self._options.commit_interval_s:
                        self._commit()
                self._ahead.drop()
                if (
                    not batch
                    or self._tracker.in_flight() >= self._options.window
                    or time.monotonic() - self._last_commit >= self._options.commit_interval_s
                ):
                    self._commit()
                if batch or not self._consumer.assignment():  # not idle while still joining the group
                    last_activity = time.monotonic()
                elif (
                    self._options.idle_exit_s is not None
                    and time.monotonic() - last_activity > self._options.idle_exit_s
                ):
                    break
        finally:
            # What was stored is committed first: waiting for fetches ahead that will not be stored (a slow
            # answer, up to the 60 s read timeout) delayed the last commit past a pod's 30 s grace. The
            # fetches ahead are closed whatever the commit does: one that failed (receipts not written) left
            # their temp files, and a central gateway's worker restarts in the same process.
            try:
                self._commit()
            finally:
                self._ahead.close()
        return self.counters

    def _outranked(self, lane: str, probe: bool) -> bool:
        """`LaneGate.outranked`, asked once per lane and poll unless probing: without a probe it reads
        only the end offsets and positions the consumer updates in a poll (kafka-python parses fetch
        responses in `poll`), so between two polls the answer is the same. Asked for every record, it
        was ~9% of the loop's busy py-spy samples in `make bench` (a `position` call per urgent
        partition per record)."""
        if probe:
            return self._gate.outranked(lane, probe=True)
        known = self._outranked_as_of.get(lane)
        if known is None or known[0] != self._polls:
            known = (self._polls, self._gate.outranked(lane, probe=False))
            self._outranked_as_of[lane] = known
        return known[1]

    def _more_waiting(self, polled: dict[TopicPartition, list[Any]]) -> bool:
        """Whether a polled partition has records after those polled, by its end offset as of the last
        fetch response (no request)."""
        return any(
            (self._consumer.highwater(tp) or 0) > records[-1].offset + 1 for tp, records in polled.items() if records
        )

    def _put_back(self, rest: list[tuple[TopicPartition, Any]]) -> None:
        """More urgent work is waiting: the rest of the window is read again later, from where it starts."""
        starts: dict[TopicPartition, int] = {}
        for tp, record in rest:
            starts[tp] = min(starts.get(tp, record.offset), record.offset)
            self._tracker.abandoned(tp, record.offset)
        assigned = self._consumer.assignment()
        for tp, offset in starts.items():
            if tp in assigned:  # a revoked partition is read again from its committed offset by its new owner
                self._consumer.seek(tp, offset)

    # --- one message ---------------------------------------------------------------------------

    def _handle(self, tp: TopicPartition, record: Any, stop: threading.Event) -> bool:
        """True when the record is settled; False when the loop was stopped or the partition revoked
        while it waited (the record stays uncommitted)."""
        kind = dict(record.headers or []).get(EVENT_TYPE_HEADER, b"")
        delivery: events_pb2.PartnerDelivery | None = None
        study: events_pb2.StudyComplete | None = None
        try:
            if kind == b"PartnerDelivery":
                delivery = events_pb2.PartnerDelivery.FromString(record.value)
                safe_delivery_id(delivery.meta.event_id)
            elif kind == b"StudyComplete":
                study = events_pb2.StudyComplete.FromString(record.value)
        except (DecodeError, ValueError) as error:  # can never be handled: skip it, say so, count it
            delivery = study = None  # a delivery that decoded but names a path is skipped too
            log.warning(
                "skipping an undecodable record",
                extra={
                    "record_kind": kind.decode(errors="replace"),
                    "topic": tp.topic,
                    "partition": tp.partition,
                    "offset": record.offset,
                    "error": type(error).__name__,
                },
            )
        if delivery is not None:
            fetched = self._ahead.take(tp, record.offset)
            try:
                return self._deliver(delivery, tp, record.offset, stop, fetched)
            finally:
                if fetched is not None:
                    discard(fetched)  # nothing left to delete when it was stored
        if study is not None:
            self._study(study)
            return True
        self.counters.skipped += 1
        return True

    def _already_stored(self, delivery: events_pb2.PartnerDelivery) -> bool:
        earlier = self._records.stored(delivery.meta.event_id)
        return earlier is not None and earlier[0] == delivery.blob.sha256

    def _deliver(
        self,
        delivery: events_pb2.PartnerDelivery,
        tp: TopicPartition,
        offset: int,
        stop: threading.Event,
        fetched: Future[Fetched] | None = None,
    ) -> bool:
        delivery_id = delivery.meta.event_id
        judged = self._records.judge(delivery)
        version = judged.version
        if judged.action is SendAction.DUPLICATE:
            # Stored before a crash or a rebalance; its receipt may not have been acknowledged, and
            # the same receipt again (same id) is harmless.
            self.counters.duplicates += 1
            self._send_receipt(duplicate_receipt(delivery, self._store.kind, judged))
            return True
        if judged.action is SendAction.SUPERSEDED:
            # The original and its correction took different priority lanes and the original came last:
            # storing it would put the old content back over the new. Its receipt says so (delivery marks
            # nothing by it: the partner does not hold this delivery's object). Its dead letter goes, unless
            # the newer send is of this delivery too: the letter may be that send's.
            if not judged.by_same_delivery:
                self._dead_letters.settle(delivery_id)
            self.counters.superseded += 1
            self._send_receipt(superseded_receipt(delivery, self._store.kind, self._clock()))
            return True
        attempts = answered = waits = 0
        while True:
            attempts += 1
            # The first attempt stores what was fetched ahead; a retry fetches again.
            result, refused = attempt_once(self._fetcher, self._store, delivery, fetched if attempts == 1 else None)
            if refused:
                raise GatewayStopped(f"the DICOMweb service refused the partner's key ({result.status_detail})")
            if result.ok:
                stored_at = self._clock()
                record = functools.partial(
                    self._records.add,
                    delivery_id,
                    delivery.blob.sha256,
                    delivery.instance.study_instance_uid,
                    stored_at,
                    version=version,
                    receipt_id=stored_receipt_id(delivery, judged),
                )
                recorded = self._state_written(record, stop, tp)
                if not recorded:
                    return False  # stopped first: read again, found not recorded, and stored again
                self._dead_letters.settle(delivery_id)
                self.counters.stored += 1
                self.counters.waiting = ""
                self._send_receipt(
                    store_receipt(delivery, self._store.kind, judged, attempts, stored_at, result.status_detail)
                )
                return True
            policy = self._options.policy
            if result.unavailable:
                waits += 1
                delay = policy.delay_s(waits, unreachable=True)
                self.counters.waiting = f"unreachable ({result.status_detail}), retrying in {delay:.0f} s"
            else:
                answered += 1
                few = result.status_detail in FEW_ATTEMPTS
                if not result.retryable or policy.gives_up(answered, few):
                    where = (tp.topic, tp.partition, offset)
                    return self._dead_letter(delivery, result.status_detail, attempts, where, stop, tp, judged)
                delay = policy.delay_s(answered)
                self.counters.waiting = f"attempt {answered} failed ({result.status_detail}), retrying in {delay:.1f} s"
            self.counters.retried += 1
            self._on_progress(self.counters)
            if not self._wait(delay, stop, tp):
                return False

    def _dead_letter(
        self,
        delivery: events_pb2.PartnerDelivery,
        status: str,
        attempts: int,
        where: tuple[str, int, int],
        stop: threading.Event,
        holding: TopicPartition,
        judged: Judged,
    ) -> bool:
        at = self._clock()

        def put() -> None:
            self._dead_letters.put(delivery, status, attempts, self._store.kind, at, where)

        if not self._state_written(put, stop, holding):
            return False
        self.counters.dead_lettered += 1
        self.counters.waiting = ""
        self._send_receipt(dead_letter_receipt(delivery, self._store.kind, judged, attempts, at, status))
        return True

    def _state_written(self, write: Callable[[], object], stop: threading.Event, holding: TopicPartition) -> bool:
        """`write` to the gateway's state folder, tried again while it fails (a full or read-only disk the
        partner can mend), waiting as for an unreachable target: the instance is not sent again meanwhile,
        and the gateway does not die with a traceback after the PACS stored it. False when stopped first."""
        waits = 0
        while True:
            try:
                write()
                return True
            except (OSError, sqlite3.Error) as error:
                waits += 1
                delay = self._options.policy.delay_s(waits, unreachable=True)
                log.warning("the gateway's state folder cannot be written", extra={"error": type(error).__name__})
                self.counters.waiting = f"state folder not writable ({type(error).__name__}), retrying in {delay:.0f} s"
                self._on_progress(self.counters)
            if not self._wait(delay, stop, holding):
                return False

    def _study(self, study: events_pb2.StudyComplete) -> None:
        missing = self._records.missing([(e.delivery_id, e.sha256) for e in study.instances])
        missing += max(0, study.count - len(study.instances))  # a manifest shorter than its count
        if missing:
            self.counters.studies_incomplete += 1
        else:
            self.counters.studies_complete += 1
        self._send_receipt(study_receipt(study, missing, self._store.kind, self._clock()))

    # --- waiting, receipts, commits --------------------------------------------------------------

    def _wait(self, seconds: float, stop: threading.Event, holding: TopicPartition) -> bool:
        """Sleep `seconds` while polling with every partition paused, so the group keeps us and
        nothing new is fetched. False when stopped or when `holding` was taken away meanwhile."""
        self._commit()  # what is settled so far should not wait for the target to come back
        deadline = time.monotonic() + seconds
        try:
            while time.monotonic() < deadline and not stop.is_set():
                assigned = self._consumer.assignment()
                self._consumer.pause(*assigned)
                polled = self._poll(timeout_ms=int(min(500, max(1, (deadline - time.monotonic()) * 1000))))
                for tp, records in polled.items():  # a partition assigned meanwhile was not paused yet
                    self._consumer.seek(tp, min(r.offset for r in records))
                if holding in self._rebalance.revoked:
                    return False
        finally:
            self._consumer.resume(*self._consumer.paused())
        return not stop.is_set()

    def _send_receipt(self, receipt: events_pb2.DeliveryReceipt) -> None:
        self._receipts.append(self._producer.send(self._options.receipts_topic, **receipt_record(receipt)))

    def _poll(self, **options: Any) -> Any:
        """`poll`, counted; a join or sync refused because another replica took this one's name stops
        the loop as a refused commit does (static_membership)."""
        self._polls += 1
        try:
            return self._consumer.poll(**options)
        except FencedInstanceIdError:
            raise name_taken(self._consumer) from None

    def _commit(self) -> None:
        """Acknowledged receipts first, then the offsets of what they report."""
        if self._receipts:
            try:
                self._producer.flush(timeout=60)  # KafkaTimeoutError when not all went in time
                for future in self._receipts:
                    future.get(timeout=60)
            except KafkaError as error:
                raise GatewayStopped(
                    f"receipts could not be written to {self._options.receipts_topic}: {type(error).__name__}"
                ) from None
            self._receipts.clear()
        if self._rebalance.revoked:
            self._tracker.forget(self._rebalance.revoked)
        offsets = self._tracker.committable()
        self._last_commit = time.monotonic()
        if not offsets:
            return
        try:
            self._consumer.commit({tp: OffsetAndMetadata(upto, "", -1) for tp, upto in offsets.items()})
        except CommitFailedError:
            # The group rebalanced: the partitions' new owner re-reads them, and finds them in its
            # record if it is this gateway (same state folder) or stores them again if not.
            return
        except FencedInstanceIdError:  # another replica has this one's name (static_membership)
            raise name_taken(self._consumer) from None
        self._tracker.committed(offsets)


def state_paths(state_dir: Path) -> tuple[Path, Path, Path]:
    """(incoming temp files, stored record, dead letters) under the gateway's state folder."""
    return state_dir / "incoming", state_dir / "stored.sqlite3", state_dir / "dead-letters"
