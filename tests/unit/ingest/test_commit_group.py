"""Group commit at ingest: instances accepted at the same time share one receipt write, one broker
flush and one mark; asserted on counted calls, never on timings."""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from pathlib import Path

import pytest

from services.common.blob_store import LocalBlobStore
from services.common.dicom.header import inspect_instance
from services.common.messages import OutgoingMessage, TransientError
from services.common.publish_refusals import RecordRefused
from services.common.topics import Topics
from services.ingest.acceptance import Acceptance, Accepted, Duplicate
from services.ingest.commit_group import Commit, CommitGroup, Outcome
from services.ingest.errors import IngestUnavailable
from services.ingest.receipts import MemoryReceiptStore, Receipt
from services.proto_gen.imx.v1 import events_pb2
from tests.unit.ingest.samples import mr_study
from tests.waiting import wait_for

TOPICS = Topics("t-")


class GatedBus:
    """Counts flushes (publish calls); the first publish waits at a gate until the test opens it."""

    def __init__(self) -> None:
        self.flushes: list[list[OutgoingMessage]] = []
        self.entered = threading.Event()
        self.gate = threading.Event()
        self.fail = 0
        self._lock = threading.Lock()

    def publish(self, messages: Sequence[OutgoingMessage], timeout_s: float = 60.0) -> None:
        self.entered.set()
        assert self.gate.wait(30), "the test never opened the gate"
        with self._lock:
            if self.fail:
                self.fail -= 1
                raise TransientError("publish failed: KafkaTimeoutError")
            self.flushes.append(list(messages))


class CountingReceipts(MemoryReceiptStore):
    def __init__(self) -> None:
        super().__init__()
        self.claim_writes = 0
        self.mark_writes = 0
        self.marks_written: list[list[str]] = []  # per write, the marks it carried

    def claim_many(self, event_ids: Sequence[str], marks: Sequence[str] = ()) -> list[Receipt]:
        self.claim_writes += 1
        self.marks_written.append(list(marks))
        return super().claim_many(event_ids, marks)

    def write_marks(self, marks: Sequence[str]) -> None:
        self.mark_writes += 1
        self.marks_written.append(list(marks))
        super().write_marks(marks)


def make(tmp_path: Path, bus: GatedBus, receipts: MemoryReceiptStore) -> Acceptance:
    return Acceptance(
        blobs=LocalBlobStore(tmp_path / "blobs"),
        receipts=receipts,
        bus=bus,
        topics=TOPICS,
        max_instance_bytes=10_000_000,
        clock=lambda: 1_700_000_000_000,
    )


def accept_concurrently(acceptance: Acceptance, bus: GatedBus, instances: Sequence[bytes]) -> list[object]:
    """The first instance starts a group and is held at the broker; the others arrive meanwhile."""
    results: list[object] = [None] * len(instances)

    def accept(n: int) -> None:
        try:
            results[n] = acceptance.accept(instances[n], "trust-a", "c-store")
        except Exception as error:  # the test looks at it
            results[n] = error

    threads = [threading.Thread(target=accept, args=(n,)) for n in range(len(instances))]
    threads[0].start()
    assert bus.entered.wait(10)
    for thread in threads[1:]:
        thread.start()
    wait_for(lambda: acceptance.commits.queued == len(instances) - 1, 10, "the others to queue", interval_s=0.01)
    bus.gate.set()
    for thread in threads:
        thread.join(30)
    return results


def test_eight_associations_at_once_share_two_flushes_and_one_receipt_write_per_group(tmp_path: Path) -> None:
    bus, receipts = GatedBus(), CountingReceipts()
    acceptance = make(tmp_path, bus, receipts)
    instances = mr_study(31, 8)

    results = accept_concurrently(acceptance, bus, instances)

    assert all(isinstance(r, Accepted) for r in results)
    # The first instance's group, then one group for the seven that came while it was at the broker.
    assert [len(f) for f in bus.flushes] == [1, 7]
    # The first group's mark went with the second group's claims; the second's waits for a next one.
    assert (receipts.claim_writes, receipts.mark_writes) == (2, 0)
    assert acceptance.commits.groups == 2
    published = {events_pb2.InstanceIngested.FromString(m.value).meta.event_id for f in bus.flushes for m in f}
    assert published == {r.event_id for r in results if isinstance(r, Accepted)}
    acceptance.commits.flush()
    assert receipts.mark_writes == 1
    assert published <= receipts.published
    # Each group's marks in one write: the first's with the second claim, the second's at the end.
    assert [len(m) for m in receipts.marks_written] == [0, 1, 7]


def test_a_sender_alone_is_its_own_group(tmp_path: Path) -> None:
    bus, receipts = GatedBus(), CountingReceipts()
    bus.gate.set()
    acceptance = make(tmp_path, bus, receipts)

    for data in mr_study(32, 3):
        assert isinstance(acceptance.accept(data, "trust-a", "c-store"), Accepted)

    assert [len(f) for f in bus.flushes] == [1, 1, 1]
    assert (receipts.claim_writes, receipts.mark_writes) == (3, 0)  # each mark rode on the next claim


def test_a_resend_while_its_mark_waits_is_a_duplicate(tmp_path: Path) -> None:
    bus, receipts = GatedBus(), CountingReceipts()
    bus.gate.set()
    acceptance = make(tmp_path, bus, receipts)
    [data] = mr_study(36, 1)

    first = acceptance.accept(data, "trust-a", "c-store")
    again = acceptance.accept(data, "trust-a", "c-store")

    assert isinstance(first, Accepted) and isinstance(again, Duplicate)
    assert [len(f) for f in bus.flushes] == [1]


def test_a_mark_lost_with_the_process_makes_a_resend_publish_the_same_event_again(tmp_path: Path) -> None:
    bus, receipts = GatedBus(), CountingReceipts()
    bus.gate.set()
    [data] = mr_study(37, 1)
    first = make(tmp_path, bus, receipts).accept(data, "trust-a", "c-store")  # acknowledged, mark waiting

    restarted = make(tmp_path, bus, receipts)  # the process died before a next group: no mark
    again = restarted.accept(data, "trust-a", "c-store")
    third = restarted.accept(data, "trust-a", "c-store")

    assert isinstance(first, Accepted) and isinstance(again, Accepted) and isinstance(third, Duplicate)
    [[one], [two]] = bus.flushes
    ids = [events_pb2.InstanceIngested.FromString(m.value).meta.event_id for m in (one, two)]
    assert ids == [first.event_id, first.event_id] and one.key == two.key


def test_the_same_instance_twice_in_one_group_is_published_once(tmp_path: Path) -> None:
    bus, receipts = GatedBus(), CountingReceipts()
    acceptance = make(tmp_path, bus, receipts)
    first, other = mr_study(33, 2)

    results = accept_concurrently(acceptance, bus, [first, other, other])

    assert isinstance(results[0], Accepted)
    assert sorted(type(r).__name__ for r in results[1:]) == ["Accepted", "Duplicate"]
    assert [len(f) for f in bus.flushes] == [1, 1]


def test_a_failed_flush_fails_every_sender_of_the_group_and_their_retries_publish_the_same_events(
    tmp_path: Path,
) -> None:
    bus, receipts = GatedBus(), CountingReceipts()
    acceptance = make(tmp_path, bus, receipts)
    instances = mr_study(34, 4)
    bus.fail = 1  # the first group fails at the broker
    attempts: list[int] = []
    publish = bus.publish
    bus.publish = lambda messages, timeout_s=60.0: (attempts.append(len(messages)), publish(messages, timeout_s))[1]  # type: ignore[method-assign]

    results = accept_concurrently(acceptance, bus, instances)

    assert all(isinstance(r, IngestUnavailable) for r in results)
    assert not bus.flushes
    # Those queued behind it hear the same at once, without a publish of their own: each had waited for
    # that group's publish timeout, then spent its own.
    assert len(attempts) == 1
    assert not receipts.published, "a group that failed marks nothing"
    retried = [acceptance.accept(data, "trust-a", "c-store") for data in instances]
    assert all(isinstance(r, Accepted) for r in retried)
    again = [acceptance.accept(data, "trust-a", "c-store") for data in instances]
    assert all(isinstance(r, Duplicate) for r in again)
    events = [events_pb2.InstanceIngested.FromString(m.value) for f in bus.flushes for m in f]
    assert sorted(e.meta.event_id for e in events) == sorted(r.event_id for r in retried if isinstance(r, Accepted))


class RefusingBus(GatedBus):
    """Refuses, as the broker refuses a record larger than its topic takes, every flush holding the
    event of one instance, and so its batch-mates with it."""

    def __init__(self, refused_sop_uid: str) -> None:
        super().__init__()
        self.refused_sop_uid = refused_sop_uid
        self.refused_flushes = 0
        self.away_at_publish = 0  # the number of the publish not refused that finds the broker away
        self.publishes = 0

    def publish(self, messages: Sequence[OutgoingMessage], timeout_s: float = 60.0) -> None:
        uids = [events_pb2.InstanceIngested.FromString(m.value).instance.sop_instance_uid for m in messages]
        if self.refused_sop_uid in uids:
            self.entered.set()
            assert self.gate.wait(30), "the test never opened the gate"
            self.refused_flushes += 1
            raise RecordRefused("publish refused: MessageSizeTooLargeError")
        self.publishes += 1
        if self.publishes == self.away_at_publish:
            raise TransientError("publish failed: KafkaTimeoutError")
        super().publish(messages, timeout_s)


def test_an_event_the_broker_refuses_fails_its_own_sender_only_and_its_retry_publishes_it(tmp_path: Path) -> None:
    instances = mr_study(38, 4)
    refused_uid = inspect_instance(instances[2], 10_000_000).sop_instance_uid
    bus, receipts = RefusingBus(refused_uid), CountingReceipts()
    acceptance = make(tmp_path, bus, receipts)

    results = accept_concurrently(acceptance, bus, instances)  # groups: the first, then the other three

    assert [type(r).__name__ for r in results] == ["Accepted", "Accepted", "EventRefused", "Accepted"]
    assert isinstance(results[2], IngestUnavailable), "its sender hears try again"
    # The second group's flush was refused; then each of its events went alone, the refused one refused again.
    assert bus.refused_flushes == 2
    assert [len(f) for f in bus.flushes] == [1, 1, 1]
    acceptance.commits.flush()
    assert receipts.published == {r.event_id for r in results if isinstance(r, Accepted)}, (
        "the refused event's receipt is not marked published"
    )

    bus.refused_sop_uid = "none"  # an operator raised the topic's limit
    retried = acceptance.accept(instances[2], "trust-a", "c-store")
    assert isinstance(retried, Accepted)
    assert events_pb2.InstanceIngested.FromString(bus.flushes[-1][0].value).meta.event_id == retried.event_id


def test_those_queued_behind_a_refused_event_are_not_failed_with_it(tmp_path: Path) -> None:
    instances = mr_study(40, 4)
    bus = RefusingBus(inspect_instance(instances[0], 10_000_000).sop_instance_uid)
    acceptance = make(tmp_path, bus, CountingReceipts())

    results = accept_concurrently(acceptance, bus, instances)  # the refused one leads, the others queue

    assert [type(r).__name__ for r in results] == ["EventRefused", "Accepted", "Accepted", "Accepted"]
    assert [len(f) for f in bus.flushes] == [3]


def test_the_broker_going_away_while_events_go_one_by_one_fails_the_group_and_marks_nothing(tmp_path: Path) -> None:
    instances = mr_study(41, 4)
    bus, receipts = RefusingBus(inspect_instance(instances[2], 10_000_000).sop_instance_uid), CountingReceipts()
    bus.away_at_publish = 2  # the first group's flush goes; the second's first event alone meets an outage
    acceptance = make(tmp_path, bus, receipts)

    results = accept_concurrently(acceptance, bus, instances)

    assert isinstance(results[0], Accepted)
    assert all(type(r) is IngestUnavailable for r in results[1:]), "every sender of the group hears try again"
    acceptance.commits.flush()
    assert receipts.published == {results[0].event_id}


def test_a_second_sender_of_a_refused_instance_hears_the_refusal_not_duplicate(tmp_path: Path) -> None:
    instances = mr_study(39, 2)
    refused_uid = inspect_instance(instances[1], 10_000_000).sop_instance_uid
    bus = RefusingBus(refused_uid)
    acceptance = make(tmp_path, bus, CountingReceipts())

    results = accept_concurrently(acceptance, bus, [instances[0], instances[1], instances[1]])

    assert isinstance(results[0], Accepted)
    assert [type(r).__name__ for r in results[1:]] == ["EventRefused", "EventRefused"]


@pytest.mark.parametrize("senders", [2, 16])
def test_every_sender_hears_the_outcome_of_its_own_instance(tmp_path: Path, senders: int) -> None:
    bus, receipts = GatedBus(), CountingReceipts()
    acceptance = make(tmp_path, bus, receipts)
    instances = mr_study(35, senders)

    results = accept_concurrently(acceptance, bus, instances)

    expected = [inspect_instance(data, 10_000_000).sop_instance_uid for data in instances]
    assert [r.sop_instance_uid for r in results if isinstance(r, Accepted)] == expected
    assert sum(len(f) for f in bus.flushes) == senders and len(bus.flushes) == 2


def test_a_leader_whose_own_instance_is_past_the_group_size_commits_again_until_it_is_done() -> None:
    bus = GatedBus()
    group = CommitGroup(MemoryReceiptStore(), bus.publish, clock=lambda: 1_000, max_group=2)

    def commit(n: int) -> Commit:
        return Commit(f"ev-{n}", lambda ms, n=n: OutgoingMessage("t", str(n).encode(), b"k"))

    outcomes: dict[int, Outcome] = {}

    def send(n: int) -> None:
        outcomes[n] = group.commit(commit(n))

    first = threading.Thread(target=send, args=(0,))
    first.start()
    assert bus.entered.wait(10)
    # Five queue behind the first group; whoever leads next finds two ahead of some of them.
    waiting = [threading.Thread(target=send, args=(n,)) for n in range(1, 6)]
    for thread in waiting:
        thread.start()
    wait_for(lambda: group.queued == 5, 10, "five commits queued behind the first group")
    bus.gate.set()
    for thread in [first, *waiting]:
        thread.join(10)
    assert outcomes == {n: Outcome.PUBLISHED for n in range(6)}
    assert [len(flush) for flush in bus.flushes] == [1, 2, 2, 1]


def _commit(n: int) -> Commit:
    return Commit(f"ev-{n}", lambda ms, n=n: OutgoingMessage("t", str(n).encode(), b"k"))


def _gathering_group(bus: GatedBus) -> CommitGroup:
    # A gather far longer than any test: only the instance's arrival (or its failure) can end it.
    return CommitGroup(MemoryReceiptStore(), bus.publish, clock=lambda: 1_000, gather_s=60.0)


def test_a_leader_waits_for_an_instance_on_its_way_and_commits_both_in_one_flush() -> None:
    bus = GatedBus()
    bus.gate.set()
    group = _gathering_group(bus)
    outcomes: dict[int, Outcome] = {}

    def send(n: int) -> None:
        with group.expecting() as expected:
            outcomes[n] = group.commit(_commit(n), expected)

    second_on_its_way = group.expecting()
    expected = second_on_its_way.__enter__()  # the second instance is being stored
    first = threading.Thread(target=send, args=(0,))
    first.start()
    wait_for(lambda: group.queued == 1, 10, "the first instance to wait for the second")
    assert not bus.flushes

    second = threading.Thread(target=lambda: outcomes.__setitem__(1, group.commit(_commit(1), expected)))
    second.start()
    for thread in (first, second):
        thread.join(10)
    second_on_its_way.__exit__(None, None, None)
    assert outcomes == {0: Outcome.PUBLISHED, 1: Outcome.PUBLISHED}
    assert [len(flush) for flush in bus.flushes] == [2]


def test_an_instance_that_fails_on_its_way_ends_the_wait_for_it() -> None:
    bus = GatedBus()
    bus.gate.set()
    group = _gathering_group(bus)
    on_its_way = group.expecting()
    on_its_way.__enter__()
    first = threading.Thread(target=lambda: group.commit(_commit(0)))
    first.start()
    wait_for(lambda: group.queued == 1, 10, "the first instance to wait for the second")
    on_its_way.__exit__(OSError, OSError("disk full"), None)  # never reaches its commit
    first.join(10)
    assert not first.is_alive()
    assert [len(flush) for flush in bus.flushes] == [1]


def test_an_instance_with_nothing_on_its_way_waits_for_nothing() -> None:
    bus = GatedBus()
    bus.gate.set()
    group = _gathering_group(bus)
    with group.expecting() as expected:
        assert group.commit(_commit(0), expected) is Outcome.PUBLISHED  # a 60 s gather would time the test out
    assert [len(flush) for flush in bus.flushes] == [1]


def test_a_leader_waits_for_an_instance_still_arriving_and_commits_both_in_one_flush() -> None:
    bus = GatedBus()
    bus.gate.set()
    group = _gathering_group(bus)
    arriving = [1]  # the other association's data set: its PDUs still coming
    group.also_wait_for(lambda: arriving[0])
    outcomes: dict[int, Outcome] = {}
    first = threading.Thread(target=lambda: outcomes.__setitem__(0, group.commit(_commit(0))))
    first.start()
    wait_for(lambda: group.queued == 1, 10, "the first instance to wait for the arriving one")
    assert not bus.flushes

    def second() -> None:
        with group.expecting() as expected:
            arriving[0] = 0  # its last fragment written: now being stored
            outcomes[1] = group.commit(_commit(1), expected)

    thread = threading.Thread(target=second)
    thread.start()
    for t in (first, thread):
        t.join(10)
    assert outcomes == {0: Outcome.PUBLISHED, 1: Outcome.PUBLISHED}
    assert [len(flush) for flush in bus.flushes] == [2]


def test_nothing_arriving_and_nothing_on_its_way_waits_for_nothing() -> None:
    bus = GatedBus()
    bus.gate.set()
    group = _gathering_group(bus)
    group.also_wait_for(lambda: 0)
    assert group.commit(_commit(0)) is Outcome.PUBLISHED  # a 60 s gather would time the test out
    assert [len(flush) for flush in bus.flushes] == [1]


def test_an_arrival_that_never_comes_holds_the_leader_no_longer_than_the_gather() -> None:
    bus = GatedBus()
    bus.gate.set()
    group = CommitGroup(MemoryReceiptStore(), bus.publish, clock=lambda: 1_000, gather_s=0.05)
    group.also_wait_for(lambda: 1)  # an abandoned transfer, say
    started = time.monotonic()
    assert group.commit(_commit(0)) is Outcome.PUBLISHED
    assert 0.04 <= time.monotonic() - started < 5
    assert [len(flush) for flush in bus.flushes] == [1]
