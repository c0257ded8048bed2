"""Group commit: instances accepted at the same time share one receipt look-up and one broker flush.

Every association (C-STORE) and STOW-RS request runs on its own thread and, once its instance is
durable in the blob store, hands the commit here and waits. The first thread to arrive commits what
is queued (its own instance and any that came with it); threads that arrive while it does queue up
and the next of them commits them all together (leader/follower, as a database's log writer does).
One thread alone waits for nothing: its group is itself. With more senders the groups grow, and the
per-instance cost of the round trips (receipt folders, Kafka's acks=all) falls.

A group is: one claim that looks every receipt of the group up and marks the previous groups'
instances published → publish every new event and wait for every acknowledgement (one flush). Each
waiting thread then hears its own outcome. Any failure fails the whole group: every sender in it
hears "try again", and nothing was marked, so a retry is published (same id, its own timestamps) as
if it were the first attempt: nothing is lost. Except an event the broker refuses for what it is
(`EventRefused`: larger than its topic takes): it fails the group's flush, so each event of the group
is published again on its own, and only the refused ones' senders hear "try again". Without that, the
instances that happened to share a group with it, and their retries grouped with its retries, were
refused with it for as long as the topic's limit stood.

The "published" marks ride on the next group's claim (or `flush`, at shutdown) rather than costing a
write of their own after the flush. A mark only saves a resend from being published again, never a
sender from hearing success too early, so one not written yet (or lost with the process) costs at most
one more copy of an event that is already on the broker, under the same id, which every downstream
stage drops by its id. A resend while its mark waits finds it written by its own group's claim.

A leader also waits, at most `gather_s`, for instances already on their way (`expecting`: stored to
the blob store at that moment, so a few milliseconds from their commit) before it takes its group.
With two `storescu` associations the groups were of about one instance: each association's instance
reached its commit while the other's was still being fsynced, and every instance paid a MongoDB
command and a Kafka produce request of its own. Once two instances commit together their senders get
their answers together and send their next instances together, so the groups stay of two. An instance
that comes alone (nothing on its way) waits for nothing. Only the time of the answer changes: a sender
still hears success only after its instance is durable and its event acknowledged.

`also_wait_for` adds instances still being received (a C-STORE data set arriving: received_files.py)
to those a leader waits for. Counting only the instances being stored, a leader found the other
association's instance still arriving about half the time and committed alone (~1.5 instances per
group with two `storescu` associations); the wait is bounded by `gather_s` as before.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from enum import Enum

from services.common.messages import OutgoingMessage
from services.common.publish_refusals import publish_apart
from services.ingest.errors import EventRefused
from services.ingest.receipts import ReceiptStore


class Outcome(Enum):
    PUBLISHED = "published"  # published now
    DUPLICATE = "duplicate"  # published earlier: nothing new


@dataclass
class Commit:
    """One instance to commit. `message(received_at_ms)` builds its event with its group's time."""

    event_id: str
    message: Callable[[int], OutgoingMessage]
    outcome: Outcome | None = None
    error: BaseException | None = None
    done: bool = False


@dataclass
class Expected:
    """An instance on its way to `commit` (`CommitGroup.expecting`); `pending` until it is queued."""

    pending: bool = True


class CommitGroup:
    """Thread-safe. `groups` counts the groups committed (a flush each); tests read it."""

    def __init__(
        self,
        receipts: ReceiptStore,
        publish: Callable[[Sequence[OutgoingMessage]], None],
        clock: Callable[[], int],
        max_group: int = 256,
        gather_s: float = 0.0,
    ) -> None:
        self._receipts = receipts
        self._publish = publish
        self._clock = clock
        self._max_group = max_group
        self._gather_s = gather_s
        self._expected = 0  # instances between `expecting` and their `commit`
        self._changed = threading.Condition()
        self._queue: list[Commit] = []
        self._leading = False
        self._unmarked: list[str] = []  # marks of acknowledged receipts, not yet written; only the leader touches it
        self._arriving: Callable[[], int] = _nothing
        self.groups = 0
        self.committed = 0

    @property
    def queued(self) -> int:
        """Commits waiting for the group in progress to finish."""
        with self._changed:
            return len(self._queue)

    def also_wait_for(self, arriving: Callable[[], int]) -> None:
        """A leader also waits (at most `gather_s`) while `arriving()` (instances being received, not
        yet `expecting`) is not 0. Called once, before the doors open; `arriving` must be cheap and
        must not call back into this group."""
        self._arriving = arriving

    @contextmanager
    def expecting(self) -> Iterator[Expected]:
        """Around the work that precedes an instance's `commit` (storing it): a leader may wait for it.
        Pass what it yields to `commit`; leaving without committing (a failure) stops the wait."""
        expected = Expected()
        with self._changed:
            self._expected += 1
        try:
            yield expected
        finally:
            with self._changed:
                if expected.pending:
                    expected.pending = False
                    self._expected -= 1
                    self._changed.notify_all()

    def commit(self, item: Commit, expected: Expected | None = None) -> Outcome:
        """Blocks until the group holding `item` is committed; raises what failed the group."""
        with self._changed:
            self._queue.append(item)
            if expected is not None and expected.pending:
                expected.pending = False
                self._expected -= 1
            if self._gather_s > 0:
                self._changed.notify_all()  # a leader gathering its group
        # A leader commits at most max_group from the head of the queue, which need not hold its own
        # item (more than max_group queued ahead of it): it then leads again until its item is done.
        while True:
            with self._changed:
                while not item.done and self._leading:
                    self._changed.wait()
                if item.done:
                    break
                self._leading = True
                self._gather()
                group, self._queue = self._queue[: self._max_group], self._queue[self._max_group :]
            failed: BaseException | None = None
            try:
                failed = self._commit_group(group)
            finally:
                with self._changed:
                    self._leading = False
                    if failed is not None:
                        # Those queued behind a group that failed hear the same at once: each waited for
                        # that group's publish timeout and then spent its own, the sender's wait twice
                        # IMX_PUBLISH_TIMEOUT_S and more (many senders time out before).
                        for queued in self._queue:
                            queued.error, queued.done = failed, True
                        self._queue = []
                    self._changed.notify_all()
        if item.error is not None:
            raise item.error
        assert item.outcome is not None
        return item.outcome

    def _gather(self) -> None:
        """The leader, holding `_changed`: wait up to `gather_s` for the instances on their way."""
        if self._gather_s <= 0 or not (self._expected or self._arriving()):
            return
        deadline = time.monotonic() + self._gather_s
        while (self._expected or self._arriving()) and len(self._queue) < self._max_group:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return
            self._changed.wait(remaining)

    def flush(self) -> None:
        """Write the marks still waiting for a next group, and make every mark durable (at shutdown);
        raises IngestUnavailable."""
        with self._changed:
            while self._leading:
                self._changed.wait()
            self._leading = True
        try:
            # Even with no mark waiting: the store makes every link written so far durable.
            self._receipts.write_marks(self._unmarked)
            self._unmarked = []
        finally:
            with self._changed:
                self._leading = False
                self._changed.notify_all()

    def _commit_group(self, group: list[Commit]) -> BaseException | None:
        """Commits `group`, each item's outcome or error set; returns what failed the whole group."""
        try:
            outcomes = self._run(group)
        except BaseException as error:  # every sender of the group hears it
            for item in group:
                item.error = error
            return error
        else:
            for item in group:
                outcome = outcomes[id(item)]
                if isinstance(outcome, Outcome):
                    item.outcome = outcome
                else:
                    item.error = outcome
            return None
        finally:
            for item in group:
                item.done = True

    def _run(self, group: list[Commit]) -> dict[int, Outcome | EventRefused]:
        # The same instance twice in one group (two senders at once): claimed and published once.
        first: dict[str, Commit] = {}
        for item in group:
            first.setdefault(item.event_id, item)
        claimants = list(first.values())
        marks = self._unmarked
        now_ms = self._clock()
        receipts = self._receipts.claim_many([c.event_id for c in claimants], marks)
        self._unmarked = []
        outcomes: dict[str, Outcome | EventRefused] = {}
        to_publish: dict[str, OutgoingMessage] = {}
        marks_of: dict[str, str] = {}
        for claimant, receipt in zip(claimants, receipts, strict=True):
            if receipt.published:
                outcomes[claimant.event_id] = Outcome.DUPLICATE
            else:
                outcomes[claimant.event_id] = Outcome.PUBLISHED
                to_publish[claimant.event_id] = claimant.message(now_ms)
                marks_of[claimant.event_id] = receipt.mark
        refused = self._publish_refusing(to_publish) if to_publish else {}
        outcomes.update(refused)
        # A refused event's receipt stays unmarked: its retry is published as if it were the first attempt.
        self._unmarked = [mark for event_id, mark in marks_of.items() if event_id not in refused]
        self.groups += 1
        self.committed += len(to_publish) - len(refused)
        # The second sender of an instance hears "duplicate" only when the first one's event went out.
        return {
            id(item): outcomes[item.event_id]
            if first[item.event_id] is item or not isinstance(outcomes[item.event_id], Outcome)
            else Outcome.DUPLICATE
            for item in group
        }

    def _publish_refusing(self, messages: dict[str, OutgoingMessage]) -> dict[str, EventRefused]:
        """Publishes the group's events, by event id; returns those the broker refused for what they
        are. Any other failure is raised: it fails the group."""
        return publish_apart(self._publish, list(messages.values()), list(messages), EventRefused)


def _nothing() -> int:
    return 0
